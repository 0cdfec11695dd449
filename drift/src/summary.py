"""`logs/drift_summary.json`: the drift service's current state in a small file, for the dashboard
(its drift panel and `GET /api/drift`) and for scripts. Replaced atomically every second; readers
see the old file or the new one, never a mix. Format 1:

    {
      "format": 1,
      "updated_at": "2026-11-29T20:30:01.123+00:00",     # ISO 8601, UTC
      "model_version": "9510ac3a77c0",                   # the version whose reference the detectors use
      "false_alarms_per_100k": 1.0,                      # the calibration, all detectors together
      "events": {"predictions": 4000, "outcomes": 3998}, # ids counted on each stream
      "history_seconds": 1,                              # one history point a second
      "detectors": [
        {"detector": "feature.bmi", "kind": "feature_drift", "feature": "bmi",
         "stream": "predictions",                        # or "outcomes" (target_drift, performance)
         "score": 0.42, "threshold": 1.0,                # it raises when score >= threshold
         "state": "normal",                              # or "raised" while its alert is open
         "events": 4000,                                 # events it has taken in
         "history": [[1764445801, 0.12], ...]},          # [unix seconds, score], oldest first, at most 300
        ...                                              # features in the card's order, then prediction,
      ],                                                 # target, performance
      "open_alerts": [<alert>, ...],                     # raised and not resolved, oldest first
      "recent_alerts": [<alert>, ...]                    # the last 50 announced, raised or resolved, oldest first
    }

An <alert> is a MonitorAlert (mlmonitor.messages), exactly as in `logs/alerts.jsonl`: episode, kind,
feature (null but for feature drift), state, time, events, score, threshold, model_version,
detector, explanation.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Mapping

from detectors import FEATURE_DRIFT, PREDICTION_DRIFT, Detector
from mlmonitor.messages import MonitorAlert
from monitor import OUTCOMES, PREDICTIONS, STREAMS, DriftMonitor, utc_now

SUMMARY_FORMAT = 1
HISTORY_SECONDS = 1


def stream_of(detector: Detector) -> str:
    return PREDICTIONS if detector.kind in (FEATURE_DRIFT, PREDICTION_DRIFT) else OUTCOMES


def score_of(detector: Detector) -> float:
    score = float(detector.score)
    return round(score, 4) if math.isfinite(score) else 0.0


class ScoreHistory:
    """The last `points` scores of each detector, one a second: the dashboard's chart."""

    def __init__(self, points: int):
        self.points = points
        self._series: dict[str, deque[tuple[int, float]]] = {}

    def sample(self, detectors: Iterable[Detector], now: float) -> None:
        second = int(now)
        for detector in detectors:
            series = self._series.setdefault(detector.name, deque(maxlen=self.points))
            if series and series[-1][0] == second:
                series.pop()
            series.append((second, score_of(detector)))

    def series(self, name: str) -> list[list]:
        return [list(point) for point in self._series.get(name, ())]

    def clear(self) -> None:
        self._series.clear()

    def restore(self, summary: Mapping[str, Any], version: str) -> None:
        """The histories of an earlier summary of the same model version (a restart keeps its chart)."""
        if summary.get("format") != SUMMARY_FORMAT or summary.get("model_version") != version:
            return
        for detector in summary.get("detectors", []):
            points = [(int(second), float(score)) for second, score in detector.get("history", [])]
            self._series[detector["detector"]] = deque(points[-self.points:], maxlen=self.points)


def build_summary(monitor: DriftMonitor, history: ScoreHistory, recent_alerts: Iterable[MonitorAlert]) -> dict:
    raised = {alert.detector for alert in monitor.open_alerts.values()}
    return {
        "format": SUMMARY_FORMAT, "updated_at": utc_now(), "model_version": monitor.version,
        "false_alarms_per_100k": monitor.calibration["false_alarms_per_100k"],
        "events": {stream: monitor.events(stream) for stream in STREAMS},
        "history_seconds": HISTORY_SECONDS,
        "detectors": [{"detector": detector.name, "kind": detector.kind, "feature": detector.feature,
                       "stream": stream_of(detector), "score": score_of(detector),
                       "threshold": float(detector.threshold),
                       "state": "raised" if detector.name in raised else "normal", "events": detector.events,
                       "history": history.series(detector.name)}
                      for detector in monitor.detectors],
        "open_alerts": [alert.model_dump() for alert in monitor.open_alerts.values()],
        "recent_alerts": [alert.model_dump() for alert in recent_alerts],
    }
