r"""Runs the whole pipeline locally: trains the model, then starts every service as its own process.

    .venv/bin/python scripts/run_pipeline.py [--rate 5] [--count N]
    .venv/bin/python scripts/run_pipeline.py --data examples/houses.csv --target price --rate 50 \
        [--estimator sklearn.ensemble.HistGradientBoostingRegressor] [--external-model]

--data/--target (and --task, --estimator, --estimator-params) go to learn_model, --data/--target,
--order, --seed and the simulated drift (--drift-features/--drift-sigma/--drift-from,
--concept-shift/--concept-from/--concept-sigma) to features; drift watches for it and writes
logs/alerts.jsonl. When the model card says classification, metric and the dashboard
run with TASK=classification. --external-model leaves the `model` service out: a model of your own
publishes the predictions; --model-replicas N starts N model processes sharing the `features`
queue (replica k >= 2 as model-k, /metrics on 9120 + k). Retrain while it runs by running
learn_model again with the same flags in another console; each model process swaps to the new version.
--partitions K starts metric partitions 0..K-1 (metric-I, writing logs/metric_log-I.csv), --standby a
hot standby beside each (metric-I-standby; metric-standby when K = 1); /metrics on 9140 + n for all
but the first, which keeps metric's 9103.

Each service is started exactly as the README's per-service commands do
(`<python> <service>/src/<service>.py`), from the repository root, with this process's
environment (AMQP_URL, LOGS_DIR, MODELS_DIR …). Ctrl-C or SIGTERM stops them all. If one
service dies, the others are stopped too and the exit code says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSUMERS = ("model", "metric", "plot")
OPTIONAL_SERVICES = ("drift", "dashboard")
# Each service's Prometheus /metrics port, as in docker-compose.yml (the dashboard serves its own on 8000).
METRICS_PORTS = {"features": "9101", "model": "9102", "metric": "9103", "plot": "9104", "drift": "9105"}
MODEL_REPLICA_PORT_BASE = 9120  # model replica k >= 2 serves /metrics on 9120 + k; the first keeps model's 9102
METRIC_PORT_BASE = 9140  # metric process n >= 1 (partitions, standbys) serves /metrics on 9140 + n


def script_of(service: str) -> Path:
    return ROOT / service / "src" / f"{service}.py"


class Pipeline:
    """The services as child processes; used by `make run`, the end-to-end tests and the benchmark."""

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None,
                 output_dir: Path | None = None):
        self.python = python
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.output_dir = output_dir  # None: children write to our stdout
        self.processes: dict[str, subprocess.Popen] = {}

    def command(self, service: str, args: list[str] = ()) -> list[str]:
        return [self.python, str(script_of(service)), *args]

    def start(self, service: str, args: list[str] = (), env: dict[str, str] | None = None,
              name: str | None = None) -> subprocess.Popen:
        """Starts `service`; `name` (default: the service) tells several processes of one service apart,
        e.g. model replicas: it keys `processes` and names the output file."""
        name = name or service
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stdout = open(self.output_dir / f"{name}.log", "ab")
        else:
            stdout = None
        process = subprocess.Popen(self.command(service, list(args)), cwd=ROOT, env={**self.env, **(env or {})},
                                   stdout=stdout, stderr=subprocess.STDOUT)
        if stdout is not None:
            stdout.close()
        self.processes[name] = process
        return process

    def output(self, name: str) -> str:
        """What the process `name` has written so far ("" before it has), with output_dir set."""
        path = self.output_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run_to_end(self, service: str, args: list[str] = (), timeout: float = 300) -> int:
        exit_code = self.start(service, args).wait(timeout)
        del self.processes[service]
        return exit_code

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[service]
        if process.poll() is None:
            process.send_signal(sig)
            process.wait(30)

    def dead(self) -> dict[str, int]:
        return {name: process.returncode for name, process in self.processes.items() if process.poll() is not None}

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace_seconds
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# run_pipeline's flags that go on unchanged, as (flag, attribute of the parsed args)
LEARN_MODEL_FLAGS = (("--data", "data"), ("--target", "target"), ("--task", "task"), ("--estimator", "estimator"),
                     ("--estimator-params", "estimator_params"))
FEATURES_FLAGS = (("--data", "data"), ("--target", "target"), ("--order", "order"), ("--seed", "seed"),
                  ("--drift-features", "drift_features"), ("--drift-sigma", "drift_sigma"),
                  ("--drift-from", "drift_from"), ("--concept-shift", "concept_shift"),
                  ("--concept-from", "concept_from"), ("--concept-sigma", "concept_sigma"))
TASK_AWARE_SERVICES = ("metric", "dashboard")  # told TASK=classification when the card says so


def metrics_env(service: str) -> dict[str, str]:
    return {"METRICS_PORT": METRICS_PORTS[service]} if service in METRICS_PORTS else {}


def passed_on(args: argparse.Namespace, flags: tuple[tuple[str, str], ...]) -> list[str]:
    """The given flags among `flags`, as a command line; those left out keep the service's default."""
    given = [(flag, getattr(args, name)) for flag, name in flags if getattr(args, name) is not None]
    return [part for flag, value in given for part in (flag, str(value))]


