"""Never make live writers wait behind a batch: rows the application holds are skipped, recorded, revisited.

A batch that meets a row the application has locked must not sit on the row locks it already
took while it waits for that one: every live write to one of *those* rows would wait too (issue
10: up to 1.2 s behind a 2 s ``lock_timeout``). So:

- **Fast path** (a plain ``set`` that needs no lock statement, see ``rowfill.engine.lockfirst``): the
  batch's single UPDATE runs with ``lock_timeout`` = ``SHORT_LOCK_WAIT``. Without contention it
  costs nothing. When it meets a held row it gives up after that wait, the batch rolls back (the
  locks it took go with it) and the same batch runs again at once on the slow path.
- **Slow path** (every batch of writers that lock first anyway — ``set`` reading other
  relations, ``sql``, ``undo`` — and a plain ``set`` or transform batch after a lock timeout; a
  transform batch's first statement takes all its row locks, so it starts on the fast path):
  ``SELECT ... FOR NO KEY UPDATE SKIP LOCKED`` in key order takes the batch's rows that match
  ``where`` without waiting for any. The rows it could not take are the *skipped* keys; the
  batch is written as the runs of keys between them (``Runs``), each with the writer's own
  range write, so exactly the rows obtained are written, in the same transaction. The skipped
  keys go into ``rowfill.skipped_rows`` in the transaction that advances the checkpoint, so a
  crash never loses one. Every write still runs under ``SHORT_LOCK_WAIT``.
- **Revisits**: the chunk comes back to its skipped keys between batches and after its walk,
  with backoff (``REVISIT_FIRST`` doubling to ``REVISIT_MAX``), writes those it can lock now
  (each as the range holding just that key) and deletes them from ``rowfill.skipped_rows``.
  A chunk is not done while it has skipped keys. A key still held after ``locked_rows_wait``
  (counted from when this attempt first met it) fails the chunk (``RowsLockedTooLong``),
  naming keys; a retry revisits them again.

``SKIP LOCKED`` and lock waits: PostgreSQL docs, SELECT, "The Locking Clause"; ``lock_timeout``:
19.11 "Client Connection Defaults". Measured with ``bench/lock_storm.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from rowfill.errors import RowfillError
from rowfill.spec.durations import format_duration
from rowfill.sql import rowlocks as lock_statements
from rowfill.sql.keys import decode, format_value
from rowfill.sql.session import set_local
from rowfill.store import skipped as skipped_store
from rowfill.store.catalog import SCHEMA

# How long a batch's write may wait for one row lock before the batch gives up its own locks and
# goes around it: the longest a live writer waits behind us, beyond the batch's own running time.
# 20 ms is several times a point update's lock hold on a healthy primary and well under issue 10's
# 100 ms target (bench/lock_storm.py); shorter would send batches to the slow path on noise.
SHORT_LOCK_WAIT = 0.020

REVISIT_FIRST = 0.05  # seconds before the first revisit of skipped keys; doubles while none comes free
REVISIT_MAX = 5.0  # seconds: the longest gap between revisits, so a released row is written soon after
REVISIT_KEYS = 1_000  # skipped keys looked at per revisit transaction (each is written as its own range)
SAMPLE_KEYS = 10  # keys named in the error when locked_rows_wait runs out




class RowsLockedTooLong(RowfillError):
    """Rows of the chunk stayed locked by other sessions for longer than ``locked_rows_wait``."""


def short_lock_wait(conn: Connection) -> None:
    """Inside a batch transaction: from here on, wait at most ``SHORT_LOCK_WAIT`` for any lock."""
    set_local(conn, lock_timeout=SHORT_LOCK_WAIT)


def batch_lock_sql(writer, has_lo: bool) -> str:
    """The batch's skip-locked statement as driver SQL (``rowfill.sql.rowlocks.batch_lock``), built once
    per ``has_lo`` and cached by ``writer.statement``: returns (rows locked, skipped keys as JSON)."""
    return writer.statement(("skip-locked", has_lo), lambda: writer.driver(
        lock_statements.batch_lock(writer.key, writer.spec.table.sql, writer.where_sql(), has_lo)))


def revisit_lock_sql(writer) -> str:
    """The revisit's skip-locked statement as driver SQL (``rowfill.sql.rowlocks.revisit_lock``), built
    once and cached by ``writer.statement``: returns (obtained, still held) as JSON."""
    return writer.statement(("revisit", ), lambda: writer.driver(
        lock_statements.revisit_lock(writer.key, writer.spec.table.sql, writer.where_sql())))


@dataclass(frozen=True)
class Run:
    """Keys ``(lo, hi]`` of a batch, none of them skipped; ``first`` is its first key (for ``:first``)."""

    lo: Any
    hi: Any
    first: Any


def runs(lo, first, hi, skipped: list) -> list[Run]:
    """The ranges of a batch ``(lo, hi]`` (first key ``first``) between its skipped keys.

    ``skipped``: ``[key, key before it, key after it]`` per skipped key, in key order (before/after
    within the batch, None where there is none). Two skipped keys in a row leave no range between.
    """
    out, start, start_first = [], lo, first
    for s, before, after in skipped:
        if before is not None and before != start:
            out.append(Run(start, before, start_first))
        start, start_first = s, after
    if start != hi and start_first is not None:
        out.append(Run(start, hi, start_first))
    return out


def write_runs(conn: Connection, writer, pieces: list[Run]) -> int:
    """Write each run with the writer's own range write; the rows are locked already, so its lock statement is skipped."""
    written = 0
    writer.rows_locked = True
    try:
        for piece in pieces:
            writer.batch_first = piece.first
            written += writer.apply(conn, piece.lo, piece.hi)
    finally:
        writer.rows_locked = False
    return written


