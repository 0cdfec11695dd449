"""The shared runtime, run in-process against the real broker: a worker bug costs only the message behind it."""

from __future__ import annotations

import threading

import pytest

from broker import publish_raw
from mlmonitor.amqp import Delivery, ServiceRunner, Session
from mlmonitor.topology import QueueSpec, Topology
from service_harness import dead_letters, declare_topology, wait_for_dead_letters, wait_until_drained

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

WORK = "work"
WORK_ONLY = Topology(exchanges=(), queues=(QueueSpec(WORK),))


class WorkerWithABug:
    """Rejects b"invalid", crashes on b"poison" (after rejecting), acks the rest."""

    def __init__(self):
        self.session: Session | None = None
        self.done: list[bytes] = []

    def on_connected(self, session: Session) -> None:
        self.session = session
        session.consume(WORK, self.on_batch, prefetch=100)

    def on_disconnected(self) -> None:
        self.session = None

    def on_batch(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            if delivery.body == b"invalid":
                self.session.dead_letter(delivery, "invalid input")
        if any(delivery.body == b"poison" for delivery in deliveries):
            raise RuntimeError("a bug")
        for delivery in deliveries:
            if delivery.body.startswith(b"good"):
                self.done.append(delivery.body)
                delivery.ack()


@pytest.fixture
def run_in_thread(amqp_url):
    runners = []

    def start(worker) -> ServiceRunner:
        runner = ServiceRunner(worker, amqp_url, WORK_ONLY)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        runners.append((runner, thread))
        return runner

    yield start
    for runner, thread in runners:
        runner.request_stop()
        thread.join(10)
        assert not thread.is_alive(), "the runner did not stop"


def test_a_batch_with_a_bug_is_retried_singly_and_each_bad_message_is_dead_lettered_once(
        amqp_url, vhost, run_in_thread):
    declare_topology(amqp_url, WORK_ONLY)
    publish_raw(amqp_url, WORK, [b"good-1", b"invalid", b"good-2", b"poison", b"good-3"])  # before: one batch
    worker = WorkerWithABug()
    runner = run_in_thread(worker)

    wait_until_drained(vhost, WORK)
    assert sorted(worker.done) == [b"good-1", b"good-2", b"good-3"]
    rejected = wait_for_dead_letters(amqp_url, WORK, 2)
    assert sorted(rejected) == [(b"invalid", "invalid input"), (b"poison", "processing error: RuntimeError: a bug")]
    assert dead_letters(amqp_url, WORK) == [], "a message rejected in the first pass was dead-lettered again"
    assert not runner.stop_requested
