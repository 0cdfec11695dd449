"""What the fault suite checks once a scenario's pipeline is quiet: pure functions over its files.

- Every id features recorded as confirmed has exactly one row in `metric_log.csv`, with its y_true,
  a y_pred the model gives for a sample with that y_true, and absolute_error = |y_true - y_pred|.
- Every line of the CSV is a complete row (no half-written line anywhere, the file ends with \\n).
- The PNG decodes, and the drawn histogram (the JSON beside it) counts exactly the CSV's errors.
- Each dead-letter queue holds exactly the malformed messages injected into its queue, each with a
  one-line rejection reason (naming the field, where the injection says which) and its source queue.
- drift counted every id that has a row exactly once on each of its streams (its ids log, up to what its
  latest snapshot covers: what drift itself would restore), its detectors took in as many events as
  the log counts, and alerts.jsonl holds well-formed alerts, each episode raised once.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlmonitor.messages import InvalidMessage, MonitorAlert, decode

HEADER = "id,y_true,y_pred,absolute_error"
REASON_HEADER = "x-rejection-reason"
SOURCE_QUEUE_HEADER = "x-source-queue"


def read_confirmed(path: Path) -> dict[str, float]:
    """features' --confirmed-ids-file: id -> y_true. A line cut short by a SIGKILL is not a record."""
    confirmed = {}
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                event_id, y_true = line.rstrip("\n").rsplit(",", 1)
                confirmed[event_id] = float(y_true)
    return confirmed


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class Row:
    id: str
    y_true: float
    y_pred: float
    absolute_error: float


def parse_metric_log(path: Path) -> tuple[list[Row], list[str]]:
    """The rows, and every line that is not a complete, well-formed row (with its line number)."""
    if not path.exists():
        return [], []
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    bad = []
    if lines[-1] != "":
        bad.append(f"line {len(lines)} has no newline (half-written): {lines[-1][:80]!r}")
    lines = lines[:-1]
    if not lines:
        return [], bad
    if lines[0] != HEADER:
        bad.append(f"line 1 is not the header: {lines[0][:80]!r}")
    rows = []
    for number, fields in enumerate(csv.reader(lines[1:]), start=2):
        try:
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} fields")
            row = Row(fields[0], float(fields[1]), float(fields[2]), float(fields[3]))
            if not all(math.isfinite(value) for value in (row.y_true, row.y_pred, row.absolute_error)):
                raise ValueError("not finite")
        except ValueError as error:
            bad.append(f"line {number} is not a row ({error}): {','.join(fields)[:80]!r}")
            continue
        rows.append(row)
    return rows, bad


@dataclass
class RowsVerdict:
    published: int
    rows: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # rows for ids features did not record
    wrong: list[str] = field(default_factory=list)
    malformed_lines: list[str] = field(default_factory=list)


def check_rows(rows: list[Row], malformed_lines: list[str], confirmed: dict[str, float],
               known_pairs: set[tuple[float, float]]) -> RowsVerdict:
    verdict = RowsVerdict(published=len(confirmed), rows=len(rows), malformed_lines=malformed_lines)
    counts = Counter(row.id for row in rows)
    verdict.duplicated = sorted(event_id for event_id, count in counts.items() if count > 1)
    verdict.lost = sorted(set(confirmed) - set(counts))
    verdict.unrecorded = sorted(set(counts) - set(confirmed))
    for row in rows:
        problem = None
        if row.absolute_error != abs(row.y_true - row.y_pred):
            problem = "absolute_error is not |y_true - y_pred|"
        elif row.id in confirmed and row.y_true != confirmed[row.id]:
            problem = f"y_true is not the published {confirmed[row.id]!r}"
        elif (round(row.y_true, 6), round(row.y_pred, 6)) not in known_pairs:
            problem = "y_pred is not the model's prediction for a sample with this y_true"
        if problem:
            verdict.wrong.append(f"{row.id}: {problem} ({row.y_true!r}, {row.y_pred!r}, {row.absolute_error!r})")
    return verdict