def batch_count_sql(writer, has_lo: bool) -> str:
    """Lock the batch's rows that match ``where`` without waiting; return (rows locked, rows matching).

    The common case, nobody holding a row of the batch, costs this one statement: the lock plus
    a count of the same range in the same snapshot. Only when the counts differ does
    ``batch_lock_sql`` find which keys were skipped (locking again what this transaction holds
    already costs no wait).
    """
    return writer.statement(("skip-locked-count", has_lo), lambda: writer.driver(
        lock_statements.batch_count(writer.key, writer.spec.table.sql, writer.where_sql(), has_lo)))


def lock_batch(conn: Connection, writer, lo, hi) -> tuple[int, list]:
    """The slow path's lock: (rows locked, skipped ``[key, before, after]`` as decoded key values)."""
    params = writer.key.range_params(lo, hi)
    locked, matching = conn.exec_driver_sql(batch_count_sql(writer, lo is not None), params).one()
    if locked >= matching:
        return locked, []
    locked, skipped = conn.exec_driver_sql(batch_lock_sql(writer, lo is not None), params).one()
    return locked, _values(skipped)


def _values(raw: str | None) -> list:
    """A JSON array from the database as rowfill.sql.keys reads key values (exact digits for numeric keys)."""
    return decode(raw) if raw else []


def _json(v) -> str:
    return json.dumps(v)


def record_skipped(conn: Connection, backfill: str, chunk_no: int, keys: list) -> None:
    """Inside the batch transaction (with the checkpoint advance): remember keys to come back to
    (``rowfill.store.skipped.record``)."""
    skipped_store.record(conn, backfill, chunk_no, keys)


def pending(conn: Connection, backfill: str, chunk_no: int, limit: int | None = None) -> list:
    """Skipped keys of a chunk still to write (key values as rowfill.sql.keys reads them; ``rowfill.store.skipped``)."""
    return skipped_store.pending(conn, backfill, chunk_no, limit)


def forget(conn: Connection, backfill: str, chunk_no: int, keys: list) -> None:
    """Delete keys from ``rowfill.skipped_rows``, in the caller's transaction; no-op for none.

    :param conn: a connection inside the batch transaction.
    :param backfill: the backfill's name. :param chunk_no: its chunk.
    :param keys: key values as ``rowfill.sql.keys`` decodes them (a list per composite key).
    """
    skipped_store.forget(conn, backfill, chunk_no, keys)


