"""Streams samples of the diabetes data: the feature vector to queue `features` and the true
target to queue `y_true`, both under one UUID.

`--rate R` publishes R events a second (0: as fast as the broker confirms them); `--count N` stops
after N events whose two messages the broker has both confirmed, then exits 0. Events not yet
confirmed when the connection drops are published again after reconnecting (downstream is
idempotent per id).

`--confirmed-ids-file PATH` appends `id,y_true` for each event once both its messages are
confirmed, one write and fsync per batch of confirms: the fault-injection suite's record of what
was published. A SIGKILL between a confirm and that fsync can leave a confirmed id out of the file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from pydantic import Field
from sklearn.datasets import load_diabetes

from mlmonitor.amqp import Session, run_worker
from mlmonitor.logs import EventLog
from mlmonitor.messages import FeaturesMessage, TargetMessage
from mlmonitor.service import start_service
from mlmonitor.settings import ServiceSettings
from mlmonitor.topology import FEATURES, Y_TRUE

log = logging.getLogger("features")


class Settings(ServiceSettings):
    rate: float = Field(1.0, ge=0, description="Events per second; 0 publishes as fast as the broker confirms.")
    count: int | None = Field(None, ge=1, description="Stop after this many confirmed events (default: endless).")
    max_unconfirmed: int = Field(2000, ge=1, description="Events in flight before waiting for confirms.")
    seed: int | None = Field(None, description="Seed for the sample order (default: random).")
    confirmed_ids_file: Path | None = Field(
        None, description="Append 'id,y_true' of each confirmed event to this file, fsynced per batch of confirms.")


@dataclass
class Event:
    features: FeaturesMessage
    target: TargetMessage
    unconfirmed_parts: int = 2


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
        self._events = EventLog(log, "events published")

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
        self._pump()

    def on_disconnected(self) -> None:
        self._flush_confirmed_ids()
        self._session = None
        self._pump_scheduled = False

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
            if rate and self._next_due > now:
                break
            self._publish(self._create_event())
            if rate:
                # stay on schedule, but never burst more than a second's worth after a stall
                self._next_due = max(self._next_due + 1 / rate, now - 1.0)
        if self._finished_creating() or len(self._in_flight) >= self._settings.max_unconfirmed:
            return  # confirms call _pump again
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
