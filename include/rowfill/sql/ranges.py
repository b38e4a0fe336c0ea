"""Key ranges: what a chunk covers, as one value instead of a ``(lo, hi)`` tuple.

A chunk covers the keys ``lo < key <= hi`` (``rowfill.sql.keys.Key.range_text``): ``lo`` is
exclusive, ``hi`` inclusive, and ``None`` on either side leaves that side open (the lowest chunk
starts "from the start" of the key space, so keys inserted below today's minimum are still
covered). Key values are JSON values as ``rowfill.sql.keys`` stores them (a composite key is a
list). Half-open on the left so that consecutive chunks share a boundary value without
overlapping: chunk n's ``hi`` is chunk n+1's ``lo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class KeyRange:
    """The keys ``lo < key <= hi``; ``lo``/``hi`` None = open on that side."""

    lo: Any = None
    hi: Any = None

    @property
    def from_start(self) -> bool:
        """No lower bound: the range starts at the start of the key space."""
        return self.lo is None

    def sql(self, key, qualifier: str | None = None, lo_name: str = "lo", hi_name: str = "hi") -> tuple[str, dict]:
        """``(condition, params)`` for this range over ``key`` (a ``rowfill.sql.keys.Key``), values bound.

        ``qualifier``: a table alias to qualify the key columns with; ``lo_name``/``hi_name``: bind-name
        prefixes, distinct per range when several ranges share one statement.
        """
        return key.range_sql(self.lo, self.hi, qualifier, lo_name, hi_name)


class _Bounds(NamedTuple):
    lo: Any
    hi: Any
    rows: int


class ChunkBounds(_Bounds):
    """A chunk about to be planned: its key range, the rows it was estimated to hold, and its first key.

    A tuple ``(lo, hi, rows)`` (so arithmetic helpers and their tests keep reading it as one), with
    ``first`` beside it: the chunk's first key when the plan walked it (None when estimated or not
    known), stored for labels such as "id a1b2..f00d". Two bounds compare by ``(lo, hi, rows)``.
    """

    first: Any

    def __new__(cls, lo: Any, hi: Any, rows: int, first: Any = None) -> ChunkBounds:
        self = super().__new__(cls, lo, hi, rows)
        self.first = first
        return self

    @property
    def range(self) -> KeyRange:
        """The keys the chunk covers."""
        return KeyRange(self.lo, self.hi)

    def merged(self, last: ChunkBounds, rows: int) -> ChunkBounds:
        """This chunk grown up to ``last``'s upper bound, holding ``rows`` rows; keeps this one's first key."""
        return ChunkBounds(self.lo, last.hi, rows, self.first)


def as_bounds(value: tuple) -> ChunkBounds:
    """``(lo, hi, rows)`` or ``(lo, hi, rows, first)`` as ChunkBounds (a ChunkBounds is returned as it is)."""
    return value if isinstance(value, ChunkBounds) else ChunkBounds(*value)
