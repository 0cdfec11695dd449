"""metric's group commit: rows are written at once, made durable by one fsync off the IO loop, and
their events are published only once an fsync covers them; a failed fsync takes the rows back."""

from __future__ import annotations

import json
import queue
import threading

import pytest

from metric import MetricJoiner, Settings
from mlmonitor.messages import MetricAddedBatch, PredictionMessage, TargetMessage
from mlmonitor.metric_log import HEADER_LINE, MetricLogWriter
from mlmonitor.settings import load_settings
from mlmonitor.topology import METRIC_BATCHES_EXCHANGE
from fakes import FakeDelivery


class FakeSession:
    """Publishes are recorded and confirmed when the test says; thread callbacks wait in a queue."""

    is_open = True

    def __init__(self, confirm_batches_later: bool = False):
        self.published: list[bytes] = []
        self.confirms = []
        self.batches: list[tuple[bytes, bool]] = []  # drift's copies (body, mandatory), confirmed at once unless told
        self.batch_confirms = []
        self.confirm_batches_later = confirm_batches_later
        self.from_threads: queue.Queue = queue.Queue()

    def publish(self, exchange, routing_key, body, on_confirmed=None, headers=None, mandatory=True) -> None:
        if exchange == METRIC_BATCHES_EXCHANGE:
            self.batches.append((body, mandatory))
            if self.confirm_batches_later:
                self.batch_confirms.append(on_confirmed)
            else:
                on_confirmed()
            return
        self.published.append(body)
        self.confirms.append(on_confirmed)

    def call_threadsafe(self, callback) -> None:
        self.from_threads.put(callback)

    def run_thread_callbacks(self, count: int) -> None:
        for _ in range(count):
            self.from_threads.get(timeout=10)()


def pair(id: str) -> list[FakeDelivery]:
    return [FakeDelivery("y_true", TargetMessage(id=id, body=100.0).encode()),
            FakeDelivery("y_pred", PredictionMessage(id=id, body=90.0).encode())]


@pytest.fixture
def joiner(tmp_path):
    writer = MetricLogWriter(tmp_path / "metric_log.csv")
    joiner = MetricJoiner(load_settings(Settings, ["--logs-dir", str(tmp_path)]), writer)
    joiner._session = FakeSession()
    yield joiner
    joiner.close()
    writer.close()


def test_rows_are_written_at_once_and_one_fsync_covers_the_batches_written_while_it_waited(joiner, monkeypatch):
    session, writer = joiner._session, joiner._log
    gate, syncs = threading.Event(), []
    real_sync = writer.sync

    def gated_sync():
        syncs.append(1)
        assert gate.wait(10)
        return real_sync()

    monkeypatch.setattr(writer, "sync", gated_sync)
    first, second = pair("a"), pair("b")
    joiner.on_batch(first)
    joiner.on_batch(second)  # written while the first fsync is in flight
    assert writer.path.read_text().count("\n") == 3
    assert session.published == [] and len(syncs) == 1
    gate.set()
    session.run_thread_callbacks(1)
    assert len(syncs) == 1, "the one fsync in flight covered both batches"
    assert [b'"id":"a"' in body for body in session.published] == [True, False]
    assert not any(delivery.acked for delivery in first + second)
    for confirm in session.confirms:
        confirm()
    assert all(delivery.acked == 1 for delivery in first + second)


def test_a_pair_is_acked_once_its_event_and_drift_s_batch_of_its_group_commit_are_both_confirmed(joiner):
    joiner._session = session = FakeSession(confirm_batches_later=True)
    deliveries = pair("a") + pair("b")
    joiner.on_batch(deliveries)
    session.run_thread_callbacks(1)
    [(batch, mandatory)] = session.batches  # one message for the group commit, routable or not
    assert not mandatory
    assert [event.id for event in MetricAddedBatch.model_validate_json(batch).events] == ["a", "b"]
    for confirm in session.confirms:
        confirm()
    assert not any(delivery.acked for delivery in deliveries), "drift's copy is not confirmed yet"
    session.batch_confirms[0]()
    assert all(delivery.acked == 1 for delivery in deliveries)


