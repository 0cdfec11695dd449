"""The broker users' permissions (scripts/rabbitmq_users.py), evaluated as RabbitMQ does: a regex matched
against each exchange and queue name, the default exchange named "amq.default". Each user may do only
what its service does; the topology gives every internal publish an exchange of its own."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from pathlib import Path

import pika
import pytest

import rabbitmq_users
from mlmonitor.topology import (DEAD_LETTERS_EXCHANGE, DEFAULT_EXCHANGE, DRIFT_EVENTS, DRIFT_PREDICTION_BATCHES,
                                DRIFT_PREDICTIONS, FEATURES, INPUTS_EXCHANGE, METRIC_ADDED, METRIC_BATCHES_EXCHANGE,
                                MODEL_PREDICTIONS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE,
                                METRIC_EVENTS_EXCHANGE, PREDICTIONS_EXCHANGE, SERVICE_ACCESS, Y_PRED, Y_TRUE)

ROOT = Path(__file__).resolve().parents[2]
ALL_SERVICES = list(SERVICE_ACCESS)
TOPOLOGY = rabbitmq_users.deployed_topology(ALL_SERVICES)
GRANTS = {grant.name: grant for grant in rabbitmq_users.grants(ALL_SERVICES)}
EXCHANGES = set(TOPOLOGY.exchange_types()) | {DEFAULT_EXCHANGE}
QUEUES = set(TOPOLOGY.queue_names())
DLQS = {spec.dlq for spec in TOPOLOGY.queues if spec.dead_letters}


def allowed(regex: str, names=EXCHANGES | QUEUES) -> set[str]:
    """The names a permission regex lets through; RabbitMQ searches the name (re:run), it doesn't full-match."""
    return {name for name in names if re.search(regex, name)}


def test_there_is_a_user_per_service_and_one_each_for_producers_and_the_operator():
    assert set(GRANTS) == {"features", "model", "metric", "plot", "dashboard", "drift", "producer", "operator"}


@pytest.mark.parametrize("name", sorted(GRANTS))
def test_no_user_may_configure_anything(name):
    assert allowed(GRANTS[name].configure) == set(), "the topology is the broker's definitions"


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_a_service_reads_only_the_queues_it_consumes(service):
    assert allowed(GRANTS[service].read) == set(SERVICE_ACCESS[service].consumes)


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_a_service_writes_only_its_exchanges_and_dead_letters_only_into_its_own_dlqs(service):
    access = SERVICE_ACCESS[service]
    own_dlqs = {spec.dlq for spec in TOPOLOGY.queues if spec.name in access.consumes and spec.dead_letters}
    assert allowed(GRANTS[service].write) == set(access.publishes_to) | ({DEAD_LETTERS_EXCHANGE} if own_dlqs else set())
    assert allowed(GRANTS[service].dead_letters_write, DLQS) == own_dlqs


def test_the_issues_examples():
    model, plot = GRANTS["model"], GRANTS["plot"]
    assert Y_TRUE not in allowed(model.read)
    assert allowed(model.write) & {Y_TRUE, FEATURES, INPUTS_EXCHANGE, DEFAULT_EXCHANGE} == set()
    assert allowed(plot.read) == {METRIC_ADDED}
    assert allowed(GRANTS["features"].read) == set()


def test_only_producers_and_the_operator_may_write_to_the_default_exchange_which_reaches_every_queue():
    assert {name for name, grant in GRANTS.items() if DEFAULT_EXCHANGE in allowed(grant.write)} == {"producer",
                                                                                                    "operator"}
    assert allowed(GRANTS["producer"].write) == {DEFAULT_EXCHANGE}
    assert allowed(GRANTS["producer"].read) == set()


def test_the_operator_reads_the_dead_letter_queues_and_nothing_else():
    assert allowed(GRANTS["operator"].read) == DLQS
    assert GRANTS["operator"].tags == ("management",)


def test_no_write_permission_reaches_a_queue_so_no_user_can_bind_one():
    for name, grant in GRANTS.items():
        assert allowed(grant.write, QUEUES) == set(), name


def test_exchange_and_queue_names_are_distinct_so_a_regex_cannot_mean_both():
    assert EXCHANGES.isdisjoint(QUEUES)


def test_internal_publishes_reach_their_queues_through_named_exchanges():
    bindings = set(TOPOLOGY.bindings())
    assert {(INPUTS_EXCHANGE, FEATURES, FEATURES), (INPUTS_EXCHANGE, Y_TRUE, Y_TRUE)} <= bindings
    assert (PREDICTIONS_EXCHANGE, Y_PRED, Y_PRED) in bindings
    assert (METRIC_EVENTS_EXCHANGE, METRIC_ADDED, METRIC_ADDED) in bindings
    assert {(exchange, queue) for exchange, queue, key in bindings
            if exchange == DEAD_LETTERS_EXCHANGE and key == queue} == {(DEAD_LETTERS_EXCHANGE, dlq) for dlq in DLQS}
    assert TOPOLOGY.exchange_types()[DEAD_LETTERS_EXCHANGE] == "topic", "topic permissions apply to topic exchanges"
    assert TOPOLOGY.exchange_types()[INPUTS_EXCHANGE] == "direct"


