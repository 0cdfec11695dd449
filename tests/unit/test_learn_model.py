from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import brier_score_loss
from sklearn.model_selection import KFold, train_test_split

import learn_model
from learn_model import (
    DIABETES,
    Settings,
    choose_task,
    classification_figures,
    infer_task,
    main,
    train,
)
from mlmonitor.model_store import CARD_NAME, TRUSTED_TYPES, load_model, read_card
from mlmonitor.settings import load_settings

DIABETES_NAMES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
SETTINGS_ENV = ("MODELS_DIR", "HOLDOUT_FRACTION", "ALPHA", "SEED", "DATA", "TARGET", "TASK", "ESTIMATOR",
                "ESTIMATOR_PARAMS", "TRUSTED_TYPES", "LOG_LEVEL")
HGB_REGRESSOR = "sklearn.ensemble.HistGradientBoostingRegressor"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


def run(models_dir, *flags: str) -> int:
    return main(["--models-dir", str(models_dir), *flags])


def card_json(models_dir) -> dict:
    return json.loads((models_dir / CARD_NAME).read_text())


def houses(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Numbers, a text column, missing values in both and in the target."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(30, 200, rows)
    district = np.array(["north"] * 6 + ["south"] * 3 + ["east"])[np.arange(rows) % 10]
    price = 1000 * area + np.select([district == "north", district == "south"], [50_000, 20_000], 0) \
        + rng.normal(0, 5000, rows)
    frame = pd.DataFrame({"area": area, "rooms": rng.integers(1, 6, rows), "district": district, "price": price})
    frame.loc[::9, "area"] = np.nan
    frame.loc[::7, "district"] = None
    frame.loc[::17, "price"] = np.nan
    return frame


def churn(rows: int = 120, seed: int = 1) -> pd.DataFrame:
    """A binary target labelled "yes"/"no" that depends on a number and a category."""
    rng = np.random.default_rng(seed)
    tenure = rng.uniform(0, 60, rows)
    contract = rng.choice(["monthly", "yearly"], rows)
    churned = np.where((tenure < 20) & (contract == "monthly") | (rng.uniform(size=rows) < 0.1), "yes", "no")
    frame = pd.DataFrame({"tenure": tenure, "contract": contract, "churned": churned})
    frame.loc[::11, "tenure"] = np.nan
    return frame


def three_classes(rows: int = 150, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 3, rows)
    return pd.DataFrame({"x": x, "noise": rng.normal(size=rows), "kind": np.floor(x).astype(int)})


# --- the default run, as it always was -----------------------------------------------------------

def test_train_gives_a_sane_model_card():
    estimator, card, _ = train(load_settings(Settings, []))
    assert card.feature_names == DIABETES_NAMES
    assert card.n_features == estimator.n_features_in_ == 10
    assert 30 < card.holdout_mae < 60
    assert card.holdout_mae < card.holdout_rmse
    assert card.holdout_r2 > 0.3
    assert card.train_rows + card.holdout_rows == 442
    assert card.estimator.startswith("Ridge")


def test_training_is_reproducible_with_the_same_seed():
    settings = load_settings(Settings, ["--seed", "7"])
    first, second = train(settings).model, train(settings).model
    assert (first.coef_ == second.coef_).all()


def expected_ridge(alpha: float) -> Ridge:
    data = load_diabetes()
    x_train, _, y_train, _ = train_test_split(data.data, data.target, test_size=0.2, random_state=42)
    return Ridge(alpha=alpha).fit(x_train, y_train)


def test_the_default_run_trains_todays_model_and_card(tmp_path):
    assert run(tmp_path) == 0

    card = card_json(tmp_path)
    assert card["version"] == joblib.hash(expected_ridge(0.1))[:12]
    assert card["estimator"] == "Ridge(alpha=0.1)"
    assert card["feature_names"] == DIABETES_NAMES
    assert (card["train_rows"], card["holdout_rows"]) == (353, 89)
    assert (card["task"], card["target"], card["data"]) == ("regression", "target", DIABETES)
    assert card["features"] == [{"name": name, "kind": "numeric", "allows_missing": False} for name in DIABETES_NAMES]
    assert card["classes"] is None and card["predicts_proba"] is False
    assert card["holdout"] == {"mae": card["holdout_mae"], "rmse": card["holdout_rmse"], "r2": card["holdout_r2"]}
    assert card["artifact"] == f"model-{card['version']}.skops" and card["trusted_types"] == []
    assert card["extra"] == {}
    reference = card["reference"]
    assert set(reference["features"]) == set(DIABETES_NAMES)
    assert reference["features"]["bmi"]["count"] == 353 and reference["features"]["bmi"]["kind"] == "numeric"
    assert reference["predictions"]["count"] == 442  # every row: the 353 training rows and the 89 held out
    # the 89 held-out rows' errors, then the 353 training rows' out of fold
    assert reference["errors"]["count"] == reference["residuals"]["count"] == 442
    assert reference["target"]["kind"] == "numeric" and reference["target"]["count"] == 353
    estimator, _ = load_model(tmp_path)
    assert isinstance(estimator, Ridge)


def test_the_card_summarises_the_predictions_on_every_row_and_held_out_and_out_of_fold_residuals():
    trained = train(load_settings(Settings, []))
    data = load_diabetes()
    x_train, x_holdout, y_train, y_holdout = train_test_split(data.data, data.target, test_size=0.2, random_state=42)
    model, reference = expected_ridge(0.1), trained.card.reference
    every_prediction = np.concatenate([model.predict(x_train), model.predict(x_holdout)])
    out_of_fold = np.empty(len(y_train))
    for fitted_on, predicted_for in KFold(5, shuffle=True, random_state=42).split(x_train):
        out_of_fold[predicted_for] = Ridge(alpha=0.1).fit(x_train[fitted_on], y_train[fitted_on]).predict(
            x_train[predicted_for])
    residuals = np.concatenate([y_holdout - model.predict(x_holdout), y_train - out_of_fold])

    assert reference["predictions"]["mean"] == pytest.approx(every_prediction.mean())
    assert reference["predictions"]["std"] == pytest.approx(every_prediction.std())
    assert reference["residuals"]["mean"] == pytest.approx(residuals.mean())
    assert reference["residuals"]["std"] == pytest.approx(residuals.std())
    assert reference["residuals"]["min"] < 0 < reference["residuals"]["max"]  # signed: y − ŷ
    assert reference["errors"]["mean"] == pytest.approx(np.abs(residuals).mean())
    # out of fold, not in sample: the training rows' own fit would make their errors smaller
    in_sample = np.abs(y_train - model.predict(x_train)).mean()
    assert np.abs(y_train - out_of_fold).mean() > in_sample


def test_with_2000_rows_held_out_the_reference_needs_no_out_of_fold_fits(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10_000, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x @ [1.0, 2.0, 3.0] + rng.normal(size=10_000)})
    frame.to_csv(tmp_path / "big.csv", index=False)
    card = train(load_settings(Settings, ["--data", str(tmp_path / "big.csv"), "--target", "y"])).card
    assert card.holdout_rows == 2000
    assert card.reference["errors"]["count"] == card.reference["residuals"]["count"] == 2000


