"""`logs/metric_log.csv`: one row per joined id, header `id,y_true,y_pred,absolute_error`.

A regressor's row holds numbers (`repr` of floats); a classifier's holds the labels as
`mlmonitor.tasks.label_key` strings and 1 − p(true class) as its error. Reading gives a field back
as a float where it is a number, else as the label text, so a label's `label_key` survives the
round trip ("yes" stays "yes"; "1" reads as 1.0, whose key is "1"; see _value_of for the limits).

With K metric partitions each writes a shard of its own, `logs/metric_log-<I>.csv`, in the same
format (metric_log_shards lists them all). Only metric writes a log, appending and never truncating,
and only while it holds the log's ShardLock; plot and the dashboard read every shard to restore
their state. A row reaches the disk (fsync) before the messages behind it are acked, and each batch
of rows is one write(2), so a killed writer leaves at most an unfinished last line, which the next
writer removes (its messages were not acked and come back).
"""

from __future__ import annotations

import csv
import ctypes
import fcntl
import io
import logging
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, Protocol, TypeVar

import numpy as np

from .ids import IdSet, split_key, uuid_key
from .partitions import SHARD_PATTERN, UNPARTITIONED_LOG

HEADER = ("id", "y_true", "y_pred", "absolute_error")
HEADER_LINE = ",".join(HEADER) + "\n"

log = logging.getLogger("mlmonitor.metric_log")


@dataclass(frozen=True)
class MetricRow:
    id: str
    y_true: float | str  # a class label is a str
    y_pred: float | str
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
        writer.writerow((row.id, _text_of(row.y_true), _text_of(row.y_pred), repr(row.absolute_error)))
    return buffer.getvalue()


def _text_of(value: float | str) -> str:
    return value if isinstance(value, str) else repr(value)


