"""features publishes no further than --max-backlog ready messages ahead of the pipeline, and goes
on as the queues drain: a source faster than the pipeline builds a bounded backlog."""

from __future__ import annotations

import pytest

from broker import drain, queue_depth
from mlmonitor.topology import FEATURES, Y_TRUE
from run_pipeline import Pipeline
from service_harness import declare_topology, output_of
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

MAX_BACKLOG = 200
IN_FLIGHT = 100  # --max-unconfirmed: published events that a depth poll may not count yet
COUNT = 3000


def test_features_at_full_speed_keeps_the_queues_within_max_backlog_and_finishes_as_they_drain(amqp_url, tmp_path):
    pipeline = Pipeline(env={"AMQP_URL": amqp_url}, output_dir=tmp_path / "output")
    deepest_seen = []

    def deepest() -> int:
        depth = max(queue_depth(amqp_url, FEATURES), queue_depth(amqp_url, Y_TRUE))
        deepest_seen.append(depth)
        return depth

    declare_topology(amqp_url)
    try:
        features = pipeline.start("features", ["--rate", "0", "--count", str(COUNT), "--seed", "1",
                                               "--max-backlog", str(MAX_BACKLOG), "--max-unconfirmed", str(IN_FLIGHT)])
        wait_until(lambda: deepest() >= MAX_BACKLOG, timeout=30, message="the queues to fill to --max-backlog")
        assert features.poll() is None, "nothing consumes, so features waits instead of publishing all it has"
        received = {FEATURES: 0, Y_TRUE: 0}

        def consume_a_little() -> bool:
            deepest()
            for queue in received:
                received[queue] += len(drain(amqp_url, queue))
            return features.poll() is not None

        wait_until(consume_a_little, timeout=90, interval=0.2, message="features to finish")
        output = output_of(pipeline, "features")
        assert features.returncode == 0, output
        for queue in received:
            received[queue] += len(drain(amqp_url, queue))
        assert received == {FEATURES: COUNT, Y_TRUE: COUNT}
        assert max(deepest_seen) <= MAX_BACKLOG + IN_FLIGHT
        assert f"held {MAX_BACKLOG}" in output or "pauses for the backlog" in output
        assert f"all {COUNT} events published and confirmed" in output
    finally:
        pipeline.stop_all()