def test_our_model_s_predictions_reach_y_pred_and_drift_once_each_and_an_external_model_s_both():
    bound = {}
    for exchange, queue, _ in TOPOLOGY.bindings():
        bound.setdefault(exchange, set()).add(queue)
    assert bound[MODEL_PREDICTIONS_EXCHANGE] == {Y_PRED}  # drift takes model's in batches instead
    assert bound[PREDICTION_BATCHES_EXCHANGE] == {DRIFT_PREDICTION_BATCHES}
    assert bound[PREDICTIONS_EXCHANGE] == {Y_PRED, DRIFT_PREDICTIONS}
    assert bound[METRIC_BATCHES_EXCHANGE] == {DRIFT_EVENTS}
    assert DRIFT_EVENTS not in bound[METRIC_EVENTS_EXCHANGE]


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_what_a_service_uses_is_in_the_topology_it_declares(service):
    access = SERVICE_ACCESS[service]
    assert set(access.consumes) <= set(access.topology.queue_names())
    assert set(access.publishes_to) <= set(access.topology.exchange_types())


def test_the_dashboards_and_drifts_queues_are_only_there_when_they_run():
    pipeline_only = set(rabbitmq_users.deployed_topology(["features", "model", "metric", "plot"]).queue_names())
    optional = {"metric_added.dashboard", "predictions.drift", "prediction_batches.drift", "metric_batches.drift"}
    assert pipeline_only.isdisjoint(optional)
    assert optional <= QUEUES


def test_the_committed_definitions_are_the_topology_of_every_service_on_the_default_vhost():
    committed = json.loads((ROOT / "rabbitmq" / "definitions.json").read_text(encoding="utf-8"))
    assert committed == rabbitmq_users.topology_definitions(TOPOLOGY, "/"), (
        "regenerate: .venv/bin/python scripts/rabbitmq_users.py --vhost / --topology rabbitmq/definitions.json")
    assert not {"users", "permissions"} & set(committed), "no user, and so no password hash, is committed"


# --------------------------------------------------------------------------- passwords and files


def test_the_password_hash_is_rabbitmqs_salted_sha256():
    decoded = base64.b64decode(rabbitmq_users.password_hash("secret", salt=b"\x01\x02\x03\x04"))
    assert decoded == b"\x01\x02\x03\x04" + hashlib.sha256(b"\x01\x02\x03\x04secret").digest()
    assert rabbitmq_users.password_hash("secret") != rabbitmq_users.password_hash("secret"), "a random salt each time"


def test_the_users_definitions_hold_hashes_never_passwords():
    passwords = {name: rabbitmq_users.new_password() for name in GRANTS}
    definitions = rabbitmq_users.users_definitions(list(GRANTS.values()), passwords, "/", "mlmonitor-")
    text = json.dumps(definitions)
    assert not any(password in text for password in passwords.values())
    assert {user["name"] for user in definitions["users"]} == {f"mlmonitor-{name}" for name in GRANTS}
    assert {user["hashing_algorithm"] for user in definitions["users"]} == {"rabbit_password_hashing_sha256"}


def test_passwords_are_random_and_long():
    passwords = {rabbitmq_users.new_password() for _ in range(100)}
    assert len(passwords) == 100 and min(map(len, passwords)) >= 40  # 32 random bytes, base64


@pytest.mark.parametrize("vhost", ["/", "test-vhost", "a/b c"])
def test_the_url_names_user_password_and_vhost_as_pika_reads_them(vhost):
    url = rabbitmq_users.amqp_url("mlmonitor-model", "p@ss:/word", "rabbitmq", 5671, vhost, tls=True)
    parameters = pika.URLParameters(url)
    assert url.startswith("amqps://")
    assert (parameters.host, parameters.port, parameters.virtual_host) == ("rabbitmq", 5671, vhost)
    assert (parameters.credentials.username, parameters.credentials.password) == ("mlmonitor-model", "p@ss:/word")


def test_passwords_in_the_files_are_kept_unless_rotating(tmp_path):
    rabbitmq_users.ensure_private_dir(tmp_path / "secrets")
    path = rabbitmq_users.secret_file(tmp_path / "secrets", "model")
    rabbitmq_users.write_file(path, rabbitmq_users.amqp_url("u", "old-one", "h", 5672, "/", False) + "\n", 0o600)

    kept = rabbitmq_users.choose_passwords(["model", "plot"], tmp_path / "secrets", rotate=False)
    assert kept["model"] == ("old-one", "kept") and kept["plot"][1] == "created"
    rotated = rabbitmq_users.choose_passwords(["model"], tmp_path / "secrets", rotate=True)
    assert rotated["model"][0] != "old-one" and rotated["model"][1] == "rotated"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700


def test_the_definitions_file_for_compose_is_written_without_touching_a_broker(tmp_path):
    secrets_dir = tmp_path / "secrets"
    exit_code = rabbitmq_users.main(["--vhost", "/", "--host", "rabbitmq", "--secrets-dir", str(secrets_dir),
                                     "--definitions", str(secrets_dir / "rabbitmq_users.json"),
                                     "--rabbitmqctl", "false"])  # would fail if it were called
    assert exit_code == 0
    definitions = json.loads((secrets_dir / "rabbitmq_users.json").read_text())
    assert {user["name"] for user in definitions["users"]} == {f"mlmonitor-{name}" for name in GRANTS}
    assert "guest" not in json.dumps(definitions)
    for name in GRANTS:
        url = pika.URLParameters((secrets_dir / f"{name}.amqp_url").read_text().strip())
        assert (url.host, url.credentials.username, url.virtual_host) == ("rabbitmq", f"mlmonitor-{name}", "/")
