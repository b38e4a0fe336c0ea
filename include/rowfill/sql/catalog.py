"""Statements over PostgreSQL's catalog about the user's tables: what a name resolves to, its
statistics, indexes, column kinds, constraints, and what a view's rule depends on.

Each function runs one statement and returns plain values; the rules that use them live in the
engine (``rowfill.engine.resolve``, ``schema_check``, ``estimate``, ``blame``, ``lockfirst``,
``sqltarget``, ``transform``). Relation names are passed as SQL text (``TableName.sql``) and
bound, then resolved by ``to_regclass`` with the connection's ``search_path`` (PostgreSQL docs,
9.27 "System Information Functions"), so a name is never pasted into a statement. Catalog
tables are PostgreSQL docs, chapter 53 "System Catalogs".
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Connection

_LOOKUP = text(
    "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = to_regclass(:t)"
)
_STATS = text("SELECT reltuples, relpages FROM pg_class WHERE oid = to_regclass(:t)")
_SEARCH_PATH = text("SELECT current_setting('search_path')")
_PING = text("SELECT 1")
_USER_ARRAYS = text("SELECT t.typelem, t.oid FROM pg_type t WHERE t.typcategory = 'A' AND t.typelem >= :first")
_OURS = text(
    "SELECT c.oid IS NOT NULL AND (c.oid = CAST(:o AS oid) OR CAST(:o AS regclass) IN "
    "(SELECT relid FROM pg_partition_ancestors(c.oid))) "
    "FROM unnest(CAST(:s AS text[]), CAST(:r AS text[])) WITH ORDINALITY AS x(s, r, i) "
    "LEFT JOIN pg_namespace n ON n.nspname = x.s LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = x.r "
    "ORDER BY x.i"
)
_UNIQUE = text(
    "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass(:t) AND i.indisunique AND i.indisvalid "
    "AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts > 0 AND NOT EXISTS ("
    "  SELECT 1 FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) AS k(attnum) "
    "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    "  WHERE NOT (a.attname = ANY(CAST(:cols AS text[])))))"
)
_COLUMN_KINDS = text(
    "SELECT a.attname, CASE WHEN b.typcategory = 'A' THEN 'array' "
    "WHEN b.typnamespace = CAST('pg_catalog' AS regnamespace) AND b.typname IN ('json', 'jsonb') "
    "THEN CAST(b.typname AS text) ELSE '' END, quote_ident(n.nspname) || '.' || quote_ident(t.typname) "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace "
    "JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END "
    "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped"
)
_SAME_RELATION = text("SELECT to_regclass(:t) = to_regclass(:ours)")
_CONSTRAINT_COLUMNS = text(
    "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
    "WHERE c.conrelid = to_regclass(:t) AND c.conname = :n "
    "UNION SELECT a.attname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
    "WHERE i.indrelid = to_regclass(:t) AND x.relname = :n"
)
# What a view's rewrite rule depends on, besides the view and ``:tbl`` itself, as sentences
# ("read s.t", "call the VOLATILE function f(int)", "use the operator ..., which is STABLE").
_DEPENDENCIES = text("""
WITH deps AS (
    SELECT d.refclassid, d.refobjid FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = CAST('pg_rewrite' AS regclass) AND r.ev_class = CAST(:view AS regclass)
)
SELECT 'read ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM deps JOIN pg_class c ON deps.refclassid = CAST('pg_class' AS regclass) AND c.oid = deps.refobjid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid <> CAST(:view AS regclass) AND c.oid <> CAST(:tbl AS regclass)
UNION
SELECT 'call the ' || CASE p.provolatile WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END || ' function '
       || CAST(CAST(p.oid AS regprocedure) AS text)
FROM deps JOIN pg_proc p ON deps.refclassid = CAST('pg_proc' AS regclass) AND p.oid = deps.refobjid
WHERE p.provolatile <> 'i'
UNION
SELECT 'use the operator ' || CAST(CAST(o.oid AS regoperator) AS text) || ', which is '
       || CASE p.provolatile WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END
