"""Streaming drift and degradation detectors built from the model card's reference statistics
(mlmonitor.reference): O(1) per event per numeric feature, O(categories) per categorical one, a
few numbers per chart and the last 100 values as state, whatever the number of events.

The method
----------
Every watched value becomes a score that has mean 0 and variance 1 under the reference, and CUSUM
charts add the scores up:

- A number (a numeric feature, a regressor's prediction or target, an error) is standardised by
  the reference's mean and std, z = (x − mean)/std, clipped to ±3.5 (Z_CAP) so that no single
  outlier raises an alarm alone. The card's mean and std are exact for the reference sample,
  which matters more than anything else: a CUSUM's false-alarm rate depends exponentially on the
  mean and variance of its scores. The other scale, normal scores z = Φ⁻¹(F(x)) with F the
  reference's CDF interpolated through its quantiles and histogram edges (`method="normal_scores"`),
  is robust to skew in principle, but F is only known at 23 knots: on a column of a few distinct
  values (diabetes' `sex`) its scores are off by 0.2 σ in mean, and it raised false alarms where
  the standardised scores did not, with no faster detection (`bench/drift.py --normal-scores`
  measures both).
- A category (a categorical feature, a classifier's class or target) is one indicator per
  category the reference lists (the 20 most frequent; the rest pooled), plus one for a category it
  never saw (or its "__other__") and one for a missing value, each standardised by its reference
  frequency p: (1[x = c] − p)/√(p(1 − p)). O(categories) per event.
- A missing number is left out of the value's charts and counted by a missing-rate indicator
  instead, like a category: a column that starts arriving empty is drift of its own. A rate the
  reference never saw (0 %) counts as 1/(2(n + 1)), so a few missing values in a row raise.

A one-sided CUSUM S = max(0, S + sign·z − k) is the quickest detector of a mean shift of 2k
(Lorden, Moustakides): for each shift the issue asks for, 0.25, 0.5 and 1 σ, a chart with
k = δ/2, up and down (SHIFTS). Several k's cost little, because thresholds grow only with the log
of the run length. The categories' indicators and the missing rate get up-charts only (a category
losing share means others gain it), and performance only an up-chart on the error: a model that
gets better is not an alarm. A regressor's card also has the residuals y − ŷ (held out, and the
training rows' out of fold): with `detectors_for(..., residuals=True)` the performance detector
(PerformanceDetector) takes the signed residual and adds up and down charts on it, standardised by
the reference's residuals: a bias either way is a degradation, and it shows long before the
absolute error grows (y_true moved by half a residual σ: 157 events instead of 3,400 when it was
measured, bench/drift.py). An older card, or a classifier's, has no residuals; its performance
detector takes the absolute error as before.

Calibration
-----------
The false-alarm budget, `false_alarms_per_100k` for all detectors together, is split evenly over
the detectors: they watch different streams, so their raises nearly never coincide and a union
bound across them is tight. Within a detector the charts are calibrated together
(calibration.joint_thresholds), so that the detector, raising when any of its charts does, takes
its share on a stationary stream:
- the charts that add the same score (one channel, one direction, three k's) are strongly
  correlated: a run of high values lifts them all. Their joint rate is the smallest-k chart's exact
  rate (Brook–Evans Markov chain) times p/p₁, the chance that any of them reaches its threshold
  during an excursion of that chart above 0 over the chance that it does; p/p₁ comes from a seeded,
  importance-sampled simulation of those excursions. Its charts are tuned
  to run lengths in the ratio 2 : 1 : 16 (RUN_LENGTH_SPANS, by the shift 0.25, 0.5 and 1 σ): the
  0.5 σ chart takes most of the budget, the 1 σ one the least, since a 1 σ shift is caught within
  tens of events at any threshold;
- up and down on the same value can't both be at their worst under one live population (below):
  the detector's rate is the larger of its two corners, one direction at its worst plus the other
  under that population;
- channels (the value, the missing rate, each category) add up, a union bound. A two-valued score
  (an indicator) keeps the union bound within its group too: its run lengths on the chain's
  lattice are too coarse for p/p₁. A number's missing rate has one chart (k = 0.5): a rare
  indicator's charts all fire on the same few hits, whatever their k.
Each chart's run length is computed on the score distribution that a stream drawn from the
reference produces: its quantile function (interpolated through the quantiles and histogram
edges) at 4,000 evenly spaced probabilities, scored like live values and, for the standardised
scale, rescaled to mean 0 and variance 1 as the reference sample's scores are, plus a value past
each end of the reference's range with probability 1/(2(n + 1)) each (the training sample's min and
max are not the population's). The same reference gives the same thresholds (seeded; cached within
a process). Calibrating the diabetes card's 13 detectors costs about 2.7 times the CPU of the union
bound it replaced (docs/drift.md has the figures).

The reference is a sample of n rows, so a live stream from the same population differs from it by
about one standard error: the mean by 1/√n σ, the spread by 1/√(2n). A CUSUM tuned to small shifts
sees that as drift, and its false-alarm rate grows exponentially with the offset.
`reference_margin` (in standard errors) calibrates every chart against the least favourable live
population within that margin, so that the budget holds for any of them; 0 trusts the reference
as the population. Measured on the diabetes card (bench/drift.py, all 13 detectors, 1 per 100k,
2,000,000 events per stationary stream; mean delay of bmi's detector):

    margin   false alarms per 100k:            bmi shifted by           y_true moved by
             training population / `make run`  0.25 / 0.5 / 1 σ         0.5 / 1 residual σ
    0        0.75 / 1.65                       385 / 101 / 35           94 / 32
    0.5      0.30 / 0.25                       492 / 114 / 38           102 / 36
    1        0.00 / 0.00                       576 / 134 / 42           132 / 38

The default, DEFAULT_REFERENCE_MARGIN = 0.5, is the smallest margin whose measured rate on both
stationary streams stays within the budget. Margin 0 raised 1.65 per 100k on the replay of all 442
rows: the 89 held-out rows make that population differ from the 353-row reference by about half a
standard error. (With the union bound over all 117 charts instead of the joint calibration, margin
0.5 measured 0.15 / 0.15 and 543 / 137 / 37.)

Alarms
------
A detector raises when any chart reaches its threshold and then stays raised, each chart held at
its threshold, until every chart has fallen below a fifth of it (RESOLVE_FRACTION): one alert per
episode, resolved within about 0.8·h/k events of the stream returning to the reference. A half
resolved sooner (h/(2k)) but flapped: under a shift that persists just above a chart's k, that
chart drifts up only slowly while held at h, and its noise took it below h/2 now and then (a
categorical target with 30 % of its labels flipped: 16 resolves and raises again in 160,000
drifted events at a half, none at a fifth; back to normal, the median resolve came 286 events
after the return instead of 167). Resolving restarts every chart from 0, so that the next episode's
run length is the one calibrated. Its score is
max(S/h) over its charts, so its threshold is 1. An explanation names the chart that fired, the
reference, the values since that chart last stood at 0 (the CUSUM's estimate of when the change
began): how many, their mean or the category's share among them, and the last 100 values the
detector took in (`recent`: their mean, or the categories' shares).

Speed
-----
`update(value)` takes one event in plain Python; `update_batch(values)` takes a batch of a stream's
events at once with numpy and returns exactly the decisions, and leaves exactly the state, that
update() value by value would. The statistics are integers (fixed point, 2⁻³²), so the prefix sums
of a batch are exact and S_t = C_t − min(−S_0, min_{s≤t} C_s) is the recursion itself; a raise or a
resolve cuts the batch, and an open episode (charts held at their thresholds) is a composition of
clamps, computed by doubling. The values since a chart last stood at 0 are added in order, as
update() adds them. A DetectorSet feeds a stream's detectors a batch as columns and runs the numeric
ones through one pass together. CPU per event for the diabetes card's 13 detectors (bench/drift.py,
µs, process time on a shared 2-core machine; one event at a time cost 168 before batches):

    batch of                          1      10     100    1,000
    each detector's update_batch     74      49     6.6    2.2     (a batch of 1 is update())
    a DetectorSet per stream         81      26     4.4    1.7
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import deque
from dataclasses import dataclass
from functools import reduce
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from calibration import ChartGroup, ScoreDistribution, joint_thresholds
from mlmonitor.tasks import label_key

STATE_FORMAT = 1
SHIFTS = (0.25, 0.5, 1.0)  # the mean shifts, in reference σ, a chart is tuned to (k = δ/2)
Z_CAP = 3.5  # scores are clipped to ±Z_CAP: one outlier counts, but can't raise an alarm alone
GRID_POINTS = 4000  # evenly spaced probabilities at which the reference is sampled for calibration
RESOLVE_FRACTION = 0.2  # resolved once every chart is below this share of its threshold (docstring: Alarms)
RECENT_VALUES = 100  # the explanation's recent values: the last 100 the detector took in
DEFAULT_FALSE_ALARMS_PER_100K = 1.0
DEFAULT_REFERENCE_MARGIN = 0.5  # standard errors; the module's docstring has the measurements
# In-control run lengths of a detector's charts relative to each other, by the shift each is tuned
# to: the 0.5 σ chart takes most of the budget, the 1 σ one the least (a 1 σ shift is caught within
# tens of events whatever its threshold); bench/drift.py measured the trade-off (docstring).
RUN_LENGTH_SPANS = {0.25: 2.0, 0.5: 1.0, 1.0: 16.0}
MAX_CATEGORIES = 20  # categories with an indicator of their own; the rarer ones share "__other__"
OTHER = "__other__"  # as in mlmonitor.reference
UNSEEN = "__unseen__"
MISSING = "__missing__"
VALUE = "value"  # a chart on the value's score
RESIDUAL = "residual"  # a chart on the signed residual's score (PerformanceDetector)
UP, DOWN = 1, -1
FIXED_POINT = 2 ** 32  # statistics are integers in units of 2⁻³²: sums exact, in any order (Detector)
NEVER = 2 ** 62  # the fixed-point threshold of a chart that can't alarm
CHUNK = 2048  # events per vectorised pass: keeps the int64 prefix sums far from overflowing
SMALL_BATCH = 4  # fewer events than this: update_batch takes them one at a time, which costs less
SHORT_RUN = 128  # DetectorSet adds up runs up to this long as one table, longer ones one by one

FEATURE_DRIFT = "feature_drift"
PREDICTION_DRIFT = "prediction_drift"
TARGET_DRIFT = "target_drift"
PERFORMANCE = "performance"
RAISED, RESOLVED = "raised", "resolved"

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Decision:
    """A detector's raise or resolve: what the service logs, publishes and counts."""

    state: str  # RAISED or RESOLVED
    kind: str
    feature: str | None
    events: int  # events the detector had taken in when it decided
    score: float
    threshold: float
    explanation: dict


