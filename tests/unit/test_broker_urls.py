"""AMQP_URL naming a cluster's nodes: how it splits, what is refused at start, and the queue arguments of QUEUE_TYPE."""

from __future__ import annotations

import pytest

from mlmonitor.amqp import ServiceRunner, describe_nodes
from mlmonitor.broker_urls import BrokerUrlError, split_urls
from mlmonitor.settings import ServiceSettings, load_settings
from mlmonitor.tls import AmqpTls, TlsSetupError, connection_candidates
from mlmonitor.topology import (CLASSIC, DASHBOARD, DEAD_LETTERS_EXCHANGE, DELIVERY_LIMIT, DRIFT, PIPELINE, QUORUM,
                                RECENT_ALERTS)

NODES = "amqp://u:p@127.0.0.1:5681/v,amqp://u:p@127.0.0.1:5682/v,amqp://u:p@127.0.0.1:5683/v"


@pytest.fixture(autouse=True)
def no_broker_environment(monkeypatch):
    for name in ("AMQP_URL", "AMQP_URL_FILE", "QUEUE_TYPE", "AMQP_CA_FILE", "AMQP_CERT_FILE", "AMQP_KEY_FILE",
                 "AMQP_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)


def test_a_single_url_is_kept_whole_as_before():
    assert split_urls("amqp://guest:guest@localhost:5672/") == ["amqp://guest:guest@localhost:5672/"]


def test_commas_spaces_and_newlines_separate_the_nodes():
    assert split_urls(NODES) == NODES.split(",")
    assert split_urls(NODES.replace(",", " , ")) == NODES.split(",")
    assert split_urls(NODES.replace(",", "\n") + "\n") == NODES.split(",")  # AMQP_URL_FILE, one a line
    assert split_urls(NODES + ",") == NODES.split(",")


def test_a_comma_in_a_password_does_not_split_the_url():
    assert split_urls("amqp://u:pa,ss@a:5672/v,amqps://u:x,y@b:5671/v") == ["amqp://u:pa,ss@a:5672/v",
                                                                           "amqps://u:x,y@b:5671/v"]


@pytest.mark.parametrize("value", ["", " , ", "amqp://a/v, http://b/v"])
def test_an_empty_list_or_a_node_that_is_not_amqp_is_refused_without_quoting_it(value):
    with pytest.raises(BrokerUrlError) as refused:
        split_urls(value)
    assert "a/v" not in str(refused.value) and "http" not in str(refused.value)


def test_the_runner_has_a_candidate_per_node_and_names_them_without_passwords():
    runner = ServiceRunner(None, NODES, tls=AmqpTls())
    assert [(parameters.host, parameters.port) for parameters in runner.candidates] == [
        ("127.0.0.1", 5681), ("127.0.0.1", 5682), ("127.0.0.1", 5683)]
    assert runner.parameters in runner.candidates
    assert describe_nodes(runner.candidates) == "127.0.0.1:5681, 127.0.0.1:5682, 127.0.0.1:5683 vhost 'v'"


def test_plain_and_tls_nodes_together_are_refused():
    with pytest.raises(TlsSetupError, match="mixes amqp:// and amqps://"):
        connection_candidates("amqps://u:p@a:5671/v,amqp://u:p@b:5672/v", AmqpTls())


def test_settings_refuse_a_tls_file_with_any_plain_node(tmp_path, capsys):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not read: the URL is refused first")
    with pytest.raises(SystemExit) as exited:
        load_settings(ServiceSettings, ["--amqp-url", NODES, "--amqp-ca-file", str(ca_file)], prog="svc")
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "AMQP_CA_FILE given, but AMQP_URL is not amqps://" in error and "u:p@" not in error


def test_settings_take_several_urls_from_the_url_file(tmp_path, monkeypatch):
    url_file = tmp_path / "amqp_url"
    url_file.write_text(NODES.replace(",", "\n") + "\n")
    monkeypatch.setenv("AMQP_URL_FILE", str(url_file))
    settings = load_settings(ServiceSettings, [], prog="svc")
    assert split_urls(settings.amqp_url) == NODES.split(",")


def test_queue_type_is_classic_unless_told_and_nothing_else_is_taken(monkeypatch, capsys):
    assert load_settings(ServiceSettings, [], prog="svc").queue_type == CLASSIC
    monkeypatch.setenv("QUEUE_TYPE", "quorum")
    assert load_settings(ServiceSettings, [], prog="svc").queue_type == QUORUM
    assert ServiceRunner(None, NODES, tls=AmqpTls()).queue_type == QUORUM  # a runner not given it reads it too
    with pytest.raises(SystemExit):
        load_settings(ServiceSettings, ["--queue-type", "stream"], prog="svc")
    assert "queue_type" in capsys.readouterr().err


def test_classic_arguments_are_unchanged():
    assert PIPELINE.arguments_of("features") is None
    assert PIPELINE.arguments_of("features.dlq") is None
    assert DASHBOARD.arguments_of("metric_added.dashboard") == {"x-max-length": 10_000, "x-overflow": "drop-head"}


def test_a_quorum_work_queue_dead_letters_a_poison_message_into_its_dlq_at_least_once():
    assert PIPELINE.arguments_of("y_true", QUORUM) == {
        "x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT, "x-dead-letter-exchange": DEAD_LETTERS_EXCHANGE,
        "x-dead-letter-routing-key": "y_true.dlq", "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish"}
    assert PIPELINE.arguments_of("y_true.dlq", QUORUM) == {"x-queue-type": "quorum"}
    every_queue = DRIFT.merged(DASHBOARD).queue_names()
    assert all(DRIFT.merged(DASHBOARD).arguments_of(name, QUORUM)["x-queue-type"] == "quorum" for name in every_queue)


@pytest.mark.parametrize("topology, queue", [(DASHBOARD, "metric_added.dashboard"), (DRIFT, RECENT_ALERTS)])
def test_a_bounded_drop_head_queue_stays_drop_head_without_a_dead_letter_exchange(topology, queue):
    arguments = topology.arguments_of(queue, QUORUM)
    assert arguments["x-overflow"] == "drop-head" and arguments["x-delivery-limit"] == DELIVERY_LIMIT
    assert "x-dead-letter-exchange" not in arguments and "x-dead-letter-strategy" not in arguments
