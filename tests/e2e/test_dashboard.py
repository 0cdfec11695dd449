"""The dashboard as a process against the real RabbitMQ, its page in a real headless Chromium.

The figures on the page and in /api/summary are checked against the CSV computed with numpy and
scikit-learn; the histogram drawn by Chart.js is read back from the page. The classifier's run
writes the CSV rows and publishes the MetricAdded events itself, as metric would. The drift panel
is checked against the whole pipeline, the drift service included, with features simulating drift.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import urllib.request
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pika
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, max_error,
                             mean_absolute_error, mean_absolute_percentage_error, precision_score, r2_score,
                             recall_score)

from broker import connect, drain, queue_depth
from browser import Browser
from broker import amqp_url_for, create_vhost
from mlmonitor.messages import MetricAdded
from mlmonitor.metric_log import MetricLogWriter, MetricRow
from mlmonitor.model_store import CARD_NAME, ModelCard
from mlmonitor.topology import DASHBOARD_EVENTS, METRIC_ADDED, METRIC_EVENTS_EXCHANGE, dead_letter_queue
from run_pipeline import Pipeline, wait_for_drift_queues
from screenshot_dashboard import save_full_page
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

CARD = ModelCard(version="0123456789ab", trained_at="2026-11-27T09:00:00+00:00", estimator="Ridge(alpha=0.1)",
                 feature_names=[f"x{i}" for i in range(10)], holdout_mae=42.8, holdout_rmse=53.9, holdout_r2=0.452,
                 train_rows=353, holdout_rows=89, sklearn_version="1.9.1")
DECIMALS = {"mae": 2, "rmse": 2, "r2": 3, "mape": 1, "max_error": 2, "accuracy": 3, "balanced_accuracy": 3,
            "precision_macro": 3, "recall_macro": 3, "f1_macro": 3, "log_loss": 3}
BROKEN_EVENT = b'{"id": "broken", "y_true": NaN, "y_pred": 1.0, "absolute_error": 1.0}'  # a text label is fine, NaN not
ANIMALS = ["bird", "cat", "dog"]
CLASSIFIER_CARD = ModelCard(
    version="c1a551f1e4c0", trained_at="2026-11-27T09:00:00+00:00", estimator="LogisticRegression()",
    feature_names=["x0", "x1"], holdout_mae=None, holdout_rmse=None, holdout_r2=None, train_rows=400,
    holdout_rows=100, sklearn_version="1.9.1", task="classification", classes=ANIMALS, predicts_proba=True,
    holdout={"accuracy": 0.714, "balanced_accuracy": 0.702, "f1_macro": 0.69, "log_loss": 0.741})


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_rows(count: int, start: int = 0, seed: int = 0) -> list[MetricRow]:
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(25, 346, count).round(1)
    y_pred = y_true + rng.normal(0, 50, count)
    return [MetricRow.from_pair(f"event-{start + i}", float(t), float(p)) for i, (t, p) in enumerate(zip(y_true, y_pred))]


def append_rows(logs_dir: Path, rows: list[MetricRow]) -> None:
    writer = MetricLogWriter(logs_dir / "metric_log.csv", fsync=False)
    try:
        writer.append(rows)
    finally:
        writer.close()


def csv_rows(logs_dir: Path) -> list[dict]:
    with open(logs_dir / "metric_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def expected_figures(rows: list[dict]) -> dict:
    y_true = np.array([float(row["y_true"]) for row in rows])
    y_pred = np.array([float(row["y_pred"]) for row in rows])
    return {"count": len(rows), "mae": mean_absolute_error(y_true, y_pred),
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))), "r2": r2_score(y_true, y_pred),
            "mape": 100 * mean_absolute_percentage_error(y_true, y_pred), "max_error": max_error(y_true, y_pred)}


def event_body(row: MetricRow, sent_at: float = 1.0) -> bytes:
    return MetricAdded(id=row.id, y_true=row.y_true, y_pred=row.y_pred, absolute_error=row.absolute_error,
                       model_version=CARD.version, sent_at=sent_at).encode()


def publish_events(amqp_url: str, bodies: list[bytes]) -> None:
    """Publishes to the metric_events exchange, as metric does, with confirms."""
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(METRIC_EVENTS_EXCHANGE, METRIC_ADDED, body,
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def depth(amqp_url: str, queue: str) -> int | None:
    """Ready messages in the queue; None while it does not exist."""
    try:
        return queue_depth(amqp_url, queue)
    except pika.exceptions.ChannelClosedByBroker:
        return None


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def summary(port: int) -> dict | None:
    try:
        return json.loads(get(f"http://127.0.0.1:{port}/api/summary"))
    except OSError:
        return None


def wait_for_summary(port: int, count: int, timeout: float = 30) -> dict:
    return wait_until(lambda: (s := summary(port)) is not None and s["count"] == count and s, timeout,
                      message=f"/api/summary to count {count}")


def assert_summary_matches(actual: dict, rows: list[dict]) -> None:
    for name, value in expected_figures(rows).items():
        assert actual[name] == pytest.approx(value, rel=1e-9), name


def page_number(text: str) -> float:
    return float(text.replace(",", "").replace("%", "").strip())


def assert_page_matches(driver, rows: list[dict], figures=None) -> None:
    """Every figure of the table, per window, against the CSV; displayed rounding allowed, no more.
    Only the cells shown count: the other task's table is in the page, hidden."""
    figures = figures or expected_figures
    for window, subset in (("all", rows), ("last_1000", rows[-1000:]), ("last_100", rows[-100:])):
        wanted = figures(subset)
        for name, value in wanted.items():
            cells = [cell for cell in driver.find_elements(By.CSS_SELECTOR, f'[data-figure="{window}.{name}"]')
                     if cell.is_displayed()]
            assert cells, f"no cell shown for {window}.{name}"
            for cell in cells:
                shown = page_number(cell.text)
                tolerance = 0 if name == "count" else 0.5 * 10 ** -DECIMALS[name] + 1e-9
                assert abs(shown - value) <= tolerance, f"{window}.{name}: page shows {cell.text}, CSV gives {value}"


