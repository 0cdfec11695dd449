from __future__ import annotations

import errno
import os
import uuid

import pytest

from mlmonitor import metric_log
from mlmonitor.metric_log import (HEADER_LINE, MetricLogError, MetricLogWriter, MetricRow, read_ids_and_errors,
                                  read_last_rows, read_rows)
from mlmonitor.tasks import label_key


def row(id: str, y_true: float = 150.0, y_pred: float = 140.5) -> MetricRow:
    return MetricRow.from_pair(id, y_true, y_pred)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "logs" / "metric_log.csv"


class WriterClosedOnce(MetricLogWriter):
    closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            super().close()


@pytest.fixture
def open_writer(path):
    writers = []

    def open_writer() -> MetricLogWriter:
        writer = WriterClosedOnce(path, fsync=False)
        writers.append(writer)
        return writer

    yield open_writer
    for writer in writers:
        writer.close()


def test_from_pair_computes_the_absolute_error():
    assert MetricRow.from_pair("a", 100.0, 112.5) == MetricRow("a", 100.0, 112.5, 12.5)


def test_fresh_file_gets_the_header_and_its_folder(path, open_writer):
    open_writer()
    assert path.read_text() == "id,y_true,y_pred,absolute_error\n"


def test_appended_rows_are_readable(path, open_writer):
    writer = open_writer()
    written = writer.append([row("a", 151.0, 148.25), row("b", 75.0, 90.0)])
    assert [r.id for r in written] == ["a", "b"]
    assert list(read_rows(path)) == [MetricRow("a", 151.0, 148.25, 2.75), MetricRow("b", 75.0, 90.0, 15.0)]
    assert path.read_text() == HEADER_LINE + "a,151.0,148.25,2.75\nb,75.0,90.0,15.0\n"


