"""Trains the regressor once on scikit-learn's bundled diabetes data and writes it to `models/`.

Writes `models/model.skops` and `models/model_card.json` (version, training time, feature names,
held-out MAE/RMSE/R²), then exits 0. Nothing is downloaded: the data ships with scikit-learn.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sklearn
from pydantic import Field
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from mlmonitor.logs import configure_logging
from mlmonitor.model_store import ModelCard, save_model
from mlmonitor.settings import CommonSettings, load_settings


class Settings(CommonSettings):
    models_dir: Path = Field(Path("models"), description="Where to write the model and its card.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the data kept out of training.")
    alpha: float = Field(0.1, gt=0, description="Ridge regularisation strength.")
    seed: int = Field(42, description="Random seed of the train/holdout split.")


def train(settings: Settings):
    data = load_diabetes()
    x_train, x_holdout, y_train, y_holdout = train_test_split(
        data.data, data.target, test_size=settings.holdout_fraction, random_state=settings.seed
    )
    estimator = Ridge(alpha=settings.alpha).fit(x_train, y_train)
    predicted = estimator.predict(x_holdout)
    card = ModelCard(
        version="",
        trained_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        estimator=f"Ridge(alpha={settings.alpha})",
        feature_names=list(data.feature_names),
        holdout_mae=float(mean_absolute_error(y_holdout, predicted)),
        holdout_rmse=float(np.sqrt(mean_squared_error(y_holdout, predicted))),
        holdout_r2=float(r2_score(y_holdout, predicted)),
        train_rows=len(x_train),
        holdout_rows=len(x_holdout),
        sklearn_version=sklearn.__version__,
    )
    return estimator, card


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(Settings, argv, prog="learn_model")
    logger = configure_logging("learn_model", settings.log_level)
    estimator, card = train(settings)
    card = save_model(settings.models_dir, estimator, card)
    logger.info("trained %s version %s on %d rows; held-out MAE %.2f, RMSE %.2f, R² %.3f; wrote %s",
                card.estimator, card.version, card.train_rows, card.holdout_mae, card.holdout_rmse,
                card.holdout_r2, settings.models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
