"""Dead-letter queues, seen and emptied by an operator: what `scripts/dead_letters.py` does.

A dead letter is a message a consumer refused, copied into `<queue>.dlq` with the headers
`x-rejection-reason` and `x-source-queue` (mlmonitor.amqp), or one a quorum queue dead-lettered
itself after its delivery limit, with the broker's `x-death` header. Here one can count them, look at the
first ones without taking them off their queue, and move chosen ones back to their source queue:

- Looking takes messages with basic.get and no ack; closing the channel puts them back where they
  were. A crash of the tool puts them back too.
- Replaying publishes each chosen message to its source queue (default exchange, persistent,
  mandatory) without the rejection headers, waits for the broker's confirm, and only then acks the
  dead letter. Messages not chosen stay unacked until the end, so the scan moves past them, and go
  back to the DLQ in their order. A copy cut short at the size cap is never replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker

from .amqp import ORIGINAL_SIZE_HEADER
from .topology import DASHBOARD_EVENTS, PIPELINE, REASON_HEADER, SOURCE_QUEUE_HEADER, dead_letter_queue

# what the broker adds when it dead-letters a message itself (a quorum queue's delivery limit)
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")
REJECTION_HEADERS = (REASON_HEADER, SOURCE_QUEUE_HEADER, ORIGINAL_SIZE_HEADER) + BROKER_DEATH_HEADERS
BROKER_REASONS = {"delivery_limit": "delivered more times than its queue's delivery limit, e.g. it kept crashing "
                                    "its consumer"}
SHOWN_BODY_BYTES = 200


def known_dead_letter_queues() -> list[str]:
    """The DLQs of the pipeline's queues and of the dashboard's."""
    return [spec.dlq for spec in PIPELINE.queues if spec.dead_letters] + [dead_letter_queue(DASHBOARD_EVENTS)]


@dataclass(frozen=True)
class DeadLetter:
    body: bytes
    headers: dict
    redelivered: bool = False

    @property
    def reason(self) -> str:
        """The service's x-rejection-reason, else the broker's reason from x-death."""
        given = _text(self.headers.get(REASON_HEADER, ""))
        if given or self._death is None:
            return given
        why = _text(self._death.get("reason"))
        return f"{BROKER_REASONS.get(why, 'dead-lettered by the broker')} (x-death: {why})"

    @property
    def source_queue(self) -> str | None:
        given = _text(self.headers.get(SOURCE_QUEUE_HEADER))
        return given or (_text(self._death.get("queue")) if self._death is not None else "") or None

    @property
    def _death(self) -> dict | None:
        """The broker's first x-death entry, if the broker dead-lettered this message."""
        deaths = self.headers.get("x-death")
        return deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else None

    @property
    def original_size(self) -> int | None:
        """The size the body had, if this copy keeps only its first bytes."""
        size = self.headers.get(ORIGINAL_SIZE_HEADER)
        return size if isinstance(size, int) else None

    def describe(self) -> str:
        """One line for a terminal: reason, source, size and the start of the body, control
        characters escaped (a dead letter is hostile input)."""
        size = f"{len(self.body)} bytes" + (f" (cut from {self.original_size})" if self.original_size else "")
        return (f"reason: {printable(self.reason) or '(none)'} | from: {printable(self.source_queue or '?')} | "
                f"{size} | {self.body[:SHOWN_BODY_BYTES]!r}")


def printable(text: str) -> str:
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def depth(connection: BlockingConnection, queue: str) -> int | None:
    """Ready messages in `queue`; None if it doesn't exist."""
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.message_count
    except ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return None
        raise
    finally:
        if channel.is_open:
            channel.close()


def peek(connection: BlockingConnection, queue: str, count: int) -> list[DeadLetter]:
    """The first `count` messages of `queue`, left on it: taken unacked, put back as the channel closes."""
    channel = connection.channel()
    letters = []
    try:
        while len(letters) < count:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            letters.append(DeadLetter(body, dict(properties.headers or {}), method.redelivered))
    finally:
        if channel.is_open:
            channel.close()  # requeues everything taken, in its place
    return letters


@dataclass
class ReplayReport:
    queue: str
    scanned: int = 0
    replayed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # why -> how many, for chosen ones not replayed

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def summary(self, dry_run: bool = False) -> str:
        verb = "would replay" if dry_run else "replayed"
        skipped = "".join(f"; {count} skipped: {why}" for why, count in self.skipped.items())
        return f"{self.queue}: {verb} {self.replayed} of {self.scanned} dead letters looked at{skipped}"


def replay(connection: BlockingConnection, queue: str, grep: str | None = None, limit: int | None = None,
           dry_run: bool = False, on_replayed: Callable[[DeadLetter], None] = lambda letter: None) -> ReplayReport:
    """Moves the dead letters of `queue` whose reason contains `grep` (all without it), at most
    `limit`, back to their source queue; with `dry_run`, only counts them. Looks at no more messages
    than the queue held at the start, so a replayed message that is refused again is not met twice."""
    report = ReplayReport(queue)
    channel = connection.channel()
    try:
        channel.confirm_delivery()
        held = channel.queue_declare(queue, passive=True).method.message_count
        while report.scanned < held and (limit is None or report.replayed < limit):
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            report.scanned += 1
            letter = DeadLetter(body, dict(properties.headers or {}), method.redelivered)
            if grep is not None and grep not in letter.reason:
                continue  # left unacked: it goes back to the DLQ when the channel closes
            if letter.original_size is not None:
                report.skip("cut short at the size cap; the rest of the body was never kept")
                continue
            if letter.source_queue is None:
                report.skip(f"no {SOURCE_QUEUE_HEADER} header")
                continue
            if not dry_run:
                _republish(channel, letter, properties)
                channel.basic_ack(method.delivery_tag)  # only once the broker has the copy
            report.replayed += 1
            on_replayed(letter)
    finally:
        if channel.is_open:
            channel.close()
    return report


def _republish(channel: BlockingChannel, letter: DeadLetter, properties: pika.BasicProperties) -> None:
    """Publishes the letter to its source queue, confirmed; raises (UnroutableError, NackError) if not."""
    headers = {name: value for name, value in letter.headers.items() if name not in REJECTION_HEADERS}
    properties.headers = headers or None
    channel.basic_publish("", letter.source_queue, letter.body, properties, mandatory=True)