def check_plot(logs_dir: Path, rows: list[Row], histogram_factory) -> list[str]:
    """Problems with the PNG and its histogram, compared with a histogram of the CSV's errors."""
    from matplotlib.image import imread

    problems = []
    png = logs_dir / "error_distribution.png"
    try:
        image = imread(png)
        if image.ndim != 3 or min(image.shape[:2]) < 100:
            problems.append(f"{png.name} decodes to an unexpected shape {image.shape}")
    except Exception as error:  # any decoding failure is the finding
        problems.append(f"{png.name} does not decode: {type(error).__name__}: {error}")
    try:
        summary = json.loads((logs_dir / "error_distribution.json").read_text())
    except (OSError, ValueError) as error:
        return problems + [f"error_distribution.json unreadable: {error}"]
    expected = histogram_factory()
    expected.add_many(np.array([row.absolute_error for row in rows], dtype=float))
    if summary["count"] != len(rows):
        problems.append(f"the plot counts {summary['count']} events, the CSV has {len(rows)} rows")
    if summary["counts"] != expected.counts.tolist() or summary["bin_width"] != expected.width:
        problems.append(f"the plot's histogram (width {summary['bin_width']}) differs from the CSV's "
                        f"(width {expected.width}): {summary['counts']} vs {expected.counts.tolist()}")
    return problems


def check_dead_letters(found: dict[str, list[tuple[bytes, dict]]], expected: dict[str, list[bytes]],
                       reasons: dict[bytes, str] | None = None) -> tuple[int, list[str]]:
    """found/expected: queue -> messages in (found) or injected into (expected) `<queue>.dlq`;
    reasons: body -> how its rejection reason must begin (the field it names)."""
    reasons = reasons or {}
    problems = []
    total = 0
    for queue in sorted(set(found) | set(expected)):
        messages = found.get(queue, [])
        total += len(messages)
        bodies = Counter(body for body, _ in messages)
        wanted = Counter(expected.get(queue, []))
        for body in wanted - bodies:
            problems.append(f"{queue}.dlq lacks the malformed {body[:60]!r}")
        for body in bodies - wanted:
            problems.append(f"{queue}.dlq holds a message nobody injected: {body[:100]!r}")
        for body, headers in messages:
            reason = headers.get(REASON_HEADER)
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", errors="replace")
            if not reason:
                problems.append(f"{queue}.dlq: {body[:60]!r} has no {REASON_HEADER}")
            elif "\n" in reason:
                problems.append(f"{queue}.dlq: {body[:60]!r} has a reason of more than one line: {reason[:120]!r}")
            elif body in reasons and not reason.startswith(reasons[body]):
                problems.append(f"{queue}.dlq: {body[:60]!r} has the reason {reason[:120]!r}, expected one "
                                f"beginning {reasons[body]!r}")
            if headers.get(SOURCE_QUEUE_HEADER) != queue:
                problems.append(f"{queue}.dlq: {body[:60]!r} has {SOURCE_QUEUE_HEADER}="
                                f"{headers.get(SOURCE_QUEUE_HEADER)!r}")
    return total, problems


DRIFT_STATE = "drift_state.json"
DRIFT_IDS = "drift_ids.log"
ALERTS = "alerts.jsonl"
DRIFT_STREAMS = {"p": "predictions", "o": "outcomes"}  # the ids log's stream letters
PREDICTION_STREAM_KINDS = ("feature_drift", "prediction_drift")  # the other kinds take the outcomes


@dataclass
class DriftVerdict:
    missed: list[str] = field(default_factory=list)  # "<stream> <id>": a row's id drift did not count
    twice: list[str] = field(default_factory=list)  # "<stream> <id>": counted more than once
    without_row: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in DRIFT_STREAMS.values()})
    problems: list[str] = field(default_factory=list)


