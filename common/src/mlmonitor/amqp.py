"""RabbitMQ runtime shared by the services, on pika's asynchronous SelectConnection.

The rules it keeps for every service:
- Every publish is persistent, mandatory and confirmed; `on_confirmed` runs once the broker has it.
  Confirms are pipelined: many publishes are in flight at once, none waits for a round trip.
- A delivery is acked only when the worker calls `delivery.ack()`, i.e. once its effect exists.
  Acks of consecutive deliveries are coalesced into one `multiple=True` ack per loop turn.
- Bad input goes to `<queue>.dlq` with its reason in a header; the original is acked once the
  dead-letter copy is confirmed, so a rejected message is never lost and never blocks the queue.
- Hostile input is refused before the worker sees it: a body over MAX_MESSAGE_BYTES (pika keeps only
  its first bytes as it arrives) and a message whose AMQP properties can't be decoded go to the DLQ
  with their reason. Every consumer reports the depth of its queues' DLQs as a Prometheus gauge.
- A worker bug is logged with its traceback; the batch is retried one message at a time and only
  the messages that still fail are dead-lettered.
- Connection lost: the worker drops its in-flight state (the broker redelivers whatever was not
  acked) and the runner reconnects with capped exponential backoff, also while the vhost does not exist yet;
  with several URLs in AMQP_URL (a cluster's nodes), to the next node that answers.
  Wrong credentials end the run, and so does a broker certificate we can't verify (mlmonitor.tls).
- Consuming and publishing use separate connections, so broker flow control on publishers never
  stops acks from getting through.
"""

from __future__ import annotations

import logging
import random
import signal
import struct
import time
import traceback
from ssl import SSLCertVerificationError
from typing import Callable, Protocol, Sequence

import pika
import pika.frame
from pika.adapters.select_connection import IOLoop
from pika.channel import ContentFrameAssembler
from pika.exceptions import AMQPError, BodyTooLongError, ChannelClosedByBroker, ProbableAuthenticationError
from pika.spec import Basic

from . import observability
from .messages import InvalidMessage, Message, MessageT, decode, encode_batches
from .settings import max_message_bytes_from_environment, queue_type_from_environment
from .tls import AmqpTls, connect_problem, connection_candidates, untrusted
from .topology import (DEAD_LETTERS_EXCHANGE, INPUTS_EXCHANGE, PIPELINE, REASON_HEADER, SOURCE_QUEUE_HEADER, Topology,
                       check_declared, dead_letter_queue, declare)

log = logging.getLogger("mlmonitor.amqp")

PERSISTENT = 2
COALESCE_BYTES = 256 * 1024


def coalesce_socket_writes() -> None:
    """pika's transport sends each buffered message with a send(2) of its own; with many publishes
    and acks per loop turn that is a syscall, and a TCP segment for the broker to read, per
    message. This joins what is buffered (up to COALESCE_BYTES) into one send. Installed once, at
    import; a pika without the expected internals is left alone."""
    try:
        from pika.adapters.utils.io_services_utils import _AsyncTransportBase
    except ImportError:
        return
    produce = getattr(_AsyncTransportBase, "_produce", None)
    if produce is None or getattr(produce, "coalescing", False):
        return

    def _produce(self) -> None:
        buffers = getattr(self, "_tx_buffers", None)
        if buffers is not None and len(buffers) > 1:
            chunks, size = [], 0
            while buffers and size < COALESCE_BYTES:
                chunks.append(buffers.popleft())
                size += len(chunks[-1])
            buffers.appendleft(b"".join(chunks))
        produce(self)

    _produce.coalescing = True
    _AsyncTransportBase._produce = _produce


coalesce_socket_writes()

TRUNCATED_KEEP_BYTES = 64 * 1024  # what a dead letter keeps of a body over the cap
ORIGINAL_SIZE_HEADER = "x-original-body-bytes"  # on a dead letter cut short: the size the body had
_ASSEMBLER_INTERNALS = ("_header_frame", "_seen_so_far", "_body_fragments", "_finish", "_handle_body_frame")


class OversizedBody(bytes):
    """The first bytes of a message body over a consumer's cap; `size` is the whole body's, as its
    content header announced it. The rest was dropped frame by frame as it arrived."""

    size: int

    def __new__(cls, prefix: bytes, size: int) -> OversizedBody:
        body = super().__new__(cls, prefix)
        body.size = size
        return body


