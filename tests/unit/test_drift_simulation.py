"""features' simulated drift: chosen numeric features shifted by k standard deviations from event N,
a concept change of y_true from event N (a classifier's labels flipped), and what can't be simulated."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

import run_pipeline
from features import DiabetesTable, Settings, plan_simulation, read_user_table, sample_events, simulate
from mlmonitor.datasets import DatasetError
from mlmonitor.model_store import CARD_NAME

DIABETES = load_diabetes()
BMI_STD = float(DIABETES.data[:, 2].std())

HOUSES = """area,rooms,district,price
120.5,4,Centre,300000
80,,Harbour,210000
95.25,3,Centre,250000
60,2,Old Town,150000
"""
CHURN = """tenure,plan,churned
1,basic,yes
20,premium,no
5,basic,yes
30,premium,no
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ("DRIFT_FEATURES", "DRIFT_SIGMA", "DRIFT_FROM", "CONCEPT_SHIFT", "CONCEPT_FROM", "CONCEPT_SIGMA",
                 "SEED", "DATA", "TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "no-models"))


def settings(*argv: str) -> Settings:
    return Settings(_cli_parse_args=list(argv))


def events(table, simulation, count: int, seed: int = 3) -> list:
    return list(itertools.islice(simulate(sample_events(table, "in-order"), simulation, seed), count))


def test_no_flag_no_simulation():
    assert plan_simulation(settings(), DiabetesTable()) is None


def test_chosen_features_move_by_k_standard_deviations_of_the_table_from_event_n():
    table = DiabetesTable()
    simulation, said = plan_simulation(settings("--drift-features", "bmi,bp", "--drift-sigma", "0.5",
                                                "--drift-from", "3"), table)
    sent = events(table, simulation, 6)
    for event, (body, target) in enumerate(sent):
        original = DIABETES.data[event]
        moved = 0.5 * np.array([0, 0, BMI_STD, DIABETES.data[:, 3].std(), 0, 0, 0, 0, 0, 0]) if event >= 3 else 0
        assert body == pytest.approx((original + moved).tolist())
        assert target == DIABETES.target[event]
    assert said[0] == f"bmi + {0.5 * BMI_STD:.4g} (0.5 std of {BMI_STD:.4g}) from event 3"


def test_an_object_body_moves_by_name_and_a_missing_value_stays_missing(tmp_path):
    path = tmp_path / "houses.csv"
    path.write_text(HOUSES)
    table, _ = read_user_table(path, "price")
    simulation, _ = plan_simulation(settings("--drift-features", "rooms"), table)
    rooms_std = float(np.std([4, 3, 2]))
    bodies = [body for body, _ in events(table, simulation, 4)]
    assert [body["rooms"] for body in bodies] == pytest.approx([4 + rooms_std, None, 3 + rooms_std, 2 + rooms_std])
    assert [body["area"] for body in bodies] == [120.5, 80.0, 95.25, 60.0]


@pytest.mark.parametrize("flag, reason", [
    ("district", "--drift-features: 'district' is a text (categorical) feature; only numeric features can be shifted"),
    ("pool", "--drift-features: 'pool' is not a feature of"),
])
def test_text_or_unknown_features_are_refused_in_one_line(tmp_path, flag, reason):
    path = tmp_path / "houses.csv"
    path.write_text(HOUSES)
    table, _ = read_user_table(path, "price")
    with pytest.raises(DatasetError) as refused:
        plan_simulation(settings("--drift-features", flag), table)
    assert str(refused.value).startswith(reason) and "\n" not in str(refused.value)


def test_a_concept_change_moves_y_true_by_residual_standard_deviations_and_not_the_features():
    table = DiabetesTable()
    simulation, said = plan_simulation(settings("--concept-shift", "0.5", "--concept-from", "2",
                                                "--concept-sigma", "50"), table)
    sent = events(table, simulation, 4)
    assert [target for _, target in sent] == pytest.approx(DIABETES.target[:4] + np.array([0, 0, 25, 25]))
    assert [body for body, _ in sent] == [DIABETES.data[n].tolist() for n in range(4)]
    assert said == ["y_true + 25 (0.5 residual std of 50, from --concept-sigma) from event 2"]


def test_the_residual_standard_deviation_comes_from_the_card_s_held_out_errors(tmp_path, monkeypatch):
    errors = {"kind": "numeric", "count": 89, "missing_rate": 0.0, "mean": 30.0, "std": 40.0}
    (tmp_path / CARD_NAME).write_text(json.dumps({
        "version": "v", "trained_at": "t", "estimator": "Ridge", "feature_names": [], "holdout_mae": 30.0,
        "holdout_rmse": 50.0, "holdout_r2": 0.5, "train_rows": 1, "holdout_rows": 1, "sklearn_version": "x",
        "reference": {"errors": errors}}))
    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    simulation, said = plan_simulation(settings("--concept-shift", "1"), DiabetesTable())
    assert simulation.concept_delta == pytest.approx(math.hypot(30, 40))  # the held-out RMSE
    assert "from the held-out errors in the model card" in said[0]


def test_a_concept_change_without_a_card_or_a_sigma_is_refused():
    with pytest.raises(DatasetError, match="--concept-shift needs --concept-sigma"):
        plan_simulation(settings("--concept-shift", "1"), DiabetesTable())


def test_a_classifier_s_concept_change_replaces_that_share_of_labels_by_another_class(tmp_path):
    path = tmp_path / "churn.csv"
    path.write_text(CHURN)
    table, _ = read_user_table(path, "churned")
    simulation, said = plan_simulation(settings("--concept-shift", "0.3"), table)
    sent = events(table, simulation, 4000)
    flipped = [target != table.sample(event % 4)[1] for event, (_, target) in enumerate(sent)]
    assert {target for _, target in sent} == {"yes", "no"}
    assert 0.25 < np.mean(flipped) < 0.35
    assert said == ["30% of the labels replaced by another class from event 0"]
    with pytest.raises(DatasetError, match="between 0 and 1"):
        plan_simulation(settings("--concept-shift", "2"), table)


def test_make_run_passes_the_simulation_flags_to_features():
    args = run_pipeline.parse_args(["--rate", "200", "--drift-features", "bmi", "--drift-sigma", "1",
                                    "--drift-from", "2000", "--concept-shift", "0.5", "--concept-from", "3000"])
    assert run_pipeline.features_args(args) == [
        "--rate", "200", "--drift-features", "bmi", "--drift-sigma", "1", "--drift-from", "2000",
        "--concept-shift", "0.5", "--concept-from", "3000"]


def test_make_run_starts_drift_with_its_metrics_port():
    assert "drift" in run_pipeline.OPTIONAL_SERVICES and run_pipeline.script_of("drift").exists()
    assert run_pipeline.service_env("drift", None) == {"METRICS_PORT": "9105"}
