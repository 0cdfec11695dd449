"""An id's partition is a stable hash of the id, and a logs folder refuses a metric with another K."""

from __future__ import annotations

import json

import pytest

from mlmonitor.messages import PredictionMessage, TargetMessage, decode
from mlmonitor.metric_log import HEADER_LINE, metric_log_shards, read_ids_and_errors
from mlmonitor.partitions import LayoutMismatch, check_layout, log_name, partition_of
from mlmonitor.topology import metric_topology, partition_queue


def test_partitions_are_pinned_values_of_blake2b_not_python_s_salted_hash():
    assert [partition_of("a", k) for k in (1, 2, 3, 7)] == [0, 1, 2, 2]
    assert [partition_of("c", k) for k in (1, 2, 3, 7)] == [0, 1, 0, 1]
    assert [partition_of("0b7e1a36-5f0e-4a43-9a59-4c3c0f3e2d11", k) for k in (2, 3, 7)] == [0, 2, 1]
    assert partition_of("a", 1 << 63) == 4681665781835383343 % (1 << 63)


def test_both_halves_of_a_course_pair_named_by_a_number_and_by_a_string_share_a_partition():
    y_true = decode(TargetMessage, b'{"id": 1700000001.5, "body": 150.0}')
    y_pred = decode(PredictionMessage, b'{"id": "1700000001.5", "body": 140.0}')
    assert [partition_of(y_true.id, k) for k in range(1, 9)] == [partition_of(y_pred.id, k) for k in range(1, 9)]


def test_partition_names_carry_k_and_the_topology_declares_every_partition_s_queues():
    assert log_name(0, 1) == "metric_log.csv" and log_name(1, 2) == "metric_log-1.csv"
    assert partition_queue("y_true", 1, 2) == "y_true.partition-1-of-2"
    assert metric_topology(1).queue_names() == ["features", "features.dlq", "y_true", "y_true.dlq", "y_pred",
                                                "y_pred.dlq", "metric_added", "metric_added.dlq"]
    names = metric_topology(2).queue_names()
    for queue in ("y_true.partition-0-of-2", "y_pred.partition-1-of-2", "y_pred.partition-1-of-2.dlq"):
        assert queue in names
    assert metric_topology(2).exchange_types()["metric_partitions"] == "direct"


def test_the_first_metric_records_k_and_one_with_another_k_is_refused(tmp_path):
    check_layout(tmp_path, 2)
    assert json.loads((tmp_path / "metric_partitions.json").read_text()) == {"partitions": 2}
    check_layout(tmp_path, 2)
    with pytest.raises(LayoutMismatch, match=r"holds a K=2 layout; drain and follow docs/scaling.md to change K"):
        check_layout(tmp_path, 3)
    with pytest.raises(LayoutMismatch, match="K=2"):
        check_layout(tmp_path, 1)


@pytest.mark.parametrize("shard, k, recorded", [("metric_log.csv", 2, 1), ("metric_log-1.csv", 1, 2),
                                                ("metric_log-2.csv", 2, 3)])
def test_without_a_record_shards_of_another_layout_refuse_the_start(tmp_path, shard, k, recorded):
    (tmp_path / shard).write_text(HEADER_LINE + "a,1.0,2.0,1.0\n")
    with pytest.raises(LayoutMismatch, match=f"K={recorded} layout"):
        check_layout(tmp_path, k)
    assert not (tmp_path / "metric_partitions.json").exists()


def test_an_existing_unpartitioned_log_is_recorded_as_k_1(tmp_path):
    (tmp_path / "metric_log.csv").write_text(HEADER_LINE + "a,1.0,2.0,1.0\n")
    check_layout(tmp_path, 1)
    assert json.loads((tmp_path / "metric_partitions.json").read_text()) == {"partitions": 1}


def test_readers_find_every_shard_and_count_each_id_once(tmp_path):
    (tmp_path / "metric_log-10.csv").write_text(HEADER_LINE + "c,1.0,4.0,3.0\n")
    (tmp_path / "metric_log-1.csv").write_text(HEADER_LINE + "b,1.0,3.0,2.0\na,1.0,9.0,8.0\n")
    (tmp_path / "metric_log.csv").write_text(HEADER_LINE + "a,1.0,2.0,1.0\n")
    (tmp_path / "metric_log-x.csv").write_text("not a shard")
    shards = metric_log_shards(tmp_path)
    assert [path.name for path in shards] == ["metric_log.csv", "metric_log-1.csv", "metric_log-10.csv"]
    ids, errors = read_ids_and_errors(shards)
    assert sorted(ids) == ["a", "b", "c"] and sorted(errors) == [1.0, 2.0, 3.0]
