"""The drift service's files in the logs folder, and how each is made durable.

- `drift_state.json`: the latest snapshot (DriftMonitor.to_state plus `ids_bytes`), replaced
  atomically (temporary file, fsync, rename, fsync of the folder).
- `drift_ids.log`: the ids counted, one line `<stream letter> <id>` each (p: predictions,
  o: outcomes), appended and fsynced before the snapshot that counts them is written. The snapshot
  records the log's size then; at start the log is cut back to it, since ids past it belong to
  events whose effect no durable snapshot holds (they were not acked, so they come back).
- `alerts.jsonl`: one MonitorAlert per line, appended and fsynced after the snapshot that decided
  it; a line already in the file (by episode and state) is never written again.

`save` runs on one thread at a time (the service's snapshot thread): a failed write leaves each file
as it was before the call, and the ids not written are kept for the next call.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from mlmonitor.files import write_atomically
from mlmonitor.ids import IdSet, split_key, uuid_key
from mlmonitor.messages import InvalidMessage, MonitorAlert, decode
from monitor import OUTCOMES, PREDICTIONS, STREAMS, AlertKey, alert_key

log = logging.getLogger("drift")

STATE_NAME = "drift_state.json"
IDS_NAME = "drift_ids.log"
ALERTS_NAME = "alerts.jsonl"
SUMMARY_NAME = "drift_summary.json"
STREAM_LETTERS = {PREDICTIONS: "p", OUTCOMES: "o"}
STREAM_OF_LETTER = {letter: stream for stream, letter in STREAM_LETTERS.items()}


class StateStore:
    def __init__(self, logs_dir: Path, fsync: bool = True):
        self.logs_dir = Path(logs_dir)
        self.state_path = self.logs_dir / STATE_NAME
        self.ids_path = self.logs_dir / IDS_NAME
        self.alerts_path = self.logs_dir / ALERTS_NAME
        self.summary_path = self.logs_dir / SUMMARY_NAME
        self._fsync = fsync
        self._ids_bytes = 0  # how much of the ids log the latest snapshot covers
        self._unwritten_ids: list[tuple[str, str]] = []
        self._written_alerts: set[AlertKey] = set()
        self.alerts_at_start: list[MonitorAlert] = []  # the file's alerts when it was loaded

    # --- at start ------------------------------------------------------------------------------------

    def load(self) -> tuple[dict | None, dict[str, IdSet], str | None]:
        """(the latest snapshot or None, the ids it counted per stream, why there is no snapshot).
        Cuts the ids log back to what the snapshot covers, and reads which alerts are written."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._read_alerts()
        state, problem = self._read_state()
        self._ids_bytes = int(state.get("ids_bytes", 0)) if state else 0
        return state, self._read_ids(), problem

    def _read_state(self) -> tuple[dict | None, str | None]:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None, f"no {self.state_path}"
        except (OSError, ValueError) as error:
            return None, f"{self.state_path} can't be read ({type(error).__name__}: {error})"
        if not isinstance(state, dict):
            return None, f"{self.state_path} is not a snapshot"
        return state, None

    def _read_ids(self) -> dict[str, IdSet]:
        try:
            with open(self.ids_path, "r+b") as handle:
                data = handle.read(self._ids_bytes)
                handle.truncate(len(data))  # ids of events no snapshot holds: they come back
        except FileNotFoundError:
            data = b""
        if len(data) < self._ids_bytes:  # the disk lost what it had acknowledged
            log.warning("%s holds %d bytes, the snapshot counted %d: ids past them may be counted twice",
                        self.ids_path, len(data), self._ids_bytes)
            self._ids_bytes = len(data)
        return parse_ids(data)

    def _read_alerts(self) -> None:
        try:
            lines = self.alerts_path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            try:
                alert = decode(MonitorAlert, line)
            except InvalidMessage as invalid:
                log.warning("%s line %d is not an alert (%s); skipped", self.alerts_path, number, invalid.reason)
                continue
            self._written_alerts.add(alert_key(alert))
            self.alerts_at_start.append(alert)

    # --- each snapshot -------------------------------------------------------------------------------

    def save(self, state: dict, new_ids: list[tuple[str, str]], alerts: Iterable[MonitorAlert]) -> None:
        """Makes the snapshot durable: the new ids, then the state, then the alerts not yet written.
        Raises OSError when a write or an fsync fails; the next call writes what is still missing."""
        self._unwritten_ids += new_ids
        if self._unwritten_ids:
            text = "".join(f"{STREAM_LETTERS[stream]} {id}\n" for stream, id in self._unwritten_ids)
            self._ids_bytes = self._append(self.ids_path, self._ids_bytes, text.encode())
            self._unwritten_ids = []
        write_atomically(self.state_path, json.dumps({**state, "ids_bytes": self._ids_bytes}).encode(), self._fsync)
        unwritten = [alert for alert in alerts if alert_key(alert) not in self._written_alerts]
        if unwritten:
            size = self.alerts_path.stat().st_size if self.alerts_path.exists() else 0
            self._append(self.alerts_path, size, b"".join(alert.encode() + b"\n" for alert in unwritten))
            self._written_alerts.update(map(alert_key, unwritten))

    def _append(self, path: Path, size: int, data: bytes) -> int:
        """Writes `data` at byte `size` of `path` and fsyncs; on a failure cuts the file back to `size`.
        Returns the new size."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            try:
                os.ftruncate(descriptor, size)  # whatever a failed call left past the durable end
                view, offset = memoryview(data), size
                while view:
                    written = os.pwrite(descriptor, view, offset)
                    view, offset = view[written:], offset + written
                if self._fsync:
                    os.fsync(descriptor)
            except OSError:
                try:
                    os.ftruncate(descriptor, size)
                except OSError:
                    pass  # the next call cuts it back first
                raise
        finally:
            os.close(descriptor)
        return size + len(data)

    def read_summary(self) -> dict | None:
        try:
            summary = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def write_summary(self, summary: dict) -> None:
        """The dashboard's file: replaced atomically, not fsynced (it is rebuilt every second)."""
        write_atomically(self.summary_path, json.dumps(summary).encode(), fsync=False)


def parse_ids(data: bytes) -> dict[str, IdSet]:
    """The ids log's lines as a set per stream; UUIDs go into the set's arrays in one go."""
    keys: dict[str, list[int]] = {stream: [] for stream in STREAMS}
    others: dict[str, list[str]] = {stream: [] for stream in STREAMS}
    for line in data.decode("utf-8", errors="replace").splitlines():
        letter, _, id = line.partition(" ")
        stream = STREAM_OF_LETTER.get(letter)
        if stream is None or not id:
            continue
        key = uuid_key(id)
        if key is None:
            others[stream].append(id)
        else:
            keys[stream].append(key)
    return {stream: id_set_of(keys[stream], others[stream]) for stream in STREAMS}


def id_set_of(keys: list[int], others: list[str]) -> IdSet:
    if not keys:
        return IdSet(others)
    halves = np.array([split_key(key) for key in keys], dtype=np.uint64)
    halves = np.unique(halves, axis=0)  # distinct, as IdSet.from_keys needs
    return IdSet.from_keys(halves[:, 0], halves[:, 1], others)
