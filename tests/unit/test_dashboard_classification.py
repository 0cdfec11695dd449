"""The dashboard's classification figures against scikit-learn over the same random streams: all
events and the windows, restored CSV rows against live events, the breakdown per model version, the
task the board keeps, and the Prometheus gauges."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, brier_score_loss, confusion_matrix, f1_score,
                             log_loss, precision_score, recall_score, roc_auc_score)

from classification import AUC_BINS, MAX_CLASSES, OTHER, AucHistogram, ClassRegistry, display_key
from dashboard import EventCounter, ModelCardWatcher, QualityCollector, observation_of_row
from mlmonitor.messages import MetricAdded
from mlmonitor.metric_log import MetricLogTail, MetricLogWriter, MetricRow
from mlmonitor.model_store import CARD_NAME
from mlmonitor.tasks import CLASSIFICATION, REGRESSION, label_key
from quality import MAX_VERSIONS, Observation, QualityBoard, TaskHint
from test_dashboard_service import FakeDelivery, FakeSession

ANIMALS = ["bird", "cat", "dog", "fish"]
CLASSIFIER = TaskHint(CLASSIFICATION, None, True)


# ---------------------------------------------------------------- streams and what sklearn says


def stream(count: int, classes=ANIMALS, seed: int = 0, start: int = 0, probabilities: bool = True,
           version: str | None = None) -> list[Observation]:
    """A classifier's events: probabilities from a Dirichlet, the label the likeliest class, the
    true class drawn mostly from the probabilities (so the model is better than chance)."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    proba = rng.dirichlet(np.full(k, 0.8), size=count)
    mixed = 0.7 * proba + 0.3 / k
    true = np.minimum((np.cumsum(mixed, axis=1) < rng.random(count)[:, None]).sum(axis=1), k - 1)
    pred = proba.argmax(axis=1)
    keys = [label_key(c) for c in classes]
    events = []
    for i in range(count):
        if probabilities:
            error, given = max(0.0, 1.0 - float(proba[i, true[i]])), dict(zip(keys, map(float, proba[i])))
        else:
            error, given = float(true[i] != pred[i]), None
        events.append(Observation(f"id-{start + i}", classes[true[i]], classes[pred[i]], version, error, given))
    return events


