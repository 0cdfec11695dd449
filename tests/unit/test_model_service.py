"""The model service's pure parts, with a fake session: the check of features bodies, the y_pred it
builds for a regressor and a classifier, which new versions it refuses, and the swap between batches."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Perceptron, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlmonitor.messages import (MAX_BATCH_BYTES, PROBABILITY_SUM_TOLERANCE, PredictionBatch, PredictionMessage,
                                PredictionWithInputs)
from mlmonitor.model_store import CARD_NAME, ModelCard, ModelCorrupt, save_model
from mlmonitor.schema import FeatureSchema, FeatureSpec
from mlmonitor.topology import FEATURES, MODEL_PREDICTIONS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE, Y_PRED
from model import (VERSIONS_REFUSED, CardWatcher, IncompatibleModel, Predictor, ServedModel, card_signature,
                   label_value, labels_and_probabilities, load_version, parse_trusted_types, refusal_reason,
                   smoke_row)
from fakes import FakeDelivery

DIABETES = load_diabetes()
NAMES = list(DIABETES.feature_names)


def card_for(estimator, schema: FeatureSchema, version: str = "v1", task: str = "regression",
             estimator_name: str = "Ridge") -> ModelCard:
    classes = None
    if task == "classification":
        classes = [label_value(label) for label in estimator.classes_]
    return ModelCard(version=version, trained_at="2026-01-01T00:00:00+00:00", estimator=estimator_name,
                     feature_names=schema.names, holdout_mae=None, holdout_rmse=None, holdout_r2=None,
                     train_rows=10, holdout_rows=2, sklearn_version="test", task=task,
                     features=schema.to_card(), classes=classes,
                     predicts_proba=task == "classification" and hasattr(estimator, "predict_proba"))


def ridge(alpha: float = 0.1) -> Ridge:
    return Ridge(alpha=alpha).fit(DIABETES.data, DIABETES.target)


@pytest.fixture(scope="module")
def regressor() -> ServedModel:
    estimator = ridge()
    return ServedModel(estimator, card_for(estimator, FeatureSchema.numeric(NAMES)))


HOUSES_SCHEMA = FeatureSchema((FeatureSpec("area"),
                               FeatureSpec("city", "categorical", ("Oslo", "Bergen"), allows_missing=True,
                                           unknown_categories="ignore")))


def houses(n: int = 40) -> pd.DataFrame:
    frame = pd.DataFrame({"area": np.linspace(30, 200, n), "city": (["Oslo", "Bergen", None, "Oslo"] * n)[:n]},
                         dtype=object)
    frame["area"] = frame["area"].astype(float)
    return frame


@pytest.fixture(scope="module")
def categorical_regressor() -> ServedModel:
    frame = houses()
    estimator = Pipeline([("encode", ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])],
                                                       remainder="passthrough")),
                          ("fit", Ridge())]).fit(frame, frame["area"] * 1000 + (frame["city"] == "Oslo") * 5e4)
    return ServedModel(estimator, card_for(estimator, HOUSES_SCHEMA))


def yes_no_classifier() -> LogisticRegression:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    return LogisticRegression().fit(x, y)


@pytest.fixture(scope="module")
def classifier() -> ServedModel:
    estimator = yes_no_classifier()
    return ServedModel(estimator, card_for(estimator, FeatureSchema.numeric(["a", "b"]), task="classification"))


# --- fakes --------------------------------------------------------------------------------------


class FakeSession:
    """Publishes are confirmed at once (unless `confirm_later`); threadsafe callbacks wait until the test
    runs them. Drift's batches are kept apart from the predictions."""

    def __init__(self, confirm_later: bool = False):
        self.published: list[tuple[str, str, dict]] = []
        self.batches: list[tuple[dict, bool, int]] = []  # (the batch, mandatory, its size in bytes)
        self.dead_letters: dict[bytes, str] = {}
        self.threadsafe: list = []
        self.confirm_later = confirm_later
        self.confirms: list = []

    def publish(self, exchange, routing_key, body, on_confirmed=None, headers=None, mandatory=True) -> None:
        if exchange == PREDICTION_BATCHES_EXCHANGE:
            self.batches.append((json.loads(body), mandatory, len(body)))
        else:
            self.published.append((exchange, routing_key, json.loads(body)))
        if self.confirm_later:
            self.confirms.append(on_confirmed)
        else:
            on_confirmed()

    def dead_letter(self, delivery, reason: str) -> None:
        self.dead_letters[delivery.body] = reason
        delivery.ack()

    def call_threadsafe(self, callback) -> None:
        self.threadsafe.append(callback)

    def consume(self, queue, on_batch, prefetch) -> None:
        pass

    def every(self, interval, callback) -> None:
        pass

    @property
    def predictions(self) -> list[dict]:
        return [message for _, _, message in self.published]


