"""Runs scenarios and prints the table: trains the model once, owns the private RabbitMQ node."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

from brokers import ClusterBroker, PrivateBroker, SharedBroker, rabbitmq_scripts
from harness import Result, ScenarioRun, Skipped
from mlmonitor.histogram import ErrorHistogram
from run_pipeline import ROOT, Pipeline
from scenarios import Scenario


def known_pairs(models_dir: Path) -> set[tuple[float, float]]:
    """Every (y_true, y_pred) the trained model gives on the diabetes samples."""
    from mlmonitor.model_store import load_model
    from sklearn.datasets import load_diabetes

    estimator, _ = load_model(models_dir)
    data = load_diabetes()
    return {(round(float(t), 6), round(float(p), 6)) for t, p in zip(data.target, estimator.predict(data.data))}


class Suite:
    def __init__(self, workdir: Path, events: int, rate: float, seed: int, log=print):
        self.workdir = workdir
        self.events = events
        self.rate = rate
        self.seed = seed
        self.log = log
        self.shared = SharedBroker()
        self._private: PrivateBroker | None = None
        self._cluster: ClusterBroker | None = None
        self.models_dir = workdir / "models"
        exit_code = Pipeline(env={"MODELS_DIR": str(self.models_dir)}, output_dir=workdir / "learn_model").run_to_end(
            "learn_model", timeout=180)
        if exit_code != 0:
            raise RuntimeError(f"learn_model failed; see {workdir / 'learn_model'}")
        self.known_pairs = known_pairs(self.models_dir)
        self.histogram_factory = ErrorHistogram
        self.results: list[Result] = []

    def private_broker(self) -> PrivateBroker:
        if rabbitmq_scripts() is None:
            raise Skipped("rabbitmq-server is not installed here, so there is no node of our own to break")
        if self._private is None:
            self._private = PrivateBroker(self.workdir / "rabbitmq")
            self.log(f"  starting a private RabbitMQ node {self._private.node} on 127.0.0.1:{self._private.port}")
        self._private.ensure_up()
        return self._private

    def cluster(self) -> ClusterBroker:
        if rabbitmq_scripts() is None:
            raise Skipped("rabbitmq-server is not installed here, so there is no cluster of our own to break")
        if self._cluster is None:
            self._cluster = ClusterBroker(self.workdir / "cluster")
            self.log(f"  starting a three-node cluster of our own, {self._cluster.name}-1..3@localhost on "
                     f"127.0.0.1:{self._cluster.ports[0]}-{self._cluster.ports[-1]}")
        self._cluster.up()  # whichever node a scenario left down
        return self._cluster

    def broker_for(self, scenario: Scenario):
        if scenario.cluster:
            return self.cluster()
        return self.private_broker() if scenario.private_broker else self.shared

    def run(self, scenario: Scenario, repeats: int) -> Result:
        started = time.monotonic()
        rng = random.Random(f"{self.seed}/{scenario.name}")
        run = None
        try:
            broker = self.broker_for(scenario)
            run = ScenarioRun(scenario_dir(scenario.name), broker, self.workdir, self.models_dir,
                              int(self.events * scenario.events_scale), self.rate, rng, self.known_pairs, self.histogram_factory, scenario.url_query,
                              scenario.proxied, scenario.logs_on_tmpfs, scenario.max_backlog,
                              scenario.model_replicas, queue_type="quorum" if scenario.cluster else None,
                              metric_partitions=scenario.metric_partitions, metric_standby=scenario.metric_standby)
            result = run.result
            result.scenario = scenario.name
            if not scenario.starts_services:
                run.start_all()
            scenario.inject(run, repeats)
            run.finish()
        except Skipped as skipped:
            result = Result(scenario.name, skipped=str(skipped))
        except Exception as error:
            result = run.result if run else Result(scenario.name)
            result.scenario = scenario.name
            result.problems.append(f"the scenario broke: {type(error).__name__}: {error}")
            self.log(traceback.format_exc())
        finally:
            if run is not None:
                run.close()
        result.seconds = time.monotonic() - started
        self.results.append(result)
        return result

    def close(self) -> None:
        if self._private is not None:
            self._private.stop()
        if self._cluster is not None:
            self._cluster.down()


def scenario_dir(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


COLUMNS = ("scenario", "faults", "published", "rows", "lost", "duplicated", "drift missed", "drift twice", "alerts",
           "dead-lettered", "recover s", "valid?")


def table(results: list[Result]) -> str:
    lines = []
    for result in results:
        if result.skipped:
            lines.append((result.scenario, *["-"] * (len(COLUMNS) - 2), "skipped"))
            continue
        recovery = result.recovery_seconds
        lines.append((result.scenario, str(len(result.faults)), str(result.published), str(result.rows),
                      str(result.lost), str(result.duplicated), str(result.drift_missed), str(result.drift_twice),
                      str(result.alerts), str(result.dead_lettered),
                      "-" if recovery is None else f"{recovery:.1f}", "true" if result.valid else "FALSE"))
    widths = [max(len(row[i]) for row in [COLUMNS, *lines]) for i in range(len(COLUMNS))]

    def render(row) -> str:
        return "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(row, widths))).rstrip()

    out = [render(COLUMNS), render(["-" * width for width in widths])] + [render(row) for row in lines]
    for result in results:
        for note in result.skipped and [result.skipped] or []:
            out.append(f"  {result.scenario}: skipped: {note}")
        for note in result.notes:
            out.append(f"  {result.scenario}: note: {note}")
        for problem in result.problems:
            out.append(f"  {result.scenario}: PROBLEM: {problem}")
    if all(result.valid or result.skipped for result in results):
        out.append("\nEverything looks good! ヽ('ー`)ノ")
    else:
        out.append("\nAnalysis invalid! (ﾉಥ益ಥ）ﾉ ┻━┻")
    return "\n".join(out)


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    try:
        version = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True, text=True,
                                 timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        version = "?"
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
            f"Python {sys.version.split()[0]}, RabbitMQ {version or '?'}")


__all__ = ["Suite", "table", "machine", "ROOT"]
