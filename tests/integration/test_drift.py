"""The drift service alone against the real broker, with a trained model's card: predictions with their
inputs one a message on the `predictions` exchange (a model served elsewhere) or in batches on
`prediction_batches` (our model), joined pairs in batches on `metric_batches`. A stationary stream raises
nothing; a shifted feature raises one feature_drift alert, in alerts.jsonl and on monitor_alerts; a
SIGKILL mid-stream neither raises the open alert again nor loses or double-counts an event."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pika
import pytest
from sklearn.datasets import load_diabetes

from broker import connect, drain
from mlmonitor.model_store import load_model
from mlmonitor.topology import (DRIFT_EVENTS, DRIFT_PREDICTIONS, DRIFT_QUEUES, METRIC_BATCHES_EXCHANGE,
                                METRIC_EVENTS_EXCHANGE, MONITOR_ALERTS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE,
                                PREDICTIONS_EXCHANGE, RETIRED_DRIFT_QUEUES)
from service_harness import (assert_alive, free_port, output_of, wait_for_consumers, wait_for_dead_letters,
                             wait_for_output)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

DIABETES = load_diabetes()
BMI = DIABETES.feature_names.index("bmi")
BMI_STD = float(DIABETES.data[:, BMI].std())
RAISED_ALERTS = "test.feature_drift.raised"  # a notifier's queue, bound to monitor_alerts


class Stream:
    """Events replaying the diabetes population in a seeded order, bmi moved by 1 std from `shift_from`;
    the predictions are the trained model's on the unshifted inputs, so only the feature drifts."""

    def __init__(self, models_dir: Path, count: int, shift_from: int | None = None, seed: int = 5):
        estimator, _ = load_model(models_dir)
        rows = np.random.default_rng(seed).integers(len(DIABETES.target), size=count)
        self.features = DIABETES.data[rows].copy()
        self.predictions = estimator.predict(self.features)
        if shift_from is not None:
            self.features[shift_from:, BMI] += BMI_STD
        self.targets = DIABETES.target[rows]
        self.ids = [str(uuid.uuid4()) for _ in range(count)]

    def publish(self, amqp_url: str, events: range, batched: bool = False, batch_size: int = 37) -> None:
        """The predictions one a message as a model served elsewhere sends them, or `batched` as our
        model does; the joined pairs in batches, as metric does."""
        connection = connect(amqp_url)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            persistent = pika.BasicProperties(delivery_mode=2)
            for start in range(events.start, events.stop, batch_size):
                predictions, joined = [], []
                for event in range(start, min(start + batch_size, events.stop)):
                    id, y_pred, y_true = self.ids[event], float(self.predictions[event]), float(self.targets[event])
                    predictions.append({"id": id, "body": y_pred, "model_version": "m",
                                        "features": self.features[event].tolist()})
                    joined.append({"id": id, "y_true": y_true, "y_pred": y_pred, "absolute_error": abs(y_true - y_pred)})
                if batched:
                    channel.basic_publish(PREDICTION_BATCHES_EXCHANGE, "", json.dumps({"predictions": predictions}).encode(),
                                          persistent)
                else:
                    for prediction in predictions:
                        channel.basic_publish(PREDICTIONS_EXCHANGE, "y_pred", json.dumps(prediction).encode(), persistent)
                channel.basic_publish(METRIC_BATCHES_EXCHANGE, "", json.dumps({"events": joined}).encode(), persistent)
        finally:
            connection.close()


