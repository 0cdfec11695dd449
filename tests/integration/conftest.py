"""Fixtures for the integration tests: services as subprocesses on the test's own vhost."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from run_pipeline import Pipeline
from service_harness import create_vhost


@pytest.fixture(scope="session")
def vhost_deletions():
    deletions: list[subprocess.Popen] = []
    yield deletions
    for deletion in deletions:
        deletion.wait(60)


@pytest.fixture
def vhost(vhost_deletions) -> str:
    """Overrides the shared fixture to save seconds per test: one rabbitmqctl call to create, deletion in the
    background (every call boots an Erlang VM)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    create_vhost(name)
    yield name
    vhost_deletions.append(subprocess.Popen(["rabbitmqctl", "-q", "delete_vhost", name],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory) -> Path:
    """Trained once per session (learn_model takes seconds); each test gets its own copy."""
    models_dir = tmp_path_factory.mktemp("trained_models")
    exit_code = Pipeline(env={"MODELS_DIR": str(models_dir)}, output_dir=models_dir / "output").run_to_end(
        "learn_model", timeout=120)
    assert exit_code == 0, (models_dir / "output" / "learn_model.log").read_text()
    return models_dir


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """Empty until a test trains into it or asks for `trained_model`."""
    return tmp_path / "models"


@pytest.fixture
def trained_model(models_dir: Path, trained_models: Path) -> Path:
    shutil.copytree(trained_models, models_dir, ignore=shutil.ignore_patterns("output"))
    return models_dir


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def pipeline(amqp_url: str, logs_dir: Path, models_dir: Path, tmp_path: Path):
    pipeline = Pipeline(env={"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(models_dir)},
                        output_dir=tmp_path / "output")
    yield pipeline
    pipeline.stop_all(grace_seconds=5)
