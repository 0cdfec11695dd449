"""Prometheus metrics that the shared runtime keeps for every service, and the /metrics endpoint."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MESSAGES_CONSUMED = Counter("mlmonitor_messages_consumed_total", "Messages received from a queue.", ["queue"])
MESSAGES_PUBLISHED = Counter(
    "mlmonitor_messages_published_total", "Messages the broker confirmed, by destination.", ["destination"]
)
MESSAGES_DEAD_LETTERED = Counter(
    "mlmonitor_messages_dead_lettered_total", "Messages rejected into <queue>.dlq.", ["queue"]
)
BATCH_SECONDS = Histogram(
    "mlmonitor_batch_processing_seconds",
    "Time to process one batch of deliveries from a queue, publishing excluded.",
    ["queue"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RECONNECTS = Counter("mlmonitor_reconnects_total", "Times the service lost RabbitMQ and connected again.")
DEAD_LETTER_QUEUE_MESSAGES = Gauge(
    "mlmonitor_dead_letter_queue_messages",
    "Messages waiting in a dead-letter queue, polled every few seconds by each consumer of its source queue.",
    ["queue"],
)


def show_dead_letter_depths(depths: dict[str, int]) -> None:
    for queue, messages in depths.items():
        DEAD_LETTER_QUEUE_MESSAGES.labels(queue).set(messages)


def serve_metrics(port: int, logger: logging.Logger, host: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr=host)
        logger.info("Prometheus metrics on http://%s:%d/metrics", host, port)