def expected(events: list[Observation], probabilities: bool = True) -> dict:
    y_true = [label_key(e.y_true) for e in events]
    y_pred = [label_key(e.y_pred) for e in events]
    labels = sorted(set(y_true) | set(y_pred), key=display_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class predicted but never true, and such
        figures = {
            "count": len(events),
            "accuracy": accuracy_score(y_true, y_pred),
            "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
            "precision_macro": precision_score(y_true, y_pred, average="macro", zero_division=0),
            "recall_macro": recall_score(y_true, y_pred, average="macro", zero_division=0),
            "f1_macro": f1_score(y_true, y_pred, average="macro", zero_division=0),
            "confusion_matrix": {"labels": labels,
                                 "counts": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
        }
        if probabilities:
            keys = sorted(events[0].probabilities, key=display_key)
            proba = np.array([[e.probabilities[key] for key in keys] for e in events])
            figures["log_loss"] = log_loss(y_true, proba, labels=keys)
            if len(keys) == 2:
                figures["brier"] = brier_score_loss(y_true, proba[:, 1], pos_label=keys[1])
                if len(set(y_true)) == 2:
                    figures["roc_auc"] = roc_auc_score([y == keys[1] for y in y_true], proba[:, 1])
            else:
                figures["brier"] = brier_score_loss(y_true, proba, labels=keys)
    return figures


def assert_figures(actual: dict, events: list[Observation], probabilities: bool = True,
                   auc_tolerance: float = 1e-9) -> None:
    wanted = expected(events, probabilities)
    assert actual["count"] == wanted["count"]
    assert actual["confusion_matrix"] == wanted["confusion_matrix"]
    for name in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss", "brier"):
        if name in wanted:
            assert actual[name] == pytest.approx(wanted[name], rel=1e-9, abs=1e-12), name
        else:
            assert actual[name] is None, name
    if "roc_auc" in wanted:
        assert actual["roc_auc"] == pytest.approx(wanted["roc_auc"], abs=auc_tolerance)
    else:
        assert actual["roc_auc"] is None


def assert_close(actual, wanted, where: str = "") -> None:
    """Equal structure, floats equal to 1e-9 relative."""
    if isinstance(wanted, dict):
        assert isinstance(actual, dict) and actual.keys() == wanted.keys(), where
        for key in wanted:
            assert_close(actual[key], wanted[key], f"{where}.{key}")
    elif isinstance(wanted, list):
        assert isinstance(actual, list) and len(actual) == len(wanted), where
        for index, (a, w) in enumerate(zip(actual, wanted)):
            assert_close(a, w, f"{where}[{index}]")
    elif isinstance(wanted, float):
        assert actual == pytest.approx(wanted, rel=1e-9, abs=1e-12), where
    else:
        assert actual == wanted, where


def classifier_board(**options) -> QualityBoard:
    board = QualityBoard(task=CLASSIFICATION, **options)
    board.follow(CLASSIFIER)
    return board


def one_by_one(board: QualityBoard, events: list[Observation]) -> QualityBoard:
    for event in events:
        board.add([event])
    return board


# ---------------------------------------------------------------- the figures


@pytest.mark.parametrize("count", [1, 99, 100, 1000, 2537])
def test_multiclass_figures_match_sklearn_over_all_events_and_the_windows(count):
    events = stream(count, seed=count)
    figures = one_by_one(classifier_board(), events).figures()
    assert_figures(figures["all"], events)
    for size in (100, 1000):
        assert_figures(figures[f"last_{size}"], events[-size:])
        assert figures[f"last_{size}"]["brier_events"] == min(size, count)


@pytest.mark.parametrize("count", [2, 150, 3001])
def test_binary_figures_match_sklearn_with_roc_auc_from_the_histogram(count):
    events = stream(count, classes=[0, 1], seed=count)
    figures = one_by_one(classifier_board(), events).figures()
    # all events: the score histogram's resolution (1e-4) bounds the AUC's error; windows are exact
    assert_figures(figures["all"], events, auc_tolerance=1e-3)
    for size in (100, 1000):
        assert_figures(figures[f"last_{size}"], events[-size:])
    assert figures["all"]["brier_events"] == count


def test_auc_histogram_counts_same_bin_pairs_as_ties():
    histogram = AucHistogram(bins=10)
    registry = ClassRegistry()
    # the score is p(a): 1 − error for an a-event, the error itself for a b-event
    for true, error in [("a", 0.05), ("b", 0.85), ("a", 0.5), ("b", 0.45)]:
        histogram.add(registry.score(true, true, error, None))
    # a-events at 0.95 and 0.5 (bins 9, 5), b-events at 0.85 and 0.45 (bins 8, 4): 3 of 4 pairs won
    assert histogram.auc() == pytest.approx(0.75)
    histogram.add(registry.score("b", "b", 0.52, None))  # 0.52: bin 5, as the a-event at 0.5
    assert histogram.auc() == pytest.approx((3 + 1 + 0.5) / 6)  # exactly it would be (3 + 1 + 0) / 6


def test_hard_labels_have_no_probability_figures():
    events = stream(1500, classes=[3, 7, 11], seed=5, probabilities=False)
    board = QualityBoard(task=CLASSIFICATION)
    board.follow(TaskHint(CLASSIFICATION))
    figures = one_by_one(board, events).figures()
    assert_figures(figures["all"], events, probabilities=False)
    assert_figures(figures["last_100"], events[-100:], probabilities=False)
    assert figures["all"]["confusion_matrix"]["labels"] == ["3", "7", "11"]  # numbers in numeric order
    assert board.snapshot()["classes"]["with_probabilities"] is False


def test_the_card_saying_predicts_proba_shows_log_loss_even_when_every_error_is_0_or_1():
    events = stream(200, classes=["no", "yes"], seed=9, probabilities=False)
    board = QualityBoard(task=CLASSIFICATION)
    board.follow(TaskHint(CLASSIFICATION, ["no", "yes"], predicts_proba=True))
    figures = one_by_one(board, events).figures()["all"]
    assert figures["accuracy"] == pytest.approx(expected(events, probabilities=False)["accuracy"])
    assert figures["log_loss"] == pytest.approx(np.mean([-np.log(max(1 - e.absolute_error, np.finfo(float).eps))
                                                         for e in events]))


def test_an_error_strictly_between_0_and_1_tells_the_stream_has_probabilities():
    registry = ClassRegistry()
    registry.score("a", "a", 0.0, None)
    registry.score("a", "b", 1.0, None)
    assert not registry.with_probabilities
    registry.score("a", "a", 0.3, None)
    assert registry.with_probabilities


def test_labels_1_1_0_and_text_1_are_one_class():
    board = classifier_board()
    board.add([Observation("a", 1, 1.0, absolute_error=0.0), Observation("b", "1", 0.0, absolute_error=1.0),
               Observation("c", 0, "0", absolute_error=0.0)])
    matrix = board.figures()["all"]["confusion_matrix"]
    assert matrix == {"labels": ["0", "1"], "counts": [[1, 0], [1, 1]]}


def test_classes_past_the_limit_share_one_other_row_and_accuracy_stays_exact():
    labels = [f"c{i:02d}" for i in range(MAX_CLASSES + 10)]
    events = [Observation(f"id-{i}", labels[i % len(labels)], labels[(i * 7) % len(labels)] if i % 3 else
                          labels[i % len(labels)], absolute_error=0.0) for i in range(3000)]
    events = [e._replace(absolute_error=float(e.y_true != e.y_pred)) for e in events]
    board = classifier_board()
    figures = one_by_one(board, events).figures()["all"]
    shown = figures["confusion_matrix"]
    assert len(shown["labels"]) == MAX_CLASSES + 1 and shown["labels"][-1] == OTHER
    assert np.array(shown["counts"]).shape == (MAX_CLASSES + 1, MAX_CLASSES + 1)
    assert np.array(shown["counts"]).sum() == 3000
    assert figures["accuracy"] == pytest.approx(expected(events, probabilities=False)["accuracy"])
    assert board.snapshot()["classes"]["other"] is True


def test_the_state_is_flat_in_the_number_of_events():
    """O(1)-ish by structure: fixed-size arrays and rings; only the id set grows."""
    board = classifier_board()
    one_by_one(board, stream(3000, classes=[0, 1], seed=1))
    tracker = board._tracker
    shapes = (tracker._overall.matrix.shape, tracker._auc.counts.shape)
    board.add(stream(20_000, classes=[0, 1], seed=2, start=3000))  # the bulk path
    one_by_one(board, stream(1500, classes=[0, 1], seed=3, start=23_000))
    assert (tracker._overall.matrix.shape, tracker._auc.counts.shape) == shapes == ((MAX_CLASSES + 1,) * 2,
                                                                                    (2, AUC_BINS))
    for size, window in tracker._windows.items():
        assert len(window._ring) == size and window._sums.count == size
    assert len(board._recent) == 1000
    assert board.count == 24_500


# ---------------------------------------------------------------- restore, bulk, versions


def write_csv(path, events: list[Observation]) -> None:
    writer = MetricLogWriter(path, fsync=False)
    try:
        writer.append([MetricRow(e.id, label_key(e.y_true), label_key(e.y_pred), e.absolute_error) for e in events])
    finally:
        writer.close()


def restored(path) -> list[Observation]:
    return [observation_of_row(row) for row in MetricLogTail(path).read_new()]


@pytest.mark.parametrize("classes", [[0, 1], ["no", "yes"], ANIMALS])
def test_rows_restored_from_the_csv_give_the_figures_the_live_events_gave(tmp_path, classes):
    events = stream(2500, classes=classes, seed=len(classes), version="v1")
    write_csv(tmp_path / "metric_log.csv", events)
    live = one_by_one(classifier_board(), events).snapshot()
    rows = restored(tmp_path / "metric_log.csv")
    assert [row.model_version for row in rows] == [None] * 2500
    from_csv = one_by_one(classifier_board(), rows).snapshot()
    for key in ("count", "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                "log_loss", "roc_auc", "confusion_matrix", "histogram"):
        assert_close(from_csv[key], live[key], key)
    for window in ("last_100", "last_1000"):
        assert from_csv["windows"][window]["f1_macro"] == pytest.approx(live["windows"][window]["f1_macro"])
        assert from_csv["windows"][window]["log_loss"] == pytest.approx(live["windows"][window]["log_loss"])
    if len(classes) == 2:
        assert from_csv["brier"] == pytest.approx(live["brier"]) and from_csv["brier_events"] == 2500
    else:  # a multiclass Brier score needs every class's probability, which the CSV does not keep
        assert from_csv["brier"] is None and from_csv["brier_events"] == 0
        assert live["brier_events"] == 2500
    assert list(from_csv["by_version"]) == ["unknown"] and list(live["by_version"]) == ["v1"]


def test_without_the_card_the_csv_tells_probabilities_by_its_fractional_errors(tmp_path):
    events = stream(300, classes=["no", "yes"], seed=4)
    write_csv(tmp_path / "metric_log.csv", events)
    board = QualityBoard(task=CLASSIFICATION)
    board.add(restored(tmp_path / "metric_log.csv"))
    assert_figures(board.figures()["all"], events, auc_tolerance=1e-3)


@pytest.mark.parametrize("before, classes", [(0, ANIMALS), (150, ANIMALS), (3000, ANIMALS), (150, [0, 1])])
def test_a_bulk_restore_gives_what_counting_one_by_one_gives(before, classes):
    events = stream(before + 9000, classes=classes, seed=before, version="v2")
    events[-3] = events[-3]._replace(model_version="v3")
    single, bulk = one_by_one(classifier_board(), events), classifier_board()
    bulk.add(events[:before])
    assert bulk.add(events[before:] + events[:5]) == 9000  # the bulk path, duplicates included
    expected_snapshot, actual = single.snapshot(), bulk.snapshot()
    for key in ("histogram", "confusion_matrix", "windows", "by_version", "classes", "events_model_version",
                "recent", "log_loss", "brier", "roc_auc"):
        assert_close(actual[key], expected_snapshot[key], key)
    assert_figures(actual, events, auc_tolerance=1e-3)
    assert (actual["roc_auc"] is None) == (len(classes) > 2)


def test_figures_per_model_version(tmp_path):
    restored_rows = [e._replace(model_version=None, probabilities=None) for e in stream(400, seed=1)]
    v1 = stream(700, seed=2, start=400, version="v1")
    v2 = stream(1800, seed=3, start=1100, version="v2")
    board = classifier_board()
    board.add(restored_rows)
    one_by_one(board, [event for pair in zip(v1, v2) for event in pair] + v2[len(v1):])
    by_version = board.snapshot()["by_version"]
    assert list(by_version) == ["unknown", "v1", "v2"]
    for version, events in (("unknown", restored_rows), ("v1", v1), ("v2", v2)):
        figures = by_version[version]
        assert figures["count"] == figures["all"]["count"] == len(events)
        assert set(figures["all"]) == {"count", "accuracy", "balanced_accuracy", "f1_macro", "log_loss"}
        for window, subset in (("all", events), ("last_1000", events[-1000:])):
            wanted = expected(subset, probabilities=False)
            for name in ("accuracy", "balanced_accuracy", "f1_macro"):
                assert figures[window][name] == pytest.approx(wanted[name]), (version, window, name)
    assert by_version["v2"]["all"]["log_loss"] == pytest.approx(expected(v2)["log_loss"])


def test_regression_figures_per_model_version():
    board = QualityBoard()
    rows = [Observation(f"r{i}", 100.0 + i, 90.0 + i) for i in range(50)]
    live = [Observation(f"e{i}", 100.0 + i % 7, 100.0 + i % 5, "abc") for i in range(1200)]
    board.add(rows)
    one_by_one(board, live)
    by_version = board.snapshot()["by_version"]
    assert by_version["unknown"]["all"] == {"count": 50, "mae": 10.0, "rmse": 10.0,
                                            "r2": pytest.approx(1 - 100 / 208.25)}
    last = live[-1000:]
    assert by_version["abc"]["last_1000"]["mae"] == pytest.approx(np.mean([abs(e.y_true - e.y_pred) for e in last]))
    assert by_version["abc"]["count"] == 1200


def test_only_the_versions_seen_last_are_kept():
    board = QualityBoard()
    for version in range(MAX_VERSIONS + 3):
        board.add([Observation(f"{version}-{i}", 1.0, 2.0, f"v{version}") for i in range(3)])
    board.add([Observation("again", 1.0, 2.0, "v3")])
    kept = board.by_version()
    assert list(kept) == [f"v{version}" for version in range(3, MAX_VERSIONS + 3)]
    assert kept["v3"]["count"] == 4


# ---------------------------------------------------------------- the task, the consumer, the gauges


def metric_added(event: Observation) -> bytes:
    return MetricAdded(id=event.id, y_true=event.y_true, y_pred=event.y_pred, absolute_error=event.absolute_error,
                       probabilities=event.probabilities, model_version=event.model_version).encode()


def test_the_task_comes_from_the_setting_or_card_else_from_the_events():
    board = QualityBoard()
    numbers = [Observation("a", 1.0, 0.0, absolute_error=1.0)]
    text = [Observation("b", "yes", "no", absolute_error=1.0)]
    assert board.task_for(numbers) == REGRESSION
    assert board.task_for(text) == CLASSIFICATION
    assert board.task_for([numbers[0]._replace(probabilities={"0": 0.4, "1": 0.6})]) == CLASSIFICATION
    board.follow(TaskHint(CLASSIFICATION))
    assert board.task_for(numbers) == CLASSIFICATION
    board.follow(TaskHint(REGRESSION))
    assert board.task_for(text) == REGRESSION  # what the card says wins; the event is then refused
    board.restart(CLASSIFICATION)
    board.follow(TaskHint())
    assert board.task_for(numbers) == CLASSIFICATION  # once a classifier's, for good


def test_text_labels_switch_the_board_and_the_csv_is_counted_again(tmp_path):
    """Numeric labels restored without a card read as a regression; the first text label (or a
    card) shows a classifier: the board starts again and counts the whole CSV as one."""
    csv_path = tmp_path / "metric_log.csv"
    early = stream(30, classes=[0, 1], seed=1, probabilities=False)
    write_csv(csv_path, early)
    board = QualityBoard()
    counter = EventCounter(board, MetricLogTail(csv_path), prefetch=10)
    counter.on_connected(FakeSession())
    assert board.task == REGRESSION and board.count == 30
    later = [Observation("t1", "1", "1", "v9", 0.2, {"0": 0.2, "1": 0.8})]
    write_csv(csv_path, later)
    counter.on_batch([FakeDelivery(metric_added(later[0]))])
    assert board.task == CLASSIFICATION and board.count == 31
    snapshot = board.snapshot()
    assert snapshot["confusion_matrix"] == expected(early + later, probabilities=False)["confusion_matrix"]
    assert snapshot["classes"]["with_probabilities"] is True


def test_a_card_that_says_classification_switches_numeric_labels(tmp_path):
    csv_path = tmp_path / "metric_log.csv"
    events = stream(40, classes=[0, 1, 2], seed=2, probabilities=False)
    write_csv(csv_path, events)
    hint = [TaskHint()]
    board = QualityBoard()
    counter = EventCounter(board, MetricLogTail(csv_path), prefetch=10, hint=lambda: hint[0])
    counter.catch_up()
    assert board.task == REGRESSION
    hint[0] = TaskHint(CLASSIFICATION, [0, 1, 2], False)
    counter.on_connected(FakeSession())
    assert board.task == CLASSIFICATION and board.count == 40
    assert_figures(board.figures()["all"], events, probabilities=False)


def test_rows_refused_under_a_regression_card_are_counted_once_the_card_says_classification(tmp_path):
    csv_path = tmp_path / "metric_log.csv"
    events = stream(25, classes=["no", "yes"], seed=6)
    write_csv(csv_path, events)
    hint = [TaskHint(REGRESSION)]
    board = QualityBoard()
    counter = EventCounter(board, MetricLogTail(csv_path), prefetch=10, hint=lambda: hint[0])
    assert counter.catch_up() == 0 and board.task == REGRESSION
    hint[0] = TaskHint(CLASSIFICATION, ["no", "yes"], True)
    counter.on_connected(FakeSession())
    assert board.task == CLASSIFICATION and board.count == 25
    assert_figures(board.figures()["all"], events, auc_tolerance=1e-3)


def test_a_text_label_under_a_regression_card_is_dead_lettered(tmp_path):
    board = QualityBoard()
    session = FakeSession()
    counter = EventCounter(board, MetricLogTail(tmp_path / "metric_log.csv"), prefetch=10,
                           hint=lambda: TaskHint(REGRESSION))
    counter.on_connected(session)
    text = Observation("t", "yes", "no", None, 1.0)
    deliveries = [FakeDelivery(metric_added(text)), FakeDelivery(metric_added(Observation("n", 3.0, 1.0, None, 2.0)))]
    counter.on_batch(deliveries)
    ((body, reason),) = session.dead_letters
    assert body == metric_added(text) and reason.startswith("y_true:") and "TASK=classification" in reason
    assert board.task == REGRESSION and board.count == 1 and all(d.acked for d in deliveries)


def test_the_card_gives_the_task_classes_and_held_out_figures(tmp_path):
    card = {"version": "v1", "trained_at": "2026-01-01T00:00:00Z", "estimator": "LogisticRegression()",
            "feature_names": ["a"], "holdout_mae": None, "holdout_rmse": None, "holdout_r2": None,
            "train_rows": 80, "holdout_rows": 20, "sklearn_version": "1.9", "task": "classification",
            "classes": ["no", "yes"], "predicts_proba": True,
            "holdout": {"accuracy": 0.8, "f1_macro": 0.75, "roc_auc": 0.9}}
    (tmp_path / CARD_NAME).write_text(json.dumps(card))
    watcher = ModelCardWatcher(tmp_path)
    assert watcher.hint() == TaskHint(CLASSIFICATION, ["no", "yes"], True)
    assert watcher.hint("regression").task == REGRESSION
    assert watcher.current()["holdout"] == {"accuracy": 0.8, "f1_macro": 0.75, "roc_auc": 0.9}
    assert ModelCardWatcher(tmp_path / "nowhere").hint() == TaskHint(None, None, False)


def test_classification_and_per_version_gauges():
    board = classifier_board()
    events = stream(300, classes=["no", "yes"], seed=3, version="v1") + stream(50, ["no", "yes"], 4, 300, version="v2")
    one_by_one(board, events)
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in QualityCollector(board).collect() for sample in family.samples}
    wanted = expected(events)
    assert samples[("mlmonitor_quality_accuracy", (("window", "all"),))] == pytest.approx(wanted["accuracy"])
    assert samples[("mlmonitor_quality_roc_auc", (("window", "all"),))] == pytest.approx(wanted["roc_auc"], abs=1e-3)
    assert samples[("mlmonitor_quality_events", (("window", "last_100"),))] == 100
    assert ("mlmonitor_quality_mae", (("window", "all"),)) not in samples
    assert samples[("mlmonitor_quality_version_events", (("version", "v2"), ("window", "all")))] == 50
    assert samples[("mlmonitor_quality_version_accuracy", (("version", "v1"), ("window", "last_1000")))] == \
        pytest.approx(expected(events[:300])["accuracy"])


def test_errors_of_a_classifier_fill_the_histogram_from_0_to_1():
    board = classifier_board()
    board.add([Observation("a", "x", "x", absolute_error=0.0), Observation("b", "x", "y", absolute_error=1.0),
               Observation("c", "x", "x", absolute_error=0.31)])
    histogram = board.snapshot()["histogram"]
    assert histogram["bin_width"] == 0.025 and len(histogram["counts"]) == 40  # an error of 1 is in the last
    assert histogram["counts"][0] == 1 and histogram["counts"][12] == 1 and histogram["counts"][39] == 1


def test_the_classification_snapshot_is_strict_json():
    board = classifier_board()
    empty = board.snapshot()
    assert empty["count"] == 0 and empty["accuracy"] is None and empty["confusion_matrix"]["labels"] == []
    one_by_one(board, stream(5, classes=["no", "yes"], seed=1))
    snapshot = board.snapshot()
    json.dumps(snapshot, allow_nan=False)
    assert snapshot["task"] == CLASSIFICATION and snapshot["recent"]["rolling_window"] == 100
