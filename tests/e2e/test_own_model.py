"""End to end, as a new user would: their own table and estimator, a classifier, a retrain while
traffic flows, and a model served elsewhere, with every service a separate process on the real RabbitMQ."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pika
import pytest
from sklearn.datasets import load_diabetes

from broker import connect, drain
from run_pipeline import ROOT, Pipeline
from test_pipeline import csv_rows, plot_has_drawn
from waiting import wait_until

sys.path.insert(0, str(ROOT / "common" / "src"))
from mlmonitor.model_store import load_model  # noqa: E402
from mlmonitor.tasks import label_key  # noqa: E402
from mlmonitor.topology import PREDICTIONS_EXCHANGE, Y_PRED, Y_TRUE  # noqa: E402

pytestmark = pytest.mark.broker

HOUSES = ROOT / "examples" / "houses.csv"
CHURN = ROOT / "examples" / "churn.csv"


@pytest.fixture
def env(amqp_url: str, tmp_path: Path) -> dict[str, str]:
    return {"AMQP_URL": amqp_url, "LOGS_DIR": str(tmp_path / "logs"), "MODELS_DIR": str(tmp_path / "models")}


@pytest.fixture
def pipeline(env: dict[str, str], tmp_path: Path):
    pipeline = Pipeline(env=env, output_dir=tmp_path / "out")
    yield pipeline
    pipeline.stop_all()


def output(pipeline: Pipeline, service: str) -> str:
    path = pipeline.output_dir / f"{service}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def bodies_of(table_path: Path, target: str) -> tuple[list[dict], list]:
    """Each row as features sends it: an object with null for a missing value, and its target."""
    table = pd.read_csv(table_path)
    features = table.drop(columns=[target]).astype(object)
    bodies = [{name: (None if pd.isna(value) else value) for name, value in row.items()}
              for row in features.to_dict("records")]
    return bodies, table[target].tolist()


def run_on_table(pipeline: Pipeline, tmp_path: Path, table: Path, target: str, events: int,
                 learn_args: list[str] = ()) -> list[dict]:
    exit_code = pipeline.run_to_end("learn_model", ["--data", str(table), "--target", target, *learn_args])
    assert exit_code == 0, output(pipeline, "learn_model")
    for service in ("model", "metric", "plot"):
        pipeline.start(service)
    pipeline.start("features", ["--data", str(table), "--target", target, "--rate", "0", "--count", str(events)])
    csv_path = tmp_path / "logs" / "metric_log.csv"
    wait_until(lambda: len(csv_rows(csv_path)) >= events, timeout=120, message=f"{events} rows")
    wait_until(lambda: plot_has_drawn(tmp_path / "logs", events), timeout=60, message="plot to draw every event")
    assert pipeline.processes["features"].wait(30) == 0
    assert not {name: code for name, code in pipeline.dead().items() if name != "features"}
    rows = csv_rows(csv_path)
    assert len(rows) == events and len({row["id"] for row in rows}) == events
    for service in ("model", "metric", "plot", "features"):
        assert "Traceback" not in output(pipeline, service), output(pipeline, service)[-3000:]
    return rows


@pytest.mark.timeout(240)
def test_a_regression_on_a_table_with_text_and_missing_values_under_gradient_boosting(pipeline, tmp_path: Path):
    rows = run_on_table(pipeline, tmp_path, HOUSES, "price", 600,
                        ["--estimator", "sklearn.ensemble.HistGradientBoostingRegressor",
                         "--estimator-params", '{"max_iter": 60}'])
    estimator, card = load_model(tmp_path / "models")
    assert card.task == "regression" and "HistGradientBoostingRegressor" in card.estimator
    kinds = {feature["name"]: feature["kind"] for feature in card.features}
    assert "categorical" in kinds.values() and "numeric" in kinds.values()
    bodies, targets = bodies_of(HOUSES, "price")
    assert any(value is None for body in bodies for value in body.values()), "the example has no missing value"
    schema = card.schema
    predictions = estimator.predict(schema.model_input([schema.values(body) for body in bodies]))
    pairs = {(round(float(y), 6), round(float(p), 6)) for y, p in zip(targets, predictions)}
    for row in rows:
        y_true, y_pred = float(row["y_true"]), float(row["y_pred"])
        assert (round(y_true, 6), round(y_pred, 6)) in pairs, f"{row} is not a prediction of its own sample"
        assert float(row["absolute_error"]) == pytest.approx(abs(y_true - y_pred))


@pytest.mark.timeout(240)
def test_a_binary_classifier_logs_labels_and_one_minus_the_probability_of_the_true_class(pipeline, tmp_path: Path):
    rows = run_on_table(pipeline, tmp_path, CHURN, "churned", 600)
    estimator, card = load_model(tmp_path / "models")
    assert card.task == "classification" and sorted(map(label_key, card.classes)) == ["no", "yes"]
    assert card.predicts_proba
    bodies, targets = bodies_of(CHURN, "churned")
    schema = card.schema
    probabilities = estimator.predict_proba(schema.model_input([schema.values(body) for body in bodies]))
    classes = [label_key(label) for label in estimator.classes_]
    expected = set()
    for target, p in zip(targets, probabilities):
        predicted = classes[int(np.argmax(p))]
        expected.add((label_key(target), predicted, round(1.0 - float(p[classes.index(label_key(target))]), 6)))
    for row in rows:
        assert row["y_true"] in ("yes", "no") and row["y_pred"] in ("yes", "no")
        assert (row["y_true"], row["y_pred"], round(float(row["absolute_error"]), 6)) in expected, row
    errors = [float(row["absolute_error"]) for row in rows]
    assert all(0 <= error <= 1 for error in errors) and any(0 < error < 1 for error in errors)


@pytest.mark.timeout(240)
def test_a_retrain_while_traffic_flows_switches_versions_and_loses_nothing(pipeline, env, tmp_path: Path):
    events = 3000
    models_dir = tmp_path / "models"
    assert pipeline.run_to_end("learn_model") == 0
    first = json.loads((models_dir / "model_card.json").read_text())["version"]
    for service in ("model", "metric", "plot"):
        pipeline.start(service)
    pipeline.start("features", ["--rate", "300", "--count", str(events)])
    csv_path = tmp_path / "logs" / "metric_log.csv"
    wait_until(lambda: len(csv_rows(csv_path)) >= 600, timeout=60, message="600 rows")
    assert pipeline.run_to_end("learn_model", ["--alpha", "1.0"]) == 0
    second = json.loads((models_dir / "model_card.json").read_text())["version"]
    assert second != first
    wait_until(lambda: second in output(pipeline, "model"), timeout=10, message="model to take the new version")
    # more traffic after the swap, so that the new version serves some whatever the load made of the first stream
    after_swap = 1000
    pipeline.start("features", ["--rate", "300", "--count", str(after_swap)], name="features-after-swap")
    events += after_swap
    wait_until(lambda: len(csv_rows(csv_path)) >= events, timeout=120, message=f"{events} rows")
    wait_until(lambda: plot_has_drawn(tmp_path / "logs", events), timeout=60, message="plot to draw every event")
    assert pipeline.processes["model"].poll() is None, "model restarted or died"
    rows = csv_rows(csv_path)
    assert len(rows) == events and len({row["id"] for row in rows}) == events
    data = load_diabetes()
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import train_test_split
    x_train, _, y_train, _ = train_test_split(data.data, data.target, test_size=0.2, random_state=42)
    pairs = {}
    for alpha in (0.1, 1.0):
        predictions = Ridge(alpha=alpha).fit(x_train, y_train).predict(data.data)
        pairs[alpha] = {(round(float(t), 6), round(float(p), 6)) for t, p in zip(data.target, predictions)}
    served_by = [0.1 if (round(float(row["y_true"]), 6), round(float(row["y_pred"]), 6)) in pairs[0.1] else
                 1.0 if (round(float(row["y_true"]), 6), round(float(row["y_pred"]), 6)) in pairs[1.0] else None
                 for row in rows]
    assert None not in served_by, "a row matches neither version"
    assert served_by[0] == 0.1 and served_by[-1] == 1.0
    switch = served_by.index(1.0)
    assert all(alpha == 1.0 for alpha in served_by[switch + 300:]), "the old version kept serving after the swap"


class ExternalModel:
    """The user's own service: it predicts elsewhere and publishes what the monitor needs."""

    def __init__(self, amqp_url: str):
        self.connection = connect(amqp_url)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(self, exchange: str, routing_key: str, message: dict) -> None:
        self.channel.basic_publish(exchange, routing_key, json.dumps(message).encode(),
                                   pika.BasicProperties(delivery_mode=2, content_type="application/json"))

    def close(self) -> None:
        self.connection.close()


