"""Test doubles of what a worker is handed, for unit tests of the workers' logic (the integration
tests run the same workers against the real RabbitMQ)."""

from __future__ import annotations


class FakeDelivery:
    """A delivery as a worker sees it: its queue, body and headers; `acked` counts its acks, so a
    test can tell an ack from two."""

    def __init__(self, queue: str, body, headers: dict | None = None):
        self.queue = queue
        self.body = body if isinstance(body, (bytes, bytearray)) else body.encode()  # bytes, or a message
        self.headers = {} if headers is None else headers
        self.acked = 0

    def ack(self) -> None:
        self.acked += 1
