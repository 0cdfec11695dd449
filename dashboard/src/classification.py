"""Running figures of a classifier: O(1) per event (amortised), memory flat over any number of events.

Figures, as scikit-learn defines them: accuracy, balanced accuracy, macro precision / recall / F1
(over the classes seen in y_true or y_pred; a class never predicted, or never true, scores 0), the
confusion matrix, and where the stream has probabilities log loss, the Brier score and, for a
binary stream, ROC AUC.

Where p(true class) comes from: every event and every CSV row carries absolute_error =
1 − p(true class) (mlmonitor.tasks), so log loss, the binary Brier score and ROC AUC follow from
the error alone, and rows restored from the CSV give the same figures as the live events did. A
multiclass Brier score needs every class's probability: it is taken over the events that carried
them (`brier_events`), which rows restored from the CSV never are.

Whether the stream has probabilities: the model card says so (predicts_proba), or an event carried
them, or an error lies strictly between 0 and 1 (without probabilities an error is 0 or 1). So a
CSV alone, from a model whose every probability was exactly 0 or 1, reads as one without.

Classes: the first MAX_CLASSES labels seen get a row and a column of the confusion matrices; later
ones share the last, "other", which the macro figures count as one class (accuracy stays exact: it
compares the labels themselves). A stream is binary while at most two labels (or the card's
classes) have been seen.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, NamedTuple

import numpy as np

from mlmonitor.tasks import CLASSIFICATION, label_key

MAX_CLASSES = 50
OTHER = "other"
AUC_BINS = 10_000
EPS = float(np.finfo(float).eps)  # log loss clips p(true class) to [EPS, 1 − EPS], as scikit-learn does
FIGURES = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss", "brier",
           "roc_auc")
HEADLINE = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")


def log_loss_of(error: float) -> float:
    return -math.log(min(max(1.0 - error, EPS), 1.0 - EPS))


def display_key(label: str) -> tuple:
    """Numbers in numeric order, then text; "other" last."""
    if label == OTHER:
        return (2, 0.0, label)
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


class ClassRegistry:
    """The labels seen (as label_key strings) and what the stream is: binary? with probabilities?
    Shared by every figure set of one board, so their matrices have the same rows and columns."""

    def __init__(self, limit: int = MAX_CLASSES):
        self.limit = limit
        self.labels: list[str] = []
        self._index: dict[str, int] = {}
        self.overflowed = False
        self.probabilities_seen = False
        self.card_classes = 0
        self.card_probabilities = False

    @property
    def size(self) -> int:
        return self.limit + 1

    @property
    def binary(self) -> bool:
        return max(len(self.labels) + self.overflowed, self.card_classes) <= 2

    @property
    def with_probabilities(self) -> bool:
        return self.card_probabilities or self.probabilities_seen

    def follow_card(self, classes: list | None, predicts_proba: bool) -> None:
        self.card_classes = len(classes or ())
        self.card_probabilities = bool(predicts_proba)

    def index_of(self, key: str) -> int:
        index = self._index.get(key)
        if index is not None:
            return index
        if len(self.labels) < self.limit:
            self._index[key] = len(self.labels)
            self.labels.append(key)
            return self._index[key]
        self.overflowed = True
        return self.limit

    def label_of(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else OTHER

    def score(self, y_true, y_pred, error: float, probabilities: dict[str, float] | None) -> Scored:
        true_key, pred_key = label_key(y_true), label_key(y_pred)
        brier = None
        if probabilities is not None:
            self.probabilities_seen = True
            for key in probabilities:
                self.index_of(key)
            # Σ_c (p_c − [c = true])²
            brier = sum(p * p for p in probabilities.values()) - 2.0 * probabilities.get(true_key, 0.0) + 1.0
        elif 0.0 < error < 1.0:
            self.probabilities_seen = True
        return Scored(self.index_of(true_key), self.index_of(pred_key), true_key == pred_key, error,
                      log_loss_of(error), brier)


class Scored(NamedTuple):
    """One event as the figures need it: class indices, whether the labels agree, 1 − p(true), its
    log loss, and its full Brier term when the event carried every class's probability."""

    true: int
    pred: int
    correct: bool
    error: float
    loss: float
    brier: float | None


class ScoredBatch(NamedTuple):
    """Many events as arrays: what a restore adds at once. `brier` is NaN where an event had none."""

    true: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    errors: np.ndarray
    loss: np.ndarray
    brier: np.ndarray

    @classmethod
    def of(cls, items: list[Scored]) -> ScoredBatch:
        count = len(items)
        return cls(np.fromiter((s.true for s in items), np.int64, count),
                   np.fromiter((s.pred for s in items), np.int64, count),
                   np.fromiter((s.correct for s in items), bool, count),
                   np.fromiter((s.error for s in items), float, count),
                   np.fromiter((s.loss for s in items), float, count),
                   np.fromiter((math.nan if s.brier is None else s.brier for s in items), float, count))

    def take(self, indices: np.ndarray) -> ScoredBatch:
        return ScoredBatch(*(array[indices] for array in self))

    def item(self, index: int) -> Scored:
        brier = float(self.brier[index])
        return Scored(int(self.true[index]), int(self.pred[index]), bool(self.correct[index]),
                      float(self.errors[index]), float(self.loss[index]), None if math.isnan(brier) else brier)