def delivery(event_id: str, body, **extra) -> FakeDelivery:
    return FakeDelivery(FEATURES, json.dumps({"id": event_id, "body": body, **extra}).encode())


def run_batch(model: ServedModel, deliveries: list[FakeDelivery]) -> FakeSession:
    session = FakeSession()
    predictor = Predictor(model, prefetch=10)
    predictor.on_connected(session)
    predictor.on_batch(deliveries)
    assert all(item.acked for item in deliveries), "every delivery is published or dead-lettered"
    return session


# --- validation ---------------------------------------------------------------------------------


def test_a_list_of_floats_of_the_right_length_is_taken_as_it_is(regressor):
    body = DIABETES.data[0].tolist()
    assert regressor.row_of(body) is body


def test_an_object_body_gives_the_values_in_card_order(regressor):
    body = dict(reversed(list(zip(NAMES, DIABETES.data[0].tolist()))))
    assert regressor.row_of(body) == DIABETES.data[0].tolist()


@pytest.mark.parametrize("body, fragment", [
    (DIABETES.data[0].tolist()[:9], "body: expected 10 features"),
    (DIABETES.data[0].tolist() + [0.1], "body: expected 10 features"),
    (DIABETES.data[0].tolist()[:3] + ["0.5"] + DIABETES.data[0].tolist()[4:], "body.3 (bp): expected a number"),
    (DIABETES.data[0].tolist()[:9] + [None], "body.9 (s6): missing"),
    ({name: 0.0 for name in NAMES if name != "sex"}, "body: missing column 'sex'"),
    ({**{name: 0.0 for name in NAMES}, "colour": "red"}, "body: unknown column 'colour'"),
    ({**{name: 0.0 for name in NAMES}, "bmi": "high"}, "body.bmi: expected a number"),
    ({**{name: 0.0 for name in NAMES}, "age": None}, "body.age: missing"),
])
def test_a_body_that_does_not_fit_is_dead_lettered_with_the_field_it_names(regressor, body, fragment):
    bad, good = delivery("bad", body), delivery("good", DIABETES.data[1].tolist())
    session = run_batch(regressor, [bad, good])
    assert fragment in session.dead_letters[bad.body]
    assert [message["id"] for message in session.predictions] == ["good"]


def test_a_categorical_model_takes_missing_and_unseen_categories_when_its_encoder_ignores_them(
        categorical_regressor):
    bodies = {"seen": {"area": 80.0, "city": "Oslo"}, "missing": {"area": 80.0, "city": None},
              "unseen": {"area": 80.0, "city": "Atlantis"}, "list": [80.0, "Bergen"], "number": [80.0, 7]}
    session = run_batch(categorical_regressor, [delivery(event_id, body) for event_id, body in bodies.items()])
    assert not session.dead_letters
    frame = pd.DataFrame([[80.0, "Oslo"], [80.0, None], [80.0, "Atlantis"], [80.0, "Bergen"], [80.0, "7"]],
                         columns=["area", "city"], dtype=object).astype({"area": float})
    expected = categorical_regressor.estimator.predict(frame)
    assert [message["body"] for message in session.predictions] == pytest.approx(expected.tolist())


def test_an_unseen_category_is_refused_where_the_encoder_would_fail():
    schema = FeatureSchema((FeatureSpec("city", "categorical", ("Oslo",), unknown_categories="error"),))
    estimator = Ridge().fit(np.zeros((2, 1)), [1.0, 2.0])  # never reached
    rome = delivery("x", {"city": "Rome"})
    session = run_batch(ServedModel(estimator, card_for(estimator, schema)), [rome])
    assert "body.city: unseen category 'Rome'" in session.dead_letters[rome.body]


