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


def threshold(scores: ScoreDistribution, k: float, target_arl: float) -> float:
    """The h at which a chart adding (score − k) has an in-control ARL of `target_arl` events from S = 0;
    math.inf when the chart can never alarm (no score exceeds k)."""
    return _threshold(scores.key(), k, float(target_arl), _Payload(scores))


class _Payload:
    """Carries the distribution into the cached function without making it part of the key."""

    def __init__(self, scores: ScoreDistribution):
        self.scores = scores

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _Payload)


@lru_cache(maxsize=4096)
def _threshold(key: str, k: float, target_arl: float, payload: _Payload) -> float:
    scores = payload.scores
    increments = scores.values - k
    if increments.max() <= 0:
        return math.inf
    drift = float(increments @ scores.weights)
    if drift >= 0:
        raise ValueError(f"k = {k} is not above the in-control mean score {scores.mean:.3f}: the chart would always alarm")
    variance = float(((increments - drift) ** 2) @ scores.weights)
    log_target = math.log(target_arl)
    below, above = (0.0, -math.inf), (math.inf, math.inf)  # (h, log ARL) bracketing the target
    h = _first_guess(drift, variance, target_arl)
    with _one_blas_thread():
        for _ in range(MAX_STEPS):
            log_arl = log_run_length(increments, scores.weights, h)
            if abs(log_arl - log_target) < LOG_ARL_TOLERANCE:
                return h
            if log_arl < log_target:
                below = max(below, (h, log_arl))
            else:
                above = min(above, (h, log_arl))
            h = _next_guess(below, above, log_target, 2 * -drift / variance)
    return above[0] if math.isfinite(above[0]) else h  # the safe side


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
    try:
        arl = np.linalg.solve(np.eye(states) - transitions, np.ones(states))[0]
    except np.linalg.LinAlgError:  # absorption too unlikely to represent: astronomically long
        return math.inf
    return float(arl) if 0 < arl < 1e300 else math.inf


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
