"""A compact, exact set of event ids.

metric remembers every id its log holds, and plot every id it has counted, so that each event
gives one row and one count, ever. A Python set of a million UUID strings costs well over 100 MB.
Here a canonical UUID (what features sends: 36 lower-case hex digits and dashes) is kept as its
128 bits in two sorted numpy arrays, 16 bytes an id; the newest ones wait in a small set of strings
and are merged in by the tens of thousands. Any other id (course producers send float timestamps)
is kept as its string. Membership is exact either way: the 128 bits are the UUID string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Set

import numpy as np

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LOW_BITS = (1 << 64) - 1


def uuid_key(id: str) -> int | None:
    """The 128-bit number of a canonical UUID string; None for any other id."""
    if len(id) == 36 and _CANONICAL_UUID.fullmatch(id):
        return int(id.replace("-", ""), 16)
    return None


def split_key(key: int) -> tuple[int, int]:
    """A 128-bit key's high and low 64 bits, as the sorted arrays hold them."""
    return key >> 64, key & _LOW_BITS


def uuid_string(high: int, low: int) -> str:
    digits = f"{(int(high) << 64) | int(low):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class IdSet(Set):
    """An exact set of id strings; about 16 bytes per UUID id once merged."""

    MERGE_AT = 50_000  # recent UUIDs kept as strings before they move into the arrays (~6 MB)

    def __init__(self, ids: Iterable[str] = ()):
        self._high = np.empty(0, np.uint64)  # sorted; an id's low half is at the same index
        self._low = np.empty(0, np.uint64)
        self._recent: set[str] = set()
        self._other: set[str] = set()
        for id in ids:
            self.add(id)

    @classmethod
    def from_keys(cls, high: np.ndarray, low: np.ndarray, other: Iterable[str] = ()) -> IdSet:
        """Builds the set from distinct UUID keys (high and low 64 bits) plus other ids, in one go."""
        ids = cls()
        order = np.argsort(high, kind="stable")
        ids._high = np.ascontiguousarray(high[order], dtype=np.uint64)
        ids._low = np.ascontiguousarray(low[order], dtype=np.uint64)
        ids._other = set(other)
        return ids

    def __len__(self) -> int:
        return len(self._high) + len(self._recent) + len(self._other)

    def __contains__(self, id: object) -> bool:
        if id in self._recent or id in self._other:
            return True
        if not len(self._high) or not isinstance(id, str):
            return False
        key = uuid_key(id)
        return key is not None and self._index_of(key) is not None

    def __iter__(self) -> Iterator[str]:
        yield from self._recent
        yield from self._other
        for high, low in zip(self._high.tolist(), self._low.tolist()):
            yield uuid_string(high, low)

    def add(self, id: str) -> None:
        self.add_if_new(id)

    def add_if_new(self, id: str) -> bool:
        """Adds `id` and returns True, or returns False if it was already in: one look-up for both."""
        if id in self._recent or id in self._other:
            return False
        key = uuid_key(id)
        if key is None:
            self._other.add(id)
            return True
        if len(self._high) and self._index_of(key) is not None:
            return False
        self._recent.add(id)
        if len(self._recent) >= self.MERGE_AT:
            self._merge_recent()
        return True

    def discard(self, id: str) -> None:
        self._recent.discard(id)
        self._other.discard(id)
        key = uuid_key(id)
        index = self._index_of(key) if key is not None else None
        if index is not None:
            self._high = np.delete(self._high, index)
            self._low = np.delete(self._low, index)

    def difference_update(self, ids: Iterable[str]) -> None:
        for id in ids:
            self.discard(id)

    def _index_of(self, key: int) -> int | None:
        high, low = map(np.uint64, split_key(key))
        index = int(self._high.searchsorted(high))
        while index < len(self._high) and self._high[index] == high:  # ids sharing 64 bits: check them all
            if self._low[index] == low:
                return index
            index += 1
        return None

    def _merge_recent(self) -> None:
        keys = [int(id.replace("-", ""), 16) for id in self._recent]
        high, low = np.array([split_key(key) for key in keys], dtype=np.uint64).T
        order = np.argsort(high, kind="stable")
        where = np.searchsorted(self._high, high[order])
        self._high = np.insert(self._high, where, high[order])
        self._low = np.insert(self._low, where, low[order])
        self._recent.clear()
