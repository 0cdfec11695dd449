"""The dashboard's drift view without a broker: drift_summary.json missing, stale and present, the
tail of alerts.jsonl (a torn last line, newest first, the cap of 50, a file cut back), the short
explanations, what the drift service itself writes read back, and GET /api/drift behind the same
Basic auth and security headers as every other route."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from dashboard import Settings as DashboardSettings
from drift_view import RECENT_ALERTS, AlertLogTail, DriftView, explain
from mlmonitor.messages import MonitorAlert, PredictionWithInputs
from mlmonitor.model_store import ModelCard
from mlmonitor.reference import build_reference, numeric_stats
from mlmonitor.schema import FeatureSchema, FeatureSpec
from web import CHALLENGE, SECURITY_HEADERS, BasicAuth, create_app

NOW = datetime(2026, 11, 29, 20, 30, 0, tzinfo=timezone.utc)
USER, PASSWORD = "monitor", "drift-päss"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def clock() -> float:
    return NOW.timestamp()


def numeric_explanation(since_mean: float = 0.071, reference_mean: float = 0.0, std: float = 0.0476) -> dict:
    return {"chart": {"channel": "value", "direction": "up", "k": 0.5, "statistic": 9.1, "threshold": 9.0},
            "since": {"from_event": 301, "events": 214, "mean": since_mean},
            "reference": {"count": 353, "mean": reference_mean, "std": std, "missing_rate": 0.0},
            "recent": {"mean": 0.05}}


def alert(n: int, state: str = "raised", feature: str = "bmi", episode: str | None = None,
          explanation: dict | None = None) -> MonitorAlert:
    return MonitorAlert(episode=episode or f"v1/feature.{feature}/{n}/abcd{n:04d}", kind="feature_drift",
                        feature=feature, state=state, time=iso(NOW - timedelta(seconds=100 - n)), events=300 + n,
                        score=1.02 if state == "raised" else 0.49, threshold=1.0, model_version="v1",
                        detector=f"feature.{feature}",
                        explanation=numeric_explanation() if explanation is None else explanation)


def detector(name: str, feature: str | None, kind: str, score: float, state: str = "normal") -> dict:
    return {"detector": name, "kind": kind, "feature": feature, "stream": "predictions", "score": score,
            "threshold": 1.0, "state": state, "events": 400,
            "history": [[int(NOW.timestamp()) - 2, score / 2], [int(NOW.timestamp()) - 1, score]]}


def summary(updated_at: datetime = NOW, open_alerts: list[MonitorAlert] = (), bmi_score: float = 0.42) -> dict:
    return {"format": 1, "updated_at": iso(updated_at), "model_version": "v1", "false_alarms_per_100k": 1.0,
            "events": {"predictions": 400, "outcomes": 398}, "history_seconds": 1,
            "detectors": [detector("feature.bmi", "bmi", "feature_drift", bmi_score,
                                   "raised" if open_alerts else "normal"),
                          detector("prediction", None, "prediction_drift", 0.1)],
            "open_alerts": [a.model_dump() for a in open_alerts],
            "recent_alerts": [a.model_dump() for a in open_alerts]}


def write_summary(logs_dir: Path, content: dict) -> None:
    logs_dir.mkdir(parents=True, exist_ok=True)
    (logs_dir / "drift_summary.json").write_text(json.dumps(content))


def append_alerts(logs_dir: Path, alerts: list[MonitorAlert], torn: bytes = b"") -> None:
    logs_dir.mkdir(parents=True, exist_ok=True)
    with open(logs_dir / "alerts.jsonl", "ab") as handle:
        handle.write(b"".join(a.encode() + b"\n" for a in alerts) + torn)


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def view(logs_dir: Path) -> DriftView:
    return DriftView(logs_dir, stale_seconds=10, clock=clock)


# ---------------------------------------------------------------- drift_summary.json


def test_without_a_summary_the_view_is_unavailable_and_says_why(view, logs_dir):
    state = view.state()
    assert state["available"] is False and state["stale"] is False
    assert "has not written" in state["reason"] and str(logs_dir / "drift_summary.json") in state["reason"]
    assert state["detectors"] == [] and state["open_alerts"] == [] and state["recent_alerts"] == []


def test_a_fresh_summary_gives_each_detector_with_its_history_and_the_open_alerts(view, logs_dir):
    raised = alert(1)
    write_summary(logs_dir, summary(NOW - timedelta(seconds=1.5), open_alerts=[raised], bmi_score=1.0))
    state = view.state()
    assert state["available"] is True and state["reason"] is None and state["age_seconds"] == 1.5
    assert (state["model_version"], state["events"]) == ("v1", {"predictions": 400, "outcomes": 398})
    bmi, prediction = state["detectors"]
    assert (bmi["kind"], bmi["feature"], bmi["score"], bmi["threshold"], bmi["state"]) == \
        ("feature_drift", "bmi", 1.0, 1.0, "raised")
    assert bmi["history"] == [[int(clock()) - 2, 0.5], [int(clock()) - 1, 1.0]]
    assert (prediction["kind"], prediction["feature"], prediction["state"]) == ("prediction_drift", None, "normal")
    (shown,) = state["open_alerts"]
    assert shown["episode"] == raised.episode and shown["score"] >= shown["threshold"]
    assert shown["why"] == "mean 0.071 since event 301 vs 0 in the reference (+1.49 σ)"


def test_a_summary_older_than_the_limit_is_stale_says_how_old_and_keeps_the_last_figures(view, logs_dir):
    write_summary(logs_dir, summary(NOW - timedelta(seconds=73)))
    state = view.state()
    assert state["available"] is False and state["stale"] is True and state["age_seconds"] == 73
    assert "73 s ago" in state["reason"] and "down or stuck" in state["reason"]
    assert state["model_version"] == "v1"
    assert [d["detector"] for d in state["detectors"]] == ["feature.bmi", "prediction"]


def test_the_summary_is_read_again_when_drift_replaces_it(view, logs_dir):
    write_summary(logs_dir, summary(bmi_score=0.42))
    assert view.state()["detectors"][0]["score"] == 0.42
    write_summary(logs_dir, summary(bmi_score=0.87))
    assert view.state()["detectors"][0]["score"] == 0.87
    (logs_dir / "drift_summary.json").unlink()
    assert view.state()["available"] is False


@pytest.mark.parametrize("content, problem", [
    ("{torn", "can't be read"),
    (json.dumps({"format": 99}), "not a drift summary of format 1"),
    (json.dumps([1, 2]), "not a drift summary"),
])
def test_an_unreadable_summary_is_unavailable_with_the_reason(view, logs_dir, content, problem):
    logs_dir.mkdir()
    (logs_dir / "drift_summary.json").write_text(content)
    state = view.state()
    assert state["available"] is False and problem in state["reason"]


def test_entries_of_the_wrong_type_are_left_out_not_a_failure(view, logs_dir):
    write_summary(logs_dir, {**summary(), "detectors": [detector("feature.bmi", "bmi", "feature_drift", 0.3), "junk"],
                             "open_alerts": "junk"})
    state = view.state()
    assert state["available"] is True
    assert [d["detector"] for d in state["detectors"]] == ["feature.bmi"] and state["open_alerts"] == []


def test_nan_in_the_summary_becomes_null_so_the_api_stays_json(view, logs_dir):
    logs_dir.mkdir()
    text = json.dumps(summary()).replace('"false_alarms_per_100k": 1.0', '"false_alarms_per_100k": NaN')
    (logs_dir / "drift_summary.json").write_text(text)
    state = view.state()
    assert state["false_alarms_per_100k"] is None
    json.dumps(state, allow_nan=False)


# ---------------------------------------------------------------- alerts.jsonl


def test_the_recent_alerts_are_the_last_50_newest_first(view, logs_dir):
    append_alerts(logs_dir, [alert(n, feature=f"f{n}") for n in range(60)])
    recent = view.state()["recent_alerts"]
    assert len(recent) == RECENT_ALERTS == 50
    assert [a["feature"] for a in recent] == [f"f{n}" for n in range(59, 9, -1)]
    assert {"kind", "feature", "state", "time", "events", "score", "threshold", "model_version",
            "explanation", "why"} <= set(recent[0])


def test_a_torn_last_line_waits_for_its_newline(logs_dir):
    tail = AlertLogTail(logs_dir / "alerts.jsonl")
    whole = alert(2, state="resolved", episode=alert(1).episode).encode()
    append_alerts(logs_dir, [alert(1)], torn=whole[:25])
    assert tail.read_new() == 1
    assert [(a.feature, a.state) for a in tail.recent()] == [("bmi", "raised")]
    assert tail.skipped == 0, "the half line is not taken for a bad one"
    with open(logs_dir / "alerts.jsonl", "ab") as handle:
        handle.write(whole[25:] + b"\n")
    assert tail.read_new() == 1
    assert [a.state for a in tail.recent()] == ["resolved", "raised"]
    assert tail.open() == []


def test_a_line_that_is_not_an_alert_is_skipped_and_counted(logs_dir, caplog):
    append_alerts(logs_dir, [alert(1)], torn=b'{"kind": "nonsense"}\n')
    append_alerts(logs_dir, [alert(2, feature="age")])
    tail = AlertLogTail(logs_dir / "alerts.jsonl")
    tail.read_new()
    assert [a.feature for a in tail.recent()] == ["age", "bmi"]
    assert (tail.lines, tail.skipped) == (2, 1)
    assert len([r for r in caplog.records if "not an alert" in r.getMessage()]) == 1


def test_each_line_is_read_once_and_a_file_cut_back_is_read_again(logs_dir):
    tail = AlertLogTail(logs_dir / "alerts.jsonl")
    assert tail.read_new() == 0, "no file yet"
    append_alerts(logs_dir, [alert(1), alert(2, feature="age")])
    assert tail.read_new() == 2 and tail.read_new() == 0
    path = logs_dir / "alerts.jsonl"
    first_line = path.read_bytes().split(b"\n")[0] + b"\n"
    path.write_bytes(first_line)  # drift cuts a failed append back
    assert tail.read_new() == 1
    assert [a.feature for a in tail.recent()] == ["bmi"] and tail.lines == 1


def test_without_a_summary_the_open_alerts_are_the_logs_raises_not_resolved(view, logs_dir):
    bmi, age = alert(1), alert(2, feature="age")
    append_alerts(logs_dir, [bmi, age, alert(3, state="resolved", episode=bmi.episode)])
    state = view.state()
    assert state["available"] is False and state["open_alerts_from"] == "alerts_log"
    assert [a["episode"] for a in state["open_alerts"]] == [age.episode]
    assert [(a["feature"], a["state"]) for a in state["recent_alerts"]] == \
        [("bmi", "resolved"), ("age", "raised"), ("bmi", "raised")]


def test_with_a_summary_the_open_alerts_are_the_summarys(view, logs_dir):
    """The log may hold a raise whose resolve drift never wrote (its state was deleted); the summary
    says what drift has open now."""
    append_alerts(logs_dir, [alert(1, feature="age")])
    write_summary(logs_dir, summary(open_alerts=[]))
    state = view.state()
    assert state["open_alerts"] == [] and state["open_alerts_from"] == "summary"
    assert [a["feature"] for a in state["recent_alerts"]] == ["age"]


# ---------------------------------------------------------------- the short explanation


@pytest.mark.parametrize("kind, fields, expected", [
    ("feature_drift", numeric_explanation(52.5, 50.0, 5.0),
     "mean 52.5 since event 301 vs 50 in the reference (+0.50 σ)"),
    ("performance", numeric_explanation(65.0, 43.0, 33.0),
     "mean error 65 since event 301 vs 43 in the reference (+0.67 σ)"),
    ("feature_drift", {"since": {"from_event": 120, "category": "yes", "frequency": 0.41, "reference_frequency": 0.12},
                       "reference": {"frequencies": {"yes": 0.12}}},
     "'yes': 41.0% of values since event 120 vs 12.0% in the reference"),
    ("target_drift", {"since": {"from_event": 7, "category": "__unseen__", "frequency": 0.2,
                                "reference_frequency": 0.0014}},
     "unseen categories: 20.0% of values since event 7 vs 0.1% in the reference"),
    ("feature_drift", {"since": {"from_event": 40, "missing_rate": 0.35}, "reference": {"missing_rate": 0.0}},
     "35.0% missing since event 40 vs 0.0% in the reference"),
    ("feature_drift", {"reason": "model v2 replaced v1"}, "model v2 replaced v1"),
])
def test_an_alert_is_explained_in_one_short_line(kind, fields, expected):
    assert explain({"kind": kind, "state": "raised", "score": 1.1, "threshold": 1.0, "explanation": fields}) == expected


def test_a_resolve_says_the_score_is_back_to_normal():
    assert explain({"kind": "feature_drift", "state": "resolved", "score": 0.49, "threshold": 1.0,
                    "explanation": numeric_explanation()}) == "back to normal: score 0.49 of threshold 1"


# ---------------------------------------------------------------- what the drift service writes

RNG = np.random.default_rng(7)
AREA = RNG.normal(100, 20, 2000)
TARGET = AREA * 3 + RNG.normal(0, 10, 2000)


def drift_card() -> ModelCard:
    reference = build_reference({"area": ("numeric", AREA)}, target=numeric_stats(TARGET),
                                predictions=numeric_stats(TARGET[:500]), errors=np.abs(RNG.normal(0, 10, 500)))
    return ModelCard(version="v1", trained_at="2026-01-01T00:00:00+00:00", estimator="Ridge", feature_names=["area"],
                     holdout_mae=8.0, holdout_rmse=10.0, holdout_r2=0.9, train_rows=2000, holdout_rows=500,
                     sklearn_version="test", features=FeatureSchema((FeatureSpec("area"),)).to_card(),
                     reference=reference)


def raise_area_alert(monitor) -> MonitorAlert:
    """Feeds `area` shifted by 3 standard deviations until its detector raises."""
    rng = np.random.default_rng(1)
    for start in range(0, 5000, 100):
        batch = [PredictionWithInputs(id=f"id-{start + n}", body=300.0, features={"area": float(value) + 60},
                                      model_version="v1") for n, value in enumerate(rng.choice(AREA, 100))]
        alerts = monitor.take([monitor.observe_prediction(message) for message in batch])
        if alerts:
            assert [(a.detector, a.state) for a in alerts] == [("feature.area", "raised")]
            return alerts[0]
    raise AssertionError("no alert for area after 5000 shifted events")



def test_the_files_the_drift_service_writes_read_back(logs_dir):
    """drift's own monitor, summary and store (drift/src): a shift of `area` raises its alert, and the
    view shows the detector raised, the open alert and the line of alerts.jsonl."""
    from monitor import DriftMonitor, build_detectors, calibration_of
    from state_store import StateStore
    from summary import ScoreHistory, build_summary

    card, calibration = drift_card(), calibration_of(1.0, 1.0)
    monitor = DriftMonitor(card, build_detectors(card, calibration), calibration)
    raised = raise_area_alert(monitor)
    store = StateStore(logs_dir, fsync=False)
    store.load()
    store.save(monitor.to_state(), monitor.take_unsaved_ids(), list(monitor.outbox.values()))
    history = ScoreHistory(300)
    history.sample(monitor.detectors, clock())
    store.write_summary(build_summary(monitor, history, [raised]))

    state = DriftView(logs_dir, clock=lambda: datetime.now(timezone.utc).timestamp()).state()
    assert state["available"] is True
    area = next(d for d in state["detectors"] if d["feature"] == "area")
    assert area["state"] == "raised" and area["score"] >= area["threshold"] and len(area["history"]) == 1
    assert {d["state"] for d in state["detectors"] if d["feature"] != "area"} == {"normal"}
    (shown,) = state["open_alerts"]
    assert (shown["episode"], shown["kind"], shown["feature"]) == (raised.episode, "feature_drift", "area")
    since, reference = raised.explanation["since"], raised.explanation["reference"]
    assert shown["why"].startswith(f"mean {since['mean']:.4g} since event {since['from_event']} vs "
                                   f"{reference['mean']:.4g} in the reference (+")
    assert [(a["episode"], a["state"]) for a in state["recent_alerts"]] == [(raised.episode, "raised")]


# ---------------------------------------------------------------- GET /api/drift


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def app_for(view: DriftView, auth: BasicAuth | None = None) -> TestClient:
    return TestClient(create_app(lambda: {"count": 0}, push_seconds=0.05, auth=auth, drift=view.state))


def test_api_drift_needs_the_credentials_and_carries_the_security_headers(view, logs_dir):
    append_alerts(logs_dir, [alert(1)])
    write_summary(logs_dir, summary(open_alerts=[alert(1)]))
    client = app_for(view, BasicAuth(USER, PASSWORD))
    for headers in ({}, basic(USER, "wrong"), basic("admin", PASSWORD)):
        refused = client.get("/api/drift", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == CHALLENGE
        assert refused.text == "Unauthorized\n"
        assert {name: refused.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    response = client.get("/api/drift", headers=basic(USER, PASSWORD))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    body = response.json()
    assert body["available"] is True and [d["feature"] for d in body["detectors"]] == ["bmi", None]
    assert body["open_alerts"][0]["why"].startswith("mean 0.071") and len(body["recent_alerts"]) == 1


def test_api_drift_without_a_password_and_before_drift_wrote_anything(view):
    response = app_for(view).get("/api/drift")
    assert response.status_code == 200
    body = response.json()
    assert body["available"] is False and "has not written" in body["reason"]


def test_an_app_without_a_drift_view_still_answers_unavailable():
    body = TestClient(create_app(lambda: {"count": 0})).get("/api/drift").json()
    assert body["available"] is False and body["detectors"] == []


def test_the_page_has_the_drift_panel_and_reads_api_drift(view):
    page = app_for(view).get("/").text
    assert 'id="drift-chart"' in page and 'id="open-alerts"' in page and 'id="recent-alerts"' in page
    script = app_for(view).get("/static/dashboard.js").text
    assert 'fetch("/api/drift"' in script and "innerHTML" not in script


def test_the_dashboard_reads_drifts_metrics_and_has_a_staleness_limit(monkeypatch):
    for name in ("UPSTREAM_METRICS", "DRIFT_STALE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = DashboardSettings()
    assert "http://localhost:9105/metrics" in settings.upstream_urls and len(settings.upstream_urls) == 5
    assert settings.drift_stale_seconds == 10

