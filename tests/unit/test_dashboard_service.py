"""The dashboard's handlers with fakes: the consumer, the CSV catch-up, the card, the upstream
metrics, the Prometheus gauges and the pushed snapshot."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest

from dashboard import EventCounter, ModelCardWatcher, QualityCollector, Settings, topology
from mlmonitor.messages import MetricAdded
from mlmonitor.metric_log import MetricLogTail, MetricLogWriter, MetricRow
from mlmonitor.model_store import CARD_NAME, ModelCard
from mlmonitor.topology import DASHBOARD_EVENTS, METRIC_ADDED, METRIC_EVENTS_EXCHANGE
from quality import QualityBoard
from upstream import UpstreamMetrics, instances, pipeline_counts
from web import SnapshotCache


class FakeDelivery:
    def __init__(self, body: bytes, board: QualityBoard | None = None):
        self.queue = DASHBOARD_EVENTS
        self.body = body
        self.acked = False
        self.count_when_acked = None
        self._board = board

    def ack(self) -> None:
        self.acked = True
        self.count_when_acked = self._board.count if self._board else None


class FakeSession:
    def __init__(self):
        self.dead_letters: list[tuple[bytes, str]] = []
        self.consuming: list[str] = []

    def dead_letter(self, delivery, reason: str) -> None:
        self.dead_letters.append((delivery.body, reason))
        delivery.ack()

    def consume(self, queue, on_batch, prefetch) -> None:
        self.consuming.append(queue)


def event(id: str, y_true: float = 150.0, y_pred: float = 140.0) -> bytes:
    return MetricAdded(id=id, y_true=y_true, y_pred=y_pred, absolute_error=abs(y_true - y_pred),
                       model_version="abc123", sent_at=1000.0).encode()


@pytest.fixture
def csv_path(tmp_path):
    return tmp_path / "metric_log.csv"


@pytest.fixture
def writer(csv_path):
    writer = MetricLogWriter(csv_path, fsync=False)
    yield writer
    writer.close()


@pytest.fixture
def board():
    return QualityBoard()


@pytest.fixture
def counter(board, csv_path):
    counter = EventCounter(board, MetricLogTail(csv_path), prefetch=10, clock=lambda: 1002.5)
    counter.on_connected(FakeSession())
    return counter


def test_events_are_counted_before_they_are_acked(board, counter):
    deliveries = [FakeDelivery(event("a"), board), FakeDelivery(event("b", 100.0, 130.0), board)]
    counter.on_batch(deliveries)
    assert [d.count_when_acked for d in deliveries] == [2, 2]
    snapshot = board.snapshot()
    assert snapshot["count"] == 2 and snapshot["mae"] == 20.0
    assert snapshot["events_model_version"] == "abc123" and snapshot["last_event_at"] == 1002.5


def test_bad_input_is_dead_lettered_and_not_counted(board, csv_path):
    session = FakeSession()
    counter = EventCounter(board, MetricLogTail(csv_path), prefetch=10)
    counter.on_connected(session)
    bad = [b"{not json",
           b'{"id": "x", "y_true": NaN, "y_pred": 2, "absolute_error": 1}',
           b'{"id": "z", "y_true": 1, "y_pred": 2, "absolute_error": -1}',
           b'{"id": "w", "y_true": 1, "y_pred": 2}',
           b'{"id": "y"}']
    deliveries = [FakeDelivery(body) for body in bad] + [FakeDelivery(event("good"))]
    counter.on_batch(deliveries)
    assert [body for body, _ in session.dead_letters] == bad
    reasons = [reason for _, reason in session.dead_letters]
    assert all(reasons)
    assert "y_true" in reasons[1] and "absolute_error" in reasons[2] and "absolute_error" in reasons[3]
    assert all(d.acked for d in deliveries)
    assert board.count == 1


def test_a_redelivered_event_or_a_row_already_restored_counts_once(board, counter, writer):
    writer.append([MetricRow.from_pair("a", 150.0, 140.0)])
    counter.catch_up()
    deliveries = [FakeDelivery(event("a")), FakeDelivery(event("b")), FakeDelivery(event("b"))]
    counter.on_batch(deliveries)
    assert board.count == 2
    assert all(d.acked for d in deliveries)


def test_each_connect_catches_up_with_rows_written_since_the_last_read(board, csv_path, writer):
    counter = EventCounter(board, MetricLogTail(csv_path), prefetch=10)
    writer.append([MetricRow.from_pair(f"old-{i}", 100.0, 90.0) for i in range(3)])
    counter.catch_up()  # the restore at start
    writer.append([MetricRow.from_pair(f"gap-{i}", 100.0, 95.0) for i in range(2)])  # queue not yet bound
    session = FakeSession()
    counter.on_connected(session)
    assert board.count == 5
    assert session.consuming == [DASHBOARD_EVENTS]


def test_the_dashboard_queue_is_its_own_bounded_queue_on_the_event_exchange():
    declared = topology(Settings(_cli_parse_args=["--queue-max-length", "123"]))
    queues = {queue.name: queue for queue in declared.queues}
    assert queues[METRIC_ADDED].bind_to == METRIC_EVENTS_EXCHANGE  # plot's queue stays as it is
    mine = queues[DASHBOARD_EVENTS]
    assert mine.bind_to == METRIC_EVENTS_EXCHANGE
    assert dict(mine.arguments) == {"x-max-length": 123, "x-overflow": "drop-head"}


def test_the_card_is_read_again_when_it_changes(tmp_path):
    watcher = ModelCardWatcher(tmp_path)
    assert "no model card" in watcher.current()["error"]
    card = ModelCard(version="v1", trained_at="2026-01-01T00:00:00Z", estimator="Ridge", feature_names=["a"],
                     holdout_mae=43.0, holdout_rmse=53.0, holdout_r2=0.45, train_rows=353, holdout_rows=89,
                     sklearn_version="1.9")
    (tmp_path / CARD_NAME).write_text(json.dumps(asdict(card)))
    assert watcher.current()["version"] == "v1" and watcher.current()["holdout_mae"] == 43.0
    (tmp_path / CARD_NAME).write_text(json.dumps({**asdict(card), "version": "version-two"}))
    assert watcher.current()["version"] == "version-two"
    (tmp_path / CARD_NAME).write_text("{broken")
    assert "not a valid model card" in watcher.current()["error"]


def exposition(dead: dict[str, int], expired: dict[str, int] | None = None, buffer: int | None = None,
               paused: int | None = None) -> str:
    registry = CollectorRegistry()
    dead_counter = Counter("mlmonitor_messages_dead_lettered_total", "d", ["queue"], registry=registry)
    for queue, count in dead.items():
        dead_counter.labels(queue).inc(count)
    if expired is not None:
        expired_counter = Counter("mlmonitor_join_expired_halves_total", "e", ["queue"], registry=registry)
        for queue, count in expired.items():
            expired_counter.labels(queue).inc(count)
    if buffer is not None:
        Gauge("mlmonitor_join_buffer_halves", "b", registry=registry).set(buffer)
    if paused is not None:
        Gauge("mlmonitor_features_paused", "p", registry=registry).set(paused)
    return generate_latest(registry).decode()


def test_pipeline_counts_add_up_the_services_expositions():
    counts = pipeline_counts([
        exposition({"features": 1}, paused=1),
        exposition({"y_true": 3, "y_pred": 2}, expired={"y_true": 2, "y_pred": 1}, buffer=7),
        exposition({"y_true": 1}),
    ])
    assert counts["dead_lettered"] == {"features": 1, "y_pred": 2, "y_true": 4}
    assert counts["dead_lettered_total"] == 7
    assert counts["expired_halves"] == {"y_pred": 1, "y_true": 2}
    assert counts["expired_halves_total"] == 3
    assert counts["join_buffer_halves"] == 7
    assert pipeline_counts([])["join_buffer_halves"] is None
    assert counts["features_paused"] == "yes"
    assert pipeline_counts([exposition({}, paused=0)])["features_paused"] == "no"
    assert pipeline_counts([])["features_paused"] is None


def test_a_source_that_stops_answering_keeps_its_last_figures():
    answers = {"http://metric/metrics": exposition({"y_true": 5})}

    def fetcher(url, timeout):
        if url not in answers:
            raise ConnectionRefusedError("refused")
        return answers[url]

    upstream = UpstreamMetrics(["http://metric/metrics", "http://plot/metrics"], fetcher=fetcher, clock=lambda: 9.0,
                               resolve=resolver({}))
    upstream.poll()
    summary = upstream.summary()
    assert summary["dead_lettered"]["y_true"] == 5
    assert [source["reachable"] for source in summary["sources"]] == [True, False]
    assert "refused" in summary["sources"][1]["error"]
    del answers["http://metric/metrics"]
    upstream.poll()
    summary = upstream.summary()
    assert summary["dead_lettered"]["y_true"] == 5
    assert [source["reachable"] for source in summary["sources"]] == [False, False]


def resolver(table: dict[str, list[str]]):
    """A getaddrinfo over `table` (name -> IPv4 addresses), as Docker's DNS answers for a compose service."""

    def resolve(host, port, family, kind):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, kind, 6, "", (address, port)) for address in table[host]]

    return resolve


