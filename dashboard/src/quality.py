"""Running quality figures of the model: O(1) per event, whatever the length of the history.

Overall figures come from running sums; the sliding windows (last 100 and last 1,000 events) from
fixed-size ring buffers whose sums are updated as events enter and leave; the histogram from
counts in bins that widen by merging. Every id is counted once.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Iterable, NamedTuple

import numpy as np

from mlmonitor.histogram import ErrorHistogram
from mlmonitor.ids import IdSet

WINDOW_SIZES = (100, 1000)
RECENT_POINTS = 1000
BULK_MIN = 5000  # from this many new observations at once (a restore), sums and histogram use numpy


class Observation(NamedTuple):
    id: str
    y_true: float
    y_pred: float
    model_version: str | None = None

    @property
    def error(self) -> float:
        return abs(self.y_true - self.y_pred)


class Sums:
    """Sums over a set of (y_true, y_pred) pairs, from which MAE, RMSE, R² and MAPE follow.

    The spread of y_true is kept with Welford's update (and its inverse for removal), so R² stays
    accurate for targets far from zero. MAPE counts the pairs whose y_true is not 0.
    """

    __slots__ = ("count", "abs_error", "squared_error", "mean_y", "m2_y", "pct_error", "pct_count")

    def __init__(self):
        self.count = 0
        self.abs_error = 0.0
        self.squared_error = 0.0
        self.mean_y = 0.0
        self.m2_y = 0.0
        self.pct_error = 0.0
        self.pct_count = 0

    @classmethod
    def of(cls, pairs: Iterable[tuple[float, float]]) -> Sums:
        sums = cls()
        for y_true, y_pred in pairs:
            sums.add(y_true, y_pred)
        return sums

    @classmethod
    def of_arrays(cls, y_true: np.ndarray, y_pred: np.ndarray) -> Sums:
        sums = cls()
        errors = np.abs(y_true - y_pred)
        nonzero = y_true != 0
        sums.count = int(y_true.size)
        sums.abs_error = float(errors.sum())
        sums.squared_error = float(np.square(errors).sum())
        sums.mean_y = float(y_true.mean()) if y_true.size else 0.0
        sums.m2_y = float(np.square(y_true - sums.mean_y).sum())
        sums.pct_error = float((errors[nonzero] / np.abs(y_true[nonzero])).sum())
        sums.pct_count = int(nonzero.sum())
        return sums

    def merge(self, other: Sums) -> None:
        """Adds another set's sums to these (Chan et al.'s parallel update for the spread)."""
        count = self.count + other.count
        if not other.count:
            return
        delta = other.mean_y - self.mean_y
        self.m2_y += other.m2_y + delta * delta * self.count * other.count / count
        self.mean_y += delta * other.count / count
        self.count = count
        self.abs_error += other.abs_error
        self.squared_error += other.squared_error
        self.pct_error += other.pct_error
        self.pct_count += other.pct_count

    def add(self, y_true: float, y_pred: float) -> None:
        error = abs(y_true - y_pred)
        self.count += 1
        self.abs_error += error
        self.squared_error += error * error
        delta = y_true - self.mean_y
        self.mean_y += delta / self.count
        self.m2_y += delta * (y_true - self.mean_y)
        if y_true != 0:
            self.pct_error += error / abs(y_true)
            self.pct_count += 1

    def remove(self, y_true: float, y_pred: float) -> None:
        error = abs(y_true - y_pred)
        self.count -= 1
        self.abs_error -= error
        self.squared_error -= error * error
        if self.count == 0:
            self.mean_y = self.m2_y = 0.0
        else:
            delta = y_true - self.mean_y
            self.mean_y -= delta / self.count
            self.m2_y -= delta * (y_true - self.mean_y)
        if y_true != 0:
            self.pct_error -= error / abs(y_true)
            self.pct_count -= 1

    def figures(self, max_error: float | None) -> dict:
        n = self.count
        return {
            "count": n,
            "mae": self.abs_error / n if n else None,
            "rmse": math.sqrt(max(self.squared_error, 0.0) / n) if n else None,
            "r2": 1.0 - self.squared_error / self.m2_y if n >= 2 and self.m2_y > 0 else None,
            "mape": 100.0 * self.pct_error / self.pct_count if self.pct_count else None,
            "max_error": max_error if n else None,
        }


class Window:
    """The figures of the last `size` events: a ring buffer with sums kept in step.

    Each event that enters pushes the oldest out and is subtracted from the sums, so an update is
    O(1); the sums are recomputed from the ring once per `size` removals (amortised O(1)), so
    rounding errors can't pile up. The maximum is kept with a monotonic queue.
    """

    def __init__(self, size: int):
        self.size = size
        self._ring: deque[tuple[int, float, float, float]] = deque(maxlen=size)  # (seq, y_true, y_pred, error)
        self._sums = Sums()
        self._maxima: deque[tuple[int, float]] = deque()  # (seq, error), errors strictly decreasing
        self._removals = 0

    def add(self, seq: int, y_true: float, y_pred: float, error: float) -> None:
        if len(self._ring) == self.size:
            _, old_true, old_pred, _ = self._ring[0]
            self._sums.remove(old_true, old_pred)
            self._removals += 1
        self._ring.append((seq, y_true, y_pred, error))
        self._sums.add(y_true, y_pred)
        while self._maxima and self._maxima[-1][1] <= error:
            self._maxima.pop()
        self._maxima.append((seq, error))
        while self._maxima[0][0] <= seq - self.size:
            self._maxima.popleft()
        if self._removals >= self.size:
            self._sums = Sums.of((y_true, y_pred) for _, y_true, y_pred, _ in self._ring)
            self._removals = 0

    @property
    def mae(self) -> float | None:
        return self._sums.abs_error / self._sums.count if self._sums.count else None

    def figures(self) -> dict:
        return self._sums.figures(self._maxima[0][1] if self._maxima else None)


class QualityBoard:
    """Everything the page shows about the errors. Thread-safe: the AMQP thread adds, the web
    thread reads."""

    def __init__(self, window_sizes: tuple[int, ...] = WINDOW_SIZES, recent_points: int = RECENT_POINTS):
        self._lock = threading.Lock()
        self._ids = IdSet()  # compact and exact: ~16 bytes per UUID, like metric's and plot's
        self._overall = Sums()
        self._max_error = 0.0
        self._windows = {size: Window(size) for size in window_sizes}
        self._recent: deque[tuple[int, float, float | None]] = deque(maxlen=recent_points)  # (seq, error, MAE)
        self._histogram = ErrorHistogram()
        self._smallest_window = self._windows[min(window_sizes)]
        self._tail_length = max(max(window_sizes), recent_points + min(window_sizes))
        self.last_event_at: float | None = None
        self.model_version: str | None = None

    @property
    def count(self) -> int:
        return self._overall.count

    def add(self, observations: Iterable[Observation], arrived_at: float | None = None) -> int:
        """Counts the observations whose id is new; returns how many were. `arrived_at` is the time
        live events came in (None for rows restored from the CSV)."""
        with self._lock:
            fresh = []
            for observation in observations:
                if self._ids.add_if_new(observation.id):
                    fresh.append(observation)
            if len(fresh) >= BULK_MIN:
                self._count_bulk(fresh)
            else:
                for observation in fresh:
                    self._count(observation)
            if fresh and arrived_at is not None:
                self.last_event_at = arrived_at
        return len(fresh)

    def _count(self, observation: Observation) -> None:
        y_true, y_pred, error = observation.y_true, observation.y_pred, observation.error
        self._overall.add(y_true, y_pred)
        self._max_error = max(self._max_error, error)
        seq = self._overall.count
        for window in self._windows.values():
            window.add(seq, y_true, y_pred, error)
        self._recent.append((seq, error, self._smallest_window.mae))
        self._histogram.add(error)
        if observation.model_version:
            self.model_version = observation.model_version

    def _count_bulk(self, fresh: list[Observation]) -> None:
        """Same result as counting one by one: numpy for the sums and the histogram; only the last
        events, all that the windows and the recent series can hold, go through them."""
        y_true = np.fromiter((o.y_true for o in fresh), dtype=float, count=len(fresh))
        y_pred = np.fromiter((o.y_pred for o in fresh), dtype=float, count=len(fresh))
        errors = np.abs(y_true - y_pred)
        first_seq = self._overall.count + 1
        self._overall.merge(Sums.of_arrays(y_true, y_pred))
        self._max_error = max(self._max_error, float(errors.max()))
        self._histogram.add_many(errors)
        start = max(0, len(fresh) - self._tail_length)
        for index in range(start, len(fresh)):
            y, p, error, seq = float(y_true[index]), float(y_pred[index]), float(errors[index]), first_seq + index
            for window in self._windows.values():
                window.add(seq, y, p, error)
            self._recent.append((seq, error, self._smallest_window.mae))
        self.model_version = next((o.model_version for o in reversed(fresh) if o.model_version), self.model_version)

    def figures(self) -> dict[str, dict]:
        """The figures alone, by window: "all", "last_100", "last_1000"."""
        with self._lock:
            return {"all": self._overall.figures(self._max_error),
                    **{f"last_{size}": window.figures() for size, window in self._windows.items()}}

    def snapshot(self) -> dict:
        with self._lock:
            return {
                **self._overall.figures(self._max_error),
                "windows": {f"last_{size}": window.figures() for size, window in self._windows.items()},
                "histogram": self._histogram.shown(),
                "recent": {
                    "seq": [seq for seq, _, _ in self._recent],
                    "absolute_error": [error for _, error, _ in self._recent],
                    "rolling_mae": [mae for _, _, mae in self._recent],
                    "rolling_window": self._smallest_window.size,
                },
                "last_event_at": self.last_event_at,
                "events_model_version": self.model_version,
            }
