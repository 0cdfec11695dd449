"""Services started before their vhost, topology and model exist wait for them, then work."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from sklearn.datasets import load_diabetes

from broker import publish_raw
from mlmonitor.model_store import CARD_NAME, read_card
from run_pipeline import Pipeline
from service_harness import (amqp_url_for, assert_alive, create_vhost, output_of, queue_exists, terminate,
                             wait_for_output, wait_for_rows)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


@pytest.fixture
def vhost_created_later(vhost_deletions):
    """A vhost name that does not exist yet; the test creates it, and it is deleted afterwards."""
    name = f"test-late-{uuid.uuid4().hex[:12]}"
    yield name
    vhost_deletions.append(subprocess.Popen(["rabbitmqctl", "-q", "delete_vhost", name],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def publish_model_as_learn_model_does(trained_models: Path, models_dir: Path) -> None:
    """The session's model (trained by learn_model), artifact first and card last; faster than training again."""
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in (read_card(trained_models).artifact, CARD_NAME):
        shutil.copyfile(trained_models / name, models_dir / f".{name}.tmp")
        os.replace(models_dir / f".{name}.tmp", models_dir / name)


def test_services_started_before_the_vhost_and_the_model_wait_for_them_and_then_work(
        vhost_created_later, tmp_path, logs_dir, models_dir, trained_models):
    amqp_url = amqp_url_for(vhost_created_later)
    pipeline = Pipeline(env={"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(models_dir)},
                        output_dir=tmp_path / "output")
    try:
        pipeline.start("model", ["--model-poll-seconds", "0.5"])
        pipeline.start("metric")
        pipeline.start("plot")
        wait_for_output(pipeline, "model", "waiting for the model")
        wait_for_output(pipeline, "metric", "waiting for RabbitMQ")
        wait_for_output(pipeline, "plot", "waiting for RabbitMQ")
        assert_alive(pipeline, "model", "metric", "plot")

        create_vhost(vhost_created_later)
        wait_for_output(pipeline, "metric", "connected to RabbitMQ")
        assert queue_exists(amqp_url, "features"), "metric declares the whole topology at connect"
        publish_model_as_learn_model_does(trained_models, models_dir)
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