def test_a_message_that_is_not_a_features_message_is_dead_lettered(regressor):
    bad = FakeDelivery(FEATURES, b'{"id": "x", "body": 3}')
    session = run_batch(regressor, [bad])
    assert "body: Input should be a list or an object" in session.dead_letters[bad.body]


# --- what is published --------------------------------------------------------------------------


def test_a_regressor_publishes_floats_with_its_version_to_y_pred_and_the_batch_with_inputs_for_drift(regressor):
    session = run_batch(regressor, [delivery(f"e{index}", DIABETES.data[index].tolist(), sent_at=1000.5)
                                    for index in range(5)])
    assert {(exchange, key) for exchange, key, _ in session.published} == {(MODEL_PREDICTIONS_EXCHANGE, Y_PRED)}
    expected = regressor.estimator.predict(DIABETES.data[:5]).tolist()
    assert session.predictions == [{"id": f"e{index}", "body": expected[index], "model_version": "v1",
                                    "sent_at": 1000.5} for index in range(5)]
    [(batch, mandatory, _)] = session.batches  # one message for the batch, routable or not (drift may never have run)
    assert not mandatory
    assert PredictionBatch.model_validate(batch).predictions == [
        PredictionWithInputs(**prediction, features=DIABETES.data[index].tolist())
        for index, prediction in enumerate(session.predictions)]


def test_a_delivery_is_acked_only_once_its_prediction_and_its_batch_are_both_confirmed(regressor):
    session = FakeSession(confirm_later=True)
    deliveries = [delivery(f"e{index}", DIABETES.data[index].tolist()) for index in range(3)]
    predictor = Predictor(regressor, prefetch=10)
    predictor.on_connected(session)
    predictor.on_batch(deliveries)
    assert len(session.confirms) == 4 and len(session.batches) == 1
    predictions, batch = session.confirms[:3], session.confirms[3]
    for confirm in predictions:
        confirm()
    assert not any(item.acked for item in deliveries)
    batch()
    assert all(item.acked for item in deliveries)


def test_a_batch_is_split_to_stay_under_the_batch_cap_and_every_prediction_goes_once(regressor):
    rows = [delivery(f"e{index}", DIABETES.data[index % 100].tolist()) for index in range(2000)]
    session = run_batch(regressor, rows)
    assert len(session.batches) > 1
    assert all(size <= MAX_BATCH_BYTES for _, _, size in session.batches)
    assert [item["id"] for batch, _, _ in session.batches for item in batch["predictions"]] == [
        f"e{index}" for index in range(2000)]


def test_a_classifier_publishes_the_most_probable_label_and_every_probability(classifier):
    rows = [[1.0, 0.0], [-1.0, 0.2], [0.05, -0.1]]
    session = run_batch(classifier, [delivery(f"c{index}", row) for index, row in enumerate(rows)])
    probabilities = classifier.estimator.predict_proba(np.array(rows))
    for message, expected in zip(session.predictions, probabilities):
        PredictionMessage.model_validate(message)
        assert message["probabilities"] == {"no": expected[0], "yes": expected[1]}  # not rounded
        assert message["body"] == ("yes" if expected[1] > expected[0] else "no")
        assert message["model_version"] == "v1"
    assert [message["body"] for message in session.predictions] == classifier.estimator.predict(rows).tolist()


def test_a_classifier_without_probabilities_publishes_its_labels_as_numbers():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    estimator = Perceptron().fit(x, [0, 0, 1, 1])
    card = card_for(estimator, FeatureSchema.numeric(["x"]), task="classification")
    assert not card.predicts_proba
    session = run_batch(ServedModel(estimator, card), [delivery("a", [0.0]), delivery("b", [3.0])])
    assert [message["body"] for message in session.predictions] == estimator.predict(x[[0, 3]]).tolist()
    assert all("probabilities" not in message for message in session.predictions)


def test_labels_are_json_friendly_python_values():
    assert label_value(np.int64(3)) == 3 and type(label_value(np.int64(3))) is int
    assert label_value(np.float64(1.5)) == 1.5 and type(label_value(np.float64(1.5))) is float
    assert label_value(np.str_("yes")) == "yes" and type(label_value(np.str_("yes"))) is str
    assert label_value(np.bool_(True)) == "True"


