"""The runtime joins pika's buffered writes into one send(2) (mlmonitor.amqp.coalesce_socket_writes).
These tests pin the pika internals it relies on, so a pika upgrade that changes them fails here."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path

from pika.adapters.utils.io_services_utils import _AsyncTransportBase

import mlmonitor.amqp  # noqa: F401  (installs the coalescing)


class FakeSocket:
    def __init__(self, accept_per_send: int | None = None):
        self.sends: list[bytes] = []
        self._accept = accept_per_send

    def send(self, data) -> int:
        data = bytes(data)
        taken = data if self._accept is None else data[:self._accept]
        self.sends.append(taken)
        return len(taken)


class Transport(_AsyncTransportBase):
    def write(self, data) -> None:  # abstract in pika; _produce is what we test
        raise NotImplementedError


def transport(chunks: list[bytes], sock: FakeSocket) -> _AsyncTransportBase:
    transport = object.__new__(Transport)
    transport._tx_buffers = deque(chunks)
    transport._tx_buffered_byte_count = sum(map(len, chunks))
    transport._sock = sock
    transport._state = _AsyncTransportBase._STATE_ACTIVE
    return transport


def test_buffered_messages_leave_in_one_send():
    sock = FakeSocket()
    t = transport([b"frame-1|", b"frame-2|", b"frame-3|"], sock)
    t._produce()
    assert sock.sends == [b"frame-1|frame-2|frame-3|"]
    assert not t._tx_buffers and t._tx_buffered_byte_count == 0


def test_a_partial_send_keeps_the_rest_in_order():
    sock = FakeSocket(accept_per_send=5)
    t = transport([b"abc", b"defg", b"hij"], sock)
    t._produce()
    assert b"".join(sock.sends) == b"abcdefghij"
    assert t._tx_buffered_byte_count == 0


def test_at_most_coalesce_bytes_are_joined_at_once(monkeypatch):
    monkeypatch.setattr(mlmonitor.amqp, "COALESCE_BYTES", 6)
    sock = FakeSocket()
    t = transport([b"aaa", b"bbb", b"ccc", b"ddd"], sock)
    t._produce()
    assert sock.sends[0] == b"aaabbb" and b"".join(sock.sends) == b"aaabbbcccddd"


def test_the_bare_baseline_runs_plain_pika():
    """bench/bare.py is the broker's limit with plain pika: importing it must not install our coalescing,
    which made the baseline 20-30 % faster while it imported mlmonitor.amqp by accident (9c454ee)."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import bare; "
             "from pika.adapters.utils.io_services_utils import _AsyncTransportBase as T; "
             "print(getattr(T._produce, 'coalescing', False))")
    bench = Path(__file__).resolve().parents[2] / "bench"
    printed = subprocess.run([sys.executable, "-c", probe, str(bench)], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == "False"
    assert getattr(_AsyncTransportBase._produce, "coalescing", False)  # while our runtime, imported here, has it
