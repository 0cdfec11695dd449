"""Trains a model, writes it with its card to `models/` (mlmonitor.model_store), checks that it
loads back, and exits 0.

Without flags: Ridge(alpha=0.1) on scikit-learn's bundled diabetes data (nothing is downloaded),
20 % held out, seed 42. With `--data PATH --target COLUMN`: the user's CSV or Parquet table, for
regression or classification (`--task`; inferred when omitted), with any scikit-learn estimator
(`--estimator DOTTED.PATH --estimator-params JSON`; default Ridge, or LogisticRegression for
classification).

Columns of numeric dtype are numeric features; any other (text, category, boolean) is categorical,
its values as strings. Unless the estimator handles them itself, it is wrapped in a Pipeline: the
median for a missing number, "missing" for a missing category, then one-hot encoding that ignores
categories not seen in training. Rows without a target are dropped. The card records the feature
schema, the held-out figures of the task and reference statistics for drift detection
(mlmonitor.reference).

Bad input (a missing file or column, an estimator that can't be imported or refuses its
parameters, a target or estimator that doesn't fit the task, types the artifact needs beyond the
allowlist) ends with one error line and exit code 2; a model that doesn't load back the same, 1.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import sklearn
from pydantic import Field
from sklearn import metrics
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils import InputTags, get_tags

from mlmonitor import reference
from mlmonitor.datasets import DatasetError, load_table
from mlmonitor.logs import configure_logging
from mlmonitor.model_store import ModelCard, ModelCorrupt, ModelNotReady, UntrustedTypes, load_model, save_model
from mlmonitor.schema import CATEGORICAL, NUMERIC, FeatureSchema, FeatureSpec
from mlmonitor.settings import CommonSettings, load_settings
from mlmonitor.tasks import CLASSIFICATION, REGRESSION, classification_error, label_key, regression_error

log = logging.getLogger("learn_model")

DIABETES = "sklearn.datasets.load_diabetes"
MAX_INFERRED_CLASSES = 20  # integer targets with at most this many values, and
MAX_INFERRED_CLASS_SHARE = 0.2  # at most this share of the rows, are taken for class labels
MAX_CARD_CATEGORIES = 1000
MISSING_CATEGORY = "missing"
ROUND_TRIP_ROWS = 5
# Held-out rows enough for the reference's errors on their own: their mean is then known to within
# 1/45 of their σ, and out-of-fold errors would only cost more fits.
ENOUGH_HELD_OUT_ROWS = 2000


class Settings(CommonSettings):
    models_dir: Path = Field(Path("models"), description="Where to write the model and its card.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the data kept out of training.")
    alpha: float = Field(0.1, gt=0, description="Ridge regularisation strength (the default regressor).")
    seed: int = Field(42, description="Random seed of the train/holdout split.")
    reference_folds: int = Field(5, ge=0, le=20, description=(
        "Cross-validation folds over the training rows whose out-of-fold errors join the held-out ones in "
        "the drift reference (more rows: a tighter reference, quicker alerts), when fewer than 2,000 rows are "
        "held out; each fold fits the estimator once more. 0 or 1: the held-out rows alone."))
    data: Path | None = Field(None, description="CSV or Parquet table to train on (default: the diabetes data).")
    target: str | None = Field(None, description="With --data: the column to predict; the others are the features.")
    task: Literal["auto", "regression", "classification"] = Field(
        "auto", description="auto: what --estimator is (a classifier or a regressor); without one, classification "
                            "for a text or boolean target or integers with few distinct values (at most 20, and at "
                            "most 20 % of the rows), else regression.")
    estimator: str | None = Field(None, description="Dotted path of a scikit-learn estimator class, e.g. "
                                                    "sklearn.ensemble.HistGradientBoostingRegressor (default: Ridge, "
                                                    "or LogisticRegression(max_iter=1000) for classification).")
    estimator_params: str | None = Field(None, description='The estimator\'s parameters as a JSON object, e.g. '
                                                           '\'{"max_iter": 50}\'.')
    trusted_types: str = Field("", description="Comma-separated types the artifact may need beyond the built-in "
                                               "allowlist; name only types whose code you trust.")

    @property
    def extra_trusted(self) -> list[str]:
        return [name.strip() for name in self.trusted_types.split(",") if name.strip()]


class UsageError(ValueError):
    """The flags or the data can't make a model; the message says why, in one line."""


