from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

import mlmonitor.model_store as model_store
from learn_model import Settings, Table, train, wrap
from mlmonitor.model_store import (
    ARTIFACT_NAME,
    CARD_NAME,
    KEPT_ARTIFACTS,
    ModelCard,
    ModelCorrupt,
    ModelNotReady,
    UntrustedTypes,
    artifact_name,
    load_model,
    model_version,
    read_card,
    save_model,
)
from mlmonitor.settings import load_settings

SAMPLES = np.random.default_rng(3).normal(0.0, 0.05, size=(5, 10))
KNN_TYPES = ["sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree"]
code_that_ran = []


class Payload:
    """A type skops does not trust; loading it would run __setstate__."""

    def __setstate__(self, state):
        code_that_ran.append(state)
        self.__dict__.update(state)


def double(values):
    """A python function: a FunctionTransformer holding it is a type skops does not trust."""
    return values * 2


@pytest.fixture(scope="module")
def trained():
    result = train(load_settings(Settings, []))
    return result.model, result.card


@pytest.fixture
def models_dir(tmp_path, trained):
    estimator, card = trained
    save_model(tmp_path, estimator, card)
    return tmp_path


def artifact_path(models_dir):
    return models_dir / read_card(models_dir).artifact


def replace_artifact(models_dir, artifact: bytes) -> None:
    """Puts `artifact` where the card points and makes the card vouch for it, as a forger would."""
    card = json.loads((models_dir / CARD_NAME).read_text())
    (models_dir / card["artifact"]).write_bytes(artifact)
    card["artifact_sha256"] = hashlib.sha256(artifact).hexdigest()
    (models_dir / CARD_NAME).write_text(json.dumps(card))


def ridge_on_samples(alpha: float) -> Ridge:
    return Ridge(alpha=alpha).fit(SAMPLES, np.arange(5.0))


def card_for(estimator, n_features: int = 10) -> ModelCard:
    return ModelCard(version="", trained_at="2026-01-01T00:00:00+00:00", estimator=repr(estimator),
                     feature_names=[f"x{index}" for index in range(n_features)], holdout_mae=1.0, holdout_rmse=1.0,
                     holdout_r2=0.5, train_rows=5, holdout_rows=1, sklearn_version="test")


def artifacts_in(models_dir) -> list[str]:
    return sorted(path.name for path in models_dir.iterdir() if path.name.endswith(".skops"))


def test_saved_model_loads_and_predicts_the_same(models_dir, trained):
    estimator, card = trained
    loaded, loaded_card = load_model(models_dir)
    np.testing.assert_array_equal(loaded.predict(SAMPLES), estimator.predict(SAMPLES))
    assert loaded_card.holdout_mae == card.holdout_mae
    artifact_sha256 = hashlib.sha256(artifact_path(models_dir).read_bytes()).hexdigest()
    assert loaded_card.artifact_sha256 == artifact_sha256
    assert loaded_card.version == model_version(estimator) and len(loaded_card.version) == 12
    assert not [p.name for p in models_dir.iterdir() if p.name.startswith(".")]


def test_the_artifact_is_named_after_its_version_and_the_card_names_it(models_dir, trained):
    card = read_card(models_dir)
    assert card.artifact == artifact_name(card.version) == f"model-{model_version(trained[0])}.skops"
    assert {path.name for path in models_dir.iterdir()} == {CARD_NAME, card.artifact}
    assert card.trusted_types == []


def test_empty_folder_is_not_ready(tmp_path):
    with pytest.raises(ModelNotReady):
        load_model(tmp_path)


def test_missing_card_is_not_ready(models_dir):
    (models_dir / CARD_NAME).unlink()
    with pytest.raises(ModelNotReady, match="card"):
        load_model(models_dir)


def test_missing_artifact_beside_its_card_is_not_ready(models_dir):
    artifact_path(models_dir).unlink()
    with pytest.raises(ModelNotReady, match="missing"):
        load_model(models_dir)