class ClassSums:
    """Counts and sums over a set of scored events; events can be added and taken away again."""

    __slots__ = ("count", "correct", "matrix", "error", "squared_error", "loss", "brier", "brier_count")

    def __init__(self, size: int):
        self.count = self.correct = self.brier_count = 0
        self.error = self.squared_error = self.loss = self.brier = 0.0
        self.matrix = np.zeros((size, size), dtype=np.int64)  # rows: true class, columns: predicted

    @classmethod
    def of(cls, size: int, items: Iterable[Scored]) -> ClassSums:
        sums = cls(size)
        for item in items:
            sums.add(item)
        return sums

    def add(self, item: Scored, sign: int = 1) -> None:
        self.count += sign
        self.correct += sign * item.correct
        self.matrix[item.true, item.pred] += sign
        self.error += sign * item.error
        self.squared_error += sign * item.error * item.error
        self.loss += sign * item.loss
        if item.brier is not None:
            self.brier += sign * item.brier
            self.brier_count += sign

    def remove(self, item: Scored) -> None:
        self.add(item, -1)

    def add_batch(self, batch: ScoredBatch) -> None:
        size = len(self.matrix)
        self.count += len(batch.true)
        self.correct += int(batch.correct.sum())
        self.matrix += np.bincount(batch.true * size + batch.pred, minlength=size * size).reshape(size, size)
        self.error += float(batch.errors.sum())
        self.squared_error += float(np.square(batch.errors).sum())
        self.loss += float(batch.loss.sum())
        with_brier = ~np.isnan(batch.brier)
        self.brier += float(batch.brier[with_brier].sum())
        self.brier_count += int(with_brier.sum())

    @property
    def mean_error(self) -> float | None:
        return self.error / self.count if self.count else None

    def figures(self, registry: ClassRegistry, roc_auc: float | None = None) -> dict:
        n = self.count
        shown = sorted(np.flatnonzero(self.matrix.sum(axis=0) + self.matrix.sum(axis=1)).tolist(),
                       key=lambda index: display_key(registry.label_of(index)))
        matrix = self.matrix[np.ix_(shown, shown)]
        probabilities = registry.with_probabilities and n > 0
        figures = {"count": n, "accuracy": self.correct / n if n else None,
                   **macro_figures(matrix),
                   "log_loss": self.loss / n if probabilities else None,
                   **self._brier(registry.binary, probabilities),
                   "roc_auc": roc_auc if probabilities and registry.binary else None,
                   "mean_error": self.mean_error,
                   "confusion_matrix": {"labels": [registry.label_of(index) for index in shown],
                                        "counts": matrix.tolist()}}
        return figures

    def _brier(self, binary: bool, probabilities: bool) -> dict:
        if not probabilities:
            return {"brier": None, "brier_events": 0}
        if binary:  # from the error alone: (p(positive) − y)² = (1 − p(true))²
            return {"brier": self.squared_error / self.count, "brier_events": self.count}
        return {"brier": self.brier / self.brier_count if self.brier_count else None,
                "brier_events": self.brier_count}


def macro_figures(matrix: np.ndarray) -> dict:
    """Balanced accuracy and macro precision / recall / F1 of a confusion matrix (rows: true)."""
    if not matrix.size:
        return {"balanced_accuracy": None, "precision_macro": None, "recall_macro": None, "f1_macro": None}
    hits = np.diag(matrix).astype(float)
    true_counts, predicted_counts = matrix.sum(axis=1), matrix.sum(axis=0)
    recall = np.divide(hits, true_counts, out=np.zeros_like(hits), where=true_counts > 0)
    precision = np.divide(hits, predicted_counts, out=np.zeros_like(hits), where=predicted_counts > 0)
    both = true_counts + predicted_counts
    f1 = np.divide(2 * hits, both, out=np.zeros_like(hits), where=both > 0)
    return {"balanced_accuracy": float(recall[true_counts > 0].mean()), "precision_macro": float(precision.mean()),
            "recall_macro": float(recall.mean()), "f1_macro": float(f1.mean())}


def score_of_first_class(item: Scored) -> float:
    """p(class 0) in a binary stream: p(true) when the true class is 0, else 1 − p(true)."""
    return 1.0 - item.error if item.true == 0 else item.error


