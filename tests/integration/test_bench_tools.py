"""The bench's tools take AMQP_URL as the services do, a cluster's nodes comma-separated, and tail every
partition's shard of the metric log."""

from __future__ import annotations

import sys
from pathlib import Path

import pika
import pytest

from broker import amqp_url_for, connect, publish_raw
from mlmonitor.topology import FEATURES
from waiting import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bare  # noqa: E402
from observe import CsvTail, DriftTail, NewLines, Sampler  # noqa: E402

pytestmark = pytest.mark.broker
NOBODY_LISTENS = "amqp://guest:guest@127.0.0.1:1/"  # refused at once: a node that is down


def test_bare_declares_on_the_first_node_that_answers(vhost):
    parameters = bare.declare_on_a_node(f"{NOBODY_LISTENS},{amqp_url_for(vhost)}")

    assert parameters.port == 5672 and parameters.virtual_host == vhost
    connection = connect(amqp_url_for(vhost))
    try:
        assert connection.channel().queue_declare(FEATURES, passive=True).method.message_count == 0
    finally:
        connection.close()


def test_sampler_reads_depths_through_a_node_that_answers(vhost):
    bare.declare_on_a_node(amqp_url_for(vhost))
    publish_raw(amqp_url_for(vhost), FEATURES, [b"[1]", b"[2]", b"[3]"])
    sampler = Sampler(f"{NOBODY_LISTENS},{amqp_url_for(vhost)}", [FEATURES], {})
    sampler.start()
    try:
        wait_until(lambda: sampler.error is not None or any(d[FEATURES] == 3 for _, d in sampler.depths), 30,
                   message="a sample of 3 messages in features")
    finally:
        sampler.stop()
    assert sampler.error is None


def test_csv_tail_reads_every_shard(tmp_path):
    shards = [tmp_path / "metric_log-0.csv", tmp_path / "metric_log-1.csv"]
    shards[0].write_text("id,y_true,y_pred,error\na,1,2,1\n")
    tail = CsvTail(shards)
    tail.start()
    try:
        shards[1].write_text("id,y_true,y_pred,error\nb,1,2,1\nc,1,3,2\n")
        with open(shards[0], "a") as handle:
            handle.write("d,1,1,0\n")
        wait_until(lambda: tail.rows >= 4, 10, message="4 rows")
    finally:
        tail.stop()
    assert sorted(tail.ids) == ["a", "b", "c", "d"]
    assert tail.seen_at == sorted(tail.seen_at)


def test_new_lines_holds_a_partial_line_back_until_it_is_whole(tmp_path):
    path = tmp_path / "drift.log"
    lines = NewLines(path)
    assert lines.read() is None  # not there yet
    path.write_bytes(b"p 1\np 2\no 1")
    assert lines.read() == [b"p 1", b"p 2"]
    assert lines.read() is None
    with open(path, "ab") as handle:
        handle.write(b" 2\n")
    assert lines.read() == [b"o 1 2"]


def test_drift_tail_counts_predictions_and_outcomes(tmp_path):
    path = tmp_path / "drift.log"
    tail = DriftTail(path, interval=0.01)
    tail.start()
    try:
        path.write_bytes(b"p a\np b\no a\n")
        wait_until(lambda: tail.caught_up(1), 10, message="one outcome")
        with open(path, "ab") as handle:
            handle.write(b"o b\n")
        wait_until(lambda: tail.caught_up(2), 10, message="two of each")
    finally:
        tail.stop()
    assert (tail.predictions, tail.outcomes) == (2, 2)


def test_bare_gives_up_when_no_node_answers():
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        bare.declare_on_a_node(f"{NOBODY_LISTENS},amqp://guest:guest@127.0.0.1:2/")
