"""Reads of the user's table that planning makes outside the keyset walk (``rowfill.sql.keys.Boundary``):
the key's ends, a row count, and a block sample's quantiles.

Names come in as SQL text already quoted (``rowfill.sql.sqlnames.quote``, ``TableName.sql``) and
go through ``sqlnames.clause``, so a ``:`` inside a quoted name is never read as a bind; values
are bound.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from rowfill.sql.sqlnames import clause


def _after(key_sql: str, after: Any) -> tuple[str, dict]:
    return (f"WHERE {key_sql} > :after", {"after": after}) if after is not None else ("", {})


def lowest_key(conn: Connection, key_sql: str, table_sql: str, after: Any = None) -> Any:
    """The lowest value of the column ``key_sql`` above ``after`` (None: the lowest of all); None if no row."""
    cond, params = _after(key_sql, after)
    return conn.execute(clause(f"SELECT min({key_sql}) FROM {table_sql} {cond}"), params).scalar()


def highest_key(conn: Connection, key_sql: str, table_sql: str) -> Any:
    """The highest value of the column ``key_sql``; None if the table is empty."""
    return conn.execute(clause(f"SELECT max({key_sql}) FROM {table_sql}")).scalar()


def row_count(conn: Connection, table_sql: str) -> int:
    """``count(*)`` of the whole table: a full scan, for tables the planner has no estimate of."""
    return conn.execute(clause(f"SELECT count(*) FROM {table_sql}")).scalar_one()


def sampled_quantiles(conn: Connection, key_sql: str, table_sql: str, percent: float, fractions: list[float],
                      after: Any = None) -> tuple[int, list]:
    """``(rows sampled, key value at each fraction)`` from a ``TABLESAMPLE SYSTEM (percent)`` block
    sample of the rows with key above ``after`` (PostgreSQL docs, "SELECT", TABLESAMPLE).

    ``percent``: 0..100 of the table's pages; ``REPEATABLE (42)``, so a rerun on unchanged data
    plans the same cuts.
    """
    cond, params = _after(key_sql, after)
    sampled, cuts = conn.execute(
        clause(f"SELECT count(*), percentile_disc(CAST(:fractions AS float8[])) WITHIN GROUP (ORDER BY {key_sql}) "
               f"FROM {table_sql} TABLESAMPLE SYSTEM (:p) REPEATABLE (42) {cond}"),
        {"p": percent, "fractions": fractions, **params},
    ).one()
    return sampled, cuts


def first_and_last(conn: Connection, key, table_sql: str) -> tuple[str | None, str | None]:
    """The first and last key of ``table_sql`` in key order, as JSON text (``rowfill.sql.keys.decode``
    reads them); ``(None, None)`` if the table is empty. ``key``: a ``rowfill.sql.keys.Key``."""
    js, order, desc = key.json_sql(), key.order_by(), key.order_by(desc=True)
    first, last = conn.execute(clause(f"SELECT (SELECT {js} FROM {table_sql} ORDER BY {order} LIMIT 1), "
                                      f"(SELECT {js} FROM {table_sql} ORDER BY {desc} LIMIT 1)")).one()
    return first, last
