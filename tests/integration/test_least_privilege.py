"""One broker user per service (scripts/rabbitmq_users.py), against the real RabbitMQ: the script is
idempotent and rotates on demand; the pipeline runs end to end with each service on its own user;
each user is refused (ACCESS_REFUSED) what its service doesn't do; wrong credentials end a service
with exit code 2 and one line; a service whose user may not declare waits for the topology."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from pika.exceptions import ChannelClosedByBroker, ProbableAuthenticationError
from sklearn.datasets import load_diabetes

from broker import BROKER_HOST, BROKER_PORT, connect, create_vhost, drain, queue_depth
from mlmonitor.topology import (DASHBOARD_EVENTS, DEAD_LETTERS_EXCHANGE, DRIFT_EVENTS, DRIFT_PREDICTION_BATCHES,
                                DRIFT_PREDICTIONS, DRIFT_QUEUES, FEATURES, INPUTS_EXCHANGE, METRIC_ADDED,
                                METRIC_BATCHES_EXCHANGE, METRIC_EVENTS_EXCHANGE, MODEL_PREDICTIONS_EXCHANGE,
                                MONITOR_ALERTS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE, PREDICTIONS_EXCHANGE,
                                SERVICE_ACCESS, Y_PRED, Y_TRUE, dead_letter_queue)
from run_pipeline import Pipeline
from service_harness import (assert_alive, assert_no_dead_letters, output_of, wait_for_consumers, wait_for_output,
                             wait_for_rows, wait_until_drained)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT = SCRIPTS / "rabbitmq_users.py"
DEAD_LETTERS_SCRIPT = SCRIPTS / "dead_letters.py"
USERS = list(SERVICE_ACCESS) + ["producer", "operator"]
REFUSED = 403


@pytest.fixture(scope="module")
def user_prefix(vhost_deletions) -> str:
    """Users are global to the broker: this module's get a prefix of their own, and are deleted at its end."""
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    yield prefix
    names = " ".join(prefix + name for name in USERS)
    vhost_deletions.append(subprocess.Popen(  # in the background, as every rabbitmqctl call boots a VM
        ["sh", "-c", f"for user in {names}; do rabbitmqctl -q delete_user $user; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def run_users_script(vhost: str, secrets_dir: Path, prefix: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--vhost", vhost, "--secrets-dir", str(secrets_dir),
                           "--user-prefix", prefix, "--host", BROKER_HOST, "--port", str(BROKER_PORT), *args],
                          capture_output=True, text=True, timeout=120)


def create_users(vhost: str, secrets_dir: Path, prefix: str, *args: str) -> dict[str, str]:
    """{user's name: its AMQP URL}, as the script wrote them."""
    result = run_users_script(vhost, secrets_dir, prefix, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return urls_in(secrets_dir)


def urls_in(secrets_dir: Path) -> dict[str, str]:
    return {path.name.removesuffix(".amqp_url"): path.read_text().strip() for path in secrets_dir.glob("*.amqp_url")}


def can_connect(url: str) -> bool:
    try:
        connect(url).close()
        return True
    except ProbableAuthenticationError:
        return False


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


def test_the_script_creates_one_user_per_service_keeps_passwords_and_rotates_them(vhost, secrets_dir, user_prefix):
    first = create_users(vhost, secrets_dir, user_prefix)

    assert sorted(first) == sorted(USERS)
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for name, url in first.items():
        assert stat.S_IMODE((secrets_dir / f"{name}.amqp_url").stat().st_mode) == 0o600, name
        parts = urlsplit(url)
        assert (parts.username, unquote(parts.path[1:]), parts.port) == (user_prefix + name, vhost, BROKER_PORT)
        assert can_connect(url), name

    again = run_users_script(vhost, secrets_dir, user_prefix)
    assert again.returncode == 0, again.stderr
    assert urls_in(secrets_dir) == first, "a second run changed a password"
    assert again.stdout.count("password kept") == len(USERS)

    rotated = create_users(vhost, secrets_dir, user_prefix, "--rotate")
    for name in USERS:
        assert urlsplit(rotated[name]).password != urlsplit(first[name]).password, name
        assert can_connect(rotated[name]), name
        assert not can_connect(first[name]), f"{name}'s old password still works"


# --------------------------------------------------------------------------- permissions


@pytest.fixture(scope="module")
def users_of_one_vhost(user_prefix, tmp_path_factory, vhost_deletions) -> dict[str, str]:
    """One vhost with every user, shared by the permission checks (each only reads, or writes into queues
    nobody consumes)."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    create_vhost(vhost)
    yield create_users(vhost, tmp_path_factory.mktemp("secrets") / "secrets", user_prefix)
    vhost_deletions.append(subprocess.Popen(["rabbitmqctl", "-q", "delete_vhost", vhost],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def consume(queue):
    return lambda channel: channel.basic_get(queue)


def publish(exchange, routing_key):
    def act(channel):
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, b'{"id": "x", "body": 1.0}')
    return act


def declare(queue):
    return lambda channel: channel.queue_declare(queue, durable=True)


def delete(queue):
    return lambda channel: channel.queue_delete(queue)


def bind(queue, exchange):
    return lambda channel: channel.queue_bind(queue, exchange, routing_key="anything")


def exists(queue):
    return lambda channel: channel.queue_declare(queue, passive=True)


DEFAULT = ""
BEYOND = {  # what each user must be refused: reading others' queues, writing where its service doesn't
    "model": [consume(Y_TRUE), consume(Y_PRED), publish(INPUTS_EXCHANGE, FEATURES), publish(INPUTS_EXCHANGE, Y_TRUE),
              publish(DEFAULT, Y_TRUE), publish(DEFAULT, FEATURES), publish(METRIC_EVENTS_EXCHANGE, ""),
              publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(Y_TRUE)), declare(FEATURES), delete(FEATURES),
              declare("model.own"), bind(Y_TRUE, PREDICTIONS_EXCHANGE), publish(PREDICTIONS_EXCHANGE, Y_PRED),
              publish(METRIC_BATCHES_EXCHANGE, "")],
    "plot": [consume(Y_PRED), consume(FEATURES), consume(DASHBOARD_EVENTS), consume(dead_letter_queue(METRIC_ADDED)),
             publish(METRIC_EVENTS_EXCHANGE, ""), publish(PREDICTIONS_EXCHANGE, Y_PRED), publish(DEFAULT, METRIC_ADDED),
             publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(FEATURES))],
    "features": [consume(FEATURES), consume(Y_TRUE), consume(Y_PRED), publish(DEFAULT, FEATURES),
                 publish(PREDICTIONS_EXCHANGE, Y_PRED), publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(FEATURES)),
                 delete(FEATURES)],
    "metric": [consume(FEATURES), consume(METRIC_ADDED), publish(PREDICTIONS_EXCHANGE, Y_PRED),
               publish(PREDICTION_BATCHES_EXCHANGE, ""),
               publish(INPUTS_EXCHANGE, Y_TRUE), publish(DEFAULT, METRIC_ADDED),
               publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(FEATURES)), delete(Y_TRUE)],
    "dashboard": [consume(METRIC_ADDED), consume(Y_TRUE), publish(METRIC_EVENTS_EXCHANGE, ""),
                  publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(METRIC_ADDED))],
    "drift": [consume(Y_TRUE), consume(FEATURES), consume(Y_PRED), publish(METRIC_EVENTS_EXCHANGE, ""),
              publish(PREDICTIONS_EXCHANGE, Y_PRED), publish(DEFAULT, Y_TRUE), publish(METRIC_BATCHES_EXCHANGE, "")],
    "producer": [consume(FEATURES), consume(Y_PRED), publish(INPUTS_EXCHANGE, FEATURES),
                 publish(PREDICTIONS_EXCHANGE, Y_PRED), declare("producer.own"), delete(FEATURES)],
    "operator": [consume(FEATURES), consume(METRIC_ADDED), publish(INPUTS_EXCHANGE, FEATURES),
                 delete(dead_letter_queue(FEATURES)), declare("operator.own")],
}
WITHIN = {  # what each user's service does: allowed, so that a refusal above is about permissions
    "model": [consume(FEATURES), publish(MODEL_PREDICTIONS_EXCHANGE, Y_PRED), publish(PREDICTION_BATCHES_EXCHANGE, ""),
              publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(FEATURES)), exists(Y_PRED)],
    "plot": [consume(METRIC_ADDED), publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(METRIC_ADDED))],
    "features": [publish(INPUTS_EXCHANGE, FEATURES), publish(INPUTS_EXCHANGE, Y_TRUE), exists(FEATURES),
                 exists(Y_PRED)],
    "metric": [consume(Y_TRUE), consume(Y_PRED), publish(METRIC_EVENTS_EXCHANGE, ""), publish(METRIC_BATCHES_EXCHANGE, ""),
               publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(Y_PRED))],
    "dashboard": [consume(DASHBOARD_EVENTS), publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(DASHBOARD_EVENTS))],
    "drift": [consume(DRIFT_PREDICTIONS), consume(DRIFT_PREDICTION_BATCHES), consume(DRIFT_EVENTS),
              publish(MONITOR_ALERTS_EXCHANGE, "test.raised"),
              publish(DEAD_LETTERS_EXCHANGE, dead_letter_queue(DRIFT_EVENTS))],
    "producer": [publish(DEFAULT, FEATURES), publish(DEFAULT, Y_TRUE), publish(DEFAULT, Y_PRED)],
    "operator": [consume(dead_letter_queue(FEATURES)), consume(dead_letter_queue(DRIFT_PREDICTIONS)),
                 publish(DEFAULT, FEATURES)],
}


def describe(action) -> str:
    cells = action.__closure__ or ()
    return f"{action.__qualname__.split('.')[0]}{tuple(cell.cell_contents for cell in cells)}"


@pytest.mark.parametrize("user", USERS)
def test_each_user_is_refused_what_its_service_does_not_do(users_of_one_vhost, user):
    connection = connect(users_of_one_vhost[user])
    try:
        for action in BEYOND[user]:
            with pytest.raises(ChannelClosedByBroker) as refused:
                action(connection.channel())
            assert refused.value.reply_code == REFUSED and "ACCESS_REFUSED" in refused.value.reply_text, (
                f"{user}: {describe(action)}: {refused.value!r}")
        for action in WITHIN[user]:
            action(connection.channel())  # raises if refused
    finally:
        if connection.is_open:
            connection.close()


# --------------------------------------------------------------------------- services on their own users


def pipeline_on_users(secrets_dir: Path, logs_dir: Path, models_dir: Path, output_dir: Path) -> Pipeline:
    """Services that know no URL but their own file: AMQP_URL empty (unset) and AMQP_URL_FILE per service."""
    return Pipeline(env={"AMQP_URL": "", "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(models_dir)},
                    output_dir=output_dir)


def start_as(pipeline: Pipeline, service: str, secrets_dir: Path, args: list[str] = (), **env: str):
    return pipeline.start(service, list(args), env={"AMQP_URL_FILE": str(secrets_dir / f"{service}.amqp_url"), **env})


def test_the_pipeline_runs_end_to_end_with_a_user_per_service(vhost, amqp_url, secrets_dir, user_prefix,
                                                              trained_model, logs_dir, tmp_path):
    urls = create_users(vhost, secrets_dir, user_prefix, "--services", "features,model,metric,plot,drift")
    pipeline = pipeline_on_users(secrets_dir, logs_dir, trained_model, tmp_path / "output")
    try:
        for service in ("model", "metric", "plot"):
            start_as(pipeline, service, secrets_dir)
        start_as(pipeline, "drift", secrets_dir, NICE="0")
        wait_for_consumers(amqp_url, FEATURES, Y_TRUE, Y_PRED, METRIC_ADDED, *DRIFT_QUEUES, timeout=120)
        features = start_as(pipeline, "features", secrets_dir, ["--count", "20", "--rate", "0"])
        assert features.wait(60) == 0, output_of(pipeline, "features")
        wait_for_rows(logs_dir, 20)

        # a course-format producer on its own user: plain publishes to the queues, one of them malformed
        vector = load_diabetes().data[0].tolist()
        producer = connect(urls["producer"])
        channel = producer.channel()
        channel.confirm_delivery()
        channel.basic_publish("", FEATURES, json.dumps({"id": 1700000000.5, "body": vector}).encode())
        channel.basic_publish("", Y_TRUE, json.dumps({"id": 1700000000.5, "body": 151.0}).encode())
        channel.basic_publish("", FEATURES, json.dumps({"id": "short", "body": [1.0]}).encode())
        producer.close()

        rows = wait_for_rows(logs_dir, 21)
        assert "1700000000.5" in {row["id"] for row in rows}
        wait_until(lambda: (logs_dir / "error_distribution.png").exists(), 30, message="plot's PNG")
        wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(FEATURES)) == 1, 30,
                   message="model dead-lettering the malformed features")
        listing = subprocess.run([sys.executable, str(DEAD_LETTERS_SCRIPT), "list", "--queue",
                                  dead_letter_queue(FEATURES), "--show", "1"], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "AMQP_URL": "",
                                                  "AMQP_URL_FILE": str(secrets_dir / "operator.amqp_url")})
        assert listing.returncode == 0 and "features.dlq: 1" in listing.stdout, listing.stdout + listing.stderr
        assert "from: features" in listing.stdout and "short" in listing.stdout, "the operator's user reads DLQs"
        [(body, headers)] = drain(amqp_url, dead_letter_queue(FEATURES))
        assert json.loads(body)["id"] == "short" and "features" in headers["x-rejection-reason"]
        wait_until_drained(vhost, FEATURES, Y_TRUE, Y_PRED, METRIC_ADDED, *DRIFT_QUEUES)
        assert_no_dead_letters(amqp_url, Y_TRUE, Y_PRED, METRIC_ADDED, *DRIFT_QUEUES)
        assert_alive(pipeline, "model", "metric", "plot", "drift")
        for service in ("model", "metric", "plot", "drift", "features"):
            output = output_of(pipeline, service)
            assert "our user may not declare the topology; the broker has all of it" in output, service
            assert "ACCESS_REFUSED" not in output, f"{service} was refused something:\n{output}"
    finally:
        pipeline.stop_all(grace_seconds=5)


def test_wrong_credentials_end_a_service_with_exit_code_2_and_one_line(vhost, secrets_dir, user_prefix,
                                                                       models_dir, logs_dir, tmp_path):
    urls = create_users(vhost, secrets_dir, user_prefix, "--services", "metric")
    wrong_password = "not-" + urlsplit(urls["metric"]).password
    (secrets_dir / "metric.amqp_url").write_text(urls["metric"].replace(urlsplit(urls["metric"]).password,
                                                                        wrong_password))
    pipeline = pipeline_on_users(secrets_dir, logs_dir, models_dir, tmp_path / "output")
    try:
        assert start_as(pipeline, "metric", secrets_dir).wait(60) == 2
        output = output_of(pipeline, "metric")
        assert output.count("refused our credentials") == 1, output
        [line] = [line for line in output.splitlines() if "refused our credentials" in line]
        assert "ACCESS_REFUSED" in line and "giving up" in line
        assert wrong_password not in output, "the password was logged"
    finally:
        pipeline.stop_all(grace_seconds=5)


def test_a_service_whose_user_may_not_declare_waits_for_the_topology_then_works(
        vhost, amqp_url, secrets_dir, user_prefix, models_dir, logs_dir, tmp_path):
    create_users(vhost, secrets_dir, user_prefix, "--services", "metric")
    guest = connect(amqp_url)
    guest.channel().queue_delete(Y_PRED)  # as if the broker's definitions lacked it
    guest.close()
    pipeline = pipeline_on_users(secrets_dir, logs_dir, models_dir, tmp_path / "output")
    try:
        start_as(pipeline, "metric", secrets_dir)
        wait_for_output(pipeline, "metric", f"NOT_FOUND - no queue '{Y_PRED}'")
        wait_for_output(pipeline, "metric", "waiting for RabbitMQ", times=2)
        assert_alive(pipeline, "metric")
        assert output_of(pipeline, "metric").count("part of it is missing") == 1, "one line, not one per retry"

        create_users(vhost, secrets_dir, user_prefix, "--services", "metric")  # imports the topology again
        wait_for_consumers(amqp_url, Y_TRUE, Y_PRED)
        wait_for_output(pipeline, "metric", "the broker has all of it")
        assert_alive(pipeline, "metric")
    finally:
        pipeline.stop_all(grace_seconds=5)

