"""The histogram of absolute errors that plot draws and the dashboard shows, kept exactly in O(1)
per error however long the history."""

from __future__ import annotations

import math

import numpy as np


class ErrorHistogram:
    """Counts of absolute errors in `bins` equal bins from 0.

    When an error falls past the last bin, the bin width doubles and neighbouring bins merge,
    which keeps the counts exact: adding an error costs O(1) however long the history is.
    The first width, 5/2⁸, suits a classifier's errors in [0, 1] as well as a regressor's: once
    the errors reach 100 the bins are 5 wide, exactly as with a first width of 5.
    """

    def __init__(self, bins: int = 40, initial_width: float = 5.0 / 2**8):
        if bins % 2:
            raise ValueError("bins must be even, so that neighbours can merge")
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = initial_width
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1) * self.width

    def add(self, error: float) -> None:
        """One error, without numpy's per-call cost: the dashboard adds live events one by one."""
        if not (error >= 0 and math.isfinite(error)):
            raise ValueError("absolute errors must be finite and non-negative")
        self._widen_for(error)
        self.counts[int(error // self.width)] += 1
        self.count += 1
        self.total += error
        self.maximum = max(self.maximum, error)

    def add_many(self, errors: np.ndarray) -> None:
        if errors.size == 0:
            return
        if np.any(errors < 0) or not np.all(np.isfinite(errors)):
            raise ValueError("absolute errors must be finite and non-negative")
        largest = float(errors.max())
        self._widen_for(largest)
        bins = (errors // self.width).astype(np.int64)
        self.counts += np.bincount(bins, minlength=len(self.counts))
        self.count += int(errors.size)
        self.total += float(errors.sum())
        self.maximum = max(self.maximum, largest)

    def shown(self, min_bins: int = 10) -> dict:
        """The bins up to the last one in use (at least `min_bins`), as JSON for drawing."""
        used = int(np.flatnonzero(self.counts)[-1]) + 1 if self.count else 0
        return {"bin_width": self.width, "counts": self.counts[:max(used, min_bins)].tolist()}

    def _widen_for(self, error: float) -> None:
        while error >= self.width * len(self.counts):
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1),
                                          np.zeros(len(self.counts) // 2, dtype=np.int64)])
            self.width *= 2