class RoundTripError(RuntimeError):
    """The saved artifact does not load back as the model that was fitted."""


@dataclass(frozen=True)
class Table:
    """Features as the model takes them (numeric columns float64, categorical ones object: str or
    None) and the target, without rows whose target is missing."""

    features: pd.DataFrame
    target: pd.Series
    kinds: dict[str, str]  # feature name → numeric or categorical
    source: str  # the card's `data`

    @property
    def all_numeric(self) -> bool:
        return all(kind == NUMERIC for kind in self.kinds.values())


class Trained(NamedTuple):
    model: Any  # the fitted estimator, in its Pipeline when wrapped
    card: ModelCard
    check_rows: Any  # a few held-out rows, as the model takes them, to check the saved artifact with


# --- the data -----------------------------------------------------------------------------------

def diabetes_table() -> Table:
    data = load_diabetes()
    features = pd.DataFrame(data.data, columns=list(data.feature_names))
    return Table(features, pd.Series(data.target, name="target"), dict.fromkeys(features.columns, NUMERIC), DIABETES)


def user_table(path: Path, target: str) -> Table:
    """The user's table: features prepared column by column, rows without a target dropped."""
    frame = load_table(path, target)
    names = [str(name) for name in frame.columns if name != target]
    if not names:
        raise DatasetError(f"{path} has no feature columns besides the target {target!r}")
    if "" in names or len(set(names)) != len(names):
        raise DatasetError(f"{path}: every column needs a name of its own; got {', '.join(map(repr, names))}")
    columns = {str(name): _feature_column(frame[name], f"{path}: column {str(name)!r}")
               for name in frame.columns if name != target}
    features = pd.DataFrame(columns, index=frame.index)
    labels = frame[target]
    missing = labels.isna()
    if _is_numeric(labels):
        _refuse_infinite(labels.to_numpy(dtype="float64", na_value=np.nan), f"{path}: target {target!r}")
    else:  # an empty label is no label, as features sees it
        missing |= labels.map(lambda value: isinstance(value, str) and not value.strip())
    if missing.all():
        raise DatasetError(f"{path}: every row's target {target!r} is missing")
    if missing.any():
        log.info("dropped %d of %d rows: their target %r is missing", int(missing.sum()), len(frame), target)
    kinds = {name: NUMERIC if _is_numeric(column) else CATEGORICAL for name, column in columns.items()}
    return Table(features[~missing].reset_index(drop=True), labels[~missing].reset_index(drop=True), kinds, str(path))


def _feature_column(column: pd.Series, where: str) -> pd.Series:
    """A numeric column as float64 (NaN where missing); any other as object strings (None where missing)."""
    if _is_numeric(column):
        numbers = column.to_numpy(dtype="float64", na_value=np.nan)
        _refuse_infinite(numbers, where)
        return pd.Series(numbers, index=column.index)
    texts = [None if missing else str(value) for value, missing in zip(column.tolist(), column.isna().tolist())]
    return pd.Series(texts, index=column.index, dtype=object)


def _refuse_infinite(numbers: np.ndarray, where: str) -> None:
    infinite = np.flatnonzero(np.isinf(numbers))
    if infinite.size:
        raise DatasetError(f"{where} is infinite in data row {infinite[0] + 1}")


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)


# --- the task and the target --------------------------------------------------------------------

def choose_task(requested: str, target: pd.Series, estimator) -> str:
    """The task asked for; else the one the estimator declares; else the one the target suggests."""
    if requested != "auto":
        return requested
    kind = _estimator_type(estimator) if estimator is not None else None
    if kind in ("classifier", "regressor"):
        task = CLASSIFICATION if kind == "classifier" else REGRESSION
        log.info("task %s: %s is a %s (--task chooses)", task, type(estimator).__name__, kind)
        return task
    task, why = infer_task(target)
    log.info("task %s: %s (--task chooses)", task, why)
    return task


