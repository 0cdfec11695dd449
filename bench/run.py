"""`make bench`: throughput, latency, backlog and memory of the whole pipeline, against the broker's limit.

    .venv/bin/python bench/run.py [--count 20000] [--rates 100,500,1000] [--rate-seconds 20] [--label TEXT]

Each run gets a fresh vhost on the local RabbitMQ and fresh logs; the services run exactly as
`make run` starts them (scripts/run_pipeline.Pipeline), drift among them (at its default nice 10),
with every guarantee on (persistent messages, confirms, fsync). In order:
1. bare: the broker's limit for our topology (bench/bare.py), N events; no drift;
2. saturated: `features --rate 0 --count N`;
3. each fixed rate for --rate-seconds, then 90 % of the saturated run's sustained rate (is the backlog
   bounded when the pipeline is kept busy but not overrun?);
4. wide: the own-data path at full speed, on a generated 50-column table (numeric and text columns,
   missing values) trained with learn_model's default pipeline: throughput and peak RSS per service;
5. restore: metric's and plot's start on a generated 1,000,000-row log;
6. cluster: the local node with classic queues against the local three-node cluster with quorum
   queues (scripts/rabbitmq_cluster.sh up), at full speed (--compare-count events) and at
   --compare-rate for --rate-seconds (p99 without a backlog), alternating for --cluster-rounds rounds;
7. partitions: metric as one process (K = 1) against two partitions (K = 2), on the local node,
   the same way, for --partitions-rounds rounds;
8. replicas: one model process against two sharing `features` (run_pipeline --model-replicas), at
   full speed on a deliberately heavy model (HEAVY_ESTIMATOR), so that model sets the pace; the two
   alternate for --replicas-rounds rounds.
`--only cluster|partitions|replicas` runs just those, into bench/results/<name>/.
A pipeline run ends when every row is drawn; drift may trail it (it yields the CPU to the pipeline),
so the bench then waits for drift to have counted every event on both streams, and counts drift's
CPU up to that moment (the other services' up to the last row, as before).
Results go to bench/results/results.{md,json,png}; one line per run is appended to history.md.
The benchmark reports; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pika
from mlmonitor.broker_urls import split_urls
from mlmonitor.tls import connection_candidates
from mlmonitor.topology import partition_queue

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

from observe import CsvTail, DriftTail, Probe, Sampler, SummaryTail  # noqa: E402
from run_pipeline import Pipeline, metric_processes, model_replicas  # noqa: E402
from waiting import wait_until  # noqa: E402

QUEUES = ["features", "y_true", "y_pred", "metric_added"]
DRIFT_QUEUES = ["predictions.drift", "prediction_batches.drift", "metric_batches.drift"]  # declared by drift alone
CONSUMERS = ("model", "metric", "plot", "drift")  # as make run starts them (scripts/run_pipeline.py)
BROKER_HOST = os.environ.get("BENCH_RABBITMQ_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("BENCH_RABBITMQ_PORT", "5672"))
BROKER_PID: dict[str, int] = {}
CLUSTER_SCRIPT = ROOT / "scripts" / "rabbitmq_cluster.sh"
WITH_DRIFT = True  # --no-drift: the pipeline without the drift monitor, to see what drift costs
PROFILE = False  # --profile: py-spy each service (needs `pip install py-spy`); slows the run


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


# --- the machine and the broker ------------------------------------------------------------------

def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


class Broker:
    """Where a run's vhost lives: the local node at BROKER_HOST:BROKER_PORT, or the local three-node
    cluster (scripts/rabbitmq_cluster.sh); `queue_type` is what the services declare (QUEUE_TYPE)."""

    def __init__(self, label: str, ctl: list[str], nodes: list[str], queue_type: str = "classic",
                 is_cluster: bool = False):
        self.label, self.ctl, self.nodes, self.queue_type, self.is_cluster = label, ctl, nodes, queue_type, is_cluster

    @classmethod
    def single_node(cls) -> Broker:
        return cls("one node, classic queues", ["rabbitmqctl", "-q"], [f"{BROKER_HOST}:{BROKER_PORT}"])

    @classmethod
    def cluster(cls) -> Broker:
        """Brings the local cluster up (idempotent) and uses its three nodes, with quorum queues."""
        up = subprocess.run([str(CLUSTER_SCRIPT), "up"], check=True, capture_output=True, text=True, timeout=600)
        nodes = [urlsplit(url).netloc.rsplit("@", 1)[-1] for url in split_urls(up.stdout.strip().splitlines()[-1])]
        return cls("three nodes, quorum queues", [str(CLUSTER_SCRIPT), "ctl", "1", "-q"], nodes, "quorum", is_cluster=True)

    def rabbitmqctl(self, *args: str) -> str:
        return subprocess.run([*self.ctl, *args], check=True, capture_output=True, text=True, timeout=60).stdout

    def pids(self) -> dict[str, int]:
        """The broker's OS processes, to count their CPU time too: `broker`, or `broker-1` … per node."""
        if not self.is_cluster:
            return broker_pid()
        status = subprocess.run([str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True, timeout=60).stdout
        return {f"broker-{n}": int(line.split()[2]) for n, line in enumerate(status.splitlines(), 1)
                if len(line.split()) == 3 and line.split()[2].isdigit()}


class Vhost:
    def __init__(self, broker: Broker | None = None):
        self.broker = broker or Broker.single_node()

    def __enter__(self) -> str:
        self.name = f"bench-{uuid.uuid4().hex[:10]}"
        self.broker.rabbitmqctl("add_vhost", self.name)
        self.broker.rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return ",".join(f"amqp://guest:guest@{node}/{self.name}" for node in self.broker.nodes)

    def queue_types(self) -> dict[str, int]:
        """How many of the vhost's queues are of each type (classic, quorum): what the services declared."""
        types = [line.split()[-1] for line in self.broker.rabbitmqctl(
            "list_queues", "-p", self.name, "--no-table-headers", "name", "type").splitlines() if line.strip()]
        return {queue_type: types.count(queue_type) for queue_type in sorted(set(types))}

    def __exit__(self, *_):
        self.broker.rabbitmqctl("delete_vhost", self.name)


def broker_pid() -> dict[str, int]:
    """The local RabbitMQ node's OS process, to count its CPU time too."""
    try:
        return {"broker": int(json.loads(rabbitmqctl("status", "--formatter", "json"))["pid"])}
    except (subprocess.SubprocessError, OSError, ValueError, KeyError):
        return {}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    try:
        broker = rabbitmqctl("version").strip()
    except (subprocess.SubprocessError, OSError):
        broker = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "rabbitmq": broker}