@dataclass(frozen=True)
class Chart:
    """One one-sided CUSUM: adds sign·score(channel) − k."""

    channel: str  # "value", or the category / MISSING / UNSEEN whose indicator it adds
    sign: int
    k: float

    @property
    def direction(self) -> str:
        return "up" if self.sign == UP else "down"


# --- scores ---------------------------------------------------------------------------------------

class NormalScores:
    """x → Φ⁻¹(F(x)), F the reference's CDF through its quantiles and histogram edges."""

    name = "normal_scores"

    def __init__(self, stats: Mapping[str, Any]):
        self.xs, self.ps = _cdf_knots(stats)
        self.count = _present_count(stats)

    def score(self, x: float) -> float:
        xs, ps = self.xs, self.ps
        low = bisect.bisect_left(xs, x)
        high = bisect.bisect_right(xs, x)
        if high > low:  # on a knot, or on a value held many times: the middle of its step
            p = (ps[low] + ps[high - 1]) / 2
        elif low == 0 or low == len(xs):
            return -Z_CAP if low == 0 else Z_CAP
        else:
            x0, x1, p0, p1 = xs[low - 1], xs[low], ps[low - 1], ps[low]
            p = p0 + (p1 - p0) * (x - x0) / (x1 - x0)
        if p <= 0.0 or p >= 1.0:
            return -Z_CAP if p <= 0.0 else Z_CAP
        return min(max(_NORMAL.inv_cdf(p), -Z_CAP), Z_CAP)

    def scores(self, values: np.ndarray) -> np.ndarray:
        """`score` of many values at once (calibration maps the reference sample with it)."""
        xs, ps = np.asarray(self.xs), np.asarray(self.ps)
        low = np.searchsorted(xs, values, "left")
        high = np.searchsorted(xs, values, "right")
        on_knot = high > low
        left, right = np.clip(low - 1, 0, len(xs) - 1), np.clip(low, 0, len(xs) - 1)
        width = np.where(xs[right] > xs[left], xs[right] - xs[left], 1.0)
        between = ps[left] + (ps[right] - ps[left]) * (values - xs[left]) / width
        middle = (ps[np.clip(low, 0, len(ps) - 1)] + ps[np.clip(high - 1, 0, len(ps) - 1)]) / 2
        p = np.where(on_knot, middle, np.where(low == 0, 0.0, np.where(low == len(xs), 1.0, between)))
        inside = (p > 0) & (p < 1)
        z = np.where(p <= 0, -Z_CAP, Z_CAP)
        z[inside] = np.vectorize(_NORMAL.inv_cdf, otypes=[float])(p[inside])
        return np.clip(z, -Z_CAP, Z_CAP)

    def fixed_scores(self, values: np.ndarray) -> np.ndarray:
        return _fixed_array(self.scores(values))

    def in_control(self) -> np.ndarray:
        return self.scores(reference_sample(self.xs, self.ps))


class StandardisedScores:
    """x → (x − mean)/std, clipped to ±Z_CAP."""

    name = "standardised"

    def __init__(self, stats: Mapping[str, Any]):
        self.mean, self.std = float(stats["mean"]), float(stats["std"])
        self.xs, self.ps = _cdf_knots(stats)
        self.count = _present_count(stats)

    def score(self, x: float) -> float:
        return min(max((x - self.mean) / self.std, -Z_CAP), Z_CAP)

    def fixed_scores(self, values: np.ndarray) -> np.ndarray:
        """round(score · FIXED_POINT) of many values, the same operations as `score`, in place."""
        z = values - self.mean
        z /= self.std
        np.maximum(z, -Z_CAP, out=z)
        np.minimum(z, Z_CAP, out=z)
        z *= FIXED_POINT
        return np.rint(z, out=z).astype(np.int64)

    def scores(self, values: np.ndarray) -> np.ndarray:
        return np.clip((values - self.mean) / self.std, -Z_CAP, Z_CAP)

    def in_control(self) -> np.ndarray:
        """The reference sample, standardised by its own moments: the live scores of the reference
        population have mean 0 and variance 1 exactly, whatever the interpolated shape gets wrong
        (a column of a few distinct values), and the run length depends on those two most."""
        sample = reference_sample(self.xs, self.ps)
        return np.clip((sample - sample.mean()) / sample.std(), -Z_CAP, Z_CAP)


SCALES = {NormalScores.name: NormalScores, StandardisedScores.name: StandardisedScores}
DEFAULT_METHOD = StandardisedScores.name  # the bench compares the two


