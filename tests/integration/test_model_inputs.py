"""The model service against the real broker, on models of the user's kind: list and object bodies,
a categorical model fed a DataFrame, every schema violation dead-lettered with the field it names,
and a classifier with string labels publishing labels and probabilities."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from broker import drain, publish_raw
from mlmonitor.messages import PredictionMessage
from mlmonitor.model_store import ModelCard, load_model, save_model
from mlmonitor.schema import FeatureSchema, FeatureSpec
from mlmonitor.topology import FEATURES, Y_PRED
from service_harness import (assert_alive, assert_no_dead_letters, declare_topology, output_of, wait_for_consumers,
                             wait_for_dead_letters, wait_until_drained)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

DIABETES = load_diabetes()


def save(models_dir, estimator, schema: FeatureSchema, task: str = "regression") -> ModelCard:
    classes = [label.item() if hasattr(label, "item") else label for label in estimator.classes_] \
        if task == "classification" else None
    card = ModelCard(version="", trained_at="2026-01-01T00:00:00+00:00", estimator=type(estimator).__name__,
                     feature_names=schema.names, holdout_mae=None, holdout_rmse=None, holdout_r2=None,
                     train_rows=100, holdout_rows=20, sklearn_version="test", task=task, features=schema.to_card(),
                     classes=classes, predicts_proba=task == "classification" and hasattr(estimator, "predict_proba"))
    return save_model(models_dir, estimator, card)


def wait_for_predictions(amqp_url: str, count: int, timeout: float = 30) -> dict[str, dict]:
    """Takes `count` predictions off the y_pred queue, by id; fails on a second one for any id."""
    collected: list[dict] = []

    def enough() -> bool:
        collected.extend(json.loads(body) for body, _ in drain(amqp_url, Y_PRED))
        return len(collected) >= count

    wait_until(enough, timeout, interval=0.1, message=f"{count} messages in {Y_PRED}")
    by_id = {message["id"]: message for message in collected}
    assert len(by_id) == len(collected) == count, f"duplicated or extra predictions: {collected}"
    return by_id


def start_model(pipeline, amqp_url: str) -> None:
    declare_topology(amqp_url)
    pipeline.start("model")
    wait_for_consumers(amqp_url, FEATURES)


def frame_of(rows: list[list], schema: FeatureSchema) -> pd.DataFrame:
    return schema.model_input([schema.values(row) for row in rows])


def test_list_and_object_bodies_get_the_same_predictions(pipeline, amqp_url, vhost, trained_model):
    estimator, card = load_model(trained_model)
    start_model(pipeline, amqp_url)
    samples = DIABETES.data[:6]
    as_lists = [{"id": f"list-{index}", "body": row.tolist()} for index, row in enumerate(samples)]
    as_objects = [{"id": f"object-{index}", "body": dict(zip(reversed(card.feature_names), reversed(row.tolist())))}
                  for index, row in enumerate(samples)]
    publish_raw(amqp_url, FEATURES, as_lists + as_objects)

    predictions = wait_for_predictions(amqp_url, 12)
    expected = estimator.predict(samples)
    for index in range(len(samples)):
        for shape in ("list", "object"):
            message = predictions[f"{shape}-{index}"]
            assert message["body"] == pytest.approx(expected[index], rel=1e-12)
            assert message["model_version"] == card.version
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)


CITIES = ("Oslo", "Bergen", "Tromsø")


def houses(n: int = 60) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"area": rng.uniform(30, 200, n), "city": rng.choice(CITIES, n).astype(object),
                          "rooms": rng.integers(1, 6, n).astype(float)})
    frame.loc[::7, "city"] = None  # missing in training too: the encoder learns it as a category
    price = frame["area"] * 1000 + frame["city"].map({"Oslo": 5e4, "Bergen": 2e4}).fillna(0).to_numpy()
    return frame, price


def houses_model(handle_unknown: str) -> tuple[Pipeline, FeatureSchema]:
    frame, price = houses()
    estimator = Pipeline([("encode", ColumnTransformer([("city", OneHotEncoder(handle_unknown=handle_unknown),
                                                         ["city"])], remainder="passthrough")),
                          ("fit", Ridge(alpha=1.0))]).fit(frame, price)
    schema = FeatureSchema((FeatureSpec("area"),
                            FeatureSpec("city", "categorical", CITIES, allows_missing=True,
                                        unknown_categories="ignore" if handle_unknown == "ignore" else "error"),
                            FeatureSpec("rooms")))
    return estimator, schema


def test_a_categorical_model_predicts_from_a_data_frame_and_accepts_an_unseen_category(
        pipeline, amqp_url, vhost, models_dir):
    estimator, schema = houses_model(handle_unknown="ignore")
    card = save(models_dir, estimator, schema)
    start_model(pipeline, amqp_url)
    bodies = {"seen": {"area": 80.0, "city": "Oslo", "rooms": 3},
              "unseen": {"area": 80.0, "city": "Atlantis", "rooms": 3},
              "missing": {"rooms": 2, "city": None, "area": 120.5},
              "list": [55.0, "Bergen", 1]}
    publish_raw(amqp_url, FEATURES, [{"id": event_id, "body": body} for event_id, body in bodies.items()])

    predictions = wait_for_predictions(amqp_url, len(bodies))
    expected = estimator.predict(frame_of(list(bodies.values()), schema))
    for (event_id, _), value in zip(bodies.items(), expected):
        assert predictions[event_id]["body"] == pytest.approx(value, rel=1e-12), event_id
        assert predictions[event_id]["model_version"] == card.version
    assert predictions["unseen"]["body"] != pytest.approx(predictions["seen"]["body"])
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)


def test_each_schema_violation_is_dead_lettered_with_a_reason_naming_its_field(pipeline, amqp_url, vhost, models_dir):
    estimator, schema = houses_model(handle_unknown="error")
    save(models_dir, estimator, schema)
    start_model(pipeline, amqp_url)
    good = {"area": 80.0, "city": "Oslo", "rooms": 3}
    violations = [
        ({"area": 80.0, "rooms": 3}, "body: missing column 'city'"),
        ({**good, "garden": "yes"}, "body: unknown column 'garden'"),
        ({**good, "area": "big"}, "body.area: expected a number, got a string"),
        ({**good, "rooms": None}, "body.rooms: missing, and the model was trained without missing values there"),
        ({**good, "city": "Atlantis"}, "body.city: unseen category 'Atlantis', which the model's encoder refuses"),
        ({**good, "city": 7}, "body.city: unseen category '7'"),
        ([80.0, "Oslo"], "body: expected 3 features ('area', 'city', 'rooms'), got 2"),
        ([80.0, "Oslo", "three"], "body.2 (rooms): expected a number, got a string"),
        ({**good, "area": [1]}, "body.area"),
    ]
    bad = [json.dumps({"id": f"bad-{index}", "body": body}).encode() for index, (body, _) in enumerate(violations)]
    publish_raw(amqp_url, FEATURES, bad + [json.dumps({"id": "good", "body": good}).encode()])

    rejected = dict(wait_for_dead_letters(amqp_url, FEATURES, len(bad)))
    assert sorted(rejected) == sorted(bad), "each violation, once"
    for body, (_, fragment) in zip(bad, violations):
        assert fragment in rejected[body], f"{body!r} was rejected with {rejected[body]!r}"
    predictions = wait_for_predictions(amqp_url, 1)
    assert predictions["good"]["body"] == pytest.approx(estimator.predict(frame_of([good], schema))[0])
    assert_alive(pipeline, "model")
    assert "Traceback" not in output_of(pipeline, "model")
    wait_until_drained(vhost, FEATURES)


def test_a_binary_classifier_with_string_labels_publishes_labels_and_probabilities(
        pipeline, amqp_url, vhost, models_dir):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 3))
    y = np.where(x[:, 0] - x[:, 2] + 0.3 * rng.normal(size=300) > 0, "churned", "stayed")
    estimator = LogisticRegression().fit(x, y)
    card = save(models_dir, estimator, FeatureSchema.numeric(["usage", "tenure", "complaints"]), "classification")
    assert card.classes == ["churned", "stayed"] and card.predicts_proba
    start_model(pipeline, amqp_url)
    samples = rng.normal(size=(20, 3))
    publish_raw(amqp_url, FEATURES, [{"id": f"c{index}", "body": row.tolist()} for index, row in enumerate(samples)])

    predictions = wait_for_predictions(amqp_url, len(samples))
    probabilities = estimator.predict_proba(samples)
    labels = estimator.predict(samples)
    assert set(labels) == {"churned", "stayed"}, "the samples should give both labels"
    for index in range(len(samples)):
        message = predictions[f"c{index}"]
        PredictionMessage.model_validate(message)
        assert message["body"] == labels[index]
        assert message["probabilities"] == pytest.approx({"churned": probabilities[index][0],
                                                          "stayed": probabilities[index][1]}, rel=1e-12)
        assert math.isclose(math.fsum(message["probabilities"].values()), 1.0, abs_tol=1e-9)
        assert message["model_version"] == card.version
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)
