"""One scenario run: the pipeline on a vhost of its own, the faults a scenario injects, the checks after.

A `ScenarioRun` starts model, metric, plot and features (`--count N --confirmed-ids-file`), lets
the scenario hurt it, restarts what the scenario killed, then waits (bounded) until the pipeline is
quiet and checks every file and queue (see checks.py). Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path

from broker import drain, publish_raw, queue_depth
from brokers import WORK_QUEUES, Broker, socket_inodes
from checks import (check_dead_letters, check_plot, check_rows, count_lines, parse_metric_log, read_confirmed,
                    unexpected_tracebacks)
from run_pipeline import Pipeline
from tcp_proxy import TcpProxy

SERVICES = ("features", "model", "metric", "plot")
CONSUMED_BY = {"model": ("features",), "metric": ("y_true", "y_pred"), "plot": ("metric_added",)}
POLL = 0.05


class Skipped(Exception):
    """The scenario can't be simulated here; the message says why."""


def wait_for(condition, timeout: float, what: str, interval: float = POLL) -> bool:
    """Polls `condition` until true or `timeout` s pass; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def established_to(pid: int, port: int) -> int:
    """How many ESTABLISHED TCP connections process `pid` has to 127.0.0.1:`port`."""
    try:
        inodes = socket_inodes(pid)
    except FileNotFoundError:
        return 0
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


@dataclass
class Fault:
    description: str
    recovery_seconds: float | None = None


@dataclass
class Result:
    scenario: str
    published: int = 0
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered: int = 0
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def recovery_seconds(self) -> float | None:
        times = [fault.recovery_seconds for fault in self.faults if fault.recovery_seconds is not None]
        return max(times) if times else None

    @property
    def valid(self) -> bool:
        return self.skipped is None and not self.problems and self.lost == 0 and self.duplicated == 0


class ScenarioRun:
    def __init__(self, name: str, broker: Broker, workdir: Path, models_dir: Path, events: int, rate: float,
                 rng: random.Random, known_pairs, histogram_factory, url_query: str = "", proxied: bool = False,
                 logs_on_tmpfs: str | None = None, max_backlog: int | None = None):
        self.name = name
        self.max_backlog = max_backlog
        self.broker = broker
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.logs_dir = self.dir / "logs"
        self.logs_dir.mkdir()
        self.csv_path = self.logs_dir / "metric_log.csv"
        self.confirmed_path = self.dir / "confirmed_ids.csv"
        self.events = events
        self.rate = rate
        self.rng = rng
        self._known_pairs = known_pairs
        self._histogram_factory = histogram_factory
        self.result = Result(name)
        self.expected_dead_letters: dict[str, list[bytes]] = {queue: [] for queue in WORK_QUEUES}
        self._mounted = False
        if logs_on_tmpfs:
            self._mount_tmpfs(logs_on_tmpfs)
        try:
            self.vhost = broker.add_vhost()
        except BaseException:
            self._unmount()
            raise
        self.proxies = {service: TcpProxy(broker.port).start() for service in SERVICES} if proxied else {}
        self.pipelines = {}
        for service in SERVICES:
            port = self.proxies[service].port if proxied else None
            env = {"AMQP_URL": broker.url(self.vhost, url_query, port), "LOGS_DIR": str(self.logs_dir),
                   "MODELS_DIR": str(models_dir)}
            self.pipelines[service] = Pipeline(env=env, output_dir=self.dir / "output")
        self._features_exit_codes: list[int] = []

    # --- progress ---------------------------------------------------------------------------

    def queue_depth(self, queue: str) -> int:
        return queue_depth(self.broker.url(self.vhost), queue)

    def rows(self) -> int:
        return max(0, count_lines(self.csv_path) - 1)

    def plotted(self) -> int:
        try:
            return json.loads((self.logs_dir / "error_distribution.json").read_text())["count"]
        except (OSError, ValueError, KeyError):
            return 0

    def confirmed(self) -> int:
        return count_lines(self.confirmed_path)

    def journal(self, text: str) -> None:
        """A timestamped line in faults.log, beside the services' output, to line the two up."""
        with open(self.dir / "faults.log", "a") as handle:
            handle.write(f"{datetime.now():%Y-%m-%d %H:%M:%S,%f}"[:-3] + f" faults {text}\n")

    def output(self, service: str) -> str:
        path = self.dir / "output" / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def at_fraction(self, fraction: float, timeout: float = 120) -> None:
        """Waits until `fraction` of the events have rows: a moment mid-stream."""
        target = int(fraction * self.events)
        if not wait_for(lambda: self.rows() >= target, timeout, f"{target} rows"):
            raise AssertionError(f"{self.name}: no {target} rows after {timeout}s (have {self.rows()})")

    def random_moments(self, count: int, start: float = 0.1, end: float = 0.6) -> list[float]:
        return sorted(self.rng.uniform(start, end) for _ in range(count))

    # --- services ---------------------------------------------------------------------------

    def process(self, service: str) -> subprocess.Popen:
        return self.pipelines[service].processes[service]

    def start(self, service: str) -> None:
        args: list[str] = []
        if service == "features":
            remaining = self.events - self.confirmed()
            if remaining <= 0:
                return
            args = ["--rate", f"{self.rate:g}", "--count", str(remaining),
                    "--confirmed-ids-file", str(self.confirmed_path)]
            if self.max_backlog is not None:
                args += ["--max-backlog", str(self.max_backlog)]
        self.pipelines[service].start(service, args)
        self.journal(f"started {service} {' '.join(args)}")

    def start_all(self) -> None:
        for service in ("model", "metric", "plot", "features"):
            self.start(service)

    def signal(self, services, sig: int) -> None:
        for service in services:
            self.process(service).send_signal(sig)
        self.journal(f"{signal.Signals(sig).name} {' '.join(services)} at {self.rows()} rows")

    def kill(self, *services: str) -> None:
        """SIGKILLs the services at the same moment and waits until they are gone."""
        self.signal(services, signal.SIGKILL)
        for service in services:
            code = self.process(service).wait(30)
            if service == "features":
                self._features_exit_codes.append(code)

    def connected(self, service: str) -> bool:
        """The service's process has its two connections (consume + publish) established."""
        process = self.process(service)
        if service == "features" and self.confirmed() >= self.events:
            return True  # done, or killed after its last confirm: nothing to reconnect
        if process.poll() is not None:
            return False
        port = self.proxies[service].port if self.proxies else self.broker.port
        return established_to(process.pid, port) >= 2

    def features_done(self) -> bool:
        process = self.pipelines["features"].processes.get("features")
        return process is not None and process.poll() == 0 and self.confirmed() >= self.events

    def _stream_done(self) -> bool:
        return self.features_done() and self.rows() >= self.confirmed()

    def recovered(self, description: str, healed_at: float, victims=SERVICES, watch=("rows",),
                  timeout: float = 180) -> Fault:
        """Measures seconds from `healed_at` until every victim is connected again and, after that, the
        pipeline made progress on each watched count: rows, plot (events drawn), confirmed (by features)."""
        fault = Fault(description)
        self.result.faults.append(fault)
        self.journal(f"healed: {description}")
        if self._stream_done():
            self.result.notes.append(f"{description} came after the stream had ended")
        deadline = healed_at + timeout
        if not wait_for(lambda: all(self.connected(service) for service in victims) or self._stream_done(),
                        deadline - time.monotonic(), "reconnect"):
            self.result.problems.append(f"after {description}: {', '.join(victims)} not all connected "
                                        f"within {timeout}s")
            return fault
        counts = {"rows": self.rows, "plot": self.plotted, "confirmed": self.confirmed}
        before = {name: counts[name]() for name in watch}
        done = {"rows": self._stream_done, "confirmed": self.features_done,
                "plot": lambda: self._stream_done() and self.plotted() >= self.rows()}
        pending = set(watch)

        def progressed() -> bool:
            pending.difference_update([name for name in pending if counts[name]() > before[name] or done[name]()])
            return not pending

        if wait_for(progressed, deadline - time.monotonic(), "progress"):
            fault.recovery_seconds = time.monotonic() - healed_at
            self.journal(f"recovered in {fault.recovery_seconds:.1f}s from {description}")
        else:
            self.result.problems.append(f"after {description}: no progress on {', '.join(sorted(pending))} "
                                        f"within {timeout}s")
        return fault

    # --- malformed input ----------------------------------------------------------------------

    def inject_malformed(self, round_number: int) -> None:
        """Publishes a set of malformed messages into every work queue; each must reach its .dlq."""
        tag = f"bad-{round_number}"
        ten = [0.01] * 10
        bodies = {
            "features": [f"not json {tag}-f1", json.dumps({"id": f"{tag}-f2", "body": [0.1, 0.2]}),
                         json.dumps({"id": f"{tag}-f3", "body": "0.1"}), json.dumps({"id": f"{tag}-f4"}),
                         json.dumps({"id": None, "body": ten, "tag": f"{tag}-f5"}),
                         '{"id": "%s-f6", "body": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}' % tag],
            "y_true": [f"{{truncated {tag}-t1", json.dumps({"id": f"{tag}-t2", "body": "151"}),
                       json.dumps({"id": f"{tag}-t3", "body": None}), '{"id": "%s-t4", "body": Infinity}' % tag,
                       json.dumps({"id": True, "body": 1.0, "tag": f"{tag}-t5"}), json.dumps([f"{tag}-t6"])],
            "y_pred": [f"\xff\xfe {tag}-p1", json.dumps({"id": f"{tag}-p2", "body": [1.0]}),
                       '{"id": "%s-p3", "body": NaN}' % tag, json.dumps({"body": 1.0, "tag": f"{tag}-p4"}),
                       json.dumps({"id": "", "body": 1.0, "tag": f"{tag}-p5"})],
            "metric_added": [f"<xml>{tag}-m1</xml>",
                             json.dumps({"id": f"{tag}-m2", "y_true": 1.0, "y_pred": 2.0}),
                             json.dumps({"id": f"{tag}-m3", "y_true": 1.0, "y_pred": "2", "absolute_error": 1.0}),
                             json.dumps({"id": f"{tag}-m4", "y_true": 1.0, "y_pred": 2.0, "absolute_error": -1.0})],
        }
        url = self.broker.url(self.vhost)
        self.journal(f"injecting malformed messages {tag}-* at {self.rows()} rows")
        for queue, messages in bodies.items():
            encoded = [message.encode("utf-8", errors="surrogateescape") for message in messages]
            publish_raw(url, queue, encoded)
            self.expected_dead_letters[queue].extend(encoded)

    # --- disk -------------------------------------------------------------------------------

    def _mount_tmpfs(self, size: str) -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "faults-logs",
                               str(self.logs_dir)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Skipped(f"can't mount a tmpfs for logs/ here: {done.stderr.strip() or done.returncode}")
        self._mounted = True

    def fill_disk(self) -> Path:
        """Fills the logs/ tmpfs to the last byte with a filler file and returns it."""
        filler = self.logs_dir / ".filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                block = b"\0" * chunk
                for _ in range(100_000):
                    try:
                        if os.write(fd, block) < chunk:
                            break
                    except OSError:
                        break
        finally:
            os.close(fd)
        return filler

    # --- the end ----------------------------------------------------------------------------

    def finish(self) -> Result:
        """Waits (bounded) for the stream to end and the pipeline to go quiet, stops it, checks everything."""
        result = self.result
        if self.pipelines["features"].processes.get("features") is None:
            self.start("features")
        features = self.process("features")
        try:
            code = features.wait(max(120.0, 4 * self.events / max(self.rate, 1)))
            self._features_exit_codes.append(code)
            if code != 0:
                result.problems.append(f"features exited with {code}")
        except subprocess.TimeoutExpired:
            result.problems.append(f"features still running; {self.confirmed()} of {self.events} confirmed")
        confirmed = read_confirmed(self.confirmed_path)
        if not wait_for(lambda: set(confirmed) <= {row.id for row in parse_metric_log(self.csv_path)[0]}, 120,
                        "every confirmed id in the CSV", interval=0.5):
            result.notes.append("not every confirmed id had a row after 120s")
        work = set(WORK_QUEUES)
        drained = wait_for(lambda: not any(count for queue, count in self.broker.messages(self.vhost).items()
                                           if queue in work), 60, "work queues drained", interval=0.5)
        if not wait_for(lambda: self.plotted() >= self.rows(), 60, "plot to draw every row", interval=0.2):
            result.problems.append(f"plot drew {self.plotted()} of {self.rows()} rows after 60s")
        for service in ("model", "metric", "plot"):
            if self.process(service).poll() is not None:
                result.problems.append(f"{service} died with {self.process(service).returncode}")
            elif not wait_for(lambda: self.connected(service), 60, f"{service} connected"):
                result.problems.append(f"{service} not connected at the end")  # so SIGTERM finds it started
        for service in ("model", "metric", "plot"):
            code = self._terminate(service)
            if code != 0:
                result.problems.append(f"{service} exited with {code} on SIGTERM")
        if not drained:
            self._explain_leftovers(confirmed)
        self._check(confirmed)
        return result

    def _explain_leftovers(self, confirmed: dict[str, float]) -> None:
        """Messages still held after 60 s (now back in their queues): metric keeps a half whose partner
        never comes until the join TTL (60 s of partner traffic, 600 s without traffic). That is
        expected only of a half of an event features never got confirmed; a half of a written row
        is acked at once or a tick later, so anything else is a problem."""
        features_killed = any(code == -signal.SIGKILL for code in self._features_exit_codes)
        url = self.broker.url(self.vhost)
        for queue in WORK_QUEUES:
            for body, _ in drain(url, queue):
                try:
                    event_id = str(json.loads(body)["id"])
                except (ValueError, KeyError, TypeError):
                    event_id = None
                if queue in ("y_true", "y_pred") and event_id not in confirmed and features_killed:
                    self.result.notes.append(f"{queue} {event_id}: half of an event features never got confirmed "
                                             "(SIGKILLed between its two publishes), held for the join TTL")
                else:
                    self.result.problems.append(f"{queue} still held {body[:100]!r} after 60s")

    def _terminate(self, service: str) -> int | None:
        process = self.process(service)
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                return process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)
                return None
        return process.returncode

    def _check(self, confirmed: dict[str, float]) -> None:
        result = self.result
        rows, malformed_lines = parse_metric_log(self.csv_path)
        verdict = check_rows(rows, malformed_lines, confirmed, self._known_pairs)
        result.published, result.rows = verdict.published, verdict.rows
        result.lost, result.duplicated = len(verdict.lost), len(verdict.duplicated)
        result.problems += [f"lost {event_id}" for event_id in verdict.lost[:5]]
        result.problems += [f"duplicated {event_id}" for event_id in verdict.duplicated[:5]]
        result.problems += [f"wrong row {problem}" for problem in verdict.wrong[:5]]
        result.problems += malformed_lines[:5]
        if verdict.unrecorded:
            if any(code == -signal.SIGKILL for code in self._features_exit_codes):
                result.notes.append(f"{len(verdict.unrecorded)} rows for events features sent but was SIGKILLed "
                                    "before recording their confirm")
            else:
                result.problems.append(f"{len(verdict.unrecorded)} rows for ids features never confirmed, "
                                       f"e.g. {verdict.unrecorded[0]}")
        result.problems += check_plot(self.logs_dir, rows, self._histogram_factory)
        url = self.broker.url(self.vhost)
        found = {queue: drain(url, f"{queue}.dlq") for queue in WORK_QUEUES}
        result.dead_lettered, dlq_problems = check_dead_letters(found, self.expected_dead_letters)
        result.problems += dlq_problems[:10]
        for service in SERVICES:
            for ending in unexpected_tracebacks(self.output(service))[:3]:
                result.problems.append(f"{service} logged a traceback: {ending}")

    def close(self) -> None:
        for pipeline in self.pipelines.values():
            for process in pipeline.processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
            pipeline.stop_all(grace_seconds=5)
        for proxy in self.proxies.values():
            proxy.close()
        try:
            self.broker.delete_vhost(self.vhost)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            self.result.notes.append(f"could not delete vhost {self.vhost}: {error}")
        self._unmount()

    def _unmount(self) -> None:
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.logs_dir)], capture_output=True)
            self._mounted = False
