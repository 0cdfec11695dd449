"""The dashboard process with a password, against the real RabbitMQ, its page in headless Chromium:
without credentials every door is shut; with them the page draws the CSV and takes in live events
under its Content-Security-Policy, with no violation in the browser's console. Also where it listens
by default and the warning when it is open to the network without a password."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import browser
from mlmonitor.metric_log import MetricLogWriter, MetricRow
from run_pipeline import Pipeline
from test_dashboard import event_body, free_port, make_rows, publish_events
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

USER, PASSWORD = "monitor", "correct horse battery staple"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
DOORS = ["/", "/api/summary", "/api/drift", "/api/events", "/metrics", "/static/dashboard.js"]
# Recorded from the first script on, before the page's own: CDP-injected, so the policy doesn't stop it.
RECORD_VIOLATIONS = ("window.cspViolations = [];"
                     "document.addEventListener('securitypolicyviolation', (e) => "
                     "window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));")
INLINE_SCRIPT = ("const s = document.createElement('script'); s.textContent = 'window.inlineRan = true;';"
                 "document.body.appendChild(s);")


def append_rows(logs_dir: Path, rows: list[MetricRow]) -> None:
    writer = MetricLogWriter(logs_dir / "metric_log.csv", fsync=False)
    try:
        writer.append(rows)
    finally:
        writer.close()


def status_and_challenge(url: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    """The status of the first response (the event stream is not read), and its WWW-Authenticate."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("WWW-Authenticate")


def count(port: int, headers: dict[str, str] | None = None) -> int | None:
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/summary", headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())["count"]
    except OSError:
        return None


@contextmanager
def chromium_with_console_log():
    """scripts/browser.py's Chromium, with the console kept for get_log('browser')."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser.CHROMIUM
    for flag in browser.FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=browser.CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shown_count(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, '.tile [data-figure="all.count"]').text


def histogram_total(driver) -> int:
    return driver.execute_script("return Chart.getChart('histogram').data.datasets[0].data.reduce((a, b) => a + b, 0)")


def csp_messages(entries: list[dict]) -> list[str]:
    return [entry["message"] for entry in entries if "Content Security Policy" in entry["message"]]


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def pipeline(amqp_url: str, logs_dir: Path, tmp_path: Path):
    pipeline = Pipeline(env={"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(tmp_path / "models"),
                             "UPSTREAM_METRICS": "none", "PUSH_SECONDS": "0.2"}, output_dir=tmp_path / "output")
    for name in ("DASHBOARD_HOST", "DASHBOARD_USER", "DASHBOARD_PASSWORD", "DASHBOARD_PASSWORD_FILE"):
        pipeline.env.pop(name, None)
    yield pipeline
    pipeline.stop_all(grace_seconds=5)


def dashboard_log(pipeline: Pipeline) -> str:
    path = pipeline.output_dir / "dashboard.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_with_a_password_the_page_needs_credentials_and_works_under_its_csp(pipeline, amqp_url, logs_dir, tmp_path):
    append_rows(logs_dir, make_rows(120))
    secret = tmp_path / "dashboard_password"
    secret.write_text(PASSWORD + "\n")
    port = free_port()
    pipeline.start("dashboard", ["--dashboard-port", str(port), "--dashboard-host", "0.0.0.0"],
                   env={"DASHBOARD_PASSWORD_FILE": str(secret)})
    wait_until(lambda: count(port, AUTH) == 120, message="/api/summary, with credentials, to count the CSV's 120 rows")

    base = f"http://127.0.0.1:{port}"
    for door in DOORS:
        assert status_and_challenge(base + door) == (401, 'Basic realm="mlmonitor", charset="UTF-8"'), door
        wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD[:-1]}".encode()).decode()}
        assert status_and_challenge(base + door, wrong)[0] == 401, door
        assert status_and_challenge(base + door, AUTH) == (200, None), door

    with chromium_with_console_log() as driver:
        driver.get(base + "/")  # headless Chromium cancels the login prompt: an empty error page
        assert driver.find_elements(By.ID, "connection") == [], "none of the page was shown"
        assert driver.execute_script("return typeof Chart") == "undefined", "none of its scripts ran"
        assert any("status of 401" in entry["message"] for entry in driver.get_log("browser"))

        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": AUTH})
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS})
        driver.get(base + "/")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "connection").text == "live" and shown_count(d) == "120",
            message="the page to be live with the 120 rows of the CSV")
        assert histogram_total(driver) == 120

        live = make_rows(30, start=120, seed=1)
        append_rows(logs_dir, live)
        publish_events(amqp_url, [event_body(row) for row in live])
        WebDriverWait(driver, 30).until(lambda d: shown_count(d) == "150" and histogram_total(d) == 150,
                                        message="the event stream to bring the 30 new events")

        assert driver.execute_script("return window.cspViolations") == []
        console = driver.get_log("browser")
        assert csp_messages(console) == []
        errors = [entry["message"] for entry in console if entry["level"] == "SEVERE"]
        assert [message for message in errors if "/favicon.ico " not in message] == []  # the page has no icon

        # the record can fail: an inline script is refused, and both witnesses report it
        driver.execute_script(INLINE_SCRIPT)
        wait_until(lambda: driver.execute_script("return window.cspViolations.length") > 0,
                   message="the inline script's violation to be reported")
        assert driver.execute_script("return window.inlineRan") is None
        assert csp_messages(driver.get_log("browser")), "the console reports the refused inline script"

    log = dashboard_log(pipeline)
    assert "NO PASSWORD" not in log and PASSWORD not in log
    assert "Traceback" not in log


def test_open_to_the_network_without_a_password_it_warns_loudly(pipeline, logs_dir):
    append_rows(logs_dir, make_rows(5))
    port = free_port()
    pipeline.start("dashboard", ["--dashboard-port", str(port), "--dashboard-host", "0.0.0.0"])
    wait_until(lambda: count(port) == 5, message="the open dashboard to answer without credentials")
    assert count(port) == 5 and status_and_challenge(f"http://127.0.0.2:{port}/api/summary")[0] == 200
    warning = wait_until(lambda: [line for line in dashboard_log(pipeline).splitlines() if "NO PASSWORD" in line],
                         message="the warning in the dashboard's log")
    assert len(warning) == 1 and "WARNING" in warning[0] and "DASHBOARD_PASSWORD" in warning[0]


def test_by_default_it_listens_on_this_machine_only_and_does_not_warn(pipeline, logs_dir):
    """127.0.0.2 is this machine too, but not the address the page and /metrics are bound to."""
    append_rows(logs_dir, make_rows(5))
    port, metrics_port = free_port(), free_port()
    pipeline.start("dashboard", ["--dashboard-port", str(port)], env={"METRICS_PORT": str(metrics_port)})
    wait_until(lambda: count(port) == 5, message="the dashboard on 127.0.0.1")
    wait_until(lambda: status_and_challenge(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200,
               message="its separate /metrics (METRICS_PORT) on 127.0.0.1")
    for listening in (port, metrics_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", listening), timeout=5).close()
    assert "NO PASSWORD" not in dashboard_log(pipeline)