def _value_of(text: str) -> float | str:
    """The field as a float where it is a number, else the label itself. Without '.' or 'e' a field
    is a number only as label_key writes one ("1", "-3"), so labels such as "01", "+1" or "1_000"
    keep their text. A decimal-looking label ("2.0", "1.50") reads as its number: the log can't tell
    it from a regressor's value, and checking each float's repr would slow full reads by a third."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text  # "nan", "inf": metric writes no such number, so they are labels
    if "." in text or "e" in text:
        return number
    return number if text == str(int(number)) else text


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


def read_ids_and_errors(paths: Path | Iterable[Path], errors: bool = True) -> tuple[IdSet, np.ndarray]:
    """The distinct ids of the log's complete rows (of every log given, e.g. all the shards) and, if
    asked, the absolute error of each id's first row: what metric and plot restore at start, in about
    a tenth of the time of read_rows.

    Blocks of rows as this module writes them (`<canonical UUID>,<field>,<field>,<float>`, where
    y_true and y_pred are numbers or labels without quotes) are parsed with numpy; any other block
    (quoted fields, non-UUID ids, a malformed line) goes through read_rows' parser, with the same
    warnings. The fast path only needs the ids and the errors: it checks that y_true and y_pred
    are there, as read_rows does, but does not parse them.
    """
    highs, lows, error_blocks, others = [], [], [], {}
    for path in [paths] if isinstance(paths, Path) else paths:
        for parsed in _parsed_blocks(Path(path), errors, others):
            highs.append(parsed[0])
            lows.append(parsed[1])
            error_blocks.append(parsed[2])
    high = np.concatenate(highs or [np.empty(0, np.uint64)])
    low = np.concatenate(lows or [np.empty(0, np.uint64)])
    key_errors = np.concatenate(error_blocks or [np.empty(0)]) if errors else None
    del highs, lows, error_blocks
    first = _first_occurrences(high, low)
    if first is not None:  # some id has more than one row: keep its first
        high, low = high[first], low[first]
        key_errors = key_errors[first] if errors else None
    ids = IdSet.from_keys(high, low, others)
    del high, low
    if errors:
        key_errors = np.concatenate([key_errors, np.fromiter(others.values(), dtype=float, count=len(others))])
    release_free_memory()
    return ids, key_errors if errors else np.empty(0)


def _parsed_blocks(path: Path, errors: bool, others: dict[str, float]
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        header = handle.readline()
        if not header:
            return
        _check_header(path, header.decode("utf-8", errors="replace"))
        line_number, pending = 2, b""
        for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
            pending += block
            end = pending.rfind(b"\n") + 1
            if not end:
                continue
            complete, pending = pending[:end], pending[end:]  # an unfinished last line stays out
            parsed = _parse_uuid_block(complete, errors)
            if parsed is None:
                parsed = _parse_block_slowly(path, complete, line_number, others)
            yield parsed
            line_number += complete.count(b"\n")


def metric_log_shards(logs_dir: Path) -> list[Path]:
    """Every metric log in the folder: `metric_log.csv` (unpartitioned) and each partition's
    `metric_log-<I>.csv`, in partition order; what plot and the dashboard restore from."""
    logs_dir = Path(logs_dir)
    numbered = []
    if logs_dir.is_dir():
        numbered = sorted((int(match.group(1)), path) for path in logs_dir.iterdir()
                          if (match := SHARD_PATTERN.fullmatch(path.name)))
    unpartitioned = logs_dir / UNPARTITIONED_LOG
    return ([unpartitioned] if unpartitioned.exists() else []) + [path for _, path in numbered]


_BLOCK_BYTES = 4 << 20
# bytes the csv module gives a meaning to beyond ',' and '\n' (and NUL, which it refuses): a block with
# any of them goes the slow way, so the fast path's fields are exactly csv's
_SLOW_PATH_BYTES = (b'"', b"\r", b"\0")
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_DASHES = (8, 13, 18, 23)


def _parse_uuid_block(block: bytes, with_errors: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(high, low, errors) of a block of complete lines `<canonical UUID>,<field>,<field>,<num>`; None
    if any line differs from that shape."""
    if any(special in block for special in _SLOW_PATH_BYTES):
        return None
    data = np.frombuffer(block, dtype=np.uint8)
    line_ends = np.flatnonzero(data == ord("\n"))
    commas = np.flatnonzero(data == ord(","))
    if len(commas) != 3 * len(line_ends):
        return None
    starts = np.concatenate([[0], line_ends[:-1] + 1])
    commas = commas.reshape(-1, 3)
    if not (np.all(commas[:, 0] - starts == 36) and np.all(commas[:, 1] - commas[:, 0] > 1)
            and np.all(commas[:, 2] - commas[:, 1] > 1) and np.all(line_ends - commas[:, 2] > 1)):
        return None  # each line: a 36-character id, then three non-empty fields
    high = np.zeros(len(starts), dtype=np.uint64)
    low = np.zeros(len(starts), dtype=np.uint64)
    digit = 0
    for column in range(36):
        characters = data[starts + column]
        if column in _DASHES:
            if np.any(characters != ord("-")):
                return None
            continue
        values = _HEX_VALUE[characters]
        if np.any(values == 255):
            return None
        half = high if digit < 16 else low
        half <<= np.uint64(4)
        half |= values
        digit += 1
    if not with_errors:
        return high, low, np.empty(0)
    try:
        errors = np.array([float(block[start:end]) for start, end in zip((commas[:, 2] + 1).tolist(),
                                                                          line_ends.tolist())])
    except ValueError:
        return None
    finite = np.isfinite(errors)
    if not finite.all():
        return None  # read_rows skips such rows; let it
    return high, low, errors


def _lines_of(block: bytes) -> list[str]:
    """The lines of a block of complete lines, each with its newline."""
    return [line + "\n" for line in block.decode("utf-8", errors="replace").split("\n")[:-1]]


