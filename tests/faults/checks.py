"""What the fault suite checks once a scenario's pipeline is quiet: pure functions over its files.

- Every id features recorded as confirmed has exactly one row in `metric_log.csv`, with its y_true,
  a y_pred the model gives for a sample with that y_true, and absolute_error = |y_true - y_pred|.
- Every line of the CSV is a complete row (no half-written line anywhere, the file ends with \\n).
- The PNG decodes, and the drawn histogram (the JSON beside it) counts exactly the CSV's errors.
- Each dead-letter queue holds exactly the malformed messages injected into its queue, each with a
  rejection reason and its source queue.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def check_dead_letters(found: dict[str, list[tuple[bytes, dict]]],
                       expected: dict[str, list[bytes]]) -> tuple[int, list[str]]:
    """found/expected: queue -> messages in (found) or injected into (expected) `<queue>.dlq`."""
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
            if not headers.get(REASON_HEADER):
                problems.append(f"{queue}.dlq: {body[:60]!r} has no {REASON_HEADER}")
            if headers.get(SOURCE_QUEUE_HEADER) != queue:
                problems.append(f"{queue}.dlq: {body[:60]!r} has {SOURCE_QUEUE_HEADER}="
                                f"{headers.get(SOURCE_QUEUE_HEADER)!r}")
    return total, problems


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
