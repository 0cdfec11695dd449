"""Joins `y_true` with `y_pred` by id, appends one row per id to `logs/metric_log.csv` and
publishes `metric_added` to the `metric_events` exchange.

Both halves stay unacked until the row is on disk and the event is confirmed, so a crash at any
point redelivers them; the log remembers which ids it holds, so a redelivered pair writes no
second row (its event is published again, and subscribers drop ids they have already counted).
A half arriving for a pair this process has already written and announced (say, a prediction the
model made twice after a broker restart) is acked at once: no partner will come to release it.
So is a half of any row in the log that a predecessor wrote, except its last rows, whose events it
may not have published: one of those that is still alone a tick later (the predecessor was killed
after acking one half of the pair but not the other) is acked once the row's event is published
again.
A half whose partner does not come (see JoinBuffer) is dead-lettered with that reason, and so are
both halves of a pair that can't be scored (see `score`), with the reason why.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import Field

from mlmonitor.amqp import Delivery, Session, decode_or_dead_letter, run_worker
from mlmonitor.logs import EventLog
from mlmonitor.messages import MetricAdded, PredictionMessage, TargetMessage
from mlmonitor.metric_log import MetricLogWriter, MetricRow, read_last_rows
from mlmonitor.service import start_service
from mlmonitor.settings import ConsumerSettings
from mlmonitor.tasks import (CLASSIFICATION, REGRESSION, classification_error, is_classification, label_key,
                             regression_error)
from mlmonitor.topology import METRIC_ADDED, METRIC_EVENTS_EXCHANGE, Y_PRED, Y_TRUE

log = logging.getLogger("metric")

JOIN_BUFFER_HALVES = Gauge("mlmonitor_join_buffer_halves", "Halves waiting in metric's join buffer for their partner.")
EXPIRED_HALVES = Counter("mlmonitor_join_expired_halves_total", "Halves dead-lettered because no partner came.", ["queue"])
ROWS_WRITTEN = Counter("mlmonitor_metric_rows_written_total", "Rows appended to the metric log.")

MESSAGE_TYPES = {Y_TRUE: TargetMessage, Y_PRED: PredictionMessage}
AUTO = "auto"


class Settings(ConsumerSettings):
    logs_dir: Path = Field(Path("logs"), description="Folder of metric_log.csv.")
    join_ttl_seconds: float = Field(
        60.0, gt=0, description="Seconds of traffic on the partner's queue a half waits for its partner.")
    join_max_wait_seconds: float = Field(600.0, gt=0, description="Longest a half waits, traffic or not.")
    prefetch: int = Field(1000, ge=1, le=65535, description="Unacked messages per queue; bounds the join buffer.")
    fsync: bool = Field(True, description="fsync each batch of rows before acking (turn off only for experiments).")
    task: Literal["auto", "regression", "classification"] = Field(
        AUTO, description="How a pair is scored: regression |y_true − y_pred|; classification 1 − p(true class), "
                          "or 0/1 without probabilities; auto: a classification when the prediction is a text "
                          "label or has probabilities, else a regression.")


Ack = TypeVar("Ack")


@dataclass
class Half(Generic[Ack]):
    message: TargetMessage | PredictionMessage
    arrived_at: float
    partner_traffic_at_arrival: float
    deliveries: list[Ack] = field(default_factory=list)


@dataclass
class Pair(Generic[Ack]):
    y_true: TargetMessage
    y_pred: PredictionMessage
    deliveries: list[Ack]

    @property
    def id(self) -> str:
        return self.y_true.id


@dataclass
class ScoredPair(Generic[Ack]):
    """A pair and its row: what the log gets and the event announces."""

    pair: Pair[Ack]
    row: MetricRow

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def deliveries(self) -> list[Ack]:
        return self.pair.deliveries

    def event(self) -> MetricAdded:
        y_pred = self.pair.y_pred
        return MetricAdded(id=self.row.id, y_true=self.pair.y_true.body, y_pred=y_pred.body,
                           absolute_error=self.row.absolute_error, probabilities=y_pred.probabilities,
                           model_version=y_pred.model_version, sent_at=self.pair.y_true.sent_at)


def score(y_true: TargetMessage, y_pred: PredictionMessage, task: str) -> MetricRow | str:
    """The pair's row in the log, or the one-line reason it can't be scored as `task`.

    auto makes a pair a classification when its prediction says so (a text label or probabilities,
    see mlmonitor.tasks.is_classification). A classifier's row holds the labels' label_key and
    1 − p(true class), or 0/1 without probabilities; a regressor's the numbers and |y_true − y_pred|.
    """
    scored_as = task
    if task == AUTO:
        scored_as = CLASSIFICATION if is_classification(y_pred.body, y_pred.probabilities) else REGRESSION
    labels = (("y_true", y_true.body), ("y_pred", y_pred.body))
    if scored_as == CLASSIFICATION:  # labels hold no control character: messages refuse them at decode
        return MetricRow(y_true.id, label_key(y_true.body), label_key(y_pred.body),
                         classification_error(y_true.body, y_pred.body, y_pred.probabilities))
    for name, label in labels:
        if isinstance(label, str):
            why = "TASK=regression" if task == REGRESSION else "TASK=auto, and y_pred is a number without probabilities"
            return (f"{name}: can't score the text {label!r} as a regression ({why}); for numeric class labels "
                    f"without probabilities set TASK=classification on metric")
    error = regression_error(y_true.body, y_pred.body)
    if not math.isfinite(error):
        return f"y_pred: |y_true - y_pred| = |{y_true.body!r} - {y_pred.body!r}| overflows a float"
    return MetricRow(y_true.id, y_true.body, y_pred.body, error)


@dataclass
class Unsynced:
    """One batch written to the log, from byte `start` to `end`, waiting for an fsync past `end`."""

    start: int
    end: int
    pairs: list[ScoredPair]
    ids: list[str]  # the rows it wrote (pairs already in the log write none)


class TrafficClock:
    """Seconds during which a queue kept delivering: a gap longer than `max_gap` counts as
    `max_gap`, so the clock stands still while the queue is idle (say, while the model is down)."""

    def __init__(self, max_gap: float = 1.0):
        self.seconds = 0.0
        self._max_gap = max_gap
        self._last: float | None = None

    def tick(self, now: float) -> None:
        if self._last is not None:
            self.seconds += min(max(0.0, now - self._last), self._max_gap)
        self._last = now


class JoinBuffer(Generic[Ack]):
    """Holds each half until its partner arrives.

    A half expires once its partner's queue has delivered for `ttl` seconds without the partner,
    or after `max_wait` seconds in any case. Measuring the TTL in partner traffic means an outage
    upstream (the model restarting, a backlog draining) delays halves without expiring them.
    A repeated half (a redelivery or a duplicate publish) joins the half already waiting, so all
    its deliveries are acked together when the pair completes.
    """

    def __init__(self, ttl: float, max_wait: float):
        self.ttl = ttl
        self.max_wait = max_wait
        self._waiting: dict[str, dict[str, Half[Ack]]] = {Y_TRUE: {}, Y_PRED: {}}
        self._traffic = {Y_TRUE: TrafficClock(), Y_PRED: TrafficClock()}

    def __len__(self) -> int:
        return sum(len(halves) for halves in self._waiting.values())

    def add(self, queue: str, message, delivery: Ack, now: float) -> Pair[Ack] | None:
        self._traffic[queue].tick(now)
        partner_queue = partner_of(queue)
        partner = self._waiting[partner_queue].pop(message.id, None)
        if partner is None:
            half = self._waiting[queue].get(message.id)
            if half is None:
                half = Half(message, now, self._traffic[partner_queue].seconds)
                self._waiting[queue][message.id] = half
            half.deliveries.append(delivery)
            return None
        own = self._waiting[queue].pop(message.id, None)
        deliveries = partner.deliveries + (own.deliveries if own else []) + [delivery]
        if queue == Y_TRUE:
            return Pair(message, partner.message, deliveries)
        return Pair(partner.message, message, deliveries)

    def expire(self, now: float) -> list[tuple[str, Half[Ack]]]:
        """Removes and returns the halves that waited too long, oldest first."""
        expired = []
        for queue, halves in self._waiting.items():
            partner_traffic = self._traffic[partner_of(queue)].seconds
            while halves:
                oldest = halves[next(iter(halves))]
                waited_for_traffic = partner_traffic - oldest.partner_traffic_at_arrival >= self.ttl
                if not waited_for_traffic and now - oldest.arrived_at < self.max_wait:
                    break
                expired.append((queue, halves.pop(oldest.message.id)))
        return expired

    def remove(self, id: str) -> list[Ack]:
        """Takes out the halves waiting with this id and returns their deliveries."""
        deliveries = []
        for halves in self._waiting.values():
            half = halves.pop(id, None)
            if half is not None:
                deliveries += half.deliveries
        return deliveries

    def clear(self) -> None:
        for halves in self._waiting.values():
            halves.clear()


def partner_of(queue: str) -> str:
    return Y_PRED if queue == Y_TRUE else Y_TRUE


class MetricJoiner:
    def __init__(self, settings: Settings, metric_log: MetricLogWriter, clock=time.monotonic):
        self._settings = settings
        self._log = metric_log
        self._clock = clock
        self._buffer: JoinBuffer[Delivery] = JoinBuffer(settings.join_ttl_seconds, settings.join_max_wait_seconds)
        self._unwritten: list[ScoredPair[Delivery]] = []
        self._unsynced: deque[Unsynced] = deque()  # written, waiting for an fsync to cover them
        self._sync_in_flight = False
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        # pairs handed to the log and not yet announced; kept across reconnects, as their halves come back
        self._unannounced: set[str] = set()
        # a predecessor killed mid-ack left at most its unacked pairs, among its last rows; a row leaves
        # this once this process has announced it
        self._rows_before_start = read_last_rows(metric_log.path, 2 * settings.prefetch)
        self._halves_of_old_rows: tuple[set[str], set[str]] = (set(), set())  # seen this tick, the one before
        self._session: Session | None = None
        self._rows = EventLog(log, "rows written")

    def on_connected(self, session: Session) -> None:
        self._session = session
        session.consume(Y_TRUE, self.on_batch, self._settings.prefetch)
        session.consume(Y_PRED, self.on_batch, self._settings.prefetch)
        session.every(1.0, self._expire_halves)
        session.every(1.0, self._retry_unwritten)
        session.every(1.0, self._rows.flush)

    def on_disconnected(self) -> None:
        self._session = None
        self._buffer.clear()
        self._unwritten.clear()
        self._unsynced.clear()  # their rows stay written; the redelivered pairs wait for the next fsync
        self._sync_in_flight = False
        JOIN_BUFFER_HALVES.set(0)

    def on_batch(self, deliveries: list[Delivery]) -> None:
        now = self._clock()
        pairs = []
        for delivery in deliveries:
            message = decode_or_dead_letter(self._session, MESSAGE_TYPES[delivery.queue], delivery)
            if message is None:
                continue
            if self._announced(message.id):
                delivery.ack()  # a duplicate: its row and its event exist
                continue
            if message.id in self._rows_before_start:
                self._halves_of_old_rows[0].add(message.id)
            pair = self._buffer.add(delivery.queue, message, delivery, now)
            if pair is None:
                continue
            row = score(pair.y_true, pair.y_pred, self._settings.task)
            if isinstance(row, str):
                for pair_delivery in pair.deliveries:  # both halves, and any duplicate of either
                    self._session.dead_letter(pair_delivery, row)
            else:
                pairs.append(ScoredPair(pair, row))
        JOIN_BUFFER_HALVES.set(len(self._buffer))
        if pairs:
            self._write_and_publish(pairs)

    def _announced(self, id: str) -> bool:
        """A row in the log whose event was confirmed: neither this process's work in flight nor among
        the last rows a predecessor wrote and this process has not announced again (only those can
        lack their event: the predecessor's unacked pairs were at most its prefetch)."""
        return id in self._log.written_ids and id not in self._unannounced and id not in self._rows_before_start

    def _write_and_publish(self, pairs: list[ScoredPair[Delivery]], retrying: bool = False) -> None:
        self._unannounced.update(pair.id for pair in pairs)
        if self._unwritten and not retrying:
            self._unwritten.extend(pairs)  # the log is failing: they wait for the next retry
            return
        start = self._log.size
        try:
            written = self._log.append((pair.row for pair in pairs), durable=False)
        except OSError as error:
            log.error("can't write %s: %s; holding %d rows unacked and retrying every second",
                      self._log.path, error, len(pairs))
            self._unwritten.extend(pairs)
            return
        ROWS_WRITTEN.inc(len(written))
        for row in written:
            self._rows.event("wrote row %s: y_true %s, y_pred %s, absolute error %.2f",
                             row.id, _shown(row.y_true), _shown(row.y_pred), row.absolute_error)
        self._unsynced.append(Unsynced(start, self._log.size, pairs, [row.id for row in written]))
        self._sync()

    def _sync(self) -> None:
        """Group commit: one fsync at a time, on the fsync thread, covering every row written before
        it started; rows written meanwhile wait for the next one. The IO loop never waits for the disk."""
        if self._sync_in_flight or not self._unsynced:
            return
        self._sync_in_flight = True
        session = self._session
        self._syncer.submit(self._log.sync).add_done_callback(
            lambda done: session.call_threadsafe(lambda: self._synced(done)))

    def _synced(self, done: Future[int]) -> None:
        self._sync_in_flight = False
        try:
            durable_size = done.result()
        except OSError as error:
            failed = list(self._unsynced)
            self._unsynced.clear()
            self._log.roll_back(failed[0].start, [row_id for batch in failed for row_id in batch.ids])
            pairs = [pair for batch in failed for pair in batch.pairs]
            log.error("can't sync %s: %s; took back %d rows, holding them unacked and retrying every second",
                      self._log.path, error, len(pairs))
            self._unwritten.extend(pairs)
            return
        while self._unsynced and self._unsynced[0].end <= durable_size:
            for pair in self._unsynced.popleft().pairs:
                self._session.publish(METRIC_EVENTS_EXCHANGE, METRIC_ADDED, pair.event().encode(),
                                      on_confirmed=lambda pair=pair: self._announced_pair(pair))
        self._sync()

    def close(self) -> None:
        self._syncer.shutdown(wait=True)

    def _release_halves_of_old_rows(self) -> None:
        """Halves of rows written before this start that waited a whole tick: their partner was acked
        before the restart. The row's event goes out again (subscribers drop ids they have counted)."""
        waited = self._halves_of_old_rows[1]
        self._halves_of_old_rows = (set(), self._halves_of_old_rows[0])
        for event_id in waited:
            deliveries = self._buffer.remove(event_id)
            if deliveries:
                row = self._rows_before_start[event_id]
                event = MetricAdded(id=row.id, y_true=row.y_true, y_pred=row.y_pred,
                                    absolute_error=row.absolute_error)
                self._session.publish(METRIC_EVENTS_EXCHANGE, METRIC_ADDED, event.encode(),
                                      on_confirmed=lambda deliveries=deliveries: _ack_all(deliveries))

    def _announced_pair(self, pair: ScoredPair[Delivery]) -> None:
        self._unannounced.discard(pair.id)
        self._rows_before_start.pop(pair.id, None)
        _ack_all(pair.deliveries + self._buffer.remove(pair.id))  # with duplicates that came meanwhile
        JOIN_BUFFER_HALVES.set(len(self._buffer))

    def _retry_unwritten(self) -> None:
        if self._unwritten:
            pairs, self._unwritten = self._unwritten, []
            self._write_and_publish(pairs, retrying=True)

    def _expire_halves(self) -> None:
        self._release_halves_of_old_rows()
        for queue, half in self._buffer.expire(self._clock()):
            if half.message.id in self._log.written_ids:
                _ack_all(half.deliveries)  # a late duplicate of a pair already written
                continue
            EXPIRED_HALVES.labels(queue).inc()
            reason = (f"no {partner_of(queue)} with id {half.message.id} arrived within "
                      f"{self._buffer.ttl:g}s of traffic ({self._clock() - half.arrived_at:.0f}s in all)")
            for delivery in half.deliveries:
                self._session.dead_letter(delivery, reason)
        JOIN_BUFFER_HALVES.set(len(self._buffer))


def _shown(value: float | str) -> str:
    return f"{value:.1f}" if isinstance(value, float) else repr(value)


def _ack_all(deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        delivery.ack()


def main(argv: list[str] | None = None) -> int:
    settings = start_service("metric", Settings, argv)
    metric_log = MetricLogWriter(settings.logs_dir / "metric_log.csv", fsync=settings.fsync)
    log.info("appending to %s, which holds %d rows", metric_log.path, len(metric_log.written_ids))
    joiner = MetricJoiner(settings, metric_log)
    try:
        return run_worker(joiner, settings.amqp_url, max_message_bytes=settings.max_message_bytes,
                          tls=settings.amqp_tls)
    finally:
        joiner.close()
        metric_log.close()


if __name__ == "__main__":
    sys.exit(main())
