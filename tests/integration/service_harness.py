"""What the integration tests observe: CSV rows, service output, queue contents, process exits."""

from __future__ import annotations

import csv
import socket
import subprocess
from pathlib import Path

import pika

from broker import amqp_url_for, connect, create_vhost, drain, queue_depth, queue_exists, rabbitmqctl  # noqa: F401 (re-exported)
from mlmonitor.topology import CLASSIC, METRIC_EVENTS_EXCHANGE, PIPELINE, Topology, declare
from run_pipeline import Pipeline
from waiting import wait_until

REASON_HEADER = "x-rejection-reason"
CSV_HEADER = ["id", "y_true", "y_pred", "absolute_error"]


def csv_rows(logs_dir: Path) -> list[dict]:
    path = logs_dir / "metric_log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames in (None, CSV_HEADER)
    return rows


def wait_for_rows(logs_dir: Path, count: int, timeout: float = 30) -> list[dict]:
    """Waits for `count` rows and fails if there are more."""
    wait_until(lambda: len(csv_rows(logs_dir)) >= count, timeout, interval=0.1,
               message=f"{count} rows in {logs_dir / 'metric_log.csv'}")
    rows = csv_rows(logs_dir)
    assert len(rows) == count, f"expected {count} rows, got {len(rows)}"
    return rows


def free_port() -> int:
    """A loopback TCP port nothing listens on now, e.g. for a service's METRICS_PORT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def output_of(pipeline: Pipeline, service: str) -> str:
    return pipeline.output(service)


def wait_for_output(pipeline: Pipeline, service: str, text: str, timeout: float = 30, times: int = 1) -> None:
    wait_until(lambda: output_of(pipeline, service).count(text) >= times, timeout, interval=0.1,
               message=f"{text!r} {times} time(s) in the output of {service}")


def messages_in(vhost: str, *queues: str) -> dict[str, int]:
    """Ready plus unacknowledged messages per queue; a passive declare would miss the unacked ones."""
    listing = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
    counts = dict(line.rsplit(None, 1) for line in listing.splitlines() if line.strip())
    return {queue: int(counts.get(queue, -1)) for queue in queues}


def wait_until_drained(vhost: str, *queues: str, timeout: float = 30) -> None:
    last: dict[str, int] = {}

    def drained() -> bool:
        last.update(messages_in(vhost, *queues))
        return not any(last.values())

    try:
        wait_until(drained, timeout, interval=0.2, message=f"{', '.join(queues)} drained (ready and unacked)")
    except AssertionError as error:
        raise AssertionError(f"{error}; messages left: {last}") from None


def consumers_on(amqp_url: str, queue: str) -> int:
    connection = connect(amqp_url)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0  # not declared yet
    finally:
        if connection.is_open:
            connection.close()


def wait_for_consumers(amqp_url: str, *queues: str, timeout: float = 60) -> None:
    """Services take seconds to start on a busy machine; waits until each queue has its consumer."""
    wait_until(lambda: all(consumers_on(amqp_url, queue) for queue in queues), timeout, interval=0.2,
               message=f"consumers on {', '.join(queues)}")


def declare_topology(amqp_url: str, topology: Topology = PIPELINE, extra_queue_on_metric_events: str | None = None,
                     queue_type: str = CLASSIC) -> None:
    """Declares what the services declare at connect, so messages published before they run are kept."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        declare(channel, topology, queue_type)
        if extra_queue_on_metric_events:
            channel.queue_declare(extra_queue_on_metric_events, durable=True)
            channel.queue_bind(extra_queue_on_metric_events, METRIC_EVENTS_EXCHANGE)
    finally:
        connection.close()


def dead_letters(amqp_url: str, queue: str) -> list[tuple[bytes, str]]:
    """Takes every message off `<queue>.dlq`: (body, rejection reason) pairs."""
    return [(body, headers.get(REASON_HEADER, "")) for body, headers in drain(amqp_url, f"{queue}.dlq")]


def wait_for_dead_letters(amqp_url: str, queue: str, count: int, timeout: float = 30) -> list[tuple[bytes, str]]:
    collected: list[tuple[bytes, str]] = []

    def enough() -> bool:
        collected.extend(dead_letters(amqp_url, queue))
        return len(collected) >= count

    try:
        wait_until(enough, timeout, interval=0.2, message=f"{count} messages in {queue}.dlq")
    except AssertionError as error:
        raise AssertionError(f"{error}; got {collected}") from None
    return collected


def assert_no_dead_letters(amqp_url: str, *queues: str) -> None:
    for queue in queues:
        assert queue_depth(amqp_url, f"{queue}.dlq") == 0, f"{queue}.dlq: {dead_letters(amqp_url, queue)}"


def assert_alive(pipeline: Pipeline, *services: str) -> None:
    for service in services:
        assert pipeline.processes[service].poll() is None, (
            f"{service} exited with {pipeline.processes[service].returncode}:\n{output_of(pipeline, service)}")


def terminate(pipeline: Pipeline, service: str, within: float = 5) -> int:
    """SIGTERMs the service and returns its exit code; fails if it takes longer than `within` s."""
    process = pipeline.processes[service]
    process.terminate()
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{service} still running {within}s after SIGTERM:\n{output_of(pipeline, service)}")
