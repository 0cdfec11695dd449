"""`logs/metric_log.csv`: one row per joined id, header `id,y_true,y_pred,absolute_error`.

Only metric writes it, appending and never truncating; plot and the dashboard read it to restore
their state. A row reaches the disk (fsync) before the messages behind it are acked, and each batch
of rows is one write(2), so a killed writer leaves at most an unfinished last line, which the next
writer removes (its messages were not acked and come back).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

HEADER = ("id", "y_true", "y_pred", "absolute_error")
HEADER_LINE = ",".join(HEADER) + "\n"

log = logging.getLogger("mlmonitor.metric_log")


@dataclass(frozen=True)
class MetricRow:
    id: str
    y_true: float
    y_pred: float
    absolute_error: float

    @classmethod
    def from_pair(cls, id: str, y_true: float, y_pred: float) -> MetricRow:
        return cls(id, y_true, y_pred, abs(y_true - y_pred))


class MetricLogError(RuntimeError):
    pass


def format_rows(rows: Iterable[MetricRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow((row.id, repr(row.y_true), repr(row.y_pred), repr(row.absolute_error)))
    return buffer.getvalue()


def read_rows(path: Path) -> Iterator[MetricRow]:
    """Yields the complete rows of the log; a missing file has none, an unfinished last line is skipped."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        header = handle.readline()
        if not header:
            return
        _check_header(path, header)
        yield from _parse(path, _complete_lines(handle), first_line_number=2)


def _check_header(path: Path, header: str) -> None:
    if header != HEADER_LINE:
        raise MetricLogError(f"{path} starts with {header.strip()!r}, expected {HEADER_LINE.strip()!r}")


def _parse(path: Path, lines: Iterable[str], first_line_number: int) -> Iterator[MetricRow]:
    for line_number, fields in enumerate(csv.reader(lines), start=first_line_number):
        try:
            row = MetricRow(fields[0], float(fields[1]), float(fields[2]), float(fields[3]))
        except (IndexError, ValueError):
            log.warning("%s:%d is not a metric row; skipped: %r", path, line_number, fields)
            continue
        if math.isfinite(row.absolute_error):
            yield row


class MetricLogTail:
    """Follows the log as it grows: each `read_new()` yields the complete rows added since the
    previous call (the first call yields them all), so a reader can catch up in O(new rows).

    A log that shrank or was replaced is read again from its start; the caller drops the ids it
    has already seen. Read the generator to its end: the position advances as rows are yielded.
    """

    CHUNK_BYTES = 1 << 20

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._lines_read = 0
        self._identity: tuple[int, int] | None = None

    def read_new(self) -> Iterator[MetricRow]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            self._offset = self._lines_read = 0
            return
        with handle:
            status = os.fstat(handle.fileno())
            if (status.st_dev, status.st_ino) != self._identity or status.st_size < self._offset:
                self._identity = (status.st_dev, status.st_ino)
                self._offset = self._lines_read = 0
            handle.seek(self._offset)
            pending = b""
            for chunk in iter(lambda: handle.read(self.CHUNK_BYTES), b""):
                pending += chunk
                end = pending.rfind(b"\n") + 1
                if end:
                    complete, pending = pending[:end], pending[end:]
                    yield from self._rows_of(complete)

    def _rows_of(self, complete: bytes) -> Iterator[MetricRow]:
        lines = [line + "\n" for line in complete.decode("utf-8", errors="replace").split("\n")[:-1]]
        first_line_number = self._lines_read + 1
        if first_line_number == 1:
            _check_header(self.path, lines[0])
        yield from _parse(self.path, lines[1:] if first_line_number == 1 else lines, max(first_line_number, 2))
        self._offset += len(complete)
        self._lines_read += len(lines)


def _complete_lines(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if not line.endswith("\n"):
            return  # being written right now, or left unfinished by a killed writer
        yield line


class MetricLogWriter:
    """Appends rows, at most one per id, and makes them durable before returning.

    With `durable=False`, `append` only writes; `sync()`, which may run on another thread, then
    makes everything written before it durable at once (group commit), and `roll_back` takes back
    rows whose sync failed.
    """

    def __init__(self, path: Path, fsync: bool = True):
        self.path = Path(path)
        self._fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_unfinished_last_line()
        self.written_ids: set[str] = {row.id for row in read_rows(self.path)}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self._fd).st_size  # bytes written so far; only this writer appends
        if self.size == 0:
            self._write(HEADER_LINE.encode())

    def append(self, rows: Iterable[MetricRow], durable: bool = True) -> list[MetricRow]:
        """Writes the rows whose id is new and returns them; rows for ids already written are skipped."""
        fresh: list[MetricRow] = []
        for row in rows:
            if row.id not in self.written_ids:
                self.written_ids.add(row.id)
                fresh.append(row)
        if fresh:
            size_before = self.size
            try:
                self._write(format_rows(fresh).encode(), sync=durable)
            except OSError:
                # e.g. a full disk: take back any part of the batch, so no half row stays behind
                self.roll_back(size_before, [row.id for row in fresh])
                raise
        return fresh

    def sync(self) -> int:
        """Makes every row written so far durable and returns the size that is; safe on another thread."""
        size = self.size
        if self._fsync:
            os.fsync(self._fd)
        return size

    def roll_back(self, size: int, ids: Iterable[str]) -> None:
        """Cuts the log back to `size` bytes and forgets `ids`, the rows written past it."""
        os.ftruncate(self._fd, size)
        self.size = size
        self.written_ids.difference_update(ids)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self, data: bytes, sync: bool = True) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self.size += written
            view = view[written:]
        if sync and self._fsync:
            os.fsync(self._fd)

    def _remove_unfinished_last_line(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "rb+") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep = self._end_of_last_complete_line(handle, size)
            log.warning("%s ends with an unfinished row (%d bytes); removing it, its messages come back",
                        self.path, size - keep)
            handle.truncate(keep)

    @staticmethod
    def _end_of_last_complete_line(handle, size: int, chunk: int = 65536) -> int:
        """Offset just past the last newline, searching backwards chunk by chunk; 0 if there is none."""
        end = size
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            cut = handle.read(end - start).rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            end = start
        return 0