def test_a_failed_fsync_takes_the_rows_back_and_a_retry_writes_them_once(joiner, monkeypatch):
    session, writer = joiner._session, joiner._log

    def failing_sync():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer, "sync", failing_sync)
    deliveries = pair("a")
    joiner.on_batch(deliveries)
    session.run_thread_callbacks(1)
    assert writer.path.read_text() == HEADER_LINE
    assert "a" not in writer.written_ids and session.published == []
    assert not any(delivery.acked for delivery in deliveries)

    monkeypatch.undo()
    joiner._retry_unwritten()
    session.run_thread_callbacks(1)
    assert writer.path.read_text().count("\na,") == 1
    assert len(session.published) == 1
    session.confirms[0]()
    assert all(delivery.acked == 1 for delivery in deliveries)


def test_after_a_restart_a_half_of_an_older_row_is_acked_at_once_and_one_of_the_last_rows_waits(tmp_path):
    rows = "".join(f"r{i},100.0,90.0,10.0\n" for i in range(3000))
    (tmp_path / "metric_log.csv").write_text(HEADER_LINE + rows)
    writer = MetricLogWriter(tmp_path / "metric_log.csv")
    joiner = MetricJoiner(load_settings(Settings, ["--logs-dir", str(tmp_path), "--prefetch", "100"]), writer)
    joiner._session = session = FakeSession()
    try:
        old, recent = pair("r5")[1], pair("r2999")[1]  # rows far back, and among the last 2 x prefetch
        joiner.on_batch([old, recent])
        assert old.acked == 1 and session.published == []
        assert recent.acked == 0 and len(joiner._buffer) == 1, "its event may be missing: released a tick later"
    finally:
        joiner.close()
        writer.close()


def test_a_half_of_a_row_written_but_not_yet_announced_waits_for_the_announcement(joiner):
    session = joiner._session
    deliveries = pair("a")
    joiner.on_batch(deliveries)
    session.run_thread_callbacks(1)  # written and fsynced; the event is not confirmed yet
    duplicate = pair("a")[1]
    joiner.on_batch([duplicate])
    assert duplicate.acked == 0, "acked before the event exists, a crash now would lose it"
    session.confirms[0]()
    assert [d.acked for d in deliveries + [duplicate]] == [1, 1, 1]


def test_halves_redelivered_after_a_reconnect_get_their_event_before_their_ack(joiner):
    session = joiner._session
    joiner.on_batch(pair("a"))
    session.run_thread_callbacks(1)  # the row is durable; the connection drops before the confirm
    joiner.on_disconnected()
    joiner._session = second = FakeSession()
    redelivered = pair("a")
    joiner.on_batch(redelivered)
    assert not any(d.acked for d in redelivered)
    second.run_thread_callbacks(1)
    assert len(second.published) == 1, "the event goes out again"
    second.confirms[0]()
    assert [d.acked for d in redelivered] == [1, 1]
    assert joiner._log.path.read_text().count("\na,") == 1


def test_after_a_restart_the_event_published_again_for_a_predecessor_s_row_carries_its_labels(tmp_path):
    (tmp_path / "metric_log.csv").write_text(HEADER_LINE + 'r0,150.0,140.5,9.5\nr1,yes,"no, thanks",0.75\nr2,1,0,1.0\n')
    writer = MetricLogWriter(tmp_path / "metric_log.csv")
    joiner = MetricJoiner(load_settings(Settings, ["--logs-dir", str(tmp_path)]), writer)
    joiner._session = session = FakeSession()
    try:
        lone_halves = [FakeDelivery("y_pred", PredictionMessage(id=id, body="no, thanks").encode())
                       for id in ("r1", "r2")]
        joiner.on_batch(lone_halves)
        joiner._expire_halves()
        joiner._expire_halves()  # still alone a whole tick later: its partner was acked before the restart
        events = sorted((json.loads(body) for body in session.published), key=lambda event: event["id"])
        assert events == [{"id": "r1", "y_true": "yes", "y_pred": "no, thanks", "absolute_error": 0.75},
                          {"id": "r2", "y_true": 1.0, "y_pred": 0.0, "absolute_error": 1.0}]
        for confirm in session.confirms:
            confirm()
        assert [delivery.acked for delivery in lone_halves] == [1, 1]
    finally:
        joiner.close()
        writer.close()