def features_args(args: argparse.Namespace) -> list[str]:
    return (["--rate", str(args.rate)] + (["--count", str(args.count)] if args.count else [])
            + passed_on(args, FEATURES_FLAGS))


def trained_task(env: dict[str, str]) -> str | None:
    """The task in the card learn_model just wrote (MODELS_DIR, default models/), or None without a card."""
    from mlmonitor.model_store import ModelCorrupt, ModelNotReady, read_card

    try:
        return read_card(ROOT / env.get("MODELS_DIR", "models")).task
    except (ModelNotReady, ModelCorrupt) as error:
        print(f"run_pipeline: {error}; metric works the task out per pair", flush=True)
        return None


def service_env(service: str, task: str | None) -> dict[str, str]:
    task_env = {"TASK": task} if task == "classification" and service in TASK_AWARE_SERVICES else {}
    return {**metrics_env(service), **task_env}


def model_replicas(count: int) -> list[tuple[str, dict[str, str]]]:
    """(process name, env) of each of `count` model processes sharing `features`: the first is `model`
    as without replicas; replica k is `model-k`, with a /metrics port and log lines of its own."""
    return [("model", {})] + [(f"model-{k}", {"METRICS_PORT": str(MODEL_REPLICA_PORT_BASE + k),
                                              "LOG_NAME": f"model-{k}"}) for k in range(2, count + 1)]


def metric_processes(partitions: int, standby: bool) -> list[tuple[str, dict[str, str]]]:
    """(process name, env) of each metric process: the actives of partitions 0..K-1, then a standby of
    each when asked. With K = 1 and no standby, `metric` alone, as without partitions."""
    names = ["metric"] if partitions == 1 else [f"metric-{partition}" for partition in range(partitions)]
    names += [f"{name}-standby" for name in names] if standby else []
    processes = []
    for n, name in enumerate(names):
        env = {"METRIC_PARTITIONS": str(partitions), "METRIC_PARTITION": str(n % partitions), "LOG_NAME": name}
        if n:
            env["METRICS_PORT"] = str(METRIC_PORT_BASE + n)
        processes.append((name, env if (partitions, standby) != (1, False) else {}))
    return processes


def dashboard_upstreams(processes: list[tuple[str, dict[str, str]]]) -> dict[str, str]:
    """The dashboard reads 9101-9105 by default; with model replicas or more metric processes
    (partitions, standbys), their ports too, unless UPSTREAM_METRICS says otherwise."""
    extra = [env["METRICS_PORT"] for _, env in processes if "METRICS_PORT" in env]
    if not extra or os.environ.get("UPSTREAM_METRICS"):
        return {}
    ports = [*METRICS_PORTS.values(), *extra]
    return {"UPSTREAM_METRICS": ",".join(f"http://localhost:{port}/metrics" for port in ports)}


