"""Consumes `features`, predicts with the user's model and publishes each prediction under the same id.

Each features body (a list in the card's order, or an object {name: value}) is checked against the
model card's feature schema; one that doesn't fit goes to `features.dlq` with a reason naming the
field. Each batch is predicted in one call. A prediction goes to the `model_predictions` exchange
(bound to the `y_pred` queue) with the model version; a classifier's is its label, plus the
probability of each class when the model has them. The drift monitor's copy goes to the
`prediction_batches` exchange, the whole batch in one message (split at MAX_BATCH_BYTES), each
prediction with `features`, the inputs it was made from (the body as received). A delivery is acked
once both its prediction and its batch are confirmed.

New versions without a restart: a thread watches the card (the pointer to the artifact) and, when
it changes, loads the new version, checks it and makes one prediction with it, all off the IO
thread; the IO loop then swaps it in between two batches, so every message is predicted by exactly
one version. A version that is broken, or that takes other features or another task than the one
serving (that needs a restart), is refused with one error line, and the old version keeps serving.

Any number of model processes may share `features` (competing consumers; `run_pipeline.py
--model-replicas N`, compose's `deploy.replicas`): they hold no state but the version they serve, and
each watches the card and swaps on its own, so for a moment two replicas may serve different versions
(each prediction names its own). A replica that dies leaves its unacked features to the others, which
predict them again: a prediction published twice is a duplicate half that metric drops (metric.py).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from prometheus_client import Counter, Gauge
from pydantic import Field, ValidationError

from mlmonitor.amqp import Delivery, ServiceRunner, Session, after_all, publish_batches
from mlmonitor.logs import EventLog
from mlmonitor.messages import (FeaturesMessage, InvalidMessage, PredictionBatch, PredictionMessage,
                                decode, describe_validation_error, with_inputs)
from mlmonitor.files import FileSignature
from mlmonitor.model_store import CARD_NAME, ModelCard, ModelCorrupt, ModelNotReady, card_signature, load_model, read_card
from mlmonitor.schema import NUMERIC, FeatureSchema
from mlmonitor.service import start_service
from mlmonitor.settings import ConsumerSettings
from mlmonitor.tasks import CLASSIFICATION, label_key
from mlmonitor.topology import FEATURES, MODEL_PREDICTIONS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE, Y_PRED

log = logging.getLogger("model")

MODEL_INFO = Gauge("mlmonitor_model_info", "1 for the model version being served.", ["version", "estimator", "task"])
MODEL_LOADED_AT = Gauge("mlmonitor_model_version_loaded_timestamp", "Unix time the serving version was swapped in.")
VERSIONS_REFUSED = Counter("mlmonitor_model_versions_refused_total",
                           "New model versions refused: broken, or another task or feature schema.")

MAX_REASON_LENGTH = 300
PROBABILITY_SLACK = 1e-9  # rows off by more than float noise are scaled to add up to 1

ONLY_FLOATS = {float}


class Settings(ConsumerSettings):
    models_dir: Path = Field(Path("models"), description="Where learn_model writes the model.")
    model_poll_seconds: float = Field(0.5, gt=0, description="How often to look at the model card: for the model "
                                                             "while it is missing, then for a new version.")
    log_name: str = Field("", description="The name in this process's log lines (default: model), to tell "
                                            "replicas sharing `features` apart, e.g. model-2.")
    trusted_types: str = Field("", description="Comma-separated type names that loading an artifact may trust "
                                               "beyond skops' defaults and mlmonitor's allowlist "
                                               "(e.g. my_package.MyTransformer); only for code you trust.")


class IncompatibleModel(RuntimeError):
    """A new version that can't replace the one serving without a restart; the message says why."""


# --- one version of the model, as the service uses it ----------------------------------------


def label_value(label: Any) -> str | int | float:
    """A class label as a JSON-friendly python value: numpy scalars unwrapped, booleans as "True"/"False"."""
    if isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, bool):
        return label_key(label)
    return label if isinstance(label, (str, int, float)) else str(label)


def labels_and_probabilities(labels: list, keys: list[str], probabilities: np.ndarray
                             ) -> tuple[list, list[dict[str, float]]]:
    """Per row: the most probable label (so label and probabilities agree) and {label_key: p}.

    Values are not rounded; a row whose sum is off by more than float noise is scaled to 1, and a
    row without usable probabilities (NaN) is left as it is for the message check to refuse."""
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(f"predict_proba gave shape {probabilities.shape} for {len(labels)} classes")
    sums = probabilities.sum(axis=1)
    off = (np.abs(sums - 1.0) > PROBABILITY_SLACK) & (sums > 0)
    if off.any():
        probabilities = probabilities.copy()
        probabilities[off] /= sums[off, None]
    predicted = [labels[index] for index in probabilities.argmax(axis=1).tolist()]
    return predicted, [dict(zip(keys, row)) for row in probabilities.tolist()]