def test_label_and_probabilities_agree_and_a_row_off_one_is_scaled_not_rounded():
    labels, probabilities = labels_and_probabilities([0, 1, 2], ["0", "1", "2"],
                                                     np.array([[0.2, 0.5, 0.3], [0.6, 0.6, 0.8]]))
    assert labels == [1, 2]
    assert probabilities[0] == {"0": 0.2, "1": 0.5, "2": 0.3}
    assert math.fsum(probabilities[1].values()) == pytest.approx(1.0, abs=PROBABILITY_SUM_TOLERANCE / 100)
    assert probabilities[1]["2"] == pytest.approx(0.8 / 2.0)
    with pytest.raises(ValueError, match="3 classes"):
        labels_and_probabilities([0, 1, 2], ["0", "1", "2"], np.array([[0.5, 0.5]]))


class FailsOn:
    """An estimator that can't predict a row holding `poison`, like a model meeting input it can't take."""

    def __init__(self, poison: float):
        self.poison = poison

    def predict(self, x):
        if (np.asarray(x) == self.poison).any():
            raise ValueError("Input contains a value the model can't take")
        return np.asarray(x).sum(axis=1)


def test_a_row_the_model_can_not_predict_is_dead_lettered_and_the_rest_of_its_batch_published():
    estimator = FailsOn(666.0)
    model = ServedModel(estimator, card_for(estimator, FeatureSchema.numeric(["a", "b"])))
    good, bad = [delivery(f"g{index}", [1.0, float(index)]) for index in range(3)], delivery("bad", [666.0, 1.0])
    session = run_batch(model, [good[0], bad, good[1], good[2]])
    assert session.dead_letters == {bad.body: "body: the model can't predict from these features: "
                                              "ValueError: Input contains a value the model can't take"}
    assert [(message["id"], message["body"]) for message in session.predictions] == [
        ("g0", 1.0), ("g1", 2.0), ("g2", 3.0)]


def test_a_prediction_that_is_not_a_finite_number_is_dead_lettered_and_nothing_is_published_twice():
    class NanForNegatives:
        def predict(self, x):
            return np.where(np.asarray(x)[:, 0] < 0, np.nan, 1.0)

    model = ServedModel(NanForNegatives(), card_for(NanForNegatives(), FeatureSchema.numeric(["a"])))
    bad = delivery("nan", [-1.0])
    session = run_batch(model, [delivery("a", [1.0]), bad, delivery("b", [2.0])])
    assert "the model's prediction nan can't be published" in session.dead_letters[bad.body]
    assert [message["id"] for message in session.predictions] == ["a", "b"]


# --- which new versions are refused -------------------------------------------------------------


def test_a_version_with_the_same_features_and_task_may_replace_the_serving_one(regressor):
    retrained = ridge(alpha=1.0)
    assert refusal_reason(regressor.card, card_for(retrained, FeatureSchema.numeric(NAMES), version="v2")) is None


def test_new_categories_or_missing_values_are_no_schema_change():
    wider = FeatureSchema((FeatureSpec("area", allows_missing=True),
                           FeatureSpec("city", "categorical", ("Oslo", "Bergen", "Tromsø"), allows_missing=True)))
    assert refusal_reason(card_for(Ridge(), HOUSES_SCHEMA), card_for(Ridge(), wider, version="v2")) is None


@pytest.mark.parametrize("new_features, fragment", [
    (FeatureSchema.numeric(["area", "city"]), "its feature 1 is 'city' (numeric), the version serving has 'city' "
                                              "(categorical)"),
    (FeatureSchema((HOUSES_SCHEMA.features[1], HOUSES_SCHEMA.features[0])), "its feature 0 is 'city'"),
    (FeatureSchema(HOUSES_SCHEMA.features[:1]), "it takes 1 features, the version serving 2"),
    (FeatureSchema((FeatureSpec("size"), HOUSES_SCHEMA.features[1])), "its feature 0 is 'size'"),
])
def test_another_feature_schema_is_refused_and_a_restart_named(new_features, fragment):
    reason = refusal_reason(card_for(Ridge(), HOUSES_SCHEMA), card_for(Ridge(), new_features, version="v2"))
    assert fragment in reason and "restart the model service to change the feature schema" in reason


