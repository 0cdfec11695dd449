from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mlmonitor.reference import (
    HISTOGRAM_BINS,
    OTHER,
    QUANTILE_PROBABILITIES,
    build_reference,
    categorical_stats,
    classification_predictions,
    histogram_counts,
    numeric_stats,
)


def test_numeric_stats_of_a_known_column():
    values = [*range(101), None, math.nan]  # 0..100, then two missing
    stats = numeric_stats(values)

    assert stats["kind"] == "numeric"
    assert stats["count"] == 103
    assert stats["missing_rate"] == pytest.approx(2 / 103)
    assert (stats["mean"], stats["min"], stats["max"]) == (50.0, 0.0, 100.0)
    assert stats["std"] == pytest.approx(np.std(np.arange(101)))
    assert stats["quantiles"]["probabilities"] == list(QUANTILE_PROBABILITIES)
    assert stats["quantiles"]["values"] == pytest.approx([100 * p for p in QUANTILE_PROBABILITIES])


def test_numeric_histogram_spans_the_1st_to_the_99th_percentile_with_the_tails_apart():
    histogram = numeric_stats(np.arange(101, dtype=float))["histogram"]

    assert histogram["edges"] == pytest.approx(np.linspace(1, 99, HISTOGRAM_BINS + 1))
    assert len(histogram["counts"]) == HISTOGRAM_BINS
    assert (histogram["under"], histogram["over"]) == (1, 1)  # 0 and 100
    assert sum(histogram["counts"]) == 99
    assert histogram["counts"][0] == 5  # 1, 2, 3, 4, 5 in [1, 5.9)
    assert histogram["counts"][-1] == 5  # 95..99 in [94.1, 99]: the last bin is closed on the right


def test_a_constant_column_has_one_degenerate_bin():
    stats = numeric_stats([5.0] * 10)
    assert stats["std"] == 0.0
    assert stats["histogram"] == {"edges": [5.0, 5.0], "counts": [10], "under": 0, "over": 0}


def test_an_all_missing_column_has_null_figures():
    stats = numeric_stats([None, math.nan])
    assert (stats["count"], stats["missing_rate"]) == (2, 1.0)
    assert stats["mean"] is stats["std"] is stats["min"] is stats["max"] is stats["histogram"] is None
    assert stats["quantiles"]["values"] == [None] * len(QUANTILE_PROBABILITIES)


def test_infinities_and_pandas_missing_values_count_as_missing():
    stats = numeric_stats(pd.Series([1.0, 3.0, None, math.inf], dtype="Float64"))
    assert (stats["count"], stats["missing_rate"], stats["mean"], stats["max"]) == (4, 0.5, 2.0, 3.0)


def test_a_live_window_is_counted_into_the_reference_bins():
    edges = numeric_stats(np.arange(101, dtype=float))["histogram"]["edges"]
    live = histogram_counts([-5.0, 1.0, 2.0, 99.0, 150.0, math.nan], edges)
    assert live["under"] == 1 and live["over"] == 1
    assert live["counts"][0] == 2 and live["counts"][-1] == 1 and sum(live["counts"]) == 3


def test_categorical_frequencies_most_frequent_first_ties_by_name():
    stats = categorical_stats(["b", "a", "c", "c", None, math.nan, "a"])
    assert stats == {"kind": "categorical", "count": 7, "missing_rate": pytest.approx(2 / 7), "distinct": 3,
                     "frequencies": {"a": 0.4, "c": 0.4, "b": 0.2}}
    assert list(stats["frequencies"]) == ["a", "c", "b"]


def test_categories_are_compared_as_labels():
    assert categorical_stats([1, 1.0, "1", 2])["frequencies"] == {"1": 0.75, "2": 0.25}


def test_categories_beyond_the_top_go_to_other():
    values = [f"c{index:02d}" for index in range(60) for _ in range(60 - index)]  # c00 the most frequent
    stats = categorical_stats(values)
    assert list(stats["frequencies"])[:3] == ["c00", "c01", "c02"]
    assert len(stats["frequencies"]) == 51 and OTHER in stats["frequencies"]
    rest = sum(60 - index for index in range(50, 60))
    assert stats["frequencies"][OTHER] == pytest.approx(rest / len(values))
    assert sum(stats["frequencies"].values()) == pytest.approx(1.0)
    assert stats["distinct"] == 60


def test_classification_predictions_carry_the_top_probability():
    stats = classification_predictions(["yes", "no", "yes"], np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]))
    assert stats["frequencies"] == {"yes": pytest.approx(2 / 3), "no": pytest.approx(1 / 3)}
    assert stats["top_probability"]["mean"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert "top_probability" not in classification_predictions(["yes"])


def test_the_reference_is_strict_json():
    features = {"x": ("numeric", pd.Series([1.0, math.nan, math.inf, 2.0])),
                "colour": ("categorical", pd.Series(["red", None, "blue", "red"], dtype=object)),
                "empty": ("numeric", [None, None])}
    built = build_reference(features, target=numeric_stats([1.0, 2.0]), predictions=numeric_stats([1.5]),
                            errors=[0.5, math.nan])

    text = json.dumps(built, allow_nan=False)  # raises on NaN or infinity
    assert json.loads(text) == built
    assert built["format"] == 1
    assert set(built) == {"format", "features", "target", "predictions", "errors"}
    assert built["features"]["colour"]["frequencies"] == {"red": pytest.approx(2 / 3), "blue": pytest.approx(1 / 3)}
    assert built["features"]["x"]["missing_rate"] == 0.5
    assert built["errors"]["count"] == 2 and built["errors"]["mean"] == 0.5


def test_a_regressor_s_reference_carries_its_signed_residuals():
    built = build_reference({"x": ("numeric", [1.0, 2.0])}, target=numeric_stats([1.0, 2.0]),
                            predictions=numeric_stats([1.5, 1.5, 1.4]), errors=[0.5, 0.5, 2.0],
                            residuals=[0.5, -0.5, -2.0])

    assert built["residuals"] == numeric_stats([0.5, -0.5, -2.0])
    assert (built["residuals"]["mean"], built["residuals"]["min"]) == (pytest.approx(-2 / 3), -2.0)
    assert built["errors"]["mean"] == pytest.approx(1.0)  # the absolute errors, as before
    json.dumps(built, allow_nan=False)


def test_a_reference_without_residuals_has_no_such_key():
    built = build_reference({"x": ("numeric", [1.0])}, target=categorical_stats(["a"]),
                            predictions=categorical_stats(["a"]), errors=[0.0])
    assert "residuals" not in built
