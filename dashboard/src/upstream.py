"""The pipeline's health as the other services report it on their Prometheus /metrics endpoints:
messages dead-lettered per queue, join halves expired, the join buffer's size, and whether
features is waiting for the backlog to drain.

Counters are per process, so they count since each service last started. A source whose host name
resolves to several addresses (a compose service run as replicas: Docker's DNS answers with one
address per replica) is read at each of them and their figures add up. A source, or one of its
addresses, that does not answer keeps its last figures and is shown as unreachable; an address the
name no longer resolves to (a replica scaled away) is forgotten.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlsplit

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


def instances(url: str, resolve: Callable = socket.getaddrinfo) -> list[str]:
    """`url` once per IPv4 address its host name resolves to, when there are several; else `url` as it
    is (an IP literal, localhost, a name with one address or none: fetching it then says why)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host or host == "localhost" or _is_ip_literal(host):
        return [url]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = sorted({info[4][0] for info in resolve(host, port, socket.AF_INET, socket.SOCK_STREAM)})
    except OSError:
        return [url]
    if len(addresses) < 2:
        return [url]
    credentials = parts.netloc.rpartition("@")[0]
    prefix = f"{credentials}@" if credentials else ""
    return [parts._replace(netloc=f"{prefix}{address}:{port}").geturl() for address in addresses]


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class Source:
    url: str
    texts: dict[str, str] = field(default_factory=dict)  # the last exposition read at each address
    instances: int = 1
    error: str | None = None
    fetched_at: float | None = None

    def status(self) -> dict:
        return {"url": self.url, "reachable": self.error is None and bool(self.texts), "error": self.error,
                "instances": self.instances, "fetched_at": self.fetched_at}


@dataclass
class UpstreamMetrics:
    """Polls the sources every `interval` seconds on a thread of its own; the dashboard's own
    registry counts as one more source (its dead-lettered events)."""

    urls: list[str]
    interval: float = 5.0
    timeout: float = 2.0
    fetcher: Callable[[str, float], str] = fetch
    clock: Callable[[], float] = time.time
    resolve: Callable = socket.getaddrinfo
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
            targets = instances(source.url, self.resolve)
            read, errors = {}, []
            for target in targets:
                try:
                    read[target] = self.fetcher(target, self.timeout)
                except Exception as failure:  # unreachable, refused, timed out, bad status: all just "not now"
                    where = f"{target}: " if len(targets) > 1 else ""
                    errors.append(f"{where}{type(failure).__name__}: {failure}")
            with self._lock:
                source.texts = {target: read.get(target, source.texts.get(target)) for target in targets
                                if target in read or target in source.texts}
                source.instances = len(targets)
                source.error = "; ".join(errors) or None
                if read:
                    source.fetched_at = self.clock()

    def summary(self) -> dict:
        with self._lock:
            texts = [text for source in self.sources for text in source.texts.values()]
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
