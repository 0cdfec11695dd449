"""The trained model in `models/`: `model_card.json` (what it is) and the artifact it names,
`model-<version>.skops` (the estimator).

skops stores an estimator without pickle, and loading runs no code of types it was not told to
trust. `load_model` trusts exactly the types an artifact needs, and only when each of them is on
TRUSTED_TYPES below or in the caller's `extra_trusted`; the card's `trusted_types` only records
them (a tampered card can't widen trust). The card carries the artifact's SHA-256, which catches a
truncated or swapped artifact, and the model version: a hash of the fitted estimator's content
(`joblib.hash`), so training again on the same data with the same seed gives the same version,
while the skops archive itself differs byte for byte (it names its members after object ids).

The card is the pointer. `save_model` writes the new artifact under its own name (temporary file,
fsync, rename), then replaces the card the same way, so a reader that reads the card and then the
artifact it names never pairs a card with another model's artifact, while learn_model trains again
next to a running model service. The 3 newest artifacts stay; older ones are deleted, so a reader
would have to lag 3 saves behind to find its artifact gone (ModelNotReady: read the card again).
Cards written before versioned names had no `artifact` field and name `model.skops`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .files import FileSignature, file_signature, write_atomically

ARTIFACT_NAME = "model.skops"  # the artifact of a card written before versioned names
CARD_NAME = "model_card.json"
KEPT_ARTIFACTS = 3

# Types beyond skops' defaults that we trust to load: what scikit-learn's linear models, tree
# ensembles, HistGradientBoosting* and learn_model's Pipeline/ColumnTransformer/SimpleImputer/
# OneHotEncoder wrapping need (checked with skops.io.get_untrusted_types). Anything else must be
# named by the user (learn_model's --trusted-types, load_model's extra_trusted).
TRUSTED_TYPES = frozenset({
    "numpy.dtype",  # SimpleImputer and OneHotEncoder keep the dtype they were fitted on
    "sklearn.tree._tree.Tree",  # DecisionTree*, RandomForest*, ExtraTrees*, GradientBoosting*
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # HistGradientBoosting*
})

log = logging.getLogger("mlmonitor.model_store")


class ModelNotReady(RuntimeError):
    """No complete model in the folder yet."""


class ModelCorrupt(RuntimeError):
    """A model is there but can't be used; the message says why, in one line."""


class UntrustedTypes(ModelCorrupt):
    """The artifact needs types that are neither on TRUSTED_TYPES nor trusted by the caller."""

    def __init__(self, reason: str, types: Sequence[str]):
        super().__init__(reason)
        self.types = list(types)


