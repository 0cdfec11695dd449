"""Streams samples of the diabetes data: the feature vector to queue `features` and the true
target to queue `y_true`, both under one UUID.

`--rate R` publishes R events a second (0: as fast as the pipeline keeps up); `--count N` stops
after N events whose two messages the broker has both confirmed, then exits 0. Events not yet
confirmed when the connection drops are published again after reconnecting (downstream is
idempotent per id).

Backpressure: features polls the ready messages of `features`, `y_true` and `y_pred` every 0.1 s
and publishes no more new events than keep the deepest of them within `--max-backlog`. A pipeline
slower than the source, or one with a service down, so builds a bounded backlog, not an endless one.

`--confirmed-ids-file PATH` appends `id,y_true` for each event once both its messages are
confirmed, one write and fsync per batch of confirms: the fault-injection suite's record of what
was published. A SIGKILL between a confirm and that fsync can leave a confirmed id out of the file.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from prometheus_client import Gauge
from pydantic import Field
from sklearn.datasets import load_diabetes

from mlmonitor.amqp import Session, run_worker
from mlmonitor.logs import EventLog
from mlmonitor.messages import FeaturesMessage, TargetMessage
from mlmonitor.service import start_service
from mlmonitor.settings import ServiceSettings
from mlmonitor.topology import FEATURES, Y_PRED, Y_TRUE

log = logging.getLogger("features")

BACKLOG_QUEUES = (FEATURES, Y_TRUE, Y_PRED)
BACKLOG_POLL_SECONDS = 0.1
PAUSED = Gauge("mlmonitor_features_paused", "1 while a pipeline queue is at --max-backlog and features waits.")


class Settings(ServiceSettings):
    rate: float = Field(1.0, ge=0, description="Events per second; 0 publishes as fast as the pipeline keeps up.")
    count: int | None = Field(None, ge=1, description="Stop after this many confirmed events (default: endless).")
    max_unconfirmed: int = Field(2000, ge=1, description="Events in flight before waiting for confirms.")
    max_backlog: int = Field(5000, ge=0, description="Most ready messages features lets build up in features, "
                                                     "y_true or y_pred; 0 turns backpressure off.")
    seed: int | None = Field(None, description="Seed for the sample order (default: random).")
    confirmed_ids_file: Path | None = Field(
        None, description="Append 'id,y_true' of each confirmed event to this file, fsynced per batch of confirms.")


@dataclass
class Event:
    features: FeaturesMessage
    target: TargetMessage
    unconfirmed_parts: int = 2


class BacklogBudget:
    """New events that may be published before the next depth poll: `max_backlog` less the deepest
    pipeline queue at the last poll. Counting the events published since that poll keeps the queues
    within `max_backlog` (plus what is in flight) however fast features runs."""

    def __init__(self, max_backlog: int):
        self.max_backlog = max_backlog
        self.remaining: float = 0 if max_backlog else math.inf  # nothing until the first poll
        self.paused_since: float | None = None  # time.monotonic() when a poll found a queue full
        self.paused_by = ("", 0)  # that queue and its depth

    def update(self, deepest: int) -> None:
        self.remaining = max(0, self.max_backlog - deepest)

    def take(self) -> None:
        self.remaining -= 1

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0


class ConfirmedIdsFile:
    """Appends `id,y_true` lines; `flush()` writes the lines added since the last one and fsyncs."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lines: list[str] = []

    def add(self, event: Event) -> bool:
        """Returns True for the first line after a flush, so the caller schedules one flush per batch."""
        self._lines.append(f"{event.features.id},{event.target.body!r}\n")
        return len(self._lines) == 1

    def flush(self) -> None:
        if self._lines:
            view = memoryview("".join(self._lines).encode())
            self._lines.clear()
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)


def sample_events(seed: int | None) -> Iterator[tuple[list[float], float]]:
    """Endless random draws of (feature vector, target) from the diabetes data."""
    data = load_diabetes()
    rng = np.random.default_rng(seed)
    while True:
        for index in rng.permutation(len(data.target)):
            yield data.data[index].tolist(), float(data.target[index])


