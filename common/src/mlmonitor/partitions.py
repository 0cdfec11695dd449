"""Which metric partition an id belongs to, and the record of K in the logs folder.

An id's partition is `int.from_bytes(blake2b(id as UTF-8, digest_size=8).digest(), "big") % K`: stable
across processes, machines and Python versions (Python's `hash` of a str is salted per process), and
computed on the id as the messages decode it, so both halves of a pair (even one named by a number,
the other by a string) land in the same partition.

`logs/metric_partitions.json` records the K of the shards in the folder. A metric started with another
K refuses to start: a different K sends an id's halves to a different shard than its earlier rows, so
changing K takes a drain first (docs/scaling.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from pathlib import Path

from .files import write_atomically

RECORD_NAME = "metric_partitions.json"
UNPARTITIONED_LOG = "metric_log.csv"
SHARD_PATTERN = re.compile(r"metric_log-(\d+)\.csv")


def partition_of(id: str, partitions: int) -> int:
    digest = hashlib.blake2b(id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def log_name(partition: int, partitions: int) -> str:
    """The shard a partition writes: `metric_log.csv` when unpartitioned, else `metric_log-<I>.csv`."""
    return UNPARTITIONED_LOG if partitions == 1 else f"metric_log-{partition}.csv"


class LayoutMismatch(RuntimeError):
    pass


def check_layout(logs_dir: Path, partitions: int) -> None:
    """Records K in `logs_dir` on the first start; raises LayoutMismatch when the record, or without a
    record the shards present, hold another K. Serialised by a lock, so that metrics started together
    with different K can't both pass."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    record = logs_dir / RECORD_NAME
    with open(logs_dir / f".{RECORD_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = _recorded_partitions(record)
        if recorded is None:
            recorded = _partitions_of_shards(logs_dir, partitions)
        if recorded != partitions:
            raise LayoutMismatch(f"{logs_dir}/ holds a K={recorded} layout; drain and follow docs/scaling.md "
                                 f"to change K")
        if not record.exists():
            write_atomically(record, json.dumps({"partitions": partitions}).encode() + b"\n")


def _recorded_partitions(record: Path) -> int | None:
    try:
        text = record.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        partitions = json.loads(text)["partitions"]
    except (ValueError, KeyError, TypeError):
        raise LayoutMismatch(f"{record} is not a record of K ({text.strip()[:80]!r}); see docs/scaling.md") from None
    if not isinstance(partitions, int) or partitions < 1:
        raise LayoutMismatch(f"{record} holds K={partitions!r}, not a positive integer; see docs/scaling.md")
    return partitions


def _partitions_of_shards(logs_dir: Path, partitions: int) -> int:
    """K as far as the shards tell, without a record: 1 with rows in metric_log.csv, more than the highest
    shard number with numbered shards, and `partitions` (no disagreement) when there are none."""
    numbered = [int(match.group(1)) for path in logs_dir.iterdir() if (match := SHARD_PATTERN.fullmatch(path.name))]
    unpartitioned = logs_dir / UNPARTITIONED_LOG
    has_rows = unpartitioned.exists() and unpartitioned.stat().st_size > len("id,y_true,y_pred,absolute_error\n")
    if has_rows and partitions > 1:
        return 1
    if numbered and (partitions == 1 or max(numbered) >= partitions):
        return max(max(numbered) + 1, 2)
    return partitions
