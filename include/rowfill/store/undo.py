"""Statements over ``rowfill.undo_rows``: the previous and written values of every row an ``undo: true``
backfill changed, one shared table created by migration 0002 (``rowfill.store.migrations``).

A record is (backfill, seq, key, old, new): ``key``, ``old`` and ``new`` are ``jsonb`` objects
from column name to the value's text form (JSON null for SQL NULL). Text is the one form every
PostgreSQL type reads back exactly (what ``pg_dump`` relies on; PostgreSQL docs, 8 "Data Types"),
so a rollback casts it back to the column's type, whatever the type: arrays, json, geometry, ranges,
domains. ``seq`` is the order records were written in; the rollback walks it.

The pieces here are SQL text for the engine's recording and restoring statements
(``rowfill.engine.undo``): identifiers quoted, names of columns as SQL string literals, values bound.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.sql.sqlnames import TableName
from rowfill.store.catalog import SCHEMA

UNDO_ROWS = TableName(SCHEMA, "undo_rows")
SEQ = "seq"  # the column the rollback walks (identity, primary key)
_PAIRS_PER_CALL = 50  # jsonb_build_object takes at most 100 arguments (FUNC_MAX_ARGS): 50 name/value pairs


def string_literal(value: str) -> str:
    """``value`` as an SQL string literal (quotes doubled; standard_conforming_strings, on by default since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def as_object(pairs: list[tuple[str, str]]) -> str:
    """SQL building a jsonb object of column name -> ``CAST(<expression> AS text)``.

    :param pairs: (column name, SQL expression) per column, in order.
    :returns: ``jsonb_build_object(...)``, several joined with ``||`` past 50 columns; ``'{}'::jsonb`` for none.
    """
    if not pairs:
        return "CAST('{}' AS jsonb)"
    calls = []
    for i in range(0, len(pairs), _PAIRS_PER_CALL):
        part = pairs[i:i + _PAIRS_PER_CALL]
        calls.append("jsonb_build_object(" + ", ".join(f"{string_literal(n)}, CAST({e} AS text)" for n, e in part) + ")")
    return " || ".join(calls)


def record_sql(backfill: str, source: str, key: list[tuple[str, str]], old: list[tuple[str, str]],
               new: list[tuple[str, str]]) -> str:
    """The INSERT of one batch's records (a data-modifying CTE body): from ``source`` (a CTE name).

    A key recorded before keeps its first previous value; its written value is refreshed.
    :param backfill: the backfill's name. :param key: / :param old: / :param new: (column, expression over ``source``).
    :returns: SQL text, ``INSERT ... SELECT ... FROM source ON CONFLICT ...``.
    """
    return (f"INSERT INTO {UNDO_ROWS.sql} (backfill, key, old, new) "
            f"SELECT {string_literal(backfill)}, {as_object(key)}, {as_object(old)}, {as_object(new)} FROM {source} "
            "ON CONFLICT (backfill, key) DO UPDATE SET new = EXCLUDED.new")


def take_sql(backfill: str, range_text: str) -> str:
    """DELETE one batch of the backfill's records (``range_text`` over ``seq``), returning key, old and new."""
    return (f"DELETE FROM {UNDO_ROWS.sql} WHERE backfill = {string_literal(backfill)} AND {range_text} "
            "RETURNING key, old, new")


def value(record: str, part: str, column: str, typ: str) -> str:
    """SQL for one recorded value cast back to its column's type: ``CAST(d.old ->> 'col' AS type)``."""
    return f"CAST({record}.{part} ->> {string_literal(column)} AS {typ})"


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
