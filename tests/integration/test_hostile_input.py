"""Hostile input against the real services and broker: messages at and over MAX_MESSAGE_BYTES, a 100 MB
message on every input queue (each service stays under 200 MB resident and keeps working), JSON
nested 100,000 deep, and headers nested too deep for pika's decoder. Each is refused into its DLQ
with its reason, and the good messages behind it still get through."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request

import pika
import pytest
from sklearn.datasets import load_diabetes

from broker import connect, drain, publish_raw, queue_depth
from mlmonitor.amqp import ORIGINAL_SIZE_HEADER, TRUNCATED_KEEP_BYTES, Delivery, ServiceRunner, Session
from mlmonitor.topology import (DASHBOARD_EVENTS, DRIFT_QUEUES, FEATURES, METRIC_ADDED, Y_PRED,
                                Y_TRUE, QueueSpec, Topology)
from service_harness import (REASON_HEADER, assert_alive, declare_topology, free_port, output_of,
                             wait_for_consumers, wait_for_rows, wait_until_drained)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

CAP = 1 << 20  # MAX_MESSAGE_BYTES' default, which the services run with here
HUGE = 100 * 1000 * 1000
MAX_RSS_KB = 200 * 1024  # the bound, on the whole process
MAX_GROWTH_KB = 20 * 1024  # what the flood may add: a 100 MB body held whole would add 100 MB or more
VECTOR = load_diabetes().data[0].tolist()
INPUT_QUEUES = (FEATURES, Y_TRUE, Y_PRED, METRIC_ADDED, DASHBOARD_EVENTS, *DRIFT_QUEUES)
CONSUMERS = ("model", "metric", "plot", "dashboard", "drift")


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the most resident memory the process has had."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def features_of_size(event_id: str, size: int) -> bytes:
    """A valid features message of exactly `size` bytes, padded in a field the schema ignores."""
    head = json.dumps({"id": event_id, "body": VECTOR, "padding": ""}).encode()
    body = head[:-2] + b"x" * (size - len(head)) + b'"}'
    assert len(body) == size
    return body


def publish_transient(amqp_url: str, queue: str, body: bytes, headers: dict | None = None) -> None:
    """Confirmed but not persistent: the broker needn't write 100 MB messages to its disk."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=1, headers=headers))
    finally:
        connection.close()


def dead_letters_of(amqp_url: str, queue: str) -> list[tuple[bytes, dict]]:
    return drain(amqp_url, f"{queue}.dlq")


