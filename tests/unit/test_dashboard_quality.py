"""The dashboard's running figures against numpy and scikit-learn over the same rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (max_error, mean_absolute_error, mean_absolute_percentage_error, r2_score,
                             root_mean_squared_error)

from quality import ErrorHistogram, Observation, QualityBoard, Sums, Window


def observations(count: int, seed: int = 0, offset: float = 150.0, start: int = 0) -> list[Observation]:
    rng = np.random.default_rng(seed)
    y_true = offset + rng.normal(0, 70, count)
    y_pred = y_true + rng.normal(0, 50, count) * rng.uniform(0.2, 2.0, count)
    return [Observation(f"id-{start + i}", float(t), float(p)) for i, (t, p) in enumerate(zip(y_true, y_pred))]


def expected(rows: list[Observation]) -> dict:
    y_true = np.array([row.y_true for row in rows])
    y_pred = np.array([row.y_pred for row in rows])
    return {
        "count": len(rows),
        "mae": mean_absolute_error(y_true, y_pred),
        "rmse": root_mean_squared_error(y_true, y_pred),
        "r2": r2_score(y_true, y_pred),
        "mape": 100 * mean_absolute_percentage_error(y_true, y_pred),
        "max_error": max_error(y_true, y_pred),
    }


def assert_figures(actual: dict, rows: list[Observation]) -> None:
    wanted = expected(rows)
    assert actual["count"] == wanted["count"]
    for name in ("mae", "rmse", "r2", "mape", "max_error"):
        assert actual[name] == pytest.approx(wanted[name], rel=1e-9, abs=1e-9), name


def test_overall_figures_match_sklearn():
    rows = observations(5000)
    board = QualityBoard()
    assert board.add(rows) == 5000
    assert_figures(board.snapshot(), rows)
    assert_figures(board.figures()["all"], rows)


@pytest.mark.parametrize("count", [1, 99, 100, 101, 999, 1000, 2537, 20_011])
def test_window_figures_match_the_last_n_rows(count):
    rows = observations(count, seed=count)
    board = QualityBoard()
    for row in rows:  # one at a time, as events arrive
        board.add([row])
    figures = board.figures()
    for size in (100, 1000):
        if count >= 2:
            assert_figures(figures[f"last_{size}"], rows[-size:])
        else:
            assert figures[f"last_{size}"]["count"] == 1


def test_window_maximum_follows_errors_leaving_the_window():
    window = Window(3)
    maxima = []
    for seq, error in enumerate([5.0, 1.0, 4.0, 2.0, 1.0, 0.5, 3.0], start=1):
        window.add(seq, 100.0, 100.0 + error, error)
        maxima.append(window.figures()["max_error"])
    assert maxima == [5.0, 5.0, 5.0, 4.0, 4.0, 2.0, 3.0]


def test_sliding_sums_stay_accurate_for_targets_far_from_zero():
    rows = observations(50_000, seed=7, offset=1e6)
    window = Window(1000)
    for seq, row in enumerate(rows, start=1):
        window.add(seq, row.y_true, row.y_pred, row.error)
    assert_figures(window.figures(), rows[-1000:])


def test_window_state_is_bounded_by_its_size():
    window = Window(100)
    for seq, row in enumerate(observations(5000), start=1):
        window.add(seq, row.y_true, row.y_pred, row.error)
        assert len(window._ring) <= 100 and len(window._maxima) <= 100


def test_an_id_is_counted_once():
    rows = observations(10)
    board = QualityBoard()
    assert board.add(rows[:6]) == 6
    assert board.add(rows[4:]) == 4
    assert board.add([Observation("id-0", 0.0, 1e9)]) == 0  # same id, other values: still the first one
    assert_figures(board.snapshot(), rows)


def test_undefined_figures_are_null_and_the_snapshot_is_strict_json():
    board = QualityBoard()
    empty = board.snapshot()
    assert {empty[name] for name in ("mae", "rmse", "r2", "mape", "max_error")} == {None}
    assert empty["count"] == 0
    board.add([Observation("a", 100.0, 90.0)])
    one = board.snapshot()
    assert one["r2"] is None and one["mae"] == 10.0
    board.add([Observation("b", 100.0, 130.0)])
    assert board.snapshot()["r2"] is None  # y_true constant: R² is undefined, not -inf
    json.dumps(board.snapshot(), allow_nan=False)


def test_mape_leaves_out_rows_whose_target_is_zero():
    sums = Sums.of([(0.0, 5.0), (100.0, 90.0), (-50.0, -40.0)])
    assert sums.figures(None)["mape"] == pytest.approx(100 * (0.1 + 0.2) / 2)
    assert sums.figures(None)["mae"] == pytest.approx(25 / 3)


def test_live_events_set_the_last_event_time_restored_rows_do_not():
    board = QualityBoard()
    board.add(observations(3))
    assert board.snapshot()["last_event_at"] is None
    board.add(observations(1, start=3), arrived_at=1234.5)
    assert board.snapshot()["last_event_at"] == 1234.5


def test_events_model_version_is_the_latest_seen():
    board = QualityBoard()
    board.add([Observation("a", 1.0, 2.0, "v1"), Observation("b", 1.0, 2.0, "v2"), Observation("c", 1.0, 2.0)])
    assert board.snapshot()["events_model_version"] == "v2"


def test_recent_series_keeps_the_last_points_with_the_rolling_mae():
    rows = observations(1500)
    board = QualityBoard()
    for row in rows:
        board.add([row])
    recent = board.snapshot()["recent"]
    assert recent["seq"] == list(range(501, 1501))
    assert recent["absolute_error"] == pytest.approx([row.error for row in rows[500:]])
    assert recent["rolling_mae"][-1] == pytest.approx(np.mean([row.error for row in rows[-100:]]))
    assert recent["rolling_mae"][0] == pytest.approx(np.mean([row.error for row in rows[401:501]]))


def test_histogram_counts_are_exact_across_widenings():
    errors = np.abs(np.random.default_rng(3).standard_cauchy(20_000)) * 20
    histogram = ErrorHistogram(bins=40, initial_width=5.0)
    for error in errors:
        histogram.add(float(error))
    assert histogram.width >= errors.max() / 40
    edges = np.arange(41) * histogram.width
    assert histogram.counts.tolist() == np.histogram(errors, bins=edges)[0].tolist()
    shown = histogram.shown()
    assert sum(shown["counts"]) == len(errors) and shown["bin_width"] == histogram.width


def test_histogram_shows_at_least_ten_bins_up_to_the_last_used():
    histogram = ErrorHistogram(bins=40, initial_width=5.0)
    assert histogram.shown()["counts"] == [0] * 10
    histogram.add(71.0)
    assert histogram.shown()["counts"] == [0] * 14 + [1]


@pytest.mark.parametrize("before", [0, 1, 150, 3000])
def test_a_bulk_restore_gives_what_counting_one_by_one_gives(before):
    rows = observations(before + 12_345, seed=before)
    rows[-7] = Observation(rows[-7].id, rows[-7].y_true, rows[-7].y_pred, "v7")
    one_by_one, bulk = QualityBoard(), QualityBoard()
    for row in rows:
        one_by_one.add([row])
    bulk.add(rows[:before])
    assert bulk.add(rows[before:] + rows[:5]) == 12_345  # the bulk path, duplicates included
    expected_snapshot, actual = one_by_one.snapshot(), bulk.snapshot()
    assert actual["histogram"] == expected_snapshot["histogram"]
    assert actual["recent"]["seq"] == expected_snapshot["recent"]["seq"]
    assert actual["recent"]["absolute_error"] == pytest.approx(expected_snapshot["recent"]["absolute_error"])
    assert actual["recent"]["rolling_mae"] == pytest.approx(expected_snapshot["recent"]["rolling_mae"])
    assert actual["events_model_version"] == "v7"
    assert_figures(actual, rows)
    for size in (100, 1000):
        assert_figures(actual["windows"][f"last_{size}"], rows[-size:])