def load_now() -> dict:
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                         text=True).stdout.splitlines()[:5]
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "top": [" ".join(line.split()) for line in top]}


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "common", "features", "model",
                            "metric", "plot", "drift", "bench", ":!bench/results"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def consumers_ready(amqp_url: str, queues: list[str] = QUEUES, at_least: dict[str, int] | None = None) -> bool:
    """Every queue has a consumer (`at_least` of them for the queues it names, e.g. model replicas)."""
    connection = pika.BlockingConnection(connection_candidates(amqp_url))
    try:
        channel = connection.channel()
        counts = []
        for queue in queues:
            try:
                counts.append(channel.queue_declare(queue, passive=True).method.consumer_count
                              >= (at_least or {}).get(queue, 1))
            except pika.exceptions.ChannelClosedByBroker:
                return False  # not declared yet
        return all(counts)
    finally:
        if connection.is_open:
            connection.close()


# --- statistics ----------------------------------------------------------------------------------

def percentiles_ms(values) -> dict | None:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000
    return {"p50": p50, "p95": p95, "p99": p99, "max": float(values.max() * 1000), "n": int(values.size)}


def sustained_rate(times) -> float:
    """Events/s between the 10th and the 90th percentile of arrivals: leaves out ramp-up and the tail."""
    times = np.sort(np.asarray(times, dtype=float))
    low, high = int(len(times) * 0.1), int(len(times) * 0.9) - 1
    if high <= low or times[high] <= times[low]:
        return float("nan")
    return (high - low) / (times[high] - times[low])


def backlog(depths: list[tuple[float, dict[str, int]]], started: float, producing_until: float,
            queues: list[str] = QUEUES) -> dict:
    """Deepest ready backlog per queue, overall and in each half of the time features was publishing:
    a bounded backlog is about as deep in the second half as in the first, a growing one deeper."""
    if not depths:
        return {}
    middle = (started + producing_until) / 2
    result = {}
    for queue in queues:
        halves = ([d[queue] for t, d in depths if t < middle],
                  [d[queue] for t, d in depths if middle <= t <= producing_until])
        result[queue] = {"max": max(d[queue] for _, d in depths),
                         "max_first_half": max(halves[0], default=0), "max_second_half": max(halves[1], default=0)}
    return result


# --- scenarios -----------------------------------------------------------------------------------

