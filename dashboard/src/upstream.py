"""The pipeline's health as the other services report it on their Prometheus /metrics endpoints:
messages dead-lettered per queue, join halves expired, the join buffer's size, and whether
features is waiting for the backlog to drain.

Counters are per process, so they count since each service last started. A source that does not
answer keeps its last figures and is shown as unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("dashboard.upstream")

DEAD_LETTERED = "mlmonitor_messages_dead_lettered_total"
EXPIRED_HALVES = "mlmonitor_join_expired_halves_total"
JOIN_BUFFER = "mlmonitor_join_buffer_halves"
FEATURES_PAUSED = "mlmonitor_features_paused"
OWN_SOURCE = "dashboard"


def pipeline_counts(texts: Iterable[str]) -> dict:
    """Sums the figures of several Prometheus text expositions."""
    dead_lettered: dict[str, float] = {}
    expired: dict[str, float] = {}
    join_buffer: float | None = None
    paused: float | None = None
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == DEAD_LETTERED:
                    queue = sample.labels.get("queue", "")
                    dead_lettered[queue] = dead_lettered.get(queue, 0) + sample.value
                elif sample.name == EXPIRED_HALVES:
                    queue = sample.labels.get("queue", "")
                    expired[queue] = expired.get(queue, 0) + sample.value
                elif sample.name == JOIN_BUFFER:
                    join_buffer = (join_buffer or 0) + sample.value
                elif sample.name == FEATURES_PAUSED:
                    paused = max(paused or 0, sample.value)
    return {
        "dead_lettered": {queue: int(value) for queue, value in sorted(dead_lettered.items())},
        "dead_lettered_total": int(sum(dead_lettered.values())),
        "expired_halves": {queue: int(value) for queue, value in sorted(expired.items())},
        "expired_halves_total": int(sum(expired.values())),
        "join_buffer_halves": None if join_buffer is None else int(join_buffer),
        "features_paused": None if paused is None else ("yes" if paused else "no"),
    }


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the services are never behind a proxy


def fetch(url: str, timeout: float) -> str:
    with _DIRECT.open(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


@dataclass
class Source:
    url: str
    text: str | None = None
    error: str | None = None
    fetched_at: float | None = None

    def status(self) -> dict:
        return {"url": self.url, "reachable": self.error is None and self.text is not None, "error": self.error,
                "fetched_at": self.fetched_at}


@dataclass
class UpstreamMetrics:
    """Polls the sources every `interval` seconds on a thread of its own; the dashboard's own
    registry counts as one more source (its dead-lettered events)."""

    urls: list[str]
    interval: float = 5.0
    timeout: float = 2.0
    fetcher: Callable[[str, float], str] = fetch
    clock: Callable[[], float] = time.time
    sources: list[Source] = field(init=False)

    def __post_init__(self):
        self.sources = [Source(url) for url in self.urls]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> None:
        for source in self.sources:
            try:
                text, error = self.fetcher(source.url, self.timeout), None
            except Exception as failure:  # unreachable, refused, timed out, bad status: all just "not now"
                text, error = None, f"{type(failure).__name__}: {failure}"
            with self._lock:
                if error is None:
                    source.text, source.fetched_at = text, self.clock()
                source.error = error

    def summary(self) -> dict:
        with self._lock:
            texts = [source.text for source in self.sources if source.text]
            statuses = [source.status() for source in self.sources]
        counts = pipeline_counts([*texts, generate_latest(REGISTRY).decode()])
        return {**counts, "sources": statuses}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("bug while reading the other services' metrics; trying again later")
            self._stop.wait(self.interval)