class _CappedContentAssembler(ContentFrameAssembler):
    """pika's assembler of a channel's content frames, except that of a body over `max_body_bytes`
    it keeps only the first TRUNCATED_KEEP_BYTES: pika holds every fragment of a body and then joins
    them, so a 100 MB message costs 200 MB before any callback could refuse it."""

    def __init__(self, max_body_bytes: int):
        super().__init__()
        self.max_body_bytes = max_body_bytes
        self.keep_bytes = min(max_body_bytes, TRUNCATED_KEEP_BYTES)

    def _handle_body_frame(self, body_frame):
        size = self._header_frame.body_size
        if size <= self.max_body_bytes:
            return super()._handle_body_frame(body_frame)
        fragment = body_frame.fragment
        room = self.keep_bytes - sum(map(len, self._body_fragments))
        if room > 0:
            self._body_fragments.append(fragment[:room])
        self._seen_so_far += len(fragment)
        if self._seen_so_far > size:
            raise BodyTooLongError(self._seen_so_far, size)
        if self._seen_so_far < size:
            return None
        method, header, prefix = self._finish()
        return method, header, OversizedBody(prefix, size)


def cap_message_bodies(channel, max_body_bytes: int) -> bool:
    """Makes `channel` hold at most the first bytes of a body over `max_body_bytes` (an OversizedBody).
    False on a pika without the internals this replaces: bodies then come whole, and are refused whole."""
    assembler = getattr(channel, "_content_assembler", None)
    if type(assembler) is not ContentFrameAssembler or not all(hasattr(assembler, name)
                                                               for name in _ASSEMBLER_INTERNALS):
        return False
    channel._content_assembler = _CappedContentAssembler(max_body_bytes)
    return True


class UnreadableProperties(pika.BasicProperties):
    """Stands for the properties of a message whose content header pika can't decode; `problem` says
    why, in one line."""

    def __init__(self, problem: str):
        super().__init__()
        self.problem = problem


def tolerate_unreadable_properties() -> None:
    """pika decodes a message's headers recursively, in the IO loop: headers nested a few hundred
    deep raise RecursionError there and drop the connection, and the message, redelivered, drops it
    again, for ever. This decodes such a content header as UnreadableProperties instead, so the
    consumer dead-letters the message. Installed once, at import; a pika without the expected
    internals is left alone."""
    decode_frame = getattr(pika.frame, "decode_frame", None)
    if decode_frame is None or getattr(decode_frame, "tolerant", False):
        return

    def tolerant_decode_frame(data_in):
        try:
            return decode_frame(data_in)
        except Exception as error:  # RecursionError among them
            header = _content_header_without_properties(data_in, error)
            if header is None:
                raise
            return header

    tolerant_decode_frame.tolerant = True
    pika.frame.decode_frame = tolerant_decode_frame


def _content_header_without_properties(data_in: bytes, error: Exception):
    """(bytes consumed, a Header frame with UnreadableProperties) for a whole, well-framed content
    header of class Basic; None for anything else, which pika's error then covers."""
    spec = pika.spec
    try:
        frame_type, channel_number, frame_size = struct.unpack_from(">BHL", data_in)
        frame_end = spec.FRAME_HEADER_SIZE + frame_size + spec.FRAME_END_SIZE
        if frame_type != spec.FRAME_HEADER or len(data_in) < frame_end or data_in[frame_end - 1] != spec.FRAME_END:
            return None
        class_id, _weight, body_size = struct.unpack_from(">HHQ", data_in, spec.FRAME_HEADER_SIZE)
    except struct.error:
        return None
    if class_id != spec.BasicProperties.INDEX:
        return None
    why = "nested too deeply" if isinstance(error, RecursionError) else " ".join(str(error).split())[:200]
    problem = f"its AMQP properties can't be decoded ({type(error).__name__}: {why})"
    return frame_end, pika.frame.Header(channel_number, body_size, UnreadableProperties(problem))


tolerate_unreadable_properties()


HOUSEKEEPING_SECONDS = 0.2
DEAD_LETTER_POLL_SECONDS = 5.0
MAX_REASON_CHARACTERS = 500