def start_model_replicas(pipeline: Pipeline, replicas: int, extra_env: dict[str, str] | None = None) -> None:
    """`replicas` model processes sharing `features`, named as run_pipeline --model-replicas names them."""
    for name, env in model_replicas(replicas):
        pipeline.start("model", env={**{key: value for key, value in env.items() if key != "METRICS_PORT"},
                                     **(extra_env or {})}, name=name)


def start_metric_partitions(pipeline: Pipeline, partitions: int) -> None:
    """metric as run_pipeline --partitions K starts it: one active process per partition, no standby."""
    for name, env in metric_processes(partitions, standby=False):
        pipeline.start("metric", env={key: value for key, value in env.items() if key != "METRICS_PORT"}, name=name)


def partition_queues(partitions: int) -> list[str]:
    """The queues metric's partitions consume, beside y_true and y_pred (which their routers consume)."""
    if partitions == 1:
        return []
    return [partition_queue(queue, partition, partitions) for partition in range(partitions)
            for queue in ("y_true", "y_pred")]


def metric_logs(logs_dir: Path, partitions: int) -> list[Path]:
    if partitions == 1:
        return [logs_dir / "metric_log.csv"]
    return [logs_dir / f"metric_log-{partition}.csv" for partition in range(partitions)]


def broker_cpu_together(cpu_used: dict[str, float]) -> dict[str, float]:
    """A cluster's nodes (broker-1 …) counted as one `broker`, as the single node is."""
    nodes = {name: seconds for name, seconds in cpu_used.items() if name.startswith("broker-")}
    if not nodes:
        return cpu_used
    return {**{name: seconds for name, seconds in cpu_used.items() if name not in nodes},
            "broker": sum(nodes.values())}


