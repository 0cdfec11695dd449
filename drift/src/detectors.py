"""Streaming drift and degradation detectors built from the model card's reference statistics
(mlmonitor.reference): O(1) per event per numeric feature, O(categories) per categorical one, a
few floats of state each, whatever the number of events.

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
  the standardised scores did not, with no faster detection (bench/drift.py measures both).
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
gets better is not an alarm.

Calibration
-----------
The false-alarm budget, `false_alarms_per_100k` for all detectors together, is split evenly over
the detectors and within each over its charts (Bonferroni: the charts of a detector fire together
in a real episode, so the union alarms less often than the sum). Each chart's threshold h gives it
that in-control run length from S = 0, computed exactly (calibration.py: Brook–Evans Markov chain)
on the score distribution that a stream drawn from the reference produces: its quantile function
(interpolated through the quantiles and histogram edges) at 4,000 evenly spaced probabilities,
scored like live values and, for the standardised scale, rescaled to mean 0 and variance 1 as the
reference sample's scores are, plus a value past each end of the reference's range with
probability 1/(2(n + 1)) each (the training sample's min and max are not the population's).
Calibrating the diabetes card's 13 detectors takes under a second; `false_alarms_per_100k` = 0.1,
1 or 10 moves the delay of a 0.25 σ shift between about 850, 700 and 550 events (bench/drift.py).

The reference is a sample of n rows, so a live stream from the same population differs from it by
about one standard error: the mean by 1/√n σ, the spread by 1/√(2n). A CUSUM tuned to small shifts
sees that as drift, and its false-alarm rate grows exponentially with the offset.
`reference_margin` (in standard errors) calibrates every chart against the least favourable live
population within that margin, so that the budget holds for any of them; 0 trusts the reference
as the population.

Alarms
------
A detector raises when any chart reaches its threshold and then stays raised, each chart held at
its threshold, until every chart has fallen below half of it (RESOLVE_FRACTION): one alert per
episode, resolved within about h/(2k) events of the stream returning to the reference. Its score is
max(S/h) over its charts, so its threshold is 1. An explanation names the chart that fired, the
reference, and the values since that chart last stood at 0 (the CUSUM's estimate of when the change
began): how many, their mean or the category's share among them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from calibration import ScoreDistribution, threshold
from mlmonitor.tasks import label_key

STATE_FORMAT = 1
SHIFTS = (0.25, 0.5, 1.0)  # the mean shifts, in reference σ, a chart is tuned to (k = δ/2)
Z_CAP = 3.5  # scores are clipped to ±Z_CAP: one outlier counts, but can't raise an alarm alone
GRID_POINTS = 4000  # evenly spaced probabilities at which the reference is sampled for calibration
RESOLVE_FRACTION = 0.5  # resolved once every chart is below this share of its threshold
RECENT_WEIGHT = 0.01  # EWMA weight of the recent values shown on the dashboard (≈ the last 100)
DEFAULT_FALSE_ALARMS_PER_100K = 1.0
DEFAULT_REFERENCE_MARGIN = 1.0
MAX_CATEGORIES = 20  # categories with an indicator of their own; the rarer ones share "__other__"
OTHER = "__other__"  # as in mlmonitor.reference
UNSEEN = "__unseen__"
MISSING = "__missing__"
UP, DOWN = 1, -1

FEATURE_DRIFT = "feature_drift"
PREDICTION_DRIFT = "prediction_drift"
TARGET_DRIFT = "target_drift"
PERFORMANCE = "performance"
RAISED, RESOLVED = "raised", "resolved"

_NORMAL = NormalDist()
NOT_ONE = np.zeros(1, dtype=bool)  # "not this one stream", for the one-stream shortcut


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

class ChartBank:
    """The CUSUM statistics of a detector's charts on one stream or many at once (rows: streams,
    columns: charts), with what each chart has seen since it last stood at 0: the number of values
    and their total (the value, or the indicator), for the explanation."""

    def __init__(self, charts: int, streams: int = 1):
        self.statistic = np.zeros((streams, charts))
        self.run_events = np.zeros((streams, charts), dtype=np.int64)
        self.run_total = np.zeros((streams, charts))

    def step(self, increments: np.ndarray, raw: np.ndarray, active: np.ndarray | None = None) -> None:
        """S = max(0, S + increment) where `active` (all by default); a chart back at 0 starts a new run."""
        if active is not None:
            return self._step_where(increments, raw, active)
        statistic = self.statistic
        statistic += increments  # in place: on one stream, the per-event cost is the number of numpy calls
        np.maximum(statistic, 0.0, out=statistic)
        running = statistic > 0
        self.run_events += 1
        self.run_events *= running
        self.run_total += raw
        self.run_total *= running

    def _step_where(self, increments: np.ndarray, raw: np.ndarray, active: np.ndarray) -> None:
        statistic = np.maximum(self.statistic + increments, 0.0)
        running = statistic > 0
        self.run_events = np.where(active, np.where(running, self.run_events + 1, 0), self.run_events)
        self.run_total = np.where(active, np.where(running, self.run_total + raw, 0.0), self.run_total)
        self.statistic = np.where(active, statistic, self.statistic)

    def to_state(self) -> dict:
        return {"statistic": self.statistic[0].tolist(), "run_events": self.run_events[0].tolist(),
                "run_total": self.run_total[0].tolist()}

    def load(self, state: Mapping[str, Any]) -> None:
        self.statistic = np.array([state["statistic"]], dtype=float)
        self.run_events = np.array([state["run_events"]], dtype=np.int64)
        self.run_total = np.array([state["run_total"]], dtype=float)


class Detector:
    """What every detector shares: charts, thresholds, the raised/resolved episode, the state.

    `update(value)` takes one event of the service's stream. `update_many(values)` takes one event of
    each of many independent streams at once (the benchmark's and the tests' simulations) and
    returns per stream 1 (raised), −1 (resolved) or 0; `streams` sets how many, at construction."""

    threshold = 1.0  # the score is max(S/h) over the charts

    def __init__(self, name: str, kind: str, feature: str | None, charts: list[Chart], streams: int = 1):
        self.name, self.kind, self.feature = name, kind, feature
        self.charts = charts
        self.ks = np.array([chart.k for chart in charts])
        self.thresholds = np.full(len(charts), math.inf)
        self.bank = ChartBank(len(charts), streams)
        self.raised = np.zeros(streams, dtype=bool)
        self.events = 0

    # calibration
    def in_control(self, chart: Chart) -> tuple[ScoreDistribution, int]:
        """The chart's in-control scores (before its sign) and the reference's sample size."""
        raise NotImplementedError

    def set_thresholds(self, thresholds: Iterable[float]) -> None:
        self.thresholds = np.array(list(thresholds), dtype=float)
        self._resolve_below = RESOLVE_FRACTION * self.thresholds

    # one stream
    def update(self, value: Any) -> Decision | None:
        """Takes one value (None or NaN when missing); returns a Decision when an episode starts or ends."""
        self.events += 1
        self._take(self._increments_one(value))
        return self._decide_one()

    @property
    def score(self) -> float:
        return float(self._ratios()[0].max(initial=0.0))

    # many streams
    def update_many(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        self.events += 1
        self._take(self._increments_many(values))
        raised, resolved = self._episodes()
        self._hold()
        return raised.astype(np.int8) - resolved.astype(np.int8)

    # the recursion
    def _increments_one(self, value: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(increments, raw values, active charts) of one event, each of shape (1, charts)."""
        raise NotImplementedError

    def _increments_many(self, values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _take(self, step: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
        self.bank.step(*step)

    def _ratios(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.isfinite(self.thresholds), self.bank.statistic / self.thresholds, 0.0)

    def _episodes(self) -> tuple[np.ndarray, np.ndarray]:
        """(streams that raise now, streams that resolve now)."""
        statistic = self.bank.statistic
        if self.raised.size == 1:  # one stream: look only at what can change
            if not self.raised[0]:
                raised = (statistic >= self.thresholds).any(axis=1)
                self.raised = raised
                return raised, NOT_ONE
            resolved = (statistic < self._resolve_below).all(axis=1)
            self.raised = ~resolved
            return NOT_ONE, resolved
        raised = ~self.raised & (statistic >= self.thresholds).any(axis=1)
        resolved = self.raised & (statistic < self._resolve_below).all(axis=1)
        self.raised = (self.raised | raised) & ~resolved
        return raised, resolved

    def _hold(self) -> None:
        """A raised stream's charts stay at their thresholds, so that they fall back within about
        h/(2k) events of the stream's return, however long the episode was."""
        if self.raised.any():
            held = np.minimum(self.bank.statistic, self.thresholds)
            self.bank.statistic = np.where(self.raised[:, None], held, self.bank.statistic)

    def _decide_one(self) -> Decision | None:
        raised, resolved = self._episodes()
        decision = None
        if raised[0] or resolved[0]:
            decision = Decision(RAISED if raised[0] else RESOLVED, self.kind, self.feature, self.events,
                                round(self.score, 4), self.threshold, self.explain())
        self._hold()
        return decision

    # the explanation
    def explain(self) -> dict:
        """Why the score is what it is: the leading chart, the reference, the recent values."""
        ratios = self._ratios()[0]
        index = int(np.argmax(ratios))
        chart = self.charts[index]
        events = int(self.bank.run_events[0, index])
        total = float(self.bank.run_total[0, index])
        return {
            "detector": self.name, "kind": self.kind, "feature": self.feature,
            "state": RAISED if self.raised[0] else "normal", "events": self.events,
            "score": round(float(ratios.max(initial=0.0)), 4), "threshold": self.threshold,
            "chart": {"channel": chart.channel, "direction": chart.direction, "k": chart.k,
                      "statistic": round(float(self.bank.statistic[0, index]), 4),
                      "threshold": round(float(self.thresholds[index]), 4)},
            "since": {"from_event": self.events - events + 1, "events": events,
                      **self._since_summary(chart, events, total)},
            "reference": self._reference_summary(),
            "recent": self._recent_summary(),
        }

    def _since_summary(self, chart: Chart, events: int, total: float) -> dict:
        raise NotImplementedError

    def _reference_summary(self) -> dict:
        raise NotImplementedError

    def _recent_summary(self) -> dict:
        raise NotImplementedError

    # the state
    def to_state(self) -> dict:
        """Everything needed to carry on after a restart, as JSON: the configuration, the
        thresholds (no recalibration) and the statistics of the (single) stream."""
        return {"format": STATE_FORMAT, "type": type(self).__name__, "config": self._config(),
                "thresholds": [None if math.isinf(h) else h for h in self.thresholds.tolist()],
                "raised": bool(self.raised[0]), "events": self.events, "charts": self.bank.to_state(),
                "recent": self._recent_state()}

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> Detector:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown detector state format {state.get('format')!r}")
        detector_type = {cls.__name__: cls for cls in (NumericDetector, CategoricalDetector)}[state["type"]]
        detector = detector_type(**state["config"])
        detector.set_thresholds(math.inf if h is None else h for h in state["thresholds"])
        detector.raised = np.array([bool(state["raised"])])
        detector.events = int(state["events"])
        detector.bank.load(state["charts"])
        detector._load_recent(state["recent"])
        return detector

    def copy_for(self, streams: int) -> Detector:
        """The same detector, thresholds included, fresh, on `streams` streams at once."""
        detector = type(self)(**self._config(), streams=streams)
        detector.set_thresholds(self.thresholds)
        return detector

    def _config(self) -> dict:
        raise NotImplementedError

    def _recent_state(self) -> Any:
        raise NotImplementedError

    def _load_recent(self, recent: Any) -> None:
        raise NotImplementedError


class NumericDetector(Detector):
    """A number's distribution: up and down charts on its normal score (`sides=("up",)` for
    performance), and up-charts on its missing rate."""

    def __init__(self, name: str, kind: str, stats: Mapping[str, Any], *, feature: str | None = None,
                 sides: Sequence[str] = ("up", "down"), method: str = DEFAULT_METHOD,
                 watch_missing: bool = True, shifts: Sequence[float] = SHIFTS, streams: int = 1):
        self.stats = dict(stats)
        self.sides, self.method, self.watch_missing, self.shifts = tuple(sides), method, watch_missing, tuple(shifts)
        scale = SCALES[method] if stats.get("std") else NormalScores  # a constant column can't be standardised
        self.scale = scale(stats) if _has_values(stats) else None
        signs = [UP if side == "up" else DOWN for side in self.sides]
        charts = [Chart("value", sign, shift / 2) for shift in self.shifts for sign in signs] if self.scale else []
        self.missing_rate = _floor_rate(stats["missing_rate"], stats["count"])
        if watch_missing:
            charts += [Chart(MISSING, UP, shift / 2) for shift in self.shifts]
        super().__init__(name, kind, feature, charts, streams)
        self.value_charts = np.array([chart.channel == "value" for chart in charts])
        self.signs = np.array([chart.sign if chart.channel == "value" else 0 for chart in charts], dtype=float)
        sigma = math.sqrt(self.missing_rate * (1 - self.missing_rate))
        missing_charts = ~self.value_charts
        self.when_missing = np.where(missing_charts, (1 - self.missing_rate) / sigma, 0.0) - self.ks
        self.when_present = np.where(missing_charts, -self.missing_rate / sigma, 0.0) - self.ks
        self.value_raw = self.value_charts.astype(float)  # what a chart's run adds up: the value,
        self.missing_raw = 1.0 - self.value_raw  # or the missing indicator
        start = stats["mean"] if _has_values(stats) else math.nan
        self.recent_mean = np.full(streams, start)  # EWMA of the present values, from the reference's mean

    def in_control(self, chart: Chart) -> tuple[ScoreDistribution, int]:
        if chart.channel == MISSING:
            return ScoreDistribution.two_point(self.missing_rate), self.stats["count"]
        count = self.scale.count
        tail = 0.5 / (count + 1)  # a value past either end of the reference's range
        scores = np.concatenate([self.scale.in_control(), [-Z_CAP, Z_CAP]])
        weights = np.concatenate([np.full(GRID_POINTS, (1 - 2 * tail) / GRID_POINTS), [tail, tail]])
        return ScoreDistribution(scores, weights), count

    def _increments_one(self, value):
        if value is None or not math.isfinite(value):
            return self.when_missing[None, :], self.missing_raw[None, :], self.missing_raw[None, :] > 0
        value = float(value)
        z = self.scale.score(value) if self.scale is not None else 0.0
        self.recent_mean += RECENT_WEIGHT * (value - self.recent_mean)
        return self.when_present + self.signs * z, self.value_raw * value, None

    def _increments_many(self, values):
        values = np.asarray(values, dtype=float)
        present = np.isfinite(values)
        if present.all() and self.scale is not None:  # the usual case, without the masks
            self.recent_mean += RECENT_WEIGHT * (values - self.recent_mean)
            return self.when_present + self.signs * self.scale.scores(values)[:, None], self.value_raw * values[:, None], None
        known = np.where(present, values, 0.0)
        z = self.scale.scores(known) if self.scale is not None else np.zeros(values.size)
        increments = np.where(present[:, None], self.when_present + self.signs * z[:, None], self.when_missing)
        raw = np.where(present[:, None], self.value_raw * known[:, None], self.missing_raw)
        self.recent_mean = np.where(present, self.recent_mean + RECENT_WEIGHT * (known - self.recent_mean), self.recent_mean)
        return increments, raw, present[:, None] | ~self.value_charts

    def _since_summary(self, chart: Chart, events: int, total: float) -> dict:
        if chart.channel == MISSING:
            return {"missing_rate": round(total / events, 4) if events else None}
        return {"mean": total / events if events else None}

    def _reference_summary(self) -> dict:
        summary = {key: self.stats.get(key) for key in ("count", "mean", "std", "missing_rate")}
        summary["quantiles"] = dict(zip([str(p) for p in self.stats["quantiles"]["probabilities"]],
                                        self.stats["quantiles"]["values"]))
        return summary

    def _recent_summary(self) -> dict:
        return {"mean": self._recent_state()}

    def _config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stats": self.stats, "feature": self.feature,
                "sides": list(self.sides), "method": self.method, "watch_missing": self.watch_missing,
                "shifts": list(self.shifts)}

    def _recent_state(self) -> Any:
        mean = float(self.recent_mean[0])
        return None if math.isnan(mean) else mean

    def _load_recent(self, recent: Any) -> None:
        self.recent_mean = np.array([math.nan if recent is None else float(recent)])


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
        self.when_absent = -p / sigma[self.chart_channels] - self.ks
        self.when_present = (1 - p) / sigma[self.chart_channels] - self.ks
        self.recent = np.tile(self.probabilities, (streams, 1))  # EWMA of the indicators, from the reference

    def in_control(self, chart: Chart) -> tuple[ScoreDistribution, int]:
        return ScoreDistribution.two_point(float(self.probabilities[self.index[chart.channel]])), self.stats["count"]

    def channel_of(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.index[MISSING]
        return self.index.get(value if isinstance(value, str) else label_key(value), self.catch_all)

    def _increments_one(self, value):
        return self._increments_of(np.array([self.channel_of(value)]))

    def _increments_many(self, values):
        return self._increments_of(np.array([self.channel_of(value) for value in values]))

    def _increments_of(self, positions: np.ndarray):
        hit = self.chart_channels[None, :] == positions[:, None]
        self.recent *= 1 - RECENT_WEIGHT
        self.recent[np.arange(positions.size), positions] += RECENT_WEIGHT
        return np.where(hit, self.when_present, self.when_absent), hit.astype(float), None

    def _since_summary(self, chart: Chart, events: int, total: float) -> dict:
        return {"category": chart.channel, "frequency": round(total / events, 4) if events else None,
                "reference_frequency": round(float(self.probabilities[self.index[chart.channel]]), 4)}

    def _reference_summary(self) -> dict:
        return {"count": self.stats["count"], "missing_rate": self.stats["missing_rate"],
                "frequencies": dict(zip(self.channels, np.round(self.probabilities, 4).tolist()))}

    def _recent_summary(self) -> dict:
        return {"frequencies": dict(zip(self.channels, np.round(self.recent[0], 4).tolist()))}

    def _config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stats": self.stats, "feature": self.feature,
                "shifts": list(self.shifts), "max_categories": self.max_categories}

    def _recent_state(self) -> Any:
        return self.recent[0].tolist()

    def _load_recent(self, recent: Any) -> None:
        self.recent = np.array([recent], dtype=float)


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
                  shifts: Sequence[float] = SHIFTS) -> list[Detector]:
    """One detector per feature, the predictions, the target and the errors, from the card's
    `reference`, calibrated together to `false_alarms_per_100k`."""
    detectors = [_distribution_detector(f"feature.{name}", FEATURE_DRIFT, stats, name, method, shifts)
                 for name, stats in reference["features"].items()]
    detectors.append(_distribution_detector("prediction", PREDICTION_DRIFT, reference["predictions"], None, method, shifts))
    detectors.append(_distribution_detector("target", TARGET_DRIFT, reference["target"], None, method, shifts))
    if _has_values(reference["errors"]):
        detectors.append(NumericDetector("performance", PERFORMANCE, reference["errors"], sides=("up",),
                                         method=method, watch_missing=False, shifts=shifts))
    calibrate(detectors, false_alarms_per_100k, reference_margin)
    return detectors


