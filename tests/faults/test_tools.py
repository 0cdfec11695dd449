"""The fault suite's own tools: a checker that can't fail proves nothing, a proxy that can't cut breaks nothing."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from brokers import PrivateBroker, rabbitmq_scripts
from checks import (HEADER, Row, check_dead_letters, check_rows, parse_metric_log, read_confirmed,
                    unexpected_tracebacks)
from tcp_proxy import TcpProxy

PAIRS = {(151.0, 140.0), (75.0, 80.5)}


def write_log(path: Path, text: str) -> Path:
    path.write_text(HEADER + "\n" + text)
    return path


def test_a_clean_log_passes(tmp_path):
    rows, bad = parse_metric_log(write_log(tmp_path / "log.csv", "a,151.0,140.0,11.0\nb,75.0,80.5,5.5\n"))
    verdict = check_rows(rows, bad, {"a": 151.0, "b": 75.0}, PAIRS)
    assert (verdict.rows, verdict.lost, verdict.duplicated, verdict.wrong, bad) == (2, [], [], [], [])


def test_lost_duplicated_unrecorded_and_wrong_rows_are_each_reported(tmp_path):
    text = "a,151.0,140.0,11.0\na,151.0,140.0,11.0\nx,75.0,80.5,5.5\nw,75.0,81.0,6.0\nz,151.0,140.0,12.0\n"
    rows, bad = parse_metric_log(write_log(tmp_path / "log.csv", text))
    verdict = check_rows(rows, bad, {"a": 151.0, "b": 75.0, "w": 75.0, "z": 151.0}, PAIRS)
    assert verdict.lost == ["b"]
    assert verdict.duplicated == ["a"]
    assert verdict.unrecorded == ["x"]
    assert [problem.split(":")[0] for problem in verdict.wrong] == ["w", "z"]


def test_a_wrong_y_true_is_reported(tmp_path):
    rows, bad = parse_metric_log(write_log(tmp_path / "log.csv", "a,75.0,80.5,5.5\n"))
    assert check_rows(rows, bad, {"a": 151.0}, PAIRS).wrong


@pytest.mark.parametrize("text", ["a,151.0,140.0,11.0\nb,75.0,8", "a,151.0,140.0\n", "a,151.0,x,1.0\n",
                                  "a,151.0,140.0,11.0\n\n"])
def test_a_half_written_or_malformed_line_is_reported(tmp_path, text):
    _, bad = parse_metric_log(write_log(tmp_path / "log.csv", text))
    assert bad


def test_confirmed_ids_skip_a_line_cut_short(tmp_path):
    path = tmp_path / "confirmed.csv"
    path.write_text("a,151.0\nb,75.0\nc,1")
    assert read_confirmed(path) == {"a": 151.0, "b": 75.0}


def test_dead_letters_must_be_exactly_the_injected_ones_with_reasons():
    good = {"x-rejection-reason": "body: field required", "x-source-queue": "features"}
    assert check_dead_letters({"features": [(b"bad", good)]}, {"features": [b"bad"]}) == (1, [])
    count, problems = check_dead_letters({"features": [(b"bad", {}), (b"valid", good)]},
                                         {"features": [b"bad", b"other"]})
    assert count == 2 and len(problems) == 4  # lacks "other", holds "valid", no reason, no source queue


def test_only_tracebacks_of_broken_connections_are_expected():
    output = ("x ERROR connection_lost\nTraceback (most recent call last):\n  File \"a.py\"\n"
              "ConnectionResetError: [Errno 104] Connection reset by peer\n"
              "x ERROR bug\nTraceback (most recent call last):\n  File \"b.py\"\nKeyError: 'id'\n")
    assert unexpected_tracebacks(output) == ["KeyError: 'id'"]


@pytest.fixture
def echo_port():
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(connection,), daemon=True).start()

    def echo(connection):
        with connection:
            try:
                while data := connection.recv(4096):
                    connection.sendall(data)
            except ConnectionResetError:
                pass  # the proxy's cut resets this side too

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_the_proxy_forwards_and_its_cut_resets_open_connections(echo_port):
    proxy = TcpProxy(echo_port).start()
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"hello")
        assert client.recv(5) == b"hello"
        assert proxy.cut() == 1
        with pytest.raises(ConnectionResetError):
            client.sendall(b"again")
            client.recv(5)
        client.close()
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        again.sendall(b"back")
        assert again.recv(4) == b"back"
        again.close()
    finally:
        proxy.close()


def test_the_proxy_refuses_new_connections_while_down(echo_port):
    proxy = TcpProxy(echo_port).start()
    try:
        proxy.cut(down_seconds=30)
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                received = client.recv(1)
        except ConnectionResetError:
            received = b""
        assert received == b"" and proxy.open_links == 0
    finally:
        proxy.close()


@pytest.mark.skipif(rabbitmq_scripts() is None, reason="rabbitmq-server is not installed")
def test_the_private_node_never_kills_a_process_that_is_not_its_beam(tmp_path):
    broker = PrivateBroker(tmp_path / "node")
    (broker.directory / "beam.pid").write_text(str(os.getpid()))
    with pytest.raises(RuntimeError, match="not the beam.smp"):
        broker.beam_pid()
    assert broker.node.startswith("faults-") and broker.port != 5672