def run_pipeline(name: str, count: int, rate: float, models_dir: Path, work: Path, timeout: float,
                 feature_args: list[str] = (), replicas: int = 1, broker: Broker | None = None,
                 partitions: int = 1, model_env: dict[str, str] | None = None) -> dict:
    log(f"{name}: {count} events at {'full speed' if not rate else f'{rate:g}/s'}")
    load_before = load_now()
    broker = broker or Broker.single_node()
    broker_pids = broker.pids() if broker.is_cluster else BROKER_PID
    queues = QUEUES + partition_queues(partitions)
    vhost = Vhost(broker)
    with vhost as amqp_url:
        run_dir = work / "".join(c if c.isalnum() else "_" for c in name)
        shutil.rmtree(run_dir, ignore_errors=True)  # fresh logs: nothing to restore
        logs_dir = run_dir / "logs"
        env = {"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(models_dir), "LOG_LEVEL": "INFO",
               "QUEUE_TYPE": broker.queue_type}
        pipeline = Pipeline(env=env, output_dir=run_dir / "service-output")
        threads = []
        try:
            drift_queues = DRIFT_QUEUES if WITH_DRIFT else []
            for service in CONSUMERS if WITH_DRIFT else tuple(c for c in CONSUMERS if c != "drift"):
                if service == "model":
                    start_model_replicas(pipeline, replicas, model_env)
                elif service == "metric":
                    start_metric_partitions(pipeline, partitions)
                else:
                    pipeline.start(service)
            # drift declares its queues and consumes once its detectors are calibrated: it sees every event
            wait_until(lambda: consumers_ready(amqp_url, queues + drift_queues,
                                               {"features": replicas, "y_true": partitions, "y_pred": partitions})
                       or _fail_if_dead(pipeline), 120, message="the consumers")
            queue_types = vhost.queue_types()
            probe = Probe(amqp_url)
            csv_tail = CsvTail(metric_logs(logs_dir, partitions))
            summary = SummaryTail(logs_dir / "error_distribution.json")
            drift_tail = DriftTail(logs_dir / "drift_ids.log")
            threads = [probe, csv_tail, summary, drift_tail]
            for thread in threads:
                thread.start()
            probe.ready.wait(10)
            started = time.time()
            pipeline.start("features", ["--rate", str(rate), "--count", str(count), *feature_args])
            sampler = Sampler(amqp_url, queues + drift_queues, {n: p.pid for n, p in pipeline.processes.items()},
                              broker_pids)
            sampler.start()
            threads.append(sampler)
            profilers = start_profilers(pipeline, run_dir) if PROFILE else []
            features = pipeline.processes["features"]
            producing_until = None

            def done() -> bool:
                nonlocal producing_until
                if producing_until is None and features.poll() is not None:
                    producing_until = time.time()
                return (csv_tail.rows >= count and summary.count >= count and len(probe.sent_at) >= count
                        and producing_until is not None) or _fail_if_dead(pipeline, allowed={"features"})

            wait_until(done, timeout, 0.1, message=f"{count} rows drawn")
            finished = time.time()
            sampler.sample_rss()
            cpu_used = broker_cpu_together(sampler.cpu_used())
            if WITH_DRIFT:
                wait_until(lambda: drift_tail.caught_up(count) or _fail_if_dead(pipeline, allowed={"features"}),
                           max(1.0, timeout - (finished - started)), 0.1, message=f"drift to count {count} events")
                sampler.sample_rss()
                cpu_used["drift"] = sampler.cpu_used().get("drift")  # all its work, done after the last row too
            drift_caught_up = time.time()
        finally:
            for thread in threads:
                thread.stop()
            for profiler in locals().get("profilers", []):
                profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                profiler.wait(30)
            pipeline.stop_all()
        for thread in threads:
            if thread.error:
                raise RuntimeError(f"{thread.name} failed: {thread.error!r}")
    seen_at = np.array(csv_tail.seen_at)
    sent_at = np.array([probe.sent_at.get(row_id) or np.nan for row_id in csv_tail.ids], dtype=float)
    drawn_at = np.array(summary.written_at)[np.searchsorted(summary.counts, np.arange(1, len(seen_at) + 1))]
    result = {
        "name": name, "count": count, "rate": rate, "kind": "pipeline", "model_replicas": replicas,
        "broker": broker.label, "queue_types": queue_types, "metric_partitions": partitions,
        "wall_seconds": finished - started,
        "sustained_eps": sustained_rate(seen_at),
        "overall_eps": len(seen_at) / (seen_at.max() - started),
        "latency_csv_ms": percentiles_ms(seen_at - sent_at),
        "latency_png_ms": percentiles_ms(drawn_at - sent_at),
        "png_lag_ms": percentiles_ms(drawn_at - seen_at),
        "redraws": len(summary.counts),
        "backlog": backlog(sampler.depths, started, producing_until, queues),
        **({"drift_backlog": backlog(sampler.depths, started, producing_until, DRIFT_QUEUES),
            "drift_behind_max_events": drift_behind(seen_at, drift_tail.counted),
            "drift_caught_up_s": drift_caught_up - finished} if WITH_DRIFT else {}),
        "peak_rss_mb": sampler.peak_rss_mb,
        "cpu_ms_per_1000_events": _per_1000(cpu_used, count),
        "load_before": load_before, "load_after": load_now(),
        "timeline": {"rows": _thin(seen_at - started),
                     "depths": [(t - started, d) for t, d in sampler.depths],
                     "latency_csv_s": _thin(seen_at - sent_at)},
    }
    log(f"{name}: {_one_line(result)}")
    return result


def drift_behind(seen_at: np.ndarray, counted: list[tuple[float, int, int]]) -> int:
    """The most rows the CSV had that drift had not yet counted as outcomes (durably: drift writes its
    ids log once per snapshot, so this includes up to one snapshot interval of rows)."""
    if not len(seen_at):
        return 0
    times = np.array([t for t, _, _ in counted], dtype=float)
    outcomes = np.array([o for _, _, o in counted], dtype=np.int64)
    rows = np.arange(1, len(seen_at) + 1)
    at = np.searchsorted(times, seen_at, side="right") - 1
    counted_then = np.where(at >= 0, outcomes[np.maximum(at, 0)], 0)
    return int((rows - counted_then).max())


def start_profilers(pipeline: Pipeline, run_dir: Path) -> list[subprocess.Popen]:
    """py-spy on every service (bench/run.py --profile): collapsed stacks in <run>/profile/<service>.txt."""
    (run_dir / "profile").mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid),
                              "--rate", "100", "--format", "raw", "--nonblocking",
                              "--output", str(run_dir / "profile" / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, process in pipeline.processes.items()]


