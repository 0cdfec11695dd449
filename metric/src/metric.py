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

With `--partitions K` > 1, every metric process also routes `y_true` and `y_pred` to the partitions'
own queues by a hash of the id (PartitionRouter), and partition I joins its two queues into
`logs/metric_log-I.csv`. A second process with the same partition is a hot standby: only the holder
of the shard's lock joins and writes (MetricProcess; docs/scaling.md).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Literal, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import AliasChoices, Field, model_validator

from mlmonitor.amqp import Delivery, Session, after_all, decode_or_dead_letter, publish_batches, run_worker
from mlmonitor.logs import EventLog
from mlmonitor.messages import MetricAdded, MetricAddedBatch, PredictionMessage, TargetMessage
from mlmonitor.metric_log import GroupCommitLog, MetricLogWriter, MetricRow, ShardLock, read_last_rows
from mlmonitor.partitions import LayoutMismatch, check_layout, log_name, partition_of
from mlmonitor.service import start_service
from mlmonitor.settings import ConsumerSettings
from mlmonitor.tasks import (CLASSIFICATION, REGRESSION, classification_error, is_classification, label_key,
                             regression_error)
from mlmonitor.topology import (METRIC_ADDED, METRIC_BATCHES_EXCHANGE, METRIC_EVENTS_EXCHANGE,
                                METRIC_PARTITIONS_EXCHANGE, Y_PRED, Y_TRUE, metric_topology, partition_queue)

log = logging.getLogger("metric")

JOIN_BUFFER_HALVES = Gauge("mlmonitor_join_buffer_halves", "Halves waiting in metric's join buffer for their partner.")
EXPIRED_HALVES = Counter("mlmonitor_join_expired_halves_total", "Halves dead-lettered because no partner came.", ["queue"])
ROWS_WRITTEN = Counter("mlmonitor_metric_rows_written_total", "Rows appended to the metric log.")
ACTIVE = Gauge("mlmonitor_metric_active", "1 while this process is its partition's active joiner (holds the shard's "
               "lock), 0 while it is a standby.", ["partition"])
ROUTED = Counter("mlmonitor_metric_routed_total", "Messages a router republished to a partition's queue (K > 1).",
                 ["queue"])

MESSAGE_TYPES = {Y_TRUE: TargetMessage, Y_PRED: PredictionMessage}
AUTO = "auto"