def wait_for_dead_letter_depths(amqp_url: str, expected: dict[str, int], timeout: float = 120) -> None:
    wait_until(lambda: all(queue_depth(amqp_url, f"{queue}.dlq") >= count for queue, count in expected.items()),
               timeout, interval=0.5, message=f"dead letters {expected}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def service_env(pipeline) -> dict[str, dict[str, str]]:
    """Each consumer's env: /metrics (the dashboard's page) on a free port of this machine."""
    ports = {service: free_port() for service in CONSUMERS}
    env = {service: {"METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"} for service, port in ports.items()}
    env["dashboard"] = {"DASHBOARD_PORT": str(ports["dashboard"]), "DASHBOARD_HOST": "127.0.0.1"}
    return env


def test_a_message_at_the_cap_is_taken_and_one_byte_more_is_dead_lettered_unread(pipeline, amqp_url, trained_model):
    declare_topology(amqp_url)
    pipeline.start("model")
    wait_for_consumers(amqp_url, FEATURES)

    publish_raw(amqp_url, FEATURES, [features_of_size("at-the-cap", CAP), features_of_size("over-the-cap", CAP + 1)])

    wait_until(lambda: queue_depth(amqp_url, Y_PRED) >= 1, 30, message="a prediction for the message at the cap")
    ((prediction, _),) = drain(amqp_url, Y_PRED)
    assert json.loads(prediction)["id"] == "at-the-cap"
    wait_until(lambda: queue_depth(amqp_url, f"{FEATURES}.dlq") >= 1, 30, message="the message over the cap refused")
    ((body, headers),) = dead_letters_of(amqp_url, FEATURES)
    assert headers[REASON_HEADER] == (f"message of {CAP + 1} bytes is over MAX_MESSAGE_BYTES ({CAP}); "
                                      f"this copy keeps its first {TRUNCATED_KEEP_BYTES} bytes")
    assert headers[ORIGINAL_SIZE_HEADER] == CAP + 1
    assert body == features_of_size("over-the-cap", CAP + 1)[:TRUNCATED_KEEP_BYTES]
    assert_alive(pipeline, "model")


def test_a_100_mb_message_on_every_input_queue_costs_no_service_200_mb_and_stops_none(
        pipeline, amqp_url, vhost, logs_dir, trained_model, service_env):
    declare_topology(amqp_url)
    for service in CONSUMERS:
        pipeline.start(service, env=service_env[service])
    wait_for_consumers(amqp_url, *INPUT_QUEUES)
    peaks_before = {service: peak_rss_kb(pipeline.processes[service].pid) for service in CONSUMERS}

    for queue in INPUT_QUEUES:
        publish_transient(amqp_url, queue, b"[" * HUGE)
    wait_for_dead_letter_depths(amqp_url, {queue: 1 for queue in INPUT_QUEUES})

    # they keep working: a good event goes through every service
    publish_raw(amqp_url, FEATURES, [{"id": "after-the-flood", "body": VECTOR}])
    publish_raw(amqp_url, Y_TRUE, [{"id": "after-the-flood", "body": 151.0}])
    assert [row["id"] for row in wait_for_rows(logs_dir, 1, timeout=60)] == ["after-the-flood"]
    wait_until_drained(vhost, *INPUT_QUEUES, timeout=60)

    peaks = {service: peak_rss_kb(pipeline.processes[service].pid) for service in CONSUMERS}
    growth = {service: peaks[service] - peaks_before[service] for service in CONSUMERS}
    assert all(kb < MAX_GROWTH_KB for kb in growth.values()), f"peak resident memory grew by, kB: {growth}"
    assert all(peak < MAX_RSS_KB for peak in peaks.values()), f"peak resident memory, kB: {peaks}"
    model_port = service_env["model"]["METRICS_PORT"]
    wait_until(lambda: 'mlmonitor_dead_letter_queue_messages{queue="features.dlq"} 1.0' in scrape(int(model_port)),
               30, interval=0.5, message="model's gauge of features.dlq at 1")
    for queue in INPUT_QUEUES:
        ((body, headers),) = dead_letters_of(amqp_url, queue)
        assert headers[REASON_HEADER] == (f"message of {HUGE} bytes is over MAX_MESSAGE_BYTES ({CAP}); "
                                          f"this copy keeps its first {TRUNCATED_KEEP_BYTES} bytes"), queue
        assert body == b"[" * TRUNCATED_KEEP_BYTES
    assert_alive(pipeline, *CONSUMERS)
    assert not any("Traceback" in output_of(pipeline, service) for service in CONSUMERS)


def nested_headers(depth: int) -> dict:
    headers: dict = {"leaf": 1}
    for _ in range(depth):
        headers = {"a": headers}
    return headers


def publish_with_deep_headers(amqp_url: str, queue: str, body: bytes) -> None:
    """pika encodes headers recursively too, so the recursion limit goes up while it does."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        publish_raw(amqp_url, queue, [body], headers=nested_headers(5000))
    finally:
        sys.setrecursionlimit(limit)


def test_json_nested_100000_deep_and_headers_nested_5000_deep_are_refused_and_the_queue_moves_on(
        pipeline, amqp_url, logs_dir, trained_model):
    declare_topology(amqp_url)
    pipeline.start("model")
    pipeline.start("metric")
    wait_for_consumers(amqp_url, FEATURES, Y_TRUE, Y_PRED)
    deep_json = b'{"id": "deep", "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    publish_raw(amqp_url, FEATURES, [deep_json])
    publish_raw(amqp_url, Y_TRUE, [deep_json])
    publish_with_deep_headers(amqp_url, FEATURES, json.dumps({"id": "deep-headers", "body": VECTOR}).encode())
    publish_raw(amqp_url, FEATURES, [{"id": "good", "body": VECTOR}])
    publish_raw(amqp_url, Y_TRUE, [{"id": "good", "body": 151.0}])

    assert [row["id"] for row in wait_for_rows(logs_dir, 1)] == ["good"]
    wait_for_dead_letter_depths(amqp_url, {FEATURES: 2, Y_TRUE: 1}, timeout=30)
    reasons = {queue: sorted(headers[REASON_HEADER] for _, headers in dead_letters_of(amqp_url, queue))
               for queue in (FEATURES, Y_TRUE)}
    too_deep = "message: Invalid JSON: recursion limit exceeded at line 1 column "
    assert len(reasons[Y_TRUE]) == 1 and reasons[Y_TRUE][0].startswith(too_deep)
    headers_reason, json_reason = reasons[FEATURES]
    assert headers_reason == "its AMQP properties can't be decoded (RecursionError: nested too deeply)"
    assert json_reason.startswith(too_deep)
    assert_alive(pipeline, "model", "metric")
    assert "Stream connection lost" not in output_of(pipeline, "model"), "the connection dropped"


WORK = "work"


class RejectsEverything:
    def __init__(self, reason: str):
        self.reason = reason
        self.session: Session | None = None

    def on_connected(self, session: Session) -> None:
        self.session = session
        session.consume(WORK, self.on_batch, prefetch=10)

    def on_disconnected(self) -> None:
        self.session = None

    def on_batch(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.session.dead_letter(delivery, self.reason)


def test_a_workers_reason_reaches_the_dead_letter_as_one_line_of_at_most_500_characters(amqp_url, vhost):
    topology = Topology(exchanges=(), queues=(QueueSpec(WORK),))
    declare_topology(amqp_url, topology)
    publish_raw(amqp_url, WORK, [b"anything"])
    runner = ServiceRunner(RejectsEverything("first line\nsecond line\x1b[31m " + "x" * 1000), amqp_url, topology)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: queue_depth(amqp_url, f"{WORK}.dlq") == 1, 30, message="the message dead-lettered")
    finally:
        runner.request_stop()
        thread.join(10)
    ((_, headers),) = dead_letters_of(amqp_url, WORK)
    reason = headers[REASON_HEADER]
    assert reason.startswith("first line\\nsecond line\\x1b[31m xxx") and reason.endswith("…")
    assert len(reason) == 500 and reason.isprintable()
