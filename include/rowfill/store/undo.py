"""Statements over ``rowfill.undo_rows``: the previous and written values of every row an ``undo: true``
backfill changed, one shared table created by migration 0002 (``rowfill.store.migrations``).

A record is (backfill, seq, key, old, new): ``key``, ``old`` and ``new`` are ``jsonb`` objects
from column name to the value's text form (JSON null for SQL NULL). Text is the one form every
PostgreSQL type reads back exactly (what ``pg_dump`` relies on; PostgreSQL docs, 8 "Data Types"),
so a rollback casts it back to the column's type, whatever the type: arrays, json, geometry, ranges,
domains. ``seq`` is the order records were written in; the rollback walks it.

The recording and restoring statements, which write the target table and this log together, are
built by ``rowfill.sql.undo``; the reads of the log alone are here.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.sql.sqlnames import TableName
from rowfill.store.catalog import SCHEMA

UNDO_ROWS = TableName(SCHEMA, "undo_rows")
SEQ = "seq"  # the column the rollback walks (identity, primary key)


_BATCH_END = text(f"SELECT min({SEQ}), max({SEQ}), count(*) FROM (SELECT {SEQ} FROM {UNDO_ROWS.sql} "
                  f"WHERE backfill = :b AND {SEQ} > coalesce(CAST(:lo AS bigint), -1) AND {SEQ} <= coalesce(CAST(:hi AS bigint), "
                  f"9223372036854775807) ORDER BY backfill, {SEQ} LIMIT :n) s")
_FIRST_SHAPE = text(f"SELECT ARRAY(SELECT jsonb_object_keys(key) ORDER BY 1), ARRAY(SELECT jsonb_object_keys(old) ORDER BY 1) "
                    f"FROM {UNDO_ROWS.sql} WHERE backfill = :b ORDER BY backfill, {SEQ} LIMIT 1")
_COUNT = text(f"SELECT count(*) FROM {UNDO_ROWS.sql} WHERE backfill = :b")
_ANY = text(f"SELECT EXISTS (SELECT 1 FROM {UNDO_ROWS.sql} WHERE backfill = :b)")


def batch_end(conn: Connection, backfill: str, lo: int | None, hi: int | None, rows: int) -> tuple[int | None, int | None, int]:
    """The next ``rows`` records of ``backfill`` after ``seq`` ``lo`` up to ``hi`` (None: open), over the
    (backfill, seq) index, so other backfills' records are never counted.

    :returns: (first seq, last seq, how many); (None, None, 0) when there are none.
    """
    first, last, count = conn.execute(_BATCH_END, {"b": backfill, "lo": lo, "hi": hi, "n": rows}).one()
    return first, last, count


def recorded_columns(conn: Connection, backfill: str) -> tuple[list[str], list[str]] | None:
    """The key columns and changed columns of the backfill's oldest record, each sorted; None without records.

    Every record of one version of a backfill has the same columns, so the oldest one says whether the
    log holds an earlier version's records (one probe of the (backfill, seq) index).
    """
    row = conn.execute(_FIRST_SHAPE, {"b": backfill}).first()
    return (list(row[0]), list(row[1])) if row else None


def count(conn: Connection, backfill: str) -> int:
    """How many records the backfill's undo log holds."""
    return conn.execute(_COUNT, {"b": backfill}).scalar_one()


def has_records(conn: Connection, backfill: str) -> bool:
    """Whether the backfill recorded anything (one index probe)."""
    return conn.execute(_ANY, {"b": backfill}).scalar_one()