def revisit(conn: Connection, writer, backfill: str, chunk_no: int, keys: list) -> tuple[int, list, list]:
    """Inside a batch transaction: write the listed skipped keys whose rows can be locked now.

    Returns (rows written, keys done, keys still held). Keys done (written, gone, or no longer
    matching ``where``) are deleted from ``rowfill.skipped_rows``; each obtained key is written as
    the range from the table's key just below it up to it, which holds that key alone.
    """
    writer.prepare(conn)
    obtained, held = conn.exec_driver_sql(revisit_lock_sql(writer), {"keys": json.dumps(keys)}).one()
    obtained, held = _values(obtained), _values(held)
    written = write_runs(conn, writer, [Run(below, k, k) for k, below in obtained])
    still = {_json(k) for k in held}
    done = [k for k in keys if _json(k) not in still]
    forget(conn, backfill, chunk_no, done)
    return written, done, held


@dataclass
class SkippedKeys:
    """A chunk's skipped keys as the runner sees them: when each was first met, when to look again.

    ``clock`` is monotonic seconds; ``wait`` is the spec's ``locked_rows_wait``.
    """

    wait: float
    clock: Any = time.monotonic
    first_met: dict = field(default_factory=dict)  # key JSON -> when this attempt first met it
    next_at: float = 0.0
    gap: float = REVISIT_FIRST

    def met(self, keys: list) -> None:
        """Note keys found locked: the first sighting starts each key's ``locked_rows_wait`` clock.

        Also schedules the first revisit ``gap`` seconds on if none is scheduled.
        :param keys: key values as decoded from the database; already known keys keep their first time.
        """
        now = self.clock()
        for k in keys:
            self.first_met.setdefault(_json(k), now)
        if keys and not self.next_at:
            self.next_at = now + self.gap

    @property
    def count(self) -> int:
        """Keys of this chunk still waiting for their rows to come free."""
        return len(self.first_met)

    def due(self) -> bool:
        """True when there are skipped keys and the next revisit time (monotonic seconds) has come."""
        return bool(self.first_met) and self.clock() >= self.next_at

    def seconds_to_next(self) -> float:
        """Seconds until the next revisit is due (0.0 if it is due now); the runner sleeps no longer."""
        return max(self.next_at - self.clock(), 0.0)

    def revisited(self, done: list, held: list) -> None:
        """After a revisit: forget keys done; back off while nothing came free, start over when something did."""
        for k in done:
            self.first_met.pop(_json(k), None)
        self.met(held)  # keys met again first in this attempt (e.g. loaded at start) start their clock
        self.gap = REVISIT_FIRST if done else min(self.gap * 2, REVISIT_MAX)
        self.next_at = self.clock() + self.gap if self.first_met else 0.0

    def clear(self) -> None:
        """Forget all keys and reset the revisit back-off to ``REVISIT_FIRST`` (0.05 s), for a new attempt."""
        self.first_met.clear()
        self.gap, self.next_at = REVISIT_FIRST, 0.0

    def overdue(self) -> list:
        """Keys held longer than ``wait`` since first met (JSON texts, key order not guaranteed)."""
        now = self.clock()
        return [k for k, since in self.first_met.items() if now - since > self.wait]

    def too_long(self, spec, overdue: list) -> RowsLockedTooLong:
        """The error for keys held past ``locked_rows_wait``: how many, a sample, where they are kept, what to do.

        :param spec: the backfill spec, for its key and source file.
        :param overdue: key JSON texts from ``overdue()``.
        :returns: a RowsLockedTooLong for the caller to raise (it is not raised here).
        """
        sample = ", ".join(format_value(decode(k)) for k in sorted(overdue)[:SAMPLE_KEYS])
        more = f" and {len(overdue) - SAMPLE_KEYS:,} more" if len(overdue) > SAMPLE_KEYS else ""
        return RowsLockedTooLong(
            f"{len(overdue):,} rows stayed locked by other sessions for longer than locked_rows_wait "
            f"({format_duration(self.wait)}): {spec.key} {sample}{more}. Everything else in the chunk is written and "
            f"these keys are kept in {SCHEMA}.skipped_rows; a retry of the chunk writes them once they are free. "
            f"Find who holds them (pg_locks, pg_stat_activity), or raise `locked_rows_wait` in {spec.source}")
