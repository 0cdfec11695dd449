"""Running quality figures of the model: O(1) per event, whatever the length of the history.

Overall figures come from running sums; the sliding windows (last 100 and last 1,000 events) from
fixed-size ring buffers whose sums are updated as events enter and leave; the histogram from
counts in bins that widen by merging. Every id is counted once.

A regressor's figures are here (MAE, RMSE, R², MAPE, max error); a classifier's in
classification.py. The board keeps those of one task at a time: the one the setting TASK or the
model card names, else the one the events show (a text label or probabilities make a classifier's).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from typing import Callable, Iterable, NamedTuple

import numpy as np

from classification import ClassificationTracker, ClassRegistry
from mlmonitor.histogram import ErrorHistogram
from mlmonitor.ids import IdSet
from mlmonitor.tasks import CLASSIFICATION, REGRESSION, classification_error, is_classification

WINDOW_SIZES = (100, 1000)
RECENT_POINTS = 1000
BULK_MIN = 5000  # from this many new observations at once (a restore), sums and histogram use numpy
MAX_VERSIONS = 10
VERSION_WINDOW = 1000
UNKNOWN_VERSION = "unknown"  # rows restored from the CSV, which has no version column


class Observation(NamedTuple):
    """One event or CSV row. y_true and y_pred are numbers (regression) or class labels;
    absolute_error is what metric logged (for a classifier 1 − p(true class))."""

    id: str
    y_true: float | str
    y_pred: float | str
    model_version: str | None = None
    absolute_error: float | None = None
    probabilities: dict[str, float] | None = None

    @property
    def error(self) -> float:
        if isinstance(self.y_true, str) or isinstance(self.y_pred, str) or self.probabilities is not None:
            return self.classification_error
        return abs(self.y_true - self.y_pred)

    @property
    def classification_error(self) -> float:
        if self.absolute_error is not None:
            return self.absolute_error
        return classification_error(self.y_true, self.y_pred, self.probabilities)


def shows_classification(observation: Observation) -> bool:
    """A text label or probabilities: no regressor sends those (mlmonitor.tasks.is_classification)."""
    return isinstance(observation.y_true, str) or is_classification(observation.y_pred, observation.probabilities)


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


class Pair(NamedTuple):
    y_true: float
    y_pred: float
    error: float


class PairBatch(NamedTuple):
    y_true: np.ndarray
    y_pred: np.ndarray
    errors: np.ndarray

    def take(self, indices: np.ndarray) -> PairBatch:
        return PairBatch(self.y_true[indices], self.y_pred[indices], self.errors[indices])

    def item(self, index: int) -> Pair:
        return Pair(float(self.y_true[index]), float(self.y_pred[index]), float(self.errors[index]))


class RegressionTracker:
    """Every figure of a regressor over all events and over windows of the last N."""

    task = REGRESSION
    headline = ("mae", "rmse", "r2")
    figure_names = ("mae", "rmse", "r2", "mape", "max_error")

    def __init__(self, window_sizes: tuple[int, ...]):
        self._overall = Sums()
        self._max_error = 0.0
        self._windows = {size: Window(size) for size in window_sizes}
        self._smallest_window = self._windows[min(window_sizes)]

    @property
    def count(self) -> int:
        return self._overall.count

    @property
    def rolling_window(self) -> int:
        return self._smallest_window.size

    def refusal(self, observation: Observation) -> str | None:
        for field in ("y_true", "y_pred"):
            if isinstance(getattr(observation, field), str):
                return (f"{field}: {getattr(observation, field)!r} is a class label, but the task is regression "
                        "(set TASK=classification for a classifier)")
        return None

    def score(self, observation: Observation) -> Pair:
        return Pair(observation.y_true, observation.y_pred, abs(observation.y_true - observation.y_pred))

    def prepare(self, observations: list[Observation]) -> PairBatch:
        y_true = np.fromiter((o.y_true for o in observations), dtype=float, count=len(observations))
        y_pred = np.fromiter((o.y_pred for o in observations), dtype=float, count=len(observations))
        return PairBatch(y_true, y_pred, np.abs(y_true - y_pred))

    def add(self, item: Pair) -> None:
        self._overall.add(item.y_true, item.y_pred)
        self._max_error = max(self._max_error, item.error)

    def add_batch(self, batch: PairBatch) -> None:
        self._overall.merge(Sums.of_arrays(batch.y_true, batch.y_pred))
        if batch.errors.size:
            self._max_error = max(self._max_error, float(batch.errors.max()))

    def add_to_windows(self, item: Pair, seq: int) -> None:
        for window in self._windows.values():
            window.add(seq, item.y_true, item.y_pred, item.error)

    def rolling_error(self) -> float | None:
        return self._smallest_window.mae

    def figures(self) -> dict[str, dict]:
        return {"all": self._overall.figures(self._max_error),
                **{f"last_{size}": window.figures() for size, window in self._windows.items()}}

    def extras(self) -> dict:
        return {}


Tracker = RegressionTracker | ClassificationTracker


class VersionBreakdown:
    """The task's headline figures per model version, over all of its events and its last 1,000.

    model_version comes from the live events. Rows restored from the CSV carry none (the CSV keeps
    its four columns), so they count under "unknown", and so does a live event whose row was read
    from the CSV before the event arrived (it counts once, as its row). Only the MAX_VERSIONS
    versions seen last are kept, so memory stays flat however often the model is retrained; a
    version dropped that comes back starts again from zero.
    """

    def __init__(self, new_tracker: Callable[[], Tracker], limit: int = MAX_VERSIONS):
        self._new_tracker = new_tracker
        self._limit = limit
        self._trackers: OrderedDict[str, Tracker] = OrderedDict()  # least recently seen first
        self._first_seen: dict[str, int] = {}
        self._versions_seen = 0

    def add(self, version: str | None, item) -> None:
        tracker = self._tracker_of(version)
        tracker.add(item)
        tracker.add_to_windows(item, tracker.count)

    def add_batch(self, versions: list[str | None], batch) -> None:
        distinct = set(versions)
        if len(distinct) == 1:  # the usual case: a restore, all "unknown"
            self._add_part(distinct.pop(), batch, len(versions))
            return
        groups: dict[str | None, list[int]] = {}
        for index, version in enumerate(versions):
            groups.setdefault(version, []).append(index)
        for version, indices in groups.items():
            self._add_part(version, batch.take(np.array(indices)), len(indices))

    def _add_part(self, version: str | None, part, count: int) -> None:
        tracker = self._tracker_of(version)
        before = tracker.count
        tracker.add_batch(part)
        for index in range(max(0, count - VERSION_WINDOW), count):
            tracker.add_to_windows(part.item(index), before + index + 1)

    def figures(self) -> dict[str, dict]:
        """{version: {"count", "all": {headline figures}, "last_1000": {…}}}, oldest version first."""
        shown = {}
        for version in sorted(self._trackers, key=self._first_seen.__getitem__):
            tracker = self._trackers[version]
            figures = tracker.figures()
            shown[version] = {"count": tracker.count, **{
                window: {name: figures[window][name] for name in ("count", *tracker.headline)}
                for window in ("all", f"last_{VERSION_WINDOW}")}}
        return shown

    def _tracker_of(self, version: str | None) -> Tracker:
        key = version or UNKNOWN_VERSION
        tracker = self._trackers.get(key)
        if tracker is not None:
            self._trackers.move_to_end(key)
            return tracker
        tracker = self._trackers[key] = self._new_tracker()
        self._versions_seen += 1
        self._first_seen[key] = self._versions_seen
        if len(self._trackers) > self._limit:
            dropped, _ = self._trackers.popitem(last=False)
            del self._first_seen[dropped]
        return tracker


class TaskHint(NamedTuple):
    """What the setting TASK or the model card say about the stream; None/empty where they say nothing."""

    task: str | None = None
    classes: list | None = None
    predicts_proba: bool = False


class QualityBoard:
    """Everything the page shows about the errors. Thread-safe: the AMQP thread adds, the web
    thread reads."""

    def __init__(self, window_sizes: tuple[int, ...] = WINDOW_SIZES, recent_points: int = RECENT_POINTS,
                 task: str = REGRESSION):
        self._lock = threading.Lock()
        self._window_sizes = window_sizes
        self._recent_points = recent_points
        self._hint = TaskHint()
        self._start(task)

    def _start(self, task: str) -> None:
        self._registry = ClassRegistry()
        self._registry.follow_card(self._hint.classes, self._hint.predicts_proba)
        self._tracker = self._new_tracker(task, self._window_sizes)
        self._versions = VersionBreakdown(lambda: self._new_tracker(task, (VERSION_WINDOW,), with_auc=False))
        self._ids = IdSet()  # compact and exact: ~16 bytes per UUID, like metric's and plot's
        self._seq = 0
        self._recent: deque[tuple[int, float, float | None]] = deque(maxlen=self._recent_points)  # (seq, error, mean)
        # a classifier's errors lie in [0, 1]: 40 bins of 0.025 (a hair above 1/40 as a float, so an
        # error of exactly 1 falls in the 40th), two spare so that it never widens
        self._histogram = ErrorHistogram() if task == REGRESSION else ErrorHistogram(bins=42, initial_width=0.025)
        self._tail_length = max(max(self._window_sizes), self._recent_points + min(self._window_sizes))
        self.last_event_at: float | None = None
        self.model_version: str | None = None

    def _new_tracker(self, task: str, window_sizes: tuple[int, ...], with_auc: bool = True) -> Tracker:
        if task == CLASSIFICATION:
            return ClassificationTracker(self._registry, window_sizes, with_auc=with_auc)
        return RegressionTracker(window_sizes)

    @property
    def task(self) -> str:
        return self._tracker.task

    @property
    def count(self) -> int:
        return self._tracker.count

    def follow(self, hint: TaskHint) -> None:
        """Takes in what TASK or the model card say now (classes, probabilities); see task_for."""
        with self._lock:
            self._hint = hint
            self._registry.follow_card(hint.classes, hint.predicts_proba)

    def task_for(self, observations: Iterable[Observation]) -> str:
        """The task these observations are to be counted under: the one TASK or the card names;
        else classification once any event or row showed it (text labels, probabilities), for good;
        else regression."""
        if self._hint.task in (REGRESSION, CLASSIFICATION):
            return self._hint.task
        if self.task == CLASSIFICATION or any(shows_classification(o) for o in observations):
            return CLASSIFICATION
        return REGRESSION

    def restart(self, task: str) -> None:
        """Forgets everything counted and starts again for `task` (the caller counts the CSV again)."""
        with self._lock:
            self._start(task)

    def refusal(self, observation: Observation) -> str | None:
        """Why the observation can't be counted under the current task (one line naming the field), or None."""
        return self._tracker.refusal(observation)

    def add(self, observations: Iterable[Observation], arrived_at: float | None = None) -> int:
        """Counts the observations whose id is new (and that the task can score: see refusal);
        returns how many were. `arrived_at` is the time live events came in (None for rows
        restored from the CSV)."""
        with self._lock:
            fresh = []
            for observation in observations:
                if self._tracker.refusal(observation) is None and self._ids.add_if_new(observation.id):
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
        item = self._tracker.score(observation)
        self._seq += 1
        self._tracker.add(item)
        self._tracker.add_to_windows(item, self._seq)
        self._versions.add(observation.model_version, item)
        self._recent.append((self._seq, item.error, self._tracker.rolling_error()))
        self._histogram.add(item.error)
        if observation.model_version:
            self.model_version = observation.model_version

    def _count_bulk(self, fresh: list[Observation]) -> None:
        """Same result as counting one by one: numpy for the sums and the histogram; only the last
        events, all that the windows and the recent series can hold, go through them."""
        batch = self._tracker.prepare(fresh)
        first_seq = self._seq + 1
        self._tracker.add_batch(batch)
        self._histogram.add_many(batch.errors)
        self._versions.add_batch([o.model_version for o in fresh], batch)
        for index in range(max(0, len(fresh) - self._tail_length), len(fresh)):
            item = batch.item(index)
            self._tracker.add_to_windows(item, first_seq + index)
            self._recent.append((first_seq + index, item.error, self._tracker.rolling_error()))
        self._seq += len(fresh)
        self.model_version = next((o.model_version for o in reversed(fresh) if o.model_version), self.model_version)

    def figures(self) -> dict[str, dict]:
        """The figures alone, by window: "all", "last_100", "last_1000"."""
        with self._lock:
            return self._tracker.figures()

    def by_version(self) -> dict[str, dict]:
        with self._lock:
            return self._versions.figures()

    def snapshot(self) -> dict:
        with self._lock:
            figures = self._tracker.figures()
            return {
                "task": self._tracker.task,
                **figures["all"],
                "windows": {window: values for window, values in figures.items() if window != "all"},
                "histogram": self._histogram.shown(),
                "recent": {
                    "seq": [seq for seq, _, _ in self._recent],
                    "absolute_error": [error for _, error, _ in self._recent],
                    "rolling_mae": [mean for _, _, mean in self._recent],
                    "rolling_window": self._tracker.rolling_window,
                },
                "last_event_at": self.last_event_at,
                "events_model_version": self.model_version,
                "by_version": self._versions.figures(),
                **self._tracker.extras(),
            }
