"""A half whose partner never comes is dead-lettered once the join TTL is over, with that reason."""

from __future__ import annotations

import pytest

from broker import publish_raw
from service_harness import (assert_alive, csv_rows, declare_topology, wait_for_dead_letters, wait_for_output,
                             wait_until_drained)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def test_a_target_without_prediction_goes_to_the_dead_letter_queue_naming_the_missing_prediction(
        pipeline, amqp_url, vhost, logs_dir):
    declare_topology(amqp_url)
    pipeline.start("metric", ["--join-ttl-seconds", "1", "--join-max-wait-seconds", "2"])

    publish_raw(amqp_url, "y_true", [{"id": "lonely", "body": 151.0}])

    [(body, reason)] = wait_for_dead_letters(amqp_url, "y_true", 1, timeout=20)
    assert body == b'{"id": "lonely", "body": 151.0}'
    assert reason.startswith("no y_pred with id lonely arrived")
    wait_for_output(pipeline, "metric", f"rejected a message from y_true into y_true.dlq: {reason}")
    assert csv_rows(logs_dir) == []
    assert_alive(pipeline, "metric")
    wait_until_drained(vhost, "y_true")
