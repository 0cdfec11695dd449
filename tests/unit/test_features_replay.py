"""features --data/--target: the user's rows as object bodies and labels, in shuffled or table order."""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

import features
from features import (DiabetesTable, FeatureStreamer, Settings, UserTable, open_table, read_user_table,
                      row_order, sample_events)
import run_pipeline
from mlmonitor.datasets import DatasetError
from mlmonitor.messages import FeaturesMessage, TargetMessage
from mlmonitor.model_store import CARD_NAME, ModelCard
from mlmonitor.settings import load_settings
from mlmonitor.topology import FEATURES, Y_TRUE

HOUSES = """area,rooms,district,built,price
120.5,4,Centre,1990,300000
80,,Harbour,,210000.5
95.25,3,,2001,
60,2,Old Town,1975,150000
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("DATA", "TARGET", "ORDER", "SEED", "RATE", "COUNT", "MAX_BACKLOG"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path, text: str, name: str = "table.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def take(table, count: int, order: str = "in-order", seed: int | None = None) -> list:
    return list(itertools.islice(sample_events(table, order, seed), count))


def test_rows_become_object_bodies_with_floats_strings_and_nulls(tmp_path):
    table, skipped = read_user_table(write(tmp_path, HOUSES), "price")
    assert table.names == ["area", "rooms", "district", "built"]
    assert take(table, 3) == [
        ({"area": 120.5, "rooms": 4.0, "district": "Centre", "built": 1990.0}, 300000.0),
        ({"area": 80.0, "rooms": None, "district": "Harbour", "built": None}, 210000.5),
        ({"area": 60.0, "rooms": 2.0, "district": "Old Town", "built": 1975.0}, 150000.0),
    ]
    assert skipped == 1


def test_values_are_plain_python_and_the_wire_format_carries_them(tmp_path):
    body, target = take(read_user_table(write(tmp_path, HOUSES), "price")[0], 2)[1]
    assert {type(value) for value in body.values()} == {float, str, type(None)}
    assert type(target) is float
    sent = json.loads(FeaturesMessage(id="a", body=body).encode())
    assert sent["body"] == {"area": 80.0, "rooms": None, "district": "Harbour", "built": None}
    assert list(sent["body"]) == ["area", "rooms", "district", "built"], "the table's column order"


def test_pandas_extension_types_and_numpy_scalars_become_python_values(monkeypatch):
    frame = pd.DataFrame({
        "count": pd.array([1, None, 3], dtype="Int64"),
        "flag": pd.array([True, None, False], dtype="boolean"),
        "size": pd.Categorical(["S", "M", None]),
        "mixed": pd.Series([np.int64(7), "x", pd.NA], dtype=object),
        "label": ["a", "b", "c"],
    })
    monkeypatch.setattr(features, "load_table", lambda path, target: frame)
    bodies = [body for body, _ in take(read_user_table("any.csv", "label")[0], 3)]
    assert bodies == [
        {"count": 1.0, "flag": "True", "size": "S", "mixed": "7"},
        {"count": None, "flag": None, "size": "M", "mixed": "x"},
        {"count": 3.0, "flag": "False", "size": None, "mixed": None},
    ]
    assert all(type(value) in (float, str, type(None)) for body in bodies for value in body.values())


def test_a_parquet_table_replays_like_a_csv(tmp_path):
    path = tmp_path / "table.parquet"
    pd.DataFrame({"count": pd.array([1, None], dtype="Int64"), "city": ["Oslo", None], "label": [0, 1]}).to_parquet(path)
    assert take(read_user_table(path, "label")[0], 2) == [({"count": 1.0, "city": "Oslo"}, 0.0),
                                                          ({"count": None, "city": None}, 1.0)]


@pytest.mark.parametrize("column, expected", [
    ("1.5\n2\n", [1.5, 2.0]),  # regression: floats
    ("0\n1\n", [0.0, 1.0]),  # integer classes: numbers, as learn_model's classes_ keep them
    ("yes\nno\n", ["yes", "no"]),  # class labels: strings
    ("True\nFalse\n", ["True", "False"]),  # a boolean column: its labels as strings
])
def test_targets_are_numbers_or_string_labels(tmp_path, column, expected):
    rows = column.strip().split("\n")
    table, _ = read_user_table(write(tmp_path, "x,y\n" + "".join(f"{i},{row}\n" for i, row in enumerate(rows))), "y")
    targets = [target for _, target in take(table, len(rows))]
    assert targets == expected
    assert [type(target) for target in targets] == [type(value) for value in expected]
    for target in targets:
        TargetMessage(id="a", body=target)  # each one a valid y_true


def test_rows_without_a_target_are_skipped_and_logged_once(tmp_path, caplog):
    path = write(tmp_path, "x,y\n1,a\n2,\n3,b\n4,\n")
    settings = load_settings(Settings, ["--data", str(path), "--target", "y"])
    with caplog.at_level(logging.WARNING, logger="features"):
        table = open_table(settings)
    assert [sample for sample in take(table, 4)] == [({"x": 1.0}, "a"), ({"x": 3.0}, "b")] * 2
    assert [record.getMessage() for record in caplog.records] == [
        f"skipping 2 rows of {path} whose target 'y' is missing"]


def test_in_order_replays_the_table_row_by_row_and_loops_past_the_end():
    assert list(itertools.islice(row_order(4, "in-order", seed=1), 10)) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_shuffled_draws_a_new_seeded_permutation_every_pass():
    passes = np.array(list(itertools.islice(row_order(50, "shuffled", seed=7), 150))).reshape(3, 50)
    for one_pass in passes:
        assert sorted(one_pass) == list(range(50)), "every row once per pass"
    assert not np.array_equal(passes[0], passes[1]), "a new permutation each pass"
    assert not np.array_equal(passes[0], np.arange(50))
    again = np.array(list(itertools.islice(row_order(50, "shuffled", seed=7), 150))).reshape(3, 50)
    assert np.array_equal(passes, again), "the same seed, the same order"


def test_the_default_stays_the_diabetes_data_with_list_bodies_as_before():
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    rng = np.random.default_rng(3)
    before = [(data.data[index].tolist(), float(data.target[index]))  # the sampling before user tables
              for _ in range(2) for index in rng.permutation(len(data.target))]
    settings = load_settings(Settings, ["--seed", "3"])
    table = open_table(settings)
    assert isinstance(table, DiabetesTable)
    after = take(table, len(before), settings.order, settings.seed)
    assert after == before
    encoded = FeaturesMessage(id="a", body=after[0][0]).encode()
    assert encoded == FeaturesMessage(id="a", body=before[0][0]).encode()
    assert encoded.startswith(b'{"id":"a","body":[')


@pytest.mark.parametrize("argv, reason", [
    (["--data", "{path}"], "needs --target"),
    (["--target", "price"], "--target needs --data"),
    (["--data", "{missing}", "--target", "price"], "no such file"),
    (["--data", "{path}", "--target", "cost"], "has no column 'cost'"),
    (["--data", "{path}", "--target", "price", "--order", "random"], "order"),
])
def test_bad_data_or_target_is_one_error_line_and_exit_2(tmp_path, capsys, argv, reason):
    path = write(tmp_path, HOUSES)
    argv = [part.format(path=path, missing=tmp_path / "missing.csv") for part in argv]
    try:
        exit_code = features.main(argv)
    except SystemExit as stopped:  # a value the settings refuse
        exit_code = stopped.code
    assert exit_code == 2
    error = capsys.readouterr().err
    assert reason in error
    assert error.count("\n") == 1 and error.startswith("features: error: ")


@pytest.mark.parametrize("text, reason", [
    ("price\n1\n", "no feature columns besides the target 'price'"),
    ("x,price\n1,\n2,\n", "every row's target 'price' is missing"),
    ("x,price\n1,2\ninf,3\n", "column 'x' is infinite in data row 2"),
    ("x,price\n1,-inf\n", "target 'price' is infinite in data row 1"),
    (f"x,price\n{'a' * 201},1\n", "column 'x': 'aaaaaaaaaaaaaaaaaaaa'… is longer than 200 characters"),
])
def test_tables_the_wire_format_cannot_carry_are_refused(tmp_path, text, reason):
    with pytest.raises(DatasetError, match=reason.replace("(", r"\(")):
        read_user_table(write(tmp_path, text), "price")


class RecordingSession:
    is_open = True

    def __init__(self):
        self.published: list[tuple[str, bytes, object]] = []

    def publish(self, exchange, routing_key, body, on_confirmed=None, headers=None):
        self.published.append((routing_key, body, on_confirmed))

    def call_later(self, delay, callback):
        pass

    def every(self, interval, callback):
        pass

    def stop(self, code):
        self.stopped = code


def test_the_streamer_sends_the_rows_under_one_id_per_event(tmp_path):
    table, _ = read_user_table(write(tmp_path, "x,city,churned\n1,Oslo,yes\n,,no\n"), "churned")
    settings = load_settings(Settings, ["--rate", "0", "--max-backlog", "0", "--count", "3"])
    streamer = FeatureStreamer(settings, sample_events(table, "in-order"))
    session = RecordingSession()
    streamer.on_connected(session)
    messages = [(queue, json.loads(body)) for queue, body, _ in session.published]
    assert [queue for queue, _ in messages] == [FEATURES, Y_TRUE] * 3
    assert [message["body"] for _, message in messages] == [
        {"x": 1.0, "city": "Oslo"}, "yes", {"x": None, "city": None}, "no", {"x": 1.0, "city": "Oslo"}, "yes"]
    ids = [message["id"] for _, message in messages]
    assert ids[0::2] == ids[1::2] and len(set(ids)) == 3
    for _, _, on_confirmed in session.published:
        on_confirmed()  # logs each event with its label
    assert streamer.confirmed == 3 and session.stopped == 0


def test_a_user_table_keeps_numbers_compact():
    numbers = np.array([[1.5, math.nan]])
    table = UserTable(["a", "t", "b"], [True, False, True], numbers, [["x"]], [2.0], "test")
    assert table.sample(0) == ({"a": 1.5, "t": "x", "b": None}, 2.0)


# run_pipeline (make run) hands the replay's flags to features and the training flags to learn_model

@pytest.mark.parametrize("argv, expected", [
    ([], ["--rate", "1"]),  # make run, as before
    (["--rate", "100", "--count", "500"], ["--rate", "100", "--count", "500"]),
    (["--data", "examples/houses.csv", "--target", "price", "--order", "in-order", "--seed", "4",
      "--estimator", "E", "--task", "regression"],
     ["--rate", "1", "--data", "examples/houses.csv", "--target", "price", "--order", "in-order", "--seed", "4"]),
])
def test_make_run_passes_the_replay_flags_to_features(argv, expected):
    assert run_pipeline.features_args(run_pipeline.parse_args(argv)) == expected


def test_make_run_passes_the_training_flags_to_learn_model():
    assert run_pipeline.passed_on(run_pipeline.parse_args([]), run_pipeline.LEARN_MODEL_FLAGS) == []
    args = run_pipeline.parse_args(["--data", "t.csv", "--target", "y", "--task", "classification", "--estimator", "E",
                                    "--estimator-params", '{"C": 2}', "--order", "in-order"])
    assert run_pipeline.passed_on(args, run_pipeline.LEARN_MODEL_FLAGS) == [
        "--data", "t.csv", "--target", "y", "--task", "classification", "--estimator", "E",
        "--estimator-params", '{"C": 2}']


def test_a_classifier_card_sets_task_for_metric_and_dashboard_only(tmp_path):
    card = ModelCard(version="v", trained_at="now", estimator="E", feature_names=["x"], holdout_mae=None,
                     holdout_rmse=None, holdout_r2=None, train_rows=1, holdout_rows=1, sklearn_version="1",
                     task="classification")
    (tmp_path / CARD_NAME).write_text(json.dumps(asdict(card)))
    task = run_pipeline.trained_task({"MODELS_DIR": str(tmp_path)})
    assert task == "classification"
    assert {service: run_pipeline.service_env(service, task).get("TASK")
            for service in ("model", "metric", "plot", "dashboard")} == {
        "model": None, "metric": "classification", "plot": None, "dashboard": "classification"}
    assert "TASK" not in run_pipeline.service_env("metric", "regression"), "the default run leaves metric on auto"
    assert run_pipeline.trained_task({"MODELS_DIR": str(tmp_path / "none")}) is None
