"""metric's scoring of a joined pair: regression |y_true − y_pred|, classification 1 − p(true class)
or 0/1, and the pairs it refuses, with their reason."""

from __future__ import annotations

import pytest

from metric import MetricJoiner, Pair, ScoredPair, Settings, score
from mlmonitor.messages import MetricAdded, PredictionMessage, TargetMessage
from mlmonitor.metric_log import HEADER_LINE, MetricLogWriter, MetricRow, read_rows
from mlmonitor.settings import load_settings
from fakes import FakeDelivery


def target(body, id: str = "a", sent_at: float | None = None) -> TargetMessage:
    return TargetMessage(id=id, body=body, sent_at=sent_at)


def prediction(body, probabilities: dict | None = None, id: str = "a") -> PredictionMessage:
    return PredictionMessage(id=id, body=body, probabilities=probabilities, model_version="v7")


@pytest.mark.parametrize("task", ["auto", "regression"])
def test_a_regression_pair_scores_the_absolute_difference(task):
    assert score(target(151.0), prediction(160.25), task) == MetricRow("a", 151.0, 160.25, 9.25)
    assert score(target(100.0), prediction(90.0), task).absolute_error == 10.0


@pytest.mark.parametrize("task", ["auto", "classification"])
def test_text_labels_without_probabilities_score_zero_when_right_and_one_when_wrong(task):
    assert score(target("yes"), prediction("yes"), task) == MetricRow("a", "yes", "yes", 0.0)
    assert score(target("no"), prediction("yes"), task) == MetricRow("a", "no", "yes", 1.0)


@pytest.mark.parametrize("task", ["auto", "classification"])
def test_probabilities_score_one_minus_the_probability_of_the_true_class(task):
    probabilities = {"no": 0.25, "yes": 0.75}
    assert score(target("yes"), prediction("yes", probabilities), task) == MetricRow("a", "yes", "yes", 0.25)
    assert score(target("no"), prediction("yes", probabilities), task) == MetricRow("a", "no", "yes", 0.75)


@pytest.mark.parametrize("y_true", [0.0, 1.0])
def test_binary_numeric_labels_with_probabilities_score_the_distance_to_p_of_one(y_true):
    row = score(target(y_true), prediction(1.0, {"0": 0.3, "1": 0.7}), "auto")
    assert row.absolute_error == pytest.approx(abs(y_true - 0.7))
    assert (row.y_true, row.y_pred) == (str(int(y_true)), "1")


def test_a_true_class_missing_from_the_probabilities_counts_as_probability_zero():
    assert score(target("maybe"), prediction("yes", {"no": 0.4, "yes": 0.6}), "auto").absolute_error == 1.0


@pytest.mark.parametrize("y_true, y_pred", [(1.0, "1"), ("1", 1.0), (2.0, 2.0), ("2", "2")])
def test_labels_of_any_type_with_the_same_key_are_the_same_class(y_true, y_pred):
    row = score(target(y_true), prediction(y_pred), "classification")
    assert row.absolute_error == 0.0
    assert row.y_true == row.y_pred and isinstance(row.y_true, str)


def test_numbers_that_differ_are_different_classes_and_fractions_keep_their_digits():
    assert score(target(1.0), prediction(2.0), "classification") == MetricRow("a", "1", "2", 1.0)
    assert score(target(0.5), prediction("0.5"), "classification") == MetricRow("a", "0.5", "0.5", 0.0)


def test_numeric_labels_without_probabilities_are_a_regression_unless_metric_is_told():
    assert score(target(1.0), prediction(0.0), "auto").y_pred == 0.0  # a number: |1 − 0|
    assert score(target(1.0), prediction(0.0), "classification").y_pred == "0"


@pytest.mark.parametrize("y_true, y_pred, field", [("yes", 148.2, "y_true"), ("1", 1.0, "y_true")])
def test_auto_refuses_a_text_target_beside_a_bare_number_naming_the_field_and_the_fix(y_true, y_pred, field):
    reason = score(target(y_true), prediction(y_pred), "auto")
    assert isinstance(reason, str) and "\n" not in reason
    assert reason.startswith(f"{field}: can't score the text {y_true!r} as a regression")
    assert "TASK=classification" in reason