def run_bare(count: int, work: Path, timeout: float) -> dict:
    log(f"bare: {count} events, bare pika, same queues and guarantees")
    load_before = load_now()
    stats = work / "bare" / "stats.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.unlink(missing_ok=True)
    with Vhost() as amqp_url:
        pipeline = Pipeline(env={"AMQP_URL": amqp_url}, output_dir=work / "bare" / "output")
        pipeline.command = lambda role, args=(): [pipeline.python, str(ROOT / "bench" / "bare.py"), role,
                                                  "--amqp-url", amqp_url, *args]
        probe = Probe(amqp_url)
        try:
            for role in ("model", "metric"):
                pipeline.start(role)
            pipeline.start("plot", ["--count", str(count), "--stats", str(stats)])
            wait_until(lambda: consumers_ready(amqp_url) or _fail_if_dead(pipeline), 60, message="the bare consumers")
            probe.start()
            probe.ready.wait(10)
            started = time.time()
            pipeline.start("features", ["--count", str(count)])
            sampler = Sampler(amqp_url, QUEUES, {n: p.pid for n, p in pipeline.processes.items()}, BROKER_PID)
            sampler.start()
            wait_until(lambda: stats.exists() or _fail_if_dead(pipeline, allowed={"features"}), timeout, 0.1,
                       message="the bare sink")
            sampler.stop()
            producing_until = time.time()
        finally:
            probe.stop()
            pipeline.stop_all()
    data = json.loads(stats.read_text())
    arrived, sent = np.array(data["arrived_at"]), np.array(data["sent_at"], dtype=float)
    result = {"name": "bare", "count": count, "rate": 0, "kind": "bare",
              "sustained_eps": sustained_rate(arrived), "overall_eps": len(arrived) / (arrived.max() - started),
              "latency_sink_ms": percentiles_ms(arrived - sent),
              "backlog": backlog(sampler.depths, started, producing_until),
              "peak_rss_mb": sampler.peak_rss_mb,
        "cpu_ms_per_1000_events": _per_1000(sampler.cpu_used(), count), "load_before": load_before, "load_after": load_now(),
              "timeline": {"rows": _thin(np.sort(arrived) - started)}}
    log(f"bare: {_one_line(result)}")
    return result


def run_wide(columns: int, count: int, work: Path, timeout: float) -> dict:
    """The user's-own-data path at full speed: a generated table of `columns` feature columns (a fifth
    of them text, some values missing), trained with learn_model's default pipeline (impute,
    one-hot, Ridge) and replayed by features as object bodies."""
    table = work / "wide" / f"wide_{columns}.csv"
    models_dir = work / "wide" / "models"
    generate_wide_table(table, columns, rows=10_000)
    if Pipeline(env={"MODELS_DIR": str(models_dir)}, output_dir=work / "wide" / "learn_model").run_to_end(
            "learn_model", ["--data", str(table), "--target", "target"]):
        raise SystemExit("learn_model failed on the wide table")
    return run_pipeline(f"pipeline, full speed, {columns} columns", count, 0, models_dir, work, timeout,
                        ["--data", str(table), "--target", "target"])


