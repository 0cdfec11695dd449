"""What the drift service reports, for the drift panel and GET /api/drift.

Two files of the logs folder, both only read:
- `drift_summary.json`: the detectors' scores, thresholds, states and score histories, and the open
  alerts; drift replaces it atomically every second (format: drift/src/summary.py). Read again
  whenever it changes, like the model card. Older than `stale_seconds`, it no longer says what
  drift sees now (drift is down, or stuck), and the view says how old it is.
- `alerts.jsonl`: one MonitorAlert per line, appended by drift. Followed from where it was last
  read, so each line is parsed once and memory stays flat: the last RECENT_ALERTS alerts, and the
  raises not yet resolved. A torn last line (an append under way) waits for its newline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from mlmonitor.files import file_signature
from mlmonitor.messages import InvalidMessage, MonitorAlert, decode

log = logging.getLogger("dashboard.drift")

SUMMARY_NAME = "drift_summary.json"
ALERTS_NAME = "alerts.jsonl"
SUMMARY_FORMAT = 1
RECENT_ALERTS = 50
READ_CHUNK = 1 << 20
# what an explanation's category channel stands for (drift/src/detectors.py)
CHANNEL_NAMES = {"__other__": "other categories", "__unseen__": "unseen categories", "__missing__": "missing values"}
MEAN_OF = {"feature_drift": "mean", "prediction_drift": "mean prediction", "target_drift": "mean target",
           "performance": "mean error"}




class SummaryWatcher:
    """drift_summary.json, read again whenever the file changes: (the summary or None, why not)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: tuple | None = ()
        self._read: tuple[dict | None, str | None] = (None, None)

    def current(self) -> tuple[dict | None, str | None]:
        stamp = file_signature(self.path)
        if stamp != self._stamp:
            self._stamp, self._read = stamp, self._load(stamp)
        return self._read

    def _load(self, stamp: tuple | None) -> tuple[dict | None, str | None]:
        if stamp is None:
            return None, f"the drift service has not written {self.path} yet (is it running?)"
        try:
            summary = json.loads(self.path.read_bytes(), parse_constant=lambda _: None)  # NaN: JSON has no such value
        except (OSError, ValueError) as error:
            return None, f"{self.path} can't be read ({type(error).__name__}: {error})"
        if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT:
            found = summary.get("format") if isinstance(summary, dict) else type(summary).__name__
            return None, f"{self.path} is not a drift summary of format {SUMMARY_FORMAT} (found {found!r})"
        return summary, None