def _parse_block_slowly(path: Path, block: bytes, first_line_number: int,
                        others: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    high, low, errors = [], [], []
    for row in _parse(path, _lines_of(block), first_line_number):
        key = uuid_key(row.id)
        if key is None:
            others.setdefault(row.id, row.absolute_error)
        else:
            key_high, key_low = split_key(key)
            high.append(key_high)
            low.append(key_low)
            errors.append(row.absolute_error)
    return np.array(high, dtype=np.uint64), np.array(low, dtype=np.uint64), np.array(errors, dtype=float)


def _first_occurrences(high: np.ndarray, low: np.ndarray) -> np.ndarray | None:
    """Indices of the first row of each distinct (high, low) key, in order; None if all are distinct."""
    sorted_high = np.sort(high)
    if not np.any(sorted_high[1:] == sorted_high[:-1]):
        return None  # the usual case: not even 64 bits repeat
    del sorted_high
    order = np.lexsort((np.arange(len(high)), low, high))
    same = (high[order][1:] == high[order][:-1]) & (low[order][1:] == low[order][:-1])
    return np.sort(order[np.concatenate([[True], ~same])])


def release_free_memory() -> None:
    """Hands memory freed by big temporaries back to the OS (glibc keeps it otherwise): after
    restoring a million rows, plot's RSS drops by ~60 MB. A no-op where malloc_trim is missing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _check_header(path: Path, header: str) -> None:
    if header != HEADER_LINE:
        raise MetricLogError(f"{path} starts with {header.strip()!r}, expected {HEADER_LINE.strip()!r}")


def _row_of(fields: list[str]) -> MetricRow | None:
    try:
        if not (fields[1] and fields[2]):
            return None
        return MetricRow(fields[0], _value_of(fields[1]), _value_of(fields[2]), float(fields[3]))
    except (IndexError, ValueError):
        return None


def _parse(path: Path, lines: Iterable[str], first_line_number: int) -> Iterator[MetricRow]:
    for line_number, fields in enumerate(csv.reader(lines), start=first_line_number):
        row = _row_of(fields)
        if row is None:
            log.warning("%s:%d is not a metric row; skipped: %r", path, line_number, fields)
            continue
        if math.isfinite(row.absolute_error):
            yield row


def read_last_rows(path: Path, count: int, bytes_per_row: int = 160) -> dict[str, MetricRow]:
    """The rows among the log's last `count` complete lines, by id, read from its end only: back
    `bytes_per_row` per line at first, further back while that held fewer lines (long ids or labels).
    Lines that are not rows are skipped without a warning."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return {}
    with handle:
        size = handle.seek(0, 2)
        window = max(1, count) * bytes_per_row
        while True:
            start = max(0, size - window)
            handle.seek(start)
            lines = handle.read(size - start).split(b"\n")
            if start == 0 or len(lines) - 2 >= count:
                break
            window *= 2
    # the first line may be cut (or is the header), the last is unfinished or empty
    complete = [line.decode("utf-8", errors="replace") for line in lines[1:-1][-count:]] if count > 0 else []
    rows = (_row_of(fields) for fields in csv.reader(complete))
    return {row.id: row for row in rows if row is not None}


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

    def restarted(self) -> MetricLogTail:
        """A tail of the same log that reads it again from its start."""
        return MetricLogTail(self.path)

    def _rows_of(self, complete: bytes) -> Iterator[MetricRow]:
        lines = _lines_of(complete)
        first_line_number = self._lines_read + 1
        if first_line_number == 1:
            _check_header(self.path, lines[0])
        yield from _parse(self.path, lines[1:] if first_line_number == 1 else lines, max(first_line_number, 2))
        self._offset += len(complete)
        self._lines_read += len(lines)


class ShardedMetricLogTail:
    """MetricLogTail over every shard of a logs folder (metric_log_shards), new shards included as
    they appear: `read_new()` yields each shard's rows added since the previous call."""

    def __init__(self, logs_dir: Path):
        self.logs_dir = Path(logs_dir)
        self.path = self.logs_dir / "metric_log*.csv"  # for log lines
        self._tails: dict[Path, MetricLogTail] = {}

    def read_new(self) -> Iterator[MetricRow]:
        for path in metric_log_shards(self.logs_dir):
            tail = self._tails.get(path)
            if tail is None:
                tail = self._tails[path] = MetricLogTail(path)
            yield from tail.read_new()

    def restarted(self) -> ShardedMetricLogTail:
        return ShardedMetricLogTail(self.logs_dir)


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
        self.written_ids, _ = read_ids_and_errors(self.path, errors=False)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self._fd).st_size  # bytes written so far; only this writer appends
        if self.size == 0:
            self._write(HEADER_LINE.encode())

    def append(self, rows: Iterable[MetricRow], durable: bool = True) -> list[MetricRow]:
        """Writes the rows whose id is new and returns them; rows for ids already written are skipped."""
        fresh: list[MetricRow] = []
        for row in rows:
            if self.written_ids.add_if_new(row.id):
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


class Logged(Protocol):
    """What GroupCommitLog writes: anything with its row (metric's scored pairs)."""

    row: MetricRow


LoggedT = TypeVar("LoggedT", bound=Logged)


@dataclass
class _Unsynced(Generic[LoggedT]):
    """One batch written to the log, from byte `start` to `end`, waiting for an fsync past `end`."""

    start: int
    end: int
    items: list[LoggedT]
    ids: list[str]  # the rows it wrote (items already in the log write none)


