"""One scenario run: the pipeline on a vhost of its own, the faults a scenario injects, the checks after.

A `ScenarioRun` starts model, metric, plot and drift, waits until drift has declared its queues
(as `make run` does, so drift sees every event), then features (`--count N --confirmed-ids-file`);
it lets the scenario hurt it, restarts what the scenario killed, then waits (bounded) until the
pipeline is quiet and drift has caught up, and checks every file and queue (see checks.py). Every
wait polls a condition with a deadline.
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

import pika

from broker import connect, drain, publish_raw, queue_depth, queue_exists
from brokers import DRIFT_QUEUES, WORK_QUEUES, Broker, socket_inodes
from checks import (ALERTS, DRIFT_IDS, DRIFT_STATE, check_alerts, check_dead_letters, check_drift_counts, check_plot,
                    check_rows, count_lines, parse_metric_log, read_confirmed, read_drift_counts,
                    unexpected_tracebacks)
from mlmonitor.topology import DRIFT, RECENT_ALERTS, declare
from mlmonitor.metric_log import metric_log_shards
from mlmonitor.partitions import partition_of
from mlmonitor.topology import partition_queue
from run_pipeline import Pipeline, metric_processes, model_replicas
from tcp_proxy import TcpProxy

SERVICES = ("features", "model", "metric", "plot", "drift")
CONSUMERS = ("model", "metric", "plot", "drift")
POLL = 0.05
# drift runs at nice 10 and trails the pipeline under load: its wait at the end lasts while it makes
# progress, and fails only after this long without any (or after DRIFT_CATCH_UP_MAX in all)
DRIFT_STALL_SECONDS = 60
DRIFT_CATCH_UP_MAX = 300


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
    drift_missed: int = 0  # a row's id drift did not count, per stream
    drift_twice: int = 0  # an id drift counted more than once on a stream
    alerts: int = 0  # lines in alerts.jsonl: every one is spurious on the suite's stationary stream
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
        return (self.skipped is None and not self.problems and self.lost == self.duplicated == 0
                and self.drift_missed == self.drift_twice == self.alerts == 0)


class ScenarioRun:
    def __init__(self, name: str, broker: Broker, workdir: Path, models_dir: Path, events: int, rate: float,
                 rng: random.Random, known_pairs, histogram_factory, url_query: str = "", proxied: bool = False,
                 logs_on_tmpfs: str | None = None, max_backlog: int | None = None, replicas: int = 1,
                 queue_type: str | None = None, metric_partitions: int = 1, metric_standby: bool = False):
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
        self.expected_dead_letters: dict[str, list[bytes]] = {queue: [] for queue in WORK_QUEUES + DRIFT_QUEUES}
        self.expected_reasons: dict[bytes, str] = {}  # body -> how its rejection reason begins
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
                   "MODELS_DIR": str(models_dir), **({"QUEUE_TYPE": queue_type} if queue_type else {})}
            self.pipelines[service] = Pipeline(env=env, output_dir=self.dir / "output")
        # model processes sharing `features`, as run_pipeline --model-replicas starts them: model, model-2, ...
        self.model_processes = [name for name, _ in model_replicas(replicas)]
        self._replica_env = {name: {"LOG_NAME": env["LOG_NAME"]} for name, env in model_replicas(replicas)
                             if "LOG_NAME" in env}
        for replica in self._replica_env:
            self.pipelines[replica] = Pipeline(env=self.pipelines["model"].env, output_dir=self.dir / "output")
        # metric processes, as run_pipeline --partitions K [--standby] starts them: metric-0, metric-0-standby, ...
        # (no /metrics port: other runs on this machine may hold run_pipeline's)
        self.metric_partitions = metric_partitions
        self.metric_processes = [name for name, _ in metric_processes(metric_partitions, metric_standby)]
        self._metric_env = {name: {key: value for key, value in env.items() if key != "METRICS_PORT"}
                            for name, env in metric_processes(metric_partitions, metric_standby) if env}
        for name in self._metric_env:
            self.pipelines[name] = Pipeline(env=self.pipelines["metric"].env, output_dir=self.dir / "output")
        metrics = tuple(self._metric_env) or ("metric",)
        self.consumers = tuple(c for c in CONSUMERS if c != "metric") + metrics + tuple(self._replica_env)
        self.services = ("features",) + self.consumers
        self.work_queues = WORK_QUEUES + tuple(
            partition_queue(queue, partition, metric_partitions) for queue in ("y_true", "y_pred")
            for partition in range(metric_partitions) if metric_partitions > 1)
        self._features_exit_codes: list[int] = []

    # --- progress ---------------------------------------------------------------------------

    def queue_depth(self, queue: str) -> int:
        return queue_depth(self.broker.url(self.vhost), queue)

    def shards(self) -> list[Path]:
        """metric_log.csv, or each partition's metric_log-I.csv"""
        return metric_log_shards(self.logs_dir)

    def rows(self, shard: Path | None = None) -> int:
        return sum(max(0, count_lines(path) - 1) for path in ([shard] if shard else self.shards()))

    def parse_rows(self) -> tuple[list, list[str]]:
        """The rows of every shard, and every line that is not a row (named by its shard when partitioned)."""
        rows, bad = [], []
        for path in self.shards():
            shard_rows, shard_bad = parse_metric_log(path)
            rows += shard_rows
            bad += [f"{path.name} {line}" for line in shard_bad] if self.metric_partitions > 1 else shard_bad
        return rows, bad

    def plotted(self) -> int:
        try:
            return json.loads((self.logs_dir / "error_distribution.json").read_text())["count"]
        except (OSError, ValueError, KeyError):
            return 0

    def confirmed(self) -> int:
        return count_lines(self.confirmed_path)

    def drift_counted(self) -> int:
        """Ids drift has counted, on both streams, as far as its ids log shows (progress, not the check)."""
        return count_lines(self.logs_dir / DRIFT_IDS)

    def drift_snapshot(self) -> tuple[int, int, int] | None:
        """drift_state.json's (inode, mtime, size): a new snapshot replaces the file."""
        try:
            stat = os.stat(self.logs_dir / DRIFT_STATE)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def drift_queues(self) -> int:
        """Messages (ready and unacked) in drift's queues."""
        return sum(count for queue, count in self.broker.messages(self.vhost).items() if queue in DRIFT_QUEUES)

    def drift_queues_declared(self) -> bool:
        return queue_exists(self.broker.url(self.vhost), *DRIFT_QUEUES)

    def declare_drift_queues(self) -> None:
        """drift's part of the topology, as an earlier run of drift leaves it (durable)."""
        connection = connect(self.broker.url(self.vhost))
        try:
            declare(connection.channel(), DRIFT)
        finally:
            connection.close()

    def journal(self, text: str) -> None:
        """A timestamped line in faults.log, beside the services' output, to line the two up."""
        with open(self.dir / "faults.log", "a") as handle:
            handle.write(f"{datetime.now():%Y-%m-%d %H:%M:%S,%f}"[:-3] + f" faults {text}\n")

    def output(self, service: str) -> str:
        """A process's output so far (every pipeline of the run writes into the same folder)."""
        return self.pipelines.get(service, self.pipelines["features"]).output(service)

    def at_fraction(self, fraction: float, timeout: float = 120) -> None:
        """Waits until `fraction` of the events have rows: a moment mid-stream."""
        target = int(fraction * self.events)
        if not wait_for(lambda: self.rows() >= target, timeout, f"{target} rows"):
            raise AssertionError(f"{self.name}: no {target} rows after {timeout}s (have {self.rows()})")

    def random_moments(self, count: int, start: float = 0.1, end: float = 0.6) -> list[float]:
        return sorted(self.rng.uniform(start, end) for _ in range(count))

    # --- services ---------------------------------------------------------------------------

    def process(self, service: str) -> subprocess.Popen:
        return self.pipelines[service].processes[service]  # a model replica is named for itself, e.g. model-2

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
        if service in self._replica_env:
            self.pipelines[service].start("model", args, env=self._replica_env[service], name=service)
        elif service in self._metric_env:
            self.pipelines[service].start("metric", args, env=self._metric_env[service], name=service)
        else:
            self.pipelines[service].start(service, args)
        self.journal(f"started {service} {' '.join(args)}")

    def start_all(self, wait_for_drift: bool = True) -> None:
        """Starts every service; features once drift has declared its queues (they are drift's alone),
        unless `wait_for_drift` is False (the broker is down: the scenario declared them before)."""
        for service in self.consumers:
            self.start(service)
        def declared_or_dead() -> bool:
            return self.drift_queues_declared() or self.process("drift").poll() is not None

        if wait_for_drift and not wait_for(declared_or_dead, 60, "drift's queues", interval=0.2):
            self.result.problems.append("drift did not declare its queues within 60s")
        self.start("features")

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
        ports = [self.proxies[service].port] if self.proxies else self.broker.ports
        return sum(established_to(process.pid, port) for port in ports) >= 2

    def active_metric(self, partition: int) -> str | None:
        """The metric process of `partition` that holds its shard's lock (/proc/locks; a waiter's line starts
        with "->"), or None while none does."""
        try:
            inode = os.stat(self.logs_dir / f"metric_log-{partition}.csv.lock").st_ino
        except FileNotFoundError:
            return None
        holders = {int(fields[4]) for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines())
                   if len(fields) > 5 and fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode}
        return next((name for name in self._metric_env if self._metric_env[name]["METRIC_PARTITION"] == str(partition)
                     and self.process(name).poll() is None and self.process(name).pid in holders), None)

    def features_done(self) -> bool:
        process = self.pipelines["features"].processes.get("features")
        return process is not None and process.poll() == 0 and self.confirmed() >= self.events

    def stream_done(self) -> bool:
        return self.features_done() and self.rows() >= self.confirmed()

    def recovered(self, description: str, healed_at: float, victims=SERVICES, watch=("rows",),
                  timeout: float = 180) -> Fault:
        """Measures seconds from `healed_at` until every victim is connected again and, after that, the
        pipeline made progress on each watched count: rows, plot (events drawn), confirmed (by features)."""
        fault = Fault(description)
        self.result.faults.append(fault)
        self.journal(f"healed: {description}")
        if self.stream_done():
            self.result.notes.append(f"{description} came after the stream had ended")
        deadline = healed_at + timeout
        if not wait_for(lambda: all(self.connected(service) for service in victims) or self.stream_done(),
                        deadline - time.monotonic(), "reconnect"):
            self.result.problems.append(f"after {description}: {', '.join(victims)} not all connected "
                                        f"within {timeout}s")
            return fault
        counts = {"rows": self.rows, "plot": self.plotted, "confirmed": self.confirmed, "drift": self.drift_counted}
        before = {name: counts[name]() for name in watch}
        done = {"rows": self.stream_done, "confirmed": self.features_done,
                "plot": lambda: self.stream_done() and self.plotted() >= self.rows(),
                "drift": lambda: self.stream_done() and self.drift_counted() >= 2 * self.rows()}
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
        """Publishes a set of malformed messages into every work queue; each must reach its .dlq. A string
        is a class label since classifiers are watched too, so an empty one stands for a wrong type."""
        tag = f"bad-{round_number}"
        ten = [0.01] * 10
        bodies = {
            "features": [f"not json {tag}-f1", json.dumps({"id": f"{tag}-f2", "body": [0.1, 0.2]}),
                         json.dumps({"id": f"{tag}-f3", "body": "0.1"}), json.dumps({"id": f"{tag}-f4"}),
                         json.dumps({"id": None, "body": ten, "tag": f"{tag}-f5"}),
                         '{"id": "%s-f6", "body": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}' % tag],
            "y_true": [f"{{truncated {tag}-t1", json.dumps({"id": f"{tag}-t2", "body": ""}),
                       json.dumps({"id": f"{tag}-t3", "body": None}), '{"id": "%s-t4", "body": Infinity}' % tag,
                       json.dumps({"id": True, "body": 1.0, "tag": f"{tag}-t5"}), json.dumps([f"{tag}-t6"])],
            "y_pred": [f"\xff\xfe {tag}-p1", json.dumps({"id": f"{tag}-p2", "body": [1.0]}),
                       '{"id": "%s-p3", "body": NaN}' % tag, json.dumps({"body": 1.0, "tag": f"{tag}-p4"}),
                       json.dumps({"id": "", "body": 1.0, "tag": f"{tag}-p5"})],
            "metric_added": [f"<xml>{tag}-m1</xml>",
                             json.dumps({"id": f"{tag}-m2", "y_true": 1.0, "y_pred": 2.0}),
                             json.dumps({"id": f"{tag}-m3", "y_true": 1.0, "y_pred": "", "absolute_error": 1.0}),
                             json.dumps({"id": f"{tag}-m4", "y_true": 1.0, "y_pred": 2.0, "absolute_error": -1.0})],
        }
        # drift's queues, with the field each reason must name first
        drift_bodies = {
            "predictions.drift": [
                (f"not json {tag}-d1", "message:"),
                (json.dumps({"id": f"{tag}-d2", "body": 150.0, "features": [0.1, 0.2]}), "features:"),
                (json.dumps({"id": f"{tag}-d3", "body": "a label", "features": ten}), "body:"),
                (json.dumps({"id": f"{tag}-d4", "body": 150.0, "features": ten[:9] + ["text"]}), "features.9"),
                ('{"id": "%s-d5", "body": 150.0, "features": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}' % tag,
                 "features.0"),
                (json.dumps({"body": 150.0, "features": ten, "tag": f"{tag}-d6"}), "id:"),
                (json.dumps({"id": f"{tag}-d7", "features": ten}), "body:")],
            "metric_batches.drift": [
                (f"\xff\xfe {tag}-e1", "message:"),
                (json.dumps({"events": [{"id": f"{tag}-e2", "y_true": 151.0, "y_pred": 140.0}]}),
                 "events.0.absolute_error:"),
                (json.dumps({"events": [{"id": f"{tag}-e3", "y_true": "a label", "y_pred": 140.0,
                                         "absolute_error": 1.0}]}), "events.0 (id "),
                (json.dumps({"events": [{"id": f"{tag}-e4", "y_true": 151.0, "y_pred": 140.0,
                                         "absolute_error": -11.0}]}), "events.0.absolute_error:"),
                ('{"events": [{"id": "%s-e5", "y_true": Infinity, "y_pred": 140.0, "absolute_error": 1.0}]}' % tag,
                 "events.0.y_true:"),
                (json.dumps({"events": [{"id": None, "y_true": 151.0, "y_pred": 140.0, "absolute_error": 11.0}],
                             "tag": f"{tag}-e6"}), "events.0.id:"),
                (json.dumps({"events": [], "tag": f"{tag}-e7"}), "events:")],
            "prediction_batches.drift": [
                (f"not json {tag}-b1", "message:"),
                (json.dumps({"predictions": [{"id": f"{tag}-b2", "body": 150.0, "features": [0.1, 0.2]}]}),
                 "predictions.0 (id "),
                (json.dumps({"predictions": {"id": f"{tag}-b3"}}), "predictions:")],
        }
        url = self.broker.url(self.vhost)
        self.journal(f"injecting malformed messages {tag}-* at {self.rows()} rows")
        for queue, messages in bodies.items():
            encoded = [message.encode("utf-8", errors="surrogateescape") for message in messages]
            publish_raw(url, queue, encoded)
            self.expected_dead_letters[queue].extend(encoded)
        for queue, messages in drift_bodies.items():
            encoded = [(message.encode("utf-8", errors="surrogateescape"), reason) for message, reason in messages]
            publish_raw(url, queue, [body for body, _ in encoded])
            self.expected_dead_letters[queue].extend(body for body, _ in encoded)
            self.expected_reasons.update(encoded)

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
        if not wait_for(lambda: set(confirmed) <= {row.id for row in self.parse_rows()[0]}, 120,
                        "every confirmed id in the CSV", interval=0.5):
            result.notes.append("not every confirmed id had a row after 120s")
        work = set(self.work_queues)
        drained = wait_for(lambda: not any(count for queue, count in self.broker.messages(self.vhost).items()
                                           if queue in work), 60, "work queues drained", interval=0.5)
        if not wait_for(lambda: self.plotted() >= self.rows(), 60, "plot to draw every row", interval=0.2):
            result.problems.append(f"plot drew {self.plotted()} of {self.rows()} rows after 60s")
        drift_caught_up = self._wait_for_drift()
        for service in self.consumers:
            if self.process(service).poll() is not None:
                result.problems.append(f"{service} died with {self.process(service).returncode}")
            elif not wait_for(lambda: self.connected(service), 60, f"{service} connected"):
                result.problems.append(f"{service} not connected at the end")  # so SIGTERM finds it started
        for service in self.consumers:
            code = self._terminate(service)
            if code != 0:
                result.problems.append(f"{service} exited with {code} on SIGTERM")
        if not drained:
            self._explain_leftovers(confirmed)
        if not drift_caught_up:
            for queue in DRIFT_QUEUES:
                held = drain(self.broker.url(self.vhost), queue)
                if held:
                    result.problems.append(f"{queue} still held {len(held)} messages, e.g. {held[0][0][:100]!r}")
        self._check(confirmed)
        return result

    def _wait_for_drift(self) -> bool:
        """Waits until drift's queues are empty (every delivery acked, so covered by a durable snapshot),
        for as long as drift keeps counting; returns whether they emptied."""
        started = last_progress = time.monotonic()
        counted = self.drift_counted()
        while True:
            if self.drift_queues() == 0:
                self.journal(f"drift caught up {time.monotonic() - started:.1f}s after the pipeline")
                return True
            now = time.monotonic()
            if self.drift_counted() != counted:
                counted, last_progress = self.drift_counted(), now
            if now - last_progress > DRIFT_STALL_SECONDS or now - started > DRIFT_CATCH_UP_MAX:
                self.result.problems.append(f"drift's queues not drained after {now - started:.0f}s "
                                            f"({now - last_progress:.0f}s without progress)")
                return False
            time.sleep(0.5)

    def _explain_leftovers(self, confirmed: dict[str, float]) -> None:
        """Messages still held after 60 s (now back in their queues): metric keeps a half whose partner
        never comes until the join TTL (60 s of partner traffic, 600 s without traffic). That is
        expected only of a half of an event features never got confirmed; a half of a written row
        is acked at once or a tick later, so anything else is a problem."""
        features_killed = any(code == -signal.SIGKILL for code in self._features_exit_codes)
        url = self.broker.url(self.vhost)
        for queue in self.work_queues:
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
        rows, malformed_lines = self.parse_rows()
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
        found = {queue: drain(url, f"{queue}.dlq") for queue in self.work_queues + DRIFT_QUEUES}
        result.dead_lettered, dlq_problems = check_dead_letters(found, self.expected_dead_letters,
                                                                self.expected_reasons)
        result.problems += dlq_problems[:10]
        self._check_drift([row.id for row in rows])
        if self.metric_partitions > 1:
            result.problems += self._rows_in_the_wrong_shard()[:5]
        for service in self.services:
            for ending in unexpected_tracebacks(self.output(service))[:3]:
                result.problems.append(f"{service} logged a traceback: {ending}")

    def _rows_in_the_wrong_shard(self) -> list[str]:
        wrong = []
        for partition in range(self.metric_partitions):
            path = self.logs_dir / f"metric_log-{partition}.csv"
            wrong += [f"{row.id} in {path.name}, partition {partition_of(row.id, self.metric_partitions)}'s id"
                      for row in parse_metric_log(path)[0]
                      if partition_of(row.id, self.metric_partitions) != partition]
        return wrong

    def _check_drift(self, row_ids: list[str]) -> None:
        result = self.result
        counts, state, problems = read_drift_counts(self.logs_dir)
        verdict = check_drift_counts(counts, state, row_ids)
        result.drift_missed, result.drift_twice = len(verdict.missed), len(verdict.twice)
        result.problems += problems[:5] + verdict.problems[:5]
        result.problems += [f"drift did not count {missed}" for missed in verdict.missed[:5]]
        result.problems += [f"drift counted twice {twice}" for twice in verdict.twice[:5]]
        if verdict.without_row["outcomes"]:
            result.problems.append(f"drift counted {len(verdict.without_row['outcomes'])} outcomes without a row, "
                                   f"e.g. {verdict.without_row['outcomes'][0]}")
        extra = verdict.without_row["predictions"]
        if extra and any(code == -signal.SIGKILL for code in self._features_exit_codes):
            result.notes.append(f"drift counted {len(extra)} predictions of events features was SIGKILLed "
                                "before completing")
        elif extra:
            result.problems.append(f"drift counted {len(extra)} predictions without a row, e.g. {extra[0]}")
        try:
            text = (self.logs_dir / ALERTS).read_bytes()
        except FileNotFoundError:
            text = b""
        try:
            announced = [body for body, _ in drain(self.broker.url(self.vhost), RECENT_ALERTS)]
        except pika.exceptions.ChannelClosedByBroker:
            announced = []
            result.problems.append(f"no queue {RECENT_ALERTS}: drift never declared its part of the topology")
        alerts, problems = check_alerts(text, announced)
        result.alerts = len(alerts)
        result.problems += problems[:5]
        result.problems += [f"spurious {alert.state} {alert.kind} alert ({alert.detector}) after {alert.events} "
                            f"events: score {alert.score:.2f}" for alert in alerts[:5]]

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
