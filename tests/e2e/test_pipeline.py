"""End to end: all five services as separate processes against the real RabbitMQ, as the README runs them."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread
from sklearn.datasets import load_diabetes

from run_pipeline import ROOT, Pipeline
from waiting import wait_until

pytestmark = pytest.mark.broker


def csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def known_pairs(models_dir: Path) -> set[tuple[float, float]]:
    """Every (y_true, y_pred) the trained model can produce on the diabetes samples."""
    sys.path.insert(0, str(ROOT / "common" / "src"))
    from mlmonitor.model_store import load_model

    estimator, _ = load_model(models_dir)
    data = load_diabetes()
    return {(round(float(t), 6), round(float(p), 6)) for t, p in zip(data.target, estimator.predict(data.data))}


def assert_rows_correct(rows: list[dict], expected_count: int, pairs: set[tuple[float, float]]) -> None:
    ids = [row["id"] for row in rows]
    assert len(rows) == expected_count
    assert len(set(ids)) == expected_count, "an id was written twice"
    for row in rows:
        y_true, y_pred, error = float(row["y_true"]), float(row["y_pred"]), float(row["absolute_error"])
        assert error == pytest.approx(abs(y_true - y_pred))
        assert (round(y_true, 6), round(y_pred, 6)) in pairs, f"{row} is not a prediction of its own sample"


def plot_has_drawn(logs_dir: Path, count: int) -> bool:
    """True once plot's drawn histogram (the JSON beside the PNG) counts exactly `count` events."""
    try:
        summary = json.loads((logs_dir / "error_distribution.json").read_text())
    except (FileNotFoundError, ValueError):
        return False
    assert summary["count"] <= count, f"plot counted {summary['count']} events of {count}: a duplicate"
    return summary["count"] == count and sum(summary["counts"]) == count


@pytest.fixture
def env(amqp_url: str, tmp_path: Path) -> dict[str, str]:
    return {"AMQP_URL": amqp_url, "LOGS_DIR": str(tmp_path / "logs"), "MODELS_DIR": str(tmp_path / "models")}


@pytest.mark.timeout(180)
def test_readme_run_command_streams_events_into_csv_and_png(env, tmp_path: Path):
    events = 500
    output = open(tmp_path / "run_pipeline.log", "wb")
    runner = subprocess.Popen([sys.executable, "scripts/run_pipeline.py", "--rate", "0", "--count", str(events)],
                              cwd=ROOT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
    try:
        csv_path = tmp_path / "logs" / "metric_log.csv"
        wait_until(lambda: len(csv_rows(csv_path)) >= events, timeout=120, message=f"{events} rows")
        png_path = tmp_path / "logs" / "error_distribution.png"
        wait_until(lambda: plot_has_drawn(tmp_path / "logs", events), timeout=30,
                   message="plot to draw every event")
        assert runner.poll() is None, "run_pipeline stopped although only features was meant to finish"
    finally:
        runner.send_signal(signal.SIGINT)
        exit_code = runner.wait(30)
        output.close()
    log = (tmp_path / "run_pipeline.log").read_text()
    assert exit_code == 0, log[-3000:]
    assert_rows_correct(csv_rows(csv_path), events, known_pairs(tmp_path / "models"))
    image = imread(png_path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", ["model", "metric", "plot"])
def test_consumer_killed_and_restarted_mid_stream_loses_and_duplicates_nothing(victim, env, tmp_path: Path):
    events = 1500
    pipeline = Pipeline(env=env, output_dir=tmp_path / "out")
    csv_path = tmp_path / "logs" / "metric_log.csv"
    try:
        assert pipeline.run_to_end("learn_model") == 0
        for service in ("model", "metric", "plot"):
            pipeline.start(service)
        pipeline.start("features", ["--rate", "400", "--count", str(events)])
        for kill_after in (300, 800):
            wait_until(lambda: len(csv_rows(csv_path)) >= kill_after, timeout=60, message=f"{kill_after} rows")
            pipeline.kill(victim, signal.SIGKILL)
            pipeline.start(victim)
        wait_until(lambda: len(csv_rows(csv_path)) >= events, timeout=120, message=f"{events} rows")
        assert pipeline.processes["features"].wait(60) == 0
        wait_until(lambda: plot_has_drawn(tmp_path / "logs", events), timeout=60,
                   message="plot to count every event exactly once")
        assert not {name: code for name, code in pipeline.dead().items() if name != "features"}
    finally:
        pipeline.stop_all()
    assert_rows_correct(csv_rows(csv_path), events, known_pairs(tmp_path / "models"))