def dead_lettered_upstream(summary: dict) -> dict[str, int]:
    """The summary's dead-letter counts less this test process's own registry, which the summary adds and
    other tests count into."""
    own = pipeline_counts([generate_latest(REGISTRY).decode()])["dead_lettered"]
    return {queue: count - own.get(queue, 0) for queue, count in summary["dead_lettered"].items()
            if count - own.get(queue, 0)}


def test_a_source_run_as_replicas_is_read_at_every_address_and_their_figures_add_up():
    names = {"model": ["172.18.0.7", "172.18.0.5"], "metric": ["172.18.0.9"]}
    answers = {"http://172.18.0.5:9102/metrics": exposition({"features": 2}),
               "http://172.18.0.7:9102/metrics": exposition({"features": 3}),
               "http://metric:9103/metrics": exposition({"y_true": 1})}

    def fetcher(url, timeout):
        if url not in answers:
            raise ConnectionRefusedError("refused")
        return answers[url]

    upstream = UpstreamMetrics(["http://model:9102/metrics", "http://metric:9103/metrics"], fetcher=fetcher,
                               clock=lambda: 9.0, resolve=resolver(names))
    upstream.poll()
    summary = upstream.summary()
    assert dead_lettered_upstream(summary) == {"features": 5, "y_true": 1}
    assert [(source["instances"], source["reachable"]) for source in summary["sources"]] == [(2, True), (1, True)]
    del answers["http://172.18.0.7:9102/metrics"]  # one replica stops answering: its last figures stay
    upstream.poll()
    summary = upstream.summary()
    assert dead_lettered_upstream(summary)["features"] == 5
    assert not summary["sources"][0]["reachable"] and "172.18.0.7" in summary["sources"][0]["error"]
    names["model"] = ["172.18.0.5", "172.18.0.8"]  # scaled: .7 gone, .8 new and not answering yet
    upstream.poll()
    assert dead_lettered_upstream(upstream.summary())["features"] == 2


