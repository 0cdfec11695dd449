"""What the benchmark watches while a run goes on, each in a thread of its own, all bounded by `stop()`.

- `Probe`: a bench-only, exclusive, non-durable queue bound to `metric_events`; it learns each id's
  `sent_at` (the time features created the event) without adding a column to the CSV.
- `CsvTail`: polls `metric_log.csv` (or every partition's shard) and notes when each row appears on disk.
- `SummaryTail`: polls `error_distribution.json` (written right after the PNG is replaced) and notes
  its mtime for each count; row k (in CSV order) is in the PNG from the first summary counting >= k.
- `DriftTail`: polls drift's `drift_ids.log` (one line per id counted, appended once a snapshot holds
  it) and notes how many predictions and outcomes drift had counted, durably, at each moment.
- `Sampler`: ready-message depth of each queue (passive declare), RSS of each service and CPU time
  of each service and of the broker (/proc), so per-event CPU can be compared on a busy machine.
AMQP_URL may list a cluster's nodes, as the services take it: each connects to the first that answers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pika
from mlmonitor.tls import connection_candidates

POLL_SECONDS = 0.002
SAMPLE_SECONDS = 0.25


class _Loop(threading.Thread):
    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as error:  # reported by the bench, never silently lost
            self.error = error

    def loop(self) -> None:
        raise NotImplementedError


class Probe(_Loop):
    def __init__(self, amqp_url: str, exchange: str = "metric_events"):
        super().__init__("probe")
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.sent_at: dict[str, float] = {}
        self.ready = threading.Event()

    def loop(self) -> None:
        connection = pika.BlockingConnection(connection_candidates(self.amqp_url))
        try:
            channel = connection.channel()
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, self.exchange)
            channel.basic_qos(prefetch_count=2000)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
            self.ready.set()
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=0.1)
        finally:
            if connection.is_open:
                connection.close()

    def _on_message(self, _channel, _method, _properties, body: bytes) -> None:
        event = json.loads(body)
        self.sent_at.setdefault(str(event["id"]), event.get("sent_at"))


class NewLines:
    """The whole lines appended to a file since the last read: None when nothing was appended (or
    the file doesn't exist yet), else the lines completed, maybe none."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._pending = b""

    def read(self) -> list[bytes] | None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return None
        if not data:
            return None
        self._offset += len(data)
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return lines


class CsvTail(_Loop):
    """Rows of one log, or of every partition's shard together, in the order the polls saw them."""

    def __init__(self, paths: Path | list[Path]):
        super().__init__("csv-tail")
        self.paths = [paths] if isinstance(paths, Path) else list(paths)
        self.ids: list[str] = []
        self.seen_at: list[float] = []

    def loop(self) -> None:
        tails = [NewLines(path) for path in self.paths]
        header_skipped = [False] * len(tails)
        while not self._stopping.is_set():
            read_any = False
            for index, tail in enumerate(tails):
                lines = tail.read()
                if lines is None:
                    continue
                read_any = True
                now = time.time()
                if not header_skipped[index] and lines:
                    lines.pop(0)
                    header_skipped[index] = True
                for line in lines:
                    self.ids.append(line.split(b",", 1)[0].decode())
                    self.seen_at.append(now)
            if not read_any:
                time.sleep(POLL_SECONDS)

    @property
    def rows(self) -> int:
        return len(self.ids)


class SummaryTail(_Loop):
    def __init__(self, path: Path):
        super().__init__("summary-tail")
        self.path = path
        self.counts: list[int] = []
        self.written_at: list[float] = []

    def loop(self) -> None:
        last_mtime = None
        while not self._stopping.is_set():
            time.sleep(POLL_SECONDS)
            try:
                mtime = os.stat(self.path).st_mtime_ns
                if mtime == last_mtime:
                    continue
                count = json.loads(self.path.read_bytes())["count"]
            except (FileNotFoundError, ValueError, KeyError):
                continue  # replaced between stat and read: the next poll sees it
            last_mtime = mtime
            if not self.counts or count > self.counts[-1]:
                self.counts.append(count)
                self.written_at.append(mtime / 1e9)

    @property
    def count(self) -> int:
        return self.counts[-1] if self.counts else 0


class DriftTail(_Loop):
    def __init__(self, path: Path, interval: float = 0.05):
        super().__init__("drift-tail")
        self.path = path
        self.interval = interval
        self.predictions = 0
        self.outcomes = 0
        self.counted: list[tuple[float, int, int]] = []  # (time, predictions, outcomes) at each change

    def loop(self) -> None:
        tail = NewLines(self.path)
        while not self._stopping.is_set():
            lines = tail.read()
            if lines is not None:
                self.predictions += sum(line.startswith(b"p ") for line in lines)
                self.outcomes += sum(line.startswith(b"o ") for line in lines)
                self.counted.append((time.time(), self.predictions, self.outcomes))
            self._stopping.wait(self.interval)

    def caught_up(self, events: int) -> bool:
        return self.predictions >= events and self.outcomes >= events


class Sampler(_Loop):
    def __init__(self, amqp_url: str, queues: list[str], pids: dict[str, int], cpu_only: dict[str, int] = None):
        super().__init__("sampler")
        self.amqp_url = amqp_url
        self.queues = queues
        self.pids = dict(pids)
        self.cpu_pids = {**self.pids, **(cpu_only or {})}
        self.depths: list[tuple[float, dict[str, int]]] = []
        self.rss_mb: list[tuple[float, dict[str, float]]] = []
        self.peak_rss_mb: dict[str, float] = {}
        self.cpu_start = {name: cpu_seconds(pid) for name, pid in self.cpu_pids.items()}
        self.cpu_end: dict[str, float] = {}

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds (user + system) each process used between the sampler's start and last sample."""
        return {name: self.cpu_end[name] - self.cpu_start[name] for name in self.cpu_end
                if self.cpu_start.get(name) is not None and self.cpu_end[name] is not None}

    def loop(self) -> None:
        connection = pika.BlockingConnection(connection_candidates(self.amqp_url))
        try:
            channel = connection.channel()
            while not self._stopping.is_set():
                now = time.time()
                depths = {queue: channel.queue_declare(queue, passive=True).method.message_count
                          for queue in self.queues}
                self.depths.append((now, depths))
                self.rss_mb.append((now, self.sample_rss()))
                self._stopping.wait(SAMPLE_SECONDS)
        finally:
            if connection.is_open:
                connection.close()

    def sample_rss(self) -> dict[str, float]:
        """Current RSS per service; also keeps the peak (VmHWM), read while the process lives."""
        for name, pid in self.cpu_pids.items():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu_end[name] = cpu
        current = {}
        for name, pid in self.pids.items():
            status = _proc_status(pid)
            if status is None:
                continue
            current[name] = status["VmRSS"]
            self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), status["VmHWM"])
        return current


def _proc_status(pid: int) -> dict[str, float] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values if len(values) == 2 else None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