class ServedModel:
    """One version: the check of a features body against its card's schema, and a batch's prediction."""

    def __init__(self, estimator, card: ModelCard):
        self.estimator = estimator
        self.card = card
        self.version = card.version
        self.schema: FeatureSchema = card.schema
        self.classifies = card.task == CLASSIFICATION
        self.with_probabilities = self.classifies and card.predicts_proba
        self._width = len(self.schema.features)
        # the course format, as fast as before: a list of the right number of floats is taken as it is
        self._floats_as_they_are = self.schema.all_numeric and not any(spec.allows_missing
                                                                       for spec in self.schema.features)
        if self.with_probabilities:
            self._labels = [label_value(label) for label in np.asarray(estimator.classes_).tolist()]
            self._keys = [label_key(label) for label in self._labels]

    def row_of(self, body: list | dict) -> list:
        """The body's values in card order; raises InvalidMessage naming the field that doesn't fit."""
        if (self._floats_as_they_are and type(body) is list and len(body) == self._width
                and set(map(type, body)) == ONLY_FLOATS):
            return body
        return self.schema.values(body)

    def predict(self, rows: list[list]) -> tuple[list, list[dict[str, float]] | None]:
        """(prediction bodies, probabilities per row or None), from one call to the estimator."""
        features = self.schema.model_input(rows)
        if self.with_probabilities:
            return labels_and_probabilities(self._labels, self._keys, self.estimator.predict_proba(features))
        predicted = np.asarray(self.estimator.predict(features))
        if predicted.shape != (len(rows),):  # e.g. a multi-output regressor: one value per row, or none
            raise ValueError(f"the model gave predictions of shape {predicted.shape} for {len(rows)} rows")
        if self.classifies:
            return [label_value(label) for label in predicted.tolist()], None
        return predicted.astype(float, copy=False).tolist(), None

    def smoke_test(self) -> None:
        """One prediction from a made-up row, checked as a message; raises ModelCorrupt if it fails."""
        try:
            [body], probabilities = self.predict([smoke_row(self.schema)])
            PredictionMessage(id="smoke-test", body=body, probabilities=probabilities[0] if probabilities else None,
                              model_version=self.version)
        except ValidationError as error:
            raise ModelCorrupt(f"its predictions can't be published: {describe_validation_error(error)}") from None
        except Exception as error:
            raise ModelCorrupt(f"it can't predict: {one_line(error)}") from None


def smoke_row(schema: FeatureSchema) -> list:
    """A row every version must be able to predict: 0 for numbers, the first category seen for text."""
    row = []
    for spec in schema.features:
        if spec.kind == NUMERIC:
            row.append(0.0)
        elif spec.categories:
            row.append(spec.categories[0])
        else:
            row.append(None if spec.allows_missing else "unknown")
    return row


def one_line(error: BaseException) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= MAX_REASON_LENGTH else text[:MAX_REASON_LENGTH - 1] + "…"


def holdout_summary(card: ModelCard) -> str:
    if card.task == CLASSIFICATION:
        name, value = "accuracy", card.holdout.get("accuracy")
    else:
        name, value = "MAE", card.holdout_mae if card.holdout_mae is not None else card.holdout.get("mae")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"held-out {name} {value:.3f}" if name == "accuracy" else f"held-out {name} {value:.2f}"
    return f"no held-out {name}"


def describe(card: ModelCard) -> str:
    return f"{card.estimator}, {card.task}, {card.n_features} features, {holdout_summary(card)}"


# --- which new versions may replace the serving one --------------------------------------------


def feature_layout(card: ModelCard) -> list[tuple[str, str]]:
    """What a producer's bodies depend on: names, kinds and order (new categories are fine)."""
    return [(spec.name, spec.kind) for spec in card.schema.features]


def refusal_reason(serving: ModelCard, candidate: ModelCard) -> str | None:
    """Why `candidate` can't replace `serving` while the service runs; None if it can."""
    if candidate.task != serving.task:
        return (f"it is a {candidate.task} model and the version serving a {serving.task} one; "
                f"restart the model service to change the task")
    old, new = feature_layout(serving), feature_layout(candidate)
    if old == new:
        return None
    return f"{describe_layout_change(old, new)}; restart the model service to change the feature schema"


