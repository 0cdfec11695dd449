"""amqps:// against RabbitMQ nodes of this module's own, with TLS listeners and certificates made at test time
(trustme): the pipeline works over TLS, and every client that can't be verified, or can't verify the broker,
gets nowhere. The shared node at 5672 is never touched; each private node also has a plain loopback port,
through which the tests (not the services) look at queues."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
import trustme

from mlmonitor import tls
from mlmonitor.settings import ServiceSettings, load_settings
from run_pipeline import Pipeline
from service_harness import (assert_no_dead_letters, output_of, terminate, wait_for_consumers, wait_for_output,
                             wait_for_rows)
from waiting import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from brokers import PrivateBroker, TlsListener, rabbitmq_scripts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 200
BROKER_NAMES = ("127.0.0.1", "localhost")
OTHER_NAME = "elsewhere.mlmonitor.test"  # what the misnamed node's certificate is for
CLIENT_NAME = "mlmonitor-client"
UNTRUSTED = "showed a certificate we can't trust"
WAITING = "waiting for RabbitMQ at"

@pytest.fixture(autouse=True)
def no_tls_settings_from_outside(monkeypatch):
    for name in ("AMQP_URL", "AMQP_URL_FILE", "AMQP_CA_FILE", "AMQP_CERT_FILE", "AMQP_KEY_FILE", "AMQP_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA the nodes and the services trust
    server_cert: Path  # for 127.0.0.1 and localhost
    server_key: Path
    misnamed_cert: Path  # for OTHER_NAME only
    misnamed_key: Path
    client: Path  # certificate and key in one file
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA nobody here trusts
    stranger: Path  # a client certificate, with its key, from other_ca


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca, other_ca = trustme.CA(), trustme.CA()
    server, misnamed = ca.issue_cert(*BROKER_NAMES), ca.issue_cert(OTHER_NAME)
    client = ca.issue_cert(f"{CLIENT_NAME}.test", common_name=CLIENT_NAME)
    stranger = other_ca.issue_cert("stranger.test")
    files = Certificates(*(folder / name for name in (
        "ca.pem", "server.pem", "server.key", "misnamed.pem", "misnamed.key", "client.pem", "client.crt",
        "client.key", "other-ca.pem", "stranger.pem")))
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    misnamed.cert_chain_pems[0].write_to_path(str(files.misnamed_cert))
    misnamed.private_key_pem.write_to_path(str(files.misnamed_key))
    client.private_key_and_cert_chain_pem.write_to_path(str(files.client))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    other_ca.cert_pem.write_to_path(str(files.other_ca))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(files.stranger))
    return files


def private_node(directory: Path, listener: TlsListener):
    broker = PrivateBroker(directory, listener)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker(certificates, tmp_path_factory):
    """Mutual TLS: a client must show a certificate from our CA."""
    if rabbitmq_scripts() is None:
        pytest.skip("rabbitmq-server is not installed: no private node to serve TLS")
    yield from private_node(tmp_path_factory.mktemp("tls-node") / "rabbitmq", TlsListener(
        certificates.ca, certificates.server_cert, certificates.server_key, require_client_certificate=True))


@pytest.fixture(scope="module")
def misnamed_broker(certificates, tmp_path_factory):
    """A certificate from our CA, but for OTHER_NAME, not for the address we connect to; no client certificate asked."""
    if rabbitmq_scripts() is None:
        pytest.skip("rabbitmq-server is not installed: no private node to serve TLS")
    yield from private_node(tmp_path_factory.mktemp("misnamed-node") / "rabbitmq", TlsListener(
        certificates.ca, certificates.misnamed_cert, certificates.misnamed_key, require_client_certificate=False))


def amqps_url(broker: PrivateBroker, vhost: str = "") -> str:
    return f"amqps://guest:guest@127.0.0.1:{broker.tls_port}/{vhost}"


def mutual_tls(certificates: Certificates) -> dict[str, str]:
    return {"AMQP_CA_FILE": str(certificates.ca), "AMQP_CERT_FILE": str(certificates.client_cert),
            "AMQP_KEY_FILE": str(certificates.client_key)}


@pytest.fixture
def services(tmp_path):
    """Services writing to the test's own folders; each test gives them their broker and TLS settings."""
    pipeline = Pipeline(env={"LOGS_DIR": str(tmp_path / "logs"), "MODELS_DIR": str(tmp_path / "models")},
                        output_dir=tmp_path / "output")
    yield pipeline
    pipeline.stop_all(grace_seconds=5)