def bind_notifier(amqp_url: str) -> None:
    """What a user's notifier does: its own queue on monitor_alerts, bound to the key it cares about."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.exchange_declare(MONITOR_ALERTS_EXCHANGE, "topic", durable=True)
        channel.queue_declare(RAISED_ALERTS, durable=True)
        channel.queue_bind(RAISED_ALERTS, MONITOR_ALERTS_EXCHANGE, "feature_drift.raised")
    finally:
        connection.close()


def alert_lines(logs_dir: Path) -> list[dict]:
    path = logs_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(logs_dir: Path) -> dict:
    try:
        return json.loads((logs_dir / "drift_summary.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_for_events(logs_dir: Path, count: int, timeout: float = 60) -> dict:
    """The summary once each stream has counted `count` ids; fails on more."""
    def counted():
        events = summary(logs_dir).get("events", {})
        assert events.get("predictions", 0) <= count and events.get("outcomes", 0) <= count, events
        return events == {"predictions": count, "outcomes": count}

    wait_until(counted, timeout, interval=0.2, message=f"drift to count {count} events on each stream")
    return summary(logs_dir)


def start_drift(pipeline, amqp_url: str):
    process = pipeline.start("drift", env={"NICE": "0"})
    wait_for_consumers(amqp_url, *DRIFT_QUEUES)  # it consumes once the detectors are calibrated
    return process


def backlog(port: int) -> dict[str, float]:
    """mlmonitor_drift_backlog_messages per queue, as drift's /metrics shows it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {queue: float(value) for queue, value in
            re.findall(r'^mlmonitor_drift_backlog_messages\{queue="([^"]+)"\} (\S+)$', text, re.MULTILINE)}


def backlog_if_up(port: int) -> dict[str, float]:
    try:
        return backlog(port)
    except OSError:  # its /metrics is not listening yet
        return {}


def test_the_backlog_of_drift_s_queues_is_on_its_metrics_until_it_catches_up(pipeline, amqp_url, models_dir,
                                                                            trained_models, logs_dir):
    """Drift's queues are outside the backpressure: their depth is what shows it falling behind.
    Before the model card exists drift consumes nothing, so what is published waits."""
    port = free_port()
    pipeline.start("drift", env={"NICE": "0", "METRICS_PORT": str(port)})
    # its first poll comes once drift has declared its queues and their bindings: a publish before the
    # binding would reach y_pred alone (the queues existing is not enough)
    wait_until(lambda: set(backlog_if_up(port)) >= set(DRIFT_QUEUES), 60, interval=0.5,
               message="drift's queues, bound, on its /metrics")
    stream = Stream(trained_models, 40)
    stream.publish(amqp_url, range(40), batch_size=10)  # 40 predictions one a message, 4 batches of pairs
    wait_until(lambda: backlog(port).get(DRIFT_PREDICTIONS) == 40 and backlog(port).get(DRIFT_EVENTS) == 4, 30,
               interval=0.5, message="the backlog on drift's /metrics")
    shutil.copytree(trained_models, models_dir, ignore=shutil.ignore_patterns("output"))
    wait_for_events(logs_dir, 40)
    wait_until(lambda: not any(backlog(port).values()), 30, interval=0.5, message="the backlog back to 0")
    assert_alive(pipeline, "drift")


def test_a_stationary_stream_raises_nothing(pipeline, amqp_url, trained_model, logs_dir):
    bind_notifier(amqp_url)
    start_drift(pipeline, amqp_url)
    stream = Stream(trained_model, 1000)
    stream.publish(amqp_url, range(1000))

    state = wait_for_events(logs_dir, 1000)
    assert alert_lines(logs_dir) == []
    assert drain(amqp_url, RAISED_ALERTS) == []
    assert {detector["state"] for detector in state["detectors"]} == {"normal"}
    assert {detector["detector"]: detector["events"] for detector in state["detectors"]} == {
        **{f"feature.{name}": 1000 for name in DIABETES.feature_names}, "prediction": 1000, "target": 1000,
        "performance": 1000}
    assert_alive(pipeline, "drift")