class AucHistogram:
    """ROC AUC of a binary stream over all its events, from a histogram of the score p(class 0)
    per true class, AUC_BINS equal bins over [0, 1] (resolution 1e-4).

    Approximation: two events of different classes whose scores fall in the same bin count as a
    tie (½), as if their scores were equal. So the result differs from the exact AUC by at most
    half the share of (class 0, class 1) pairs that share a bin; for scores spread over [0, 1]
    that is well under 1e-3. Exact ties (hard 0/1 scores) are exact.
    """

    def __init__(self, bins: int = AUC_BINS):
        self.bins = bins
        self.counts = np.zeros((2, bins), dtype=np.int64)

    def add(self, item: Scored) -> None:
        if item.true < 2:
            self.counts[item.true, self._bin(score_of_first_class(item))] += 1

    def add_batch(self, batch: ScoredBatch) -> None:
        binary = batch.true < 2
        true, errors = batch.true[binary], batch.errors[binary]
        scores = np.where(true == 0, 1.0 - errors, errors)
        bins = np.minimum((np.clip(scores, 0.0, 1.0) * self.bins).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(true * self.bins + bins, minlength=2 * self.bins).reshape(2, self.bins)

    def auc(self) -> float | None:
        positives, negatives = self.counts[0].astype(float), self.counts[1].astype(float)
        pairs = positives.sum() * negatives.sum()
        if not pairs:
            return None
        negatives_below = np.cumsum(negatives) - negatives
        return float((positives @ negatives_below + 0.5 * positives @ negatives) / pairs)

    def _bin(self, score: float) -> int:
        return min(int(min(max(score, 0.0), 1.0) * self.bins), self.bins - 1)


def exact_auc(items: Iterable[Scored]) -> float | None:
    """ROC AUC of a binary set of events (class 0 positive, scored by p(class 0)), ties counting
    ½: the Mann-Whitney statistic from average ranks, as scikit-learn's roc_auc_score gives it."""
    binary = [item for item in items if item.true < 2]
    scores = np.array([score_of_first_class(item) for item in binary])
    positive = np.array([item.true == 0 for item in binary], dtype=bool)
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if not positives or not negatives:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    return float((ranks[positive].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


class ClassWindow:
    """The figures of the last `size` events: a ring buffer with counts and sums kept in step. The
    float sums are recomputed from the ring once per `size` removals, so rounding can't pile up;
    ROC AUC is computed exactly from the ring when the figures are read."""

    def __init__(self, size: int, registry: ClassRegistry):
        self.size = size
        self._registry = registry
        self._ring: deque[Scored] = deque(maxlen=size)
        self._sums = ClassSums(registry.size)
        self._removals = 0

    def add(self, item: Scored) -> None:
        if len(self._ring) == self.size:
            self._sums.remove(self._ring[0])
            self._removals += 1
        self._ring.append(item)
        self._sums.add(item)
        if self._removals >= self.size:
            self._sums = ClassSums.of(self._registry.size, self._ring)
            self._removals = 0

    @property
    def mean_error(self) -> float | None:
        return self._sums.mean_error

    def figures(self) -> dict:
        auc = exact_auc(self._ring) if self._registry.binary and self._registry.with_probabilities else None
        return self._sums.figures(self._registry, auc)


class ClassificationTracker:
    """Every figure of a classifier over all events and over windows of the last N."""

    task = CLASSIFICATION
    headline = HEADLINE
    figure_names = FIGURES

    def __init__(self, registry: ClassRegistry, window_sizes: tuple[int, ...], with_auc: bool = True):
        self._registry = registry
        self._overall = ClassSums(registry.size)
        self._windows = {size: ClassWindow(size, registry) for size in window_sizes}
        self._smallest_window = self._windows[min(window_sizes)]
        self._auc = AucHistogram() if with_auc else None

    @property
    def count(self) -> int:
        return self._overall.count

    def refusal(self, observation) -> str | None:
        return None  # any label is a class

    def score(self, observation) -> Scored:
        return self._registry.score(observation.y_true, observation.y_pred, observation.classification_error,
                                    observation.probabilities)

    def prepare(self, observations: list) -> ScoredBatch:
        return ScoredBatch.of([self.score(observation) for observation in observations])

    def add(self, item: Scored) -> None:
        self._overall.add(item)
        if self._auc is not None:
            self._auc.add(item)

    def add_batch(self, batch: ScoredBatch) -> None:
        self._overall.add_batch(batch)
        if self._auc is not None:
            self._auc.add_batch(batch)

    def add_to_windows(self, item: Scored, seq: int) -> None:
        for window in self._windows.values():
            window.add(item)

    def rolling_error(self) -> float | None:
        return self._smallest_window.mean_error

    @property
    def rolling_window(self) -> int:
        return self._smallest_window.size

    def figures(self) -> dict[str, dict]:
        auc = self._auc.auc() if self._auc is not None else None
        return {"all": self._overall.figures(self._registry, auc),
                **{f"last_{size}": window.figures() for size, window in self._windows.items()}}

    def extras(self) -> dict:
        registry = self._registry
        return {"classes": {"labels": sorted(registry.labels, key=display_key), "other": registry.overflowed,
                            "binary": registry.binary, "with_probabilities": registry.with_probabilities}}
