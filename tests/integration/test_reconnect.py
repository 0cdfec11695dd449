"""The broker closes every client connection mid-stream: each service reconnects and nothing is lost or doubled."""

from __future__ import annotations

import json

import pytest

from broker import drain
from service_harness import (assert_alive, assert_no_dead_letters, csv_rows, output_of, rabbitmqctl, terminate,
                             wait_for_consumers, wait_for_output, wait_for_rows, wait_until_drained)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(150)]

EVENTS = 2000
CONSUMERS = ("model", "metric", "plot")
RECONNECTED = "connected to RabbitMQ at"  # logged on reconnecting only, as the vhost exists from the start


def close_all_connections(vhost: str) -> None:
    # rabbitmqctl takes seconds to boot (more on a busy machine), hence a stream of 10 s
    rabbitmqctl("close_all_connections", "-p", vhost, "integration test: forced disconnect")


def test_every_service_reconnects_after_its_connections_are_closed_and_each_event_gives_one_row(
        pipeline, amqp_url, vhost, logs_dir, trained_model):
    for service in CONSUMERS:
        pipeline.start(service)
    wait_for_consumers(amqp_url, "features", "y_true", "y_pred", "metric_added")
    features = pipeline.start("features", ["--rate", "200", "--count", str(EVENTS)])

    wait_until(lambda: len(csv_rows(logs_dir)) >= 100, timeout=60, interval=0.1, message="100 rows")
    close_all_connections(vhost)
    assert features.poll() is None, "features finished before the first disconnect; the test proves nothing"
    for service in ("features",) + CONSUMERS:
        wait_for_output(pipeline, service, RECONNECTED)
    close_all_connections(vhost)  # a second outage, once everyone is back

    assert features.wait(60) == 0, output_of(pipeline, "features")
    for service in CONSUMERS:
        wait_for_output(pipeline, service, RECONNECTED, times=2)
    rows = wait_for_rows(logs_dir, EVENTS, timeout=60)
    written_ids = {row["id"] for row in rows}
    assert len(written_ids) == EVENTS
    assert_alive(pipeline, *CONSUMERS)
    wait_until_drained(vhost, "features", "metric_added")
    assert_no_dead_letters(amqp_url, "features", "y_true", "y_pred", "metric_added")

    # Redelivered inputs whose pair is already written wait in metric's join buffer until they expire
    # (join_max_wait); stopping metric hands them back, and each must be a copy of a written id.
    assert terminate(pipeline, "metric") == 0
    leftovers = [json.loads(body)["id"] for queue in ("y_true", "y_pred") for body, _ in drain(amqp_url, queue)]
    assert set(leftovers) <= written_ids