class AlertLogTail:
    """Follows alerts.jsonl: the last `keep` alerts and the raises not yet resolved. A file that was
    replaced or cut shorter (drift cuts back a failed append) is read again from its start."""

    def __init__(self, path: Path, keep: int = RECENT_ALERTS):
        self.path = Path(path)
        self._keep = keep
        self._reset(inode=None)

    def _reset(self, inode: int | None) -> None:
        self._inode = inode
        self._offset = 0  # bytes taken in: complete lines only
        self._recent: deque[MonitorAlert] = deque(maxlen=self._keep)
        self._open: dict[str, MonitorAlert] = {}  # episode -> its raise
        self.lines = 0
        self.skipped = 0

    def read_new(self) -> int:
        """Takes in the complete lines appended since the last call; returns how many."""
        try:
            status = self.path.stat()
        except FileNotFoundError:
            if self._inode is not None:
                self._reset(inode=None)
            return 0
        if status.st_ino != self._inode or status.st_size < self._offset:
            self._reset(status.st_ino)
        if status.st_size == self._offset:
            return 0
        before = self.lines + self.skipped
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            pending = b""
            while chunk := handle.read(READ_CHUNK):
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    self._take(line)
                    self._offset += len(line) + 1
        return self.lines + self.skipped - before

    def _take(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            alert = decode(MonitorAlert, line)
        except InvalidMessage as invalid:
            self.skipped += 1
            log.warning("%s: a line that is not an alert, skipped (%s)", self.path, invalid.reason)
            return
        self.lines += 1
        self._recent.append(alert)
        if alert.state == "raised":
            self._open[alert.episode] = alert
        else:
            self._open.pop(alert.episode, None)

    def recent(self) -> list[MonitorAlert]:
        """Newest first."""
        return list(reversed(self._recent))

    def open(self) -> list[MonitorAlert]:
        """Raised and not resolved, oldest first."""
        return list(self._open.values())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _share(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.1%}"


def explain(alert: dict) -> str:
    """An alert's explanation in one short line: the values that raised it against the reference."""
    explanation = alert.get("explanation") or {}
    if explanation.get("reason"):
        return str(explanation["reason"])
    score, threshold = _number(alert.get("score")), _number(alert.get("threshold"))
    if alert.get("state") == "resolved" and score is not None and threshold is not None:
        return f"back to normal: score {score:.2f} of threshold {threshold:g}"
    since = explanation.get("since") or {}
    reference = explanation.get("reference") or {}
    start = f"since event {since['from_event']}" if since.get("from_event") is not None else "recently"
    mean, reference_mean = _number(since.get("mean")), _number(reference.get("mean"))
    std = _number(reference.get("std"))
    if mean is not None and reference_mean is not None:
        mean_of = MEAN_OF.get(alert.get("kind"), "mean")
        text = f"{mean_of} {mean:.4g} {start} vs {reference_mean:.4g} in the reference"
        if std:
            text += f" ({(mean - reference_mean) / std:+.2f} σ)"
        return text
    if since.get("category") is not None:
        category = str(since["category"])
        named = CHANNEL_NAMES.get(category, repr(category))
        return (f"{named}: {_share(since.get('frequency'))} of values {start} vs "
                f"{_share(since.get('reference_frequency'))} in the reference")
    if "missing_rate" in since:
        return (f"{_share(since.get('missing_rate'))} missing {start} vs "
                f"{_share(reference.get('missing_rate'))} in the reference")
    if score is not None and threshold is not None:
        return f"score {score:.2f} of threshold {threshold:g}"
    return ""


def shown_alert(alert: MonitorAlert | dict) -> dict:
    fields = alert.model_dump() if isinstance(alert, MonitorAlert) else dict(alert)
    return {**fields, "why": explain(fields)}


def _dicts(items: Any) -> list[dict]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def unix_time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


class DriftView:
    """GET /api/drift: the summary's detectors and open alerts, the alert log's recent alerts (newest
    first), and `available: false` with the reason while there is no fresh summary. Called from the
    web thread; the lock keeps it to one reader at a time."""

    def __init__(self, logs_dir: Path, stale_seconds: float = 10.0, clock: Callable[[], float] = time.time):
        self._summary = SummaryWatcher(Path(logs_dir) / SUMMARY_NAME)
        self._alerts = AlertLogTail(Path(logs_dir) / ALERTS_NAME)
        self._stale_seconds = stale_seconds
        self._clock = clock
        self._lock = threading.Lock()

    def state(self) -> dict:
        with self._lock:
            summary, problem = self._summary.current()
            self._alerts.read_new()
            recent = [shown_alert(alert) for alert in self._alerts.recent()]
            open_in_log = [shown_alert(alert) for alert in self._alerts.open()]
            alerts_log = {"path": str(self._alerts.path), "lines": self._alerts.lines, "skipped": self._alerts.skipped}
        state = {"available": False, "reason": problem, "stale": False, "age_seconds": None, "updated_at": None,
                 "model_version": None, "false_alarms_per_100k": None, "events": None, "history_seconds": None,
                 "detectors": [], "open_alerts": open_in_log, "open_alerts_from": "alerts_log",
                 "recent_alerts": recent, "alerts_log": alerts_log}
        if summary is None:
            return state
        age = self._age(summary)
        stale = age is not None and age > self._stale_seconds
        state.update({key: summary.get(key) for key in ("updated_at", "model_version", "false_alarms_per_100k",
                                                         "events", "history_seconds")})
        state.update({
            "available": not stale, "stale": stale, "age_seconds": None if age is None else round(age, 1),
            "reason": (f"{self._summary.path} was last written {age:.0f} s ago (more than {self._stale_seconds:g} s):"
                       " the drift service is down or stuck; its detectors and open alerts are as it last wrote them"
                       if stale else None),
            "detectors": [self._detector(detector) for detector in _dicts(summary.get("detectors"))],
            "open_alerts": [shown_alert(alert) for alert in _dicts(summary.get("open_alerts"))],
            "open_alerts_from": "summary",
        })
        return state

    def _age(self, summary: dict) -> float | None:
        written = unix_time(summary.get("updated_at"))
        if written is None:
            try:
                written = os.stat(self._summary.path).st_mtime
            except FileNotFoundError:
                return None
        return max(0.0, self._clock() - written)

    @staticmethod
    def _detector(detector: dict) -> dict:
        keys = ("detector", "kind", "feature", "stream", "score", "threshold", "state", "events", "history")
        return {key: detector.get(key) for key in keys}