def tls_connections(broker: PrivateBroker, vhost: str) -> list[list[str]]:
    """[ssl "true"/"false", TLS version, client certificate's subject] of each connection to `vhost`."""
    listing = broker.ctl("list_connections", "--no-table-headers", "vhost", "ssl", "ssl_protocol", "peer_cert_subject")
    return [fields[1:] for fields in (line.split("\t") for line in listing.splitlines() if line.strip())
            if fields[0] == vhost]


# --- over TLS, the pipeline works -----------------------------------------------------------------

def test_the_pipeline_runs_over_mutual_tls_and_writes_a_row_per_event(tls_broker, certificates, services,
                                                                       trained_models, tmp_path):
    vhost = tls_broker.add_vhost()
    shutil.copytree(trained_models, tmp_path / "models", ignore=shutil.ignore_patterns("output"))
    services.env.update({"AMQP_URL": amqps_url(tls_broker, vhost), **mutual_tls(certificates)})
    for service in ("model", "metric", "plot"):
        services.start(service)
    looking = tls_broker.url(vhost)  # the test's own eyes, on the node's plain port
    wait_for_consumers(looking, "features", "y_true", "y_pred", "metric_added")

    # the services can only reach the TLS port; plain connections here are the test's own
    encrypted = [connection for connection in tls_connections(tls_broker, vhost) if connection[0] == "true"]
    assert len(encrypted) >= 6, encrypted  # a consuming and a publishing one per service at least
    for _, protocol, subject in encrypted:
        assert protocol in ("tlsv1.2", "tlsv1.3") and subject.startswith(f"CN={CLIENT_NAME},"), subject

    features = services.start("features", ["--rate", "0", "--count", str(EVENTS)])
    assert features.wait(120) == 0, output_of(services, "features")
    rows = wait_for_rows(tmp_path / "logs", EVENTS, timeout=60)
    assert len({row["id"] for row in rows}) == EVENTS
    wait_until(lambda: (tmp_path / "logs" / "error_distribution.png").exists(), 30, message="plot's PNG")
    assert_no_dead_letters(looking, "features", "y_true", "y_pred", "metric_added")
    assert all(services.processes[name].poll() is None for name in ("model", "metric", "plot"))


# --- a broker we can't verify: refused, in one line, and the service stops ------------------------

@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_a_service_that_does_not_trust_the_brokers_ca_refuses_it_in_one_line_and_exits(
        tls_broker, certificates, services, trust):
    env = {"AMQP_URL": amqps_url(tls_broker), "AMQP_CERT_FILE": str(certificates.client)}
    if trust == "another CA":
        env["AMQP_CA_FILE"] = str(certificates.other_ca)
    metric = services.start("metric", env=env)

    assert metric.wait(30) == 2
    output = output_of(services, "metric")
    refusals = [line for line in output.splitlines() if UNTRUSTED in line]
    assert len(refusals) == 1 and "self-signed certificate in certificate chain" in refusals[0], output
    assert "Traceback" not in output and WAITING not in output


def test_a_broker_certificate_for_another_name_is_refused(misnamed_broker, certificates, services):
    env = {"AMQP_URL": amqps_url(misnamed_broker), "AMQP_CA_FILE": str(certificates.ca)}
    metric = services.start("metric", env=env)

    assert metric.wait(30) == 2
    output = output_of(services, "metric")
    assert f"{UNTRUSTED}: IP address mismatch, certificate is not valid for '127.0.0.1'" in output
    assert "Traceback" not in output