def test_reference_folds_0_keeps_the_held_out_rows_alone():
    card = train(load_settings(Settings, ["--reference-folds", "0"])).card
    assert card.reference["errors"]["count"] == card.reference["residuals"]["count"] == 89
    assert card.reference["errors"]["mean"] == pytest.approx(card.holdout_mae)


def test_the_default_card_gives_the_drift_detectors_their_reference():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "drift" / "src"))
    import detectors as drift

    reference = json.loads(json.dumps(train(load_settings(Settings, [])).card.reference))  # as the card file holds it
    built = drift.detectors_for(reference, residuals=True)
    assert [detector.name for detector in built] == [f"feature.{name}" for name in DIABETES_NAMES] + [
        "prediction", "target", "performance"]
    assert isinstance(built[-1], drift.PerformanceDetector) and built[-1].takes_residuals
    assert all(np.isfinite(detector.thresholds).any() for detector in built)


def test_training_again_publishes_a_new_version_beside_the_old_one(tmp_path):
    assert run(tmp_path) == 0
    first = card_json(tmp_path)
    assert run(tmp_path, "--alpha", "2.0") == 0
    second = card_json(tmp_path)

    assert second["version"] != first["version"]
    assert (tmp_path / first["artifact"]).exists() and (tmp_path / second["artifact"]).exists()
    assert load_model(tmp_path)[1].version == second["version"]


