"""New model versions reach the running model service without a restart: a retrain while features
flow swaps versions within 2 s, predicting every id exactly once, and a broken or incompatible
version is refused with one error line while the old one keeps serving."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.request

import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge

from broker import connect, drain, publish_raw
from mlmonitor.model_store import CARD_NAME, ModelCard, save_model
from mlmonitor.schema import FeatureSchema
from mlmonitor.topology import FEATURES, Y_PRED
from service_harness import (assert_alive, assert_no_dead_letters, declare_topology, free_port, output_of,
                             wait_for_consumers, wait_for_output, wait_until_drained)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

DIABETES = load_diabetes()
NAMES = list(DIABETES.feature_names)
SWAP_WITHIN_SECONDS = 2.0
REFUSED = "refused the new model version"


def ridge(alpha: float, columns: int = 10) -> Ridge:
    return Ridge(alpha=alpha).fit(DIABETES.data[:, :columns], DIABETES.target)


def a_classifier() -> LogisticRegression:
    return LogisticRegression().fit(DIABETES.data, (DIABETES.target > 140).astype(int))


def save(models_dir, estimator, names: list[str] = NAMES, task: str = "regression") -> ModelCard:
    card = ModelCard(version="", trained_at="2026-01-01T00:00:00+00:00", estimator=repr(estimator),
                     feature_names=names, holdout_mae=40.0 if task == "regression" else None, holdout_rmse=None,
                     holdout_r2=None, train_rows=353, holdout_rows=89, sklearn_version="test", task=task,
                     features=FeatureSchema.numeric(names).to_card(),
                     classes=[int(label) for label in estimator.classes_] if task == "classification" else None,
                     predicts_proba=task == "classification", holdout={"accuracy": 0.5} if task != "regression" else {})
    return save_model(models_dir, estimator, card)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, name: str) -> float:
    [value] = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(value)


def served_versions(text: str) -> list[str]:
    return re.findall(r'^mlmonitor_model_info\{[^}]*version="([^"]+)"[^}]*\} 1\.0$', text, re.MULTILINE)


def start_model(pipeline, amqp_url: str, metrics_port: int) -> None:
    declare_topology(amqp_url)
    pipeline.start("model", env={"METRICS_PORT": str(metrics_port)})
    wait_for_consumers(amqp_url, FEATURES)


class FeatureStream:
    """Publishes diabetes samples with confirms from a thread, about 200 a second, until stopped."""

    def __init__(self, amqp_url: str):
        self._amqp_url = amqp_url
        self._stopped = threading.Event()
        self.published: dict[str, int] = {}  # id -> row of the diabetes data
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(30)
        assert self.failure is None, f"the stream failed: {self.failure!r}"

    def _run(self) -> None:
        try:
            connection = connect(self._amqp_url)
            channel = connection.channel()
            channel.confirm_delivery()
            index = 0
            while not self._stopped.wait(0.005):  # the pace of the stream, not a wait for a result
                row = index % len(DIABETES.data)
                body = json.dumps({"id": f"s{index}", "body": DIABETES.data[row].tolist(), "sent_at": time.time()})
                channel.basic_publish("", FEATURES, body.encode())
                self.published[f"s{index}"] = row
                index += 1
            connection.close()
        except BaseException as error:  # reported by stop()
            self.failure = error


class Predictions:
    """Everything taken off the y_pred queue so far, in queue order."""

    def __init__(self, amqp_url: str):
        self._amqp_url = amqp_url
        self.messages: list[dict] = []

    def wait_for(self, condition, timeout: float = 30, message: str = "predictions") -> None:
        def satisfied() -> bool:
            self.messages.extend(json.loads(body) for body, _ in drain(self._amqp_url, Y_PRED))
            return condition(self.messages)

        try:
            wait_until(satisfied, timeout, interval=0.1, message=message)
        except AssertionError as error:
            raise AssertionError(f"{error}; {len(self.messages)} predictions so far") from None


def predict_across_a_swap(amqp_url: str, models_dir, new_estimator, before: int, after: int):
    """Streams features while the served model is replaced: `new_estimator` is saved once `before`
    predictions have arrived; the stream stops once `after` predictions are of features sent well
    after the swap, and every id has its prediction. Returns (the new card, when it was saved, the
    stream, the predictions in queue order)."""
    stream, predictions = FeatureStream(amqp_url), Predictions(amqp_url)
    stream.start()
    try:
        predictions.wait_for(lambda got: len(got) >= before, message=f"{before} predictions of the old version")
        new = save(models_dir, new_estimator)
        swapped_at = time.time()
        predictions.wait_for(lambda got: sum(item["sent_at"] > swapped_at + SWAP_WITHIN_SECONDS + 0.5
                                             for item in got) >= after,
                             message="predictions of features sent well after the swap")
    finally:
        stream.stop()
    predictions.wait_for(lambda got: len(got) >= len(stream.published), message="a prediction for every id")
    return new, swapped_at, stream, predictions.messages


def assert_each_id_once_by_the_version_it_names(got: list[dict], stream, estimator_of: dict, old_version: str,
                                               swapped_at: float) -> None:
    """Every published id predicted exactly once, by exactly the version its prediction names, and
    none sent more than SWAP_WITHIN_SECONDS after the swap by the old version."""
    assert sorted(item["id"] for item in got) == sorted(stream.published), "each id exactly once"
    for item in got:
        row = DIABETES.data[stream.published[item["id"]]]
        assert item["body"] == pytest.approx(estimator_of[item["model_version"]].predict([row])[0], rel=1e-12)
    late_old = [item["id"] for item in got if item["sent_at"] > swapped_at + SWAP_WITHIN_SECONDS
                and item["model_version"] == old_version]
    assert not late_old, f"features sent more than 2 s after the swap predicted by the old version: {late_old[:3]}"


def test_a_retrain_while_features_flow_switches_versions_within_2_s_and_predicts_each_id_once(
        pipeline, amqp_url, vhost, models_dir):
    estimators = {"old": ridge(alpha=0.1), "new": ridge(alpha=10.0)}
    old = save(models_dir, estimators["old"])
    port = free_port()
    start_model(pipeline, amqp_url, port)
    new, swapped_at, stream, got = predict_across_a_swap(amqp_url, models_dir, estimators["new"], before=100, after=1)

    assert old.version != new.version
    version_name = {old.version: "old", new.version: "new"}
    versions = [version_name.get(item["model_version"]) for item in got]
    switch = versions.index("new")
    assert versions[switch - 1] == "old" and set(versions[:switch]) == {"old"} and set(versions[switch:]) == {"new"}, (
        "in queue order, the old version's predictions and then the new one's")
    assert_each_id_once_by_the_version_it_names(
        got, stream, {old.version: estimators["old"], new.version: estimators["new"]}, old.version, swapped_at)

    log = output_of(pipeline, "model")
    assert log.count(f"now serving version {new.version} (was {old.version})") == 1, log
    assert "held-out MAE 40.00" in log
    metrics = scrape(port)
    assert served_versions(metrics) == [new.version]
    assert metric_value(metrics, "mlmonitor_model_versions_refused_total") == 0
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)


def replace_card(models_dir, card: dict) -> None:
    temporary = models_dir / ".test-card.tmp"
    temporary.write_text(json.dumps(card))
    os.replace(temporary, models_dir / CARD_NAME)


def publish_tampered_artifact(models_dir, staging_dir) -> None:
    """A new version whose artifact's bytes were changed after its card was written."""
    card = save(staging_dir, ridge(alpha=3.0))
    artifact = bytearray((staging_dir / card.artifact).read_bytes())
    artifact[len(artifact) // 2] ^= 0xFF
    (models_dir / card.artifact).write_bytes(bytes(artifact))
    replace_card(models_dir, json.loads((staging_dir / CARD_NAME).read_text()))


def publish_garbage_artifact(models_dir) -> None:
    """A new version whose artifact matches its checksum but is no skops archive."""
    garbage = b"this is not a skops archive"
    card = json.loads((models_dir / CARD_NAME).read_text())
    card.update(version="garbage00001", artifact="model-garbage00001.skops",
                artifact_sha256=hashlib.sha256(garbage).hexdigest())
    (models_dir / card["artifact"]).write_bytes(garbage)
    replace_card(models_dir, card)


def predicted_versions(amqp_url: str, prefix: str, count: int = 3) -> set[str]:
    publish_raw(amqp_url, FEATURES, [{"id": f"{prefix}-{index}", "body": DIABETES.data[index].tolist()}
                                     for index in range(count)])
    predictions = Predictions(amqp_url)
    predictions.wait_for(lambda got: len(got) >= count, message=f"{count} predictions")
    assert sorted(item["id"] for item in predictions.messages) == [f"{prefix}-{index}" for index in range(count)]
    return {item["model_version"] for item in predictions.messages}


def test_broken_or_incompatible_versions_are_refused_once_each_and_the_old_one_keeps_serving(
        pipeline, amqp_url, vhost, models_dir, tmp_path):
    old = save(models_dir, ridge(alpha=0.1))
    port = free_port()
    start_model(pipeline, amqp_url, port)
    refusals = [
        (lambda: publish_tampered_artifact(models_dir, tmp_path / "staging"), "does not match its card"),
        (lambda: publish_garbage_artifact(models_dir), "can't be loaded"),
        (lambda: save(models_dir, ridge(alpha=0.1, columns=3), NAMES[:3]),
         "it takes 3 features, the version serving 10; restart the model service to change the feature schema"),
        (lambda: save(models_dir, a_classifier(), task="classification"),
         "restart the model service to change the task"),
    ]
    for times, (publish, reason) in enumerate(refusals, start=1):
        publish()
        wait_for_output(pipeline, "model", REFUSED, times=times)
        assert reason in output_of(pipeline, "model").rsplit(REFUSED, 1)[1], output_of(pipeline, "model")
        assert predicted_versions(amqp_url, f"after-refusal-{times}") == {old.version}

    log = output_of(pipeline, "model")
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == len(refusals), "one error line per refused version, not one per look at the card:\n" + log
    assert all(f"still serving version {old.version}" in line for line in errors)
    assert "Traceback" not in log
    metrics = scrape(port)
    assert metric_value(metrics, "mlmonitor_model_versions_refused_total") == len(refusals)
    assert served_versions(metrics) == [old.version]

    new = save(models_dir, ridge(alpha=5.0))  # refusals leave the watcher working
    wait_for_output(pipeline, "model", f"now serving version {new.version} (was {old.version})", timeout=10)
    assert predicted_versions(amqp_url, "after-the-good-one") == {new.version}
    assert_alive(pipeline, "model")
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)