def test_amqp_server_name_checks_the_name_the_certificate_carries_instead_of_the_address(
        misnamed_broker, certificates):
    """dead_letters builds a connection of its own, with the same settings as the services."""
    command = [sys.executable, str(ROOT / "scripts" / "dead_letters.py"), "list", "--queue", "features.dlq",
               "--amqp-url", amqps_url(misnamed_broker), "--amqp-ca-file", str(certificates.ca)]

    by_address = subprocess.run(command, capture_output=True, text=True, timeout=60)
    by_name = subprocess.run(command + ["--amqp-server-name", OTHER_NAME], capture_output=True, text=True, timeout=60)

    assert by_address.returncode == 2 and "IP address mismatch" in by_address.stderr, by_address.stderr
    assert by_name.returncode == 0 and by_name.stdout == "features.dlq: not declared\n", by_name.stderr


# --- a client the broker can't verify, or that doesn't speak TLS: it keeps waiting, one line per attempt ---

@pytest.mark.parametrize("client, alert", [("no certificate", "certificate required"),
                                           ("a certificate from another CA", "unknown ca")])
def test_the_broker_refuses_a_client_without_a_certificate_from_its_ca(tls_broker, certificates, services,
                                                                        client, alert):
    env = {"AMQP_URL": amqps_url(tls_broker), "AMQP_CA_FILE": str(certificates.ca)}
    if client != "no certificate":
        env["AMQP_CERT_FILE"] = str(certificates.stranger)
    services.start("metric", env=env)

    wait_for_output(services, "metric", f"(the broker sent TLS alert: {alert})", times=2)
    output = output_of(services, "metric")
    assert all(line.count(WAITING) == 1 for line in output.splitlines() if WAITING in line)
    assert "connected to RabbitMQ" not in output and "Traceback" not in output
    assert terminate(services, "metric") == 0


def test_a_plain_amqp_client_on_the_tls_port_gets_no_connection(tls_broker, services):
    services.start("metric", env={"AMQP_URL": f"amqp://guest:guest@127.0.0.1:{tls_broker.tls_port}/"})

    wait_for_output(services, "metric", WAITING, times=2)
    output = output_of(services, "metric")
    assert "connected to RabbitMQ" not in output and "Traceback" not in output
    assert terminate(services, "metric") == 0
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{tls_broker.tls_port}/"))


# --- the settings: verification always on, mistakes stop the start in one line --------------------

def test_an_amqps_url_always_verifies_the_broker_over_tls_1_2_or_newer(certificates):
    for given in (tls.AmqpTls(), tls.AmqpTls(ca_file=str(certificates.ca), cert_file=str(certificates.client))):
        options = tls.connection_parameters("amqps://u:p@127.0.0.1:5671/v", given).ssl_options
        context = options.context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert options.server_hostname == "127.0.0.1"
    renamed = tls.connection_parameters("amqps://u:p@10.0.0.7/v", tls.AmqpTls(server_name=OTHER_NAME))
    assert renamed.ssl_options.server_hostname == OTHER_NAME and renamed.port == 5671


def every_slot(parameters: pika.URLParameters) -> dict:
    """pika's Parameters.__eq__ looks at host and port only."""
    return {slot: getattr(parameters, slot) for cls in type(parameters).__mro__
            for slot in getattr(cls, "__slots__", ())}


def test_a_plain_url_gets_exactly_the_parameters_it_always_had():
    url = "amqp://guest:guest@localhost:5672/some-vhost?heartbeat=30"
    parameters = tls.connection_parameters(url)
    assert every_slot(parameters) == every_slot(pika.URLParameters(url)) and parameters.ssl_options is None
    assert every_slot(parameters)["_heartbeat"] == 30  # the comparison sees more than host and port


