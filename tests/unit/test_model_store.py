from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import Ridge

from learn_model import Settings, train
from mlmonitor.model_store import (
    ARTIFACT_NAME,
    CARD_NAME,
    ModelCorrupt,
    ModelNotReady,
    load_model,
    model_version,
    read_card,
    save_model,
)
from mlmonitor.settings import load_settings

SAMPLES = np.random.default_rng(3).normal(0.0, 0.05, size=(5, 10))
code_that_ran = []


class Payload:
    """A type skops does not trust; loading it would run __setstate__."""

    def __setstate__(self, state):
        code_that_ran.append(state)
        self.__dict__.update(state)


@pytest.fixture(scope="module")
def trained():
    return train(load_settings(Settings, []))


@pytest.fixture
def models_dir(tmp_path, trained):
    estimator, card = trained
    save_model(tmp_path, estimator, card)
    return tmp_path


def replace_artifact(models_dir, artifact: bytes) -> None:
    (models_dir / ARTIFACT_NAME).write_bytes(artifact)
    card = json.loads((models_dir / CARD_NAME).read_text())
    card["artifact_sha256"] = hashlib.sha256(artifact).hexdigest()
    (models_dir / CARD_NAME).write_text(json.dumps(card))


def test_saved_model_loads_and_predicts_the_same(models_dir, trained):
    estimator, card = trained
    loaded, loaded_card = load_model(models_dir)
    np.testing.assert_array_equal(loaded.predict(SAMPLES), estimator.predict(SAMPLES))
    assert loaded_card.holdout_mae == card.holdout_mae
    artifact_sha256 = hashlib.sha256((models_dir / ARTIFACT_NAME).read_bytes()).hexdigest()
    assert loaded_card.artifact_sha256 == artifact_sha256
    assert loaded_card.version == model_version(estimator) and len(loaded_card.version) == 12
    assert not [p.name for p in models_dir.iterdir() if p.name.startswith(".")]


def test_empty_folder_is_not_ready(tmp_path):
    with pytest.raises(ModelNotReady):
        load_model(tmp_path)


def test_missing_card_is_not_ready(models_dir):
    (models_dir / CARD_NAME).unlink()
    with pytest.raises(ModelNotReady, match="card"):
        load_model(models_dir)


def test_missing_artifact_beside_its_card_is_not_ready(models_dir):
    (models_dir / ARTIFACT_NAME).unlink()
    with pytest.raises(ModelNotReady, match="missing"):
        load_model(models_dir)


def test_tampered_artifact_is_corrupt(models_dir):
    artifact = bytearray((models_dir / ARTIFACT_NAME).read_bytes())
    artifact[len(artifact) // 2] ^= 0xFF
    (models_dir / ARTIFACT_NAME).write_bytes(bytes(artifact))
    with pytest.raises(ModelCorrupt, match="sha256"):
        load_model(models_dir)


@pytest.mark.parametrize("card_text", ["{not json", "[1, 2]", '{"version": "x"}', ""])
def test_garbage_card_is_corrupt(models_dir, card_text):
    (models_dir / CARD_NAME).write_text(card_text)
    with pytest.raises(ModelCorrupt, match=CARD_NAME):
        read_card(models_dir)
    with pytest.raises(ModelCorrupt):
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


def test_artifact_with_another_feature_count_than_its_card_is_corrupt(models_dir):
    three_features = Ridge().fit(SAMPLES[:, :3], [1.0, 2.0, 3.0, 4.0, 5.0])
    replace_artifact(models_dir, skops.io.dumps(three_features))
    with pytest.raises(ModelCorrupt, match="3 features"):
        load_model(models_dir)


def test_the_same_training_saves_the_same_version_and_other_weights_another(tmp_path):
    """The skops archive differs byte for byte between two saves; the version must not."""
    settings = load_settings(Settings, ["--seed", "7"])
    first, second = train(settings), train(settings)
    versions = [save_model(tmp_path / name, *trained).version for name, trained in (("1", first), ("2", second))]
    assert versions[0] == versions[1]
    assert save_model(tmp_path / "3", *train(load_settings(Settings, ["--seed", "8"]))).version != versions[0]
