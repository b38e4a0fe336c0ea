"""Checks of a spec against the live database, run when a backfill starts (never at DAG parse time).

A missing table or column, or a key that chunks cannot walk, is reported as a spec error
naming the field, before any row is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from rowfill.errors import SpecError
from rowfill.spec import Spec

INTEGER_TYPES = {"smallint", "integer", "bigint"}


@dataclass(frozen=True)
class Target:
    """What the database told us about the spec's table."""

    key_type: str
    columns: frozenset[str]


def check_target(conn: Connection, spec: Spec) -> Target:
    regclass = conn.execute(text("SELECT to_regclass(:t)"), {"t": spec.table.sql}).scalar()
    if regclass is None:
        raise SpecError(spec.source, "table", f"table {spec.table} does not exist in the target database (connection {spec.connection!r})")
    rows = conn.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"t": spec.table.sql},
    ).all()
    types = {name: typ for name, typ, _ in rows}
    not_null = {name for name, _, nn in rows if nn}
    if spec.key not in types:
        raise SpecError(spec.source, "key", f"column {spec.key!r} does not exist in {spec.table}; columns are: {', '.join(sorted(types))}")
    if types[spec.key] not in INTEGER_TYPES:
        raise SpecError(
            spec.source, "key",
            f"column {spec.key!r} is {types[spec.key]}, but chunks walk an integer key (smallint, integer, bigint); "
            "pick the table's integer primary key",
        )
    if spec.key not in not_null:
        raise SpecError(
            spec.source, "key",
            f"column {spec.key!r} allows NULL; rows with a NULL key would never be visited. Use a NOT NULL "
            f"key such as the primary key, or ALTER TABLE {spec.table.sql} ALTER COLUMN {spec.key} SET NOT NULL",
        )
    for col in spec.set:
        if col not in types:
            raise SpecError(spec.source, "set", f"column {col!r} does not exist in {spec.table}; add it first (ALTER TABLE ... ADD COLUMN) or fix the name")
    indexed = conn.execute(
        text(
            "SELECT i.indisunique AND i.indnkeyatts = 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam AND am.amname = 'btree' "
            "WHERE i.indrelid = to_regclass(:t) AND a.attname = :k AND i.indisvalid AND i.indpred IS NULL "
            "ORDER BY 1 DESC LIMIT 1"
        ),
        {"t": spec.table.sql, "k": spec.key},
    ).first()
    if indexed is None:
        raise SpecError(
            spec.source, "key",
            f"column {spec.key!r} has no usable btree index on {spec.table}; every batch would scan the whole table. "
            f"Create one first: CREATE INDEX CONCURRENTLY ON {spec.table.sql} ({spec.key})",
        )
    if not indexed[0]:
        raise SpecError(
            spec.source, "key",
            f"column {spec.key!r} is not unique in {spec.table} (no unique index on it alone); batches end at a key "
            "value, so duplicates would make batches unbounded and counts wrong. Pick a unique key such as the primary key",
        )
    _check_sql_compiles(conn, spec)
    return Target(key_type=types[spec.key], columns=frozenset(types))


def _check_sql_compiles(conn: Connection, spec: Spec) -> None:
    """EXPLAIN (never execute) each user SQL fragment, so a typo is blamed on its field, not on batch 1."""
    from rowfill.sqlnames import quote

    probes = []
    if spec.where:
        probes.append(("where", f"EXPLAIN SELECT 1 FROM {spec.table.sql} WHERE ({spec.where})", {}))
    if spec.set:
        assignments = ", ".join(f"{quote(c)} = {e}" for c, e in spec.set.items())
        probes.append(("set", f"EXPLAIN UPDATE {spec.table.sql} SET {assignments} WHERE false", {}))
    if spec.sql:
        probes.append(("sql", f"EXPLAIN {spec.sql}", {"lo": 0, "hi": 0}))
    for field, sql, params in probes:
        try:
            with conn.begin_nested():
                conn.execute(text(sql), params)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise SpecError(spec.source, field, f"the database rejects this SQL: {first}") from exc
