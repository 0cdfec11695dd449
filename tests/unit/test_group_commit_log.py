"""GroupCommitLog, the durable side of metric's log, without a broker or a joiner; and the shard's lock."""

from __future__ import annotations

import queue
import threading

import pytest

from mlmonitor.metric_log import HEADER_LINE, FenceLost, GroupCommitLog, MetricLogWriter, MetricRow, ShardLock


class Item:
    def __init__(self, id: str):
        self.row = MetricRow(id, 100.0, 90.0, 10.0)


class Loop:
    """Stands for the session: callbacks from the fsync thread wait here until the test runs them."""

    def __init__(self):
        self.callbacks: queue.Queue = queue.Queue()

    def call_threadsafe(self, callback) -> None:
        self.callbacks.put(callback)

    def run(self, count: int = 1) -> None:
        for _ in range(count):
            self.callbacks.get(timeout=10)()


@pytest.fixture
def log_and_loop(tmp_path):
    loop, durable, written = Loop(), [], []
    writer = MetricLogWriter(tmp_path / "metric_log.csv")
    log = GroupCommitLog(writer, lambda: loop, on_durable=durable.extend, on_written=written.extend)
    yield log, loop, durable, written
    log.close()
    writer.close()


def test_one_fsync_at_a_time_covers_the_batches_written_while_it_waited(log_and_loop, monkeypatch):
    log, loop, durable, written = log_and_loop
    gate, real_sync, syncs = threading.Event(), log.writer.sync, []
    monkeypatch.setattr(log.writer, "sync", lambda: syncs.append(1) or (gate.wait(10) and real_sync()))
    first, second = Item("a"), Item("b")
    log.write([first])
    log.write([second])  # written while the first fsync is in flight
    assert [row.id for row in written] == ["a", "b"] and durable == []
    gate.set()
    loop.run()
    assert durable == [first, second] and len(syncs) == 1


def test_a_failed_fsync_takes_the_rows_back_and_the_retry_writes_each_once(log_and_loop, monkeypatch):
    log, loop, durable, _ = log_and_loop
    monkeypatch.setattr(log.writer, "sync", lambda: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    item = Item("a")
    log.write([item])
    loop.run()
    assert log.writer.path.read_text() == HEADER_LINE and "a" not in log.writer.written_ids
    later = Item("b")
    log.write([later])  # the log is failing: waits for the retry
    assert log.writer.path.read_text() == HEADER_LINE
    monkeypatch.undo()
    log.retry()
    loop.run()
    assert durable == [item, later]
    assert log.writer.path.read_text() == HEADER_LINE + "a,100.0,90.0,10.0\nb,100.0,90.0,10.0\n"


def test_no_row_is_written_once_the_fence_is_lost(tmp_path):
    lock = ShardLock(tmp_path / "metric_log.csv")
    assert lock.acquire(block=False)
    writer = MetricLogWriter(tmp_path / "metric_log.csv")
    log = GroupCommitLog(writer, Loop, on_durable=lambda items: None, check_fence=lock.check)
    try:
        lock.release()
        with pytest.raises(FenceLost):
            log.write([Item("a")])
        assert writer.path.read_text() == HEADER_LINE
    finally:
        log.close()
        writer.close()


def test_the_shard_lock_has_one_holder_and_a_waiter_gets_it_when_released(tmp_path):
    active, standby = ShardLock(tmp_path / "metric_log-0.csv"), ShardLock(tmp_path / "metric_log-0.csv")
    assert active.acquire(block=False)
    active.check()
    assert not standby.acquire(block=False)
    with pytest.raises(FenceLost):
        standby.check()
    waiter = threading.Thread(target=standby.acquire)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "the standby waits while the active holds the lock"
    active.release()
    waiter.join(10)
    assert standby.held and not active.held
    standby.check()
    standby.release()