def test_another_task_is_refused_and_a_restart_named(regressor, classifier):
    reason = refusal_reason(regressor.card, classifier.card)
    assert reason == ("it is a classification model and the version serving a regression one; "
                      "restart the model service to change the task")


def test_a_model_that_can_not_predict_its_smoke_row_is_refused():
    estimator = FailsOn(0.0)  # the smoke row is all zeros
    with pytest.raises(ModelCorrupt, match="it can't predict: ValueError"):
        ServedModel(estimator, card_for(estimator, FeatureSchema.numeric(["a"]))).smoke_test()


def test_a_classifier_card_on_a_model_without_probabilities_is_refused(tmp_path):
    card = replace(card_for(Ridge(), FeatureSchema.numeric(NAMES)), task="classification", predicts_proba=True,
                   classes=[0, 1])
    save_model(tmp_path, ridge(), card)
    with pytest.raises(ModelCorrupt, match="doesn't fit its card"):
        load_version(tmp_path)


def test_loading_a_version_of_another_task_than_the_serving_one_is_refused(tmp_path, classifier):
    estimator = ridge()
    save_model(tmp_path, estimator, card_for(estimator, FeatureSchema.numeric(NAMES), version=""))
    with pytest.raises(IncompatibleModel, match="restart the model service to change the task"):
        load_version(tmp_path, serving=classifier.card)


def test_types_beyond_the_allowlist_load_only_when_trusted_types_name_them(tmp_path):
    estimator = KNeighborsRegressor(algorithm="kd_tree").fit(DIABETES.data, DIABETES.target)
    needed = ("sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree")
    save_model(tmp_path, estimator, card_for(estimator, FeatureSchema.numeric(NAMES), version=""),
               extra_trusted=needed)
    with pytest.raises(ModelCorrupt, match="KDTree"):
        load_version(tmp_path)
    served = load_version(tmp_path, parse_trusted_types(",".join(needed)))
    np.testing.assert_allclose(served.estimator.predict(DIABETES.data[:3]), estimator.predict(DIABETES.data[:3]))


def test_the_smoke_row_has_a_value_of_the_right_kind_for_every_feature():
    assert smoke_row(HOUSES_SCHEMA) == [0.0, "Oslo"]
    assert smoke_row(FeatureSchema((FeatureSpec("c", "categorical", allows_missing=True),))) == [None]


def test_trusted_types_are_a_comma_separated_list():
    assert parse_trusted_types(" numpy.dtype, my.Type ,,") == ("numpy.dtype", "my.Type")
    assert parse_trusted_types("") == ()


# --- the watcher and the swap -------------------------------------------------------------------


@pytest.fixture
def served_dir(tmp_path):
    estimator = ridge()
    card = save_model(tmp_path, estimator, card_for(estimator, FeatureSchema.numeric(NAMES), version=""))
    return tmp_path, card


def watcher_of(models_dir, card) -> tuple[CardWatcher, list[ServedModel]]:
    offered: list[ServedModel] = []
    return CardWatcher(models_dir, card, card_signature(models_dir), offered.append), offered


def refused_so_far() -> float:
    return VERSIONS_REFUSED._value.get()


def test_the_watcher_offers_a_new_version_once_and_ignores_an_unchanged_card(served_dir):
    models_dir, card = served_dir
    watcher, offered = watcher_of(models_dir, card)
    watcher.check()
    assert offered == []
    retrained = ridge(alpha=1.0)
    new_card = save_model(models_dir, retrained, card_for(retrained, FeatureSchema.numeric(NAMES), version=""))
    watcher.check()
    watcher.check()
    assert [model.version for model in offered] == [new_card.version] and new_card.version != card.version
    np.testing.assert_allclose(offered[0].estimator.predict(DIABETES.data[:3]), retrained.predict(DIABETES.data[:3]))


def test_the_same_version_written_again_is_not_swapped(served_dir, caplog):
    models_dir, card = served_dir
    watcher, offered = watcher_of(models_dir, card)
    estimator = ridge()
    save_model(models_dir, estimator, card_for(estimator, FeatureSchema.numeric(NAMES), version=""))
    with caplog.at_level(logging.INFO, logger="model"):
        watcher.check()
    assert offered == [] and "unchanged" in caplog.text


