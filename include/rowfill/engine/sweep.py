"""Looking at the whole key space in short statements: which rows still match ``where``.

``verify`` and planning's re-sweep both need "rows in (lo, hi] that match ``where``" over ranges
as large as the whole table. One statement over 100M rows would run for minutes, hold one
snapshot for all that time (holding back vacuum) and trip ``statement_timeout``; so the range is
cut into **slices** of ``SLICE_ROWS`` keys, each found by an index-only walk of the key's index
(the same ``Boundary`` statement batches use), and each slice is checked in its own short
transaction. The last slice is open above when the range is (``hi`` None), so rows inserted past
the last key while the walk runs are still looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

from sqlalchemy.engine import Connection, Engine

from rowfill.spec.spec import Spec
from rowfill.sql import statements
from rowfill.sql.keys import Boundary, Key, decode, format_value, load_key
from rowfill.sql.session import set_local
from rowfill.sql.sqltext import spec_slots

SLICE_ROWS = 10_000  # keys per slice: a few ms to walk on the index, well under a second to check


def key_slices(conn: Connection, key: Key, table_sql: str, lo: Any = None, hi: Any = None, *,
               rows: int = SLICE_ROWS, statement_timeout: float = 0.0) -> Iterator[tuple[Any, Any]]:
    """Consecutive ``(slice_lo, slice_hi]`` ranges of at most ``rows`` keys covering ``(lo, hi]``.

    Each slice is found by one index-only range scan on ``conn`` and is one transaction: the
    caller runs its check on ``conn`` before asking for the next slice, and the transaction is
    committed (``statement_timeout``, seconds, 0 = no limit, set with ``rowfill.sql.session.set_local``,
    applies to each statement). ``lo``/``hi`` None are open bounds; the last slice keeps ``hi``.
    """
    boundary = Boundary(key, table_sql)
    position = lo
    while True:
        set_local(conn, statement_timeout=statement_timeout)
        _, last, found = boundary.next(conn, position, hi, rows)
        end = last if found >= rows else hi
        yield position, end
        conn.commit()
        if found < rows or end == hi:
            return
        position = end


@dataclass
class Matches:
    """Rows matching ``where`` in a key range: how many, and the first few keys (JSON values, key order)."""

    rows: int = 0
    keys: list = field(default_factory=list)


def where_clause(spec: Spec) -> str:
    """`` AND (<where>)`` as driver SQL (run with ``exec_driver_sql``), composed by ``rowfill.sql.sqltext``.

    The user's text arrives checked (balanced, one expression), without its comments and in
    parentheses, so it cannot reach outside the slice's key range whatever it contains.
    """
    return f" AND {spec_slots(spec)['where']}" if spec.where else ""


def matching(engine: Engine, spec: Spec, lo: Any = None, hi: Any = None, *, sample: int = 5, first_only: bool = False,
             rows: int = SLICE_ROWS, statement_timeout: float = 0.0) -> Matches:
    """Rows in ``(lo, hi]`` (None = open) of ``spec.table`` that match ``spec.where``, slice by slice.

    ``spec`` must have its table resolved (``rowfill.engine.resolve``). ``first_only`` stops at the
    first slice holding one (the count is then that slice's, the keys its first ones).
    """
    found = Matches()
    table = spec.table.sql
    with engine.connect() as conn:
        key = load_key(conn, spec)
        conn.commit()
        for s_lo, s_hi in key_slices(conn, key, table, lo, hi, rows=rows, statement_timeout=statement_timeout):
            count_sql, keys_sql = statements.matching_in_slice(table, key, s_lo is not None, s_hi is not None,
                                                               where_clause(spec))
            params = key.range_params(s_lo, s_hi)
            count = conn.exec_driver_sql(count_sql, params).scalar()
            if not count:
                continue
            found.rows += count
            if len(found.keys) < sample:
                found.keys += [decode(v) for v in conn.exec_driver_sql(
                    keys_sql, {**params, "sample_n": sample - len(found.keys)}).scalars()]
            if first_only:
                conn.commit()
                break
    return found


def chunks_to_resweep(engine: Engine, spec: Spec, chunks: list, log=None) -> list[int]:
    """Done chunks that hold rows matching ``where`` again (inserted or changed after the chunk was walked).

    Only for ``set`` and ``transform`` specs with ``where``: their writes re-check ``where``, so
    walking such a chunk again writes only the rows that still need it. Not ``sql`` mode (rowfill
    cannot know whether the statement may run twice on a row) and not sinks (a re-sent row would
    be sent twice). The lowest chunk is checked from the very start of the key space.
    """
    if spec.mode not in ("set", "transform") or not spec.where or not chunks:
        return []
    lowest = min(c.chunk_no for c in chunks)
    reopen = []
    for chunk in chunks:
        if not chunk.status.finished:
            continue
        lo = None if chunk.chunk_no == lowest else chunk.lo
        hit = matching(engine, spec, lo, chunk.hi, sample=1, first_only=True)
        if hit.rows:
            reopen.append(chunk.chunk_no)
            if log:
                log.info("plan: chunk %d is done but holds rows that match `where` again (e.g. %s %s); walking it again",
                         chunk.chunk_no, spec.key, format_value(hit.keys[0]) if hit.keys else "?")
    return reopen
