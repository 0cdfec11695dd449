"""The compact id set, and the vectorised restore of ids and errors from the metric log."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from mlmonitor import metric_log
from mlmonitor.ids import IdSet, uuid_key
from mlmonitor.metric_log import HEADER_LINE, MetricRow, format_rows, read_ids_and_errors, read_rows


@pytest.fixture
def small_merges(monkeypatch):
    monkeypatch.setattr(IdSet, "MERGE_AT", 100)


def test_uuids_stay_members_after_moving_into_the_arrays(small_merges):
    ids = [str(uuid.UUID(int=i * 7919 + (i << 80))) for i in range(1000)]
    id_set = IdSet()
    for id in ids:
        id_set.add(id)
        id_set.add(id)  # adding twice changes nothing
    assert len(id_set) == 1000
    assert len(id_set._recent) < 100 and len(id_set._high) > 900  # the bulk is 16 bytes an id
    assert all(id in id_set for id in ids)
    assert str(uuid.UUID(int=5)) not in id_set
    assert set(id_set) == set(ids)


def test_other_ids_work_and_are_never_confused_with_uuids(small_merges):
    lower = str(uuid.uuid4())
    id_set = IdSet([lower, "1700000000.5", "c,1", "42"])
    assert lower.upper() not in id_set  # another string, so another id
    assert {"1700000000.5", "c,1", "42", lower} == id_set
    assert "1700000000.50" not in id_set and 1700000000.5 not in id_set
    assert uuid_key(lower.upper()) is None and uuid_key("+" + lower[1:]) is None


def test_ids_sharing_their_first_64_bits_are_told_apart(small_merges):
    high = 0x0123456789ABCDEF << 64
    ids = [str(uuid.UUID(int=high | low)) for low in (1, 2, 3)]
    id_set = IdSet.from_keys(np.array([high >> 64] * 2, dtype=np.uint64), np.array([1, 3], dtype=np.uint64))
    assert ids[0] in id_set and ids[2] in id_set and ids[1] not in id_set
    id_set.add(ids[1])
    id_set.discard(ids[0])
    assert ids[0] not in id_set and ids[1] in id_set and len(id_set) == 2


def test_discard_and_difference_update_reach_every_part(small_merges):
    ids = [str(uuid.uuid4()) for _ in range(150)] + ["t1", "t2"]
    id_set = IdSet(ids)
    id_set.difference_update([ids[0], ids[149], "t1"])  # one merged, one recent, one other
    assert len(id_set) == 149 and not {ids[0], ids[149], "t1"} & set(id_set)


def write_log(path, text: str) -> None:
    path.write_text(HEADER_LINE + text)


def expected(path) -> tuple[set[str], list[float]]:
    """What the restore did before: every id once, with the error of its first row."""
    ids, errors = set(), []
    for row in read_rows(path):
        if row.id not in ids:
            ids.add(row.id)
            errors.append(row.absolute_error)
    return ids, errors


@pytest.mark.parametrize("block_bytes", [64, 4 << 20])
def test_vectorised_restore_matches_read_rows_on_a_mixed_log(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(metric_log, "_BLOCK_BYTES", block_bytes)
    uuids = [str(uuid.uuid4()) for _ in range(50)]
    rows = [MetricRow.from_pair(id, 100.0 + i, 90.5 - i * 1.25) for i, id in enumerate(uuids)]
    rows += [MetricRow.from_pair("1700000000.5", 3.0, 1.0), MetricRow.from_pair("c,1", 2.0, 2.5),
             MetricRow.from_pair(uuids[3], 1.0, 1e6), MetricRow.from_pair("1700000000.5", 0.0, 9.0)]
    text = format_rows(rows) + f"{uuids[10]},1.0,2.0,nan\nnot a row\n" + format_rows(rows[:5]) + "dead,1.0,2"
    path = tmp_path / "metric_log.csv"
    write_log(path, text)
    ids, errors = read_ids_and_errors(path)
    want_ids, want_errors = expected(path)
    assert ids == want_ids
    assert sorted(errors.tolist()) == sorted(want_errors)
    assert read_ids_and_errors(path, errors=False)[0] == want_ids


def test_restore_of_a_missing_or_empty_log(tmp_path):
    assert len(read_ids_and_errors(tmp_path / "missing.csv")[0]) == 0
    (tmp_path / "empty.csv").write_text("")
    assert read_ids_and_errors(tmp_path / "empty.csv")[1].size == 0


def test_restore_refuses_a_file_that_is_not_a_metric_log(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(metric_log.MetricLogError):
        read_ids_and_errors(tmp_path / "other.csv")
