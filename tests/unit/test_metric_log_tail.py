"""MetricLogTail: catching up with the rows appended since the last read, and nothing else."""

from __future__ import annotations

import pytest

from mlmonitor.metric_log import HEADER_LINE, MetricLogError, MetricLogTail, MetricLogWriter, MetricRow


def rows(*ids: str) -> list[MetricRow]:
    return [MetricRow.from_pair(id, 100.0 + index, 90.0) for index, id in enumerate(ids)]


class _writer:
    def __init__(self, path):
        self.writer = MetricLogWriter(path, fsync=False)

    def __enter__(self):
        return self.writer

    def __exit__(self, *_):
        self.writer.close()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "metric_log.csv"


@pytest.fixture
def writer(path):
    with _writer(path) as writer:
        yield writer


def ids(tail: MetricLogTail) -> list[str]:
    return [row.id for row in tail.read_new()]


def test_missing_log_has_no_rows_until_it_appears(path):
    tail = MetricLogTail(path)
    assert ids(tail) == []
    with _writer(path) as writer:
        writer.append(rows("a"))
    assert ids(tail) == ["a"]


def test_first_read_returns_everything_then_only_new_rows(path, writer):
    writer.append(rows("a", "b"))
    tail = MetricLogTail(path)
    assert ids(tail) == ["a", "b"]
    assert ids(tail) == []
    writer.append(rows("c"))
    writer.append(rows("d", "e"))
    assert ids(tail) == ["c", "d", "e"]


def test_values_are_read_back_exactly(path, writer):
    written = [MetricRow.from_pair("x", 151.0, 148.23456789012345), MetricRow.from_pair("y,quoted", 0.1, 0.3)]
    writer.append(written)
    assert list(MetricLogTail(path).read_new()) == written


def test_an_unfinished_last_line_waits_until_it_is_complete(path, writer):
    writer.append(rows("a"))
    with open(path, "a") as handle:
        handle.write("b,1.0,2.")
    tail = MetricLogTail(path)
    assert ids(tail) == ["a"]
    with open(path, "a") as handle:
        handle.write("0,1.0\n")
    assert ids(tail) == ["b"]


def test_rows_spanning_read_chunks_are_whole(path, writer, monkeypatch):
    monkeypatch.setattr(MetricLogTail, "CHUNK_BYTES", 7)
    many = [f"id-{n}" for n in range(50)]
    writer.append(rows(*many))
    assert ids(MetricLogTail(path)) == many


def test_a_replaced_or_truncated_log_is_read_from_the_start(path, writer):
    writer.append(rows("a", "b"))
    tail = MetricLogTail(path)
    assert ids(tail) == ["a", "b"]
    path.unlink()
    with _writer(path) as fresh:
        fresh.append(rows("c"))
    assert ids(tail) == ["c"]
    path.write_text(HEADER_LINE)
    assert ids(tail) == []


def test_a_reader_that_stops_early_reads_the_rest_again(path, writer):
    writer.append(rows("a", "b"))
    tail = MetricLogTail(path)
    next(iter(tail.read_new()))
    assert ids(tail) == ["a", "b"]


def test_a_foreign_header_is_refused(path):
    path.write_text("when,what\n1,2\n")
    with pytest.raises(MetricLogError):
        ids(MetricLogTail(path))


def test_a_classifier_s_labels_are_read_back_as_labels(path, writer):
    writer.append([MetricRow("x", "yes", "no, thanks", 0.75), MetricRow("y", "1", "0", 1.0)])
    tail = MetricLogTail(path)
    assert list(tail.read_new()) == [MetricRow("x", "yes", "no, thanks", 0.75), MetricRow("y", 1.0, 0.0, 1.0)]
    writer.append([MetricRow("z", 'say "hi"', "yes", 0.5)])
    assert list(tail.read_new()) == [MetricRow("z", 'say "hi"', "yes", 0.5)]
