"""features --confirmed-ids-file: the fault suite's record of what the broker confirmed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker import drain
from run_pipeline import ROOT, Pipeline


def test_help_documents_the_option():
    help_text = subprocess.run([sys.executable, "features/src/features.py", "--help"], cwd=ROOT, check=True,
                               capture_output=True, text=True, timeout=60).stdout
    assert "--confirmed-ids-file" in help_text


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_records_each_confirmed_event_once_with_its_target(amqp_url: str, tmp_path: Path):
    path = tmp_path / "confirmed.csv"
    path.write_text("earlier-run,1.0\n")  # appended to, never truncated
    pipeline = Pipeline(env={"AMQP_URL": amqp_url}, output_dir=tmp_path / "out")
    exit_code = pipeline.run_to_end("features", ["--rate", "0", "--count", "300", "--confirmed-ids-file", str(path)],
                                    timeout=90)
    assert exit_code == 0, (tmp_path / "out" / "features.log").read_text()

    lines = path.read_text().splitlines()
    assert lines[0] == "earlier-run,1.0"
    recorded = dict(line.split(",") for line in lines[1:])
    assert len(lines) == 301 and len(recorded) == 300
    targets = {json.loads(body)["id"]: json.loads(body)["body"] for body, _ in drain(amqp_url, "y_true")}
    features = {json.loads(body)["id"] for body, _ in drain(amqp_url, "features")}
    assert features == set(targets) == set(recorded)
    assert all(float(recorded[event_id]) == target for event_id, target in targets.items())