def test_the_runner_reads_the_tls_settings_from_the_environment_when_not_given_them(monkeypatch, certificates):
    from mlmonitor.amqp import ServiceRunner

    monkeypatch.setenv("AMQP_CA_FILE", str(certificates.ca))
    monkeypatch.setenv("AMQP_SERVER_NAME", OTHER_NAME)
    runner = ServiceRunner(None, "amqps://u:p@127.0.0.1:5671/v")
    assert runner.parameters.ssl_options.server_hostname == OTHER_NAME
    given = ServiceRunner(None, "amqps://u:p@127.0.0.1:5671/v", tls=tls.AmqpTls())
    assert given.parameters.ssl_options.server_hostname == "127.0.0.1"


@pytest.mark.parametrize("url, flags, says", [
    ("amqp://u:secret@h/", ["--amqp-ca-file", "{ca}"], "AMQP_CA_FILE given, but AMQP_URL is not amqps://"),
    ("amqp://u:secret@h/", ["--amqp-server-name", "h"], "AMQP_SERVER_NAME given, but AMQP_URL is not amqps://"),
    ("amqps://u:secret@h/", ["--amqp-ca-file", "{missing}"], "AMQP_CA_FILE: cannot read {missing}: No such file"),
    ("amqps://u:secret@h/", ["--amqp-ca-file", "{junk}"], "AMQP_CA_FILE: {junk} holds no PEM certificate"),
    ("amqps://u:secret@h/", ["--amqp-cert-file", "{missing}"], "AMQP_CERT_FILE: cannot read {missing}"),
    ("amqps://u:secret@h/", ["--amqp-key-file", "{client_key}"], "AMQP_KEY_FILE given without AMQP_CERT_FILE"),
    ("amqps://u:secret@h/", ["--amqp-cert-file", "{client_cert}"], "not a PEM certificate and its private key"),
    ("amqps://u:secret@h/", ["--amqp-cert-file", "{client_cert}", "--amqp-key-file", "{stranger}"],
     "not a PEM certificate and its private key (KEY_VALUES_MISMATCH)"),
    ("amqps://u:secret@h/", ["--amqp-cert-file", "{client_cert}", "--amqp-key-file", "{encrypted}"],
     "AMQP_KEY_FILE: the private key is encrypted"),
    ("amqps://u:secret@h/?ssl_options={{'protocol':2}}", [], "AMQP_URL: its ssl_options query is not supported"),
])
def test_a_tls_setting_that_cannot_work_stops_the_start_in_one_line(monkeypatch, capsys, tmp_path, certificates,
                                                                    url, flags, says):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certificates.client_key.read_bytes(), password=None)
    files = {"ca": certificates.ca, "missing": tmp_path / "missing.pem", "junk": tmp_path / "junk.pem",
             "client_key": certificates.client_key, "client_cert": certificates.client_cert,
             "stranger": certificates.stranger, "encrypted": tmp_path / "encrypted.key"}
    files["junk"].write_text("not a certificate\n")
    files["encrypted"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.BestAvailableEncryption(b"passphrase")))
    monkeypatch.setenv("AMQP_URL", url.format(**files))

    with pytest.raises(SystemExit) as stopped:
        load_settings(ServiceSettings, [flag.format(**files) for flag in flags], prog="metric")

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("metric: error: ") and says.format(**files) in error
    assert error.count("\n") == 1 and "secret" not in error and "Traceback" not in error


def test_settings_for_tls_are_taken_from_the_environment_and_flags(monkeypatch, certificates):
    monkeypatch.setenv("AMQP_URL", "amqps://u:p@broker.example/v")
    monkeypatch.setenv("AMQP_CA_FILE", str(certificates.ca))
    settings = load_settings(ServiceSettings, ["--amqp-cert-file", str(certificates.client),
                                               "--amqp-server-name", OTHER_NAME])
    assert settings.amqp_tls == tls.AmqpTls(str(certificates.ca), str(certificates.client), None, OTHER_NAME)
