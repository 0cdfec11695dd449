"""The runtime replaces two more pika internals (mlmonitor.amqp): each consumer channel's content
frame assembler, so a body over MAX_MESSAGE_BYTES is never held whole, and pika.frame.decode_frame,
so undecodable message properties don't drop the connection. These tests drive pika's own Channel
and Connection code with real frames, so a pika upgrade that changes what the patches rely on fails
here."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pika
import pytest
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel
from pika.connection import Connection
from pika.exceptions import InvalidFrameError

from mlmonitor.amqp import OversizedBody, UnreadableProperties, cap_message_bodies

CHANNEL = 1
FRAME_BYTES = 1000  # body fragment per frame; the broker's are up to frame_max (128 KiB)


def channel_recording_deliveries() -> tuple[Channel, list[tuple]]:
    channel = Channel(SimpleNamespace(callbacks=CallbackManager()), CHANNEL, None)
    delivered = []
    channel._on_deliver = lambda method, header, body: delivered.append((method.method.delivery_tag, body))
    return channel, delivered


def frames_of(tag: int, body: bytes) -> list[frame.Frame]:
    deliver = spec.Basic.Deliver(consumer_tag="c", delivery_tag=tag, exchange="", routing_key="q")
    frames = [frame.Method(CHANNEL, deliver), frame.Header(CHANNEL, len(body), spec.BasicProperties())]
    return frames + [frame.Body(CHANNEL, body[start:start + FRAME_BYTES]) for start in range(0, len(body), FRAME_BYTES)]


def receive(channel: Channel, frames: list[frame.Frame], watch=lambda: None) -> None:
    """Each frame as the connection hands it over: marshalled, decoded, to the channel."""
    for sent in frames:
        _, decoded = Connection._read_frame(SimpleNamespace(_frame_buffer=sent.marshal()))
        channel._handle_content_frame(decoded)
        watch()


def test_a_body_within_the_cap_arrives_whole():
    channel, delivered = channel_recording_deliveries()
    assert cap_message_bodies(channel, max_body_bytes=5000)
    body = bytes(range(256)) * 19 + b"1234"  # 4868 bytes in 5 frames
    receive(channel, frames_of(1, body) + frames_of(2, b"x" * 5000))
    assert [(tag, type(got), got) for tag, got in delivered] == [(1, bytes, body), (2, bytes, b"x" * 5000)]


def test_of_a_body_over_the_cap_only_the_first_bytes_are_ever_held():
    channel, delivered = channel_recording_deliveries()
    assert cap_message_bodies(channel, max_body_bytes=3000)
    assembler = channel._content_assembler
    held = []
    body = b"".join(b"%07d," % number for number in range(10_000))  # 80,000 bytes in 80 frames

    receive(channel, frames_of(1, body) + frames_of(2, b"after"),
            watch=lambda: held.append(sum(map(len, assembler._body_fragments))))

    (tag, cut), (next_tag, after) = delivered
    assert tag == 1 and isinstance(cut, OversizedBody) and cut.size == len(body) and bytes(cut) == body[:3000]
    assert max(held) <= 3000
    assert next_tag == 2 and after == b"after" and not isinstance(after, OversizedBody)


def test_a_cut_copy_keeps_at_most_64_kib_however_high_the_cap():
    channel, delivered = channel_recording_deliveries()
    assert cap_message_bodies(channel, max_body_bytes=100_000)
    body = b"y" * 100_001
    receive(channel, frames_of(1, body))
    ((_, cut),) = delivered
    assert cut.size == 100_001 and len(cut) == 64 * 1024


def nested_headers_frame(depth: int, body_size: int) -> bytes:
    """A content header whose headers table nests `depth` tables, {"a": {"a": ...}}, built by hand:
    pika's own encoder is recursive too."""
    table = struct.pack(">I", 0)
    for _ in range(depth):
        entry = b"\x01a" + b"F" + table
        table = struct.pack(">I", len(entry)) + entry
    properties = struct.pack(">H", 1 << 13) + table  # property flags: headers only
    payload = struct.pack(">HxxQ", spec.BasicProperties.INDEX, body_size) + properties
    return struct.pack(">BHI", spec.FRAME_HEADER, CHANNEL, len(payload)) + payload + bytes([spec.FRAME_END])


def test_headers_nested_too_deeply_decode_as_unreadable_properties_and_the_stream_goes_on():
    header = nested_headers_frame(depth=5000, body_size=4)
    stream = header + frame.Body(CHANNEL, b"body").marshal()

    consumed, decoded = Connection._read_frame(SimpleNamespace(_frame_buffer=stream))
    assert consumed == len(header)
    assert isinstance(decoded, frame.Header) and decoded.body_size == 4 and decoded.channel_number == CHANNEL
    assert isinstance(decoded.properties, UnreadableProperties) and decoded.properties.headers is None
    assert "nested too deeply" in decoded.properties.problem

    _, body = Connection._read_frame(SimpleNamespace(_frame_buffer=stream[consumed:]))
    assert isinstance(body, frame.Body) and body.fragment == b"body"


def test_headers_pika_can_decode_are_untouched():
    _, decoded = Connection._read_frame(SimpleNamespace(_frame_buffer=nested_headers_frame(depth=20, body_size=1)))
    assert type(decoded.properties) is pika.BasicProperties and "a" in decoded.properties.headers


def test_a_broken_frame_still_breaks_the_connection():
    header = bytearray(nested_headers_frame(depth=5000, body_size=4))
    header[-1] = 0  # not FRAME_END: the stream is out of step, nothing to recover
    with pytest.raises(InvalidFrameError):
        Connection._read_frame(SimpleNamespace(_frame_buffer=bytes(header)))


def test_a_socket_reset_before_pika_sets_it_up_is_told_apart_from_a_bug():
    """pika reports it as a ValueError; the runtime reconnects on exactly that one (reset_while_connecting)."""
    import socket

    from pika.adapters.utils.io_services_utils import _AsyncStreamConnector

    from mlmonitor.amqp import reset_while_connecting

    with socket.socket() as never_connected:
        with pytest.raises(ValueError) as caught:
            _AsyncStreamConnector(nbio=None, protocol_factory=lambda: None, sock=never_connected, ssl_context=None,
                                  server_hostname=None, on_done=lambda result: None)
    assert reset_while_connecting(caught.value)
    assert not reset_while_connecting(ValueError("some other bug"))
