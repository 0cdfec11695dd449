"""Shared fixtures: every test that needs RabbitMQ gets a vhost of its own, deleted afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for service in ("features", "model", "metric", "plot", "learn_model", "dashboard"):
    sys.path.insert(0, str(ROOT / service / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

BROKER_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.fixture
def vhost() -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture
def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/{vhost}"
