"""Services started before their vhost, topology and model exist wait for them, then work."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from sklearn.datasets import load_diabetes

from broker import publish_raw
from run_pipeline import Pipeline
from service_harness import (amqp_url_for, assert_alive, output_of, queue_exists, rabbitmqctl, terminate, wait_for_output,
                             wait_for_rows)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


@pytest.fixture
def vhost_created_later():
    """A vhost name that does not exist yet; the test creates it, and it is deleted afterwards."""
    name = f"test-late-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        rabbitmqctl("delete_vhost", name)
    except subprocess.CalledProcessError:
        pass  # the test failed before creating it


def create_vhost(name: str) -> None:
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


def test_services_started_before_the_vhost_and_the_model_wait_for_them_and_then_work(
        vhost_created_later, tmp_path, logs_dir, models_dir):
    amqp_url = amqp_url_for(vhost_created_later)
    pipeline = Pipeline(env={"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(models_dir)},
                        output_dir=tmp_path / "output")
    try:
        for service in ("model", "metric", "plot"):
            pipeline.start(service)
        wait_for_output(pipeline, "model", "waiting for the model")
        wait_for_output(pipeline, "metric", "waiting for RabbitMQ")
        wait_for_output(pipeline, "plot", "waiting for RabbitMQ")
        assert_alive(pipeline, "model", "metric", "plot")

        create_vhost(vhost_created_later)
        wait_for_output(pipeline, "metric", "connected to RabbitMQ")
        assert queue_exists(amqp_url, "features"), "metric declares the whole topology at connect"
        assert pipeline.run_to_end("learn_model", timeout=60) == 0
        wait_for_output(pipeline, "model", "loaded model")

        samples = load_diabetes()
        publish_raw(amqp_url, "features", [{"id": "after-start", "body": samples.data[0].tolist()}])
        publish_raw(amqp_url, "y_true", [{"id": "after-start", "body": float(samples.target[0])}])
        [row] = wait_for_rows(logs_dir, 1)
        assert row["id"] == "after-start"
        assert_alive(pipeline, "model", "metric", "plot")
    finally:
        pipeline.stop_all(grace_seconds=5)


def test_model_waiting_for_its_model_exits_0_on_sigterm(tmp_path, models_dir):
    pipeline = Pipeline(env={"AMQP_URL": amqp_url_for("never-used"),
                             "MODELS_DIR": str(models_dir)}, output_dir=tmp_path / "output")
    try:
        pipeline.start("model")
        wait_for_output(pipeline, "model", "waiting for the model")
        assert terminate(pipeline, "model", within=5) == 0, output_of(pipeline, "model")
    finally:
        pipeline.stop_all(grace_seconds=5)