def one_line_reason(reason: str) -> str:
    """A rejection reason as the dead letter's header and the log carry it, whatever the worker gave:
    control characters escaped, at most MAX_REASON_CHARACTERS."""
    if not reason.isprintable():
        reason = "".join(character if character.isprintable() else repr(character)[1:-1] for character in reason)
    return reason if len(reason) <= MAX_REASON_CHARACTERS else reason[:MAX_REASON_CHARACTERS - 1] + "…"


class Worker(Protocol):
    def on_connected(self, session: Session) -> None:
        """Start consuming or publishing; called after each (re)connect."""

    def on_disconnected(self) -> None:
        """Forget in-flight deliveries and publishes; the broker redelivers what was not acked."""


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s … up to `cap`."""

    def __init__(self, first: float = 0.5, cap: float = 15.0):
        self.first = first
        self.cap = cap
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Delivery:
    __slots__ = ("queue", "body", "headers", "redelivered", "tag", "_acks", "dead_lettered")

    def __init__(self, queue: str, body: bytes, headers: dict | None, redelivered: bool, tag: int, acks: _AckTracker):
        self.queue = queue
        self.body = body
        self.headers = headers or {}
        self.redelivered = redelivered
        self.tag = tag
        self._acks = acks
        self.dead_lettered = False

    def ack(self) -> None:
        self._acks.done(self.tag)


def after_all(count: int, callback: Callable[[], None]) -> Callable[[], None]:
    """A callback that runs `callback` on its `count`-th call: e.g. ack once each copy is confirmed."""
    remaining = count

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            callback()

    return one_done


def publish_batches(session: Session, exchange: str, batch_type: type[Message], items: list[bytes],
                    on_confirmed: list[Callable[[], None]]) -> None:
    """Publishes the encoded `items` as `batch_type` messages, as few as MAX_BATCH_BYTES allows;
    `on_confirmed[i]` runs once the message holding `items[i]` is confirmed. Not mandatory: a batch
    exchange has no queue until drift first starts, and drift sees what is published once it has."""
    start = 0
    for body, count in encode_batches(batch_type.ITEMS, items):
        callbacks = on_confirmed[start:start + count]
        start += count
        session.publish(exchange, "", body, on_confirmed=lambda callbacks=callbacks: _run_all(callbacks),
                        mandatory=False)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


class _AckTracker:
    """Acks finished deliveries of one channel: the finished prefix with one multiple=True ack, and
    finished deliveries behind an unfinished one singly, so a slow delivery never fills the prefetch."""

    def __init__(self, channel, ioloop: IOLoop):
        self._channel = channel
        self._ioloop = ioloop
        self._outstanding: dict[int, bool] = {}  # tag -> finished, in delivery order
        self._finished_behind_gap: list[int] = []
        self._flush_scheduled = False
        self.active = True

    def received(self, tag: int) -> None:
        self._outstanding[tag] = False

    def done(self, tag: int) -> None:
        if not self.active or tag not in self._outstanding:
            return
        self._outstanding[tag] = True
        self._finished_behind_gap.append(tag)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._ioloop.call_later(0, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.active or not self._channel.is_open:
            return
        last_of_prefix = None
        for tag, finished in self._outstanding.items():
            if not finished:
                break
            last_of_prefix = tag
        if last_of_prefix is not None:
            while self._outstanding:
                tag = next(iter(self._outstanding))
                if tag > last_of_prefix:
                    break
                del self._outstanding[tag]
            self._channel.basic_ack(last_of_prefix, multiple=True)
        for tag in self._finished_behind_gap:
            if tag in self._outstanding:
                del self._outstanding[tag]
                self._channel.basic_ack(tag)
        self._finished_behind_gap.clear()


class _Consumer:
    """Collects the deliveries of one loop turn and hands them to the worker as one batch."""

    def __init__(self, session: Session, queue: str, on_batch: Callable[[list[Delivery]], None], channel):
        self._session = session
        self._queue = queue
        self._on_batch = on_batch
        self._channel = channel
        self.acks = _AckTracker(channel, session.ioloop)
        self._batch: list[Delivery] = []
        self._max_bytes = session.runner.max_message_bytes
        self._consumed = observability.MESSAGES_CONSUMED.labels(queue)
        self._batch_seconds = observability.BATCH_SECONDS.labels(queue)

    def on_message(self, _channel, method, properties, body: bytes) -> None:
        self.acks.received(method.delivery_tag)
        delivery = Delivery(self._queue, body, properties.headers, method.redelivered, method.delivery_tag,
                            self.acks)
        if self._refuse_unread(delivery, properties):
            return
        self._batch.append(delivery)
        if len(self._batch) == 1:
            self._session.ioloop.call_later(0, self._dispatch)

    def _refuse_unread(self, delivery: Delivery, properties) -> bool:
        """Dead-letters, before the worker could parse it, a message over the cap or whose properties
        could not be decoded. A copy cut short says so, and how big the body was, in its headers."""
        body = delivery.body
        size = body.size if isinstance(body, OversizedBody) else len(body)
        problems, headers = [], {}
        if isinstance(properties, UnreadableProperties):
            problems.append(properties.problem)
        if size > self._max_bytes:
            problems.append(f"message of {size} bytes is over MAX_MESSAGE_BYTES ({self._max_bytes})")
        if isinstance(body, OversizedBody):
            problems[-1] += f"; this copy keeps its first {len(body)} bytes"
            headers[ORIGINAL_SIZE_HEADER] = size
            delivery.body = bytes(body)
        if not problems:
            return False
        self._consumed.inc()
        self._session.dead_letter(delivery, "; ".join(problems), headers)
        return True

    def _dispatch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch or not self._session.is_open:
            return
        self._consumed.inc(len(batch))
        started = time.perf_counter()
        try:
            self._on_batch(batch)
        except Exception:
            log.error("bug while processing a batch of %d from %s; retrying one by one:\n%s",
                      len(batch), self._queue, traceback.format_exc().rstrip())
            self._retry_one_by_one(batch)
        self._batch_seconds.observe(time.perf_counter() - started)

    def _retry_one_by_one(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            try:
                self._on_batch([delivery])
            except Exception as error:  # a bug: keep the message in the DLQ rather than loop on it
                log.exception("bug while processing a message from %s", self._queue)
                self._session.dead_letter(delivery, f"processing error: {type(error).__name__}: {error}")


# Exchanges whose routing key names the destination queue: a publish to them counts under that queue.
_ROUTED_BY_KEY = ("", INPUTS_EXCHANGE, DEAD_LETTERS_EXCHANGE)


class _Publisher:
    """Publishes persistent, mandatory messages with pipelined confirms, tracked per sequence number."""

    def __init__(self, session: Session, channel):
        self._session = session
        self._channel = channel
        self._sequence = 0
        self._pending: dict[int, tuple[str, str, bytes, dict | None, Callable[[], None] | None, bool]] = {}
        self._returned = False
        self._plain_properties = pika.BasicProperties(delivery_mode=PERSISTENT, content_type="application/json")
        self._published = {}  # exchange or routing key -> its MESSAGES_PUBLISHED child, looked up once
        channel.confirm_delivery(self._on_confirm)
        channel.add_on_return_callback(self._on_return)

    @property
    def unconfirmed(self) -> int:
        return len(self._pending)

    def publish(self, exchange: str, routing_key: str, body: bytes, headers: dict | None,
                on_confirmed: Callable[[], None] | None, mandatory: bool = True) -> None:
        properties = self._plain_properties if headers is None else pika.BasicProperties(
            delivery_mode=PERSISTENT, content_type="application/json", headers=headers)
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        self._sequence += 1
        self._pending[self._sequence] = (exchange, routing_key, body, headers, on_confirmed, mandatory)

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if method.multiple:
            tags = []
            for tag in self._pending:
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self._pending else []
        entries = [self._pending.pop(tag) for tag in tags]
        if self._returned:
            return  # an unroutable message is among these; the session restarts and work is redone
        if isinstance(method, Basic.Nack):
            log.warning("broker refused %d message(s); publishing them again", len(entries))
            for entry in entries:
                self.publish(*entry)
            return
        confirmed_to: dict[str, int] = {}  # counted per target, one locked increment each per frame
        for exchange, routing_key, _body, _headers, on_confirmed, _mandatory in entries:
            target = routing_key if exchange in _ROUTED_BY_KEY else exchange
            confirmed_to[target] = confirmed_to.get(target, 0) + 1
            if on_confirmed is not None:
                self._session.run_safely(on_confirmed)
        for target, count in confirmed_to.items():
            counter = self._published.get(target)
            if counter is None:
                counter = self._published[target] = observability.MESSAGES_PUBLISHED.labels(target)
            counter.inc(count)

    def _on_return(self, _channel, method, _properties, _body) -> None:
        log.error("message to exchange %r, routing key %r was unroutable (%s); reconnecting to redeclare",
                  method.exchange, method.routing_key, method.reply_text)
        self._returned = True
        self._session.close()


class Session:
    """One connected period: a consuming and a publishing connection on one IO loop.

    Everything the worker gets from a session (deliveries, timers, confirms) is void once the
    session closes, and the IO loop with its pending timers is dropped; the worker learns that
    through `on_disconnected`.
    """

    def __init__(self, runner: ServiceRunner, parameters: pika.URLParameters):
        self.runner = runner
        self.ioloop = IOLoop()
        self.is_open = False
        self._closing = False
        self._consumers: list[_Consumer] = []
        self._publisher: _Publisher | None = None
        self._dead_letter_queues: list[str] = []  # of the queues consumed, each polled for its depth
        self.failure: BaseException | None = None
        self._connections = [
            pika.SelectConnection(parameters, on_open_callback=self._on_connection_open,
                                  on_open_error_callback=self._on_connection_failed,
                                  on_close_callback=self._on_connection_closed, custom_ioloop=self.ioloop)
            for _ in range(2)
        ]
        self._consume_connection, self._publish_connection = self._connections
        self._opened = 0

    # --- the worker's API -------------------------------------------------------------------

    def consume(self, queue: str, on_batch: Callable[[list[Delivery]], None], prefetch: int) -> None:
        """Hands `on_batch` the deliveries of `queue`, except those the runtime refuses unread (over
        the runner's max_message_bytes, or with undecodable properties), which go to its DLQ."""

        def on_channel_open(channel):
            channel.add_on_close_callback(self._on_channel_closed)
            if not cap_message_bodies(channel, self.runner.max_message_bytes):
                log.warning("this pika has no ContentFrameAssembler as expected: a message over "
                            "MAX_MESSAGE_BYTES is held whole before it is refused")
            consumer = _Consumer(self, queue, on_batch, channel)
            self._consumers.append(consumer)
            channel.basic_qos(prefetch_count=prefetch,
                              callback=lambda _frame: channel.basic_consume(queue, consumer.on_message))

        if not self._consume_connection.is_open:
            return  # closed right after opening: the session is ending and the runner reconnects
        self._consume_connection.channel(on_open_callback=on_channel_open)
        self._watch_dead_letters_of(queue)

    def publish(self, exchange: str, routing_key: str, body: bytes, on_confirmed: Callable[[], None] | None = None,
                headers: dict | None = None, mandatory: bool = True) -> None:
        """`mandatory=False` only where no bound queue is no loss: the broker then confirms and drops it."""
        if not self.is_open:
            return  # closing: nothing from this session gets acked, so the inputs come back
        self._publisher.publish(exchange, routing_key, body, headers, on_confirmed, mandatory)

    def dead_letter(self, delivery: Delivery, reason: str, headers: dict | None = None) -> None:
        """Moves the delivery to `<queue>.dlq`, through the dead_letters exchange, with `reason` (and `headers`,
        if given) in its headers."""
        if not self.is_open or delivery.dead_lettered:
            return  # closing, or rejected already (in a batch that hit a bug and is retried singly)
        delivery.dead_lettered = True
        dlq = dead_letter_queue(delivery.queue)
        reason = one_line_reason(reason)
        headers = {**delivery.headers, **(headers or {}), REASON_HEADER: reason, SOURCE_QUEUE_HEADER: delivery.queue}
        self.runner.rejections.event("rejected a message from %s into %s: %s", delivery.queue, dlq, reason)
        observability.MESSAGES_DEAD_LETTERED.labels(delivery.queue).inc()
        self._publisher.publish(DEAD_LETTERS_EXCHANGE, dlq, delivery.body, headers, delivery.ack)

    @property
    def unconfirmed(self) -> int:
        return self._publisher.unconfirmed if self._publisher else 0

    def watch_queue_depths(self, queues: Sequence[str], interval: float,
                           on_depths: Callable[[dict[str, int]], None]) -> None:
        """Every `interval` seconds, `on_depths({queue: ready messages})`, read by passive declares
        on a channel of its own. A queue that has gone missing closes the session, and the
        reconnect declares it again."""
        queues = list(dict.fromkeys(queues))
        self._watch_depths(lambda: queues, interval, on_depths)

    def _watch_depths(self, queues_now: Callable[[], list[str]], interval: float,
                      on_depths: Callable[[dict[str, int]], None]) -> None:
        """As watch_queue_depths, for the distinct queues `queues_now()` names at each poll."""

        def on_channel_open(channel):
            channel.add_on_close_callback(self._on_channel_closed)
            poll(channel)

        def poll(channel):
            if not self.is_open:
                return
            queues = queues_now()
            depths: dict[str, int] = {}

            def on_declared(frame):
                depths[frame.method.queue] = frame.method.message_count
                if len(depths) == len(queues):
                    self.run_safely(lambda: on_depths(depths))
                    self.call_later(interval, lambda: poll(channel))

            if not queues:
                self.call_later(interval, lambda: poll(channel))
            for queue in queues:
                channel.queue_declare(queue, passive=True, callback=on_declared)

        if self._consume_connection.is_open:
            self._consume_connection.channel(on_open_callback=on_channel_open)

    def _watch_dead_letters_of(self, queue: str) -> None:
        """Adds the queue's DLQ, if the topology declares one, to those whose depth this session
        reports as mlmonitor_dead_letter_queue_messages, polled on one channel for all of them."""
        spec = next((spec for spec in self.runner.topology.queues if spec.name == queue), None)
        if spec is None or not spec.dead_letters or spec.dlq in self._dead_letter_queues:
            return
        self._dead_letter_queues.append(spec.dlq)
        if len(self._dead_letter_queues) == 1:
            self._watch_depths(lambda: list(self._dead_letter_queues), self.runner.dead_letter_poll_seconds,
                               observability.show_dead_letter_depths)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Runs `callback` after `delay` seconds unless the session has closed by then."""

        def fire():
            if self.is_open:
                self.run_safely(callback)

        self.ioloop.call_later(delay, fire)

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        """From another thread: runs `callback` on the IO loop soon, unless the session has closed by then."""

        def fire():
            if self.is_open:
                self.run_safely(callback)

        try:
            self.ioloop.add_callback_threadsafe(fire)
        except Exception:  # the loop is gone: the session closed, and so the callback is void anyway
            if self.is_open:
                raise

    def every(self, interval: float, callback: Callable[[], None]) -> None:
        def tick():
            callback()
            self.call_later(interval, tick)

        self.call_later(interval, tick)

    def stop(self, exit_code: int = 0) -> None:
        """Ends the service: closes the session and makes the runner return `exit_code`."""
        self.runner.request_stop(exit_code)
        self.close()

    def run_safely(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("bug in a callback; the service keeps going")

    # --- connection lifecycle ---------------------------------------------------------------

    def _on_connection_open(self, _connection) -> None:
        self._opened += 1
        if self._opened == len(self._connections):
            self._publish_connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_publish_channel_open(self, channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        self._publisher = _Publisher(self, channel)
        self.is_open = True
        self._housekeeping()
        self.run_safely(lambda: self.runner.worker.on_connected(self))

    def _housekeeping(self) -> None:
        if self.runner.stop_requested:
            self.close()
            return
        self.runner.rejections.flush()
        self.ioloop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)

    def _on_connection_failed(self, _connection, error) -> None:
        self.failure = error
        self.close()

    def _on_connection_closed(self, _connection, reason) -> None:
        if not self._closing:
            log.warning("lost the connection to RabbitMQ: %s", reason)
            self.failure = reason
        self.close()

    def _on_channel_closed(self, channel, reason) -> None:
        if not self._closing:
            log.warning("channel %s closed: %s", channel.channel_number, reason)
            self.failure = reason
        self.close()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.is_open = False
            for consumer in self._consumers:
                consumer.acks.active = False
            for connection in self._connections:
                if not (connection.is_closing or connection.is_closed):
                    connection.close()
        if all(connection.is_closed for connection in self._connections):
            self.ioloop.stop()


ACCESS_REFUSED = 403
NOT_FOUND = 404
PRECONDITION_FAILED = 406


class TopologyNotDeclared(AMQPError):
    """Part of the topology is missing and our user may not declare it; the runner waits for it."""


class TopologyMismatch(Exception):
    """A queue exists with other arguments than ours (another QUEUE_TYPE): waiting won't mend it."""


class ServiceRunner:
    """Connects, declares the topology, runs the worker, reconnects when the broker goes away.

    `max_message_bytes` caps every consumed message (MAX_MESSAGE_BYTES from the environment when not
    given); the depth of each consumed queue's DLQ is polled every `dead_letter_poll_seconds`.
    `tls` verifies an amqps:// broker (mlmonitor.tls; AMQP_CA_FILE etc. from the environment when not given).
    `amqp_url` may list a cluster's nodes: the runner connects to one that answers and, when it loses that
    one, tries the next first. `queue_type` (QUEUE_TYPE from the environment when not given) is the type of
    the queues it declares."""

    def __init__(self, worker: Worker | None, amqp_url: str, topology: Topology = PIPELINE,
                 backoff: Backoff | None = None, max_message_bytes: int | None = None,
                 dead_letter_poll_seconds: float = DEAD_LETTER_POLL_SECONDS, tls: AmqpTls | None = None,
                 queue_type: str | None = None):
        from .logs import EventLog

        self.worker = worker
        self.candidates = connection_candidates(amqp_url, tls)
        self._current = random.randrange(len(self.candidates))  # a cluster's clients spread over its nodes
        self.queue_type = queue_type_from_environment() if queue_type is None else queue_type
        self.topology = topology
        self.backoff = backoff or Backoff()
        self.max_message_bytes = (max_message_bytes_from_environment() if max_message_bytes is None
                                  else max_message_bytes)
        self.dead_letter_poll_seconds = dead_letter_poll_seconds
        self.stop_requested = False
        self.exit_code = 0
        self.rejections = EventLog(log, "messages dead-lettered")
        self._missing: str | None = None  # what the last check of the topology found missing ("": nothing)

    @property
    def parameters(self) -> pika.URLParameters:
        """The node connected to last, or to try first."""
        return self.candidates[self._current]

    def request_stop(self, exit_code: int = 0) -> None:
        self.stop_requested = True
        self.exit_code = exit_code

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.request_stop(0))

    def run(self) -> int:
        where = describe_nodes(self.candidates)
        attempt = 0
        while not self.stop_requested:
            try:
                self._declare_topology()
            except ProbableAuthenticationError as error:
                log.error("RabbitMQ at %s refused our credentials: %r; giving up", where, error)
                return 2
            except SSLCertVerificationError as error:
                log.error("RabbitMQ at %s showed a certificate we can't trust: %s (AMQP_CA_FILE and AMQP_SERVER_NAME "
                          "say whom to trust); giving up", where, untrusted(error))
                return 2
            except TopologyMismatch as mismatch:
                log.error("%s", mismatch)
                return 2
            except (AMQPError, OSError, ValueError) as error:  # access denied too: the vhost may not exist yet
                if isinstance(error, ValueError) and not reset_while_connecting(error):
                    raise
                attempt += 1
                delay = self.backoff.next_delay()
                log.warning("waiting for RabbitMQ at %s (attempt %d): %s; retrying in %.1fs",
                            where, attempt, connect_problem(error), delay)
                self._sleep(delay)
                continue
            if attempt:
                observability.RECONNECTS.inc()
            if attempt or len(self.candidates) > 1:  # which node, with several; a single one is named on reconnects
                log.info("connected to RabbitMQ at %s", describe_nodes([self.parameters]) + (
                    f" (node {self._current + 1} of {len(self.candidates)} in AMQP_URL)"
                    if len(self.candidates) > 1 else ""))
            attempt = 0
            connected_at = time.monotonic()
            session = Session(self, self.parameters)
            try:
                session.ioloop.start()
            except ValueError as error:
                if not reset_while_connecting(error):
                    raise
                log.warning("lost the connection to RabbitMQ while connecting: %s", error)
                session.close()
            self.worker.on_disconnected()
            if self.stop_requested:
                break
            if time.monotonic() - connected_at > 30:
                self.backoff.reset()
            attempt = 1
            self._current = (self._current + 1) % len(self.candidates)  # the node may be gone: another first
            self._sleep(self.backoff.next_delay())
        return self.exit_code

    def _declare_topology(self) -> None:
        """Declares the topology; with a user that may not declare it (least privilege), checks that the
        broker's definitions hold it, and raises TopologyNotDeclared while something is missing."""
        connection = self._connect_to_any()
        try:
            try:
                declare(connection.channel(), self.topology, self.queue_type)
            except ChannelClosedByBroker as refused:
                if refused.reply_code == PRECONDITION_FAILED:
                    raise TopologyMismatch(
                        f"RabbitMQ refused our declaration of the topology with QUEUE_TYPE={self.queue_type} "
                        f"({refused.reply_text}); fix: set QUEUE_TYPE to the existing queues' type, or drain and "
                        "delete those queues (docs/scaling.md) so that they are declared anew; giving up") from None
                if refused.reply_code != ACCESS_REFUSED:
                    raise
                self._check_declared_by_others(connection, refused)
        finally:
            if connection.is_open:
                connection.close()

    def _connect_to_any(self) -> pika.BlockingConnection:
        """A connection to the first node that answers, from the current one on, which becomes current.
        Credentials and certificates are the same on every node: refused by one, they raise at once."""
        failure: BaseException | None = None
        for step in range(len(self.candidates)):
            index = (self._current + step) % len(self.candidates)
            try:
                connection = pika.BlockingConnection(self.candidates[index])
            except (ProbableAuthenticationError, SSLCertVerificationError):
                raise
            except (AMQPError, OSError, ValueError) as error:
                if isinstance(error, ValueError) and not reset_while_connecting(error):
                    raise
                failure = error
                continue
            self._current = index
            return connection
        raise failure

    def _check_declared_by_others(self, connection, refused: ChannelClosedByBroker) -> None:
        try:
            check_declared(connection.channel(), self.topology)
        except ChannelClosedByBroker as missing:
            if missing.reply_code != NOT_FOUND:
                raise
            if missing.reply_text != self._missing:
                self._missing = missing.reply_text
                log.warning("our user may not declare the topology (%s) and part of it is missing (%s); waiting "
                            "for it to be declared (scripts/rabbitmq_users.py imports it)",
                            refused.reply_text, missing.reply_text)
            raise TopologyNotDeclared(missing.reply_text) from None
        if self._missing != "":
            self._missing = ""
            log.info("our user may not declare the topology; the broker has all of it")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))


