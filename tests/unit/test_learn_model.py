from __future__ import annotations

from learn_model import Settings, train
from mlmonitor.settings import load_settings


def test_train_gives_a_sane_model_card():
    estimator, card = train(load_settings(Settings, []))
    assert card.feature_names == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert card.n_features == estimator.n_features_in_ == 10
    assert 30 < card.holdout_mae < 60
    assert card.holdout_mae < card.holdout_rmse
    assert card.holdout_r2 > 0.3
    assert card.train_rows + card.holdout_rows == 442
    assert card.estimator.startswith("Ridge")


def test_training_is_reproducible_with_the_same_seed():
    settings = load_settings(Settings, ["--seed", "7"])
    first, _ = train(settings)
    second, _ = train(settings)
    assert (first.coef_ == second.coef_).all()