class GroupCommitLog(Generic[LoggedT]):
    """The durable side of metric's log: writes each batch of rows at once, makes them durable by group
    commit, takes back the rows of a failed write or fsync, and retries them.

    Group commit: one fsync at a time, on a thread of its own, covering every batch written before it
    started; batches written meanwhile wait for the next one, so the IO loop never waits for the disk.
    `on_durable(items)` runs on the IO loop of the session that wrote them once an fsync covers them;
    `on_written(rows)` with the rows each write added. `check_fence()` runs before each write and raises
    when this process may no longer write the log (it lost the shard's lock).
    """

    def __init__(self, writer: MetricLogWriter, session_now: Callable[[], object | None],
                 on_durable: Callable[[list[LoggedT]], None],
                 on_written: Callable[[list[MetricRow]], None] = lambda rows: None,
                 check_fence: Callable[[], None] = lambda: None):
        self.writer = writer
        self._session_now = session_now  # its call_threadsafe brings the fsync's outcome back to the IO loop
        self._on_durable = on_durable
        self._on_written = on_written
        self._check_fence = check_fence
        self._unwritten: list[LoggedT] = []
        self._unsynced: deque[_Unsynced[LoggedT]] = deque()
        self._sync_in_flight = False
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")

    def write(self, items: list[LoggedT], retrying: bool = False) -> None:
        if self._unwritten and not retrying:
            self._unwritten.extend(items)  # the log is failing: they wait for the next retry
            return
        self._check_fence()
        start = self.writer.size
        try:
            written = self.writer.append((item.row for item in items), durable=False)
        except OSError as error:
            log.error("can't write %s: %s; holding %d rows unacked and retrying every second",
                      self.writer.path, error, len(items))
            self._unwritten.extend(items)
            return
        self._on_written(written)
        self._unsynced.append(_Unsynced(start, self.writer.size, items, [row.id for row in written]))
        self._sync()

    def retry(self) -> None:
        """Writes again what a failed write or fsync took back; every second, from the IO loop."""
        if self._unwritten:
            items, self._unwritten = self._unwritten, []
            self.write(items, retrying=True)

    def forget_in_flight(self) -> None:
        """On a lost connection: the items' deliveries come back. Rows written stay (the log keeps one
        per id), and the redelivered pairs wait for the next fsync."""
        self._unwritten.clear()
        self._unsynced.clear()
        self._sync_in_flight = False

    def close(self) -> None:
        self._syncer.shutdown(wait=True)

    def _sync(self) -> None:
        if self._sync_in_flight or not self._unsynced:
            return
        self._sync_in_flight = True
        session = self._session_now()
        self._syncer.submit(self.writer.sync).add_done_callback(
            lambda done: session.call_threadsafe(lambda: self._synced(done)))

    def _synced(self, done: Future[int]) -> None:
        self._sync_in_flight = False
        try:
            durable_size = done.result()
        except OSError as error:
            failed = list(self._unsynced)
            self._unsynced.clear()
            self.writer.roll_back(failed[0].start, [row_id for batch in failed for row_id in batch.ids])
            items = [item for batch in failed for item in batch.items]
            log.error("can't sync %s: %s; took back %d rows, holding them unacked and retrying every second",
                      self.writer.path, error, len(items))
            self._unwritten.extend(items)
            return
        durable = []
        while self._unsynced and self._unsynced[0].end <= durable_size:
            durable += self._unsynced.popleft().items
        if durable:
            self._on_durable(durable)
        self._sync()


class FenceLost(RuntimeError):
    """This process no longer holds its shard's lock, so it must not write the shard."""


class ShardLock:
    """The right to write one shard: an exclusive flock(2) on `<shard>.lock`. The kernel frees it the
    moment its holder dies, so a standby blocked in `acquire()` takes over at once; it is a lock of this
    machine's kernel (for a local folder, not one shared over NFS between machines)."""

    def __init__(self, shard: Path):
        self.path = Path(shard).with_name(Path(shard).name + ".lock")
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self, block: bool = True) -> bool:
        """Takes the lock, waiting for it unless `block` is false; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def check(self) -> None:
        """Raises FenceLost unless this process holds the lock, as the kernel sees it (flock on a file
        already locked through the same descriptor succeeds at once)."""
        fd = self._fd
        if fd < 0:
            raise FenceLost(f"{self.path} is not held: this process must not write the shard")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            raise FenceLost(f"{self.path}: {error}") from None

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