@pytest.mark.parametrize("y_true, y_pred, field", [("yes", 148.2, "y_true"), (151.0, "yes", "y_pred"),
                                                   (151.0, "1", "y_pred")])
def test_regression_refuses_any_text_label(y_true, y_pred, field):
    reason = score(target(y_true), prediction(y_pred, {"yes": 1.0} if y_pred == "yes" else None), "regression")
    assert reason.startswith(f"{field}: can't score the text {(y_true if field == 'y_true' else y_pred)!r}")
    assert "(TASK=regression)" in reason and "TASK=classification on metric" in reason


def test_the_event_carries_the_labels_probabilities_and_model_version():
    pair = Pair(target("yes", sent_at=1700000000.5), prediction("no", {"no": 0.875, "yes": 0.125}), ["d1", "d2"])
    scored = ScoredPair(pair, score(pair.y_true, pair.y_pred, "auto"))
    assert (scored.id, scored.deliveries) == ("a", ["d1", "d2"])
    assert scored.event() == MetricAdded(id="a", y_true="yes", y_pred="no", absolute_error=0.875,
                                         probabilities={"no": 0.875, "yes": 0.125}, model_version="v7",
                                         sent_at=1700000000.5)


def test_a_regression_event_is_the_same_bytes_as_before_classifiers():
    pair = Pair(target(151.0, sent_at=1700000000.5), prediction(160.25), [])
    event = ScoredPair(pair, score(pair.y_true, pair.y_pred, "auto")).event()
    assert event.encode() == (b'{"id":"a","y_true":151.0,"y_pred":160.25,"absolute_error":9.25,'
                              b'"model_version":"v7","sent_at":1700000000.5}')


class DeadLetteringSession:
    def __init__(self):
        self.dead_lettered: list[tuple[FakeDelivery, str]] = []
        self.from_threads = []

    def dead_letter(self, delivery, reason: str) -> None:
        self.dead_lettered.append((delivery, reason))

    def call_threadsafe(self, callback) -> None:
        self.from_threads.append(callback)


def test_the_joiner_dead_letters_both_halves_of_a_pair_it_can_t_score_and_writes_no_row(tmp_path):
    writer = MetricLogWriter(tmp_path / "metric_log.csv", fsync=False)
    joiner = MetricJoiner(load_settings(Settings, ["--logs-dir", str(tmp_path), "--task", "regression"]), writer)
    joiner._session = session = DeadLetteringSession()
    try:
        halves = [FakeDelivery("y_true", target("yes")), FakeDelivery("y_pred", prediction(148.2))]
        joiner.on_batch(halves)
        assert [delivery for delivery, _ in session.dead_lettered] == halves
        assert {reason for _, reason in session.dead_lettered} == {score(target("yes"), prediction(148.2), "regression")}
        assert len(joiner._buffer) == 0 and session.from_threads == []
        assert (tmp_path / "metric_log.csv").read_text() == HEADER_LINE
    finally:
        joiner.close()
        writer.close()


def test_the_joiner_writes_a_classifier_s_labels_to_the_log(tmp_path):
    writer = MetricLogWriter(tmp_path / "metric_log.csv", fsync=False)
    joiner = MetricJoiner(load_settings(Settings, ["--logs-dir", str(tmp_path)]), writer)
    joiner._session = session = DeadLetteringSession()
    try:
        joiner.on_batch([FakeDelivery("y_true", target("no, thanks")),
                         FakeDelivery("y_pred", prediction("yes", {"no, thanks": 0.25, "yes": 0.75}))])
        assert session.dead_lettered == []
        assert list(read_rows(tmp_path / "metric_log.csv")) == [MetricRow("a", "no, thanks", "yes", 0.75)]
    finally:
        joiner.close()
        writer.close()
