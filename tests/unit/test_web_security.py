"""The dashboard's web security without a broker: Basic auth on every route, the security headers,
the constant-time comparison, secrets read from <NAME>_FILE, the loopback defaults and the warning
for an open dashboard."""

from __future__ import annotations

import base64
import hmac
import logging
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from dashboard import Settings as DashboardSettings
from features import Settings as FeaturesSettings
from mlmonitor.settings import ServiceSettings, load_settings, secret_field
from web import CHALLENGE, STATIC_DIR, BasicAuth, WebServer, create_app, warn_if_exposed

USER, PASSWORD = "monitor", "s3cret-päss"
STATE = {"count": 7, "mae": 1.5}
PROTECTED = ["/", "/api/summary", "/api/drift", "/api/events", "/metrics", "/static/dashboard.js",
             "/static/chart.umd.min.js", "/no-such-page"]
# a service's start, as every service does it, then it stays up until killed
SERVICE_WITH_METRICS = """
import signal, sys
from mlmonitor.service import start_service
from mlmonitor.settings import ServiceSettings
start_service("probe", ServiceSettings, ["--metrics-port", sys.argv[1]])
print("listening", flush=True)
signal.pause()
"""
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("DASHBOARD_HOST", "DASHBOARD_USER", "DASHBOARD_PASSWORD", "DASHBOARD_PASSWORD_FILE", "METRICS_HOST",
                 "API_TOKEN", "API_TOKEN_FILE", "LOG_LEVEL", "LOG_LEVEL_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(lambda: STATE, push_seconds=0.05, auth=BasicAuth(USER, PASSWORD)))


@pytest.fixture
def open_client() -> TestClient:
    return TestClient(create_app(lambda: STATE, push_seconds=0.05))


def basic(user: str, password: str, scheme: str = "Basic") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"{scheme} {token}"}


