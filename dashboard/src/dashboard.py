"""A live web page of the model's quality, at http://localhost:8000/ (DASHBOARD_PORT).

At start it restores every row of `logs/metric_log.csv` and of each partition's `metric_log-<I>.csv`;
then it counts each `metric_added` event from its own queue `metric_added.dashboard`, bound to the
`metric_events` exchange beside plot's queue, so it takes nothing away from plot. An event is acked
once it is counted; an id already counted (a redelivery, or a row already read from the CSV) is not
counted again.

The queue is durable and bounded (x-max-length, dropping the oldest): while the dashboard is down
it keeps at most `--queue-max-length` events, not an ever-growing backlog, because everything it
drops is already in the CSV. At each connect, once the queue is declared and bound, the dashboard
reads the rows appended to the CSV since its last read, which covers the events dropped from a full
queue and those published before the queue first existed.

Which figures it keeps, a regressor's or a classifier's: the setting TASK, else the model card's
`task`, else what the events show (see quality.QualityBoard.task_for). When that changes (a card
appears, or the first text label or probabilities arrive), the board starts again and counts the
whole CSV under the new task.

Also serves GET /api/summary (JSON), GET /api/drift (the drift service's detectors and alerts, read
from logs/drift_summary.json and logs/alerts.jsonl: drift_view.py) and GET /metrics (Prometheus) on
the same port; see web.py.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Literal

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field, SecretStr

from mlmonitor.amqp import Delivery, Session, decode_or_dead_letter, run_worker
from mlmonitor.logs import configure_logging
from mlmonitor.messages import MetricAdded
from mlmonitor.metric_log import MetricLogTail, MetricRow, ShardedMetricLogTail
from mlmonitor.model_store import ModelCorrupt, ModelNotReady, card_signature, read_card
from mlmonitor.observability import serve_metrics
from mlmonitor.settings import ConsumerSettings, load_settings, secret_field
from mlmonitor.topology import DASHBOARD_EVENTS, METRIC_EVENTS_EXCHANGE, PIPELINE, QueueSpec, Topology
from mlmonitor.tasks import CLASSIFICATION, REGRESSION
from drift_view import DriftView
from quality import Observation, QualityBoard, TaskHint
from upstream import UpstreamMetrics
from web import BasicAuth, WebServer, create_app, warn_if_exposed

log = logging.getLogger("dashboard")

DEFAULT_UPSTREAMS = ",".join(f"http://localhost:{port}/metrics" for port in (9101, 9102, 9103, 9104, 9105))

EVENT_AGE = Histogram(
    "mlmonitor_event_age_seconds",
    "Seconds from an event's sent_at (when features produced it) to the dashboard receiving it: "
    "the pipeline's end-to-end latency.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


class Settings(ConsumerSettings):
    logs_dir: Path = Field(Path("logs"), description="Folder of metric_log.csv, drift_summary.json and alerts.jsonl "
                                                     "(only read).")
    models_dir: Path = Field(Path("models"), description="Folder of model_card.json (only read).")
    dashboard_host: str = Field("127.0.0.1", description="Address the page, /api/* and /metrics listen on: this "
                                "machine only unless told otherwise, e.g. 0.0.0.0 (then set a password).")
    dashboard_port: int = Field(8000, ge=0, le=65535, description="Port of the page, /api/summary and /metrics.")
    dashboard_user: str = Field("monitor", pattern=r"^[^:]+$", description="User name for HTTP Basic auth.")
    dashboard_password: SecretStr | None = secret_field(
        None, min_length=1, description="Turns on HTTP Basic auth for everything on the dashboard's port, "
        "/metrics included. Or DASHBOARD_PASSWORD_FILE: a file holding it (Docker secrets).")
    queue_max_length: int = Field(
        10000, ge=1, description="Events the dashboard's queue keeps while it is down; older ones are dropped "
        "(they are in the CSV). Changing it needs the queue deleted first: RabbitMQ refuses a redeclaration.")
    upstream_metrics: str = Field(
        DEFAULT_UPSTREAMS, description="Comma-separated /metrics URLs of the other services, read for the "
        "dead-letter and join counts; 'none' for none (an empty variable means the default).")
    upstream_seconds: float = Field(5.0, gt=0, description="Seconds between two reads of those URLs.")
    drift_stale_seconds: float = Field(
        10.0, gt=0, description="Age past which logs/drift_summary.json (the drift service writes it every "
        "second) counts as stale: the drift panel and /api/drift then say the service is down or stuck.")
    push_seconds: float = Field(0.5, gt=0, description="Shortest time between two updates pushed to the page.")
    task: Literal["auto", "regression", "classification"] = Field(
        "auto", description="The figures to keep. auto: the model card's task, else classification once an "
        "event shows a text label or probabilities. A classifier with numeric labels and no probabilities "
        "needs classification here when its card is not in MODELS_DIR.")

    @property
    def upstream_urls(self) -> list[str]:
        if self.upstream_metrics.strip().lower() == "none":
            return []
        return [url.strip() for url in self.upstream_metrics.split(",") if url.strip()]


def topology(settings: Settings) -> Topology:
    queue = QueueSpec(DASHBOARD_EVENTS, bind_to=METRIC_EVENTS_EXCHANGE,
                      arguments=(("x-max-length", settings.queue_max_length), ("x-overflow", "drop-head")))
    return PIPELINE.with_queue(queue)


def observation_of_row(row: MetricRow) -> Observation:
    return Observation(row.id, row.y_true, row.y_pred, None, row.absolute_error)


def observation_of_event(event: MetricAdded) -> Observation:
    return Observation(event.id, event.y_true, event.y_pred, event.model_version, event.absolute_error,
                       event.probabilities)


class EventCounter:
    """The AMQP worker: catches up with the CSV at each connect, then counts the queue's events.
    `hint` says what TASK or the model card say about the task, asked before each batch."""

    def __init__(self, board: QualityBoard, tail: MetricLogTail | ShardedMetricLogTail, prefetch: int, clock=time.time,
                 hint: Callable[[], TaskHint] = TaskHint):
        self._board = board
        self._tail = tail
        self._prefetch = prefetch
        self._clock = clock
        self._hint = hint
        self._rows_refused = 0  # rows of the CSV the current task can't score (text labels in a regression)
        self._session: Session | None = None

    def catch_up(self) -> int:
        rows = [observation_of_row(row) for row in self._tail.read_new()]
        self._follow_task(rows)
        return self._count_rows(rows)

    def _count_rows(self, rows: list[Observation]) -> int:
        refused = [reason for reason in map(self._board.refusal, rows) if reason]
        if refused:
            self._rows_refused += len(refused)
            log.warning("%d rows of %s not counted, e.g. %s", len(refused), self._tail.path, refused[0])
        return self._board.add(rows)

    def on_connected(self, session: Session) -> None:
        self._session = session
        counted = self.catch_up()
        if counted:
            log.info("counted %d rows appended to %s since the last read", counted, self._tail.path)
        session.consume(DASHBOARD_EVENTS, self.on_batch, self._prefetch)

    def on_disconnected(self) -> None:
        self._session = None

    def on_batch(self, deliveries: list[Delivery]) -> None:
        now = self._clock()
        decoded = [(delivery, event) for delivery in deliveries
                   if (event := decode_or_dead_letter(self._session, MetricAdded, delivery)) is not None]
        self._follow_task([observation_of_event(event) for _, event in decoded])
        counted, observations = [], []
        for delivery, event in decoded:
            observation = observation_of_event(event)
            reason = self._board.refusal(observation)
            if reason:
                self._session.dead_letter(delivery, reason)
                continue
            if event.sent_at is not None:
                EVENT_AGE.observe(max(0.0, now - event.sent_at))
            observations.append(observation)
            counted.append(delivery)
        self._board.add(observations, arrived_at=now)
        for delivery in counted:
            delivery.ack()

    def _follow_task(self, observations: list[Observation]) -> None:
        """Switches the board to the task these observations are to be counted under, counting
        the whole CSV again if it had counted anything under the other one."""
        self._board.follow(self._hint())
        task = self._board.task_for(observations)
        if task == self._board.task:
            return
        read_before = self._board.count or self._rows_refused
        self._board.restart(task)
        if read_before:
            self._rows_refused = 0
            self._tail = self._tail.restarted()
            self._count_rows([observation_of_row(row) for row in self._tail.read_new()])
            log.info("the task is now %s: counted %d rows of %s again", task, self._board.count, self._tail.path)


class ModelCardWatcher:
    """The card learn_model wrote, read again whenever the file changes (by the web and the AMQP
    threads, hence the lock)."""

    def __init__(self, models_dir: Path):
        self._models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._stamp: tuple | None = ()
        self._card: dict = {}

    def current(self) -> dict:
        stamp = card_signature(self._models_dir)
        with self._lock:
            if stamp != self._stamp:
                self._stamp, self._card = stamp, self._read()
            return self._card

    def hint(self, task_setting: str = "auto") -> TaskHint:
        card = self.current()
        task = task_setting if task_setting in (REGRESSION, CLASSIFICATION) else card.get("task")
        return TaskHint(task, card.get("classes"), bool(card.get("predicts_proba")))

    def _read(self) -> dict:
        try:
            card = read_card(self._models_dir)
        except (ModelNotReady, ModelCorrupt) as problem:
            return {"error": str(problem)}
        return {"version": card.version, "trained_at": card.trained_at, "estimator": card.estimator,
                "holdout_mae": card.holdout_mae, "holdout_rmse": card.holdout_rmse, "holdout_r2": card.holdout_r2,
                "holdout_rows": card.holdout_rows, "train_rows": card.train_rows, "task": card.task,
                "classes": card.classes, "predicts_proba": card.predicts_proba, "holdout": card.holdout}


class QualityCollector:
    """Prometheus gauges of the running figures, read from the board at scrape time: the task's
    figures per window, and per model version (at most quality.MAX_VERSIONS of them, so the label
    set stays bounded) the events and the task's headline figures."""

    FIGURES = {
        "mae": "Mean absolute error of the model",
        "rmse": "Root mean squared error of the model",
        "r2": "Coefficient of determination (R²) of the model",
        "mape": "Mean absolute percentage error of the model, in percent, over rows with y_true != 0",
        "max_error": "Largest absolute error of the model",
        "accuracy": "Accuracy of the classifier",
        "balanced_accuracy": "Balanced accuracy (mean recall per class) of the classifier",
        "precision_macro": "Macro-averaged precision of the classifier",
        "recall_macro": "Macro-averaged recall of the classifier",
        "f1_macro": "Macro-averaged F1 score of the classifier",
        "log_loss": "Log loss of the classifier's probabilities",
        "brier": "Brier score of the classifier's probabilities",
        "roc_auc": "ROC AUC of the binary classifier's probabilities",
        "events": "Events counted",
    }

    def __init__(self, board: QualityBoard):
        self._board = board

    def collect(self):
        figures = self._board.figures()
        for name, description in self.FIGURES.items():
            key = "count" if name == "events" else name
            family = GaugeMetricFamily(f"mlmonitor_quality_{name}",
                                       f"{description}, over every event (window=all) or the last N.",
                                       labels=["window"])
            for window, values in figures.items():
                if values.get(key) is not None:
                    family.add_metric([window], values[key])
            yield family
        yield from self._per_version(self._board.by_version())

    def _per_version(self, by_version: dict[str, dict]):
        families = {}
        for version, windows in by_version.items():
            for window in ("all", "last_1000"):
                for key, value in windows[window].items():
                    name = "events" if key == "count" else key
                    if value is None:
                        continue
                    if name not in families:
                        families[name] = GaugeMetricFamily(
                            f"mlmonitor_quality_version_{name}",
                            f"{self.FIGURES[name]}, per model version ('unknown': rows restored from the CSV), "
                            "over all its events (window=all) or its last 1000.", labels=["version", "window"])
                    families[name].add_metric([version, window], value)
        yield from families.values()


