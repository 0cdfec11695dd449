"""What the drift service knows, without a broker or a disk: the detectors of one model version,
the ids each stream has counted, the open alerts and the alerts decided but not yet announced.

Two streams feed it. A prediction (with the inputs it was made from) feeds one detector per feature
and the predictions' detector; a joined pair (`metric_added`) feeds the target's detector and the
performance detector (its absolute error, one-sided). Each id counts once per stream, so a
redelivered or re-published event changes nothing.

A detector's raise opens an alert and its resolve closes it; both go to the outbox, from which the
service announces them (alerts.jsonl, monitor_alerts) once a snapshot holding them is durable, and
removes them once announced. A snapshot (to_state) holds everything needed to carry on after a
restart: the detectors' state, the open alerts and the outbox. The counted ids are kept apart (an
append-only log, see state_store), as they grow with the events.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from detectors import (FEATURE_DRIFT, PERFORMANCE, PREDICTION_DRIFT, RAISED, RESOLVED, TARGET_DRIFT,
                       CategoricalDetector, Decision, Detector, DetectorSet, detectors_for)
from mlmonitor.ids import IdSet
from mlmonitor.messages import (InvalidMessage, MetricAdded, MetricAddedBatch, Message, MonitorAlert, PredictionBatch,
                                PredictionWithInputs)
from mlmonitor.model_store import ModelCard
from mlmonitor.schema import FeatureSchema
from mlmonitor.tasks import label_key

STATE_FORMAT = 1
PREDICTIONS = "predictions"  # the stream of predictions with their inputs
OUTCOMES = "outcomes"  # the stream of joined pairs: the truth and the error
STREAMS = (PREDICTIONS, OUTCOMES)
KINDS = (FEATURE_DRIFT, PREDICTION_DRIFT, TARGET_DRIFT, PERFORMANCE)

AlertKey = tuple[str, str]  # (episode, state): an alert line is written once per key
ONLY_FLOATS = {float}
SKIP = object()  # a value a detector does not take: the inputs of a prediction that came without them


@dataclass(frozen=True)
class Observation:
    """One event's values for the detectors of its stream, in their order."""

    stream: str
    id: str
    values: tuple


class NoReference(ValueError):
    """The model card has no reference statistics to compare live traffic with."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_episode(version: str, detector: str, events: int) -> str:
    """Names an alert from its raise to its resolve; the random part keeps it unique when a monitor
    started afresh raises at the same count again (the alert log remembers every name it holds)."""
    return f"{version}/{detector}/{events}/{uuid.uuid4().hex[:8]}"


def alert_key(alert: MonitorAlert) -> AlertKey:
    return alert.episode, alert.state


def calibration_of(false_alarms_per_100k: float, reference_margin: float) -> dict:
    return {"false_alarms_per_100k": false_alarms_per_100k, "reference_margin": reference_margin}


def build_detectors(card: ModelCard, calibration: Mapping[str, float]) -> list[Detector]:
    """The card's detectors, calibrated together; raises NoReference for a card without statistics."""
    reference = card.reference
    if not reference or not reference.get("features"):
        raise NoReference(f"the card of model {card.version} has no reference statistics (trained before drift "
                          f"detection existed?); run learn_model again")
    return detectors_for(reference, false_alarms_per_100k=calibration["false_alarms_per_100k"],
                         reference_margin=calibration["reference_margin"], residuals=True)


def reference_fingerprint(card: ModelCard) -> str:
    """Names the card's reference statistics: a retrain can keep the model's version and change them."""
    return hashlib.blake2b(json.dumps(card.reference, sort_keys=True).encode(), digest_size=8).hexdigest()