def infer_task(target: pd.Series) -> tuple[str, str]:
    """(task, why in a few words) from the target's values alone."""
    name = target.name
    if pd.api.types.is_bool_dtype(target.dtype):
        return CLASSIFICATION, f"the target {name!r} is boolean"
    if not _is_numeric(target):
        return CLASSIFICATION, f"the target {name!r} holds text"
    values = target.to_numpy(dtype=float)
    distinct = len(np.unique(values))
    integral = bool(np.all(np.floor(values) == values))
    if integral and distinct <= MAX_INFERRED_CLASSES and distinct <= MAX_INFERRED_CLASS_SHARE * len(values):
        return CLASSIFICATION, f"the target {name!r} holds {distinct} distinct integers in {len(values)} rows"
    kind = "integers" if integral else "numbers"
    return REGRESSION, f"the target {name!r} holds {distinct} distinct {kind} in {len(values)} rows"


def target_for(task: str, target: pd.Series) -> pd.Series:
    """The target as the task takes it: floats to regress on, or class labels (ints or strings)."""
    name = target.name
    if task == REGRESSION:
        if not _is_numeric(target):
            raise UsageError(f"the target {name!r} holds text such as {str(target.iloc[0])!r}, which a regression "
                             f"can't predict; use --task classification")
        return pd.Series(target.to_numpy(dtype=float), name=name)
    if _is_numeric(target):
        values = target.to_numpy(dtype=float)
        fractional = values[np.floor(values) != values]
        if fractional.size:
            raise UsageError(f"the target {name!r} holds non-integer numbers such as {float(fractional[0])!r}, "
                             f"which are not class labels; use --task regression")
        labels = pd.Series(values.astype(np.int64), name=name)
    else:
        labels = pd.Series([str(value) for value in target.tolist()], name=name, dtype=object)
    if labels.nunique() < 2:
        raise UsageError(f"the target {name!r} has a single class {labels.iloc[0]!r}; a classifier needs two or more")
    return labels


# --- the estimator ------------------------------------------------------------------------------

def estimator_params(settings: Settings) -> dict:
    if settings.estimator_params is None:
        return {}
    try:
        params = json.loads(settings.estimator_params)
    except ValueError as error:
        raise UsageError(f"--estimator-params is not JSON: {error}") from None
    if not isinstance(params, dict):
        raise UsageError(f"--estimator-params must be a JSON object of parameters, got {settings.estimator_params!r}")
    return params


def user_estimator(dotted_path: str, params: dict):
    """An instance of the class at `dotted_path`, e.g. sklearn.ensemble.HistGradientBoostingRegressor."""
    where = f"--estimator {dotted_path}"
    module_name, _, class_name = dotted_path.rpartition(".")
    if not module_name or not class_name:
        raise UsageError(f"{where}: expected a dotted path such as sklearn.ensemble.HistGradientBoostingRegressor")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ModuleNotFoundError, or whatever the module raises on import
        raise UsageError(f"{where}: can't import {module_name}: {type(error).__name__}: {error}") from None
    estimator_class = getattr(module, class_name, None)
    if estimator_class is None:
        raise UsageError(f"{where}: {module_name} has no {class_name}")
    if not isinstance(estimator_class, type) or not all(
            callable(getattr(estimator_class, method, None)) for method in ("fit", "predict", "get_params")):
        raise UsageError(f"{where} is not a scikit-learn estimator class (one with fit, predict and get_params)")
    return _instance(estimator_class, params)


def default_estimator(task: str, settings: Settings, params: dict):
    if task == CLASSIFICATION:
        return _instance(LogisticRegression, {"max_iter": 1000, **params})
    return _instance(Ridge, {"alpha": settings.alpha, **params})


def _instance(estimator_class: type, params: dict):
    try:
        return estimator_class(**params)
    except Exception as error:
        raise UsageError(f"{estimator_class.__name__} refuses the parameters {json.dumps(params)}: "
                         f"{type(error).__name__}: {_one_line(error)}") from None