def test_tampered_artifact_is_corrupt(models_dir):
    path = artifact_path(models_dir)
    artifact = bytearray(path.read_bytes())
    artifact[len(artifact) // 2] ^= 0xFF
    path.write_bytes(bytes(artifact))
    with pytest.raises(ModelCorrupt, match="sha256"):
        load_model(models_dir)


@pytest.mark.parametrize("card_text", ["{not json", "[1, 2]", '{"version": "x"}', ""])
def test_garbage_card_is_corrupt(models_dir, card_text):
    (models_dir / CARD_NAME).write_text(card_text)
    with pytest.raises(ModelCorrupt, match=CARD_NAME):
        read_card(models_dir)
    with pytest.raises(ModelCorrupt):
        load_model(models_dir)


@pytest.mark.parametrize("name", ["../model.skops", "/etc/passwd", "", "sub/model.skops", 7])
def test_a_card_naming_an_artifact_outside_its_folder_is_corrupt(models_dir, name):
    card = json.loads((models_dir / CARD_NAME).read_text())
    card["artifact"] = name
    (models_dir / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelCorrupt, match="not a file name"):
        load_model(models_dir)


def test_artifact_that_is_not_a_skops_file_is_corrupt(models_dir):
    replace_artifact(models_dir, b"this is not a zip file")
    with pytest.raises(ModelCorrupt, match="can't be loaded"):
        load_model(models_dir)


def test_artifact_with_an_untrusted_type_is_corrupt_and_runs_nothing(models_dir):
    payload = Payload()
    payload.note = "would run"
    artifact = skops.io.dumps(payload)
    assert skops.io.get_untrusted_types(data=artifact) == [f"{__name__}.Payload"]
    replace_artifact(models_dir, artifact)
    code_that_ran.clear()

    with pytest.raises(ModelCorrupt, match="Payload"):
        load_model(models_dir)
    assert code_that_ran == []

    skops.io.loads(artifact, trusted=[f"{__name__}.Payload"])  # what loading it would have done
    assert code_that_ran == [{"note": "would run"}]


def test_a_card_listing_an_untrusted_type_does_not_make_it_trusted(models_dir):
    payload = Payload()
    payload.note = "would run"
    replace_artifact(models_dir, skops.io.dumps(payload))
    card = json.loads((models_dir / CARD_NAME).read_text())
    card["trusted_types"] = [f"{__name__}.Payload"]
    (models_dir / CARD_NAME).write_text(json.dumps(card))
    code_that_ran.clear()

    with pytest.raises(UntrustedTypes, match="Payload"):
        load_model(models_dir)
    assert code_that_ran == []


def test_a_pipeline_holding_a_python_function_is_refused_unless_the_caller_trusts_it(tmp_path):
    pipeline = make_pipeline(FunctionTransformer(double), Ridge()).fit(SAMPLES, np.arange(5.0))
    function = f"{__name__}.double"
    save_model(tmp_path, pipeline, card_for(pipeline), extra_trusted=[function])
    assert read_card(tmp_path).trusted_types == [function]

    with pytest.raises(UntrustedTypes, match=f"not on the allowlist: {function}") as refused:
        load_model(tmp_path)
    assert refused.value.types == [function]
    loaded, _ = load_model(tmp_path, extra_trusted=[function])
    np.testing.assert_array_equal(loaded.predict(SAMPLES), pipeline.predict(SAMPLES))


def test_an_artifact_holding_builtins_eval_is_refused(tmp_path, trained):
    save_model(tmp_path, *trained)
    replace_artifact(tmp_path, skops.io.dumps(make_pipeline(FunctionTransformer(eval))))
    with pytest.raises(UntrustedTypes, match="builtins.eval"):
        load_model(tmp_path)


def test_saving_a_model_with_untrusted_types_writes_nothing(tmp_path):
    knn = KNeighborsRegressor(n_neighbors=2, algorithm="kd_tree").fit(SAMPLES, np.arange(5.0))
    with pytest.raises(UntrustedTypes) as refused:
        save_model(tmp_path, knn, card_for(knn))
    assert refused.value.types == KNN_TYPES
    assert list(tmp_path.iterdir()) == []

    save_model(tmp_path, knn, card_for(knn), extra_trusted=KNN_TYPES)
    with pytest.raises(UntrustedTypes, match="KDTree"):
        load_model(tmp_path)
    loaded, card = load_model(tmp_path, extra_trusted=KNN_TYPES)
    assert card.trusted_types == KNN_TYPES
    np.testing.assert_array_equal(loaded.predict(SAMPLES), knn.predict(SAMPLES))


def _table(rows: int = 40) -> Table:
    """Numbers with missing values and a category with missing values, as learn_model prepares them."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                          "c": pd.Series(rng.choice(["p", "q", None], size=rows), dtype=object)})
    frame.loc[::5, "a"] = np.nan
    return Table(frame, pd.Series(rng.normal(size=rows), name="y"),
                 {"a": "numeric", "b": "numeric", "c": "categorical"}, "test")


@pytest.mark.parametrize("make, target", [
    (lambda: Ridge(), "number"),
    (lambda: LogisticRegression(), "label"),
    (lambda: HistGradientBoostingRegressor(max_iter=5), "number"),
    (lambda: HistGradientBoostingClassifier(max_iter=5), "label"),
    (lambda: RandomForestRegressor(n_estimators=3, random_state=0), "number"),
    (lambda: RandomForestClassifier(n_estimators=3, random_state=0), "label"),
    (lambda: GradientBoostingRegressor(n_estimators=3), "number"),
    (lambda: GradientBoostingClassifier(n_estimators=3), "label"),
], ids=["ridge", "logistic", "hgb-regressor", "hgb-classifier", "forest-regressor", "forest-classifier",
        "gb-regressor", "gb-classifier"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "in-learn_models-pipeline"])
def test_the_allowlist_covers_the_usual_estimators_and_learn_models_wrapping(tmp_path, make, target, wrapped):
    table = _table()
    y = table.target.to_numpy() if target == "number" else np.where(table.target > 0, "yes", "no")
    if wrapped:
        model, _ = wrap(make(), table)
        assert isinstance(model, Pipeline)
        rows = table.features
    else:
        model, rows = make(), np.random.default_rng(1).normal(size=(len(y), 3))
    estimator = model.fit(rows, y)
    card = save_model(tmp_path, estimator, card_for(estimator, n_features=3))
    loaded, _ = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.predict(rows), estimator.predict(rows))
    assert set(card.trusted_types) <= model_store.TRUSTED_TYPES


def test_artifact_with_another_feature_count_than_its_card_is_corrupt(models_dir):
    three_features = Ridge().fit(SAMPLES[:, :3], [1.0, 2.0, 3.0, 4.0, 5.0])
    replace_artifact(models_dir, skops.io.dumps(three_features))
    with pytest.raises(ModelCorrupt, match="3 features"):
        load_model(models_dir)


def test_the_same_training_saves_the_same_version_and_other_weights_another(tmp_path):
    """The skops archive differs byte for byte between two saves; the version must not."""
    settings = load_settings(Settings, ["--seed", "7"])
    first, second = train(settings), train(settings)
    versions = [save_model(tmp_path / name, result.model, result.card).version
                for name, result in (("1", first), ("2", second))]
    assert versions[0] == versions[1]
    other = train(load_settings(Settings, ["--seed", "8"]))
    assert save_model(tmp_path / "3", other.model, other.card).version != versions[0]


def test_saving_the_same_version_again_keeps_the_artifact_its_card_vouches_for(models_dir, trained):
    before = read_card(models_dir)
    artifact = artifact_path(models_dir).read_bytes()
    again = save_model(models_dir, *trained)
    assert (again.artifact, again.artifact_sha256) == (before.artifact, before.artifact_sha256)
    assert artifact_path(models_dir).read_bytes() == artifact
    load_model(models_dir)


def test_a_new_save_leaves_the_old_pair_readable_until_the_card_moves(tmp_path, monkeypatch):
    old = save_model(tmp_path, ridge_on_samples(1.0), card_for(None))
    seen_before_the_card_moved = []
    real_replace = os.replace

    def replace_watching_the_card(source, destination):
        if os.path.basename(destination) == CARD_NAME:
            assert (tmp_path / artifact_name(model_version(new_estimator))).exists(), "the artifact lands first"
            seen_before_the_card_moved.append(load_model(tmp_path)[1].version)
        real_replace(source, destination)

    new_estimator = ridge_on_samples(2.0)
    monkeypatch.setattr(model_store.os, "replace", replace_watching_the_card)
    new = save_model(tmp_path, new_estimator, card_for(new_estimator))
    monkeypatch.undo()

    assert seen_before_the_card_moved == [old.version]
    loaded, card = load_model(tmp_path)
    assert card.version == new.version != old.version
    np.testing.assert_array_equal(loaded.predict(SAMPLES), new_estimator.predict(SAMPLES))
    assert (tmp_path / old.artifact).exists(), "a reader that read the old card still finds its artifact"


def test_only_the_newest_artifacts_are_kept(tmp_path):
    cards = [save_model(tmp_path, estimator, card_for(estimator))
             for estimator in (ridge_on_samples(alpha) for alpha in (1.0, 2.0, 3.0, 4.0, 5.0))]
    assert KEPT_ARTIFACTS == 3
    assert artifacts_in(tmp_path) == sorted(card.artifact for card in cards[-3:])
    assert read_card(tmp_path).version == cards[-1].version


def test_the_artifact_the_card_names_is_never_pruned_even_when_saved_again(tmp_path):
    first = ridge_on_samples(1.0)
    save_model(tmp_path, first, card_for(first))
    for alpha in (2.0, 3.0, 4.0):
        save_model(tmp_path, ridge_on_samples(alpha), card_for(None))
    again = save_model(tmp_path, first, card_for(first))  # the oldest version becomes current again
    assert again.artifact in artifacts_in(tmp_path) and len(artifacts_in(tmp_path)) == 3
    load_model(tmp_path)


def test_an_old_card_without_an_artifact_field_still_loads(tmp_path, trained):
    estimator, _ = trained
    card = save_model(tmp_path, *trained)
    old_card = json.loads((tmp_path / CARD_NAME).read_text())
    for newer_field in ("artifact", "task", "target", "data", "features", "classes", "predicts_proba", "holdout",
                        "reference", "trusted_types"):
        del old_card[newer_field]
    os.replace(tmp_path / card.artifact, tmp_path / ARTIFACT_NAME)
    (tmp_path / CARD_NAME).write_text(json.dumps(old_card))

    loaded, loaded_card = load_model(tmp_path)
    assert loaded_card.artifact == ARTIFACT_NAME and loaded_card.task == "regression"
    assert loaded_card.schema.all_numeric and loaded_card.schema.names == loaded_card.feature_names
    np.testing.assert_array_equal(loaded.predict(SAMPLES), estimator.predict(SAMPLES))


def test_the_legacy_artifact_is_pruned_like_the_others(tmp_path, trained):
    (tmp_path / ARTIFACT_NAME).write_bytes(b"an artifact of the old layout")
    os.utime(tmp_path / ARTIFACT_NAME, ns=(1, 1))
    for alpha in (1.0, 2.0, 3.0):
        save_model(tmp_path, ridge_on_samples(alpha), card_for(None))
    assert ARTIFACT_NAME not in artifacts_in(tmp_path) and len(artifacts_in(tmp_path)) == 3