FROM deps JOIN pg_operator o ON deps.refclassid = CAST('pg_operator' AS regclass) AND o.oid = deps.refobjid
JOIN pg_proc p ON p.oid = o.oprcode
WHERE p.provolatile <> 'i'
ORDER BY 1
""")


class CatalogRelation(NamedTuple):
    """A relation as ``pg_class`` has it: OID, schema, name and ``relkind`` (``r`` table, ``p`` partitioned, ...)."""

    oid: int
    schema: str
    name: str
    relkind: str


def ping(conn: Connection) -> None:
    """One round trip (``SELECT 1``); raises ``sqlalchemy.exc.DBAPIError`` if the server does not answer."""
    conn.execute(_PING)


def search_path(conn: Connection) -> str:
    """The connection's ``search_path`` as PostgreSQL reports it, e.g. ``"$user", public``."""
    return conn.execute(_SEARCH_PATH).scalar_one()


def relation(conn: Connection, table_sql: str) -> CatalogRelation | None:
    """What ``table_sql`` (a relation name as SQL text) names on this connection now; None if nothing."""
    row = conn.execute(_LOOKUP, {"t": table_sql}).first()
    return None if row is None else CatalogRelation(*row)


def size_estimate(conn: Connection, table_sql: str) -> tuple[float | None, int] | None:
    """``(reltuples, relpages)`` from the planner's statistics; None if the relation does not exist.

    ``reltuples`` is -1 (PostgreSQL 14+) for a table never vacuumed or analyzed (PostgreSQL docs, 53.11 "pg_class").
    """
    row = conn.execute(_STATS, {"t": table_sql}).first()
    return None if row is None else (row[0], row[1])


def user_array_types(conn: Connection, first_user_oid: int) -> list[tuple[int, int]]:
    """``(element OID, array OID)`` of every array type whose element OID is ``first_user_oid`` or above."""
    return [tuple(r) for r in conn.execute(_USER_ARRAYS, {"first": first_user_oid}).all()]


def same_or_partition(conn: Connection, names: list[tuple[str, str]], oid: int) -> list[bool]:
    """For each ``(schema, relation name)``: is it the relation ``oid`` or one of its partitions? (In order.)"""
    if not names:
        return []
    rows = conn.execute(_OURS, {"o": oid, "s": [s for s, _ in names], "r": [r for _, r in names]}).scalars()
    return [bool(v) for v in rows]


def has_unique_index(conn: Connection, table_sql: str, columns: list[str]) -> bool:
    """A valid, non-partial, non-expression unique index on ``columns`` or a subset of them exists."""
    return bool(conn.execute(_UNIQUE, {"t": table_sql, "cols": list(columns)}).scalar())


def column_kinds(conn: Connection, table_sql: str) -> list[tuple[str, str, str]]:
    """``(column, kind, type)`` per column: kind ``array``, ``json``, ``jsonb`` or ``''`` (domains read
    as their base type); type the column's own type, schema-qualified and quoted."""
    return [tuple(r) for r in conn.execute(_COLUMN_KINDS, {"t": table_sql}).all()]


def same_relation(conn: Connection, table_sql: str, other_sql: str) -> bool:
    """Whether both names resolve to the same existing relation."""
    return conn.execute(_SAME_RELATION, {"t": table_sql, "ours": other_sql}).scalar() is True


def constraint_columns(conn: Connection, table_sql: str, constraint: str) -> set[str]:
    """The columns of constraint (or index) ``constraint`` on ``table_sql``; empty if there is none."""
    return set(conn.execute(_CONSTRAINT_COLUMNS, {"t": table_sql, "n": constraint}).scalars())


def view_dependencies(conn: Connection, view_sql: str, table_sql: str) -> list[str]:
    """What view ``view_sql``'s rule reads or calls besides ``table_sql`` and itself, as sentences
    (``read s.t``, ``call the VOLATILE function f(integer)``); immutable functions and operators are left out."""
    return list(conn.execute(_DEPENDENCIES, {"view": view_sql, "tbl": table_sql}).scalars())