def test_only_a_name_with_several_addresses_is_expanded():
    resolve = resolver({"model": ["10.0.0.2", "10.0.0.1"], "plot": ["10.0.0.3"]})
    assert instances("http://model:9102/metrics", resolve) == ["http://10.0.0.1:9102/metrics",
                                                                "http://10.0.0.2:9102/metrics"]
    assert instances("http://user:pw@model/metrics", resolve) == ["http://user:pw@10.0.0.1:80/metrics",
                                                                  "http://user:pw@10.0.0.2:80/metrics"]
    for url in ("http://plot:9104/metrics", "http://localhost:9102/metrics", "http://127.0.0.1:9102/metrics",
                "http://[::1]:9102/metrics", "http://nowhere:9102/metrics"):
        assert instances(url, resolve) == [url]


def test_quality_gauges_per_window(board):
    collector = QualityCollector(board)
    empty = {(sample.name, sample.labels["window"]): sample.value
             for family in collector.collect() for sample in family.samples}
    assert empty == {("mlmonitor_quality_events", window): 0 for window in ("all", "last_100", "last_1000")}
    counter = EventCounter(board, MetricLogTail("/nonexistent/metric_log.csv"), prefetch=1)
    counter.on_connected(FakeSession())
    counter.on_batch([FakeDelivery(event("a", 100.0, 90.0)), FakeDelivery(event("b", 100.0, 120.0))])
    samples = {(sample.name, sample.labels["window"]): sample.value
               for family in collector.collect() for sample in family.samples}
    assert samples[("mlmonitor_quality_mae", "all")] == 15.0
    assert samples[("mlmonitor_quality_mae", "last_100")] == 15.0
    assert samples[("mlmonitor_quality_rmse", "all")] == pytest.approx((250.0) ** 0.5)
    assert samples[("mlmonitor_quality_events", "last_1000")] == 2
    assert ("mlmonitor_quality_r2", "all") not in samples  # undefined for a constant y_true


def test_snapshot_cache_builds_at_most_once_per_interval():
    now = [0.0]
    builds = []

    def build():
        builds.append(now[0])
        return {"count": len(builds)}

    cache = SnapshotCache(build, max_age=0.25, clock=lambda: now[0])
    assert json.loads(cache.text()) == {"count": 1}
    now[0] = 0.1
    assert json.loads(cache.text()) == {"count": 1}
    now[0] = 0.3
    assert json.loads(cache.text()) == {"count": 2}
    assert builds == [0.0, 0.3]


def test_snapshot_cache_refuses_nan():
    with pytest.raises(ValueError):
        SnapshotCache(lambda: {"mae": float("nan")}, max_age=1).text()


def test_upstream_metrics_none_reads_no_other_service(monkeypatch):
    from dashboard import Settings

    monkeypatch.setenv("UPSTREAM_METRICS", "none")
    assert Settings(_cli_parse_args=[]).upstream_urls == []
    monkeypatch.setenv("UPSTREAM_METRICS", "")  # an empty variable means the default
    assert len(Settings(_cli_parse_args=[]).upstream_urls) == 5