def describe_layout_change(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> str:
    for index, (was, now) in enumerate(zip(old, new)):
        if was != now:
            return (f"its feature {index} is {now[0]!r} ({now[1]}), the version serving has {was[0]!r} "
                    f"({was[1]}) there")
    return f"it takes {len(new)} features, the version serving {len(old)}"


# --- loading ------------------------------------------------------------------------------------


def parse_trusted_types(setting: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in setting.split(",") if name.strip())


def load_version(models_dir: Path, extra_trusted: tuple[str, ...] = (), serving: ModelCard | None = None
                 ) -> ServedModel:
    """Loads and checks the model in `models_dir`. Raises ModelNotReady (try again later),
    ModelCorrupt (broken) or IncompatibleModel (can't replace `serving`), each with a one-line reason."""
    estimator, card = load_model(models_dir, extra_trusted=extra_trusted)
    if serving is not None:
        reason = refusal_reason(serving, card)
        if reason:
            raise IncompatibleModel(reason)
    try:
        served = ServedModel(estimator, card)
    except Exception as error:  # e.g. a classifier card on an estimator without classes_
        raise ModelCorrupt(f"it doesn't fit its card: {one_line(error)}") from None
    served.smoke_test()
    return served




def version_named_in(models_dir: Path) -> str:
    try:
        return read_card(models_dir).version or "(none)"
    except (ModelNotReady, ModelCorrupt):
        return "(unreadable card)"


def wait_for_model(models_dir: Path, poll_seconds: float, extra_trusted: tuple[str, ...] = (),
                   should_stop: Callable[[], bool] = lambda: False) -> tuple[FileSignature | None, ServedModel] | None:
    """(card signature, model) once `models_dir` holds a usable model; None if asked to stop first."""
    last_problem = None
    while not should_stop():
        signature = card_signature(models_dir)
        try:
            return signature, load_version(models_dir, extra_trusted)
        except (ModelNotReady, ModelCorrupt) as problem:
            if str(problem) != last_problem:
                log.warning("waiting for the model: %s", problem)
                last_problem = str(problem)
        time.sleep(poll_seconds)
    return None


class CardWatcher:
    """Looks at the card's stat every `poll_seconds` on a thread of its own; a new card is loaded and
    checked there, and handed to `offer` if it may serve. Each new card is refused at most once."""

    def __init__(self, models_dir: Path, serving: ModelCard, settled: FileSignature | None,
                 offer: Callable[[ServedModel], None], extra_trusted: tuple[str, ...] = (),
                 poll_seconds: float = 0.5):
        self._models_dir = Path(models_dir)
        self._serving = serving
        self._settled = settled  # the card last swapped in, refused or found unchanged
        self._offer = offer
        self._extra_trusted = extra_trusted
        self._poll_seconds = poll_seconds
        self._not_ready_reported: tuple[FileSignature, str] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-card-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stopped.wait(self._poll_seconds):
            try:
                self.check()
            except Exception:
                log.exception("bug while looking for a new model version; still serving %s", self._serving.version)

    def check(self) -> None:
        signature = card_signature(self._models_dir)
        if signature is None or signature == self._settled:
            return
        try:
            served = load_version(self._models_dir, self._extra_trusted, self._serving)
        except ModelNotReady as problem:  # e.g. its artifact not there yet: look again next time
            self._report_not_ready(signature, str(problem))
            return
        except (ModelCorrupt, IncompatibleModel) as problem:
            if card_signature(self._models_dir) == signature:  # not a card replaced while we read it
                self._refuse(signature, str(problem))
            return
        if card_signature(self._models_dir) != signature:
            return  # replaced while we loaded it: take the newer one next time
        self._settled = signature
        if served.version == self._serving.version:
            log.info("model card rewritten; version %s unchanged, nothing to swap", served.version)
            return
        self._serving = served.card
        self._offer(served)

    def _refuse(self, signature: FileSignature, reason: str) -> None:
        self._settled = signature
        VERSIONS_REFUSED.inc()
        log.error("refused the new model version %s in %s: %s; still serving version %s",
                  version_named_in(self._models_dir), self._models_dir / CARD_NAME, reason, self._serving.version)

    def _report_not_ready(self, signature: FileSignature, reason: str) -> None:
        if self._not_ready_reported != (signature, reason):
            self._not_ready_reported = (signature, reason)
            log.warning("new model card not loadable yet: %s; still serving version %s", reason,
                        self._serving.version)


# --- the consumer -------------------------------------------------------------------------------


def show_version(served: ModelCard, replaced: ModelCard | None = None) -> None:
    if replaced is not None:
        MODEL_INFO.remove(replaced.version, replaced.estimator, replaced.task)
    MODEL_INFO.labels(served.version, served.estimator, served.task).set(1)
    MODEL_LOADED_AT.set(time.time())


class Predictor:
    def __init__(self, model: ServedModel, prefetch: int):
        self._model = model
        self._prefetch = prefetch
        self._session: Session | None = None
        self._pending: ServedModel | None = None  # a new version, handed over by the watcher's thread
        self._pending_lock = threading.Lock()
        self._predictions = EventLog(log, "predictions published")
        show_version(model.card)

    @property
    def version(self) -> str:
        return self._model.version

    def on_connected(self, session: Session) -> None:
        self._session = session
        self._swap_in_pending()
        session.consume(FEATURES, self.on_batch, self._prefetch)
        session.every(1.0, self._predictions.flush)

    def on_disconnected(self) -> None:
        self._session = None

    def offer(self, model: ServedModel) -> None:
        """From any thread: serve `model` from the next batch on."""
        with self._pending_lock:
            self._pending = model
        session = self._session
        if session is not None:
            session.call_threadsafe(self._swap_in_pending)  # closed meanwhile: the next session takes it

    def _swap_in_pending(self) -> None:
        with self._pending_lock:
            model, self._pending = self._pending, None
        if model is None:
            return
        replaced, self._model = self._model, model
        show_version(model.card, replaced.card)
        log.info("now serving version %s (was %s): %s", model.version, replaced.version, describe(model.card))

    def on_batch(self, deliveries: list[Delivery]) -> None:
        if self._pending is not None:
            self._swap_in_pending()
        model, session = self._model, self._session
        accepted: list[tuple[Delivery, FeaturesMessage]] = []
        rows = []
        for delivery in deliveries:
            try:
                message = decode(FeaturesMessage, delivery.body)
                rows.append(model.row_of(message.body))
            except InvalidMessage as invalid:
                session.dead_letter(delivery, invalid.reason)
                continue
            accepted.append((delivery, message))
        if accepted:
            self._publish(session, model, *self._predict(session, model, accepted, rows))

    def _predict(self, session: Session, model: ServedModel, accepted: list, rows: list
                 ) -> tuple[list, list, list | None]:
        """(the deliveries predicted, their bodies, their probabilities or None)."""
        try:
            return accepted, *model.predict(rows)
        except Exception:
            return self._predict_one_by_one(session, model, accepted, rows)

    def _predict_one_by_one(self, session: Session, model: ServedModel, accepted: list, rows: list
                            ) -> tuple[list, list, list]:
        """A row the model can't take must not cost the others of its batch their predictions."""
        kept, bodies, probabilities = [], [], []
        for item, row in zip(accepted, rows):
            try:
                [body], row_probabilities = model.predict([row])
            except Exception as error:
                session.dead_letter(item[0], f"body: the model can't predict from these features: {one_line(error)}")
                continue
            kept.append(item)
            bodies.append(body)
            probabilities.append(row_probabilities[0] if row_probabilities else None)
        return kept, bodies, probabilities

    def _publish(self, session: Session, model: ServedModel, accepted: list, bodies: list,
                 probabilities: list | None) -> None:
        outgoing = []  # every message built before the first is published, so a failure publishes none twice
        for index, ((delivery, message), body) in enumerate(zip(accepted, bodies)):
            try:
                prediction = PredictionMessage(id=message.id, body=body, model_version=model.version,
                                               probabilities=probabilities[index] if probabilities else None,
                                               sent_at=message.sent_at)
            except ValidationError as error:
                session.dead_letter(delivery, f"body: the model's prediction {body!r} can't be published: "
                                              f"{describe_validation_error(error)}")
                continue
            encoded = prediction.encode()
            outgoing.append((delivery, prediction, encoded, with_inputs(encoded, message.body)))
        if not outgoing:
            return
        # a delivery is acked once both copies are confirmed: its prediction on y_pred, and drift's batch
        acks = [after_all(2, delivery.ack) for delivery, *_ in outgoing]
        for (delivery, prediction, encoded, _), confirmed in zip(outgoing, acks):
            session.publish(MODEL_PREDICTIONS_EXCHANGE, Y_PRED, encoded, on_confirmed=confirmed)
            self._predictions.event("predicted %s for %s", prediction.body, prediction.id)
        publish_batches(session, PREDICTION_BATCHES_EXCHANGE, PredictionBatch,
                        [item for *_, item in outgoing], acks)


def main(argv: list[str] | None = None) -> int:
    settings = start_service("model", Settings, argv)
    extra_trusted = parse_trusted_types(settings.trusted_types)
    runner = ServiceRunner(None, settings.amqp_url, max_message_bytes=settings.max_message_bytes,
                           tls=settings.amqp_tls, queue_type=settings.queue_type)
    runner.install_signal_handlers()
    loaded = wait_for_model(settings.models_dir, settings.model_poll_seconds, extra_trusted,
                            lambda: runner.stop_requested)
    if loaded is None:
        return 0
    signature, model = loaded
    log.info("loaded model %s (%s)", model.version, describe(model.card))
    predictor = Predictor(model, settings.prefetch)
    watcher = CardWatcher(settings.models_dir, model.card, signature, predictor.offer, extra_trusted,
                          settings.model_poll_seconds)
    watcher.start()
    runner.worker = predictor
    try:
        return runner.run()
    finally:
        watcher.stop()


if __name__ == "__main__":
    sys.exit(main())
