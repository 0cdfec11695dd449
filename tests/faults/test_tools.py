"""The fault suite's own tools: a checker that can't fail proves nothing, a proxy that can't cut breaks nothing."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from pathlib import Path

import pytest

from brokers import ClusterBroker, PrivateBroker, rabbitmq_scripts
from checks import (HEADER, check_alerts, check_dead_letters, check_drift_counts, check_rows, parse_metric_log,
                    read_confirmed, read_drift_counts, unexpected_tracebacks)
from scenarios import pairs_hitting_each
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


def test_a_dead_letter_reason_must_be_one_line_and_name_the_field_it_was_told():
    expected = {"predictions.drift": [b"a", b"b", b"c"]}
    found = {"predictions.drift": [
        (b"a", {"x-rejection-reason": "features: expected 10 features", "x-source-queue": "predictions.drift"}),
        (b"b", {"x-rejection-reason": "id: Field required", "x-source-queue": "predictions.drift"}),
        (b"c", {"x-rejection-reason": "body: bad\nsecond line", "x-source-queue": "predictions.drift"})]}
    _, problems = check_dead_letters(found, expected, {b"a": "features:", b"b": "body:"})
    assert len(problems) == 2
    assert "expected one beginning 'body:'" in problems[0] and "more than one line" in problems[1]


def drift_logs(tmp_path: Path, ids: str, covered: int | None = None, events: dict[str, int] | None = None) -> Path:
    """A logs folder as drift leaves it: the ids log and a snapshot covering `covered` bytes of it."""
    (tmp_path / "drift_ids.log").write_text(ids)
    detectors = [{"config": {"name": name, "kind": kind}, "events": count}
                 for (name, kind), count in zip((("feature.bmi", "feature_drift"), ("prediction", "prediction_drift"),
                                                 ("performance", "performance")),
                                                (events or {}).values())]
    state = {"ids_bytes": len(ids.encode()) if covered is None else covered, "detectors": detectors}
    (tmp_path / "drift_state.json").write_text(json.dumps(state))
    return tmp_path


def test_drift_must_count_each_row_once_on_each_stream(tmp_path):
    logs = drift_logs(tmp_path, "p a\no a\np b\np b\no b\np c\no x\n")
    counts, state, problems = read_drift_counts(logs)
    verdict = check_drift_counts(counts, state, ["a", "b", "d"])
    assert problems == []
    assert verdict.missed == ["predictions d", "outcomes d"]
    assert verdict.twice == ["predictions b"]
    assert verdict.without_row == {"predictions": ["c"], "outcomes": ["x"]}


def test_ids_past_the_snapshot_are_not_counted_as_drift_cuts_them_at_start(tmp_path):
    logs = drift_logs(tmp_path, "p a\no a\np b\n", covered=len("p a\no a\n"))
    counts, state, problems = read_drift_counts(logs)
    assert check_drift_counts(counts, state, ["a", "b"]).missed == ["predictions b", "outcomes b"]
    assert problems == []


def test_a_snapshot_counting_more_than_the_ids_log_holds_is_reported(tmp_path):
    _, _, problems = read_drift_counts(drift_logs(tmp_path, "p a\n", covered=100))
    assert problems and "holds 4 bytes" in problems[0]


def test_a_detector_must_take_in_what_its_stream_counted(tmp_path):
    logs = drift_logs(tmp_path, "p a\no a\np b\no b\n",
                      events={"feature.bmi": 2, "prediction": 1, "performance": 2})
    counts, state, _ = read_drift_counts(logs)
    assert check_drift_counts(counts, state, ["a", "b"]).problems == [
        "drift's detector prediction took in 1 events, its ids log counts 2 predictions"]


def alert(episode: str, state: str, detector: str = "feature.bmi") -> bytes:
    return json.dumps({"episode": episode, "kind": "feature_drift", "feature": "bmi", "state": state,
                       "time": "2026-11-29T20:00:00.000+00:00", "events": 400, "score": 1.2, "threshold": 1.0,
                       "model_version": "m", "detector": detector}).encode()


def test_alerts_raised_and_resolved_once_and_announced_pass():
    lines = [alert("e1", "raised"), alert("e1", "resolved"), alert("e2", "raised")]
    alerts, problems = check_alerts(b"\n".join(lines) + b"\n", lines + [alert("e1", "raised")])
    assert (len(alerts), problems) == (3, [])


def test_a_second_raise_of_an_episode_or_of_an_open_detector_is_reported():
    text = b"\n".join([alert("e1", "raised"), alert("e1", "raised"), alert("e2", "raised"), b"{not an alert"])
    _, problems = check_alerts(text + b"\n", [alert("e1", "raised"), alert("e2", "raised")])
    assert len(problems) == 3
    assert "line 4 is not an alert" in problems[0]
    assert "raised of episode e1 2 times" in problems[1]
    assert "raised e2 while e1 was open" in problems[2]


def test_an_alert_only_in_the_file_or_only_on_the_exchange_is_reported():
    _, problems = check_alerts(alert("e1", "raised") + b"\n", [alert("e2", "raised")])
    assert sorted(problem.split(" of ")[1].split()[0] for problem in problems) == ["e1", "e2"]


def test_pairs_to_kill_hit_every_service_once_there_are_enough():
    services = ("features", "model", "metric", "plot", "drift")
    for seed in range(20):
        pairs = pairs_hitting_each(random.Random(seed), services, 3)
        assert all(first != second for first, second in pairs)
        assert {service for pair in pairs for service in pair} == set(services)


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


@pytest.mark.skipif(rabbitmq_scripts() is None, reason="rabbitmq-server is not installed")
def test_the_suites_cluster_has_names_ports_and_a_folder_apart_from_the_integration_tests_cluster(tmp_path):
    cluster = ClusterBroker(tmp_path / "cluster")
    assert cluster.node_pids() == {1: None, 2: None, 3: None}  # nothing of it runs before `up`
    status = cluster.script("status").split()
    assert status[0::3] == [f"{cluster.name}-{node}@localhost" for node in (1, 2, 3)]
    assert [int(port) for port in status[1::3]] == list(cluster.ports)
    assert cluster.name.startswith("faults-") and not set(cluster.ports) & {5672, 5681, 5682, 5683}
    assert cluster.url("v").split(",") == [f"amqp://guest:guest@127.0.0.1:{port}/v" for port in cluster.ports]