def consumers_on(amqp_url: str, queue: str) -> int:
    connection = connect(amqp_url)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def start_metric_and_plot(pipeline: Pipeline, amqp_url: str) -> None:
    """The monitor without our model service: a model served elsewhere publishes the predictions."""
    for service in ("metric", "plot"):
        pipeline.start(service)
    wait_until(lambda: consumers_on(amqp_url, Y_PRED) and consumers_on(amqp_url, Y_TRUE), timeout=60,
               message="metric consuming")


def wait_for_scored_rows(logs_dir: Path, count: int) -> list[dict]:
    """The CSV's rows once there are `count` and plot has drawn them all."""
    wait_until(lambda: len(csv_rows(logs_dir / "metric_log.csv")) >= count, timeout=60, message=f"{count} rows")
    wait_until(lambda: plot_has_drawn(logs_dir, count), timeout=60, message="plot to draw every event")
    rows = csv_rows(logs_dir / "metric_log.csv")
    assert len(rows) == count
    return rows


@pytest.mark.timeout(180)
def test_a_model_served_elsewhere_publishes_predictions_with_its_inputs(pipeline, amqp_url: str, tmp_path: Path):
    start_metric_and_plot(pipeline, amqp_url)
    # a drift monitor's stand-in: its own queue on the predictions exchange sees every input and prediction
    tap = connect(amqp_url)
    tap.channel().queue_declare("drift_tap", durable=True)
    tap.channel().queue_bind("drift_tap", PREDICTIONS_EXCHANGE)
    tap.close()
    data = load_diabetes()
    external = ExternalModel(amqp_url)
    expected = {}
    try:
        for index in range(400):
            event_id = f"ext-{index}"
            features, target = data.data[index].tolist(), float(data.target[index])
            prediction = 150.0 + 100.0 * features[2]  # the user's model, whatever it is
            expected[event_id] = (target, prediction)
            external.publish("", Y_TRUE, {"id": event_id, "body": target})
            if index % 4 == 0:  # the course format: straight to the y_pred queue, no inputs
                external.publish("", Y_PRED, {"id": event_id, "body": prediction})
            else:
                external.publish(PREDICTIONS_EXCHANGE, Y_PRED, {"id": event_id, "body": prediction,
                                                                "model_version": "users-model-7", "features": features})
    finally:
        external.close()
    rows = wait_for_scored_rows(tmp_path / "logs", 400)
    for row in rows:
        target, prediction = expected[row["id"]]
        assert (float(row["y_true"]), float(row["y_pred"])) == (target, prediction)
        assert float(row["absolute_error"]) == pytest.approx(abs(target - prediction))
    tapped = [json.loads(body) for body, _ in drain(amqp_url, "drift_tap")]
    assert len(tapped) == 300
    assert all(len(message["features"]) == 10 and message["model_version"] == "users-model-7" for message in tapped)


@pytest.mark.timeout(180)
def test_a_classifier_served_elsewhere_with_probabilities(pipeline, amqp_url: str, tmp_path: Path):
    start_metric_and_plot(pipeline, amqp_url)
    rng = np.random.default_rng(3)
    external = ExternalModel(amqp_url)
    expected = {}
    try:
        for index in range(300):
            truth = str(rng.choice(["cat", "dog", "bird"]))
            p = rng.dirichlet([1, 1, 1])
            probabilities = dict(zip(["cat", "dog", "bird"], p.tolist()))
            predicted = max(probabilities, key=probabilities.get)
            expected[f"c{index}"] = (truth, predicted, 1.0 - probabilities[truth])
            external.publish("", Y_TRUE, {"id": f"c{index}", "body": truth})
            external.publish(PREDICTIONS_EXCHANGE, Y_PRED, {"id": f"c{index}", "body": predicted,
                                                            "probabilities": probabilities})
    finally:
        external.close()
    for row in wait_for_scored_rows(tmp_path / "logs", 300):
        truth, predicted, error = expected[row["id"]]
        assert (row["y_true"], row["y_pred"]) == (truth, predicted)
        assert math.isclose(float(row["absolute_error"]), error, abs_tol=1e-9)
