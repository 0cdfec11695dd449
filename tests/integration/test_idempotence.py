"""A pair published twice, or seen again by a restarted metric, writes one row; every subscriber hears of it."""

from __future__ import annotations

import json
import signal

import pytest

from broker import drain, publish_raw, queue_depth
from service_harness import assert_alive, assert_no_dead_letters, declare_topology, wait_for_rows, wait_until_drained

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

AUDIT_QUEUE = "audit"  # a second subscriber of metric_events, besides plot's metric_added
QUICK_EXPIRY = ["--join-ttl-seconds", "1", "--join-max-wait-seconds", "2"]  # so lone duplicates are settled soon


def publish_pair(amqp_url: str, event_id: str, y_true: float, y_pred: float) -> None:
    publish_raw(amqp_url, "y_true", [{"id": event_id, "body": y_true}])
    publish_raw(amqp_url, "y_pred", [{"id": event_id, "body": y_pred, "model_version": "test"}])


def test_duplicates_and_a_restart_write_one_row_per_id_and_every_subscriber_gets_the_event(
        pipeline, amqp_url, vhost, logs_dir):
    declare_topology(amqp_url, extra_queue_on_metric_events=AUDIT_QUEUE)
    pipeline.start("metric", QUICK_EXPIRY)

    publish_pair(amqp_url, "duplicated", 151.0, 140.0)
    publish_pair(amqp_url, "duplicated", 151.0, 140.0)
    publish_pair(amqp_url, "across-restart", 100.0, 104.5)
    wait_for_rows(logs_dir, 2)
    pipeline.kill("metric", signal.SIGKILL)  # its acks may not have gone out: the broker redelivers
    pipeline.start("metric", QUICK_EXPIRY)
    publish_pair(amqp_url, "across-restart", 100.0, 104.5)

    wait_until_drained(vhost, "y_true", "y_pred")
    rows = wait_for_rows(logs_dir, 2)
    assert {row["id"]: float(row["absolute_error"]) for row in rows} == {"duplicated": 11.0, "across-restart": 4.5}
    assert_no_dead_letters(amqp_url, "y_true", "y_pred")
    assert_alive(pipeline, "metric")

    audit_events = [json.loads(body) for body, _ in drain(amqp_url, AUDIT_QUEUE)]
    assert {event["id"] for event in audit_events} == {"duplicated", "across-restart"}
    for event in audit_events:
        assert event["absolute_error"] == {"duplicated": 11.0, "across-restart": 4.5}[event["id"]]
        assert event["model_version"] == "test"
    # a redelivered pair publishes its event again, to every subscriber alike
    assert queue_depth(amqp_url, "metric_added") == len(audit_events)


def test_a_classifier_s_pair_published_twice_and_again_after_a_restart_writes_one_labelled_row(
        pipeline, amqp_url, vhost, logs_dir):
    declare_topology(amqp_url, extra_queue_on_metric_events=AUDIT_QUEUE)
    pipeline.start("metric", QUICK_EXPIRY)
    prediction = {"id": "churn-1", "body": "stays", "probabilities": {"leaves": 0.25, "stays": 0.75},
                  "model_version": "clf"}

    for _ in range(2):
        publish_raw(amqp_url, "y_true", [{"id": "churn-1", "body": "leaves"}])
        publish_raw(amqp_url, "y_pred", [prediction])
    wait_for_rows(logs_dir, 1)
    pipeline.kill("metric", signal.SIGKILL)
    pipeline.start("metric", QUICK_EXPIRY)
    publish_raw(amqp_url, "y_true", [{"id": "churn-1", "body": "leaves"}])
    publish_raw(amqp_url, "y_pred", [prediction])

    wait_until_drained(vhost, "y_true", "y_pred")
    assert (logs_dir / "metric_log.csv").read_text().splitlines()[1:] == ["churn-1,leaves,stays,0.75"]
    assert_no_dead_letters(amqp_url, "y_true", "y_pred")
    audit_events = [json.loads(body) for body, _ in drain(amqp_url, AUDIT_QUEUE)]
    # an event published again from the log after the restart (a half that came alone) has no
    # probabilities or version, which the log does not keep; the labels and the error it has
    assert {(e["id"], e["y_true"], e["y_pred"], e["absolute_error"]) for e in audit_events} == {
        ("churn-1", "leaves", "stays", 0.75)}
    assert any(e.get("probabilities") == {"leaves": 0.25, "stays": 0.75} and e.get("model_version") == "clf"
               for e in audit_events)