def first_event(client: TestClient, headers: dict[str, str]) -> str:
    with client.stream("GET", "/api/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return next(line for line in response.iter_lines() if line)


def csp_directives(header: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


# ---------------------------------------------------------------- Basic auth


@pytest.mark.parametrize("path", PROTECTED)
def test_without_credentials_every_route_is_refused_with_the_challenge(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="mlmonitor", charset="UTF-8"' == CHALLENGE
    assert response.text == "Unauthorized\n", "a refusal says nothing more"


@pytest.mark.parametrize("headers", [
    basic(USER, "wrong"),
    basic("admin", PASSWORD),
    basic(USER, PASSWORD + "x"),
    basic(USER, PASSWORD[:-1]),
    basic(USER.upper(), PASSWORD),
    basic("", ""),
    basic(f"{USER}:{PASSWORD}", ""),
    {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()},  # no colon
    {"Authorization": "Basic !!not-base64!!"},
    {"Authorization": "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
    {"Authorization": ""},
], ids=["wrong-password", "wrong-user", "longer-password", "shorter-password", "user-case", "empty", "all-in-user",
        "no-colon", "not-base64", "bearer", "empty-header"])
@pytest.mark.parametrize("path", ["/", "/api/summary", "/api/events", "/metrics"])
def test_wrong_credentials_are_refused(client, path, headers):
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.text == "Unauthorized\n"


def test_the_right_credentials_open_the_page_the_api_the_metrics_and_the_assets(client):
    headers = basic(USER, PASSWORD)
    page = client.get("/", headers=headers)
    assert page.status_code == 200 and '<script src="/static/dashboard.js"' in page.text
    assert client.get("/api/summary", headers=headers).json() == STATE
    metrics = client.get("/metrics", headers=headers)
    assert metrics.status_code == 200 and "python_info" in metrics.text
    assert client.get("/static/dashboard.js", headers=headers).status_code == 200
    assert client.get("/", headers=basic(USER, PASSWORD, scheme="basic")).status_code == 200, "the scheme is caseless"


def test_the_right_credentials_open_the_event_stream(client):
    assert first_event(client, basic(USER, PASSWORD)) == 'data: {"count":7,"mae":1.5}'


def test_without_a_password_nothing_asks_for_credentials(open_client):
    assert open_client.get("/api/summary").json() == STATE
    assert first_event(open_client, {}) == 'data: {"count":7,"mae":1.5}'


def test_both_user_and_password_are_compared_in_constant_time_on_every_request(client, monkeypatch):
    calls = []
    compare = hmac.compare_digest

    def recording_compare(a, b):
        calls.append((type(a), type(b)))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording_compare)
    attempts = [basic("admin", PASSWORD), basic(USER, "wrong"), {"Authorization": "Basic !!"}, {},
                basic(USER, PASSWORD)]
    statuses = [client.get("/api/summary", headers=headers).status_code for headers in attempts]
    assert statuses == [401, 401, 401, 401, 200]
    assert calls == [(bytes, bytes)] * 2 * len(attempts), "user and password, both, every time, as bytes"


def test_a_wrong_password_is_logged_in_one_line_without_the_credentials(client, caplog):
    with caplog.at_level(logging.WARNING, logger="dashboard.web"):
        client.get("/", headers=basic("admin", "guess-123"))
        client.get("/")  # a browser's first request carries none: not worth a line
    (record,) = caplog.records
    assert "refused wrong credentials" in record.getMessage()
    assert "admin" not in record.getMessage() and "guess-123" not in record.getMessage()


# ---------------------------------------------------------------- security headers


@pytest.mark.parametrize("path, headers, status", [
    ("/", {}, 401),
    ("/static/dashboard.css", {}, 401),
    ("/", basic(USER, PASSWORD), 200),
    ("/api/summary", basic(USER, PASSWORD), 200),
    ("/metrics", basic(USER, PASSWORD), 200),
    ("/static/dashboard.js", basic(USER, PASSWORD), 200),
    ("/static/chart.umd.min.js", basic(USER, PASSWORD), 200),
    ("/static/dashboard.css", basic(USER, PASSWORD), 200),
    ("/no-such-page", basic(USER, PASSWORD), 404),
])
def test_every_response_carries_the_security_headers(client, path, headers, status):
    response = client.get(path, headers=headers)
    assert response.status_code == status
    assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/", "/api/summary", "/api/drift", "/static/dashboard.js", "/no-such-page"])
def test_an_open_dashboard_sends_the_security_headers_too(open_client, path):
    response = open_client.get(path)
    assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "content-security-policy" in response.headers


def test_the_event_stream_carries_the_security_headers(client):
    with client.stream("GET", "/api/events", headers=basic(USER, PASSWORD)) as response:
        assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS


def test_the_content_security_policy_allows_only_the_dashboards_own_assets(open_client):
    policy = csp_directives(open_client.get("/").headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert policy[directive] == ["'self'"], directive
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]


def test_the_page_needs_nothing_the_policy_forbids():
    """No inline script, style or handler, nothing from another origin: the browser test checks the
    same live, this catches it before."""
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], "an inline script"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "an inline style"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html), "an asset from another origin"


def test_the_server_does_not_name_itself(tmp_path):
    server = WebServer(create_app(lambda: STATE), "127.0.0.1", 0)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/summary", timeout=5) as response:
            assert response.headers.get("server") is None
            assert response.headers.get("x-frame-options") == "DENY"
    finally:
        server.stop()


# ---------------------------------------------------------------- where it listens


def test_by_default_the_dashboard_and_metrics_listen_on_loopback_only():
    assert load_settings(DashboardSettings, []).dashboard_host == "127.0.0.1"
    assert load_settings(ServiceSettings, []).metrics_host == "127.0.0.1"
    assert load_settings(FeaturesSettings, []).metrics_host == "127.0.0.1"


def test_the_hosts_can_be_opened_explicitly(monkeypatch):
    monkeypatch.setenv("DASHBOARD_HOST", "0.0.0.0")
    monkeypatch.setenv("METRICS_HOST", "0.0.0.0")
    settings = load_settings(DashboardSettings, [])
    assert (settings.dashboard_host, settings.metrics_host) == ("0.0.0.0", "0.0.0.0")


def test_the_default_host_cannot_be_reached_through_another_address():
    """127.0.0.2 is this machine too, but not the address the server is bound to."""
    server = WebServer(create_app(lambda: STATE), load_settings(DashboardSettings, []).dashboard_host, 0)
    server.start()
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", server.port), timeout=5).close()
    finally:
        server.stop()


def test_every_services_metrics_listen_on_loopback_by_default():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {name: value for name, value in os.environ.items() if name != "METRICS_HOST"}
    process = subprocess.Popen([sys.executable, "-c", SERVICE_WITH_METRICS, str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert "listening\n" in iter(process.stdout.readline, ""), "the probe service did not start"
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "dashboard"])
def test_an_open_dashboard_without_a_password_warns_loudly_at_start(caplog, host):
    logger = logging.getLogger("test.dashboard")
    with caplog.at_level(logging.INFO, logger="test.dashboard"):
        warn_if_exposed(host, 8000, None, logger)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "NO PASSWORD" in record.getMessage() and "DASHBOARD_PASSWORD" in record.getMessage()
    assert "\n" not in record.getMessage()


@pytest.mark.parametrize("host, auth", [
    ("0.0.0.0", BasicAuth(USER, PASSWORD)),
    ("127.0.0.1", None),
    ("localhost", None),
    ("::1", None),
])
def test_no_warning_with_a_password_or_on_loopback(caplog, host, auth):
    with caplog.at_level(logging.INFO, logger="test.dashboard"):
        warn_if_exposed(host, 8000, auth, logging.getLogger("test.dashboard"))
    assert caplog.records == []


# ---------------------------------------------------------------- the password and <NAME>_FILE


def test_the_user_defaults_to_monitor_and_there_is_no_password():
    settings = load_settings(DashboardSettings, [])
    assert (settings.dashboard_user, settings.dashboard_password) == ("monitor", None)


def test_the_password_is_read_from_the_environment_and_never_shown(monkeypatch):
    monkeypatch.setenv("DASHBOARD_PASSWORD", PASSWORD)
    settings = load_settings(DashboardSettings, [])
    assert settings.dashboard_password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


def test_the_password_is_read_from_its_file_without_the_trailing_newline(monkeypatch, tmp_path: Path):
    secret = tmp_path / "dashboard_password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    monkeypatch.setenv("DASHBOARD_PASSWORD_FILE", str(secret))
    assert load_settings(DashboardSettings, []).dashboard_password.get_secret_value() == PASSWORD


def test_an_empty_password_variable_leaves_the_file_in_charge(monkeypatch, tmp_path: Path):
    secret = tmp_path / "dashboard_password"
    secret.write_text(PASSWORD, encoding="utf-8")
    monkeypatch.setenv("DASHBOARD_PASSWORD", "")  # compose's `${DASHBOARD_PASSWORD:-}`
    monkeypatch.setenv("DASHBOARD_PASSWORD_FILE", str(secret))
    assert load_settings(DashboardSettings, []).dashboard_password.get_secret_value() == PASSWORD


def test_any_secret_setting_can_come_from_its_file(monkeypatch, tmp_path: Path):
    class TokenSettings(ServiceSettings):
        api_token: str | None = secret_field(None)

    (tmp_path / "token").write_text("t0ken\r\n")
    monkeypatch.setenv("API_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("LOG_LEVEL_FILE", str(tmp_path / "token"))  # not a secret setting: no file for it
    settings = load_settings(TokenSettings, [])
    assert (settings.api_token, settings.log_level) == ("t0ken", "INFO")


@pytest.mark.parametrize("given", ["environment", "flag"])
def test_a_password_and_its_file_both_given_is_a_one_line_error(monkeypatch, tmp_path: Path, capsys, given):
    (tmp_path / "secret").write_text("from-the-file")
    monkeypatch.setenv("DASHBOARD_PASSWORD_FILE", str(tmp_path / "secret"))
    argv = []
    if given == "environment":
        monkeypatch.setenv("DASHBOARD_PASSWORD", "from-the-env")
    else:
        argv = ["--dashboard-password", "from-the-env"]
    with pytest.raises(SystemExit) as caught:
        load_settings(DashboardSettings, argv, prog="dashboard")
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error == "dashboard: error: DASHBOARD_PASSWORD and DASHBOARD_PASSWORD_FILE are both set: give only one\n"


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "not-utf8"])
def test_an_unreadable_password_file_is_a_one_line_error(monkeypatch, tmp_path: Path, capsys, problem):
    path = tmp_path / "secret"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    elif problem == "not-utf8":
        path.write_bytes(b"\xff\xfe-secret")
    monkeypatch.setenv("DASHBOARD_PASSWORD_FILE", str(path))
    with pytest.raises(SystemExit) as caught:
        load_settings(DashboardSettings, [], prog="dashboard")
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("dashboard: error: DASHBOARD_PASSWORD_FILE: ") and str(path) in error
    assert error.count("\n") == 1
    assert "Traceback" not in error and "secret" not in error.replace(str(path), "")


def test_a_password_file_error_is_a_validation_error_for_direct_construction(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DASHBOARD_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="DASHBOARD_PASSWORD_FILE"):
        DashboardSettings()


def test_a_user_name_with_a_colon_is_refused(capsys):
    """Basic auth splits user and password at the first colon: such a user could never log in."""
    with pytest.raises(SystemExit) as caught:
        load_settings(DashboardSettings, ["--dashboard-user", "mon:itor"], prog="dashboard")
    assert caught.value.code == 2
    assert "dashboard_user" in capsys.readouterr().err