def test_alpha_still_sets_the_default_ridge(tmp_path):
    assert run(tmp_path, "--alpha", "1.0") == 0
    card = card_json(tmp_path)
    assert card["estimator"] == "Ridge(alpha=1.0)"
    assert card["version"] == joblib.hash(expected_ridge(1.0))[:12]


# --- the user's table ----------------------------------------------------------------------------

def test_regression_on_a_csv_with_text_and_missing_values_under_hist_gradient_boosting(tmp_path, capsys):
    table = houses()
    table.to_csv(tmp_path / "houses.csv", index=False)
    models = tmp_path / "models"

    assert run(models, "--data", str(tmp_path / "houses.csv"), "--target", "price", "--estimator", HGB_REGRESSOR,
               "--estimator-params", '{"max_iter": 30}') == 0

    output = capsys.readouterr().out
    dropped = int(table["price"].isna().sum())
    assert f"dropped {dropped} of 120 rows: their target 'price' is missing" in output
    assert "task regression: HistGradientBoostingRegressor is a regressor" in output
    card = card_json(models)
    assert (card["task"], card["target"], card["data"]) == ("regression", "price", str(tmp_path / "houses.csv"))
    assert card["train_rows"] + card["holdout_rows"] == 120 - dropped
    assert card["estimator"] == "HistGradientBoostingRegressor(max_iter=30)"
    assert card["feature_names"] == ["area", "rooms", "district"]
    district_counts = table.loc[table["price"].notna(), "district"].value_counts()
    assert card["features"][0] == {"name": "area", "kind": "numeric", "allows_missing": True}
    assert card["features"][2]["kind"] == "categorical" and card["features"][2]["allows_missing"] is True
    assert card["features"][2]["unknown_categories"] == "ignore"
    assert card["features"][2]["categories"] == ["north", "south", "east"]  # most frequent first
    assert set(card["features"][2]["categories"]) == set(district_counts.index)
    assert card["holdout"]["r2"] > 0.5 and set(card["holdout"]) == {"mae", "rmse", "r2"}
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in card["trusted_types"]
    assert card["reference"]["features"]["district"]["kind"] == "categorical"
    assert card["reference"]["features"]["area"]["missing_rate"] > 0

    model, loaded_card = load_model(models)
    steps = {name: step for name, step, _ in model.named_steps["prepare"].transformers}
    assert steps["numeric"] == "passthrough", "HistGradientBoosting takes NaN itself: no imputer for the numbers"
    schema = loaded_card.schema
    served = schema.model_input([schema.values({"area": None, "rooms": 3, "district": None}),
                                 schema.values({"area": 80.0, "rooms": 2, "district": "harbour"})])
    as_read = pd.DataFrame({"area": [np.nan, 80.0], "rooms": [3.0, 2.0], "district": [np.nan, "harbour"]})
    prepare = model.named_steps["prepare"]  # a missing category served as None is the NaN pandas reads
    np.testing.assert_array_equal(prepare.transform(served), prepare.transform(as_read.astype({"district": object})))
    assert np.isfinite(model.predict(served)).all()


