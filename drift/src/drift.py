"""Watches every event for drift and degradation against the model card's reference, and raises alerts.

Two streams come in, each on a durable queue of drift's own: `predictions.drift` (bound to the
`predictions` exchange: each prediction with the inputs it was made from) feeds one detector per
feature and one for the predictions; `metric_added.drift` (bound to `metric_events`: each joined
pair) feeds one for the target and one for performance (the absolute error, one-sided: a model
getting better is not an alarm). The detectors (detectors.py) are built from the card's `reference`
and calibrated together to `--false-alarms-per-100k` at start. Each id counts once per stream.

Acks after effects: every `--snapshot-seconds` the detectors' state, the open alerts and the alerts
not yet announced go to `logs/drift_state.json`, and the ids counted since the last snapshot to
`logs/drift_ids.log` (state_store.py), on a thread of their own, one snapshot at a time (group
commit). Once a snapshot is durable, the alerts it decided are appended to `logs/alerts.jsonl`
(fsynced) and published, confirmed, to the topic exchange `monitor_alerts` with the routing key
`<kind>.<state>`; only then are the deliveries it covers acked. After a crash the snapshot is
loaded: redelivered events it already counted are skipped, the rest applied once, an open alert is
not raised again, and an alert decided but not announced is announced (a notifier may see it twice:
dedupe by `episode` and `state`).

A new model version (the card replaced) is picked up without a restart: its detectors are calibrated
off the IO thread and swapped in between two batches; the old version's open alerts are resolved.
`logs/drift_summary.json` (summary.py) shows the current scores, their history and the alerts, for
the dashboard. Prometheus: mlmonitor_drift_score and mlmonitor_drift_threshold per detector,
mlmonitor_alert_active{kind,feature}.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pika.exceptions import AMQPError, ChannelClosedByBroker
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field

from detectors import DEFAULT_REFERENCE_MARGIN, Detector
from follower import ModelFollower
from mlmonitor.amqp import Delivery, ServiceRunner, Session, decode_or_dead_letter
from mlmonitor.logs import EventLog
from mlmonitor.messages import MetricAddedBatch, MonitorAlert, PredictionBatch, PredictionWithInputs
from mlmonitor.model_store import ModelCard
from mlmonitor.service import start_service
from mlmonitor.settings import ConsumerSettings
from mlmonitor.topology import (DRIFT, DRIFT_EVENTS, DRIFT_PREDICTION_BATCHES, DRIFT_PREDICTIONS, DRIFT_QUEUES,
                                METRIC_EVENTS_EXCHANGE, MONITOR_ALERTS_EXCHANGE, RETIRED_DRIFT_QUEUES)
from monitor import OUTCOMES, PREDICTIONS, AlertKey, DriftMonitor, calibration_of
from state_store import StateStore
from summary import ScoreHistory, build_summary, score_of

log = logging.getLogger("drift")

DRIFT_SCORE = Gauge("mlmonitor_drift_score", "A detector's drift score; it raises an alert at its threshold.",
                    ["kind", "feature"])
DRIFT_THRESHOLD = Gauge("mlmonitor_drift_threshold", "The score at which a detector raises an alert.",
                        ["kind", "feature"])
ALERT_ACTIVE = Gauge("mlmonitor_alert_active", "1 while the detector's alert is open.", ["kind", "feature"])
EVENTS_TAKEN = Counter("mlmonitor_drift_events_total", "Events the detectors took in, one per id.", ["stream"])
DUPLICATES = Counter("mlmonitor_drift_duplicates_total", "Events skipped as their id was already counted.",
                     ["stream"])
ALERTS = Counter("mlmonitor_drift_alerts_total", "Alerts decided.", ["kind", "state"])
SNAPSHOT_SECONDS = Histogram("mlmonitor_drift_snapshot_seconds", "Time to make one snapshot durable.",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
BACKLOG = Gauge("mlmonitor_drift_backlog_messages",
                "Ready messages in each of drift's queues, polled every BACKLOG_POLL_SECONDS. They are outside "
                "features' backpressure: a backlog that keeps growing means drift is falling behind.", ["queue"])
BACKLOG_POLL_SECONDS = 5.0
RECENT_ALERTS = 50
MESSAGE_TYPES = {DRIFT_PREDICTIONS: PredictionWithInputs, DRIFT_PREDICTION_BATCHES: PredictionBatch,
                 DRIFT_EVENTS: MetricAddedBatch}


class Settings(ConsumerSettings):
    models_dir: Path = Field(Path("models"), description="Where learn_model writes the model card.")
    logs_dir: Path = Field(Path("logs"), description="Folder of alerts.jsonl, drift_state.json, drift_ids.log "
                                                     "and drift_summary.json.")
    false_alarms_per_100k: float = Field(
        1.0, gt=0, description="False alarms per 100,000 events of a stationary stream, all detectors together; "
                               "a higher rate buys a shorter detection delay (docs/drift.md).")
    reference_margin: float = Field(
        DEFAULT_REFERENCE_MARGIN, ge=0, description="Standard errors of the reference sample the calibration allows live traffic to "
                               "differ by without an alarm; 0 trusts the reference as the population.")
    snapshot_seconds: float = Field(1.0, gt=0, description="How often the state is made durable; deliveries "
                                                           "are acked once a snapshot covers them.")
    prefetch: int = Field(20000, ge=1, le=65535, description="Unacked messages per queue; must cover what "
                                                             "arrives in about two snapshot intervals.")
    batch_prefetch: int = Field(500, ge=1, le=65535, description="Unacked batch messages (our model's and metric's, "
                                                                 "up to a few hundred events each) per batch queue.")
    model_poll_seconds: float = Field(2.0, gt=0, description="How often to look at the model card: for the "
                                                             "card while it is missing, then for a new version.")
    history_points: int = Field(300, ge=1, description="Score history kept per detector, one point a second.")
    nice: int = Field(10, ge=0, le=19, description="Niceness added at start: under full load drift yields the "
                                                   "CPU to the pipeline and catches up from its queues.")
    fsync: bool = Field(True, description="fsync each snapshot and alert (turn off only for experiments).")


@dataclass
class Snapshot:
    """Deliveries taken in between two snapshots; acked once the snapshot is durable and every alert it
    decided is announced."""

    deliveries: list[Delivery]
    rejected: list[tuple[Delivery, str]]  # batches with events that don't fit, and why: dead-lettered, not acked
    unannounced: dict[AlertKey, None] = field(default_factory=dict)  # in decision order: a raise before its resolve
    durable: bool = False


class DriftWorker:
    def __init__(self, settings: Settings, store: StateStore):
        self._settings = settings
        self._store = store
        self._monitor: DriftMonitor | None = None
        # from the follower's thread: ("monitor", monitor, alerts at start, summary) or ("version", card, detectors)
        self._offers: list[tuple] = []
        self._offers_lock = threading.Lock()
        self._session: Session | None = None
        self._consuming = False
        self._taken: list[Delivery] = []  # since the last snapshot began
        self._rejected: list[tuple[Delivery, str]] = []  # likewise
        self._changed = False  # the monitor changed since the last snapshot began
        self._snapshots: deque[Snapshot] = deque()  # durable or being saved, not yet acked
        self._saving = False
        self._publishing: set[AlertKey] = set()
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-snapshot")
        self._history = ScoreHistory(settings.history_points)
        self._recent_alerts: deque[MonitorAlert] = deque(maxlen=RECENT_ALERTS)
        self._summary_failing = False
        self._events = EventLog(log, "batches")
        self._shown_labels: set[tuple[str, str]] = set()

    # --- what the follower hands over ----------------------------------------------------------------

    def offer_monitor(self, monitor: DriftMonitor, store: StateStore) -> None:
        """From the follower's thread: the monitor to start with."""
        self._offer(("monitor", monitor, store.alerts_at_start, store.read_summary()))

    def offer_version(self, card: ModelCard, detectors: list[Detector]) -> None:
        """From the follower's thread: a new model version's detectors, swapped in between two batches."""
        self._offer(("version", card, detectors))

    def _offer(self, offer: tuple) -> None:
        with self._offers_lock:
            self._offers.append(offer)
        session = self._session
        if session is not None:
            session.call_threadsafe(self._take_offers)  # closed meanwhile: the next session takes it

    def _take_offers(self) -> None:
        with self._offers_lock:
            offers, self._offers = self._offers, []
        for offer in offers:
            if offer[0] == "monitor":
                _, self._monitor, alerts, summary = offer
                self._recent_alerts.extend(alerts)
                if summary:  # a restart keeps the chart
                    self._history.restore(summary, self._monitor.version)
            else:
                self._switch_model(*offer[1:])
            self._changed = True
        if self._monitor is not None:
            self._start_consuming()

    def _switch_model(self, card: ModelCard, detectors: list[Detector]) -> None:
        old = self._monitor.version
        resolved = self._monitor.switch_model(card, detectors, f"model {card.version} replaced {old}")
        self._history.clear()
        self._forget_labels()
        log.info("now watching model %s (was %s) with %d detectors; resolved the %d alerts open for %s",
                 card.version, old, len(detectors), len(resolved), old)

    # --- the broker ---------------------------------------------------------------------------------

    def on_connected(self, session: Session) -> None:
        self._session = session
        self._consuming = False
        self._take_offers()
        session.every(self._settings.snapshot_seconds, self._snapshot)
        session.every(1.0, self._tick)
        session.watch_queue_depths(DRIFT_QUEUES, BACKLOG_POLL_SECONDS, show_backlog)

    def on_disconnected(self) -> None:
        self._session = None
        self._consuming = False
        self._taken.clear()  # void: the broker redelivers them, and their ids are counted already
        self._rejected.clear()
        self._snapshots.clear()
        self._saving = False  # a save in flight still finishes on the thread; its result is void
        self._publishing.clear()  # alerts not confirmed stay in the outbox and go out again

    def _start_consuming(self) -> None:
        if self._consuming or self._session is None:
            return
        self._consuming = True
        for queue in DRIFT_QUEUES:
            batches = queue != DRIFT_PREDICTIONS
            self._session.consume(queue, self.on_batch,
                                  self._settings.batch_prefetch if batches else self._settings.prefetch)

    def on_batch(self, deliveries: list[Delivery]) -> None:
        monitor, session = self._monitor, self._session
        observations, taken, rejected = [], [], []
        for delivery in deliveries:
            message = decode_or_dead_letter(session, MESSAGE_TYPES[delivery.queue], delivery)
            if message is None:
                continue
            observed, problems = monitor.observe(message)
            if not observed:
                session.dead_letter(delivery, "; ".join(problems))
                continue
            if problems:  # its good events count: dead-lettered, not acked, once a snapshot covers them
                rejected.append((delivery, "; ".join(problems)))
            else:
                taken.append(delivery)
            observations += observed
        if not observations:
            return
        counted_before = {stream: monitor.events(stream) for stream in (PREDICTIONS, OUTCOMES)}
        alerts = monitor.take(observations)
        for delivery in taken:
            delivery.body = b""  # held until a snapshot covers it, and only a dead letter needs its body
        self._taken += taken
        self._rejected += rejected
        self._changed = True
        self._count(observations, counted_before)
        for alert in alerts:
            ALERTS.labels(alert.kind, alert.state).inc()
            ALERT_ACTIVE.labels(alert.kind, alert.feature or "").set(1 if alert.state == "raised" else 0)
            log.info("%s", describe_alert(alert))

    def _count(self, observations: list, counted_before: dict[str, int]) -> None:
        monitor = self._monitor
        taken = {stream: 0 for stream in counted_before}
        for observation in observations:
            taken[observation.stream] += 1
        duplicates = 0
        for stream, before in counted_before.items():
            new = monitor.events(stream) - before
            EVENTS_TAKEN.labels(stream).inc(new)
            DUPLICATES.labels(stream).inc(taken[stream] - new)
            duplicates += taken[stream] - new
        top = max(monitor.detectors, key=score_of)
        self._events.event("took in %d predictions and %d outcomes (%d counted before); highest score %.2f of "
                           "threshold %g: %s", taken[PREDICTIONS], taken[OUTCOMES], duplicates, score_of(top),
                           top.threshold, top.name)

    # --- snapshots, announcements and acks ------------------------------------------------------------

    def _snapshot(self) -> None:
        """Group commit: one snapshot at a time, on the snapshot thread, covering every delivery taken in
        before it began; the IO loop never waits for the disk."""
        monitor, session = self._monitor, self._session
        if self._saving or monitor is None or session is None:
            return
        if not (self._taken or self._rejected or self._changed or set(monitor.outbox) - self._publishing):
            return
        snapshot = Snapshot(self._taken, self._rejected, dict.fromkeys(monitor.outbox))
        self._taken, self._rejected, self._changed, self._saving = [], [], False, True
        state, ids, alerts = monitor.to_state(), monitor.take_unsaved_ids(), list(monitor.outbox.values())
        started = time.perf_counter()
        self._saver.submit(self._store.save, state, ids, alerts).add_done_callback(
            lambda done: session.call_threadsafe(lambda: self._saved(snapshot, done, started)))

    def _saved(self, snapshot: Snapshot, done: Future, started: float) -> None:
        self._saving = False
        try:
            done.result()
        except OSError as error:
            log.error("can't save the drift state in %s: %s; holding %d deliveries unacked and retrying every "
                      "%gs", self._store.logs_dir, error, len(snapshot.deliveries), self._settings.snapshot_seconds)
            self._taken = snapshot.deliveries + self._taken
            self._rejected = snapshot.rejected + self._rejected
            self._changed = True
            return
        SNAPSHOT_SECONDS.observe(time.perf_counter() - started)
        snapshot.durable = True
        self._snapshots.append(snapshot)
        for key in list(snapshot.unannounced):
            self._announce(key)
        self._ack_covered()

    def _announce(self, key: AlertKey) -> None:
        alert = self._monitor.outbox.get(key)
        if alert is None:  # announced meanwhile
            self._announced(key, None)
            return
        if key in self._publishing:
            return
        self._publishing.add(key)
        self._session.publish(MONITOR_ALERTS_EXCHANGE, alert.routing_key, alert.encode(),
                              on_confirmed=lambda: self._announced(key, alert))

    def _announced(self, key: AlertKey, alert: MonitorAlert | None) -> None:
        self._publishing.discard(key)
        if alert is not None and key in self._monitor.outbox:
            self._monitor.announced(key)
            self._recent_alerts.append(alert)
            self._changed = True  # the next snapshot no longer owes it
        for snapshot in self._snapshots:
            snapshot.unannounced.pop(key, None)
        self._ack_covered()

    def _ack_covered(self) -> None:
        while self._snapshots and self._snapshots[0].durable and not self._snapshots[0].unannounced:
            snapshot = self._snapshots.popleft()
            for delivery in snapshot.deliveries:
                delivery.ack()
            for delivery, reason in snapshot.rejected:
                self._session.dead_letter(delivery, reason)

    # --- every second: the chart, the gauges, the dashboard's file ---------------------------------------

    def _tick(self) -> None:
        self._events.flush()
        monitor = self._monitor
        if monitor is None:
            return
        self._history.sample(monitor.detectors, time.time())
        self._show_gauges(monitor)
        summary = build_summary(monitor, self._history, list(self._recent_alerts))
        self._saver.submit(self._store.write_summary, summary).add_done_callback(self._summary_written)

    def _summary_written(self, done: Future) -> None:
        error = done.exception()
        if error is not None and not self._summary_failing:
            log.error("can't write %s: %s; trying again every second", self._store.summary_path, error)
        elif error is None and self._summary_failing:
            log.info("wrote %s again", self._store.summary_path)
        self._summary_failing = error is not None

    def _show_gauges(self, monitor: DriftMonitor) -> None:
        raised = {alert.detector for alert in monitor.open_alerts.values()}
        for detector in monitor.detectors:
            labels = (detector.kind, detector.feature or "")
            self._shown_labels.add(labels)
            DRIFT_SCORE.labels(*labels).set(score_of(detector))
            DRIFT_THRESHOLD.labels(*labels).set(float(detector.threshold))
            ALERT_ACTIVE.labels(*labels).set(1 if detector.name in raised else 0)

    def _forget_labels(self) -> None:
        """A new version's features may differ: the old ones' series end."""
        for labels in self._shown_labels:
            for gauge in (DRIFT_SCORE, DRIFT_THRESHOLD, ALERT_ACTIVE):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        self._shown_labels.clear()

    def close(self) -> None:
        self._saver.shutdown(wait=True)


