"""Small blocking-pika helpers for tests: publish raw bodies, read queues, count messages."""

from __future__ import annotations

import json

import pika


def connect(amqp_url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(amqp_url))


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