def check_estimator_fits(estimator, task: str) -> None:
    kind = _estimator_type(estimator)
    if kind not in (None, "classifier", "regressor"):
        raise UsageError(f"{type(estimator).__name__} is a {kind.replace('_', ' ')}, not a regressor or a classifier")
    if task == CLASSIFICATION and kind == "regressor":
        raise UsageError(f"{type(estimator).__name__} is a regressor, but the task is classification; "
                         f"choose a classifier with --estimator, or --task regression")
    if task == REGRESSION and kind == "classifier":
        raise UsageError(f"{type(estimator).__name__} is a classifier, but the task is regression; "
                         f"choose a regressor with --estimator, or --task classification")


def wrap(estimator, table: Table) -> tuple[Any, dict[str, bool]]:
    """(the model to fit, whether each feature may be missing). The estimator alone when it takes the
    table as it is; else in a Pipeline that imputes what it can't take and one-hot encodes categories."""
    tags = _input_tags(estimator)
    numeric = [name for name, kind in table.kinds.items() if kind == NUMERIC]
    categorical = [name for name, kind in table.kinds.items() if kind == CATEGORICAL]
    numbers_missing = bool(table.features[numeric].isna().to_numpy().any()) if numeric else False
    impute_numbers = not tags.allow_nan and (numbers_missing or bool(categorical))
    encode = bool(categorical) and not tags.string
    allows_missing = {name: tags.allow_nan or impute_numbers for name in numeric}
    allows_missing |= {name: tags.allow_nan or encode for name in categorical}
    if not categorical:  # the model service passes a float array: no column names to select by
        if not impute_numbers:
            return estimator, allows_missing
        return Pipeline([("impute", SimpleImputer(strategy="median")), ("estimator", estimator)]), allows_missing
    if not impute_numbers and not encode:
        return estimator, allows_missing
    transformers = []
    if numeric:
        transformers.append(("numeric", SimpleImputer(strategy="median") if impute_numbers else "passthrough", numeric))
    transformers.append(("categorical", _category_encoder() if encode else "passthrough", categorical))
    prepare = ColumnTransformer(transformers, sparse_threshold=0.3 if tags.sparse else 0.0)
    return Pipeline([("prepare", prepare), ("estimator", estimator)]), allows_missing


