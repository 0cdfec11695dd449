"""A live web page of the model's quality, at http://localhost:8000/ (DASHBOARD_PORT).

At start it restores every row of `logs/metric_log.csv`; then it counts each `metric_added` event
from its own queue `metric_added.dashboard`, bound to the `metric_events` exchange beside plot's
queue, so it takes nothing away from plot. An event is acked once it is counted; an id already
counted (a redelivery, or a row already read from the CSV) is not counted again.

The queue is durable and bounded (x-max-length, dropping the oldest): while the dashboard is down
it keeps at most `--queue-max-length` events, not an ever-growing backlog, because everything it
drops is already in the CSV. At each connect, once the queue is declared and bound, the dashboard
reads the rows appended to the CSV since its last read, which covers the events dropped from a full
queue and those published before the queue first existed.

Also serves GET /api/summary (JSON) and GET /metrics (Prometheus) on the same port; see web.py.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field

from mlmonitor.amqp import Delivery, Session, decode_or_dead_letter, run_worker
from mlmonitor.logs import configure_logging
from mlmonitor.messages import MetricAdded
from mlmonitor.metric_log import MetricLogTail, MetricRow
from mlmonitor.model_store import CARD_NAME, ModelCorrupt, ModelNotReady, read_card
from mlmonitor.observability import serve_metrics
from mlmonitor.settings import ConsumerSettings, load_settings
from mlmonitor.topology import DASHBOARD_EVENTS, METRIC_EVENTS_EXCHANGE, PIPELINE, QueueSpec, Topology
from quality import Observation, QualityBoard
from upstream import UpstreamMetrics
from web import WebServer, create_app

log = logging.getLogger("dashboard")

DEFAULT_UPSTREAMS = ",".join(f"http://localhost:{port}/metrics" for port in (9101, 9102, 9103, 9104))

EVENT_AGE = Histogram(
    "mlmonitor_event_age_seconds",
    "Seconds from an event's sent_at (when features produced it) to the dashboard receiving it: "
    "the pipeline's end-to-end latency.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


class Settings(ConsumerSettings):
    logs_dir: Path = Field(Path("logs"), description="Folder of metric_log.csv (only read).")
    models_dir: Path = Field(Path("models"), description="Folder of model_card.json (only read).")
    dashboard_host: str = Field("0.0.0.0", description="Address the page, /api/summary and /metrics listen on.")
    dashboard_port: int = Field(8000, ge=0, le=65535, description="Port of the page, /api/summary and /metrics.")
    queue_max_length: int = Field(
        10000, ge=1, description="Events the dashboard's queue keeps while it is down; older ones are dropped "
        "(they are in the CSV). Changing it needs the queue deleted first: RabbitMQ refuses a redeclaration.")
    upstream_metrics: str = Field(
        DEFAULT_UPSTREAMS, description="Comma-separated /metrics URLs of the other services, read for the "
        "dead-letter and join counts ('' for none).")
    upstream_seconds: float = Field(5.0, gt=0, description="Seconds between two reads of those URLs.")
    push_seconds: float = Field(0.5, gt=0, description="Shortest time between two updates pushed to the page.")

    @property
    def upstream_urls(self) -> list[str]:
        return [url.strip() for url in self.upstream_metrics.split(",") if url.strip()]


def topology(settings: Settings) -> Topology:
    queue = QueueSpec(DASHBOARD_EVENTS, bind_to=METRIC_EVENTS_EXCHANGE,
                      arguments=(("x-max-length", settings.queue_max_length), ("x-overflow", "drop-head")))
    return PIPELINE.with_queue(queue)


def observation_of_row(row: MetricRow) -> Observation:
    return Observation(row.id, row.y_true, row.y_pred)


def observation_of_event(event: MetricAdded) -> Observation:
    return Observation(event.id, event.y_true, event.y_pred, event.model_version)


class EventCounter:
    """The AMQP worker: catches up with the CSV at each connect, then counts the queue's events."""

    def __init__(self, board: QualityBoard, tail: MetricLogTail, prefetch: int, clock=time.time):
        self._board = board
        self._tail = tail
        self._prefetch = prefetch
        self._clock = clock
        self._session: Session | None = None

    def catch_up(self) -> int:
        return self._board.add(observation_of_row(row) for row in self._tail.read_new())

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
        counted, observations = [], []
        for delivery in deliveries:
            event = decode_or_dead_letter(self._session, MetricAdded, delivery)
            if event is None:
                continue
            if event.sent_at is not None:
                EVENT_AGE.observe(max(0.0, now - event.sent_at))
            observations.append(observation_of_event(event))
            counted.append(delivery)
        self._board.add(observations, arrived_at=now)
        for delivery in counted:
            delivery.ack()


class ModelCardWatcher:
    """The card learn_model wrote, read again whenever the file changes."""

    def __init__(self, models_dir: Path):
        self._models_dir = Path(models_dir)
        self._stamp: tuple | None = ()
        self._card: dict = {}

    def current(self) -> dict:
        try:
            status = (self._models_dir / CARD_NAME).stat()
            stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._stamp, self._card = stamp, self._read()
        return self._card

    def _read(self) -> dict:
        try:
            card = read_card(self._models_dir)
        except (ModelNotReady, ModelCorrupt) as problem:
            return {"error": str(problem)}
        return {"version": card.version, "trained_at": card.trained_at, "estimator": card.estimator,
                "holdout_mae": card.holdout_mae, "holdout_rmse": card.holdout_rmse, "holdout_r2": card.holdout_r2,
                "holdout_rows": card.holdout_rows, "train_rows": card.train_rows}


class QualityCollector:
    """Prometheus gauges of the running figures, read from the board at scrape time."""

    FIGURES = {
        "mae": "Mean absolute error of the model",
        "rmse": "Root mean squared error of the model",
        "r2": "Coefficient of determination (R²) of the model",
        "mape": "Mean absolute percentage error of the model, in percent, over rows with y_true != 0",
        "max_error": "Largest absolute error of the model",
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
                if values[key] is not None:
                    family.add_metric([window], values[key])
            yield family


def page_state(board: QualityBoard, card: ModelCardWatcher, upstream: UpstreamMetrics, settings: Settings) -> dict:
    return {**board.snapshot(), "model": card.current(), "pipeline": upstream.summary(),
            "queue": {"name": DASHBOARD_EVENTS, "max_length": settings.queue_max_length}}


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(Settings, argv, prog="dashboard")
    configure_logging("dashboard", settings.log_level)
    serve_metrics(settings.metrics_port, log)
    board = QualityBoard()
    REGISTRY.register(QualityCollector(board))
    tail = MetricLogTail(settings.logs_dir / "metric_log.csv")
    worker = EventCounter(board, tail, settings.prefetch)
    started = time.perf_counter()
    worker.catch_up()
    log.info("restored %d rows from %s in %.2fs", board.count, tail.path, time.perf_counter() - started)

    upstream = UpstreamMetrics(settings.upstream_urls, interval=settings.upstream_seconds)
    upstream.start()
    card = ModelCardWatcher(settings.models_dir)
    app = create_app(lambda: page_state(board, card, upstream, settings), push_seconds=settings.push_seconds)
    server = WebServer(app, settings.dashboard_host, settings.dashboard_port)
    server.start()
    log.info("dashboard on http://localhost:%d/ (JSON at /api/summary, Prometheus at /metrics)", server.port)
    try:
        return run_worker(worker, settings.amqp_url, topology(settings))
    finally:
        upstream.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