def classifier_rows(count: int, start: int = 0, seed: int = 0) -> list[tuple[MetricRow, dict]]:
    """A classifier's rows, each with the probabilities its event carries: the label is the likeliest
    class, the true class drawn mostly from the probabilities."""
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.full(len(ANIMALS), 0.8), size=count)
    mixed = 0.7 * proba + 0.1
    true = np.minimum((np.cumsum(mixed, axis=1) < rng.random(count)[:, None]).sum(axis=1), len(ANIMALS) - 1)
    return [(MetricRow(f"animal-{start + i}", ANIMALS[true[i]], ANIMALS[proba[i].argmax()],
                       max(0.0, 1.0 - float(proba[i, true[i]]))), dict(zip(ANIMALS, map(float, proba[i]))))
            for i in range(count)]


def classifier_event(row: MetricRow, probabilities: dict, version: str) -> bytes:
    return MetricAdded(id=row.id, y_true=row.y_true, y_pred=row.y_pred, absolute_error=row.absolute_error,
                       probabilities=probabilities, model_version=version, sent_at=1.0).encode()


def classification_figures(rows: list[dict]) -> dict:
    y_true = [row["y_true"] for row in rows]
    y_pred = [row["y_pred"] for row in rows]
    p_true = np.clip(1.0 - np.array([float(row["absolute_error"]) for row in rows]), np.finfo(float).eps, 1)
    return {"count": len(rows), "accuracy": accuracy_score(y_true, y_pred),
            "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
            "precision_macro": precision_score(y_true, y_pred, average="macro", zero_division=0),
            "recall_macro": recall_score(y_true, y_pred, average="macro", zero_division=0),
            "f1_macro": f1_score(y_true, y_pred, average="macro", zero_division=0),
            "log_loss": float(-np.log(p_true).mean())}


def csv_confusion(rows: list[dict]) -> tuple[list[str], list[list[int]]]:
    labels = sorted({row["y_true"] for row in rows} | {row["y_pred"] for row in rows})
    return labels, confusion_matrix([row["y_true"] for row in rows], [row["y_pred"] for row in rows],
                                    labels=labels).tolist()


