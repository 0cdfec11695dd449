"""features --data examples/houses.csv against the real broker: the table's rows in order, as object
bodies with their targets under paired ids, looping past the end; and backpressure holds as before."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from broker import drain, queue_depth
from mlmonitor.topology import FEATURES, Y_TRUE
from run_pipeline import ROOT, Pipeline
from service_harness import declare_topology, free_port, output_of
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

HOUSES = ROOT / "examples" / "houses.csv"


def expected_rows(path: Path, target: str) -> list[tuple[dict, float]]:
    """The table as the wire format should carry it: numbers as floats, text as strings, null where missing."""
    table = pd.read_csv(path)
    features = table.drop(columns=[target]).astype(object).where(table.drop(columns=[target]).notna(), None)
    bodies = [{name: value if isinstance(value, str) or value is None else float(value) for name, value in row.items()}
              for row in features.to_dict("records")]
    return list(zip(bodies, table[target].astype(float).tolist()))


def taken(amqp_url: str, queue: str) -> list[dict]:
    return [json.loads(body) for body, _ in drain(amqp_url, queue)]


def test_replays_the_table_in_order_with_paired_ids_looping_past_its_end(amqp_url, tmp_path):
    rows = expected_rows(HOUSES, "price")
    assert len(rows) == 2000 and any(None in body.values() for body, _ in rows), "the example has missing values"
    count = 2500
    pipeline = Pipeline(env={"AMQP_URL": amqp_url}, output_dir=tmp_path / "output")
    declare_topology(amqp_url)
    try:
        exit_code = pipeline.run_to_end("features", ["--data", str(HOUSES), "--target", "price", "--count", str(count),
                                                     "--rate", "0", "--order", "in-order"], timeout=90)
        assert exit_code == 0, output_of(pipeline, "features")
    finally:
        pipeline.stop_all()
    features, targets = taken(amqp_url, FEATURES), taken(amqp_url, Y_TRUE)
    assert len(features) == len(targets) == count
    expected = [rows[index % len(rows)] for index in range(count)]
    assert [message["body"] for message in features] == [body for body, _ in expected]
    assert [message["body"] for message in targets] == [target for _, target in expected]
    assert [message["id"] for message in features] == [message["id"] for message in targets]
    assert len({message["id"] for message in features}) == count


def paused(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
            return "mlmonitor_features_paused 1.0" in response.read().decode()
    except OSError:
        return False  # not serving yet


def test_backpressure_holds_for_a_user_table(amqp_url, tmp_path):
    max_backlog, in_flight, count = 200, 100, 1000
    metrics_port = free_port()
    pipeline = Pipeline(env={"AMQP_URL": amqp_url}, output_dir=tmp_path / "output")
    declare_topology(amqp_url)
    try:
        features = pipeline.start("features", [
            "--data", str(HOUSES), "--target", "price", "--count", str(count), "--rate", "0", "--seed", "1",
            "--max-backlog", str(max_backlog), "--max-unconfirmed", str(in_flight), "--metrics-port", str(metrics_port)])
        wait_until(lambda: paused(metrics_port), timeout=30, interval=0.1,
                   message="features to pause at --max-backlog with nothing consuming")
        depths = {queue: queue_depth(amqp_url, queue) for queue in (FEATURES, Y_TRUE)}
        assert max(depths.values()) >= max_backlog and max(depths.values()) <= max_backlog + in_flight, depths
        assert features.poll() is None, "paused, not finished"
        received = {FEATURES: [], Y_TRUE: []}

        def consume_a_little() -> bool:
            for queue in received:
                received[queue] += taken(amqp_url, queue)
            return features.poll() is not None

        wait_until(consume_a_little, timeout=60, interval=0.2, message="features to finish as the queues drain")
        assert features.returncode == 0, output_of(pipeline, "features")
        consume_a_little()
        assert [len(messages) for messages in received.values()] == [count, count]
        assert all(isinstance(message["body"], dict) for message in received[FEATURES])
        assert {message["id"] for message in received[FEATURES]} == {message["id"] for message in received[Y_TRUE]}
    finally:
        pipeline.stop_all()