def _category_encoder() -> Pipeline:
    # Missing is NaN in a table pandas read and None in what the model service builds
    # (FeatureSchema.model_input); a SimpleImputer matches one or the other, so there are two.
    return Pipeline([
        ("missing_nan", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
        ("missing_none", SimpleImputer(missing_values=None, strategy="constant", fill_value=MISSING_CATEGORY)),
        ("one_hot", OneHotEncoder(handle_unknown="ignore")),
    ])


def _estimator_type(estimator) -> str | None:
    """"classifier", "regressor", "clusterer", … as sklearn's tags say (what is_classifier reads)."""
    try:
        return get_tags(estimator).estimator_type
    except Exception:  # an estimator that predates tags declares nothing
        return None


def _input_tags(estimator):
    try:
        return get_tags(estimator).input_tags
    except Exception:  # an estimator that predates tags: assume it needs everything done for it
        return InputTags()


# --- training -----------------------------------------------------------------------------------

def train(settings: Settings) -> Trained:
    """Fits the model and fills its card; raises UsageError or DatasetError with a one-line reason."""
    table = read_table(settings)
    task, estimator, described = choose_estimator(settings, table)
    target = target_for(task, table.target)
    model, allows_missing = wrap(estimator, table)
    x_train, x_holdout, y_train, y_holdout = _split(table.features, target, task, settings)
    train_input = _model_input(x_train, table)
    try:
        model.fit(train_input, y_train.to_numpy())
    except (ValueError, TypeError) as error:  # the estimator refuses its parameters or this data
        raise UsageError(f"{described} can't be fitted on {table.source}: {type(error).__name__}: "
                         f"{_one_line(error)}") from None
    evaluation = evaluate(task, model, _model_input(x_holdout, table), y_holdout, y_train, train_input,
                          out_of_fold(task, model, train_input, y_train, settings, len(y_holdout)))
    card = ModelCard(
        version="",
        trained_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        estimator=described,
        feature_names=list(table.kinds),
        holdout_mae=evaluation.holdout.get("mae"),
        holdout_rmse=evaluation.holdout.get("rmse"),
        holdout_r2=evaluation.holdout.get("r2"),
        train_rows=len(x_train),
        holdout_rows=len(x_holdout),
        sklearn_version=sklearn.__version__,
        extra={"model": " ".join(repr(model).split())} if model is not estimator else {},
        task=task,
        target=str(table.target.name),
        data=table.source,
        features=feature_schema(x_train, table, allows_missing).to_card(),
        classes=evaluation.classes,
        predicts_proba=hasattr(model, "predict_proba"),
        holdout=evaluation.holdout,
        reference=reference.build_reference({name: (kind, x_train[name]) for name, kind in table.kinds.items()},
                                            **evaluation.reference),
    )
    return Trained(model, card, _model_input(x_holdout.head(ROUND_TRIP_ROWS), table))


def read_table(settings: Settings) -> Table:
    if settings.data is None and settings.target is not None:
        raise UsageError("--target needs --data (the diabetes data's target is fixed)")
    if settings.data is not None and settings.target is None:
        raise UsageError(f"--data {settings.data} needs --target, the column to predict")
    return diabetes_table() if settings.data is None else user_table(settings.data, settings.target)


def choose_estimator(settings: Settings, table: Table) -> tuple[str, Any, str]:
    """(task, the unfitted estimator, how the card names it)."""
    params = estimator_params(settings)
    chosen = user_estimator(settings.estimator, params) if settings.estimator else None
    task = choose_task(settings.task, table.target, chosen)
    estimator = chosen if chosen is not None else default_estimator(task, settings, params)
    check_estimator_fits(estimator, task)
    if chosen is None and not params and isinstance(estimator, Ridge):
        return task, estimator, f"Ridge(alpha={settings.alpha})"  # the seed's own wording
    return task, estimator, " ".join(repr(estimator).split())


class Evaluation(NamedTuple):
    holdout: dict  # the held-out figures of the task
    classes: list | None
    reference: dict  # build_reference's target, predictions, errors and (a regressor's) residuals


class OutOfFold(NamedTuple):
    """Each training row's prediction by a model fitted on the other folds: its probabilities when the
    model has them (a classifier's error is then 1 − p(true class), whatever the label), else its label
    or value."""
    predicted: np.ndarray | None
    probabilities: np.ndarray | None


def out_of_fold(task: str, model, train_input, y_train: pd.Series, settings: Settings,
                held_out_rows: int = 0) -> OutOfFold | None:
    """Out-of-fold predictions of the training rows, for the reference's errors and residuals: the
    held-out rows alone (89 of the diabetes data's 442) leave the residuals' mean uncertain by a
    tenth of their σ, and a detector calibrated against that uncertainty waits longer for a real
    bias. None when reference_folds < 2, when ENOUGH_HELD_OUT_ROWS are held out anyway, or when the
    estimator can't be cross-validated here."""
    folds = min(settings.reference_folds, len(y_train))
    if folds < 2 or held_out_rows >= ENOUGH_HELD_OUT_ROWS:
        return None
    splitter = (StratifiedKFold if task == CLASSIFICATION else KFold)(folds, shuffle=True, random_state=settings.seed)
    with_probabilities = task == CLASSIFICATION and hasattr(model, "predict_proba")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a class too rare for every fold: the errors still count
            predicted = cross_val_predict(clone(model), train_input, y_train.to_numpy(), cv=splitter,
                                          method="predict_proba" if with_probabilities else "predict")
    except (ValueError, TypeError) as error:
        log.warning("reference errors from the held-out rows alone: %d-fold cross-validation failed: %s",
                    folds, _one_line(error))
        return None
    return OutOfFold(None, predicted) if with_probabilities else OutOfFold(predicted, None)


def evaluate(task: str, model, holdout_input, y_holdout: pd.Series, y_train: pd.Series, train_input,
             oof: OutOfFold | None = None) -> Evaluation:
    """The held-out figures, and the reference's target (training rows), predictions (every row:
    the training rows', then the held-out rows'; the held-out ones alone are too few to stand for
    the population a live stream comes from), and errors and residuals: the held-out rows', then,
    with `oof`, the training rows' out of fold (on the training rows themselves they are smaller
    than on new data)."""
    predicted = model.predict(holdout_input)
    predicted_train = model.predict(train_input)
    if task == REGRESSION:
        truth, guess = y_holdout.to_numpy(dtype=float), np.asarray(predicted, dtype=float)
        if oof is not None:
            truth = np.concatenate([truth, y_train.to_numpy(dtype=float)])
            guess = np.concatenate([guess, np.asarray(oof.predicted, dtype=float)])
        errors = [regression_error(t, g) for t, g in zip(truth.tolist(), guess.tolist())]
        return Evaluation(regression_figures(y_holdout.to_numpy(), predicted), None,
                          {"target": reference.numeric_stats(y_train.to_numpy()),
                           "predictions": reference.numeric_stats(np.concatenate([predicted_train, predicted])),
                           "errors": errors, "residuals": truth - guess})
    probabilities = model.predict_proba(holdout_input) if hasattr(model, "predict_proba") else None
    classes = [_plain(label) for label in model.classes_]
    labels = [_plain(label) for label in predicted]
    every_label = [_plain(label) for label in predicted_train] + labels
    every_probability = None if probabilities is None else \
        np.concatenate([model.predict_proba(train_input), probabilities])
    errors = classification_errors(y_holdout.tolist(), labels, probabilities, classes)
    if oof is not None and (probabilities is None) == (oof.probabilities is None):
        labels_out_of_fold = [None] * len(y_train) if oof.predicted is None else [_plain(label) for label in oof.predicted]
        errors += classification_errors(y_train.tolist(), labels_out_of_fold, oof.probabilities, classes)
    return Evaluation(classification_figures(y_holdout.to_numpy(), predicted, probabilities, classes), classes,
                      {"target": reference.categorical_stats(y_train.tolist()),
                       "predictions": reference.classification_predictions(every_label, every_probability),
                       "errors": errors})


def _split(features: pd.DataFrame, target: pd.Series, task: str, settings: Settings):
    split = dict(test_size=settings.holdout_fraction, random_state=settings.seed)
    if task == CLASSIFICATION:
        try:  # every class in both parts, when each has enough rows
            return train_test_split(features, target, stratify=target, **split)
        except ValueError:
            pass
    try:
        return train_test_split(features, target, **split)
    except ValueError as error:  # too few rows for a holdout
        raise UsageError(f"can't hold out {settings.holdout_fraction:.0%} of {len(target)} rows: "
                         f"{_one_line(error)}") from None


def _model_input(frame: pd.DataFrame, table: Table):
    """What predict takes, as FeatureSchema.model_input builds it: a float array when every feature
    is numeric, else the DataFrame with named columns."""
    if table.all_numeric:
        return np.ascontiguousarray(frame.to_numpy(dtype=float))
    return frame


def feature_schema(x_train: pd.DataFrame, table: Table, allows_missing: dict[str, bool]) -> FeatureSchema:
    specs = []
    for name, kind in table.kinds.items():
        categories: tuple[str, ...] = ()
        if kind == CATEGORICAL:
            counts = x_train[name].value_counts(dropna=True)
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            if len(ranked) > MAX_CARD_CATEGORIES:
                log.info("column %r has %d categories; the card lists the %d most frequent",
                         name, len(ranked), MAX_CARD_CATEGORIES)
            categories = tuple(category for category, _ in ranked[:MAX_CARD_CATEGORIES])
        specs.append(FeatureSpec(name, kind, categories, allows_missing[name], "ignore"))
    return FeatureSchema(tuple(specs))


def regression_figures(y_true: np.ndarray, predicted: np.ndarray) -> dict:
    return {"mae": _figure(metrics.mean_absolute_error(y_true, predicted)),
            "rmse": _figure(np.sqrt(metrics.mean_squared_error(y_true, predicted))),
            "r2": _figure(metrics.r2_score(y_true, predicted)) if len(y_true) > 1 else None}


def classification_figures(y_true: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray | None,
                           classes: list) -> dict:
    with warnings.catch_warnings():  # a class absent from the holdout: sklearn warns, the figure stands
        warnings.simplefilter("ignore")
        figures = {
            "accuracy": metrics.accuracy_score(y_true, predicted),
            "balanced_accuracy": metrics.balanced_accuracy_score(y_true, predicted),
            "precision_macro": metrics.precision_score(y_true, predicted, average="macro", zero_division=0),
            "recall_macro": metrics.recall_score(y_true, predicted, average="macro", zero_division=0),
            "f1_macro": metrics.f1_score(y_true, predicted, average="macro", zero_division=0),
        }
        if probabilities is not None:
            truth = np.asarray(y_true)[:, None] == np.asarray(classes, dtype=object)[None, :]
            known = set(np.unique(y_true).tolist()) <= set(classes)  # a class the model never saw: no log loss
            figures["log_loss"] = metrics.log_loss(y_true, probabilities, labels=classes) if known else None
            if len(classes) == 2:
                figures["brier"] = metrics.brier_score_loss(truth[:, 1], probabilities[:, 1])
                both_seen = truth[:, 1].any() and not truth[:, 1].all()
                figures["roc_auc"] = metrics.roc_auc_score(truth[:, 1], probabilities[:, 1]) if both_seen else None
            else:
                figures["brier"] = float(np.mean(np.sum((probabilities - truth) ** 2, axis=1)))
    return {name: _figure(value) for name, value in figures.items()}


def classification_errors(y_true: list, predicted: list, probabilities: np.ndarray | None,
                          classes: list) -> list[float]:
    """Per held-out row, the error the metric service would log (mlmonitor.tasks)."""
    keys = [label_key(label) for label in classes]
    rows = probabilities if probabilities is not None else [None] * len(y_true)
    return [classification_error(_plain(truth), _plain(guess),
                                 None if row is None else dict(zip(keys, map(float, row))))
            for truth, guess, row in zip(y_true, predicted, rows)]


def _figure(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value):
    """A JSON-friendly python value: numpy's int64 → int, str stays str."""
    return value.item() if isinstance(value, np.generic) else value


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# --- the artifact ---------------------------------------------------------------------------------

def verify_round_trip(models_dir: Path, trained: Trained, card: ModelCard, extra_trusted: list[str]) -> None:
    """Loads the published model back as the model service would and checks it predicts the same."""
    loaded, loaded_card = load_model(models_dir, extra_trusted=extra_trusted)
    if loaded_card.version != card.version:
        raise RoundTripError(f"{models_dir} now holds version {loaded_card.version}, not {card.version}: "
                             f"did another learn_model run meanwhile?")
    expected, got = trained.model.predict(trained.check_rows), loaded.predict(trained.check_rows)
    same = np.allclose(expected, got, rtol=1e-12, atol=0) if expected.dtype.kind in "fc" \
        else np.array_equal(expected, got)
    if not same:
        raise RoundTripError(f"{models_dir / card.artifact} loads back but predicts {got[:3].tolist()} "
                             f"where the fitted model predicts {expected[:3].tolist()}")


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(Settings, argv, prog="learn_model")
    configure_logging("learn_model", settings.log_level)
    try:
        trained = train(settings)
        card = save_model(settings.models_dir, trained.model, trained.card, extra_trusted=settings.extra_trusted)
        verify_round_trip(settings.models_dir, trained, card, settings.extra_trusted)
    except (UsageError, DatasetError) as error:
        log.error("%s", error)
        return 2
    except UntrustedTypes as error:
        log.error("the model needs types that are not on the allowlist: %s; if you trust their code, "
                  "add them to --trusted-types (TRUSTED_TYPES), comma-separated", ", ".join(error.types))
        return 2
    except (RoundTripError, ModelNotReady, ModelCorrupt) as error:  # the model saved does not load back as fitted
        log.error("%s", error)
        return 1
    log.info("trained %s version %s (%s of %r) on %d rows of %s; held-out %s; wrote %s", card.estimator,
             card.version, card.task, card.target, card.train_rows, card.data, _figures(card),
             settings.models_dir / card.artifact)
    return 0


def _figures(card: ModelCard) -> str:
    if card.task == REGRESSION:
        return f"MAE {card.holdout_mae:.2f}, RMSE {card.holdout_rmse:.2f}, R² {_shown(card.holdout_r2, '.3f')}"
    return ", ".join(f"{name.replace('_', ' ')} {_shown(value, '.3f')}" for name, value in card.holdout.items())


def _shown(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
