"""Thresholds of one-sided CUSUM charts, computed so that a chart's in-control run length is what
the false-alarm budget asks, from the score distribution the reference implies.

A chart adds `x = sign·z − k` to S (S = max(0, S + x)) and alarms when S reaches h. When the scores
z are independent draws of a known distribution, the run length from S = 0 is the absorption time
of a Markov chain, and its mean, the in-control ARL, is exact up to the lattice (Brook & Evans,
1972): round the increments onto a lattice of step δ, splitting each one between its two
neighbours so that the mean increment stays exactly what it was (the in-control ARL depends on it
exponentially), and S lives on {0, δ, 2δ, …, (H−1)δ}. The ARL from 0 is the first entry of
L = (I − P)⁻¹·1, with P the transitions among those H states. One solve of a 300 × 300 system takes
a few milliseconds; a threshold is found in three or four (a secant on log ARL, which is nearly
linear in h), where a Monte-Carlo estimate of an ARL of 10⁷ events would have to simulate 10⁸.

The score distribution comes from the reference (detectors.py): a fine, evenly spread sample of the
reference distribution — its quantile function at 4,000 evenly spaced probabilities — mapped to
scores the way live values are. Same input, same thresholds: results are cached by a hash of the
distribution, k and the target.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LATTICE_STATES = 240  # states below the threshold (and half as many for the extrapolation)
MAX_STEPS = 12
LOG_ARL_TOLERANCE = 0.02  # |log ARL − log target|: 2 % on the run length is far below what matters


class ScoreDistribution:
    """A discrete distribution of in-control scores: values and their probabilities."""

    def __init__(self, values: np.ndarray, weights: np.ndarray | None = None):
        values = np.asarray(values, dtype=float)
        weights = np.full(values.size, 1.0 / values.size) if weights is None else np.asarray(weights, dtype=float)
        self.values = values
        self.weights = weights / weights.sum()

    @classmethod
    def two_point(cls, p: float) -> ScoreDistribution:
        """The standardised indicator of an event of probability p: (1 − p)/σ with probability p, −p/σ
        otherwise, σ = √(p(1 − p))."""
        sigma = math.sqrt(p * (1 - p))
        return cls(np.array([(1 - p) / sigma, -p / sigma]), np.array([p, 1 - p]))

    def flipped(self) -> ScoreDistribution:
        return ScoreDistribution(-self.values, self.weights)

    @property
    def mean(self) -> float:
        return float(self.values @ self.weights)

    @property
    def variance(self) -> float:
        return float(((self.values - self.mean) ** 2) @ self.weights)

    def key(self) -> str:
        digest = hashlib.sha1(np.round(self.values, 9).tobytes(), usedforsecurity=False)  # a cache key
        digest.update(np.round(self.weights, 12).tobytes())
        return digest.hexdigest()


def threshold(scores: ScoreDistribution, k: float, target_arl: float, tolerance: float = LOG_ARL_TOLERANCE) -> float:
    """The h at which a chart adding (score − k) has an in-control ARL of `target_arl` events from S = 0
    (within `tolerance` on its log); math.inf when the chart can never alarm (no score exceeds k)."""
    return solve_threshold(scores, k, target_arl, tolerance)[0]


def solve_threshold(scores: ScoreDistribution, k: float, target_arl: float, tolerance: float = LOG_ARL_TOLERANCE,
                    near: tuple[float, float] | None = None) -> tuple[float, float]:
    """(h, log ARL at h) as `threshold`; `near`, the (h, log ARL) of the same chart at another run
    length, starts the search where log ARL, nearly linear in h, says it should end."""
    return _threshold(scores.key(), k, float(target_arl), tolerance, near, _Payload(scores))


class _Payload:
    """Carries the distribution into the cached function without making it part of the key."""

    def __init__(self, scores: ScoreDistribution):
        self.scores = scores

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _Payload)


@lru_cache(maxsize=4096)
def _threshold(key: str, k: float, target_arl: float, tolerance: float, near: tuple[float, float] | None,
               payload: _Payload) -> tuple[float, float]:
    scores = payload.scores
    increments = scores.values - k
    if increments.max() <= 0:
        return math.inf, math.inf
    drift = float(increments @ scores.weights)
    if drift >= 0:
        raise ValueError(f"k = {k} is not above the in-control mean score {scores.mean:.3f}: the chart would always alarm")
    variance = float(((increments - drift) ** 2) @ scores.weights)
    log_target = math.log(target_arl)
    below, above = (0.0, -math.inf), (math.inf, math.inf)  # (h, log ARL) bracketing the target
    slope = 2 * -drift / variance
    h = near[0] + (log_target - near[1]) / slope if near and math.isfinite(near[0]) else \
        _first_guess(drift, variance, target_arl)
    with _one_blas_thread():
        for _ in range(MAX_STEPS):
            log_arl = log_run_length(increments, scores.weights, h)
            if abs(log_arl - log_target) < tolerance:
                return h, log_arl
            if log_arl < log_target:
                below = max(below, (h, log_arl))
            else:
                above = min(above, (h, log_arl))
            h = _next_guess(below, above, log_target, slope)
    return (above[0], above[1]) if math.isfinite(above[0]) else (h, log_arl)  # the safe side


def _first_guess(drift: float, variance: float, target_arl: float) -> float:
    """Siegmund's approximation for Gaussian increments: ARL ≈ (e^{θb} − θb − 1)/(θ|μ|), θ = 2|μ|/σ²,
    b = h + 1.166σ; solved for h by its dominant term."""
    theta = 2 * -drift / variance
    b = math.log(max(target_arl * theta * -drift, 2.0)) / theta
    return max(b - 1.166 * math.sqrt(variance), 0.5 * math.sqrt(variance))


def _next_guess(below: tuple[float, float], above: tuple[float, float], log_target: float, slope: float) -> float:
    """A secant step on log ARL, which is nearly linear in h (slope θ), kept inside the bracket."""
    (h0, a0), (h1, a1) = below, above
    if math.isfinite(a1) and h0 > 0:
        guess = h0 + (log_target - a0) * (h1 - h0) / (a1 - a0)
    elif h0 > 0:  # only undershot so far
        guess = h0 + (log_target - a0) / slope
    else:  # only overshot so far
        guess = h1 - (a1 - log_target) / slope if math.isfinite(a1) else h1 / 2
    if not h0 < guess < h1:
        guess = (h0 + h1) / 2 if math.isfinite(h1) else 2 * h0
    return guess


def log_run_length(increments: np.ndarray, weights: np.ndarray, h: float) -> float:
    """log of the in-control run length from S = 0 to h: the Markov chain on lattices of N and 2N
    states, Richardson-extrapolated (the lattice's error falls as 1/N²)."""
    coarse = run_length(increments, weights, h, LATTICE_STATES // 2)
    fine = run_length(increments, weights, h, LATTICE_STATES)
    if not (math.isfinite(coarse) and math.isfinite(fine)):
        return math.inf
    return math.log(fine) + (math.log(fine) - math.log(coarse)) / 3


def run_length(increments: np.ndarray, weights: np.ndarray, h: float, states: int = LATTICE_STATES) -> float:
    """The mean number of steps from S = 0 until S = max(0, S + x) reaches h, for independent
    increments x drawn from (increments, weights): the Markov chain on a lattice of `states` states."""
    transitions = _transitions(increments, weights, h, states)
    try:
        arl = np.linalg.solve(np.eye(states) - transitions, np.ones(states))[0]
    except np.linalg.LinAlgError:  # absorption too unlikely to represent: astronomically long
        return math.inf
    return float(arl) if 0 < arl < 1e300 else math.inf


def reach_probabilities(increments: np.ndarray, weights: np.ndarray, h: float, states: int = LATTICE_STATES):
    """s ↦ the chance that S = max(0, S + x), standing at s, reaches h before it falls back to 0
    (absorption probabilities of the same Markov chain), for arrays of s."""
    transitions = _transitions(increments, weights, h, states)
    escape = 1 - transitions.sum(axis=1)  # to h or beyond
    inner = np.eye(states - 1) - transitions[1:, 1:]
    try:
        reach = np.concatenate([[0.0], np.linalg.solve(inner, escape[1:])])
    except np.linalg.LinAlgError:
        reach = np.zeros(states)
    lattice = np.arange(states + 1) * (h / states)
    reach = np.clip(np.append(reach, 1.0), 0.0, 1.0)
    return lambda levels: np.interp(levels, lattice, reach)


def _transitions(increments: np.ndarray, weights: np.ndarray, h: float, states: int) -> np.ndarray:
    """The chain's transition probabilities among its states below h (the rest goes to h or beyond)."""
    step = h / states
    positions = increments / step
    lower = np.floor(positions)
    upper_share = positions - lower  # mean-preserving split between the two neighbours
    offset = int(lower.min())
    size = int(lower.max()) - offset + 2
    pmf = np.bincount((lower - offset).astype(np.int64), weights * (1 - upper_share), minlength=size)
    pmf += np.bincount((lower - offset + 1).astype(np.int64), weights * upper_share, minlength=size)
    cdf = np.cumsum(pmf)

    index = np.arange(states)
    jump = index[None, :] - index[:, None] - offset  # pmf index of moving from state i to state j
    transitions = np.where((jump >= 0) & (jump < size), pmf[np.clip(jump, 0, size - 1)], 0.0)
    to_zero = -index - offset  # S + x ≤ 0: back to the state 0
    transitions[:, 0] = np.where(to_zero >= 0, cdf[np.clip(to_zero, 0, size - 1)], 0.0)
    return transitions


@contextmanager
def _one_blas_thread():
    """Small solves, one after another: a second BLAS thread only spins, and on a busy machine it
    makes each solve 50 times slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


# --- a detector's charts together -------------------------------------------------------------------

OVERLAP_PATHS = 600  # simulated excursions per chart of a group (importance sampling)
SIMULATION_POINTS = 256  # the scores' values the simulation draws from
OVERLAP_BLOCK = 64  # steps simulated at once
OVERLAP_MAX_STEPS = 50_000  # an excursion still open after this many steps counts as no alarm
JOINT_TOLERANCE = 0.03  # |log(rate / target)|: 3 % on the rate, a hundredth of a σ on a threshold
JOINT_ROUNDS = 4
ROUGH_TOLERANCE = 0.2
SEED = 20261129  # the simulations are seeded: same reference, same thresholds


@dataclass(frozen=True)
class ChartGroup:
    """Charts adding the same signed score (one channel, one direction) with different k.

    `worst`: the signed scores under the live population least favourable to these charts (the
    thresholds are set against it); `best`: under the one least favourable to the other direction's
    charts on the same channel (the mean moved the other way), or None when there is no such group."""

    channel: str
    ks: tuple[float, ...]
    worst: ScoreDistribution
    best: ScoreDistribution | None = None
    spans: tuple[float, ...] | None = None  # each chart's run length relative to the others' (None: all equal)

    def run_lengths(self, arl: float) -> list[float]:
        return [arl * span for span in self.spans] if self.spans else [arl] * len(self.ks)


def joint_thresholds(groups: list[ChartGroup], rate: float) -> list[list[float]]:
    """Each group's thresholds such that a detector made of these groups raises at most `rate`
    times per event on a stationary stream of any population its groups' distributions allow (a
    raise: any chart of any group reaching its threshold), every chart at one in-control run length A.

    Within a group the charts are strongly correlated (a run of high scores lifts them all): the
    group's run length is ARL₁·p₁/p, with ARL₁ the smallest-k chart's (exact, Markov chain), p₁ the
    chance that an excursion of that chart above 0 reaches its threshold and p the chance that it or
    any other chart of the group does meanwhile (the others stand at 0 whenever the smallest-k one
    does, so its excursions are the group's renewal cycles). p/p₁ comes from a seeded, importance-
    sampled simulation of those excursions (`excursion_ratio`), once, at the union bound's A: the
    overlap shrinks as thresholds fall, so the ratio found there errs on the safe side.

    One population can't be least favourable to both directions of a channel: the channel's rate is
    the larger of its two corners, one direction at its worst (ratio/A) plus the other under that
    population (its charts' rates added, exact). Channels add up (a union bound)."""
    alive = sum(1 / length for group in groups for k, length in zip(group.ks, group.run_lengths(1.0))
                if _can_alarm(group.worst, k))
    if alive == 0:
        return [[math.inf] * len(group.ks) for group in groups]
    arl = alive / rate  # the union bound over all charts: the safe side
    with _one_blas_thread():
        return _joint_search(groups, rate, arl)


def _joint_search(groups: list[ChartGroup], rate: float, arl: float) -> list[list[float]]:
    # p/p₁ needs the thresholds only roughly: those of the union bound, within 20 % on the run length
    solved = [[solve_threshold(group.worst, k, length, ROUGH_TOLERANCE) for k, length in zip(group.ks, group.run_lengths(arl))]
              for group in groups]
    rough = [[h for h, _ in group] for group in solved]
    ratios = [_group_rate(group, hs) for group, hs in zip(groups, rough)]
    arl *= _detector_rate(groups, rough, ratios, arl) / rate
    for _ in range(JOINT_ROUNDS):
        solved = [[solve_threshold(group.worst, k, length, near=near)
                   for k, length, near in zip(group.ks, group.run_lengths(arl), previous)]
                  for group, previous in zip(groups, solved)]
        thresholds = [[h for h, _ in group] for group in solved]
        measured = _detector_rate(groups, thresholds, ratios, arl)
        if measured <= 0 or abs(math.log(measured / rate)) < JOINT_TOLERANCE:
            break
        arl *= measured / rate
    return thresholds


def _group_rate(group: ChartGroup, thresholds: list[float]) -> float:
    """The group's raises per event times A: p/p₁ over the smallest-k chart's run length, at most
    the union bound (the sum of its charts' rates). Scores of two values (an indicator) get the
    union bound: the Markov chain's lattice resolves their sums too coarsely for the charts' run
    lengths to be equal enough that p/p₁ could be trusted."""
    spans = group.run_lengths(1.0)
    alive = [(k, h, span) for k, h, span in zip(group.ks, thresholds, spans) if math.isfinite(h)]
    union = sum(1 / span for _, _, span in alive)
    if len(alive) <= 1 or len(np.unique(group.worst.values)) <= 2:
        return union
    first = min(alive)
    ratio = excursion_ratio(group.worst, [k for k, _, _ in alive], [h for _, h, _ in alive])
    return min(ratio / first[2], union)


def _can_alarm(scores: ScoreDistribution, k: float) -> bool:
    return float(scores.values.max()) > k


def _detector_rate(groups: list[ChartGroup], thresholds: list[list[float]], ratios: list[float], arl: float) -> float:
    """Raises per event at the worst corner of each channel, channels added up."""
    channels: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        channels.setdefault(group.channel, []).append(index)
    total = 0.0
    for members in channels.values():
        corners = []
        for worst in members:
            corner = (ratios[worst] if any(map(math.isfinite, thresholds[worst])) else 0.0) / arl
            for other in members:
                if other != worst:
                    corner += _rate_under_best(groups[other], thresholds[other], ratios[other], arl)
            corners.append(corner)
        total += max(corners)
    return total


def _rate_under_best(group: ChartGroup, thresholds: list[float], ratio: float, arl: float) -> float:
    """The group's rate under the population least favourable to the other direction: the sum of
    its charts' exact rates (a union bound; small there), or ratio/A when that is its own worst."""
    if not any(map(math.isfinite, thresholds)):
        return 0.0
    if group.best is None or group.best.key() == group.worst.key():
        return ratio / arl
    rates = [0.0 if not math.isfinite(h) else 1 / run_length(group.best.values - k, group.best.weights, h,
                                                              LATTICE_STATES // 2)  # small: a coarse lattice will do
             for k, h in zip(group.ks, thresholds)]
    return sum(rates)


def excursion_ratio(scores: ScoreDistribution, ks: list[float], thresholds: list[float]) -> float:
    """p/p₁ (see joint_thresholds) for charts adding (score − k) for each k: over one excursion of
    the smallest-k chart above 0, P(any chart reaches its threshold) / P(that chart reaches its own),
    at least 1."""
    if len(ks) <= 1:
        return 1.0
    key = (scores.key(), tuple(np.round(ks, 9)), tuple(np.round(thresholds, 6)))
    with _one_blas_thread():
        return _excursion_ratio(key, _Payload(scores))


@lru_cache(maxsize=1024)
def _excursion_ratio(key: tuple, payload: _Payload) -> float:
    """Importance sampling: each chart's share of the excursions is drawn from the scores tilted by
    that chart's θ (E[e^{θ(z − k)}] = 1, under which its statistic drifts up and the rare excursion
    is the rule) until a chart reaches its threshold, and weighted by dP/dQ for the equal mixture Q
    of those tilts. Whether the smallest-k chart then follows in the same excursion is not
    simulated: its chance, from where it stands, is exact (`reach_probabilities`). The simulation
    draws from the scores coarsened to SIMULATION_POINTS values (mean and extremes kept)."""
    _, ks, thresholds = key
    order = np.argsort(ks)
    ks, thresholds = np.asarray(ks, dtype=float)[order], np.asarray(thresholds, dtype=float)[order]
    scores = coarsened(payload.scores, SIMULATION_POINTS)
    values = scores.values
    follows = reach_probabilities(payload.scores.values - ks[0], payload.scores.weights, thresholds[0])
    rng = np.random.default_rng([SEED, int(key[0][:12], 16)])
    thetas = np.array([lundberg_exponent(scores, k) for k in ks])
    log_tilts, any_hits, first_hits = [], [], []
    for theta in thetas:
        tilted = scores.weights * np.exp(theta * (values - values.max()))
        start = np.zeros((OVERLAP_PATHS, ks.size))
        total, steps, level, any_hit = _walk(values, np.cumsum(tilted / tilted.sum()), ks, thresholds, start, rng)
        log_tilts.append(thetas[:, None] * (total[None, :] - steps[None, :] * ks[:, None]))  # log dQ_j/dP
        # another chart first: the chance that the smallest-k one follows before falling back to 0
        first_hit = np.where(level[:, 0] >= thresholds[0], 1.0, np.where(any_hit, follows(level[:, 0]), 0.0))
        any_hits.append(any_hit)
        first_hits.append(first_hit)
    log_q = np.concatenate(log_tilts, axis=1)
    peak = log_q.max(axis=0)
    weight = np.exp(-peak - np.log(np.exp(log_q - peak).mean(axis=0)))  # dP/dQ, Q the equal mixture
    first = weight @ np.concatenate(first_hits)
    return float(weight @ np.concatenate(any_hits) / first) if first > 0 else float(len(ks))


def coarsened(scores: ScoreDistribution, points: int) -> ScoreDistribution:
    """About `points` values: the sorted scores in bins of equal probability, each at its mean (the
    distribution's mean kept exactly), the lowest and highest score kept as they are."""
    order = np.argsort(scores.values, kind="stable")
    values, weights = scores.values[order], scores.weights[order]
    if values.size <= points:
        return ScoreDistribution(values, weights)
    inner = slice(1, values.size - 1)
    bins = np.minimum((np.cumsum(weights[inner]) - weights[inner] / 2) / weights[inner].sum() * (points - 2),
                      points - 3).astype(np.int64)
    mass = np.bincount(bins, weights[inner], minlength=points - 2)
    moment = np.bincount(bins, weights[inner] * values[inner], minlength=points - 2)
    kept = mass > 0
    return ScoreDistribution(np.concatenate([values[:1], moment[kept] / mass[kept], values[-1:]]),
                             np.concatenate([weights[:1], mass[kept], weights[-1:]]))


def lundberg_exponent(scores: ScoreDistribution, k: float) -> float:
    """θ > 0 with E[e^{θ(z − k)}] = 1: the tilt under which a chart adding z − k drifts up as fast as
    it drifts down in control (Newton's method on the convex log E[e^{θ(z − k)}], from the right)."""
    x = scores.values - k
    log_w = np.log(scores.weights)

    def log_mgf(theta: float) -> tuple[float, float]:
        exponents = log_w + theta * x
        top = exponents.max()
        tilted = np.exp(exponents - top)
        return top + math.log(tilted.sum()), float(tilted @ x / tilted.sum())

    theta = 1.0
    while log_mgf(theta)[0] <= 0:  # right of the root: the function is positive there
        theta *= 2
    for _ in range(100):
        value, slope = log_mgf(theta)
        step = value / slope
        theta -= step
        if abs(step) < 1e-10 * theta:
            break
    return theta


def _walk(values: np.ndarray, cdf: np.ndarray, ks: np.ndarray, thresholds: np.ndarray, start: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Charts adding (z − k) for each k, one path per row of `start` (their statistics), z drawn from
    `cdf`, each path until the smallest-k chart falls to 0 or a chart reaches its threshold: per path
    the scores' total and the steps taken, the statistics at the end, and whether a threshold was
    reached."""
    paths = len(start)
    total, steps = np.zeros(paths), np.zeros(paths)
    level = np.array(start, dtype=float)
    open_ = np.arange(paths)
    blocks = np.arange(1, OVERLAP_BLOCK + 1)[None, :, None]
    while open_.size and steps[open_[0]] < OVERLAP_MAX_STEPS:
        z = values[np.minimum(np.searchsorted(cdf, rng.random((open_.size, OVERLAP_BLOCK))), values.size - 1)]
        sums = np.cumsum(z, axis=1)
        moves = sums[:, :, None] - blocks * ks  # prefix sums of z − k
        lowest = np.minimum.accumulate(np.minimum(moves, -level[open_, None, :]), axis=1)
        statistic = moves - lowest  # S_t = C_t − min(−S_0, min_{s≤t} C_s), per chart
        ended = (statistic[:, :, 0] <= 0) | (statistic >= thresholds).any(axis=2)
        done = ended.any(axis=1)
        end = np.where(done, ended.argmax(axis=1), OVERLAP_BLOCK - 1)
        rows = np.arange(open_.size)
        total[open_] += sums[rows, end]
        steps[open_] += end + 1
        level[open_] = statistic[rows, end]
        open_ = open_[~done]
    return total, steps, level, (level >= thresholds).any(axis=1)