def test_writes_durably_with_fsync(path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(metric_log.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    writer = MetricLogWriter(path)
    synced.clear()
    writer.append([row("a")])
    writer.close()
    assert len(synced) == 1
    assert [r.id for r in read_rows(path)] == ["a"]


def test_duplicate_ids_are_written_once(path, open_writer):
    writer = open_writer()
    assert writer.append([row("a"), row("a", 1.0, 2.0)]) == [row("a")]
    assert writer.append([row("a", 3.0, 4.0), row("b")]) == [row("b")]
    assert writer.append([row("b")]) == []
    assert [r.id for r in read_rows(path)] == ["a", "b"]


def test_ids_written_before_a_restart_are_not_written_again(path, open_writer):
    first = open_writer()
    first.append([row("a"), row("b")])
    first.close()
    second = open_writer()
    assert second.written_ids == {"a", "b"}
    assert second.append([row("b"), row("c")]) == [row("c")]
    assert path.read_text().count(HEADER_LINE) == 1
    assert [r.id for r in read_rows(path)] == ["a", "b", "c"]


def test_unfinished_last_line_is_skipped_by_readers_and_removed_by_the_next_writer(path, open_writer):
    first = open_writer()
    first.append([row("a")])
    first.close()
    with open(path, "ab") as killed_writer:
        killed_writer.write(b"b,151.0,14")
    assert [r.id for r in read_rows(path)] == ["a"]

    second = open_writer()
    assert path.read_text() == HEADER_LINE + "a,150.0,140.5,9.5\n"
    assert second.written_ids == {"a"}
    assert second.append([row("b")]) == [row("b")]
    assert [r.id for r in read_rows(path)] == ["a", "b"]


def test_unfinished_header_is_replaced_by_a_whole_one(path, open_writer):
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER_LINE.encode()[:7])
    writer = open_writer()
    writer.append([row("a")])
    assert path.read_text() == HEADER_LINE + "a,150.0,140.5,9.5\n"


def test_missing_file_has_no_rows(path):
    assert list(read_rows(path)) == []


def test_wrong_header_is_an_error(path):
    path.parent.mkdir(parents=True)
    path.write_text("id,prediction\nx,1\n")
    with pytest.raises(MetricLogError, match="expected"):
        list(read_rows(path))
    with pytest.raises(MetricLogError):
        MetricLogWriter(path, fsync=False)


def test_malformed_rows_are_skipped(path):
    path.parent.mkdir(parents=True)
    path.write_text(HEADER_LINE + "a,1.0,2.0,1.0\nb,,2.0,1.0\nc,1.0\nd,1.0,3.0,2.0\ne,1.0,2.0,high\n"
                                  "f,yes,,1.0\n")
    assert [r.id for r in read_rows(path)] == ["a", "d"]


def test_a_classifier_s_labels_are_written_as_text_and_read_back_with_the_same_label_key(path, open_writer):
    writer = open_writer()
    writer.append([MetricRow("a", "yes", "no", 0.75), MetricRow("b", "1", "0", 1.0), MetricRow("c", "0.5", "2", 0.0)])
    assert path.read_text() == HEADER_LINE + "a,yes,no,0.75\nb,1,0,1.0\nc,0.5,2,0.0\n"
    assert list(read_rows(path)) == [MetricRow("a", "yes", "no", 0.75), MetricRow("b", 1.0, 0.0, 1.0),
                                     MetricRow("c", 0.5, 2.0, 0.0)]
    assert [label_key(r.y_true) for r in read_rows(path)] == ["yes", "1", "0.5"]


@pytest.mark.parametrize("text, value", [("151.0", 151.0), ("1", 1.0), ("-3", -3.0), ("1e-05", 1e-05),
                                         ("1.5e+16", 1.5e16), ("yes", "yes"), ("01", "01"), ("+1", "+1"),
                                         ("1_000", "1_000"), (" 1", " 1"), ("-0", "-0"), ("nan", "nan"),
                                         ("inf", "inf"), ("-inf", "-inf")])
def test_a_field_is_a_number_where_it_is_one_and_integer_like_labels_keep_their_text(text, value):
    assert metric_log._value_of(text) == value
    assert type(metric_log._value_of(text)) is type(value)
    if isinstance(value, str):
        assert label_key(metric_log._value_of(text)) == text


@pytest.mark.parametrize("label", ["a,b", 'say "hi"', "no, \"thanks\"", "café", " spaced ", "1,5"])
def test_labels_with_commas_quotes_and_other_text_round_trip(path, open_writer, label):
    writer = open_writer()
    writer.append([MetricRow("a", label, "other", 1.0)])
    writer.close()
    assert list(read_rows(path)) == [MetricRow("a", label, "other", 1.0)]
    assert read_last_rows(path, 10) == {"a": MetricRow("a", label, "other", 1.0)}
    assert open_writer().written_ids == {"a"}


def labelled_rows(count: int) -> list[MetricRow]:
    labels = ["yes", "no", "1", "0", "maybe later", "ünïcode"]
    return [MetricRow(str(uuid.uuid4()), labels[i % 6], labels[(i * 5) % 6], (i % 4) / 4) for i in range(count)]


@pytest.mark.parametrize("block_bytes", [64, 4 << 20])
def test_the_restore_fast_path_reads_labels_and_gives_what_read_rows_gives(path, open_writer, monkeypatch,
                                                                           block_bytes):
    monkeypatch.setattr(metric_log, "_BLOCK_BYTES", block_bytes)
    rows = labelled_rows(300) + [MetricRow.from_pair(str(uuid.uuid4()), 151.0, 148.25)]
    open_writer().append(rows)
    slow_blocks = []
    real_slow_path = metric_log._parse_block_slowly
    monkeypatch.setattr(metric_log, "_parse_block_slowly",
                        lambda *args: (slow_blocks.append(1), real_slow_path(*args))[1])

    ids, errors = read_ids_and_errors(path)

    assert slow_blocks == [], "labels without quotes are the fast path's"
    assert ids == {row.id for row in read_rows(path)} == {row.id for row in rows}
    assert errors.tolist() == [row.absolute_error for row in read_rows(path)]


def test_a_block_with_quoted_labels_goes_the_slow_way_and_gives_the_same_ids_and_errors(path, open_writer,
                                                                                       monkeypatch):
    rows = labelled_rows(50)
    rows[20] = MetricRow(rows[20].id, "no, thanks", 'say "hi"', 0.5)
    rows.append(rows[3])  # a second row of an id: its first one counts
    open_writer().append(rows)
    with open(path, "a") as handle:
        handle.write(f"{rows[5].id},yes,no,0.125\n{uuid.uuid4()},yes,no,nan\n")
    fast_blocks = []
    real_fast_path = metric_log._parse_uuid_block
    monkeypatch.setattr(metric_log, "_parse_uuid_block",
                        lambda *args: (fast_blocks.append(result := real_fast_path(*args)), result)[1])

    ids, errors = read_ids_and_errors(path)

    assert fast_blocks == [None]
    expected = {}
    for row in read_rows(path):
        expected.setdefault(row.id, row.absolute_error)
    assert ids == set(expected) and sorted(errors.tolist()) == sorted(expected.values())


def test_read_last_rows_reads_further_back_when_long_labels_make_rows_longer_than_guessed(tmp_path):
    path = tmp_path / "metric_log.csv"
    long_label = "a rather long class label " * 7
    path.write_text(HEADER_LINE + "".join(f"id-{n},{long_label},no,1.0\n" for n in range(100)))
    rows = read_last_rows(path, 30)  # 30 × 160 bytes hold fewer than 30 of these rows
    assert set(rows) == {f"id-{n}" for n in range(70, 100)}
    assert rows["id-99"] == MetricRow("id-99", long_label, "no", 1.0)


@pytest.mark.parametrize("awkward_id", ['a,b', 'say "hi"', "1700000000.123456", "comma, \"quote\", both"])
def test_ids_with_commas_and_quotes_round_trip(path, open_writer, awkward_id):
    writer = open_writer()
    writer.append([row(awkward_id)])
    writer.close()
    assert [r.id for r in read_rows(path)] == [awkward_id]
    assert open_writer().written_ids == {awkward_id}


def test_failed_write_leaves_no_partial_row_and_the_ids_writable_later(path, open_writer, monkeypatch):
    writer = open_writer()
    writer.append([row("a")])
    before = path.read_bytes()
    real_write = os.write
    calls = []

    def disk_fills_up(fd, data):
        if fd != writer._fd:
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metric_log.os, "write", disk_fills_up)
    with pytest.raises(OSError) as caught:
        writer.append([row("b"), row("c")])
    assert caught.value.errno == errno.ENOSPC
    assert len(calls) == 2  # half the batch did reach the file before the failure
    assert path.read_bytes() == before
    assert writer.written_ids == {"a"}

    monkeypatch.setattr(metric_log.os, "write", real_write)
    assert writer.append([row("b"), row("c")]) == [row("b"), row("c")]
    assert [r.id for r in read_rows(path)] == ["a", "b", "c"]


