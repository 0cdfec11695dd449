"""Reference statistics of the training data, kept in the model card, that a drift detector compares
live traffic against.

The drift detector summarises a window of live values with the same functions (`numeric_stats`,
`categorical_stats`, and `histogram_counts` over the reference's own bin edges), so both sides are
counted alike. Everything is plain JSON: numbers, strings, lists, objects, and null where a
figure is undefined (never NaN or infinity).

The card's `reference`:

    {
      "format": 1,
      "features": {<feature name>: <numeric or categorical stats>, ...},   # the training rows
      "target": <numeric stats (regression) or categorical stats (classification)>,  # training rows
      "predictions": <stats of the predictions on every row: training and held-out>,
      "errors": <numeric stats of the held-out errors>,
      "residuals": <numeric stats of the held-out signed residuals y − ŷ>   # a regressor's only
    }

Numeric stats (`"kind": "numeric"`):

    {
      "kind": "numeric",
      "count": 353,                 # values summarised, missing ones included
      "missing_rate": 0.0,          # share of them that were missing (NaN, None or ±inf)
      "mean": 0.1, "std": 1.2,      # of the present values; std is the population one (ddof=0)
      "min": -3.0, "max": 4.1,
      "quantiles": {"probabilities": [0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1],
                    "values": [...]},               # numpy's default (linear) interpolation
      "histogram": {"edges": [21 increasing numbers from the 1st to the 99th percentile],
                    "counts": [20 counts],          # bin i holds edges[i] <= x < edges[i+1]; the last
                                                    # bin is closed on the right
                    "under": 3, "over": 4}          # values below edges[0] / above edges[-1]
    }

When the 1st and 99th percentiles coincide (a constant, or nearly constant, column) the histogram
has a single bin `[p1, p99]` and edges `[p1, p99]`. With no present value at all, mean, std, min,
max, the quantile values and the histogram are null.

Categorical stats (`"kind": "categorical"`):

    {
      "kind": "categorical",
      "count": 353, "missing_rate": 0.02,
      "distinct": 7,                # distinct present values
      "frequencies": {"red": 0.5, "blue": 0.3, "__other__": 0.2}
    }

`frequencies` are shares of the present values (they add up to 1), most frequent first (ties by
name), the 50 most frequent by name and the rest together under "__other__" (only there when
something is left over). Values are compared as strings (`tasks.label_key`, so the class 1 and
1.0 are one).

Predictions are the model's on all the rows learn_model had (those with a target): the training
rows' and the held-out rows', in that order. (Older cards summarised the held-out rows' alone, 89
of the diabetes data's 442: too few to stand for the live population, their mean 2.1 standard
errors off the training rows'.) A regressor's are numeric stats; a classifier's are the
categorical stats of the predicted classes, plus, when it has probabilities, `"top_probability"`:
numeric stats of the probability of the predicted class.

Errors and residuals are the held-out rows', then, with fewer than 2,000 held out, the training
rows' out of fold (learn_model's `reference_folds`: each predicted by a model fitted without it;
in-sample they would be smaller than on new data). The held-out rows alone, 89 of the diabetes
data's 442, left the residuals' mean 0.06 σ off the population's and uncertain by 0.1 σ.

Errors are those the metric service logs (mlmonitor.tasks): |y − ŷ| for a regressor,
1 − p(true class) for a classifier with probabilities, else 0 (right) or 1 (wrong). Residuals,
y − ŷ, signed, are a regressor's only (a classifier has none, and neither has a card written
before they were added): with them a drift detector can tell a bias, either way, from noise.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .tasks import label_key

FORMAT = 1
QUANTILE_PROBABILITIES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 20
HISTOGRAM_RANGE = (0.01, 0.99)  # the bins span these quantiles; the tails go to under/over
TOP_CATEGORIES = 50
OTHER = "__other__"
NUMERIC = "numeric"
CATEGORICAL = "categorical"


def numeric_stats(values: Iterable[Any]) -> dict:
    """Count, missing rate, moments, quantiles and histogram of numbers (None/NaN/±inf are missing)."""
    numbers = _as_floats(values)
    present = numbers[np.isfinite(numbers)]
    stats: dict[str, Any] = {"kind": NUMERIC, "count": int(numbers.size),
                             "missing_rate": _share(numbers.size - present.size, numbers.size)}
    if not present.size:
        return {**stats, "mean": None, "std": None, "min": None, "max": None,
                "quantiles": _quantiles([None] * len(QUANTILE_PROBABILITIES)), "histogram": None}
    low, high = np.quantile(present, HISTOGRAM_RANGE)
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1) if high > low else np.array([low, high])
    return {**stats, "mean": _number(present.mean()), "std": _number(present.std()),
            "min": _number(present.min()), "max": _number(present.max()),
            "quantiles": _quantiles(np.quantile(present, QUANTILE_PROBABILITIES)),
            "histogram": {"edges": [_number(edge) for edge in edges], **histogram_counts(present, edges)}}


def histogram_counts(values: Iterable[Any], edges: Sequence[float]) -> dict:
    """{"counts", "under", "over"} of the finite values over `edges` (as in numeric_stats' histogram),
    so a live window can be counted into the reference's bins."""
    numbers = _as_floats(values)
    numbers = numbers[np.isfinite(numbers)]
    edges = np.asarray(edges, dtype=float)
    low, high = edges[0], edges[-1]
    inside = numbers[(numbers >= low) & (numbers <= high)]
    if high > low:
        counts = np.histogram(inside, bins=edges)[0]
    else:  # one degenerate bin: every value equal to the edge
        counts = np.array([inside.size])
    return {"counts": [int(count) for count in counts], "under": int((numbers < low).sum()),
            "over": int((numbers > high).sum())}


def categorical_stats(values: Iterable[Any], top: int = TOP_CATEGORIES) -> dict:
    """Count, missing rate and the shares of the `top` most frequent values (the rest as "__other__")."""
    keys = [None if _is_missing(value) else label_key(value) for value in values]
    present = [key for key in keys if key is not None]
    counted: dict[str, int] = {}
    for key in present:
        counted[key] = counted.get(key, 0) + 1
    ranked = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
    frequencies = {key: _share(count, len(present)) for key, count in ranked[:top]}
    rest = sum(count for _, count in ranked[top:])
    if rest:
        frequencies[OTHER] = _share(rest, len(present))
    return {"kind": CATEGORICAL, "count": len(keys), "missing_rate": _share(len(keys) - len(present), len(keys)),
            "distinct": len(counted), "frequencies": frequencies}


def classification_predictions(predicted: Iterable[Any], probabilities: np.ndarray | None = None) -> dict:
    """A classifier's predictions: class frequencies, plus the top probability's stats when there are any."""
    stats = categorical_stats(predicted)
    if probabilities is not None:
        stats["top_probability"] = numeric_stats(np.asarray(probabilities, dtype=float).max(axis=1))
    return stats


def build_reference(features: Mapping[str, tuple[str, Iterable[Any]]], target: dict, predictions: dict,
                    errors: Iterable[float], residuals: Iterable[float] | None = None) -> dict:
    """The card's `reference`. `features` maps each name to (kind, training values); `target` and
    `predictions` are already summarised (numeric_stats, categorical_stats or
    classification_predictions); `errors` are the held-out errors and `residuals`, a regressor's
    only, the held-out signed residuals y − ŷ."""
    summaries = {name: numeric_stats(values) if kind == NUMERIC else categorical_stats(values)
                 for name, (kind, values) in features.items()}
    built = {"format": FORMAT, "features": summaries, "target": target, "predictions": predictions,
             "errors": numeric_stats(errors)}
    if residuals is not None:
        built["residuals"] = numeric_stats(residuals)
    return built


def _quantiles(values: Iterable[Any]) -> dict:
    return {"probabilities": list(QUANTILE_PROBABILITIES),
            "values": [None if value is None else _number(value) for value in values]}


def _as_floats(values: Iterable[Any]) -> np.ndarray:
    if hasattr(values, "to_numpy"):  # a pandas Series, nullable dtypes included
        return values.to_numpy(dtype=float, na_value=math.nan).ravel()
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(float).ravel()
    return np.array([math.nan if _is_missing(value) else value for value in values], dtype=float).ravel()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ == "NAType"  # pandas.NA, without importing pandas


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
