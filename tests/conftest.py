"""Shared fixtures: every test that needs RabbitMQ gets a vhost of its own, deleted afterwards."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for service in ("features", "model", "metric", "plot", "learn_model", "dashboard", "drift"):
    sys.path.insert(0, str(ROOT / service / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from broker import amqp_url_for, create_vhost, rabbitmqctl  # noqa: E402


@pytest.fixture
def vhost() -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    create_vhost(name)
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture
def amqp_url(vhost: str) -> str:
    return amqp_url_for(vhost)