def test_a_linear_model_gets_a_median_imputer_and_one_hot_encoding(tmp_path):
    houses().to_csv(tmp_path / "houses.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "houses.csv"), "--target", "price") == 0

    model, card = load_model(tmp_path / "models")
    assert card.estimator == "Ridge(alpha=0.1)"
    prepare = model.named_steps["prepare"]
    assert prepare.named_transformers_["numeric"].strategy == "median"
    assert prepare.named_transformers_["categorical"].named_steps["one_hot"].handle_unknown == "ignore"
    assert "Pipeline" in card.extra["model"]
    assert all(spec["allows_missing"] for spec in card.features)


def test_all_numeric_numbers_with_missing_values_get_an_imputer_that_takes_an_array(tmp_path):
    table = houses().drop(columns="district")
    table.to_csv(tmp_path / "numbers.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "numbers.csv"), "--target", "price") == 0

    model, card = load_model(tmp_path / "models")
    assert list(model.named_steps) == ["impute", "estimator"]
    assert card.schema.all_numeric and all(spec.allows_missing for spec in card.schema.features)
    assert np.isfinite(model.predict(card.schema.model_input([[None, 3.0]]))).all()


def test_an_all_numeric_table_without_missing_values_is_not_wrapped(tmp_path):
    table = three_classes().rename(columns={"kind": "y"}).assign(y=lambda frame: frame["x"] * 2.5)
    table.to_csv(tmp_path / "clean.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "clean.csv"), "--target", "y") == 0

    model, card = load_model(tmp_path / "models")
    assert isinstance(model, Ridge) and card.extra == {}
    assert [spec["allows_missing"] for spec in card.features] == [False, False]


def test_a_binary_classifier_with_yes_no_labels(tmp_path, capsys):
    churn().to_csv(tmp_path / "churn.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "churn.csv"), "--target", "churned") == 0

    assert "task classification: the target 'churned' holds text" in capsys.readouterr().out
    card = card_json(tmp_path / "models")
    assert card["task"] == "classification"
    assert card["estimator"] == "LogisticRegression(max_iter=1000)"
    assert card["classes"] == ["no", "yes"] and card["predicts_proba"] is True
    assert set(card["holdout"]) == {"accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                                    "log_loss", "brier", "roc_auc"}
    assert card["holdout"]["accuracy"] > 0.6 and card["holdout"]["roc_auc"] > 0.6
    assert card["holdout_mae"] is card["holdout_rmse"] is card["holdout_r2"] is None
    reference = card["reference"]
    assert "residuals" not in reference  # a classifier has none
    assert reference["predictions"]["count"] == card["train_rows"] + card["holdout_rows"]
    assert set(reference["predictions"]["frequencies"]) <= {"no", "yes"}
    assert reference["predictions"]["top_probability"]["min"] >= 0.5
    assert 0 <= reference["errors"]["min"] and reference["errors"]["max"] <= 1
    assert reference["errors"]["count"] == card["train_rows"] + card["holdout_rows"]  # held out, then out of fold
    assert set(reference["target"]["frequencies"]) == {"no", "yes"}

    model, _ = load_model(tmp_path / "models")
    assert set(model.predict(pd.DataFrame({"tenure": [5.0, None], "contract": ["monthly", None]}, dtype=object)
                             .astype({"tenure": float}))) <= {"no", "yes"}


def test_a_three_class_classifier_with_integer_labels(tmp_path, capsys):
    three_classes().to_csv(tmp_path / "kinds.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "kinds.csv"), "--target", "kind") == 0

    assert "task classification: the target 'kind' holds 3 distinct integers in 150 rows" in capsys.readouterr().out
    card = card_json(tmp_path / "models")
    assert card["classes"] == [0, 1, 2] and all(type(label) is int for label in card["classes"])
    assert "roc_auc" not in card["holdout"] and 0 <= card["holdout"]["brier"] <= 2
    assert set(card["reference"]["target"]["frequencies"]) == {"0", "1", "2"}
    model, loaded_card = load_model(tmp_path / "models")
    assert isinstance(model, learn_model.LogisticRegression) and loaded_card.predicts_proba


def test_a_classifier_as_estimator_makes_the_task_a_classification(tmp_path, capsys):
    three_classes().to_csv(tmp_path / "kinds.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "kinds.csv"), "--target", "kind",
               "--estimator", "sklearn.ensemble.RandomForestClassifier",
               "--estimator-params", '{"n_estimators": 5, "random_state": 0}') == 0
    assert "task classification: RandomForestClassifier is a classifier" in capsys.readouterr().out
    assert card_json(tmp_path / "models")["trusted_types"] == ["sklearn.tree._tree.Tree"]


def test_parquet_input_with_boolean_and_category_columns(tmp_path):
    rng = np.random.default_rng(4)
    rows = 80
    flag = rng.uniform(size=rows) < 0.5
    table = pd.DataFrame({"flag": flag, "size": pd.Categorical(rng.choice(["s", "m", "l"], rows)),
                          "x": rng.normal(size=rows)})
    table["y"] = 3 * table["x"] + 2 * flag + rng.normal(0, 0.1, rows)
    table.to_parquet(tmp_path / "table.parquet")

    assert run(tmp_path / "models", "--data", str(tmp_path / "table.parquet"), "--target", "y") == 0
    card = card_json(tmp_path / "models")
    assert [spec["kind"] for spec in card["features"]] == ["categorical", "categorical", "numeric"]
    assert set(card["features"][0]["categories"]) == {"True", "False"}
    assert card["data"] == str(tmp_path / "table.parquet") and card["holdout"]["r2"] > 0.9


def test_a_boolean_target_is_a_classification_with_string_labels(tmp_path):
    table = churn().assign(churned=lambda frame: frame["churned"] == "yes")
    table.to_parquet(tmp_path / "churn.parquet")
    assert run(tmp_path / "models", "--data", str(tmp_path / "churn.parquet"), "--target", "churned") == 0
    assert card_json(tmp_path / "models")["classes"] == ["False", "True"]


def test_the_settings_come_from_the_environment_too(tmp_path, monkeypatch):
    churn().to_csv(tmp_path / "churn.csv", index=False)
    monkeypatch.setenv("DATA", str(tmp_path / "churn.csv"))
    monkeypatch.setenv("TARGET", "churned")
    monkeypatch.setenv("ESTIMATOR", "sklearn.tree.DecisionTreeClassifier")
    monkeypatch.setenv("ESTIMATOR_PARAMS", '{"max_depth": 3}')
    assert run(tmp_path / "models") == 0
    assert card_json(tmp_path / "models")["estimator"] == "DecisionTreeClassifier(max_depth=3)"


def test_the_card_lists_at_most_1000_categories_most_frequent_first(tmp_path, capsys):
    rows = 1300
    codes = [f"c{index:04d}" for index in range(rows - 100)] + ["common"] * 100
    table = pd.DataFrame({"code": codes, "x": np.arange(rows, dtype=float), "y": np.arange(rows) * 0.5})
    table.to_csv(tmp_path / "codes.csv", index=False)
    assert run(tmp_path / "models", "--data", str(tmp_path / "codes.csv"), "--target", "y",
               "--holdout-fraction", "0.1") == 0

    categories = card_json(tmp_path / "models")["features"][0]["categories"]
    assert len(categories) == 1000 and categories[0] == "common"
    assert "the card lists the 1000 most frequent" in capsys.readouterr().out


# --- the task ------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, task", [
    (["yes", "no", "yes"], "classification"),
    ([True, False, True], "classification"),
    ([0, 1] * 10, "classification"),
    ([0.0, 1.0, 2.0] * 10, "classification"),  # whole numbers read as floats
    (list(range(5)) * 4, "regression"),  # 5 values in 20 rows: a quarter of the rows, too many
    (list(range(30)) * 10, "regression"),  # more than 20 distinct values
    ([0.5, 1.5] * 10, "regression"),
])
def test_the_task_is_inferred_from_the_target(values, task):
    assert infer_task(pd.Series(values, name="y"))[0] == task


def test_an_explicit_task_wins_over_the_target_and_the_estimator():
    target = pd.Series(["a", "b"], name="y")
    assert choose_task("regression", target, learn_model.LogisticRegression()) == "regression"
    assert choose_task("auto", pd.Series([0.5, 1.5], name="y"), learn_model.LogisticRegression()) == "classification"


# --- held-out figures ----------------------------------------------------------------------------

def test_brier_scores_binary_on_the_positive_class_and_multiclass_over_all_classes():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    binary = classification_figures(np.array(["no", "yes", "yes"]), np.array(["no", "yes", "no"]), probabilities,
                                     ["no", "yes"])
    assert binary["brier"] == pytest.approx(brier_score_loss([0, 1, 1], probabilities[:, 1]))
    assert binary["accuracy"] == pytest.approx(2 / 3) and binary["roc_auc"] == 1.0

    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    multiclass = classification_figures(np.array([0, 1, 1]), np.array([0, 1, 2]), three, [0, 1, 2])
    squares_per_row = [0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2, 0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2, 0.2 ** 2 + 0.8 ** 2 + 0.6 ** 2]
    by_hand = sum(squares_per_row) / 3
    assert multiclass["brier"] == pytest.approx(by_hand)
    assert "roc_auc" not in multiclass


def test_figures_undefined_on_the_holdout_are_null_not_nan():
    figures = classification_figures(np.array(["yes", "yes"]), np.array(["yes", "no"]),
                                     np.array([[0.2, 0.8], [0.6, 0.4]]), ["no", "yes"])
    assert figures["roc_auc"] is None
    json.dumps(figures, allow_nan=False)


def test_a_held_out_class_the_model_never_saw_has_no_log_loss():
    figures = classification_figures(np.array(["no", "maybe"]), np.array(["no", "yes"]),
                                     np.array([[0.7, 0.3], [0.4, 0.6]]), ["no", "yes"])
    assert figures["log_loss"] is None and figures["accuracy"] == 0.5


# --- bad input: one line, exit code 2 --------------------------------------------------------------

@pytest.fixture
def tables(tmp_path):
    houses().to_csv(tmp_path / "houses.csv", index=False)
    churn().to_csv(tmp_path / "churn.csv", index=False)
    return tmp_path


BAD_FLAGS = [
    (["--estimator", "nosuch.Regressor"], "can't import nosuch"),
    (["--estimator", "sklearn.linear_model.NoSuchRegressor"], "sklearn.linear_model has no NoSuchRegressor"),
    (["--estimator", "Ridge"], "expected a dotted path"),
    (["--estimator", "sklearn.preprocessing.StandardScaler"], "is not a scikit-learn estimator class"),
    (["--estimator", "json.loads"], "is not a scikit-learn estimator class"),
    (["--estimator", "sklearn.cluster.KMeans"], "KMeans is a clusterer, not a regressor or a classifier"),
    (["--estimator-params", "{max_iter: 5}"], "--estimator-params is not JSON"),
    (["--estimator-params", "[1, 2]"], "--estimator-params must be a JSON object"),
    (["--estimator", HGB_REGRESSOR, "--estimator-params", '{"bogus": 1}'],
     "HistGradientBoostingRegressor refuses the parameters {\"bogus\": 1}"),
    (["--estimator-params", '{"alpha": -1}'], "Ridge(alpha=-1) can't be fitted"),
    (["--data", "{dir}/houses.csv", "--target", "nope"], "has no column 'nope'"),
    (["--data", "{dir}/houses.csv"], "needs --target"),
    (["--target", "price"], "--target needs --data"),
    (["--data", "{dir}/missing.csv", "--target", "price"], "no such file"),
    (["--data", "{dir}/houses.csv", "--target", "price", "--task", "classification"],
     "holds non-integer numbers"),
    (["--data", "{dir}/churn.csv", "--target", "churned", "--task", "regression"], "holds text such as"),
    (["--data", "{dir}/churn.csv", "--target", "churned", "--task", "classification",
      "--estimator", "sklearn.linear_model.Ridge"], "Ridge is a regressor, but the task is classification"),
    (["--data", "{dir}/houses.csv", "--target", "price", "--task", "regression",
      "--estimator", "sklearn.linear_model.LogisticRegression"],
     "LogisticRegression is a classifier, but the task is regression"),
    (["--estimator", "sklearn.neighbors.KNeighborsRegressor", "--estimator-params", '{"algorithm": "kd_tree"}'],
     "not on the allowlist: sklearn.metrics._dist_metrics.EuclideanDistance64, sklearn.neighbors._kd_tree.KDTree; "
     "if you trust their code, add them to --trusted-types"),
]


@pytest.mark.parametrize("flags, reason", BAD_FLAGS, ids=[reason[:40] for _, reason in BAD_FLAGS])
def test_bad_input_ends_with_one_clear_line_and_exit_code_2(tables, capsys, flags, reason):
    flags = [flag.replace("{dir}", str(tables)) for flag in flags]
    assert run(tables / "models", *flags) == 2

    captured = capsys.readouterr()
    errors = [line for line in (captured.out + captured.err).splitlines() if " ERROR " in line]
    assert len(errors) == 1 and reason in errors[0], captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not (tables / "models" / CARD_NAME).exists()


def test_trusted_types_lets_an_estimator_with_more_types_through(tmp_path):
    types = "sklearn.metrics._dist_metrics.EuclideanDistance64,sklearn.neighbors._kd_tree.KDTree"
    assert run(tmp_path, "--estimator", "sklearn.neighbors.KNeighborsRegressor",
               "--estimator-params", '{"algorithm": "kd_tree"}', "--trusted-types", types) == 0
    assert card_json(tmp_path)["trusted_types"] == types.split(",")
    assert not set(types.split(",")) & TRUSTED_TYPES


def test_an_artifact_that_does_not_load_back_the_same_fails_the_run(tmp_path, monkeypatch, capsys):
    def load_another_model(models_dir, extra_trusted=()):
        return expected_ridge(50.0), read_card(models_dir)

    monkeypatch.setattr(learn_model, "load_model", load_another_model)
    assert run(tmp_path) == 1
    assert "loads back but predicts" in capsys.readouterr().out