def page_state(board: QualityBoard, card: ModelCardWatcher, upstream: UpstreamMetrics, settings: Settings) -> dict:
    return {**board.snapshot(), "model": card.current(), "pipeline": upstream.summary(),
            "queue": {"name": DASHBOARD_EVENTS, "max_length": settings.queue_max_length}}


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(Settings, argv, prog="dashboard")
    configure_logging("dashboard", settings.log_level)
    serve_metrics(settings.metrics_port, log, settings.metrics_host)
    board = QualityBoard()
    REGISTRY.register(QualityCollector(board))
    tail = ShardedMetricLogTail(settings.logs_dir)  # metric_log.csv and each partition's metric_log-<I>.csv
    card = ModelCardWatcher(settings.models_dir)
    worker = EventCounter(board, tail, settings.prefetch, hint=lambda: card.hint(settings.task))
    started = time.perf_counter()
    worker.catch_up()
    log.info("restored %d rows from %s in %.2fs (%s)", board.count, tail.path, time.perf_counter() - started,
             board.task)

    upstream = UpstreamMetrics(settings.upstream_urls, interval=settings.upstream_seconds)
    upstream.start()
    password = settings.dashboard_password
    auth = BasicAuth(settings.dashboard_user, password.get_secret_value()) if password else None
    drift = DriftView(settings.logs_dir, stale_seconds=settings.drift_stale_seconds)
    app = create_app(lambda: page_state(board, card, upstream, settings), push_seconds=settings.push_seconds,
                     auth=auth, drift=drift.state)
    server = WebServer(app, settings.dashboard_host, settings.dashboard_port)
    server.start()
    warn_if_exposed(settings.dashboard_host, server.port, auth, log)
    log.info("dashboard on http://localhost:%d/ (JSON at /api/summary and /api/drift, Prometheus at /metrics)",
             server.port)
    try:
        return run_worker(worker, settings.amqp_url, topology(settings), max_message_bytes=settings.max_message_bytes,
                          tls=settings.amqp_tls, queue_type=settings.queue_type)
    finally:
        upstream.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
