"""Consumes `features`, predicts with the trained model and publishes `y_pred` under the same id.

The model is loaded once at start; while `models/` has no complete model, the service waits and
says so. A delivery is acked once its prediction is confirmed by the broker. Each batch of
deliveries is predicted in one call. A vector of the wrong length, or any message that does not
parse, goes to `features.dlq` with its reason.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from mlmonitor.amqp import Delivery, ServiceRunner, Session
from mlmonitor.logs import EventLog
from mlmonitor.messages import FeaturesMessage, InvalidMessage, PredictionMessage, decode
from mlmonitor.model_store import ModelCard, ModelCorrupt, ModelNotReady, load_model
from mlmonitor.service import start_service
from mlmonitor.settings import ConsumerSettings
from mlmonitor.topology import FEATURES, Y_PRED

log = logging.getLogger("model")


class Settings(ConsumerSettings):
    models_dir: Path = Field(Path("models"), description="Where learn_model writes the model.")
    model_poll_seconds: float = Field(2.0, gt=0, description="How often to look for the model while it is missing.")


def wait_for_model(models_dir: Path, poll_seconds: float, should_stop=lambda: False):
    """Returns (estimator, card) once `models_dir` holds a usable model; None if asked to stop first."""
    last_problem = None
    while not should_stop():
        try:
            return load_model(models_dir)
        except (ModelNotReady, ModelCorrupt) as problem:
            if str(problem) != last_problem:
                log.warning("waiting for the model: %s", problem)
                last_problem = str(problem)
        time.sleep(poll_seconds)
    return None


class Predictor:
    def __init__(self, estimator, card: ModelCard, prefetch: int):
        self._estimator = estimator
        self._card = card
        self._prefetch = prefetch
        self._session: Session | None = None
        self._predictions = EventLog(log, "predictions published")

    def on_connected(self, session: Session) -> None:
        self._session = session
        session.consume(FEATURES, self.on_batch, self._prefetch)
        session.every(1.0, self._predictions.flush)

    def on_disconnected(self) -> None:
        self._session = None

    def validate(self, delivery: Delivery) -> FeaturesMessage:
        message = decode(FeaturesMessage, delivery.body)
        if len(message.body) != self._card.n_features:
            raise InvalidMessage(f"body: expected {self._card.n_features} features "
                                 f"({', '.join(self._card.feature_names)}), got {len(message.body)}")
        return message

    def on_batch(self, deliveries: list[Delivery]) -> None:
        session = self._session
        valid: list[tuple[Delivery, FeaturesMessage]] = []
        for delivery in deliveries:
            try:
                valid.append((delivery, self.validate(delivery)))
            except InvalidMessage as invalid:
                session.dead_letter(delivery, invalid.reason)
        if not valid:
            return
        predictions = self._estimator.predict(np.array([message.body for _, message in valid]))
        for (delivery, message), predicted in zip(valid, predictions.tolist()):
            prediction = PredictionMessage(id=message.id, body=predicted, model_version=self._card.version,
                                           sent_at=message.sent_at)
            session.publish("", Y_PRED, prediction.encode(), on_confirmed=delivery.ack)
            self._predictions.event("predicted %.1f for %s", predicted, message.id)


def main(argv: list[str] | None = None) -> int:
    settings = start_service("model", Settings, argv)
    runner = ServiceRunner(None, settings.amqp_url)
    runner.install_signal_handlers()
    loaded = wait_for_model(settings.models_dir, settings.model_poll_seconds, lambda: runner.stop_requested)
    if loaded is None:
        return 0
    estimator, card = loaded
    log.info("loaded model %s (%s, %d features, held-out MAE %.2f)", card.version, card.estimator,
             card.n_features, card.holdout_mae)
    runner.worker = Predictor(estimator, card, settings.prefetch)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