class Settings(ConsumerSettings):
    logs_dir: Path = Field(Path("logs"), description="Folder of metric_log.csv.")
    join_ttl_seconds: float = Field(
        60.0, gt=0, description="Seconds of traffic on the partner's queue a half waits for its partner.")
    join_max_wait_seconds: float = Field(600.0, gt=0, description="Longest a half waits, traffic or not.")
    prefetch: int = Field(1000, ge=1, le=65535, description="Unacked messages per queue; bounds the join buffer.")
    fsync: bool = Field(True, description="fsync each batch of rows before acking (turn off only for experiments).")
    partitions: int = Field(1, ge=1, le=1024, validation_alias=AliasChoices("partitions", "metric_partitions"),
                            description="K, the number of partitions (env METRIC_PARTITIONS): with K > 1 every metric "
                                        "also routes y_true and y_pred to the partitions' queues, and partition I "
                                        "writes logs/metric_log-I.csv. Changing K takes a drain (docs/scaling.md).")
    partition: int = Field(0, ge=0, validation_alias=AliasChoices("partition", "metric_partition"),
                           description="I, this process's partition, 0 ≤ I < K (env METRIC_PARTITION). A second "
                                       "process with the same K and I is its hot standby.")
    log_name: str = Field("", description="The name in this process's log lines (default: metric), to tell "
                                        "partitions and standbys apart, e.g. metric-0-standby.")
    fence_seconds: float = Field(10.0, gt=0, description="How long the active metric of a partition keeps its "
                                 "shard's lock while it can't reach RabbitMQ; then it hands the shard to a standby.")
    task: Literal["auto", "regression", "classification"] = Field(
        AUTO, description="How a pair is scored: regression |y_true − y_pred|; classification 1 − p(true class), "
                          "or 0/1 without probabilities; auto: a classification when the prediction is a text "
                          "label or has probabilities, else a regression.")

    @model_validator(mode="after")
    def _check_partition(self) -> Settings:
        if self.partition >= self.partitions:
            raise ValueError(f"partition {self.partition} is not below partitions {self.partitions} (0 ≤ I < K)")
        return self


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
    """join → write → announce → ack, for the two queues of one partition (`y_true` and `y_pred` when
    unpartitioned). The durable log's write, group commit, roll back and retry are GroupCommitLog's."""

    def __init__(self, settings: Settings, metric_log: MetricLogWriter, clock=time.monotonic,
                 queues: tuple[str, str] = (Y_TRUE, Y_PRED), check_fence: Callable[[], None] = lambda: None):
        self._settings = settings
        self._log = metric_log
        self._clock = clock
        self._queue_of = dict(zip((Y_TRUE, Y_PRED), queues))
        self._role_of = {queue: role for role, queue in self._queue_of.items()}  # the queue's half: y_true or y_pred
        self._buffer: JoinBuffer[Delivery] = JoinBuffer(settings.join_ttl_seconds, settings.join_max_wait_seconds)
        self._durable: GroupCommitLog[ScoredPair[Delivery]] = GroupCommitLog(
            metric_log, lambda: self._session, on_durable=self._announce, on_written=self._wrote,
            check_fence=check_fence)
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
        for queue in self._queue_of.values():
            session.consume(queue, self.on_batch, self._settings.prefetch)
        session.every(1.0, self._expire_halves)
        session.every(1.0, self._retry_unwritten)
        session.every(1.0, self._rows.flush)

    def on_disconnected(self) -> None:
        self._session = None
        self._buffer.clear()
        self._durable.forget_in_flight()
        JOIN_BUFFER_HALVES.set(0)

    def on_batch(self, deliveries: list[Delivery]) -> None:
        now = self._clock()
        pairs = []
        for delivery in deliveries:
            role = self._role_of[delivery.queue]
            message = decode_or_dead_letter(self._session, MESSAGE_TYPES[role], delivery)
            if message is None:
                continue
            if self._announced(message.id):
                delivery.ack()  # a duplicate: its row and its event exist
                continue
            if message.id in self._rows_before_start:
                self._halves_of_old_rows[0].add(message.id)
            pair = self._buffer.add(role, message, delivery, now)
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
            self._unannounced.update(pair.id for pair in pairs)
            self._durable.write(pairs)

    def _announced(self, id: str) -> bool:
        """A row in the log whose event was confirmed: neither this process's work in flight nor among
        the last rows a predecessor wrote and this process has not announced again (only those can
        lack their event: the predecessor's unacked pairs were at most its prefetch)."""
        return id in self._log.written_ids and id not in self._unannounced and id not in self._rows_before_start

    def _wrote(self, rows: list[MetricRow]) -> None:
        ROWS_WRITTEN.inc(len(rows))
        for row in rows:
            self._rows.event("wrote row %s: y_true %s, y_pred %s, absolute error %.2f",
                             row.id, _shown(row.y_true), _shown(row.y_pred), row.absolute_error)

    def _announce(self, pairs: list[ScoredPair[Delivery]]) -> None:
        """Durable rows: each pair's event goes out, and its halves are acked once the event is confirmed."""
        announce_events(self._session, [pair.event() for pair in pairs],
                        [lambda pair=pair: self._announced_pair(pair) for pair in pairs])

    def close(self) -> None:
        self._durable.close()

    def _release_halves_of_old_rows(self) -> None:
        """Halves of rows written before this start that waited a whole tick: their partner was acked
        before the restart. The row's event goes out again (subscribers drop ids they have counted)."""
        waited = self._halves_of_old_rows[1]
        self._halves_of_old_rows = (set(), self._halves_of_old_rows[0])
        events, acks = [], []
        for event_id in waited:
            deliveries = self._buffer.remove(event_id)
            if deliveries:
                row = self._rows_before_start[event_id]
                events.append(MetricAdded(id=row.id, y_true=row.y_true, y_pred=row.y_pred,
                                          absolute_error=row.absolute_error))
                acks.append(lambda deliveries=deliveries: _ack_all(deliveries))
        if events:
            announce_events(self._session, events, acks)

    def _announced_pair(self, pair: ScoredPair[Delivery]) -> None:
        self._unannounced.discard(pair.id)
        self._rows_before_start.pop(pair.id, None)
        _ack_all(pair.deliveries + self._buffer.remove(pair.id))  # with duplicates that came meanwhile
        JOIN_BUFFER_HALVES.set(len(self._buffer))

    def _retry_unwritten(self) -> None:
        self._durable.retry()

    def _expire_halves(self) -> None:
        self._release_halves_of_old_rows()
        for role, half in self._buffer.expire(self._clock()):
            if half.message.id in self._log.written_ids:
                _ack_all(half.deliveries)  # a late duplicate of a pair already written
                continue
            EXPIRED_HALVES.labels(self._queue_of[role]).inc()
            reason = (f"no {partner_of(role)} with id {half.message.id} arrived within "
                      f"{self._buffer.ttl:g}s of traffic ({self._clock() - half.arrived_at:.0f}s in all)")
            for delivery in half.deliveries:
                self._session.dead_letter(delivery, reason)
        JOIN_BUFFER_HALVES.set(len(self._buffer))