@dataclass(frozen=True)
class ModelCard:
    """What the model is. Cards written before `task` existed read as a regression on numeric features.

    - `features`: the feature schema (mlmonitor.schema.FeatureSchema.to_card): names in order, kind,
      categories seen, whether missing values are accepted.
    - `classes`: a classifier's class labels, as in `estimator.classes_`; `predicts_proba` whether
      the model publishes probabilities.
    - `holdout`: the held-out figures of the task (regression: mae, rmse, r2; classification:
      accuracy, balanced_accuracy, macro precision/recall/f1, log_loss, brier, roc_auc where defined).
    - `reference`: statistics of the training features and target, the predictions on every row
      (training and held-out), the held-out errors (absolute errors; for a classifier 1 − p(true
      class)) and a regressor's held-out residuals, for drift detection; the format is described in
      mlmonitor.reference.
    - `trusted_types`: the types beyond skops' defaults that loading the artifact needs; a record
      only: load_model trusts its own allowlist and the caller's, never the card.
    - `artifact`: the artifact's file name in the card's folder (`model-<version>.skops`).
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


def model_version(estimator) -> str:
    """12 hex digits that name the fitted model: equal for equal parameters and learned weights."""
    import joblib

    return joblib.hash(estimator)[:12]


def artifact_name(version: str) -> str:
    return f"model-{version}.skops"


def save_model(models_dir: Path, estimator, card: ModelCard, *, extra_trusted: Sequence[str] = ()) -> ModelCard:
    """Writes the artifact, then the card that names it; returns the card with version, checksum,
    artifact and trusted_types filled in. Raises UntrustedTypes, writing nothing, when loading the
    artifact would need types outside TRUSTED_TYPES and `extra_trusted`."""
    import skops.io

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    version = model_version(estimator)
    name = artifact_name(version)
    published = _artifact_the_card_vouches_for(models_dir, name)
    artifact = published if published is not None else skops.io.dumps(estimator)
    needed = _types_needed(artifact, models_dir / name)
    _refuse_untrusted(needed, extra_trusted, f"model {version}")
    card = replace(card, version=version, artifact_sha256=hashlib.sha256(artifact).hexdigest(), artifact=name,
                   trusted_types=needed)
    if published is None:
        write_atomically(models_dir / name, artifact)
    _mark_newest(models_dir / name)
    write_atomically(models_dir / CARD_NAME, json.dumps(asdict(card), indent=2).encode())
    _prune_artifacts(models_dir, keep=name)
    return card


def card_signature(models_dir: Path) -> FileSignature | None:
    """Tells a replaced card from the one read before (a new version): None while there is no card."""
    return file_signature(Path(models_dir) / CARD_NAME)


def read_card(models_dir: Path) -> ModelCard:
    card_path = Path(models_dir) / CARD_NAME
    try:
        raw = json.loads(card_path.read_text())
        return ModelCard(**raw)
    except FileNotFoundError:
        raise ModelNotReady(f"no model card at {card_path} yet (has learn_model run?)") from None
    except (ValueError, TypeError) as error:
        raise ModelCorrupt(f"{card_path} is not a valid model card: {error}") from None


def load_model(models_dir: Path, *, extra_trusted: Sequence[str] = ()):
    """Returns (estimator, card): the card, then the artifact it names, checked against the card's
    SHA-256 and loaded trusting only the types it needs that are on TRUSTED_TYPES or in
    `extra_trusted`. Raises ModelNotReady or ModelCorrupt (UntrustedTypes) with a one-line reason."""
    import skops.io

    card = read_card(models_dir)
    artifact_path = _artifact_path(Path(models_dir), card)
    try:
        artifact = artifact_path.read_bytes()
    except FileNotFoundError:
        raise ModelNotReady(f"{artifact_path} is missing although its card exists") from None
    digest = hashlib.sha256(artifact).hexdigest()
    if digest != card.artifact_sha256:
        raise ModelCorrupt(f"{artifact_path} does not match its card (sha256 {digest[:12]}, "
                           f"expected {card.artifact_sha256[:12]}); run learn_model again")
    needed = _types_needed(artifact, artifact_path)
    _refuse_untrusted(needed, extra_trusted, str(artifact_path))
    try:
        estimator = skops.io.loads(artifact, trusted=needed)
    except Exception as error:
        raise ModelCorrupt(f"{artifact_path} can't be loaded: {type(error).__name__}: {error}") from None
    if getattr(estimator, "n_features_in_", card.n_features) != card.n_features:
        raise ModelCorrupt(f"{artifact_path} expects {estimator.n_features_in_} features, its card says "
                           f"{card.n_features}")
    return estimator, card


def _artifact_path(models_dir: Path, card: ModelCard) -> Path:
    name = card.artifact
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise ModelCorrupt(f"{models_dir / CARD_NAME} names the artifact {name!r}, which is not a file name "
                           f"in {models_dir}")
    return models_dir / name


def _types_needed(artifact: bytes, where: Path) -> list[str]:
    """The types beyond skops' defaults that loading `artifact` needs."""
    import skops.io

    try:
        return sorted(skops.io.get_untrusted_types(data=artifact))
    except Exception as error:  # not a zip, no schema: skops' own errors vary
        raise ModelCorrupt(f"{where} can't be loaded: {type(error).__name__}: {error}") from None


def _refuse_untrusted(needed: Sequence[str], extra_trusted: Sequence[str], what: str) -> None:
    trusted = TRUSTED_TYPES | set(extra_trusted)
    refused = [name for name in needed if name not in trusted]
    if refused:
        raise UntrustedTypes(f"{what} holds types that are not on the allowlist: {', '.join(refused)}; "
                             f"trust them (TRUSTED_TYPES setting) only if you trust their code", refused)


def _artifact_the_card_vouches_for(models_dir: Path, name: str) -> bytes | None:
    """The bytes of artifact `name` when the current card names it and they match its checksum.
    Saving the same version again keeps that file: rewriting it (skops' bytes differ on every dump)
    would pair the current card with bytes it does not vouch for until the new card lands."""
    try:
        current = read_card(models_dir)
        if current.artifact != name:
            return None
        artifact = (models_dir / name).read_bytes()
    except (ModelNotReady, ModelCorrupt, OSError):
        return None
    return artifact if hashlib.sha256(artifact).hexdigest() == current.artifact_sha256 else None


def _artifacts(models_dir: Path) -> list[Path]:
    return [path for path in models_dir.iterdir()
            if path.name == ARTIFACT_NAME or (path.name.startswith("model-") and path.name.endswith(".skops"))]


def _mark_newest(path: Path) -> None:
    """Stamps the artifact newer than every other, which orders them for pruning even when two saves
    fall within the file system's clock tick, or when the same version is saved again."""
    others = [_modified_ns(other) for other in _artifacts(path.parent) if other != path]
    stamp = max([time.time_ns(), *(modified + 1 for modified in others)])
    os.utime(path, ns=(stamp, stamp))


def _modified_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # pruned meanwhile by another learn_model: the oldest of all
        return 0


def _prune_artifacts(models_dir: Path, keep: str) -> None:
    """Deletes all but the KEPT_ARTIFACTS newest artifacts; never `keep`, the one the card names."""
    others = sorted((path for path in _artifacts(models_dir) if path.name != keep),
                    key=lambda path: (-_modified_ns(path), path.name))
    for old in others[KEPT_ARTIFACTS - 1:]:
        try:
            old.unlink(missing_ok=True)
        except OSError as error:  # the new model is published; a leftover file is only untidy
            log.warning("can't delete the old artifact %s: %s", old, error)