def test_a_shifted_feature_raises_one_alert_in_the_log_and_on_monitor_alerts(pipeline, amqp_url, trained_model,
                                                                             logs_dir):
    bind_notifier(amqp_url)
    start_drift(pipeline, amqp_url)
    stream = Stream(trained_model, 1000, shift_from=300)
    stream.publish(amqp_url, range(1000))

    wait_for_events(logs_dir, 1000)
    wait_until(lambda: alert_lines(logs_dir), 10, message="an alert line")
    [line] = alert_lines(logs_dir)
    assert (line["kind"], line["feature"], line["state"], line["detector"]) == ("feature_drift", "bmi", "raised",
                                                                                "feature.bmi")
    assert 300 < line["events"] < 600, f"raised after {line['events']} events, the shift began after 300"
    assert line["score"] >= line["threshold"] == 1.0
    assert line["model_version"] == json.loads((trained_model / "model_card.json").read_text())["version"]
    assert line["explanation"]["since"]["mean"] > line["explanation"]["reference"]["mean"] + 0.5 * BMI_STD
    [(body, _)] = wait_until(lambda: drain(amqp_url, RAISED_ALERTS), 10, message="the alert on monitor_alerts")
    assert json.loads(body) == line
    wait_for_output(pipeline, "drift", "raised feature_drift alert for bmi after")


def test_a_kill_mid_stream_neither_raises_the_open_alert_again_nor_loses_an_event(pipeline, amqp_url, trained_model,
                                                                                logs_dir):
    bind_notifier(amqp_url)
    start_drift(pipeline, amqp_url)
    stream = Stream(trained_model, 4000, shift_from=300)
    stream.publish(amqp_url, range(1500), batched=True)
    wait_until(lambda: alert_lines(logs_dir), 60, message="the bmi alert")
    publisher = threading.Thread(target=stream.publish, args=(amqp_url, range(1500, 4000)), kwargs={"batched": True})
    publisher.start()
    try:
        wait_until(lambda: summary(logs_dir).get("events", {}).get("predictions", 0) > 1700, 60,
                   message="drift to take in part of the second half")
        pipeline.kill("drift", signal.SIGKILL)
        start_drift(pipeline, amqp_url)
    finally:
        publisher.join(120)
    stream.publish(amqp_url, range(1000, 1100), batch_size=13)  # again by an upstream that restarted, cut otherwise

    state = wait_for_events(logs_dir, 4000)
    assert "carrying on from" in output_of(pipeline, "drift")
    raised = [(line["detector"], line["state"]) for line in alert_lines(logs_dir) if line["kind"] == "feature_drift"]
    assert raised == [("feature.bmi", "raised")]
    assert [json.loads(body)["feature"] for body, _ in drain(amqp_url, RAISED_ALERTS)] == ["bmi"]
    bmi = next(detector for detector in state["detectors"] if detector["feature"] == "bmi")
    assert (bmi["events"], bmi["state"]) == (4000, "raised")
    assert_alive(pipeline, "drift")


def test_a_prediction_whose_inputs_do_not_fit_the_card_is_dead_lettered_with_the_reason(pipeline, amqp_url,
                                                                                        trained_model):
    start_drift(pipeline, amqp_url)
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        body = {"id": "short", "body": 150.0, "features": [0.1, 0.2]}
        channel.basic_publish(PREDICTIONS_EXCHANGE, "y_pred", json.dumps(body).encode(),
                              pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()
    [(_, reason)] = wait_for_dead_letters(amqp_url, DRIFT_PREDICTIONS, 1)
    assert reason.startswith("features: expected 10 features ('age', 'sex', 'bmi'")
    assert_alive(pipeline, "drift")


def test_an_older_drift_s_queue_on_metric_events_is_retired_at_start(pipeline, amqp_url, trained_model):
    [old] = RETIRED_DRIFT_QUEUES
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.exchange_declare(METRIC_EVENTS_EXCHANGE, "fanout", durable=True)
        channel.queue_declare(old, durable=True)
        channel.queue_bind(old, METRIC_EVENTS_EXCHANGE)
    finally:
        connection.close()
    start_drift(pipeline, amqp_url)
    wait_for_output(pipeline, "drift", f"deleted {old}, an older drift's queue, which held 0 events")
    connection = connect(amqp_url)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            connection.channel().queue_declare(old, passive=True)
    finally:
        connection.close()
