"""The trained model in `models/`: `model.skops` (the estimator) and `model_card.json` (what it is).

skops stores an estimator without pickle, and loading accepts only types it trusts, so a
tampered file cannot run code. The card carries the artifact's SHA-256, which catches a truncated
or swapped artifact, and the model version: a hash of the fitted estimator's content
(`joblib.hash`), so training again on the same data with the same seed gives the same version,
while the skops archive itself differs byte for byte (it names its members after object ids). The
card is written last: once it is there, the model is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARTIFACT_NAME = "model.skops"
CARD_NAME = "model_card.json"


class ModelNotReady(RuntimeError):
    """No complete model in the folder yet."""


class ModelCorrupt(RuntimeError):
    """A model is there but can't be used; the message says why, in one line."""


@dataclass(frozen=True)
class ModelCard:
    """What the model is. Cards written before `task` existed read as a regression on numeric features.

    - `features`: the feature schema (mlmonitor.schema.FeatureSchema.to_card): names in order, kind,
      categories seen, whether missing values are accepted.
    - `classes`: a classifier's class labels, as in `estimator.classes_`; `predicts_proba` whether
      the model publishes probabilities.
    - `holdout`: the held-out figures of the task (regression: mae, rmse, r2; classification:
      accuracy, balanced_accuracy, macro precision/recall/f1, log_loss, brier, roc_auc where defined).
    - `reference`: statistics of the training features, the held-out predictions and the held-out
      errors (absolute errors; for a classifier 1 − p(true class)), for drift detection.
    - `trusted_types`: the types beyond skops' defaults that loading the artifact needs.
    """

    version: str
    trained_at: str
    estimator: str
    feature_names: list[str]
    holdout_mae: float | None
    holdout_rmse: float | None
    holdout_r2: float | None
    train_rows: int
    holdout_rows: int
    sklearn_version: str
    artifact_sha256: str = ""
    extra: dict = field(default_factory=dict)
    task: str = "regression"
    target: str | None = None
    data: str | None = None  # where the training data came from
    features: list[dict] = field(default_factory=list)
    classes: list | None = None
    predicts_proba: bool = False
    holdout: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    trusted_types: list[str] = field(default_factory=list)
    artifact: str = ARTIFACT_NAME  # file name, in the card's folder, of the artifact it describes

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def schema(self):
        from .schema import FeatureSchema

        return FeatureSchema.from_card(self.features, self.feature_names)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def model_version(estimator) -> str:
    """12 hex digits that name the fitted model: equal for equal parameters and learned weights."""
    import joblib

    return joblib.hash(estimator)[:12]


def save_model(models_dir: Path, estimator, card: ModelCard) -> ModelCard:
    """Writes the artifact, then the card; returns the card with version and checksum filled in."""
    import skops.io

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    artifact = skops.io.dumps(estimator)
    digest = hashlib.sha256(artifact).hexdigest()
    card = ModelCard(**{**asdict(card), "artifact_sha256": digest, "version": model_version(estimator)})
    (models_dir / CARD_NAME).unlink(missing_ok=True)
    _write_atomically(models_dir / ARTIFACT_NAME, artifact)
    _write_atomically(models_dir / CARD_NAME, json.dumps(asdict(card), indent=2).encode())
    return card


def read_card(models_dir: Path) -> ModelCard:
    card_path = Path(models_dir) / CARD_NAME
    try:
        raw = json.loads(card_path.read_text())
        return ModelCard(**raw)
    except FileNotFoundError:
        raise ModelNotReady(f"no model card at {card_path} yet (has learn_model run?)") from None
    except (ValueError, TypeError) as error:
        raise ModelCorrupt(f"{card_path} is not a valid model card: {error}") from None


def load_model(models_dir: Path):
    """Returns (estimator, card). Raises ModelNotReady or ModelCorrupt with a one-line reason."""
    import skops.io

    card = read_card(models_dir)
    artifact_path = Path(models_dir) / ARTIFACT_NAME
    try:
        artifact = artifact_path.read_bytes()
    except FileNotFoundError:
        raise ModelNotReady(f"{artifact_path} is missing although its card exists") from None
    digest = hashlib.sha256(artifact).hexdigest()
    if digest != card.artifact_sha256:
        raise ModelCorrupt(f"{artifact_path} does not match its card (sha256 {digest[:12]}, "
                           f"expected {card.artifact_sha256[:12]}); run learn_model again")
    try:
        untrusted = skops.io.get_untrusted_types(data=artifact)
        if untrusted:
            raise ModelCorrupt(f"{artifact_path} holds types we do not trust to load: {', '.join(untrusted)}")
        estimator = skops.io.loads(artifact)
    except ModelCorrupt:
        raise
    except Exception as error:
        raise ModelCorrupt(f"{artifact_path} can't be loaded: {type(error).__name__}: {error}") from None
    if getattr(estimator, "n_features_in_", card.n_features) != card.n_features:
        raise ModelCorrupt(f"{artifact_path} expects {estimator.n_features_in_} features, its card says "
                           f"{card.n_features}")
    return estimator, card