class FeatureStreamer:
    def __init__(self, settings: Settings, samples: Iterator[tuple[list[float], float]],
                 confirmed_ids: ConfirmedIdsFile | None = None):
        self._settings = settings
        self._confirmed_ids = confirmed_ids
        self._samples = samples
        self._in_flight: dict[str, Event] = {}
        self._created = 0
        self._confirmed = 0
        self._session: Session | None = None
        self._next_due = 0.0
        self._pump_scheduled = False
        self._budget = BacklogBudget(settings.max_backlog)
        self._events = EventLog(log, "events published")
        self._pauses = EventLog(log, "pauses for the backlog")

    @property
    def confirmed(self) -> int:
        return self._confirmed

    def on_connected(self, session: Session) -> None:
        self._session = session
        if self._in_flight:
            log.info("publishing again %d events not confirmed before the reconnect", len(self._in_flight))
            for event in self._in_flight.values():
                event.unconfirmed_parts = 2
                self._publish(event)
        self._next_due = time.monotonic()
        session.every(1.0, self._events.flush)
        session.every(1.0, self._pauses.flush)
        if self._settings.max_backlog:
            session.watch_queue_depths(BACKLOG_QUEUES, BACKLOG_POLL_SECONDS, self._on_queue_depths)
        self._pump()

    def on_disconnected(self) -> None:
        self._flush_confirmed_ids()
        self._session = None
        self._pump_scheduled = False
        self._budget = BacklogBudget(self._settings.max_backlog)  # the next session polls afresh

    def _on_queue_depths(self, depths: dict[str, int]) -> None:
        deepest = max(depths, key=depths.get)
        budget = self._budget
        was_exhausted = budget.exhausted
        budget.update(depths[deepest])
        now = time.monotonic()
        if budget.exhausted and budget.paused_since is None:
            budget.paused_since, budget.paused_by = now, (deepest, depths[deepest])
            PAUSED.set(1)
        elif not budget.exhausted and budget.paused_since is not None:
            self._pauses.event("paused %.1fs: %s held %d ready messages (--max-backlog %d)",
                               now - budget.paused_since, *budget.paused_by, budget.max_backlog)
            budget.paused_since = None
            PAUSED.set(0)
        if was_exhausted and not budget.exhausted:
            self._next_due = max(self._next_due, now)  # what the backlog held back is not made up in a burst
            if not self._pump_scheduled:
                self._pump()

    def _finished_creating(self) -> bool:
        return self._settings.count is not None and self._created >= self._settings.count

    def _pump(self) -> None:
        """Publishes the events that are due, within the window of unconfirmed events."""
        self._pump_scheduled = False
        session = self._session
        if session is None or not session.is_open:
            return
        rate = self._settings.rate
        now = time.monotonic()
        while not self._finished_creating() and len(self._in_flight) < self._settings.max_unconfirmed:
            if (rate and self._next_due > now) or self._budget.exhausted:
                break
            self._budget.take()
            self._publish(self._create_event())
            if rate:
                # stay on schedule, but never burst more than a second's worth after a stall
                self._next_due = max(self._next_due + 1 / rate, now - 1.0)
        if self._finished_creating() or len(self._in_flight) >= self._settings.max_unconfirmed:
            return  # confirms call _pump again
        if self._budget.exhausted:
            return  # the next depth poll calls _pump again
        self._pump_scheduled = True
        session.call_later(max(0.0, self._next_due - time.monotonic()) if rate else 0, self._pump)

    def _create_event(self) -> Event:
        features, target = next(self._samples)
        event_id = str(uuid.uuid4())
        sent_at = time.time()
        self._created += 1
        event = Event(FeaturesMessage(id=event_id, body=features, sent_at=sent_at),
                      TargetMessage(id=event_id, body=target, sent_at=sent_at))
        self._in_flight[event_id] = event
        return event

    def _publish(self, event: Event) -> None:
        session = self._session

        def part_confirmed():
            event.unconfirmed_parts -= 1
            if event.unconfirmed_parts == 0:
                self._on_event_confirmed(event)

        session.publish("", FEATURES, event.features.encode(), on_confirmed=part_confirmed)
        session.publish("", Y_TRUE, event.target.encode(), on_confirmed=part_confirmed)

    def _on_event_confirmed(self, event: Event) -> None:
        if self._in_flight.pop(event.features.id, None) is None:
            return
        self._confirmed += 1
        if self._confirmed_ids is not None and self._confirmed_ids.add(event):
            self._session.call_later(0, self._flush_confirmed_ids)  # after this batch of confirms
        self._events.event("published event %s (y_true %.1f)", event.features.id, event.target.body)
        count = self._settings.count
        if count is not None and self._confirmed >= count:
            log.info("all %d events published and confirmed; exiting", count)
            self._session.stop(0)
        elif not self._pump_scheduled:
            self._pump()

    def _flush_confirmed_ids(self) -> None:
        if self._confirmed_ids is not None:
            self._confirmed_ids.flush()


def main(argv: list[str] | None = None) -> int:
    settings = start_service("features", Settings, argv)
    confirmed_ids = ConfirmedIdsFile(settings.confirmed_ids_file) if settings.confirmed_ids_file else None
    streamer = FeatureStreamer(settings, sample_events(settings.seed), confirmed_ids)
    log.info("streaming %s events at %s to %s and %s",
             settings.count or "endless", f"{settings.rate:g}/s" if settings.rate else "full speed", FEATURES, Y_TRUE)
    exit_code = run_worker(streamer, settings.amqp_url)
    log.info("stopped after %d confirmed events", streamer.confirmed)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
