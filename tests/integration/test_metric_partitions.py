"""metric with K partitions and hot standbys, against the real broker: each id in exactly one shard, a
standby that takes over within 5 s of its active's SIGKILL, a K mismatch refused, and a fenced stale active."""

from __future__ import annotations

import csv
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from broker import BROKER_PORT, publish_raw
from mlmonitor.partitions import partition_of
from mlmonitor.topology import Y_PRED, Y_TRUE, partition_queue
from broker import queue_depth as messages_in_queue
from service_harness import (assert_alive, assert_no_dead_letters, output_of, wait_for_consumers,
                             wait_for_dead_letters, wait_for_output)
from waiting import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from tcp_proxy import TcpProxy  # noqa: E402

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

K = 2
PARTITION_QUEUES = [partition_queue(queue, partition, K) for partition in range(K) for queue in (Y_TRUE, Y_PRED)]


def shard_ids(logs_dir: Path, name: str) -> list[str]:
    path = logs_dir / name
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def all_shard_ids(logs_dir: Path) -> dict[str, list[str]]:
    return {path.name: shard_ids(logs_dir, path.name) for path in sorted(logs_dir.glob("metric_log*.csv"))}


def publish_pairs(amqp_url: str, ids: list[str]) -> None:
    """As a course producer does: straight to the y_true and y_pred queues through the default exchange."""
    publish_raw(amqp_url, Y_TRUE, [{"id": id, "body": 100.0 + index % 50} for index, id in enumerate(ids)])
    publish_raw(amqp_url, Y_PRED, [{"id": id, "body": 90.0, "model_version": "test"} for id in ids])


def start_metric(pipeline, name: str, partition: int, partitions: int = K, args: list[str] = (),
                 env: dict[str, str] | None = None):
    return pipeline.start("metric", ["--partitions", str(partitions), "--partition", str(partition), *args],
                          env={"LOG_NAME": name, **(env or {})}, name=name)


def test_k_2_puts_each_id_in_exactly_one_shard_and_both_halves_of_a_pair_in_the_same_one(
        pipeline, amqp_url, logs_dir):
    for partition in range(K):
        start_metric(pipeline, f"metric-{partition}", partition)
    wait_for_consumers(amqp_url, Y_TRUE, Y_PRED, *PARTITION_QUEUES)
    ids = [str(uuid.uuid4()) for _ in range(300)] + [f"course-{index}" for index in range(100)]
    publish_pairs(amqp_url, ids)

    wait_until(lambda: sum(map(len, all_shard_ids(logs_dir).values())) >= len(ids), timeout=60, interval=0.2,
               message=f"{len(ids)} rows over the shards")
    shards = all_shard_ids(logs_dir)
    assert set(shards) == {"metric_log-0.csv", "metric_log-1.csv"}, "no unpartitioned log with K = 2"
    assert all(shards.values()), f"a shard is empty: {[len(rows) for rows in shards.values()]}"
    for partition in range(K):
        rows = shards[f"metric_log-{partition}.csv"]
        assert len(rows) == len(set(rows))
        assert {partition_of(id, K) for id in rows} == {partition}
    assert sorted(id for rows in shards.values() for id in rows) == sorted(ids)
    assert_no_dead_letters(amqp_url, Y_TRUE, Y_PRED, *PARTITION_QUEUES)
    assert_alive(pipeline, "metric-0", "metric-1")


def test_a_standby_takes_over_within_5_s_of_its_active_s_sigkill_and_every_id_has_one_row(
        pipeline, amqp_url, logs_dir):
    start_metric(pipeline, "metric-0", 0)
    wait_for_output(pipeline, "metric-0", "active for partition 0 of 2")
    start_metric(pipeline, "metric-0-standby", 0)
    start_metric(pipeline, "metric-1", 1)
    wait_for_output(pipeline, "metric-0-standby", "standby for partition 0 of 2")
    wait_for_consumers(amqp_url, *PARTITION_QUEUES)

    ids = [str(uuid.uuid4()) for _ in range(1500)]
    stop = threading.Event()

    def stream():  # 50 pairs every 0.1 s, so that traffic flows across the kill
        for start in range(0, len(ids), 50):
            if stop.is_set():
                return
            publish_pairs(amqp_url, ids[start:start + 50])
            time.sleep(0.1)

    publisher = threading.Thread(target=stream)
    publisher.start()
    try:
        wait_until(lambda: len(shard_ids(logs_dir, "metric_log-0.csv")) >= 100, timeout=60, interval=0.05,
                   message="100 rows in shard 0")
        pipeline.kill("metric-0", signal.SIGKILL)
        killed_at = time.monotonic()
        rows_at_kill = len(shard_ids(logs_dir, "metric_log-0.csv"))
        assert publisher.is_alive(), "the stream ended before the kill; the test proves nothing"
        wait_until(lambda: len(shard_ids(logs_dir, "metric_log-0.csv")) > rows_at_kill, timeout=30, interval=0.02,
                   message="a row written by the standby")
        takeover_seconds = time.monotonic() - killed_at
    finally:
        publisher.join(120)
        stop.set()
    assert takeover_seconds < 5, f"the standby wrote its first row {takeover_seconds:.1f}s after the kill"
    assert "active for partition 0 of 2" in output_of(pipeline, "metric-0-standby")

    wait_until(lambda: sum(map(len, all_shard_ids(logs_dir).values())) >= len(ids), timeout=90, interval=0.2,
               message=f"{len(ids)} rows over the shards")
    written = [id for rows in all_shard_ids(logs_dir).values() for id in rows]
    assert sorted(written) == sorted(ids), "every id exactly once over the shards"
    assert_no_dead_letters(amqp_url, Y_TRUE, Y_PRED, *PARTITION_QUEUES)
    assert_alive(pipeline, "metric-0-standby", "metric-1")
    print(f"takeover: first row by the standby {takeover_seconds:.2f}s after the SIGKILL")