class PartitionRouter:
    """With K > 1: takes `y_true` and `y_pred` as producers publish them and republishes each message,
    body and headers unchanged, to its partition's queue; the original is acked once the copy is
    confirmed (a crash in between makes a duplicate, which the joiner drops). A message that does not
    decode is dead-lettered with its reason; an unroutable copy (its partition queue is gone) is an
    error that ends the session, so the originals come back after the reconnect's delay."""

    def __init__(self, partitions: int, prefetch: int):
        self._partitions = partitions
        self._prefetch = prefetch
        self._session: Session | None = None

    def on_connected(self, session: Session) -> None:
        self._session = session
        for queue in (Y_TRUE, Y_PRED):
            session.consume(queue, self.on_batch, self._prefetch)

    def on_disconnected(self) -> None:
        self._session = None

    def on_batch(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            message = decode_or_dead_letter(self._session, MESSAGE_TYPES[delivery.queue], delivery)
            if message is None:
                continue
            target = partition_queue(delivery.queue, partition_of(message.id, self._partitions), self._partitions)
            self._session.publish(METRIC_PARTITIONS_EXCHANGE, target, delivery.body,
                                  on_confirmed=lambda delivery=delivery, target=target: _routed(delivery, target),
                                  headers=delivery.headers or None)


def _routed(delivery: Delivery, target: str) -> None:
    ROUTED.labels(target).inc()
    delivery.ack()


class MetricProcess:
    """One metric process: with K > 1 a router all along, and the active joiner of its partition only
    while it holds the shard's lock (ShardLock). A standby waits for the lock on a thread of its own,
    while connected, and starts consuming the partition's queues as soon as it has it.

    The fence: an active process that loses RabbitMQ keeps the lock while it reconnects, for at most
    `fence_seconds`; then it drops its joiner (the deliveries it held are back in the queues) and
    releases the lock for a standby, and waits for it again once reconnected. Every write checks the
    lock first."""

    def __init__(self, settings: Settings, router: PartitionRouter | None, lock: ShardLock,
                 make_joiner: Callable[[ShardLock], tuple[MetricJoiner, MetricLogWriter]]):
        self._settings = settings
        self._router = router
        self._lock = lock
        self._make_joiner = make_joiner
        self._where = (f"partition {settings.partition} of {settings.partitions}" if settings.partitions > 1
                       else "the unpartitioned metric")
        self._mutex = threading.Lock()  # the IO loop, the lock's thread and the fence's timer share the state below
        self._session: Session | None = None
        self._joiner: MetricJoiner | None = None
        self._writer: MetricLogWriter | None = None
        self._fence: threading.Timer | None = None
        self._waiting = False  # a thread waits for the lock
        self._failed = False  # a standby could not open the shard: the process stops with exit code 1
        self._active = ACTIVE.labels(str(settings.partition))
        self._active.set(0)

    def start(self) -> None:
        """Becomes active at once if the lock is free, opening the shard here so that a broken one stops
        the start; else the wait for the lock starts once connected."""
        if self._lock.acquire(block=False):
            self._activate(first_start=True)

    def on_connected(self, session: Session) -> None:
        with self._mutex:
            self._session = session
            if self._fence is not None:
                self._fence.cancel()
                self._fence = None
            if self._failed:
                session.stop(1)
                return
            joiner = self._joiner
            if joiner is None and not self._waiting:
                self._waiting = True
                threading.Thread(target=self._wait_for_lock, name="shard-lock", daemon=True).start()
        if self._router is not None:
            self._router.on_connected(session)
        if joiner is not None:
            joiner.on_connected(session)

    def on_disconnected(self) -> None:
        if self._router is not None:
            self._router.on_disconnected()
        with self._mutex:
            self._session = None
            if self._joiner is not None:
                self._joiner.on_disconnected()
                self._arm_fence()

    def close(self) -> None:
        with self._mutex:
            if self._fence is not None:
                self._fence.cancel()
            self._drop_joiner()

    def _wait_for_lock(self) -> None:
        try:
            if not self._lock.acquire(block=False):
                log.info("standby for %s: %s is held by another metric; taking over when it is released",
                         self._where, self._lock.path)
                self._lock.acquire()
            self._activate()
        except Exception:
            log.exception("can't take over %s; stopping", self._where)
            self._lock.release()
            with self._mutex:
                self._failed = True
                session = self._session
            if session is not None:
                session.call_threadsafe(lambda: session.stop(1))
        finally:
            with self._mutex:
                self._waiting = False

    def _activate(self, first_start: bool = False) -> None:
        joiner, writer = self._make_joiner(self._lock)  # reads the shard: never on the IO loop
        with self._mutex:
            self._joiner, self._writer = joiner, writer
            session = self._session
            if session is None and not first_start:
                self._arm_fence()  # disconnected since it began to wait: the same bound applies
            self._active.set(1)
            log.info("active for %s: appending to %s, which holds %d rows", self._where, writer.path,
                     len(writer.written_ids))
        if session is not None:
            session.call_threadsafe(lambda: self._start_joiner(session, joiner))

    def _start_joiner(self, session: Session, joiner: MetricJoiner) -> None:
        with self._mutex:
            current = self._session is session and self._joiner is joiner
        if current:
            joiner.on_connected(session)

    def _arm_fence(self) -> None:
        if self._fence is None and self._session is None and self._joiner is not None:
            self._fence = threading.Timer(self._settings.fence_seconds, self._fence_off)
            self._fence.daemon = True
            self._fence.start()

    def _fence_off(self) -> None:
        with self._mutex:
            self._fence = None
            if self._session is not None or self._joiner is None:
                return  # reconnected in time
            self._drop_joiner()
            log.warning("fenced off from %s: no RabbitMQ for %gs; dropped the join buffer and released %s for "
                        "a standby", self._where, self._settings.fence_seconds, self._lock.path)

    def _drop_joiner(self) -> None:
        if self._joiner is not None:
            self._joiner.on_disconnected()
            self._joiner.close()
            self._writer.close()
            self._joiner = self._writer = None
        self._lock.release()
        self._active.set(0)


def _shown(value: float | str) -> str:
    return f"{value:.1f}" if isinstance(value, float) else repr(value)


def announce_events(session: Session, events: list[MetricAdded], on_announced: list[Callable[[], None]]) -> None:
    """Each event to metric_events, and the drift monitor's copy of them all in MetricAddedBatch messages
    to metric_batches (one message per group commit, as the broker's cost is per message);
    `on_announced[i]` runs once both copies of `events[i]` are confirmed."""
    confirmed = [after_all(2, callback) for callback in on_announced]
    encoded = [event.encode() for event in events]
    for body, callback in zip(encoded, confirmed):
        session.publish(METRIC_EVENTS_EXCHANGE, METRIC_ADDED, body, on_confirmed=callback)
    publish_batches(session, METRIC_BATCHES_EXCHANGE, MetricAddedBatch, encoded, confirmed)


def _ack_all(deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        delivery.ack()


def main(argv: list[str] | None = None) -> int:
    settings = start_service("metric", Settings, argv)
    try:
        check_layout(settings.logs_dir, settings.partitions)
    except LayoutMismatch as mismatch:
        log.error("%s", mismatch)
        return 2
    partitions, partition = settings.partitions, settings.partition
    queues = (Y_TRUE, Y_PRED) if partitions == 1 else tuple(
        partition_queue(queue, partition, partitions) for queue in (Y_TRUE, Y_PRED))
    shard = settings.logs_dir / log_name(partition, partitions)

    def make_joiner(lock: ShardLock) -> tuple[MetricJoiner, MetricLogWriter]:
        writer = MetricLogWriter(shard, fsync=settings.fsync)
        return MetricJoiner(settings, writer, queues=queues, check_fence=lock.check), writer

    router = PartitionRouter(partitions, settings.prefetch) if partitions > 1 else None
    process = MetricProcess(settings, router, ShardLock(shard), make_joiner)
    process.start()
    try:
        return run_worker(process, settings.amqp_url, topology=metric_topology(partitions),
                          max_message_bytes=settings.max_message_bytes, tls=settings.amqp_tls,
                          queue_type=settings.queue_type)
    finally:
        process.close()


if __name__ == "__main__":
    sys.exit(main())