def describe_nodes(candidates: Sequence[pika.URLParameters]) -> str:
    """host:port of each node, and the vhost, e.g. "127.0.0.1:5681, 127.0.0.1:5682 vhost '/'"; never a password."""
    nodes = ", ".join(f"{parameters.host}:{parameters.port}" for parameters in candidates)
    return f"{nodes} vhost {candidates[0].virtual_host!r}"


def reset_while_connecting(error: ValueError) -> bool:
    """pika raises a ValueError, not a connection error, when a socket it has just connected is reset
    before it sets it up (io_services_utils: "Expected connected socket, but getpeername() failed")."""
    return str(error).startswith("Expected connected socket")


def run_worker(worker: Worker, amqp_url: str, topology: Topology = PIPELINE, max_message_bytes: int | None = None,
               tls: AmqpTls | None = None, queue_type: str | None = None) -> int:
    runner = ServiceRunner(worker, amqp_url, topology, max_message_bytes=max_message_bytes, tls=tls,
                           queue_type=queue_type)
    runner.install_signal_handlers()
    return runner.run()


def decode_or_dead_letter(session: Session, message_type: type[MessageT], delivery: Delivery) -> MessageT | None:
    """The delivery's message; or None, once an invalid one is on its way to the dead-letter queue."""
    try:
        return decode(message_type, delivery.body)
    except InvalidMessage as invalid:
        session.dead_letter(delivery, invalid.reason)
        return None