def reference_sample(xs: Sequence[float], ps: Sequence[float]) -> np.ndarray:
    """The reference's quantile function at GRID_POINTS evenly spaced probabilities: a sample of it
    without sampling noise."""
    probabilities = (np.arange(GRID_POINTS) + 0.5) / GRID_POINTS
    return np.interp(probabilities, ps, xs)


def _cdf_knots(stats: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """(x, F(x)) pairs from the quantiles and the histogram's edges, sorted, F non-decreasing."""
    knots = list(zip(stats["quantiles"]["values"], stats["quantiles"]["probabilities"]))
    histogram = stats.get("histogram")
    if histogram:
        counts = np.asarray(histogram["counts"], dtype=float)
        present = counts.sum() + histogram["under"] + histogram["over"]
        below = histogram["under"] + np.concatenate([[0.0], np.cumsum(counts)])
        if len(histogram["edges"]) == len(below):
            knots += list(zip(histogram["edges"], (below / present).tolist()))
    knots = sorted((float(x), float(p)) for x, p in knots if x is not None)
    xs = [x for x, _ in knots]
    ps = np.maximum.accumulate([p for _, p in knots]).tolist()  # the two sources may disagree slightly
    return xs, ps


def _present_count(stats: Mapping[str, Any]) -> int:
    return max(1, round(stats["count"] * (1 - stats["missing_rate"])))


def _has_values(stats: Mapping[str, Any]) -> bool:
    return stats.get("mean") is not None and stats.get("std") is not None


# --- charts ---------------------------------------------------------------------------------------

def _fixed(number: float) -> int:
    """A statistic's increment in fixed point: an integer number of 1/FIXED_POINT."""
    return round(number * FIXED_POINT)


def _fixed_array(numbers: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(numbers, dtype=float) * FIXED_POINT).astype(np.int64)


class ChartBank:
    """The CUSUM statistics of a detector's charts on many streams at once (rows: streams, columns:
    charts), fixed point, and which streams are raised: the simulations' path (update_many), which
    decides as one stream does and keeps nothing for the explanation."""

    def __init__(self, charts: int, streams: int):
        self.statistic = np.zeros((streams, charts), dtype=np.int64)
        self.raised = np.zeros(streams, dtype=bool)

    def step(self, increments: np.ndarray, limit: np.ndarray, resolve_at: np.ndarray) -> np.ndarray:
        """One event per stream (an increment of 0 for a chart that doesn't take it); per stream 1
        (raised), −1 (resolved) or 0."""
        statistic = self.statistic
        statistic += increments
        np.maximum(statistic, 0, out=statistic)
        raised = ~self.raised & (statistic >= limit).any(axis=1)
        resolved = self.raised & (statistic < resolve_at).all(axis=1)
        self.raised = (self.raised | raised) & ~resolved
        if self.raised.any():
            np.minimum(statistic, limit, out=statistic, where=self.raised[:, None])
        statistic[resolved] = 0  # restarted from 0, as Detector._flip does
        return raised.astype(np.int8) - resolved.astype(np.int8)


class _Batch:
    """A batch of one stream's events, prepared for the vectorised pass (rows: events, columns:
    charts): fixed-point increments (0 where a chart doesn't take the event), which charts take it
    (None: all), the raw values the explanation adds up, and what `recent` keeps."""

    __slots__ = ("size", "increments", "active", "present", "raw", "indicator", "recent", "_lists")

    def __init__(self, increments: np.ndarray, *, active: np.ndarray | None = None, present: np.ndarray | None = None,
                 raw: list[np.ndarray] | None = None, indicator: np.ndarray | None = None,
                 recent: np.ndarray | None = None):
        self.size = len(increments)
        self.increments = increments
        self.active = active  # events × charts taking part; None when every chart takes every event
        self.present = present  # events with a value (numbers); None when all have one
        self.raw = raw  # per source, the values its charts' runs add up (where present)
        self.indicator = indicator  # events × charts, 0/1: what a counting chart's run adds up; None: all 0
        self.recent = recent  # what `recent` keeps of these events, in order
        self._lists: dict = {}

    def present_values(self, source: int, start: int, end: int) -> list[float]:
        """The source's values of the events start … end − 1 that have one, as floats."""
        key = (source, start, end)
        if key not in self._lists:
            values = self.raw[source][start:end]
            self._lists[key] = (values if self.present is None else values[self.present[start:end]]).tolist()
        return self._lists[key]


class Detector:
    """What every detector shares: charts, thresholds, the raised/resolved episode, the state.

    One stream: `update(value)` takes one event, `update_batch(values)` many consecutive ones at
    once, vectorised, with exactly the decisions and state that `update` value by value gives.
    `update_many(values)` takes one event of each of many independent streams at once (the
    benchmark's and the tests' simulations) and returns per stream 1 (raised), −1 (resolved) or 0;
    `streams` sets how many, at construction.

    A chart's statistic is kept in fixed point, an integer number of 1/FIXED_POINT (2⁻³²), and its
    increments are rounded to that grid once, when the value is scored: integer sums are exact and
    associative, so a batch's prefix sums give bit for bit the statistic that adding one event at a
    time gives, however the events are split into batches. The rounding (2·10⁻¹⁰ σ) is far below
    anything the calibration resolves."""

    threshold = 1.0  # the score is max(S/h) over the charts
    takes_residuals = False  # the performance detector of a card with residuals takes y − ŷ, not |y − ŷ|

    def __init__(self, name: str, kind: str, feature: str | None, charts: list[Chart], streams: int = 1):
        self.name, self.kind, self.feature = name, kind, feature
        self.charts = charts
        self.ks = np.array([chart.k for chart in charts], dtype=float)
        self.streams = streams
        self.events = 0
        size = len(charts)
        # one stream: plain lists, cheapest for one event at a time
        self._statistic = [0] * size  # fixed point
        self._run_events = [0] * size  # values since the chart last stood at 0
        self._run_total = [0.0] * size  # their total (the value, or the indicator), added in order
        self._raised = False
        self._recent: deque = deque(maxlen=RECENT_VALUES)
        self._summed = self._counting = np.zeros(0, dtype=np.int64)  # charts adding up values / 0s and 1s
        self._chart_index = np.arange(size)
        self.bank = ChartBank(size, streams) if streams > 1 else None  # many streams
        self.set_thresholds([math.inf] * size)

    # calibration
    def in_control(self, chart: Chart) -> tuple[ScoreDistribution, int]:
        """The chart's in-control scores (before its sign) and the reference's sample size."""
        raise NotImplementedError

    def set_thresholds(self, thresholds: Iterable[float]) -> None:
        self.thresholds = np.array(list(thresholds), dtype=float)
        self._limit = _fixed_limits(self.thresholds)  # S ≥ h ⇔ fixed S ≥ ⌈h·FIXED_POINT⌉
        self._resolve_at = _fixed_limits(RESOLVE_FRACTION * self.thresholds)
        self._limits, self._resolves = self._limit.tolist(), self._resolve_at.tolist()
        self._scored = [(chart, h) for chart, h in enumerate(self.thresholds.tolist()) if math.isfinite(h)]

    @property
    def raised(self) -> np.ndarray:
        """Per stream, whether an episode is open."""
        return self.bank.raised if self.bank is not None else np.array([self._raised])

    # one stream, one event
    def update(self, value: Any) -> Decision | None:
        """Takes one value (None or NaN when missing); returns a Decision when an episode starts or ends."""
        self._one_stream()
        self.events += 1
        increments, raws = self._take_one(value)
        statistic, run_events, run_total = self._statistic, self._run_events, self._run_total
        for chart, increment in enumerate(increments):
            if increment is None:  # the chart doesn't take this event (a missing value)
                continue
            level = statistic[chart] + increment
            if level > 0:
                statistic[chart] = level
                run_events[chart] += 1
                run_total[chart] += raws[chart]
            else:
                statistic[chart], run_events[chart], run_total[chart] = 0, 0, 0.0
        if not self._raised:
            if any(map(operator.ge, statistic, self._limits)):
                return self._flip()
            return None
        if all(map(operator.lt, statistic, self._resolves)):
            return self._flip()
        self._statistic = list(map(min, statistic, self._limits))
        return None

    @property
    def score(self) -> float:
        statistic = self._statistic
        return max((statistic[chart] / FIXED_POINT / h for chart, h in self._scored), default=0.0)

    # one stream, many events
    def update_batch(self, values: Sequence[Any] | np.ndarray) -> list[Decision]:
        """Takes consecutive values of the stream at once; returns the Decisions, in order, that
        update() value by value would have returned, and leaves the same state.

        Vectorised: while no episode is open, the charts' statistics over the batch follow from
        their prefix sums C (S_t = C_t − min(−S_0, min_{s≤t} C_s)); an open episode holds each chart
        at its threshold, S_t = min(h, max(0, S_{t−1} + x_t)), a composition of clamps computed by
        doubling. The batch is cut at each raise and resolve, which are decided as update() does."""
        self._one_stream()
        if not hasattr(values, "__len__"):
            values = list(values)
        if len(values) < SMALL_BATCH:
            return [decision for decision in map(self.update, values) if decision is not None]
        decisions = []
        for start in range(0, len(values), CHUNK):
            decisions += self._update_chunk(values[start:start + CHUNK])
        return decisions

    def _update_chunk(self, values) -> list[Decision]:
        batch = self._prepare(values)
        decisions = []
        start = 0
        while start < batch.size:
            levels, decided = self._walk(batch.increments[start:])
            end = start + len(levels)
            self._commit(batch, start, levels)
            if decided:
                decisions.append(self._flip())
            start = end
        return decisions

    def _walk(self, increments: np.ndarray) -> tuple[np.ndarray, bool]:
        """The statistics after each event (rows), up to the first that raises or resolves (and
        whether one did)."""
        start = np.array(self._statistic, dtype=np.int64)
        prefix = np.cumsum(increments, axis=0)
        if not self._raised:
            lowest = np.minimum.accumulate(prefix, axis=0)
            np.minimum(lowest, -start, out=lowest)
            levels = prefix - lowest
            reached = levels >= self._limit
            if reached.any():
                end = int(reached.any(axis=1).argmax())
                return levels[:end + 1], True
            return levels, False
        levels = _clamped_walk(start, prefix, self._limit)
        resolved = (levels < self._resolve_at).all(axis=1)
        if resolved.any():
            end = int(resolved.argmax())
            return levels[:end + 1], True
        return levels, False

    def _commit(self, batch: _Batch, start: int, levels: np.ndarray) -> None:
        """The state after the events start … start + len(levels) − 1 of the batch: the statistics,
        and per chart the values since it last stood at 0, as update() counts and adds them."""
        rows = len(levels)
        end = start + rows
        charts = self._chart_index
        # The event each chart last stood at 0 (at an event a chart doesn't take, it stood at 0 since
        # the last one it took, or since before the batch, with nothing counted: the same run).
        at_zero = levels[::-1] == 0
        back = at_zero.argmax(axis=0)  # events after it
        restarted = at_zero[back, charts]
        last = rows - 1 - back
        if batch.active is None:
            run_events = np.where(restarted, back, np.array(self._run_events) + rows)
        else:
            taken = np.cumsum(batch.active[start:end], axis=0)
            run_events = np.where(restarted, taken[-1] - taken[last, charts], np.array(self._run_events) + taken[-1])
        totals = np.where(restarted, 0.0, np.array(self._run_total, dtype=float))
        if batch.indicator is not None:  # counting charts: sums of 0s and 1s are exact in any order
            hits = np.cumsum(batch.indicator[start:end], axis=0)
            counted = np.where(restarted, hits[-1] - hits[last, charts], hits[-1])
            totals[self._counting] += counted[self._counting]
        totals = totals.tolist()
        if batch.raw is not None and self._summed.size:  # value charts: their values added one by one, in order
            first = last + 1 if batch.present is None else \
                np.searchsorted(np.flatnonzero(batch.present[start:end]), last, side="right")
            for chart, source, again, begin in zip(self._summed_list, self._summed_sources_list,
                                                   restarted[self._summed].tolist(), first[self._summed].tolist()):
                values = batch.present_values(source, start, end)
                totals[chart] = reduce(operator.add, values[begin:] if again else values, totals[chart])
        self._statistic = levels[-1].tolist()
        self._run_events = run_events.tolist()
        self._run_total = totals
        self.events += rows
        if batch.recent is not None:
            kept = batch.recent[start:end]
            if batch.present is not None:
                kept = kept[batch.present[start:end]]
            self._recent.extend(kept[-RECENT_VALUES:].tolist())

    def _flip(self) -> Decision:
        """Opens or closes the episode at the current event; a raised detector's charts are then held
        at their thresholds, so that they fall back within about 0.8·h/k events of the stream's
        return, however long the episode was. A resolved one's charts restart from 0, as they
        started: the false-alarm rate is calibrated on run lengths from 0, and charts left just
        under RESOLVE_FRACTION of their thresholds would raise again sooner than that."""
        self._raised = not self._raised
        decision = Decision(RAISED if self._raised else RESOLVED, self.kind, self.feature, self.events,
                            round(self.score, 4), self.threshold, self.explain())
        if self._raised:
            self._statistic = list(map(min, self._statistic, self._limits))
        else:
            size = len(self._statistic)
            self._statistic, self._run_events, self._run_total = [0] * size, [0] * size, [0.0] * size
        return decision

    def _one_stream(self) -> None:
        if self.bank is not None:
            raise TypeError(f"detector {self.name} runs {self.streams} streams at once: use update_many")

    # many streams
    def update_many(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        if self.bank is None:
            decision = self.update(values[0])
            return np.array([0 if decision is None else 1 if decision.state == RAISED else -1], dtype=np.int8)
        self.events += 1
        return self.bank.step(self._prepare(values).increments, self._limit, self._resolve_at)

    # what each kind of detector makes of its values
    def _take_one(self, value: Any) -> tuple[list, list]:
        """(increments, raw values) of one event, one per chart (increment None: the chart doesn't
        take it), remembering what `recent` keeps."""
        raise NotImplementedError

    def _prepare(self, values: Sequence[Any] | np.ndarray) -> _Batch:
        raise NotImplementedError

    # the explanation
    def _ratios(self) -> np.ndarray:
        ratios = np.zeros(len(self.charts))
        for chart, h in self._scored:
            ratios[chart] = self._statistic[chart] / FIXED_POINT / h
        return ratios

    def explain(self) -> dict:
        """Why the score is what it is: the leading chart, the reference, the recent values."""
        ratios = self._ratios()
        index = int(np.argmax(ratios))
        chart = self.charts[index]
        events = int(self._run_events[index])
        total = float(self._run_total[index])
        return {
            "detector": self.name, "kind": self.kind, "feature": self.feature,
            "state": RAISED if self._raised else "normal", "events": self.events,
            "score": round(float(ratios.max(initial=0.0)), 4), "threshold": self.threshold,
            "chart": {"channel": chart.channel, "direction": chart.direction, "k": chart.k,
                      "statistic": round(self._statistic[index] / FIXED_POINT, 4),
                      "threshold": round(float(self.thresholds[index]), 4)},
            "since": {"from_event": self.events - events + 1, "events": events,
                      **self._since_summary(chart, events, total)},
            "reference": self._reference_summary(chart),
            "recent": self._recent_summary(),
        }

    def _since_summary(self, chart: Chart, events: int, total: float) -> dict:
        raise NotImplementedError

    def _reference_summary(self, chart: Chart) -> dict:
        """The reference of what `chart` watches."""
        raise NotImplementedError

    def _recent_summary(self) -> dict:
        raise NotImplementedError

    # the state
    def to_state(self) -> dict:
        """Everything needed to carry on after a restart, as JSON: the configuration, the
        thresholds (no recalibration) and the statistics of the (single) stream."""
        return {"format": STATE_FORMAT, "type": type(self).__name__, "config": self._config(),
                "thresholds": [None if math.isinf(h) else h for h in self.thresholds.tolist()],
                "raised": self._raised, "events": self.events,
                "charts": {"statistic": [level / FIXED_POINT for level in self._statistic],
                           "run_events": list(self._run_events), "run_total": list(self._run_total)},
                "recent": {"values": list(self._recent)}}

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> Detector:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown detector state format {state.get('format')!r}")
        types = {cls.__name__: cls for cls in (NumericDetector, CategoricalDetector, PerformanceDetector)}
        detector = types[state["type"]](**state["config"])
        if len(state["thresholds"]) != len(detector.charts):
            raise ValueError(f"the state has {len(state['thresholds'])} charts, the detector {len(detector.charts)}")
        detector.set_thresholds(math.inf if h is None else h for h in state["thresholds"])
        detector._raised = bool(state["raised"])
        detector.events = int(state["events"])
        charts = state["charts"]
        detector._statistic = [_fixed(float(level)) for level in charts["statistic"]]  # exact: a multiple of 2⁻³²
        detector._run_events = [int(events) for events in charts["run_events"]]
        detector._run_total = [float(total) for total in charts["run_total"]]
        recent = state.get("recent")
        if isinstance(recent, Mapping):  # before batches, `recent` was an average; it starts afresh
            detector._recent.extend(recent.get("values", []))
        return detector

    def copy_for(self, streams: int) -> Detector:
        """The same detector, thresholds included, fresh, on `streams` streams at once."""
        detector = type(self)(**self._config(), streams=streams)
        detector.set_thresholds(self.thresholds)
        return detector

    def _config(self) -> dict:
        raise NotImplementedError


def _fixed_limits(thresholds: np.ndarray) -> np.ndarray:
    finite = np.isfinite(thresholds)
    fixed = np.minimum(np.ceil(np.where(finite, thresholds, 0.0) * FIXED_POINT), NEVER)
    return np.where(finite, fixed, NEVER).astype(np.int64)


def _clamped_walk(start: np.ndarray, prefix: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """S_t = min(limit, max(0, S_{t−1} + x_t)) for every t, from S_0 = `start` and the prefix sums of x.

    Each step is a clamp, s ↦ clamp(s + x, 0, limit), and clamps compose into a clamp:
    clamp(clamp(s + a, l₁, h₁) + b, l₂, h₂) = clamp(s + a + b, clamp(l₁ + b, l₂, h₂), clamp(h₁ + b, l₂, h₂)).
    Doubling (Hillis–Steele) composes the steps up to every t in ⌈log₂ T⌉ rounds; integers, so exact."""
    events = len(prefix)
    low = np.zeros_like(prefix)
    high = np.broadcast_to(limit, prefix.shape).copy()
    span = 1
    while span < events:
        moved = prefix[span:] - prefix[:-span]  # what the later span adds
        low_before, high_before = low[:-span] + moved, high[:-span] + moved
        new_low = np.clip(low_before, low[span:], high[span:])
        high[span:] = np.clip(high_before, low[span:], high[span:])
        low[span:] = new_low
        span *= 2
    return np.clip(start + prefix, low, high)


def _sums_in_order(raw: np.ndarray, sources: np.ndarray, first: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Per chart c: initial[c] + raw[sources[c], first[c]] + raw[sources[c], first[c] + 1] + …, added
    left to right as update() adds them: short runs as one table (np.add.accumulate is sequential,
    and −0.0 pads exactly), long ones one by one (reduce), so the work is the runs' length."""
    events = raw.shape[1]
    totals = initial.copy()
    width = events - first
    short = np.flatnonzero(width <= SHORT_RUN)
    if short.size:
        span = int(width[short].max())
        if span:
            index = first[short, None] + np.arange(span)
            taken = raw[sources[short, None], np.minimum(index, events - 1)]
            table = np.concatenate([initial[short, None], np.where(index < events, taken, -0.0)], axis=1)
            totals[short] = np.add.accumulate(table, axis=1)[:, -1]
    long = np.flatnonzero(width > SHORT_RUN)
    if long.size:
        rows = {}
        for chart in long.tolist():
            source = int(sources[chart])
            if source not in rows:
                rows[source] = raw[source].tolist()
            totals[chart] = reduce(operator.add, rows[source][int(first[chart]):], float(initial[chart]))
    return totals


@dataclass(frozen=True)
class Source:
    """A number a NumericDetector scores: its channel, reference, scale, the sides watched, and
    whether the value's absolute value is what is scored (the error of a residual)."""

    channel: str
    stats: Mapping[str, Any]
    scale: Any
    sides: tuple[str, ...]
    absolute: bool = False


def _scale_for(stats: Mapping[str, Any], method: str):
    if not _has_values(stats):
        return None
    scale = SCALES[method] if stats.get("std") else NormalScores  # a constant column can't be standardised
    return scale(stats)


class NumericDetector(Detector):
    """A number's distribution: up and down charts on its score (`sides=("up",)` for
    performance), and up-charts on its missing rate."""

    def __init__(self, name: str, kind: str, stats: Mapping[str, Any], *, feature: str | None = None,
                 sides: Sequence[str] = ("up", "down"), method: str = DEFAULT_METHOD,
                 watch_missing: bool = True, shifts: Sequence[float] = SHIFTS, streams: int = 1):
        self.stats = dict(stats)
        self.sides, self.method, self.watch_missing, self.shifts = tuple(sides), method, watch_missing, tuple(shifts)
        self.scale = _scale_for(stats, method)
        self.sources = [source for source in self._sources() if source.scale is not None]
        charts = [Chart(source.channel, UP if side == "up" else DOWN, shift / 2)
                  for source in self.sources for shift in self.shifts for side in source.sides]
        self.missing_rate = _floor_rate(stats["missing_rate"], stats["count"])
        if watch_missing:  # one chart: a rare indicator's charts all fire on the same few hits, whatever k
            charts.append(Chart(MISSING, UP, max(self.shifts) / 2))
        super().__init__(name, kind, feature, charts, streams)
        self._lay_out()

    def _sources(self) -> list[Source]:
        return [Source(VALUE, self.stats, self.scale, self.sides)]

    def _lay_out(self) -> None:
        """Each chart's fixed-point increment: −k + sign·score for a value chart; for a missing-rate
        chart, its standardised indicator − k, when the value is there and when it is missing."""
        p = self.missing_rate
        sigma = math.sqrt(p * (1 - p))
        position = {source.channel: index for index, source in enumerate(self.sources)}
        missing = [chart.channel == MISSING for chart in self.charts]
        base = [_fixed(-p / sigma - chart.k) if gone else _fixed(-chart.k) for chart, gone in zip(self.charts, missing)]
        signs = [0 if gone else chart.sign for chart, gone in zip(self.charts, missing)]
        sources = [0 if gone else position[chart.channel] for chart, gone in zip(self.charts, missing)]
        when_missing = [_fixed((1 - p) / sigma - chart.k) if gone else 0 for chart, gone in zip(self.charts, missing)]
        self._missing_chart = np.array(missing, dtype=bool)
        self._base, self._signs = np.array(base, dtype=np.int64), np.array(signs, dtype=np.int64)
        self._source_of_chart = np.array(sources, dtype=np.int64)
        self._when_missing = np.array(when_missing, dtype=np.int64)
        self._summed = np.flatnonzero(~self._missing_chart)  # charts whose runs add up values
        self._counting = np.flatnonzero(self._missing_chart)  # and those adding up missing indicators
        self._summed_sources = self._source_of_chart[self._summed]
        self._summed_list, self._summed_sources_list = self._summed.tolist(), self._summed_sources.tolist()
        # one event at a time
        self._present_terms = list(zip(base, signs, sources))
        self._missing_step = [step if gone else None for step, gone in zip(when_missing, missing)]
        self._missing_raws = [1.0 if gone else 0.0 for gone in missing]
        self._raw_source = [None if gone else source for source, gone in zip(sources, missing)]
        self._source_index = position

    def in_control(self, chart: Chart) -> tuple[ScoreDistribution, int]:
        if chart.channel == MISSING:
            return ScoreDistribution.two_point(self.missing_rate), self.stats["count"]
        scale = self.sources[self._source_index[chart.channel]].scale
        count = scale.count
        tail = 0.5 / (count + 1)  # a value past either end of the reference's range
        scores = np.concatenate([scale.in_control(), [-Z_CAP, Z_CAP]])
        weights = np.concatenate([np.full(GRID_POINTS, (1 - 2 * tail) / GRID_POINTS), [tail, tail]])
        return ScoreDistribution(scores, weights), count

    def _take_one(self, value):
        if value is None or not math.isfinite(value):
            return self._missing_step, self._missing_raws
        value = float(value)
        self._recent.append(value)
        columns = [abs(value) if source.absolute else value for source in self.sources]
        levels = [_fixed(source.scale.score(column)) for source, column in zip(self.sources, columns)]
        increments = [base + sign * levels[source] for base, sign, source in self._present_terms]
        return increments, [0.0 if source is None else columns[source] for source in self._raw_source]

    def _prepare(self, values) -> _Batch:
        numbers = np.asarray(values, dtype=float)
        present = np.isfinite(numbers)
        complete = bool(present.all())
        known = numbers if complete else np.where(present, numbers, 0.0)
        columns = [np.abs(known) if source.absolute else known for source in self.sources]
        if len(columns) == 1:
            increments = self._base + self._signs * self.sources[0].scale.fixed_scores(known)[:, None]
        elif columns:
            levels = np.column_stack([source.scale.fixed_scores(column)
                                      for source, column in zip(self.sources, columns)])
            increments = self._base + self._signs * levels[:, self._source_of_chart]
        else:  # no values in the reference: only the missing rate is watched
            increments = np.broadcast_to(self._base, (len(numbers), len(self.charts))).copy()
        raw = columns or None
        if complete:
            return _Batch(increments, raw=raw, recent=numbers)
        increments[~present] = self._when_missing
        active = present[:, None] | self._missing_chart
        indicator = ~present[:, None] & self._missing_chart if self._missing_chart.any() else None
        return _Batch(increments, active=active, present=present, raw=raw, indicator=indicator, recent=numbers)

    def _since_summary(self, chart: Chart, events: int, total: float) -> dict:
        if chart.channel == MISSING:
            return {"missing_rate": round(total / events, 4) if events else None}
        return {"mean": total / events if events else None}

    def _reference_summary(self, chart: Chart) -> dict:
        return _numeric_summary(self.stats)

    def _recent_summary(self) -> dict:
        values = list(self._recent)
        source = self.sources[0] if self.sources else None
        watched = [abs(value) for value in values] if source is not None and source.absolute else values
        return {"mean": math.fsum(watched) / len(watched) if watched else None, "events": len(values)}

    def _config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stats": self.stats, "feature": self.feature,
                "sides": list(self.sides), "method": self.method, "watch_missing": self.watch_missing,
                "shifts": list(self.shifts)}


class PerformanceDetector(NumericDetector):
    """A regressor's errors when the card has its held-out residuals: takes the signed residual
    y − ŷ. Up-charts on |y − ŷ| standardised by the held-out errors (a model that gets worse; one
    that gets better is never an alarm), and up and down charts on y − ŷ standardised by the
    held-out residuals (a bias either way is a degradation)."""

    takes_residuals = True

    def __init__(self, name: str, kind: str, stats: Mapping[str, Any], residual_stats: Mapping[str, Any], *,
                 method: str = DEFAULT_METHOD, shifts: Sequence[float] = SHIFTS, streams: int = 1):
        self.residual_stats = dict(residual_stats)
        super().__init__(name, kind, stats, sides=("up",), method=method, watch_missing=False, shifts=shifts,
                         streams=streams)

    def _sources(self) -> list[Source]:
        return [Source(VALUE, self.stats, self.scale, ("up",), absolute=True),
                Source(RESIDUAL, self.residual_stats, _scale_for(self.residual_stats, self.method), ("up", "down"))]

    def _reference_summary(self, chart: Chart) -> dict:
        """The residuals' reference for a residual chart (the errors' nested), else the other way round."""
        errors, residuals = _numeric_summary(self.stats), _numeric_summary(self.residual_stats)
        return {**residuals, "errors": errors} if chart.channel == RESIDUAL else {**errors, "residuals": residuals}

    def _recent_summary(self) -> dict:
        values = list(self._recent)
        return {**super()._recent_summary(), "residual_mean": math.fsum(values) / len(values) if values else None}

    def _config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stats": self.stats, "residual_stats": self.residual_stats,
                "method": self.method, "shifts": list(self.shifts)}


def _numeric_summary(stats: Mapping[str, Any]) -> dict:
    summary = {key: stats.get(key) for key in ("count", "mean", "std", "missing_rate")}
    quantiles = stats["quantiles"]
    summary["quantiles"] = dict(zip([str(p) for p in quantiles["probabilities"]], quantiles["values"]))
    return summary


class CategoricalDetector(Detector):
    """Category frequencies: an up-chart per category's standardised indicator (the reference's
    categories, one for a category it never saw, one for a missing value)."""

    def __init__(self, name: str, kind: str, stats: Mapping[str, Any], *, feature: str | None = None,
                 shifts: Sequence[float] = SHIFTS, max_categories: int = MAX_CATEGORIES, streams: int = 1):
        self.stats, self.shifts, self.max_categories = dict(stats), tuple(shifts), max_categories
        self.channels, probabilities = _category_channels(stats, max_categories)
        self.probabilities = np.array(probabilities)
        self.index = {channel: position for position, channel in enumerate(self.channels)}
        self.catch_all = self.index[OTHER if OTHER in self.index else UNSEEN]
        charts = [Chart(channel, UP, shift / 2) for shift in self.shifts for channel in self.channels]
        super().__init__(name, kind, feature, charts, streams)
        sigma = np.sqrt(self.probabilities * (1 - self.probabilities))
        self.chart_channels = np.array([self.index[chart.channel] for chart in charts])
        p = self.probabilities[self.chart_channels]
        self._when_hit = _fixed_array((1 - p) / sigma[self.chart_channels] - self.ks)
        self._when_not = _fixed_array(-p / sigma[self.chart_channels] - self.ks)
        self._terms = list(zip(self.chart_channels.tolist(), self._when_hit.tolist(), self._when_not.tolist()))
        self._counting = np.arange(len(charts))

    def in_control(self, chart: Chart) -> tuple[ScoreDistribution, int]:
        return ScoreDistribution.two_point(float(self.probabilities[self.index[chart.channel]])), self.stats["count"]

    def channel_of(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.index[MISSING]
        return self.index.get(value if isinstance(value, str) else label_key(value), self.catch_all)

    def _take_one(self, value):
        position = self.channel_of(value)
        self._recent.append(position)
        return ([hit if channel == position else miss for channel, hit, miss in self._terms],
                [1.0 if channel == position else 0.0 for channel, _, _ in self._terms])

    def _prepare(self, values) -> _Batch:
        positions = np.array([self.channel_of(value) for value in values], dtype=np.int64)
        hit = positions[:, None] == self.chart_channels
        return _Batch(np.where(hit, self._when_hit, self._when_not), indicator=hit, recent=positions)

    def _since_summary(self, chart: Chart, events: int, total: float) -> dict:
        return {"category": chart.channel, "frequency": round(total / events, 4) if events else None,
                "reference_frequency": round(float(self.probabilities[self.index[chart.channel]]), 4)}

    def _reference_summary(self, chart: Chart) -> dict:
        return {"count": self.stats["count"], "missing_rate": self.stats["missing_rate"],
                "frequencies": dict(zip(self.channels, np.round(self.probabilities, 4).tolist()))}

    def _recent_summary(self) -> dict:
        counts = np.bincount(np.array(self._recent, dtype=np.int64), minlength=len(self.channels))
        shares = counts / max(1, len(self._recent))
        return {"frequencies": dict(zip(self.channels, np.round(shares, 4).tolist())), "events": len(self._recent)}

    def _config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stats": self.stats, "feature": self.feature,
                "shifts": list(self.shifts), "max_categories": self.max_categories}


def _category_channels(stats: Mapping[str, Any], max_categories: int) -> tuple[list[str], list[float]]:
    """The channels and their probabilities per event (missing included): the most frequent
    categories, the rest pooled under OTHER, and UNSEEN and MISSING at no less than a floor."""
    count, missing = stats["count"], stats["missing_rate"]
    frequencies = dict(stats["frequencies"])
    other = frequencies.pop(OTHER, 0.0)
    ranked = sorted(frequencies.items(), key=lambda item: -item[1])
    kept, pooled = ranked[:max_categories], ranked[max_categories:]
    other += sum(share for _, share in pooled)
    channels = [category for category, _ in kept]
    shares = [share for _, share in kept]
    if other > 0:
        channels.append(OTHER)
        shares.append(other)
    else:  # a category the reference never saw: as likely as one more row would make it
        channels.append(UNSEEN)
        shares.append(_floor_rate(0.0, count))
    present = 1 - missing
    probabilities = [share * present for share in shares]
    channels.append(MISSING)
    probabilities.append(_floor_rate(missing, count))
    total = sum(probabilities)
    return channels, [p / total for p in probabilities]


def _floor_rate(rate: float, count: int) -> float:
    """A rate the reference estimated from `count` values, never 0 (nor 1): one more value could
    have been the event, so at least 1/(2(count + 1))."""
    floor = 0.5 / (count + 1)
    return min(max(rate, floor), 1 - floor)


# --- building and calibrating ---------------------------------------------------------------------

def detectors_for(reference: Mapping[str, Any], *, false_alarms_per_100k: float = DEFAULT_FALSE_ALARMS_PER_100K,
                  reference_margin: float = DEFAULT_REFERENCE_MARGIN, method: str = DEFAULT_METHOD,
                  shifts: Sequence[float] = SHIFTS, residuals: bool = False) -> list[Detector]:
    """One detector per feature, the predictions, the target and the errors, from the card's
    `reference`, calibrated together to `false_alarms_per_100k`.

    `residuals=True`: when the card has reference["residuals"] (a regressor's, from learn_model),
    the performance detector is a PerformanceDetector, which takes the signed residual y − ŷ
    (`takes_residuals`) and watches a bias either way besides the absolute error. Otherwise (the
    default, a classifier, or an older card) it takes the absolute error, as the metric service logs it."""
    detectors = [_distribution_detector(f"feature.{name}", FEATURE_DRIFT, stats, name, method, shifts)
                 for name, stats in reference["features"].items()]
    detectors.append(_distribution_detector("prediction", PREDICTION_DRIFT, reference["predictions"], None, method, shifts))
    detectors.append(_distribution_detector("target", TARGET_DRIFT, reference["target"], None, method, shifts))
    if _has_values(reference["errors"]):
        residual_stats = reference.get("residuals") if residuals else None
        if residual_stats and _has_values(residual_stats):
            detectors.append(PerformanceDetector("performance", PERFORMANCE, reference["errors"], residual_stats,
                                                 method=method, shifts=shifts))
        else:
            detectors.append(NumericDetector("performance", PERFORMANCE, reference["errors"], sides=("up",),
                                             method=method, watch_missing=False, shifts=shifts))
    calibrate(detectors, false_alarms_per_100k, reference_margin)
    return detectors


def _distribution_detector(name: str, kind: str, stats: Mapping[str, Any], feature: str | None, method: str,
                           shifts: Sequence[float]) -> Detector:
    if stats["kind"] == "categorical":
        return CategoricalDetector(name, kind, stats, feature=feature, shifts=shifts)
    return NumericDetector(name, kind, stats, feature=feature, method=method, shifts=shifts)


class DetectorSet:
    """Detectors fed together, a batch of events as columns: {detector name: its values, in event
    order}. Returns (detector, decision) pairs, detector by detector in the set's order, each
    detector's in event order: exactly what each detector's update() value by value gives.

    The numeric detectors on standardised scores whose columns are complete and whose episodes are
    closed go through one vectorised pass together (rows: all their charts); any of them whose
    charts reach a threshold in the batch, and every other detector, then runs its own
    update_batch from where it was."""

    def __init__(self, detectors: Iterable[Detector]):
        self.detectors = list(detectors)
        self.by_name = {detector.name: detector for detector in self.detectors}
        self._layouts: dict[tuple[str, ...], _FusedLayout] = {}

    def update_batch(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> list[tuple[Detector, Decision]]:
        fed = [(detector, columns[detector.name]) for detector in self.detectors if detector.name in columns]
        longest = max((len(values) for _, values in fed), default=0)
        if longest < SMALL_BATCH:  # one event at a time anyway
            return [(detector, decision) for detector, values in fed for decision in detector.update_batch(values)]
        decided: dict[str, list[Decision]] = {detector.name: [] for detector, _ in fed}
        for start in range(0, longest, CHUNK):
            chunk = [(detector, values[start:start + CHUNK]) for detector, values in fed]
            by_length: dict[int, list] = {}
            for detector, values in chunk:
                if len(values) >= SMALL_BATCH and _fusable(detector) and not detector._raised:
                    by_length.setdefault(len(values), []).append((detector, values))
            done = set().union(*(self._update_together(group) for group in by_length.values() if len(group) > 1))
            for detector, values in chunk:
                if detector.name not in done and len(values):
                    decided[detector.name] += detector.update_batch(values)
        return [(detector, decision) for detector, _ in fed for decision in decided[detector.name]]

    def _update_together(self, fed: list[tuple[Detector, Any]]) -> set[str]:
        """One vectorised pass over the columns; commits, and returns the names of, the detectors
        that neither lack a value nor reach a threshold in it (the others are left as they were)."""
        numbers = np.array([values for _, values in fed], dtype=float)
        complete = np.isfinite(numbers).all(axis=1)
        if not complete.all():
            fed = [pair for pair, whole in zip(fed, complete.tolist()) if whole]
            numbers = numbers[complete]
            if not fed:
                return set()
        detectors = [detector for detector, _ in fed]
        key = tuple(detector.name for detector in detectors)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = _FusedLayout(detectors)
        committed = layout.run(numbers)
        return {detector.name for detector, kept in zip(detectors, committed) if kept}

    def to_state(self) -> list[dict]:
        return [detector.to_state() for detector in self.detectors]

    @classmethod
    def from_state(cls, states: Iterable[Mapping[str, Any]]) -> DetectorSet:
        return cls(Detector.from_state(state) for state in states)


def _fusable(detector: Detector) -> bool:
    return (isinstance(detector, NumericDetector) and detector.bank is None and bool(detector.sources)
            and all(isinstance(source.scale, StandardisedScores) for source in detector.sources))


class _FusedLayout:
    """Numeric detectors' value charts side by side (rows: charts, columns: events), for DetectorSet.

    On complete columns a missing-rate chart adds the same negative increment every event, so it
    needs no pass: S_t = max(0, S_0 + t·increment)."""

    def __init__(self, detectors: list[NumericDetector]):
        self.detectors = detectors
        sources = [(row, source) for row, detector in enumerate(detectors) for source in detector.sources]
        self.source_rows = np.array([row for row, _ in sources])
        self.absolute = np.array([source.absolute for _, source in sources])
        self.means = np.array([[source.scale.mean] for _, source in sources])
        self.stds = np.array([[source.scale.std] for _, source in sources])
        first_source = np.cumsum([0] + [len(detector.sources) for detector in detectors])[:-1]
        self.bounds = np.cumsum([0] + [len(detector.charts) for detector in detectors])
        offsets = self.bounds[:-1]
        self.values = np.concatenate([detector._summed + offset for detector, offset in zip(detectors, offsets)])
        self.value_bounds = np.cumsum([0] + [detector._summed.size for detector in detectors])[:-1]
        self.missing = np.concatenate([detector._counting + offset for detector, offset in zip(detectors, offsets)])
        base = np.concatenate([detector._base for detector in detectors])
        self.base = base[self.values][:, None]
        self.signs = np.concatenate([detector._signs for detector in detectors])[self.values][:, None]
        self.value_source = np.concatenate([detector._summed_sources + offset
                                            for detector, offset in zip(detectors, first_source)])
        self.missing_step = base[self.missing]
        self.rows = np.arange(self.values.size)

    def run(self, numbers: np.ndarray) -> list[bool]:
        """numbers: detectors × events, all finite. The recursion and bookkeeping of Detector._walk
        and _commit, transposed; commits the detectors whose charts reach no threshold, and says
        which."""
        detectors, values, missing = self.detectors, self.values, self.missing
        events = numbers.shape[1]
        raw = numbers[self.source_rows]
        if self.absolute.any():
            raw = np.where(self.absolute[:, None], np.abs(raw), raw)
        z = raw - self.means
        z /= self.stds
        np.maximum(z, -Z_CAP, out=z)
        np.minimum(z, Z_CAP, out=z)
        z *= FIXED_POINT
        increments = self.base + self.signs * np.rint(z, out=z).astype(np.int64)[self.value_source]
        start = np.array([level for detector in detectors for level in detector._statistic], dtype=np.int64)
        run_events = np.array([count for detector in detectors for count in detector._run_events])
        totals = np.array([total for detector in detectors for total in detector._run_total], dtype=float)
        limit = np.concatenate([detector._limit for detector in detectors])

        prefix = np.cumsum(increments, axis=1)
        lowest = np.minimum.accumulate(prefix, axis=1)
        np.minimum(lowest, -start[values, None], out=lowest)
        peak = (prefix - lowest).max(axis=1)
        crossed = np.logical_or.reduceat(peak >= limit[values], self.value_bounds).tolist()
        # S_t = 0 where the prefix sum is at its running minimum and at or below −S_0: the last
        # time is the last minimum of the whole batch, if that is low enough
        back = prefix[:, ::-1].argmin(axis=1)  # events after it
        restarted = prefix[self.rows, events - 1 - back] <= -start[values]
        statistic = start.copy()
        statistic[values] = prefix[:, -1] - lowest[:, -1]
        run_events[values] = np.where(restarted, back, run_events[values] + events)
        first = np.where(restarted, events - back, 0)
        totals[values] = _sums_in_order(raw, self.value_source, first, np.where(restarted, 0.0, totals[values]))
        if missing.size:
            after = start[missing] + self.missing_step * events
            statistic[missing] = np.maximum(after, 0)
            run_events[missing] = np.where(after > 0, run_events[missing] + events, 0)
            totals[missing] = np.where(after > 0, totals[missing], 0.0)  # + 0.0 per event

        statistic, run_events, totals = statistic.tolist(), run_events.tolist(), totals.tolist()
        recent = numbers[:, -RECENT_VALUES:].tolist()
        bounds = self.bounds
        for index, detector in enumerate(detectors):
            if crossed[index]:
                continue
            low, high = bounds[index], bounds[index + 1]
            detector._statistic = statistic[low:high]
            detector._run_events = run_events[low:high]
            detector._run_total = totals[low:high]
            detector.events += events
            detector._recent.extend(recent[index])
        return [not crossed_ for crossed_ in crossed]


def calibrate(detectors: Sequence[Detector], false_alarms_per_100k: float = DEFAULT_FALSE_ALARMS_PER_100K,
              reference_margin: float = DEFAULT_REFERENCE_MARGIN) -> None:
    """Sets every chart's threshold: the budget split evenly over the detectors (they watch nearly
    independent streams: a union bound), each detector's charts calibrated together so that the
    detector raises its share, against the least favourable population within `reference_margin`
    standard errors of its reference (calibration.joint_thresholds)."""
    if false_alarms_per_100k <= 0:
        raise ValueError("false_alarms_per_100k must be positive")
    per_detector = false_alarms_per_100k / 100_000 / len(detectors)
    for detector in detectors:
        groups = chart_groups(detector, reference_margin)
        found = joint_thresholds([group for _, group in groups], per_detector)
        thresholds = [math.inf] * len(detector.charts)
        for (charts, _), group_thresholds in zip(groups, found):
            for chart, h in zip(charts, group_thresholds):
                thresholds[chart] = h
        detector.set_thresholds(thresholds)


def chart_groups(detector: Detector, margin: float) -> list[tuple[list[int], ChartGroup]]:
    """The detector's charts by what they add up (channel and direction), with their in-control
    signed scores under the least favourable population, and under the one least favourable to
    the channel's other direction."""
    members: dict[tuple[str, int], list[int]] = {}
    for index, chart in enumerate(detector.charts):
        members.setdefault((chart.channel, chart.sign), []).append(index)
    groups = []
    for (channel, sign), charts in members.items():
        scores, count = detector.in_control(detector.charts[charts[0]])
        opposed = (channel, -sign) in members
        ks = tuple(detector.charts[chart].k for chart in charts)
        groups.append((charts, ChartGroup(channel, ks, least_favourable(scores, sign, count, margin),
                                          least_favourable(scores, sign, count, margin, towards=-1) if opposed else None,
                                          tuple(RUN_LENGTH_SPANS.get(round(2 * k, 9), 1.0) for k in ks))))
    return groups


def least_favourable(scores: ScoreDistribution, sign: int, count: int, margin: float,
                     towards: int = 1) -> ScoreDistribution:
    """The chart's signed scores under a live population `margin` standard errors of the reference
    away from it, towards an alarm (towards=−1: the mean moved the other way): the mean moved by
    margin/√n, the spread widened by margin/√(2n)."""
    signed = scores.values * sign
    if margin > 0:
        signed = signed * (1 + margin / math.sqrt(2 * count)) + towards * margin / math.sqrt(count)
    return ScoreDistribution(signed, scores.weights)
