"""metric scores a classifier's pairs (labels, probabilities) and dead-letters a pair a regression can't score."""

from __future__ import annotations

import json

import pika
import pytest

from broker import connect, drain, publish_raw
from mlmonitor.metric_log import HEADER_LINE
from mlmonitor.topology import PREDICTIONS_EXCHANGE, Y_PRED
from service_harness import (assert_alive, assert_no_dead_letters, csv_rows, declare_topology, wait_for_dead_letters,
                             wait_for_rows, wait_until_drained)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

AUDIT_QUEUE = "audit"  # a subscriber of metric_events of the test's own


def publish_to_predictions_exchange(amqp_url: str, bodies: list[dict]) -> None:
    """As our model and a model served elsewhere do: the fanout exchange `predictions`, bound to y_pred."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(PREDICTIONS_EXCHANGE, Y_PRED, json.dumps(body).encode(),
                                  pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def wait_for_events(amqp_url: str, count: int) -> dict[str, dict]:
    events: dict[str, dict] = {}

    def all_arrived() -> bool:
        for body, _ in drain(amqp_url, AUDIT_QUEUE):
            event = json.loads(body)
            events[event["id"]] = event
        return len(events) >= count

    wait_until(all_arrived, 30, interval=0.1, message=f"{count} events in {AUDIT_QUEUE}")
    return events


def log_text(logs_dir) -> str:
    return (logs_dir / "metric_log.csv").read_text(encoding="utf-8")


def test_text_labels_with_probabilities_give_labelled_rows_and_events_whichever_way_y_pred_comes(
        pipeline, amqp_url, vhost, logs_dir):
    declare_topology(amqp_url, extra_queue_on_metric_events=AUDIT_QUEUE)
    pipeline.start("metric")  # TASK=auto: the text labels and probabilities make these a classifier's

    publish_raw(amqp_url, "y_true", [{"id": "right", "body": "yes", "sent_at": 1700000000.5},
                                     {"id": "wrong", "body": "no, thanks"},
                                     {"id": "course", "body": "no, thanks"}])
    publish_to_predictions_exchange(amqp_url, [
        {"id": "right", "body": "yes", "probabilities": {"yes": 0.875, "no, thanks": 0.125}, "model_version": "m1"},
        {"id": "wrong", "body": "yes", "probabilities": {"yes": 0.75, "no, thanks": 0.25}, "model_version": "m1"}])
    # the course format: straight to the y_pred queue, a label and no probabilities
    publish_raw(amqp_url, "y_pred", [{"id": "course", "body": "yes", "model_version": "m2"}])

    wait_for_rows(logs_dir, 3)
    assert sorted(log_text(logs_dir).splitlines()[1:]) == sorted(
        ['right,yes,yes,0.125', 'wrong,"no, thanks",yes,0.75', 'course,"no, thanks",yes,1.0'])
    events = wait_for_events(amqp_url, 3)
    assert events == {
        "right": {"id": "right", "y_true": "yes", "y_pred": "yes", "absolute_error": 0.125,
                  "probabilities": {"yes": 0.875, "no, thanks": 0.125}, "model_version": "m1", "sent_at": 1700000000.5},
        "wrong": {"id": "wrong", "y_true": "no, thanks", "y_pred": "yes", "absolute_error": 0.75,
                  "probabilities": {"yes": 0.75, "no, thanks": 0.25}, "model_version": "m1"},
        "course": {"id": "course", "y_true": "no, thanks", "y_pred": "yes", "absolute_error": 1.0, "model_version": "m2"},
    }
    wait_until_drained(vhost, "y_true", "y_pred")
    assert_no_dead_letters(amqp_url, "y_true", "y_pred")
    assert_alive(pipeline, "metric")


def test_numeric_labels_without_probabilities_are_classes_with_task_classification(pipeline, amqp_url, vhost,
                                                                                  logs_dir):
    declare_topology(amqp_url, extra_queue_on_metric_events=AUDIT_QUEUE)
    pipeline.start("metric", env={"TASK": "classification"})

    publish_raw(amqp_url, "y_true", [{"id": "hit", "body": 1}, {"id": "miss", "body": 0}, {"id": "text", "body": "1"}])
    publish_raw(amqp_url, "y_pred", [{"id": "hit", "body": 1, "model_version": "ints"},
                                     {"id": "miss", "body": 1, "model_version": "ints"}])
    publish_to_predictions_exchange(amqp_url, [{"id": "text", "body": 1.0, "model_version": "ints"}])

    wait_for_rows(logs_dir, 3)
    assert sorted(log_text(logs_dir).splitlines()[1:]) == ["hit,1,1,0.0", "miss,0,1,1.0", "text,1,1,0.0"]
    events = wait_for_events(amqp_url, 3)
    assert {id: (e["absolute_error"], e["model_version"], "probabilities" in e) for id, e in events.items()} == {
        "hit": (0.0, "ints", False), "miss": (1.0, "ints", False), "text": (0.0, "ints", False)}
    assert (events["miss"]["y_true"], events["miss"]["y_pred"], events["text"]["y_true"]) == (0.0, 1.0, "1")
    wait_until_drained(vhost, "y_true", "y_pred")
    assert_no_dead_letters(amqp_url, "y_true", "y_pred")


@pytest.mark.parametrize("task, y_true, y_pred, field", [
    ("auto", "yes", {"body": 148.2}, "y_true"),
    ("regression", 151.0, {"body": "1", "probabilities": {"1": 0.5, "0": 0.5}}, "y_pred"),
])
def test_a_regression_pair_with_a_text_label_is_dead_lettered_whole_with_its_reason(
        pipeline, amqp_url, vhost, logs_dir, task, y_true, y_pred, field):
    declare_topology(amqp_url)
    pipeline.start("metric", ["--task", task])

    publish_raw(amqp_url, "y_true", [{"id": "mixed", "body": y_true}])
    publish_raw(amqp_url, "y_pred", [{"id": "mixed", **y_pred}])

    [(true_body, true_reason)] = wait_for_dead_letters(amqp_url, "y_true", 1)
    [(pred_body, pred_reason)] = wait_for_dead_letters(amqp_url, "y_pred", 1)
    assert json.loads(true_body)["body"] == y_true and json.loads(pred_body)["body"] == y_pred["body"]
    assert true_reason == pred_reason
    assert true_reason.startswith(f"{field}: can't score the text ")
    assert "as a regression" in true_reason and "TASK=classification on metric" in true_reason
    wait_until_drained(vhost, "y_true", "y_pred")
    assert csv_rows(logs_dir) == [] and log_text(logs_dir) == HEADER_LINE
    assert_alive(pipeline, "metric")
