"""Regression or classification: how a pair (y_true, y_pred) is scored into the log's `absolute_error`.

- Regression: |y_true − y_pred|.
- Classification: 1 − p(true class) when the prediction carries probabilities (0 when the model was
  sure and right; for binary labels 0/1 that is |y − p(1)|), else 0 for a right label and 1 for a
  wrong one. A true class missing from the probabilities counts as p = 0.

Labels are compared by `label_key`, so a class named 1 matches whether a producer sends 1, 1.0 or "1".
"""

from __future__ import annotations

from typing import Literal

REGRESSION = "regression"
CLASSIFICATION = "classification"
Task = Literal["regression", "classification"]


def label_key(label: float | int | str) -> str:
    """The string a class label is compared and written by: integral numbers without a decimal point."""
    if isinstance(label, str):
        return label
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return repr(label) if isinstance(label, float) else str(label)


def is_classification(y_pred: float | str, probabilities: dict | None) -> bool:
    """What a prediction says about its task when metric is not told: labels that are strings, or
    probabilities, make a classifier's; a bare number a regressor's."""
    return isinstance(y_pred, str) or probabilities is not None


def classification_error(y_true: float | str, y_pred: float | str, probabilities: dict[str, float] | None) -> float:
    if probabilities is not None:
        return max(0.0, 1.0 - probabilities.get(label_key(y_true), 0.0))
    return 0.0 if label_key(y_true) == label_key(y_pred) else 1.0


def regression_error(y_true: float, y_pred: float) -> float:
    return abs(y_true - y_pred)