def generate_wide_table(path: Path, columns: int, rows: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(11)
    text_columns = columns // 5
    table = {f"x{i}": rng.normal(0, 1, rows) for i in range(columns - text_columns)}
    for i in range(text_columns):
        table[f"c{i}"] = rng.choice([f"level{k}" for k in range(3 + i)], rows)
    frame = pd.DataFrame(table)
    frame["target"] = frame[[f"x{i}" for i in range(min(5, columns - text_columns))]].sum(axis=1) * 10 + rng.normal(0, 1, rows)
    for name in list(frame.columns[:-1])[::7]:  # every 7th column has 3 % missing values
        frame.loc[rng.random(rows) < 0.03, name] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def run_restore(rows: int, work: Path) -> list[dict]:
    csv_path = work / "restore" / f"metric_log_{rows}.csv"
    if not csv_path.exists():
        log(f"restore: generating {rows} rows in {csv_path}")
        generate_log(csv_path, rows)
    results = []
    for service in ("metric", "plot"):
        output = subprocess.run([sys.executable, str(ROOT / "bench" / "restore.py"), service, str(csv_path)],
                                cwd=ROOT, capture_output=True, text=True, check=True, timeout=300).stdout
        result = json.loads(output.strip().splitlines()[-1])
        log(f"restore: {service} read {result['rows']} rows in {result['seconds']:.2f}s, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB")
        results.append(result)
    return results


# A model whose cost is per row, heavy enough to set the pace even with two processes: k-nearest
# neighbours, brute force, Minkowski p = 3 (no BLAS shortcut, so each query row costs a distance to
# every training row) on a generated table of HEAVY_TABLE_ROWS rows and ten numeric columns, the
# diabetes data's shape. A forest's cost is mostly per predict call, so it falls as batches grow under
# load; this one's does not (docs/benchmarks.md#model-replicas).
HEAVY_ESTIMATOR = "sklearn.neighbors.KNeighborsRegressor"
HEAVY_ESTIMATOR_PARAMS = '{"algorithm": "brute", "p": 3}'
HEAVY_TABLE_ROWS = 36_000
HEAVY_MODELS = ROOT / "bench" / "results" / "tmp" / "heavy"
# Each model process on one thread (a replica per core, as a forest with n_jobs None is), and batches of
# at most 50: at ~8 ms a row a batch of model's default 500 would take 4 s and reach metric in lumps.
HEAVY_MODEL_ENV = {**{name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                   "PREFETCH": "50"}


def heavy_model(estimator: str, params: str, table_rows: int) -> tuple[Path, list[str]]:
    """The heavy model's folder and features' arguments to replay its table (none: the diabetes data);
    trained once per estimator, parameters and table, then reused, since training predicts every row."""
    key = hashlib.sha256(f"{estimator} {params} {table_rows}".encode()).hexdigest()[:10]
    folder = HEAVY_MODELS / key  # whatever --out says, so that every run reuses it
    models_dir = folder / "models"
    data_args = []
    if table_rows:
        table = folder / "table.csv"
        if not table.exists():
            generate_numeric_table(table, table_rows)
        data_args = ["--data", str(table), "--target", "target"]
    if not (models_dir / "model_card.json").exists():
        log(f"replicas: training {estimator} {params} on {table_rows or 'the diabetes'} rows")
        if Pipeline(env={"MODELS_DIR": str(models_dir)}, output_dir=folder / "learn_model").run_to_end(
                "learn_model", [*data_args, "--estimator", estimator, "--estimator-params", params], timeout=1800):
            raise SystemExit(f"learn_model failed on the heavy estimator; see {folder / 'learn_model'}")
    return models_dir, data_args


def generate_numeric_table(path: Path, rows: int, columns: int = 10) -> None:
    rng = np.random.default_rng(13)
    features = rng.normal(0, 1, (rows, columns))
    target = features[:, :5].sum(axis=1) * 10 + rng.normal(0, 1, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as handle:
        handle.write(",".join([f"x{i}" for i in range(columns)] + ["target"]) + "\n")
        handle.writelines(",".join(f"{v:.6f}" for v in row) + f",{t:.6f}\n" for row, t in zip(features, target))
    os.replace(temporary, path)


def run_replicas(count: int, work: Path, timeout: float, estimator: str, params: str, rounds: int,
                 table_rows: int = HEAVY_TABLE_ROWS) -> list[dict]:
    """One model process against two sharing `features`, at full speed, on a model trained with the
    heavy estimator, each process on one thread (a replica per core, HEAVY_MODEL_ENV); the two alternate, round after
    round, so that a change in the machine's load hits both alike."""
    models_dir, data_args = heavy_model(estimator, params, table_rows)
    results = []
    for round_number in range(1, rounds + 1):
        for replicas in (1, 2):
            result = run_pipeline(f"{replicas} model process{'es' if replicas > 1 else ''}, heavy model, "
                                  f"round {round_number}", count, 0, models_dir, work, timeout, data_args,
                                  replicas=replicas, model_env=HEAVY_MODEL_ENV)
            results.append({**result, "round": round_number,
                            "estimator": f"{estimator} {params}" + (f", {table_rows} rows" if table_rows else "")})
    return results


def run_compared(variants: list[tuple[str, dict]], count: int, models_dir: Path, work: Path, timeout: float,
                 rounds: int, rate: float = 0, rate_seconds: float = 20) -> list[dict]:
    """Each variant (label, run_pipeline's keyword arguments) at full speed, and at `rate` events/s for
    `rate_seconds` when given (p99 without a backlog), alternating round after round so that a change in
    the machine's load hits every variant alike; nothing else differs."""
    speeds = [(0.0, count)] + ([(rate, max(1, int(rate * rate_seconds)))] if rate else [])
    results = []
    for round_number in range(1, rounds + 1):
        for speed, events in speeds:
            for variant, (label, options) in enumerate(variants):
                name = f"{label}, {'full speed' if not speed else f'{speed:g}/s'}, round {round_number}"
                result = run_pipeline(name, events, speed, models_dir, work, timeout, **options)
                results.append({**result, "round": round_number, "variant": variant, "variant_label": label})
    return results


def cluster_variants() -> list[tuple[str, dict]]:
    """The local node with classic queues, and the local three-node cluster with quorum queues."""
    return [(broker.label, {"broker": broker}) for broker in (Broker.single_node(), Broker.cluster())]


def partition_variants() -> list[tuple[str, dict]]:
    """metric as one process (K = 1) and as two partitions (K = 2), on the local node, classic queues."""
    return [(f"K = {partitions}", {"partitions": partitions}) for partitions in (1, 2)]


def generate_log(path: Path, rows: int) -> None:
    sys.path.insert(0, str(ROOT / "common" / "src"))
    from mlmonitor.metric_log import HEADER_LINE

    rng = np.random.default_rng(7)
    y_true = rng.integers(25, 346, rows).astype(float)
    y_pred = y_true + rng.normal(0, 55, rows)
    error = np.abs(y_true - y_pred)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as handle:
        handle.write(HEADER_LINE)
        for start in range(0, rows, 100_000):
            stop = min(rows, start + 100_000)
            handle.write("".join(f"{uuid.uuid4()},{t!r},{p!r},{e!r}\n" for t, p, e in
                                 zip(y_true[start:stop].tolist(), y_pred[start:stop].tolist(),
                                     error[start:stop].tolist())))
    os.replace(temporary, path)


def _fail_if_dead(pipeline: Pipeline, allowed: set[str] = frozenset()) -> bool:
    dead = {name: code for name, code in pipeline.dead().items() if not (name in allowed and code == 0)}
    if dead:
        raise RuntimeError(f"services exited: {dead}; see their output under bench/results/tmp")
    return False


def _per_1000(cpu_seconds: dict[str, float | None], events: int) -> dict[str, float]:
    return {name: seconds * 1e6 / events for name, seconds in cpu_seconds.items() if seconds is not None}


def _thin(values, points: int = 2000) -> list[float]:
    values = np.asarray(values, dtype=float)
    step = max(1, len(values) // points)
    return [round(float(v), 4) for v in values[::step]]


def _one_line(result: dict) -> str:
    parts = [f"sustained {result['sustained_eps']:.0f} ev/s"]
    for key in ("latency_csv_ms", "latency_png_ms", "png_lag_ms", "latency_sink_ms"):
        if result.get(key):
            p = result[key]
            parts.append(f"{key[:-3]} p50/p99/max {p['p50']:.0f}/{p['p99']:.0f}/{p['max']:.0f} ms")
    deepest = max(result["backlog"].items(), key=lambda item: item[1]["max"], default=None)
    if deepest:
        parts.append(f"deepest {deepest[0]} {deepest[1]['max']}")
    if "drift_caught_up_s" in result:
        parts.append(f"drift at most {result['drift_behind_max_events']} rows behind, caught up "
                     f"{result['drift_caught_up_s']:.1f}s after the last row")
    parts.append("CPU ms/1000 ev " + " ".join(f"{k} {v:.0f}" for k, v in sorted(result["cpu_ms_per_1000_events"].items())))
    parts.append("RSS " + " ".join(f"{k} {v:.0f}" for k, v in sorted(result["peak_rss_mb"].items())))
    return "; ".join(parts)


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000,
                        help="events in the saturated and bare runs (0: only the fixed rates)")
    parser.add_argument("--rates", default="100,500,1000", help="fixed rates (events/s); empty for none")
    parser.add_argument("--rate-seconds", type=float, default=20, help="length of each fixed-rate run")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-broker baseline")
    parser.add_argument("--no-sustained", action="store_true", help="skip the run at the sustained rate")
    parser.add_argument("--sustained-fraction", type=float, default=0.9,
                        help="that run offers this fraction of the full-speed run's sustained rate")
    parser.add_argument("--wide-columns", type=int, default=50,
                        help="columns of the generated table for the own-data run at full speed (0 skips it)")
    parser.add_argument("--restore-rows", type=int, default=1_000_000, help="0 skips the restore measurement")
    parser.add_argument("--timeout", type=float, default=900, help="longest wait for one run to finish")
    parser.add_argument("--profile", action="store_true", help="record py-spy stacks of each service")
    parser.add_argument("--no-drift", action="store_true", help="run the pipeline without drift (what drift costs)")
    parser.add_argument("--replicas-rounds", type=int, default=1,
                        help="rounds of one model process against two, on the heavy estimator (0 skips them)")
    parser.add_argument("--replicas-count", type=int, default=2000, help="events in each of those runs")
    parser.add_argument("--heavy-estimator", default=HEAVY_ESTIMATOR, help="the estimator of those runs")
    parser.add_argument("--heavy-estimator-params", default=HEAVY_ESTIMATOR_PARAMS, help="its parameters (JSON)")
    parser.add_argument("--heavy-table-rows", type=int, default=HEAVY_TABLE_ROWS,
                        help="rows of the generated table it is trained on and features replays (0: the diabetes data)")
    parser.add_argument("--cluster-rounds", type=int, default=1,
                        help="rounds of one node with classic queues against the three-node cluster with quorum "
                             "queues (scripts/rabbitmq_cluster.sh up), at full speed")
    parser.add_argument("--partitions-rounds", type=int, default=1,
                        help="rounds of metric as one process (K = 1) against two partitions (K = 2), at full speed")
    parser.add_argument("--compare-count", type=int, default=10000,
                        help="events in each full-speed cluster or partitions run")
    parser.add_argument("--compare-rate", type=float, default=500,
                        help="those runs also at this rate for --rate-seconds, for p99 without a backlog (0: not)")
    parser.add_argument("--only", choices=("replicas", "cluster", "partitions"),
                        help="only these runs (results in bench/results/<this>/ unless --out says otherwise)")
    parser.add_argument("--label", default="", help="what changed, for history.md")
    parser.add_argument("--out", type=Path, help="where the results go (default bench/results)")
    args = parser.parse_args(argv)
    if args.only:  # no bare, full-speed, fixed-rate, wide or restore run; only the runs named
        args.count, args.rates, args.restore_rows = 0, "", 0
        args.replicas_rounds = max(1, args.replicas_rounds) if args.only == "replicas" else 0
        args.cluster_rounds = max(1, args.cluster_rounds) if args.only == "cluster" else 0
        args.partitions_rounds = max(1, args.partitions_rounds) if args.only == "partitions" else 0
    args.out = args.out or ROOT / "bench" / "results" / (args.only or "")
    global PROFILE, BROKER_PID, WITH_DRIFT
    PROFILE = args.profile
    WITH_DRIFT = not args.no_drift
    BROKER_PID = broker_pid()

    work = args.out / "tmp"
    models_dir = work / "models"
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": git_commit(), "label": args.label,
               "machine": machine(), "command": "make bench" + (f" ARGS=\"{' '.join(argv or sys.argv[1:])}\""
                                                              if (argv or sys.argv[1:]) else ""),
               "load_start": load_now(), "runs": [], "restore": [], "replicas": [], "cluster": [], "partitions": []}
    log(f"load average {results['load_start']['loadavg']}; busiest: {results['load_start']['top'][:3]}")
    if Pipeline(env={"MODELS_DIR": str(models_dir)}, output_dir=work / "learn_model").run_to_end("learn_model"):
        raise SystemExit("learn_model failed")
    if args.count and not args.no_bare:
        results["runs"].append(run_bare(args.count, work, args.timeout))
    saturated = run_pipeline("saturated", args.count, 0, models_dir, work, args.timeout) if args.count else None
    if saturated:
        results["runs"].append(saturated)
    fixed = [(f"{float(rate):g}/s", float(rate)) for rate in args.rates.split(",") if rate.strip()]
    if saturated and not args.no_sustained and np.isfinite(saturated["sustained_eps"]):
        rate = float(int(saturated["sustained_eps"] * args.sustained_fraction // 50 * 50) or 50)
        fixed.append((f"{rate:g}/s ({args.sustained_fraction:.0%} of full speed)", rate))
    for name, rate in fixed:
        count = max(1, int(rate * args.rate_seconds))
        results["runs"].append(run_pipeline(name, count, rate, models_dir, work, args.timeout))
    if args.count and args.wide_columns:
        results["runs"].append(run_wide(args.wide_columns, args.count, work, args.timeout))
    if args.restore_rows:
        results["restore"] = run_restore(args.restore_rows, work)
    if args.cluster_rounds:
        results["cluster"] = run_compared(cluster_variants(), args.compare_count, models_dir, work, args.timeout,
                                          args.cluster_rounds, args.compare_rate, args.rate_seconds)
    if args.partitions_rounds:
        results["partitions"] = run_compared(partition_variants(), args.compare_count, models_dir, work,
                                             args.timeout, args.partitions_rounds, args.compare_rate,
                                             args.rate_seconds)
    if args.replicas_rounds:
        results["replicas"] = run_replicas(args.replicas_count, work, args.timeout, args.heavy_estimator,
                                           args.heavy_estimator_params, args.replicas_rounds, args.heavy_table_rows)
    results["load_end"] = load_now()

    from report import write_report

    write_report(results, args.out)
    log(f"wrote {args.out / 'results.md'}, results.json, results.png; appended history.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
