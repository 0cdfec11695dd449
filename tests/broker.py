"""Small helpers for tests that talk to RabbitMQ: vhosts through rabbitmqctl, and blocking pika to publish
raw bodies, read queues and count messages."""

from __future__ import annotations

import json
import os
import subprocess

import pika

from mlmonitor.broker_urls import split_urls

BROKER_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))


def amqp_url_for(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/{vhost}"


def rabbitmqctl(*args: str, input: str | None = None) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], input=input, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def create_vhost(name: str) -> None:
    """Creates the vhost with guest's permissions in one rabbitmqctl call, as each call takes seconds."""
    definitions = {"vhosts": [{"name": name}],
                   "permissions": [{"user": "guest", "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}]}
    # on stdin: the broker runs as another user and can't read pytest's private tmp_path
    rabbitmqctl("import_definitions", "--format", "json", input=json.dumps(definitions))


def connect(amqp_url: str) -> pika.BlockingConnection:
    """To the first node that answers, when AMQP_URL names a cluster's."""
    return pika.BlockingConnection([pika.URLParameters(url) for url in split_urls(amqp_url)])


def publish_raw(amqp_url: str, queue: str, bodies: list[bytes | str | dict], headers: dict | None = None) -> None:
    """Publishes persistent messages to `queue` through the default exchange, with confirms."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            if isinstance(body, dict):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, headers=headers))
    finally:
        connection.close()


def queue_exists(amqp_url: str, *queues: str) -> bool:
    """Whether every one of `queues` exists (passive declares: a missing queue closes the channel)."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def queue_depth(amqp_url: str, queue: str) -> int:
    connection = connect(amqp_url)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def drain(amqp_url: str, queue: str) -> list[tuple[bytes, dict]]:
    """Takes every ready message off `queue`: (body, headers) pairs."""
    connection = connect(amqp_url)
    messages = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((body, properties.headers or {}))
    finally:
        connection.close()
