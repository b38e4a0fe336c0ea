"""Looking at the whole table in short statements: which rows still match ``where``.

``verify`` needs "rows of the whole table that match ``where``", and planning's re-sweep "rows in
(lo, hi] that match ``where``" per chunk, over ranges as large as the whole table. One statement
over 100M rows would run for minutes, hold one snapshot for all that time (holding back vacuum)
and trip ``statement_timeout``; so both are cut into **slices**, each checked in its own short
transaction:

- ``heap_matching`` (verify, on a plain table on PostgreSQL 14+): slices are **block ranges** of
  the heap (``rowfill.sql.verify_scans``), each a TID Range Scan: a sequential read of those pages,
  no index walk, no random heap fetches, and every row on them looked at whatever its key. A slice
  is sized by time (``SLICE_SECONDS``), so an expensive ``where`` or a cold cache gets smaller
  slices and a cheap one fewer round trips; a slice that hits ``statement_timeout`` is halved and
  run again. When the walk reaches the relation's end it reads the size again (the table may
  have grown meanwhile) and ends with a slice open above, so rows appended at the end of the heap
  while the sweep runs are looked at too. On a table just rewritten by a batched backfill, 2-10x
  faster than the key slices below (the first read of freshly written pages still pays for their
  hint bits and pruning, which a read of them later would not; README, "Benchmarks").
- ``matching`` (re-sweep, and verify's fallback for partitioned or inherited tables and servers
  before 14): slices of ``SLICE_ROWS`` keys, each found by an index-only walk of the key's index
  (the same ``Boundary`` statement batches use). The last slice is open above when the range is
  (``hi`` None), so rows inserted past the last key while the walk runs are still looked at.

What neither proves: a row the application inserts or changes *while* the sweep runs may be
missed (key slices: a new key below the walk's position; block slices: a row version written
into a block already read). Rows that match ``where`` and are left alone during the sweep are all
found, which is what verify is for: the backfill left none behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from rowfill.engine.disconnects import sqlstate_of
from rowfill.errors import RowfillError
from rowfill.spec.durations import format_duration
from rowfill.spec.spec import Spec
from rowfill.sql import statements, verify_scans
from rowfill.sql.keys import Boundary, Key, decode, format_value, load_key
from rowfill.sql.session import set_local
from rowfill.sql.sqltext import spec_slots

SLICE_ROWS = 10_000  # keys per slice: a few ms to walk on the index, well under a second to check
SLICE_SECONDS = 0.25  # a block slice's target time: short snapshot, short statement, few round trips
FIRST_BLOCKS = 128  # blocks (8 kB each by default) of the first block slice, before its time is known
MAX_BLOCKS = 65_536  # blocks of the largest block slice (512 MB): bounds one slice on a cold cache
SAMPLE_CANDIDATES = 500  # tuple addresses kept for the sample keys before they are cut down to the first ones
REWRITES = 3  # sweeps started over when the table is rewritten meanwhile (VACUUM FULL, CLUSTER) before giving up


class SweepFailed(RowfillError):
    """The sweep could not look at every row: one block's check takes longer than
    ``statement_timeout``, or the table kept being rewritten under it."""


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


def _statement_timeout(exc: BaseException) -> bool:
    # 57014 is also pg_cancel_backend; only the timeout says the slice was too big
    return sqlstate_of(exc) == "57014" and "statement timeout" in str(getattr(exc, "orig", None) or exc)


def _tid_array(tids: list[str]) -> str:
    """``tid[]`` text of tuple addresses such as ``(12,3)`` (no quotes or commas inside need escaping but the pair's)."""
    return "{" + ",".join(f'"{t}"' for t in tids) + "}"


def _first_keys(conn: Connection, sql: str, tids: list[str], n: int) -> list[tuple[str, str]]:
    """``(key JSON, ctid)`` of the first ``n`` rows in key order among ``tids`` that still match ``where``."""
    return [tuple(r) for r in conn.exec_driver_sql(sql, {"tids": _tid_array(tids), "sample_n": n}).all()]


@dataclass
class BlockSlicer:
    """Sizes block slices by time: doubles a slice that took under half of ``target`` seconds, halves
    one that took more than ``target`` (and one that hit ``statement_timeout``), within 1..``largest`` blocks."""

    blocks: int = FIRST_BLOCKS
    target: float = SLICE_SECONDS
    largest: int = MAX_BLOCKS

    def took(self, seconds: float) -> None:
        """Note the seconds the last slice of ``blocks`` blocks took; size the next one."""
        if seconds < self.target / 2:
            self.blocks = min(self.blocks * 2, self.largest)
        elif seconds > self.target:
            self.blocks = max(self.blocks // 2, 1)

    def timed_out(self) -> bool:
        """The last slice hit ``statement_timeout``: halve it; False when it was one block already."""
        if self.blocks <= 1:
            return False
        self.blocks //= 2
        return True


def heap_matching(engine: Engine, spec: Spec, *, sample: int = 5, statement_timeout: float = 0.0,
                  slicer: BlockSlicer | None = None, clock=time.monotonic) -> Matches:
    """Rows of the whole of ``spec.table`` (resolved, a plain table: ``verify_scans.heap_sweep_possible``)
    that match ``spec.where``, block slice by block slice, each its own transaction.

    ``statement_timeout``: seconds each slice's statements may run (0 = no limit); a slice that
    hits it is halved and run again. ``sample``: how many keys to name, the first in key order of
    all rows found (their tuple addresses are kept per slice and read again by address at the end,
    so a row changed meanwhile so that it no longer matches is not named). ``slicer`` sizes the
    slices (default ``BlockSlicer()``). Raises ``SweepFailed`` when one block alone takes longer
    than ``statement_timeout`` or the table is rewritten under the sweep ``REWRITES`` times.
    """
    for _ in range(REWRITES):
        with engine.connect() as conn:
            key = load_key(conn, spec)
            conn.commit()
            found = _heap_sweep(conn, spec, key, sample, statement_timeout, slicer or BlockSlicer(), clock)
            if found is not None:
                return found
    raise SweepFailed(f"{spec.table} was rewritten (VACUUM FULL, CLUSTER, TRUNCATE or an ALTER TABLE) {REWRITES} times while "
                      "verify read it, so it could not look at every row once; run verify again when that is over")


def _heap_sweep(conn: Connection, spec: Spec, key: Key, sample: int, statement_timeout: float, slicer: BlockSlicer,
                clock) -> Matches | None:
    """One sweep of the heap, or None when the table was rewritten (its file node changed) meanwhile."""
    table = spec.table.sql
    where = where_clause(spec)
    count_sql = {has_hi: verify_scans.matching_in_blocks(table, key, has_hi, where) for has_hi in (True, False)}
    first_sql = verify_scans.first_keys_of(table, key, where)
    found, candidates = Matches(), []
    node, end = verify_scans.heap_extent(conn, table)
    conn.commit()
    position = 0
    while True:
        last = position >= end
        if last:  # the walk reached the end it knew: has the table grown meanwhile?
            now, end = verify_scans.heap_extent(conn, table)
            if now != node:
                conn.rollback()
                return None
            # grown by no more than a slice: this slice is open above, to whatever is there when it runs
            # (so a table the application appends to at every slice does not keep the sweep chasing its end)
            last = end - position <= slicer.blocks
        upper = None if last else min(position + slicer.blocks, end)
        params = {"b_lo": verify_scans.tid(position)}
        if upper is not None:
            params["b_hi"] = verify_scans.tid(upper)
        started = clock()
        try:
            set_local(conn, statement_timeout=statement_timeout)
            count_stmt, sample_stmt = count_sql[upper is not None]
            count = conn.exec_driver_sql(count_stmt, params).scalar() or 0
            if count:
                found.rows += count
                candidates += [t for _, t in conn.exec_driver_sql(sample_stmt, {**params, "sample_n": sample}).all()]
                if len(candidates) > SAMPLE_CANDIDATES:
                    candidates = [t for _, t in _first_keys(conn, first_sql, candidates, sample)]
            conn.commit()
        except DBAPIError as exc:
            conn.rollback()
            if not _statement_timeout(exc):
                raise
            if upper is not None and slicer.timed_out():
                continue
            blocks = "one block" if upper is not None else f"the blocks from {position} to the end"
            raise SweepFailed(
                f"verify: checking `where` ({spec.where}) on {blocks} of {spec.table} takes longer than statement_timeout "
                f"({format_duration(statement_timeout)}), so the table cannot be read in statements that short. Make "
                f"`where` in {spec.source} cheaper to evaluate, or verify with a longer statement_timeout.") from exc
        if upper is None:
            break
        slicer.took(clock() - started)
        position = upper
    if verify_scans.heap_extent(conn, table)[0] != node:  # rewritten after the last look at the size
        conn.rollback()
        return None
    conn.commit()
    if candidates:
        set_local(conn, statement_timeout=statement_timeout)
        found.keys = [decode(k) for k, _ in _first_keys(conn, first_sql, candidates, sample)]
        conn.commit()
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