def page_confusion(driver) -> tuple[list[str], list[list[int]]]:
    table = driver.find_element(By.ID, "confusion")
    labels = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "thead th")][1:]
    counts = [[int(page_number(cell.text)) for cell in row.find_elements(By.TAG_NAME, "td")]
              for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    return labels, counts


def version_count(driver, version: str) -> str:
    cells = driver.find_elements(By.CSS_SELECTOR, f'.version[data-version="{version}"] tr[data-version-figure="count"] td')
    return cells[0].text if cells else ""


def histogram_counts(driver) -> list[int]:
    return driver.execute_script("return Array.from(Chart.getChart('histogram').data.datasets[0].data)")


def shown_count(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, '.tile [data-figure="all.count"]').text


def fake_service_metrics(dead_lettered: dict[str, int], expired: dict[str, int]):
    """A /metrics endpoint like metric's, for the dashboard's pipeline panel."""
    registry = CollectorRegistry()
    dead = Counter("mlmonitor_messages_dead_lettered_total", "d", ["queue"], registry=registry)
    halves = Counter("mlmonitor_join_expired_halves_total", "e", ["queue"], registry=registry)
    for queue, count in dead_lettered.items():
        dead.labels(queue).inc(count)
    for queue, count in expired.items():
        halves.labels(queue).inc(count)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server, f"http://127.0.0.1:{port}/metrics"


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / CARD_NAME).write_text(json.dumps(asdict(CARD)))
    return directory


@pytest.fixture
def pipeline(amqp_url: str, logs_dir: Path, models_dir: Path, tmp_path: Path):
    pipeline = Pipeline(env={"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(models_dir),
                             "UPSTREAM_METRICS": "none", "PUSH_SECONDS": "0.2"}, output_dir=tmp_path / "output")
    yield pipeline
    pipeline.stop_all(grace_seconds=5)


@pytest.fixture
def late_vhost():
    """(amqp_url, create): a vhost that does not exist until `create()` is called; deleted afterwards."""
    name = f"test-late-{uuid.uuid4().hex[:12]}"

    yield amqp_url_for(name), lambda: create_vhost(name)
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


def dashboard_log(pipeline: Pipeline) -> str:
    path = pipeline.output_dir / "dashboard.log"
    return path.read_text(errors="replace") if path.exists() else ""


# ---------------------------------------------------------------- tests