def test_a_metric_started_with_another_k_than_the_logs_hold_exits_2_with_one_line(pipeline, amqp_url, logs_dir):
    start_metric(pipeline, "metric-0", 0)
    wait_for_output(pipeline, "metric-0", "active for partition 0 of 2")
    mismatched = start_metric(pipeline, "metric-k3", 0, partitions=3)
    assert mismatched.wait(60) == 2
    assert f"{logs_dir}/ holds a K=2 layout; drain and follow docs/scaling.md to change K" in output_of(
        pipeline, "metric-k3")
    unpartitioned = pipeline.start("metric", [], env={"LOG_NAME": "metric-k1"}, name="metric-k1")
    assert unpartitioned.wait(60) == 2
    assert "holds a K=2 layout" in output_of(pipeline, "metric-k1")
    assert not (logs_dir / "metric_log.csv").exists()
    assert_alive(pipeline, "metric-0")


def test_an_active_cut_off_from_rabbitmq_hands_the_shard_to_its_standby_and_never_writes_again(
        pipeline, vhost, amqp_url, logs_dir):
    proxy = TcpProxy(BROKER_PORT).start()
    try:
        proxied_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
        pipeline.start("metric", ["--fence-seconds", "2"], env={"AMQP_URL": proxied_url, "LOG_NAME": "active"},
                       name="active")
        wait_for_output(pipeline, "active", "active for the unpartitioned metric")
        pipeline.start("metric", ["--fence-seconds", "2"], env={"LOG_NAME": "standby"}, name="standby")
        wait_for_output(pipeline, "standby", "standby for the unpartitioned metric")
        wait_for_consumers(amqp_url, Y_TRUE, Y_PRED)
        first, second, third = ([str(uuid.uuid4()) for _ in range(100)] for _ in range(3))
        publish_pairs(amqp_url, first)
        wait_until(lambda: len(shard_ids(logs_dir, "metric_log.csv")) >= 100, timeout=30, interval=0.1,
                   message="100 rows by the active")

        proxy.cut(down_seconds=8)  # the active can't reach RabbitMQ for 8 s: it fences itself off after 2 s
        wait_for_output(pipeline, "standby", "active for the unpartitioned metric", timeout=30)
        publish_pairs(amqp_url, second)
        wait_until(lambda: len(shard_ids(logs_dir, "metric_log.csv")) >= 200, timeout=30, interval=0.1,
                   message="100 more rows by the standby")
        wait_for_output(pipeline, "active", "released", timeout=30)
        wait_for_output(pipeline, "active", "connected to RabbitMQ at", timeout=60)  # back, as a standby
        publish_pairs(amqp_url, third)
        wait_until(lambda: len(shard_ids(logs_dir, "metric_log.csv")) >= 300, timeout=30, interval=0.1,
                   message="100 more rows once the old active is back")
        output = output_of(pipeline, "active")  # before the teardown stops the new active
    finally:
        proxy.close()

    after_release = output[output.index("released"):]
    assert "connected to RabbitMQ at" in after_release and "active for" not in after_release, after_release
    assert "wrote row" not in after_release and "rows written" not in after_release, after_release
    assert sorted(shard_ids(logs_dir, "metric_log.csv")) == sorted(first + second + third)
    assert_no_dead_letters(amqp_url, Y_TRUE, Y_PRED)
    assert_alive(pipeline, "active", "standby")


def test_a_router_dead_letters_a_message_it_can_t_decode_with_its_reason(pipeline, amqp_url, logs_dir):
    start_metric(pipeline, "metric-0", 0)
    wait_for_consumers(amqp_url, Y_TRUE, Y_PRED)
    publish_raw(amqp_url, Y_TRUE, [b"not json", {"id": "no-body"}])
    publish_pairs(amqp_url, ["fine"])  # partition 1's: it waits in its queue, as no metric-1 runs
    letters = wait_for_dead_letters(amqp_url, Y_TRUE, 2)
    assert sorted(body for body, _ in letters) == [b"not json", b'{"id": "no-body"}']
    assert all(reason for _, reason in letters)
    assert partition_of("fine", K) == 1
    wait_until(lambda: messages_in_queue(amqp_url, partition_queue(Y_TRUE, 1, K)) == 1, timeout=30,
               message="the good half routed to partition 1")
    assert_no_dead_letters(amqp_url, Y_PRED, *PARTITION_QUEUES)