def replace_card(models_dir, **changes) -> None:
    raw = json.loads((models_dir / CARD_NAME).read_text())
    raw.update(changes)
    temporary = models_dir / ".card.tmp"
    temporary.write_text(json.dumps(raw))
    temporary.replace(models_dir / CARD_NAME)


def test_a_broken_version_is_refused_with_one_error_line_however_often_the_watcher_looks(served_dir, caplog):
    models_dir, card = served_dir
    watcher, offered = watcher_of(models_dir, card)
    refused_before = refused_so_far()
    replace_card(models_dir, version="tampered0001", artifact_sha256="0" * 64)
    with caplog.at_level(logging.INFO, logger="model"):
        for _ in range(3):
            watcher.check()
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and offered == []
    assert "refused the new model version tampered0001" in errors[0].getMessage()
    assert "does not match its card" in errors[0].getMessage()
    assert f"still serving version {card.version}" in errors[0].getMessage()
    assert refused_so_far() == refused_before + 1


def test_an_incompatible_version_is_refused_and_a_later_good_one_still_taken(served_dir, caplog):
    models_dir, card = served_dir
    watcher, offered = watcher_of(models_dir, card)
    narrower = Ridge().fit(DIABETES.data[:, :3], DIABETES.target)
    save_model(models_dir, narrower, card_for(narrower, FeatureSchema.numeric(NAMES[:3]), version=""))
    with caplog.at_level(logging.ERROR, logger="model"):
        watcher.check()
        watcher.check()
    assert len(caplog.records) == 1 and "restart the model service" in caplog.text and offered == []
    retrained = ridge(alpha=3.0)
    save_model(models_dir, retrained, card_for(retrained, FeatureSchema.numeric(NAMES), version=""))
    watcher.check()
    assert len(offered) == 1


def test_a_missing_card_changes_nothing(served_dir):
    models_dir, card = served_dir
    watcher, offered = watcher_of(models_dir, card)
    (models_dir / CARD_NAME).unlink()
    watcher.check()
    assert offered == [] and card_signature(models_dir) is None


def test_a_new_version_is_swapped_in_on_the_io_thread_between_two_batches(regressor):
    retrained = ridge(alpha=5.0)
    new_model = ServedModel(retrained, card_for(retrained, FeatureSchema.numeric(NAMES), version="v2"))
    session = FakeSession()
    predictor = Predictor(regressor, prefetch=10)
    predictor.on_connected(session)
    predictor.on_batch([delivery("before", DIABETES.data[0].tolist())])
    predictor.offer(new_model)  # from the watcher's thread: only queued for the IO loop
    assert predictor.version == "v1" and len(session.threadsafe) == 1
    session.threadsafe.pop()()
    predictor.on_batch([delivery("after", DIABETES.data[0].tolist())])
    before, after = session.predictions
    assert (before["model_version"], after["model_version"]) == ("v1", "v2")
    assert before["body"] == pytest.approx(regressor.estimator.predict(DIABETES.data[:1])[0])
    assert after["body"] == pytest.approx(retrained.predict(DIABETES.data[:1])[0])


def test_a_version_offered_while_disconnected_serves_from_the_next_batch(regressor):
    retrained = ridge(alpha=5.0)
    predictor = Predictor(regressor, prefetch=10)
    predictor.offer(ServedModel(retrained, card_for(retrained, FeatureSchema.numeric(NAMES), version="v2")))
    session = FakeSession()
    predictor.on_connected(session)
    predictor.on_batch([delivery("x", DIABETES.data[0].tolist())])
    assert session.predictions[0]["model_version"] == "v2"


def test_a_model_with_more_than_one_output_per_row_is_refused():
    estimator = Ridge().fit(DIABETES.data, np.column_stack([DIABETES.target, DIABETES.target]))
    with pytest.raises(ModelCorrupt, match=r"shape \(1, 2\) for 1 rows"):
        ServedModel(estimator, card_for(estimator, FeatureSchema.numeric(NAMES))).smoke_test()