def test_page_shows_the_csv_and_updates_live_in_chromium(pipeline, amqp_url, logs_dir, tmp_path):
    append_rows(logs_dir, make_rows(300))
    metrics_server, metrics_url = fake_service_metrics({"y_true": 2, "features": 1}, {"y_true": 2})
    port = free_port()
    try:
        pipeline.start("dashboard", ["--dashboard-port", str(port), "--upstream-metrics", metrics_url,
                                     "--upstream-seconds", "0.3"])
        first = wait_for_summary(port, 300)
        assert_summary_matches(first, csv_rows(logs_dir))

        with Browser() as driver:
            driver.get(f"http://127.0.0.1:{port}/")
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.ID, "connection").text == "live" and shown_count(d) == "300",
                message="the page to be live with the 300 rows of the CSV")
            assert_page_matches(driver, csv_rows(logs_dir))
            assert driver.find_element(By.ID, "model-version").text == CARD.version
            assert page_number(driver.find_element(By.CSS_SELECTOR, '[data-figure="holdout.mae"]').text) == 42.8
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.CSS_SELECTOR, '[data-pipeline="dead_lettered_total"]').text == "3"
                and d.find_element(By.CSS_SELECTOR, '[data-pipeline="expired_halves_total"]').text == "2",
                message="the dead-letter and expired-halves counts of the other services")

            before = histogram_counts(driver)
            errors = np.array([float(row["absolute_error"]) for row in csv_rows(logs_dir)])
            width = first["histogram"]["bin_width"]
            assert before == np.histogram(errors, bins=np.arange(len(before) + 1) * width)[0].tolist()

            # metric's way: the rows reach the CSV, then their events the exchange
            new_rows = make_rows(40, start=300, seed=1)
            append_rows(logs_dir, new_rows)
            publish_events(amqp_url, [event_body(row) for row in new_rows]
                           + [event_body(make_rows(1)[0]), BROKEN_EVENT])

            WebDriverWait(driver, 30).until(lambda d: sum(histogram_counts(d)) == 340 and shown_count(d) == "340",
                                            message="the histogram and the count to take in the 40 new events")
            after = histogram_counts(driver)
            assert after != before
            assert_page_matches(driver, csv_rows(logs_dir))
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.CSS_SELECTOR, '[data-pipeline="dead_lettered_total"]').text == "4",
                message="the dashboard's own dead-lettered message to be counted")
            save_full_page(driver, tmp_path / "dashboard.png")
            assert (tmp_path / "dashboard.png").stat().st_size > 20_000
    finally:
        metrics_server.shutdown()

    assert_summary_matches(summary(port), csv_rows(logs_dir))
    assert queue_depth(amqp_url, METRIC_ADDED) == 42, "plot's queue must still hold every event"
    wait_until(lambda: queue_depth(amqp_url, DASHBOARD_EVENTS) == 0, message="the dashboard's queue drained")
    ((body, headers),) = drain(amqp_url, dead_letter_queue(DASHBOARD_EVENTS))
    assert body == BROKEN_EVENT and "y_true" in headers["x-rejection-reason"]

    metrics = get(f"http://127.0.0.1:{port}/metrics").decode()
    mae_line = next(line for line in metrics.splitlines() if line.startswith('mlmonitor_quality_mae{window="all"}'))
    assert float(mae_line.split()[-1]) == pytest.approx(expected_figures(csv_rows(logs_dir))["mae"])
    assert f'mlmonitor_messages_consumed_total{{queue="{DASHBOARD_EVENTS}"}} 42.0' in metrics
    assert "mlmonitor_event_age_seconds_count 41.0" in metrics
    assert "Traceback" not in dashboard_log(pipeline)


def test_restart_restores_the_csv_and_the_queue_stays_bounded_while_down(pipeline, amqp_url, logs_dir):
    append_rows(logs_dir, make_rows(200))
    port = free_port()
    args = ["--dashboard-port", str(port), "--queue-max-length", "25"]
    pipeline.start("dashboard", args)
    wait_for_summary(port, 200)
    wait_until(lambda: depth(amqp_url, DASHBOARD_EVENTS) == 0, message="the dashboard's queue declared")
    pipeline.processes["dashboard"].terminate()
    assert pipeline.processes["dashboard"].wait(10) == 0, dashboard_log(pipeline)

    while_down = make_rows(100, start=200, seed=2)
    append_rows(logs_dir, while_down)
    publish_events(amqp_url, [event_body(row) for row in while_down])
    assert queue_depth(amqp_url, DASHBOARD_EVENTS) == 25, "the queue keeps only the newest events while down"
    assert queue_depth(amqp_url, METRIC_ADDED) == 100, "plot's queue is not bounded"

    pipeline.start("dashboard", args)
    restarted = wait_for_summary(port, 300)
    wait_until(lambda: queue_depth(amqp_url, DASHBOARD_EVENTS) == 0, message="the 25 queued events consumed")
    assert_summary_matches(summary(port), csv_rows(logs_dir))
    assert restarted["windows"]["last_100"]["count"] == 100
    assert "restored 300 rows" in dashboard_log(pipeline)


def test_rows_written_before_its_queue_existed_are_counted_at_connect(pipeline, logs_dir, late_vhost):
    """First start while the broker is not reachable yet: metric may write rows meanwhile that were
    never published to a queue of the dashboard's. Once connected (queue declared and bound), the
    dashboard reads the CSV rows it has not seen."""
    amqp_url, create_vhost = late_vhost
    append_rows(logs_dir, make_rows(10))
    port = free_port()
    pipeline.env["AMQP_URL"] = amqp_url
    pipeline.start("dashboard", ["--dashboard-port", str(port)])
    wait_for_summary(port, 10)
    wait_until(lambda: "waiting for RabbitMQ" in dashboard_log(pipeline), message="the dashboard to wait for RabbitMQ")
    append_rows(logs_dir, make_rows(30, start=10))
    assert summary(port)["count"] == 10
    create_vhost()
    wait_for_summary(port, 40)
    assert_summary_matches(summary(port), csv_rows(logs_dir))