def test_unfinished_last_line_longer_than_one_read_chunk_removes_only_that_line(path, open_writer):
    writer = open_writer()
    writer.append([row("a"), row("b")])
    writer.close()
    with open(path, "ab") as handle:
        handle.write(b"x" * 200_000)  # no newline: far longer than the 64 KiB read chunk
    open_writer()
    assert [r.id for r in read_rows(path)] == ["a", "b"]
    assert path.read_text().endswith("\nb,150.0,140.5,9.5\n")


def test_close_twice_is_harmless(path):
    writer = MetricLogWriter(path, fsync=False)
    writer.close()
    writer.close()


def test_read_last_rows_reads_only_the_tail_of_the_log(tmp_path):
    path = tmp_path / "metric_log.csv"
    path.write_text("id,y_true,y_pred,absolute_error\n" + "".join(f"id-{n},1.0,2.0,1.0\n" for n in range(1000))
                    + "unfinished,1.0")
    rows = read_last_rows(path, 10, bytes_per_row=20)
    assert "id-999" in rows and "id-900" not in rows and "unfinished" not in rows
    assert rows["id-999"].absolute_error == 1.0
    assert set(read_last_rows(path, 5000)) == {f"id-{n}" for n in range(1000)}
    assert read_last_rows(tmp_path / "missing.csv", 10) == {}