class DriftMonitor:
    def __init__(self, card: ModelCard, detectors: list[Detector], calibration: Mapping[str, float],
                 counted: Mapping[str, IdSet] | None = None):
        self.counted: dict[str, IdSet] = {stream: IdSet() for stream in STREAMS}
        self.counted.update(counted or {})
        self.unsaved_ids: list[tuple[str, str]] = []  # (stream, id) counted since the last take_unsaved_ids
        self.open_alerts: dict[str, MonitorAlert] = {}  # detector name -> its raise
        self.outbox: dict[AlertKey, MonitorAlert] = {}  # decided, not yet announced; in decision order
        self.calibration = dict(calibration)
        self._use(card, detectors)

    # --- the model version ---------------------------------------------------------------------------

    def _use(self, card: ModelCard, detectors: list[Detector]) -> None:
        self.version = card.version
        self.task = card.task
        self.schema: FeatureSchema = card.schema
        self.detectors = detectors
        by_feature = {detector.feature: detector for detector in detectors if detector.kind == FEATURE_DRIFT}
        self._feature_detectors = [by_feature.get(spec.name) for spec in self.schema.features]
        self._floats_as_they_are = self.schema.all_numeric  # a list of as many floats is observed as it is
        self._by_kind = {detector.kind: detector for detector in detectors if detector.kind != FEATURE_DRIFT}
        # aligned with an Observation's values: None where the card has no such detector
        self._detectors_of = {PREDICTIONS: [*self._feature_detectors, self._by_kind.get(PREDICTION_DRIFT)],
                              OUTCOMES: [self._by_kind.get(TARGET_DRIFT), self._by_kind.get(PERFORMANCE)]}
        self._sets = {stream: DetectorSet(detector for detector in detectors_of if detector is not None)
                      for stream, detectors_of in self._detectors_of.items()}
        self.reference = reference_fingerprint(card)

    def switch_model(self, card: ModelCard, detectors: list[Detector], reason: str) -> list[MonitorAlert]:
        """Watches a new version from now on: its open alerts are resolved (`reason` says why) and its
        detectors start afresh; the counted ids stay, as an event is one event whichever model saw it."""
        resolved = []
        for detector in self.detectors:
            raise_ = self.open_alerts.pop(detector.name, None)
            if raise_ is not None:
                resolved.append(self._announce(raise_.model_copy(update={
                    "state": RESOLVED, "time": utc_now(), "events": detector.events, "score": detector.score,
                    "explanation": {"reason": reason}})))
        self._use(card, detectors)
        return resolved

    def inherit(self, state: Mapping[str, Any], reason: str) -> list[MonitorAlert]:
        """Takes over what a snapshot this monitor does not carry on from still owes: its alerts not yet
        announced, and a resolve (`reason` says why) of each alert it had open. Unreadable ones are skipped."""
        resolved = []
        for raw in state.get("outbox", []) if isinstance(state.get("outbox"), list) else []:
            alert = _alert_or_none(raw)
            if alert is not None:
                self._announce(alert)
        for raw in state.get("open_alerts", []) if isinstance(state.get("open_alerts"), list) else []:
            raise_ = _alert_or_none(raw)
            if raise_ is not None and (raise_.episode, RESOLVED) not in self.outbox:
                resolved.append(self._announce(raise_.model_copy(update={
                    "state": RESOLVED, "time": utc_now(), "explanation": {"reason": reason}})))
        return resolved

    # --- the streams ---------------------------------------------------------------------------------

    def observe(self, message: Message) -> tuple[list[Observation], list[str]]:
        """(the observations of a message's events, why each event that doesn't fit doesn't): a batch
        holds many, a PredictionWithInputs one; a batch's problems name the event by place and id."""
        if isinstance(message, PredictionBatch):
            events, observe, where = message.predictions, self.observe_prediction, "predictions"
        elif isinstance(message, MetricAddedBatch):
            events, observe, where = message.events, self.observe_outcome, "events"
        else:
            events, observe, where = [message], self.observe_prediction, None
        observations, problems = [], []
        for index, event in enumerate(events):
            try:
                observations.append(observe(event))
            except InvalidMessage as invalid:
                problems.append(invalid.reason if where is None else f"{where}.{index} (id {event.id}): {invalid.reason}")
        return observations, problems

    def observe_prediction(self, message: PredictionWithInputs) -> Observation:
        """What a prediction gives each detector of its stream: its inputs (SKIP for all of them when
        it came without) and its body. Raises InvalidMessage when they don't fit the model's card."""
        inputs = (self.feature_values(message.features) if message.features is not None
                  else [SKIP] * len(self._feature_detectors))
        prediction = self._value_for(self._by_kind.get(PREDICTION_DRIFT), message.body, "body")
        return Observation(PREDICTIONS, message.id, (*inputs, prediction))

    def observe_outcome(self, event: MetricAdded) -> Observation:
        target = self._value_for(self._by_kind.get(TARGET_DRIFT), event.y_true, "y_true")
        performance = self._by_kind.get(PERFORMANCE)
        if performance is not None and performance.takes_residuals and not isinstance(event.y_true, str) \
                and not isinstance(event.y_pred, str):
            return Observation(OUTCOMES, event.id, (target, event.y_true - event.y_pred))  # a bias shows in its sign
        return Observation(OUTCOMES, event.id, (target, event.absolute_error))

    def take(self, observations: Iterable[Observation]) -> list[MonitorAlert]:
        """Feeds the observations of ids not yet counted on their stream to the detectors, each
        detector its values of the batch in order, and returns the alerts they decided."""
        new = {stream: [] for stream in STREAMS}
        for observation in observations:
            if self._count(observation.stream, observation.id):
                new[observation.stream].append(observation.values)
        decided = []
        for stream, rows in new.items():
            if not rows:
                continue
            columns = {detector.name: [value for value in values if value is not SKIP]
                       for detector, values in zip(self._detectors_of[stream], zip(*rows)) if detector is not None}
            decided += self._sets[stream].update_batch(columns)
        return [self._alert_of(detector, decision) for detector, decision in decided]

    def feature_values(self, body: list | dict) -> list[Any]:
        """The inputs in the card's order: floats for numeric features, category names (label_key)
        for categorical ones, None where missing. Raises InvalidMessage naming what doesn't fit."""
        if (self._floats_as_they_are and type(body) is list and len(body) == len(self._feature_detectors)
                and set(map(type, body)) == ONLY_FLOATS):
            return body  # the course format, without naming each place it could go wrong
        return self.schema.observed(body, where="features")

    def _value_for(self, detector: Detector | None, label: float | str, where: str) -> Any:
        if detector is None:
            return None
        if isinstance(detector, CategoricalDetector):
            return label_key(label)
        if isinstance(label, str):
            raise InvalidMessage(f"{where}: expected a number (model {self.version} is a {self.task}), "
                                 f"got the label {label!r}")
        return label

    def _count(self, stream: str, id: str) -> bool:
        if not self.counted[stream].add_if_new(id):
            return False
        self.unsaved_ids.append((stream, id))
        return True

    def _alert_of(self, detector: Detector, decision: Decision) -> MonitorAlert:
        raise_ = self.open_alerts.pop(detector.name, None)
        episode = raise_.episode if raise_ is not None else new_episode(self.version, detector.name, decision.events)
        alert = MonitorAlert(episode=episode, kind=decision.kind, feature=decision.feature, state=decision.state,
                             time=utc_now(), events=decision.events, score=decision.score,
                             threshold=decision.threshold, model_version=self.version, detector=detector.name,
                             explanation=plain_json(decision.explanation))
        if decision.state == RAISED:
            self.open_alerts[detector.name] = alert
        return self._announce(alert)

    def _announce(self, alert: MonitorAlert) -> MonitorAlert:
        self.outbox[alert_key(alert)] = alert
        return alert

    # --- what the service saves and announces -------------------------------------------------------

    def announced(self, key: AlertKey) -> None:
        self.outbox.pop(key, None)

    def take_unsaved_ids(self) -> list[tuple[str, str]]:
        ids, self.unsaved_ids = self.unsaved_ids, []
        return ids

    def events(self, stream: str) -> int:
        return len(self.counted[stream])

    def to_state(self) -> dict:
        return {"format": STATE_FORMAT, "model_version": self.version, "reference": self.reference,
                "calibration": self.calibration,
                "detectors": [detector.to_state() for detector in self.detectors],
                "open_alerts": [alert.model_dump() for alert in self.open_alerts.values()],
                "outbox": [alert.model_dump() for alert in self.outbox.values()],
                "saved_at": utc_now()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], card: ModelCard, counted: Mapping[str, IdSet]) -> DriftMonitor:
        """The monitor a snapshot describes, for `card` (the version it was saved for). Raises ValueError
        (or KeyError, TypeError) when the snapshot can't be read."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {state.get('format')!r}")
        if state["model_version"] != card.version:
            raise ValueError(f"the state is for model {state['model_version']}, the card for {card.version}")
        if state.get("reference") != reference_fingerprint(card):
            raise ValueError("the state was built from other reference statistics than the card's")
        detectors = [Detector.from_state(detector) for detector in state["detectors"]]
        monitor = cls(card, detectors, state["calibration"], counted)
        monitor.open_alerts = {alert.detector: alert for alert in map(MonitorAlert.model_validate, state["open_alerts"])}
        monitor.outbox = {alert_key(alert): alert for alert in map(MonitorAlert.model_validate, state["outbox"])}
        return monitor


def plain_json(value: Any) -> Any:
    """`value` as plain JSON types: numpy numbers and arrays unwrapped, NaN and infinities as null."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _alert_or_none(raw: Any) -> MonitorAlert | None:
    try:
        return MonitorAlert.model_validate(raw)
    except ValueError:  # pydantic's ValidationError among them
        return None