def test_a_classifier_page_shows_accuracy_and_the_confusion_matrix_of_the_csv(pipeline, amqp_url, logs_dir,
                                                                            models_dir):
    (models_dir / CARD_NAME).write_text(json.dumps(asdict(CLASSIFIER_CARD)))
    append_rows(logs_dir, [row for row, _ in classifier_rows(300)])
    port = free_port()
    pipeline.start("dashboard", ["--dashboard-port", str(port)])
    first = wait_for_summary(port, 300)
    assert first["task"] == "classification"
    shown = first["confusion_matrix"]
    assert (shown["labels"], shown["counts"]) == csv_confusion(csv_rows(logs_dir))

    with Browser() as driver:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "connection").text == "live" and shown_count(d) == "300",
            message="the page to be live with the 300 rows of the CSV")
        assert not driver.find_element(By.ID, "figures").is_displayed(), "the regression table is hidden"
        assert_page_matches(driver, csv_rows(logs_dir), classification_figures)
        assert page_confusion(driver) == csv_confusion(csv_rows(logs_dir))
        assert page_number(driver.find_element(By.CSS_SELECTOR, '[data-figure="holdout.accuracy"]').text) == 0.714
        driver.find_element(By.CSS_SELECTOR, '#confusion-window button[data-window="last_100"]').click()
        assert page_confusion(driver) == csv_confusion(csv_rows(logs_dir)[-100:])

        # a new version's events, metric's way: rows to the CSV, then events to the exchange
        live = classifier_rows(40, start=300, seed=1)
        append_rows(logs_dir, [row for row, _ in live])
        publish_events(amqp_url, [classifier_event(row, probabilities, "v2") for row, probabilities in live])
        WebDriverWait(driver, 30).until(lambda d: shown_count(d) == "340" and version_count(d, "v2") == "40",
                                        message="the page to take in the 40 events of version v2")
        assert_page_matches(driver, csv_rows(logs_dir), classification_figures)
        assert page_confusion(driver) == csv_confusion(csv_rows(logs_dir)[-100:])
        assert version_count(driver, "unknown") == "300"
        assert "1 − p(true class)" in driver.find_element(By.ID, "histogram-title").text

    final = summary(port)
    assert {version: figures["count"] for version, figures in final["by_version"].items()} == {"unknown": 300, "v2": 40}
    assert final["brier_events"] == 40 and final["roc_auc"] is None  # three classes; the CSV keeps p(true) only
    v2 = final["by_version"]["v2"]["all"]
    assert v2["accuracy"] == pytest.approx(classification_figures(csv_rows(logs_dir)[300:])["accuracy"])
    for name, value in classification_figures(csv_rows(logs_dir)).items():
        assert final[name] == pytest.approx(value, rel=1e-9), name
    metrics = get(f"http://127.0.0.1:{port}/metrics").decode()
    accuracy = next(line for line in metrics.splitlines()
                    if line.startswith('mlmonitor_quality_accuracy{window="all"}'))
    assert float(accuracy.split()[-1]) == pytest.approx(final["accuracy"])
    assert 'mlmonitor_quality_version_events{version="v2",window="all"} 40.0' in metrics
    assert "Traceback" not in dashboard_log(pipeline)


def drift_state(port: int) -> dict | None:
    try:
        return json.loads(get(f"http://127.0.0.1:{port}/api/drift"))
    except OSError:
        return None


def drift_cell(driver, selector: str) -> str:
    cells = driver.find_elements(By.CSS_SELECTOR, selector)
    return cells[0].text if cells else ""


def shown_ratio(text: str) -> tuple[float, float]:
    """(score, threshold) from a cell such as "1.03 / 1"."""
    score, threshold = text.split("/")
    return float(score), float(threshold)