def read_drift_counts(logs_dir: Path) -> tuple[dict[str, Counter], dict | None, list[str]]:
    """How often drift counted each id per stream, as its latest snapshot holds it: the ids log up to
    the snapshot's `ids_bytes` (drift cuts the rest at start, as no durable state counts it); the
    snapshot; problems reading them."""
    counts = {stream: Counter() for stream in DRIFT_STREAMS.values()}
    try:
        state = json.loads((logs_dir / DRIFT_STATE).read_text())
        covered = int(state["ids_bytes"])
    except FileNotFoundError:
        return counts, None, [f"drift wrote no {DRIFT_STATE}"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return counts, None, [f"{DRIFT_STATE} unreadable: {type(error).__name__}: {error}"]
    problems = []
    try:
        data = (logs_dir / DRIFT_IDS).read_bytes()
    except FileNotFoundError:
        data = b""
    if len(data) < covered:
        problems.append(f"{DRIFT_IDS} holds {len(data)} bytes, the snapshot counted {covered}")
    data = data[:covered]
    if data and not data.endswith(b"\n"):
        problems.append(f"{DRIFT_IDS} ends in a half line at the snapshot's {covered} bytes")
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        letter, _, event_id = line.partition(" ")
        if letter not in DRIFT_STREAMS or not event_id:
            problems.append(f"{DRIFT_IDS} line {number} is not '<p|o> <id>': {line[:80]!r}")
            continue
        counts[DRIFT_STREAMS[letter]][event_id] += 1
    return counts, state, problems


def check_drift_counts(counts: dict[str, Counter], state: dict | None, row_ids: list[str]) -> DriftVerdict:
    """Each row's id counted exactly once on each stream; every detector took in what its stream counted."""
    verdict = DriftVerdict()
    rows = set(row_ids)
    for stream, counted in counts.items():
        verdict.missed += [f"{stream} {event_id}" for event_id in sorted(rows) if not counted[event_id]]
        verdict.twice += [f"{stream} {event_id}" for event_id, count in sorted(counted.items()) if count > 1]
        verdict.without_row[stream] = sorted(set(counted) - rows)
    for detector in (state or {}).get("detectors", []):
        config = detector.get("config") or detector
        kind, name = config.get("kind"), config.get("name", "?")
        stream = DRIFT_STREAMS["p"] if kind in PREDICTION_STREAM_KINDS else DRIFT_STREAMS["o"]
        logged = sum(counts[stream].values())
        if detector.get("events") != logged:
            verdict.problems.append(f"drift's detector {name} took in {detector.get('events')} events, "
                                    f"its ids log counts {logged} {stream}")
    return verdict


def check_alerts(text: bytes, announced: list[bytes]) -> tuple[list[MonitorAlert], list[str]]:
    """alerts.jsonl (`text`) against what drift announced on monitor_alerts (`announced`, the bodies in
    its recent-alerts queue): every line an alert, each (episode, state) written once, a detector's
    alerts alternating raise and resolve of one episode, the file and the exchange telling the same."""
    alerts, problems = [], []
    if text and not text.endswith(b"\n"):
        problems.append(f"{ALERTS} ends in a half-written line")
    for number, line in enumerate(text.splitlines(), 1):
        try:
            alerts.append(decode(MonitorAlert, line))
        except InvalidMessage as invalid:
            problems.append(f"{ALERTS} line {number} is not an alert ({invalid.reason}): {line[:80]!r}")
    written = Counter((alert.episode, alert.state) for alert in alerts)
    problems += [f"{ALERTS} holds the {state} of episode {episode} {count} times"
                 for (episode, state), count in written.items() if count > 1]
    open_episodes: dict[str, str] = {}  # detector -> its open episode
    seen = set()
    for alert in alerts:
        if (alert.episode, alert.state) in seen:
            continue  # reported above
        seen.add((alert.episode, alert.state))
        opened = open_episodes.get(alert.detector)
        if alert.state == "raised" and opened is not None and opened != alert.episode:
            problems.append(f"{alert.detector} raised {alert.episode} while {opened} was open")
        elif alert.state == "resolved" and opened != alert.episode:
            problems.append(f"{alert.detector} resolved {alert.episode}, which was not open")
        if alert.state == "raised":
            open_episodes[alert.detector] = alert.episode
        elif opened == alert.episode:
            del open_episodes[alert.detector]
    published = set()
    for body in announced:
        try:
            alert = decode(MonitorAlert, body)
        except InvalidMessage as invalid:
            problems.append(f"monitor_alerts carried something that is not an alert ({invalid.reason})")
            continue
        published.add((alert.episode, alert.state))
    problems += [f"{state} of {episode} announced on monitor_alerts but not in {ALERTS}"
                 for episode, state in sorted(published - set(written))]
    problems += [f"{state} of {episode} in {ALERTS} but never announced on monitor_alerts"
                 for episode, state in sorted(set(written) - published)]
    return alerts, problems


# pika logs these, with a traceback, whenever a connection breaks or can't be made: the faults themselves
CONNECTION_ERRORS = ("ConnectionResetError", "ConnectionRefusedError", "ConnectionAbortedError", "BrokenPipeError",
                     "TimeoutError", "pika.exceptions.AMQPConnectionError", "pika.exceptions.StreamLostError",
                     "pika.exceptions.ConnectionClosedByBroker", "pika.exceptions.AMQPHeartbeatTimeout",
                     "pika.exceptions.IncompatibleProtocolError")


def unexpected_tracebacks(output: str) -> list[str]:
    """The exception line of each traceback in a service's output that is not a broken connection."""
    found = []
    lines = output.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            ending = next((later for later in lines[number + 1:] if later and not later[0].isspace()), "")
            if not ending.startswith(CONNECTION_ERRORS):
                found.append(ending or "a traceback without an exception line")
    return found
