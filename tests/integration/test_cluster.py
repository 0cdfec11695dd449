"""On the local three-node cluster (scripts/rabbitmq_cluster.sh, started once and kept): quorum queues, a
service that moves to another node when its node stops, a poison message dead-lettered after the delivery
limit, a queue type mismatch refused in one line, and the least-privilege import of the quorum layout."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid

import pika
import pytest
from sklearn.datasets import load_diabetes

import dead_letters
import rabbitmq_users
from broker import connect, drain, queue_depth
from cluster import (cluster_ctl, cluster_up, cluster_url_for, create_cluster_vhost, delete_cluster_vhost, nodes,
                     queue_types, url_for)
from mlmonitor.amqp import ServiceRunner
from mlmonitor.tls import AmqpTls
from mlmonitor.topology import DASHBOARD, DELIVERY_LIMIT, DRIFT, FEATURES, QUORUM, SERVICE_ACCESS, Y_PRED
from run_pipeline import Pipeline
from service_harness import (assert_alive, assert_no_dead_letters, declare_topology, output_of, wait_for_consumers,
                             wait_for_output)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("rabbitmq-server") is None, reason="no rabbitmq-server installed")]

CONNECTED = re.compile(r"connected to RabbitMQ at 127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="session")
def cluster_base_urls() -> list[str]:
    return cluster_up()


@pytest.fixture
def cluster_vhost(cluster_base_urls, vhost_deletions) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    create_cluster_vhost(name)
    yield name
    vhost_deletions.append(delete_cluster_vhost(name))


@pytest.fixture
def cluster_url(cluster_base_urls, cluster_vhost) -> str:
    return cluster_url_for(cluster_base_urls, cluster_vhost)


def test_quorum_declares_every_queue_as_a_quorum_queue(cluster_url, cluster_vhost):
    topology = DRIFT.merged(DASHBOARD)
    declare_topology(cluster_url, topology, queue_type=QUORUM)
    assert queue_types(cluster_vhost) == {name: "quorum" for name in topology.queue_names()}


def test_a_queue_of_the_other_type_is_refused_in_one_line_and_the_runner_gives_up(cluster_url, caplog):
    declare_topology(cluster_url, queue_type=QUORUM)
    runner = ServiceRunner(None, cluster_url, queue_type="classic", tls=AmqpTls())
    with caplog.at_level(logging.ERROR, logger="mlmonitor.amqp"):
        assert runner.run() == 2
    (refused,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert "\n" not in refused and "PRECONDITION_FAILED" in refused
    assert "QUEUE_TYPE=classic" in refused and "fix: set QUEUE_TYPE" in refused


def test_a_poison_message_reaches_its_dlq_after_the_delivery_limit_and_dead_letters_lists_why(
        cluster_url, capsys, monkeypatch):
    declare_topology(cluster_url, queue_type=QUORUM)
    connection = connect(cluster_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", FEATURES, b'{"id": "poison"}', pika.BasicProperties(delivery_mode=2))
        deliveries = 0
        while True:  # a consumer that fails on it every time, as a crash would, hands it back
            method, _properties, _body = channel.basic_get(FEATURES)
            if method is None:
                break
            deliveries += 1
            channel.basic_reject(method.delivery_tag, requeue=True)
    finally:
        connection.close()
    assert deliveries == DELIVERY_LIMIT + 1
    wait_until(lambda: queue_depth(cluster_url, "features.dlq") == 1, 10, message="the poison message in features.dlq")

    monkeypatch.setenv("AMQP_URL", cluster_url)
    assert dead_letters.main(["list", "--queue", "features.dlq", "--show", "1"]) == 0
    listing = capsys.readouterr().out
    assert "features.dlq: 1" in listing
    assert "delivered more times than its queue's delivery limit" in listing and "x-death: delivery_limit" in listing
    assert "from: features" in listing


def test_least_privilege_definitions_declare_the_quorum_layout(cluster_vhost, cluster_base_urls, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    services = list(SERVICE_ACCESS)
    try:
        assert rabbitmq_users.main(["--vhost", cluster_vhost, "--host", "127.0.0.1", "--port", "5681",
                                    "--secrets-dir", str(tmp_path), "--user-prefix", prefix, "--queue-type", "quorum",
                                    "--rabbitmqctl", f"{rabbitmq_users.ROOT / 'scripts' / 'rabbitmq_cluster.sh'} ctl 1"
                                    ]) == 0
        topology = rabbitmq_users.deployed_topology(services)
        assert queue_types(cluster_vhost) == {name: "quorum" for name in topology.queue_names()}
        # the model's own user, which may not declare, finds the layout there and runs on it
        model_url = (tmp_path / "model.amqp_url").read_text().strip()
        runner = ServiceRunner(None, model_url, queue_type=QUORUM, tls=AmqpTls())
        runner._declare_topology()  # raises unless the passive check finds everything
    finally:
        for name in [*services, "producer", "operator"]:
            cluster_ctl(1, "delete_user", prefix + name)


# --------------------------------------------------------------------------- a node goes away


def node_of(pipeline: Pipeline, service: str) -> int:
    """The number (1-3) of the node the service last said it connected to."""
    ports = CONNECTED.findall(output_of(pipeline, service))
    assert ports, output_of(pipeline, service)
    return next(node.number for node in nodes() if node.port == int(ports[-1]))


@pytest.fixture
def cluster_pipeline(cluster_url, trained_model, tmp_path):
    pipeline = Pipeline(env={"AMQP_URL": cluster_url, "QUEUE_TYPE": QUORUM, "MODELS_DIR": str(trained_model),
                             "LOGS_DIR": str(tmp_path / "logs")}, output_dir=tmp_path / "output")
    yield pipeline
    pipeline.stop_all(grace_seconds=5)


def test_model_moves_to_another_node_when_its_node_stops_and_predicts_every_event(
        cluster_pipeline, cluster_base_urls, cluster_vhost):
    cluster_url = cluster_url_for(cluster_base_urls, cluster_vhost)
    declare_topology(cluster_url, queue_type=QUORUM)
    cluster_pipeline.start("model")
    wait_for_consumers(cluster_url, FEATURES)
    wait_for_output(cluster_pipeline, "model", "connected to RabbitMQ at")
    stopped = node_of(cluster_pipeline, "model")
    survivors = [url_for(base, cluster_vhost) for number, base in enumerate(cluster_base_urls, 1) if number != stopped]
    via_survivors = ",".join(survivors)  # the test's own clients never use the node it stops

    rows = load_diabetes().data
    published: list[str] = []
    stop_publishing = threading.Event()

    def publish_stream() -> None:  # at about 100 events a second until told to stop
        connection = connect(via_survivors)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            while not stop_publishing.is_set():
                event_id = f"e{len(published)}"
                body = json.dumps({"id": event_id, "body": rows[len(published) % len(rows)].tolist()})
                channel.basic_publish("", FEATURES, body, pika.BasicProperties(delivery_mode=2))
                published.append(event_id)
                time.sleep(0.01)
        finally:
            connection.close()

    predicted: dict[str, int] = {}

    def collect() -> int:
        for body, _headers in drain(via_survivors, Y_PRED):
            event_id = json.loads(body)["id"]
            predicted[event_id] = predicted.get(event_id, 0) + 1
        return len(predicted)

    publisher = threading.Thread(target=publish_stream, daemon=True)
    publisher.start()
    try:
        wait_until(lambda: collect() > 20, 60, message="predictions before the stop")
        cluster_ctl(stopped, "stop_app")
        published_at_stop = len(published)
        wait_until(lambda: len(published) > published_at_stop + 200, 60, message="200 events after the stop")
        stop_publishing.set()
        publisher.join(30)
        wait_until(lambda: collect() >= len(published), 120, interval=0.2,
                   message=f"a prediction for each of the {len(published)} events")
    finally:
        stop_publishing.set()
        cluster_ctl(stopped, "start_app")

    assert set(predicted) == set(published)
    assert node_of(cluster_pipeline, "model") != stopped
    assert output_of(cluster_pipeline, "model").count("connected to RabbitMQ at") >= 2
    assert_alive(cluster_pipeline, "model")
    assert_no_dead_letters(via_survivors, FEATURES)
