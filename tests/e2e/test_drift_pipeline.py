"""End to end, as `make run` runs it: every service a separate process on the real RabbitMQ, features
simulating drift. A shift of bmi by 1 standard deviation from event 1500 raises the feature_drift
alert for bmi, soon after 1500 events and for no other feature; a stationary run of the same length
raises no alert at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import connect, drain
from mlmonitor.topology import DRIFT_QUEUES
from run_pipeline import Pipeline
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

EVENTS = 4000
SHIFT_FROM = 1500
NOTIFIER = "test.alerts"  # bound to every alert on monitor_alerts, as a user's notifier would be


@pytest.fixture
def pipeline(amqp_url: str, tmp_path: Path):
    env = {"AMQP_URL": amqp_url, "LOGS_DIR": str(tmp_path / "logs"), "MODELS_DIR": str(tmp_path / "models"),
           "NICE": "0"}
    pipeline = Pipeline(env=env, output_dir=tmp_path / "out")
    yield pipeline
    pipeline.stop_all(grace_seconds=5)


def run(pipeline: Pipeline, amqp_url: str, logs_dir: Path, features_args: list[str]) -> dict:
    """Trains, starts the services and features with `features_args`; the drift summary once drift has
    counted every event on both streams."""
    assert pipeline.run_to_end("learn_model", timeout=120) == 0
    bind_notifier(amqp_url)
    for service in ("model", "metric", "plot", "drift"):
        pipeline.start(service)
    wait_until(lambda: consuming(amqp_url, *DRIFT_QUEUES, "features", "y_true"), 60,
               interval=0.2, message="the services to consume")
    features = pipeline.start("features", ["--count", str(EVENTS), "--rate", "0", "--seed", "11", *features_args])
    assert features.wait(120) == 0

    def counted():
        assert not {name: code for name, code in pipeline.dead().items() if name != "features"}
        events = summary(logs_dir).get("events")
        return events == {"predictions": EVENTS, "outcomes": EVENTS} and events

    wait_until(counted, 120, interval=0.5, message=f"drift to count {EVENTS} events on each stream")
    return summary(logs_dir)


def bind_notifier(amqp_url: str) -> None:
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.exchange_declare("monitor_alerts", "topic", durable=True)
        channel.queue_declare(NOTIFIER, durable=True)
        channel.queue_bind(NOTIFIER, "monitor_alerts", "#")
    finally:
        connection.close()


def consuming(amqp_url: str, *queues: str) -> bool:
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        return all(channel.queue_declare(queue, passive=True).method.consumer_count for queue in queues)
    except Exception:  # not declared yet: the channel is closed by the broker
        return False
    finally:
        if connection.is_open:
            connection.close()


def summary(logs_dir: Path) -> dict:
    try:
        return json.loads((logs_dir / "drift_summary.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def alert_lines(logs_dir: Path) -> list[dict]:
    path = logs_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_shift_of_bmi_from_event_1500_raises_the_bmi_alert(pipeline, amqp_url, tmp_path):
    logs_dir = tmp_path / "logs"
    state = run(pipeline, amqp_url, logs_dir, ["--drift-features", "bmi", "--drift-sigma", "1",
                                               "--drift-from", str(SHIFT_FROM)])
    lines = alert_lines(logs_dir)
    features = [(line["feature"], line["state"]) for line in lines if line["kind"] == "feature_drift"]
    assert features == [("bmi", "raised")], lines
    bmi = next(line for line in lines if line["feature"] == "bmi")
    assert SHIFT_FROM < bmi["events"] < SHIFT_FROM + 300, f"raised after {bmi['events']} events"
    # the model's predictions and errors follow bmi, so prediction drift and performance may be raised too;
    # the truth does not move
    assert {line["kind"] for line in lines} <= {"feature_drift", "prediction_drift", "performance"}, lines
    announced = [json.loads(body) for body, _ in drain(amqp_url, NOTIFIER)]
    assert announced == lines
    assert next(d for d in state["detectors"] if d["feature"] == "bmi")["state"] == "raised"
    assert "simulating drift: bmi + " in (tmp_path / "out" / "features.log").read_text()


def test_a_stationary_run_of_the_same_length_raises_nothing(pipeline, amqp_url, tmp_path):
    logs_dir = tmp_path / "logs"
    state = run(pipeline, amqp_url, logs_dir, [])
    assert alert_lines(logs_dir) == []
    assert drain(amqp_url, NOTIFIER) == []
    assert {detector["state"] for detector in state["detectors"]} == {"normal"}
    assert max(detector["score"] for detector in state["detectors"]) < 1.0