def describe_alert(alert: MonitorAlert) -> str:
    """One line: what, after how many events, and why."""
    subject = f"{alert.kind} alert" + (f" for {alert.feature}" if alert.feature else "")
    line = (f"{alert.state} {subject} after {alert.events} events: score {alert.score:.2f} "
            f"(threshold {alert.threshold:g}), model {alert.model_version}")
    explanation = alert.explanation
    if "reason" in explanation:
        return f"{line}; {explanation['reason']}"
    since, reference = explanation.get("since") or {}, explanation.get("reference") or {}
    if since.get("mean") is not None and reference.get("mean") is not None:
        line += (f"; since event {since.get('from_event')} mean {since['mean']:.4g}, reference mean "
                 f"{reference['mean']:.4g} (std {reference.get('std') or 0:.4g})")
    elif since.get("category") is not None:
        line += (f"; since event {since.get('from_event')} {since['category']!r} makes {since.get('frequency')} "
                 f"of values, {since.get('reference_frequency')} in the reference")
    elif since.get("missing_rate") is not None:
        line += f"; since event {since.get('from_event')} {since['missing_rate']:.1%} missing"
    return line


def retire_old_queues(parameters) -> None:
    """An older drift's queue on metric_events would keep filling with nobody reading it: unbound, and
    deleted once empty. Best effort, at start: a user that may not do it (least privilege) is told how."""
    import pika

    for queue in RETIRED_DRIFT_QUEUES:
        try:
            connection = pika.BlockingConnection(parameters)
        except (AMQPError, OSError):
            return  # the broker is not up yet: nothing to do now
        try:
            channel = connection.channel()
            left = channel.queue_declare(queue, passive=True).method.message_count
            channel.queue_unbind(queue, METRIC_EVENTS_EXCHANGE)
            channel.queue_delete(queue, if_empty=True)
            log.info("deleted %s, an older drift's queue, which held %d events", queue, left)
        except ChannelClosedByBroker as closed:
            if closed.reply_code == 406:  # not empty: unbound, it holds what it had
                log.warning("%s, an older drift's queue, is no longer fed and holds messages drift no longer "
                            "reads; delete it: rabbitmqctl delete_queue %s", queue, queue)
            elif closed.reply_code != 404:
                log.warning("can't retire %s, an older drift's queue (%s); delete it: rabbitmqctl delete_queue %s",
                            queue, closed.reply_text, queue)
        except AMQPError as error:
            log.warning("can't retire %s, an older drift's queue (%s)", queue, error)
        finally:
            if connection.is_open:
                connection.close()


def show_backlog(depths: dict[str, int]) -> None:
    for queue, messages in depths.items():
        BACKLOG.labels(queue).set(messages)


def main(argv: list[str] | None = None) -> int:
    settings = start_service("drift", Settings, argv)
    if settings.nice:
        os.nice(settings.nice)
    store = StateStore(settings.logs_dir, fsync=settings.fsync)
    worker = DriftWorker(settings, store)
    runner = ServiceRunner(worker, settings.amqp_url, DRIFT, max_message_bytes=settings.max_message_bytes,
                           tls=settings.amqp_tls,
                           queue_type=settings.queue_type)  # declares drift's queues at once: nothing is missed
    runner.install_signal_handlers()
    retire_old_queues(runner.parameters)
    follower = ModelFollower(settings.models_dir, settings.model_poll_seconds,
                             calibration_of(settings.false_alarms_per_100k, settings.reference_margin), store,
                             worker, lambda: runner.stop_requested, runner.request_stop)
    follower.start()
    try:
        return runner.run()
    finally:
        follower.stop()
        worker.close()


if __name__ == "__main__":
    sys.exit(main())