def wait_for_drift_queues(pipeline: Pipeline, timeout: float = 30.0) -> bool:
    """Waits until drift has declared its queues (only it does, at start), so that it sees the first
    events too; gives up, with one line, when drift dies or takes longer than `timeout`."""
    import pika

    from mlmonitor.settings import DEFAULT_AMQP_URL
    from mlmonitor.tls import connection_candidates
    from mlmonitor.topology import DRIFT_QUEUES

    parameters = connection_candidates(pipeline.env.get("AMQP_URL") or DEFAULT_AMQP_URL)  # any node of a cluster
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "drift" not in pipeline.dead():
        try:
            connection = pika.BlockingConnection(parameters)
            try:
                channel = connection.channel()
                for queue in DRIFT_QUEUES:
                    channel.queue_declare(queue, passive=True)  # a missing queue closes the channel
                return True
            finally:
                if connection.is_open:
                    connection.close()
        except (pika.exceptions.AMQPError, OSError):
            time.sleep(0.2)
    print("run_pipeline: drift has not declared its queues; starting features anyway", flush=True)
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default=os.environ.get("RATE", "1"), help="features: events per second (0: max)")
    parser.add_argument("--count", default=os.environ.get("COUNT"), help="features: stop after N events")
    parser.add_argument("--data", help="learn_model and features: CSV or Parquet table (default: the diabetes data)")
    parser.add_argument("--target", help="learn_model and features: the table's target column")
    parser.add_argument("--task", choices=("regression", "classification"),
                        help="learn_model: the task (default: learn_model works it out)")
    parser.add_argument("--estimator", help="learn_model: e.g. sklearn.ensemble.HistGradientBoostingRegressor")
    parser.add_argument("--estimator-params", help="learn_model: the estimator's parameters as JSON")
    parser.add_argument("--order", choices=("shuffled", "in-order"), help="features: row order (default shuffled)")
    parser.add_argument("--seed", help="features: seed of the shuffled order")
    parser.add_argument("--drift-features", help="features: simulate drift by shifting these numeric features "
                                                 "(comma-separated), watched by the drift service")
    parser.add_argument("--drift-sigma", help="features: the shift in standard deviations (default 1)")
    parser.add_argument("--drift-from", help="features: events sent unchanged before the shift (default 0)")
    parser.add_argument("--concept-shift", help="features: move y_true by this many residual standard deviations "
                                                "(a classifier: flip this share of labels)")
    parser.add_argument("--concept-from", help="features: events sent unchanged before the concept change")
    parser.add_argument("--concept-sigma", help="features: residual standard deviation (default: from the card)")
    parser.add_argument("--external-model", action="store_true",
                        help="don't start the model service: a model of your own publishes y_pred")
    parser.add_argument("--model-replicas", type=int, default=int(os.environ.get("MODEL_REPLICAS", "1")),
                        help="model processes sharing the features queue (default 1)")
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("METRIC_PARTITIONS", "1")),
                        help="metric: partitions of the join, each with its own process and log (default 1)")
    parser.add_argument("--standby", action="store_true", help="metric: start a hot standby for each partition")
    args = parser.parse_args(argv)
    if args.partitions < 1:
        parser.error("--partitions must be at least 1")
    if args.model_replicas < 1:
        parser.error("--model-replicas must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipeline = Pipeline()
    stopping = False

    def request_stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    print("run_pipeline: training the model", flush=True)
    if pipeline.run_to_end("learn_model", passed_on(args, LEARN_MODEL_FLAGS)) != 0:
        print("run_pipeline: learn_model failed; not starting the services", flush=True)
        return 1
    task = trained_task(pipeline.env)
    consumers = [name for name in CONSUMERS if not (args.external_model and name == "model")]
    services = consumers + [name for name in OPTIONAL_SERVICES if script_of(name).exists()]
    replicas = model_replicas(args.model_replicas) if "model" in services else []
    metrics = metric_processes(args.partitions, args.standby) if "metric" in services else []
    for service in services:
        if service == "model":
            for name, replica_env in replicas:
                pipeline.start(service, env={**service_env(service, task), **replica_env}, name=name)
        elif service == "metric":
            for name, metric_env in metrics:
                pipeline.start(service, env={**service_env(service, task), **metric_env}, name=name)
        elif service == "dashboard":
            pipeline.start(service, env={**service_env(service, task), **dashboard_upstreams(replicas + metrics)})
        else:
            pipeline.start(service, env=service_env(service, task))
    if "drift" in services:
        wait_for_drift_queues(pipeline)
    features = pipeline.start("features", features_args(args), env=metrics_env("features"))
    print(f"run_pipeline: started {', '.join(list(pipeline.processes))}; Ctrl-C stops them all", flush=True)
    ports = ", ".join([f"{name} :{port}" for name, port in METRICS_PORTS.items() if name in services + ["features"]]
                      + [f"{name} :{env['METRICS_PORT']}" for name, env in replicas + metrics if "METRICS_PORT" in env])
    dashboard_url = f"http://localhost:{os.environ.get('DASHBOARD_PORT', '8000')}/"
    dashboard = f"; dashboard on {dashboard_url}" if "dashboard" in services else ""
    print(f"run_pipeline: Prometheus /metrics on {ports}{dashboard}", flush=True)

    exit_code = 0
    while not stopping:
        # features ends by itself after --count; only its failure stops the rest
        dead = {name: code for name, code in pipeline.dead().items()
                if pipeline.processes[name] is not features or code != 0}
        if dead:
            print(f"run_pipeline: {dead} exited; stopping the rest", flush=True)
            exit_code = 1
            break
        time.sleep(0.2)
    print("run_pipeline: stopping all services", flush=True)
    pipeline.stop_all()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
