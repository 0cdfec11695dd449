"""Static checks of docker-compose.cluster.yml: docker-compose.yml's own checks where they apply (least
privilege, ports, mounts, broker credentials, each broker node's definitions), run on this file, and what
the cluster adds: three nodes formed by configuration with a shared cookie, quorum queues everywhere,
each client given every node, model replicas and two metric partitions with their standbys."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

import rabbitmq_users
import test_deployment_files as main_file
from mlmonitor.broker_urls import split_urls
from mlmonitor.topology import QUORUM, SERVICE_ACCESS

CLUSTER_FILE = main_file.REPO_ROOT / "docker-compose.cluster.yml"
NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
PARTITIONS = 2
METRICS = ("metric-0", "metric-0-standby", "metric-1", "metric-1-standby")


def _compose() -> dict:
    return yaml.safe_load(CLUSTER_FILE.read_text(encoding="utf-8"))


SERVICES = _compose()["services"]
APP_SERVICES = sorted(name for name in SERVICES if name not in NODES)
BUILD_SERVICES = sorted(name for name in SERVICES if "build" in SERVICES[name])
BROKER_CLIENTS = sorted(name for name in BUILD_SERVICES if name != "learn_model")


def _service_kind(name: str) -> str:
    """The repo's service a container runs: its build's SERVICE argument (metric for metric-0-standby)."""
    return SERVICES[name]["build"]["args"]["SERVICE"]


@pytest.fixture(autouse=True)
def checks_read_the_cluster_file(monkeypatch):
    monkeypatch.setattr(main_file, "COMPOSE_FILE", CLUSTER_FILE)


# ---------------------------------------------------------------- docker-compose.yml's checks, on this file


@pytest.mark.parametrize("check", [main_file.test_service_has_no_capabilities_and_cannot_gain_privileges,
                                   main_file.test_nothing_runs_as_root,
                                   main_file.test_ports_are_published_on_the_hosts_loopback_only])
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_container_keeps_the_main_files_least_privilege(check, name):
    check(name)


@pytest.mark.parametrize("check", [main_file.test_bind_mounts_are_logs_or_models_under_app,
                                   main_file.test_no_amqp_url_carries_a_password_or_guest])
@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_app_container_passes_the_main_files_checks(check, name):
    check(name)


@pytest.mark.parametrize("check", [main_file.test_service_runs_as_the_images_unprivileged_user,
                                   main_file.test_root_filesystem_is_read_only_with_a_tmpfs_for_tmp])
@pytest.mark.parametrize("name", BUILD_SERVICES)
def test_every_built_container_passes_the_main_files_checks(check, name):
    check(name)


def test_host_ports_are_unique():
    published = [host for svc in SERVICES.values() for host, _ in main_file._published(svc) if host]
    assert len(published) == len(set(published)), f"a host port published twice: {sorted(published)}"


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("check", [main_file.test_rabbitmq_has_healthcheck,
                                   main_file.test_rabbitmq_loads_its_users_and_topology_from_definitions_without_guest,
                                   main_file.test_rabbitmq_refuses_huge_messages_itself])
def test_every_node_is_a_broker_as_the_main_files(check, node, monkeypatch):
    monkeypatch.setattr(main_file, "BROKER", node)
    check()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_bind_mounts_are_writable_only_by_their_writers(name):
    for host, read_only in main_file._read_only_binds(SERVICES[name]).items():
        writes = _service_kind(name) in main_file.WRITERS.get(host, set())
        assert read_only is not writes, f"{name} mounts {host} {'read-only' if read_only else 'writable'}"


@pytest.mark.parametrize("name", BUILD_SERVICES)
def test_every_container_is_built_by_the_root_dockerfile(name):
    context, dockerfile = main_file._build(name)
    assert (context, dockerfile) == (main_file.REPO_ROOT, main_file.ROOT_DOCKERFILE)
    assert _service_kind(name) in SERVICE_ACCESS or _service_kind(name) == "learn_model"


# ---------------------------------------------------------------- the cluster


def test_three_nodes_form_the_cluster_by_configuration(monkeypatch):
    settings = {}
    for node in NODES:
        monkeypatch.setattr(main_file, "BROKER", node)
        settings[node] = main_file._rabbitmq_settings()
        assert SERVICES[node]["hostname"] == node, f"{node}: its node name is rabbit@<hostname>"
        assert any(str(volume).endswith(":/var/lib/rabbitmq") for volume in SERVICES[node]["volumes"]), (
            f"{node}: its identity and replicas must outlive the container (a volume on /var/lib/rabbitmq)")
    for node, node_settings in settings.items():
        assert node_settings["cluster_formation.peer_discovery_backend"] == "classic_config"
        peers = sorted(value for key, value in node_settings.items()
                       if key.startswith("cluster_formation.classic_config.nodes."))
        assert peers == [f"rabbit@{name}" for name in NODES], f"{node}: peers {peers}"
        assert node_settings["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"


def test_the_nodes_share_a_cookie_secret_no_client_gets():
    declared = _compose()["secrets"]["erlang_cookie"]
    assert declared == {"file": "./secrets/erlang_cookie"}, "the cookie comes from git-ignored secrets/"
    for node in NODES:
        assert "erlang_cookie" in main_file._secrets_of(node)
        entrypoint = " ".join(SERVICES[node]["entrypoint"])
        assert "/run/secrets/erlang_cookie" in entrypoint and "/var/lib/rabbitmq/.erlang.cookie" in entrypoint
        assert "-m 0400" in entrypoint and "exec docker-entrypoint.sh rabbitmq-server" in entrypoint
    for name in APP_SERVICES:
        assert "erlang_cookie" not in main_file._secrets_of(name), f"{name} holds the cluster's cookie"
    assert "RABBITMQ_ERLANG_COOKIE" not in CLUSTER_FILE.read_text(encoding="utf-8")


def test_the_committed_quorum_definitions_are_the_topology_with_two_partitions():
    committed = json.loads((main_file.REPO_ROOT / "rabbitmq" / "definitions.cluster.json").read_text("utf-8"))
    topology = rabbitmq_users.deployed_topology(list(SERVICE_ACCESS), PARTITIONS)
    assert committed == rabbitmq_users.topology_definitions(topology, "/", QUORUM), (
        "regenerate: .venv/bin/python scripts/rabbitmq_users.py --vhost / --queue-type quorum "
        f"--metric-partitions {PARTITIONS} --topology rabbitmq/definitions.cluster.json")
    assert {queue["arguments"]["x-queue-type"] for queue in committed["queues"]} == {"quorum"}
    assert not {"users", "permissions"} & set(committed)


def test_the_documented_users_command_names_every_node_and_quorum():
    commands = [line for line in CLUSTER_FILE.read_text(encoding="utf-8").splitlines()
                if line.startswith("#") and "scripts/rabbitmq_users.py" in line and "--definitions" in line]
    assert commands, "docker-compose.cluster.yml does not say how to create the broker users"
    words = shlex.split(commands[0].lstrip("# "))
    assert main_file._option_values(words, "--host") == [",".join(NODES)]
    assert main_file._option_values(words, "--queue-type") == [QUORUM]
    assert main_file._option_values(words, "--metric-partitions") == [str(PARTITIONS)]
    url = rabbitmq_users.amqp_url("u", "p", ",".join(NODES), 5672, "/", False)
    assert [re.search(r"@([^:]+):", node).group(1) for node in split_urls(url)] == list(NODES)


@pytest.mark.parametrize("name", BROKER_CLIENTS)
def test_every_client_declares_quorum_queues_and_waits_for_every_node(name):
    env = main_file._env(SERVICES[name])
    assert env.get("QUEUE_TYPE") == QUORUM, f"{name}: QUEUE_TYPE is not quorum"
    deps = main_file._depends_on(SERVICES[name])
    for node in NODES:
        assert (deps.get(node) or {}).get("condition") == "service_healthy", f"{name} does not wait for {node}"


@pytest.mark.parametrize("name", BROKER_CLIENTS)
def test_every_client_reads_its_services_url_from_its_secret(name):
    secret = f"{_service_kind(name)}_amqp_url"
    env = main_file._env(SERVICES[name])
    assert "AMQP_URL" not in env and env.get("AMQP_URL_FILE") == f"/run/secrets/{secret}"
    assert main_file._secrets_of(name) == {secret: f"/run/secrets/{secret}"}
    assert _compose()["secrets"][secret] == {"file": f"./secrets/{_service_kind(name)}.amqp_url"}


def test_model_runs_as_two_replicas_with_nothing_that_two_containers_would_share():
    model = SERVICES["model"]
    assert main_file._interpolate(str(model["deploy"]["replicas"])) == "2"
    assert "container_name" not in model and not main_file._published(model), "replicas can't share a name or port"
    assert main_file._env(model)["QUEUE_TYPE"] == QUORUM


def test_metric_runs_as_two_partitions_each_with_a_standby():
    assert sorted(name for name in BUILD_SERVICES if _service_kind(name) == "metric") == sorted(METRICS)
    for name in METRICS:
        env = main_file._env(SERVICES[name])
        assert env["METRIC_PARTITIONS"] == str(PARTITIONS)
        assert env["METRIC_PARTITION"] == name.split("-")[1], f"{name}: METRIC_PARTITION {env['METRIC_PARTITION']}"
        assert main_file._read_only_binds(SERVICES[name]) == {"./logs": False}, f"{name} writes its shard in logs/"


def test_nothing_secret_is_committed_with_the_cluster():
    for path in (CLUSTER_FILE, main_file.REPO_ROOT / "rabbitmq" / "cluster.conf",
                 main_file.REPO_ROOT / "rabbitmq" / "definitions.cluster.json"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"amqps?://[^:/@\s]+:[^@\s]+@", text), f"{path.name}: an AMQP URL with a password"
        assert "password_hash" not in text and "cookie =" not in text.lower(), f"{path.name}: a secret"