def _distribution_detector(name: str, kind: str, stats: Mapping[str, Any], feature: str | None, method: str,
                           shifts: Sequence[float]) -> Detector:
    if stats["kind"] == "categorical":
        return CategoricalDetector(name, kind, stats, feature=feature, shifts=shifts)
    return NumericDetector(name, kind, stats, feature=feature, method=method, shifts=shifts)


def calibrate(detectors: Sequence[Detector], false_alarms_per_100k: float = DEFAULT_FALSE_ALARMS_PER_100K,
              reference_margin: float = DEFAULT_REFERENCE_MARGIN) -> None:
    """Sets every chart's threshold: the budget split evenly over the detectors, then over each
    one's charts, each chart's in-control run length computed against the least favourable
    population within `reference_margin` standard errors of its reference."""
    if false_alarms_per_100k <= 0:
        raise ValueError("false_alarms_per_100k must be positive")
    per_detector = false_alarms_per_100k / 100_000 / len(detectors)
    for detector in detectors:
        calibrated = [(chart, *detector.in_control(chart)) for chart in detector.charts]
        live = [_can_alarm(chart, scores) for chart, scores, _ in calibrated]
        per_chart = per_detector / max(1, sum(live))
        detector.set_thresholds(
            threshold(least_favourable(scores, chart.sign, count, reference_margin), chart.k, 1 / per_chart)
            if alive else math.inf
            for (chart, scores, count), alive in zip(calibrated, live))


def least_favourable(scores: ScoreDistribution, sign: int, count: int, margin: float) -> ScoreDistribution:
    """The chart's signed scores under a live population `margin` standard errors of the reference
    away from it, towards an alarm: the mean moved by margin/√n, the spread widened by margin/√(2n)."""
    signed = scores.values * sign
    if margin > 0:
        signed = signed * (1 + margin / math.sqrt(2 * count)) + margin / math.sqrt(count)
    return ScoreDistribution(signed, scores.weights)


def _can_alarm(chart: Chart, scores: ScoreDistribution) -> bool:
    return float((scores.values * chart.sign).max()) > chart.k