def test_the_drift_panel_shows_the_bmi_alert_the_drift_service_raises(amqp_url, tmp_path):
    """The whole pipeline as `make run` runs it, features shifting bmi by 1 σ from event 300: before
    drift runs the panel says so; then it shows bmi raised, its score at its threshold, and the open
    alert with its explanation."""
    logs_dir = tmp_path / "logs"
    pipeline = Pipeline(env={"AMQP_URL": amqp_url, "LOGS_DIR": str(logs_dir), "MODELS_DIR": str(tmp_path / "models"),
                             "UPSTREAM_METRICS": "none", "PUSH_SECONDS": "0.2", "NICE": "0"},
                        output_dir=tmp_path / "output")
    port = free_port()
    try:
        pipeline.start("dashboard", ["--dashboard-port", str(port)])
        wait_until(lambda: drift_state(port), 30, message="/api/drift to answer")
        assert drift_state(port)["available"] is False
        with Browser() as driver:
            driver.get(f"http://127.0.0.1:{port}/")
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.ID, "drift-status").text == "drift: not running",
                message="the page to say the drift service has not written its summary")
            assert "has not written" in driver.find_element(By.ID, "drift-problem").text

            assert pipeline.run_to_end("learn_model", timeout=120) == 0
            for service in ("model", "metric", "plot", "drift"):
                pipeline.start(service)
            assert wait_for_drift_queues(pipeline, timeout=60), "drift declared its queues"
            features = pipeline.start("features", ["--count", "1500", "--rate", "0", "--drift-features", "bmi",
                                                   "--drift-sigma", "1", "--drift-from", "300"])
            assert features.wait(120) == 0

            bmi_row = 'tr[data-detector="feature.bmi"]'
            WebDriverWait(driver, 90).until(
                lambda d: drift_cell(d, f'#detectors {bmi_row} td[data-field="state"]') == "raised"
                and drift_cell(d, f'#open-alerts {bmi_row}[data-state="raised"] td.why'),
                message="the panel to show bmi raised and its open alert")
            alert_score, alert_threshold = shown_ratio(drift_cell(driver, f"#open-alerts {bmi_row} td.score"))
            assert alert_score >= alert_threshold == 1, "raised at a score at or above its threshold"
            # while raised, drift holds the score at the threshold; an event back near the reference lowers
            # it a little, and it resolves below half
            score, threshold = shown_ratio(drift_cell(driver, f"#detectors {bmi_row} td.score"))
            assert threshold / 2 <= score <= threshold
            assert "since event" in drift_cell(driver, f"#open-alerts {bmi_row} td.why")
            assert drift_cell(driver, f'#recent-alerts {bmi_row}[data-state="raised"] td.text.state') == "raised"
            assert driver.find_element(By.ID, "drift-status").text.startswith("drift: ")
            assert "open" in driver.find_element(By.ID, "drift-status").text
            assert not driver.find_element(By.ID, "drift-problem").is_displayed()
            bmi_line = driver.execute_script("return Chart.getChart('drift-chart').data.datasets"
                                             ".find((d) => d.label === 'bmi').data.map((p) => p.y)")
            assert bmi_line and max(bmi_line) >= threshold / 2, "the chart's bmi line rises to the threshold"
            save_full_page(driver, tmp_path / "drift.png")

        state = drift_state(port)
        assert state["available"] is True and state["events"]["predictions"] > 300
        bmi = next(detector for detector in state["detectors"] if detector["feature"] == "bmi")
        assert bmi["state"] == "raised" and bmi["score"] >= bmi["threshold"] / 2 and bmi["history"]
        raised = next(alert for alert in state["open_alerts"] if alert["feature"] == "bmi")
        assert raised["kind"] == "feature_drift" and raised["score"] >= raised["threshold"]
        assert raised["events"] > 300, "raised after the shift began"
        lines = [json.loads(line) for line in (logs_dir / "alerts.jsonl").read_text().splitlines()]
        assert [alert["episode"] for alert in state["recent_alerts"]] == [line["episode"] for line in reversed(lines)]
        assert "Traceback" not in dashboard_log(pipeline)
    finally:
        pipeline.stop_all(grace_seconds=5)
