"""SIGTERM stops each long-running service promptly and cleanly, mid-traffic."""

from __future__ import annotations

import pytest

from service_harness import csv_rows, output_of, terminate, wait_for_consumers
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


def test_each_long_running_service_exits_0_within_seconds_of_sigterm(pipeline, amqp_url, logs_dir, trained_model):
    for service in ("model", "metric", "plot"):
        pipeline.start(service)
    wait_for_consumers(amqp_url, "features", "y_true", "y_pred", "metric_added")
    pipeline.start("features", ["--rate", "50"])  # endless
    wait_until(lambda: len(csv_rows(logs_dir)) >= 10, timeout=30, interval=0.1, message="traffic through metric")

    for service in ("model", "metric", "plot", "features"):  # features last, so the others stop mid-traffic
        assert terminate(pipeline, service, within=5) == 0, output_of(pipeline, service)
        assert "Traceback" not in output_of(pipeline, service)
