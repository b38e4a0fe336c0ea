"""Checks of a spec against the live database, run when a backfill starts (never at DAG parse time).

A missing table or column, or a key that chunks cannot walk, is reported as a spec error
naming the field, before any row is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from rowfill.engine.transform import check_callable_spec
from rowfill.engine.writers import SqlWriter
from rowfill.errors import SpecError
from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql import statements
from rowfill.sql.keys import Key, column_types
from rowfill.sql.session import set_local
from rowfill.sql.sqlnames import clause, quote
from rowfill.sql.sqltext import spec_driver, spec_sql
from rowfill.store import catalog



@dataclass(frozen=True)
class Target:
    """What the database told us about the spec's table."""

    key_type: str
    columns: frozenset[str]
    key: Key  # the key with its column types
    types: dict[str, str]  # column -> SQL type


def check_target(conn: Connection, spec: Spec) -> Target:
    """At planning: the table exists, the key is usable (NOT NULL, unique, walkable in order by a btree
    index), the columns the spec writes exist, and every SQL fragment parses (EXPLAINed, never run).
    Returns what was found; raises SpecError naming the spec field at fault.
    """
    if not catalog.exists(conn, spec.table.sql):
        raise SpecError(spec.source, "table", f"table {spec.table} does not exist in the target database (connection {spec.connection!r})")
    described = column_types(conn, spec.table.sql)
    types = {name: typ for name, (typ, _) in described.items()}
    not_null = {name for name, (_, nn) in described.items() if nn}
    key = check_key(conn, spec, types, not_null)
    for col in spec.set:
        if col not in types:
            raise SpecError(spec.source, "set", f"column {col!r} does not exist in {spec.table}; add it first (ALTER TABLE ... ADD COLUMN) or fix the name")
    for col in spec.returns:
        if col not in types:
            raise SpecError(spec.source, "returns", f"column {col!r} does not exist in {spec.table}; add it first (ALTER TABLE ... ADD COLUMN) or fix the name")
    if spec.sql and not key.integer and (user_sql := spec_sql(spec).sql) is not None and ({"lo", "hi"} & user_sql.binds):
        raise SpecError(
            spec.source, "sql",
            f"the key {spec.key} is {', '.join(key.types)}, so a batch has no integer :lo/:hi (the first batch has no key "
            "below it). Use the batch's first and last key instead: "
            + ("WHERE id BETWEEN :first AND :last" if not key.composite else "see the README, 'Keys'"),
        )
    _check_sql_compiles(conn, spec, key)
    if spec.mode in ("transform", "sink"):
        check_callable_spec(conn, spec, key)
    return Target(key_type=key.types[0], columns=frozenset(types), key=key, types=types)


def check_key(conn: Connection, spec: Spec, types: dict[str, str], not_null: set[str], table_sql: str | None = None) -> Key:
    """The key exists, is NOT NULL, is unique, and a btree index can walk it in order (EXPLAIN proves it).

    :param conn: a connection. :param spec: the spec. :param types: column -> SQL type of the table.
    :param not_null: the NOT NULL columns. :param table_sql: the table as SQL (default: the spec's).
    :returns: the Key with its column types.
    :raises SpecError: field ``key``, for a missing or nullable column, no btree index the batches can walk
        (with the plan), or no unique index, each with the statement that fixes it.
    """
    table_sql = table_sql or spec.table.sql
    columns = spec.key_columns
    for col in columns:
        if col not in types:
            raise SpecError(spec.source, "key", f"column {col!r} does not exist in {spec.table}; columns are: {', '.join(sorted(types))}")
    for col in columns:
        if col not in not_null:
            raise SpecError(
                spec.source, "key",
                f"column {col!r} allows NULL; rows with a NULL key would never be visited. Use a NOT NULL "
                f"key such as the primary key, or ALTER TABLE {table_sql} ALTER COLUMN {quote(col)} SET NOT NULL",
            )
    key = Key(columns, tuple(types[c] for c in columns))
    walkable, plan = _index_walks_key(conn, key, table_sql)
    if not walkable:
        cols = ", ".join(quote(c) if c != c.lower() or not c.isidentifier() else c for c in columns)
        what = f"column {columns[0]!r}" if len(columns) == 1 else f"key {spec.key}"
        raise SpecError(
            spec.source, "key",
            f"{what} has no usable btree index on {spec.table}; every batch would scan and sort the whole table. "
            f"Create one first: CREATE INDEX CONCURRENTLY ON {table_sql} ({cols}). "
            f"This is how PostgreSQL would find one batch now:\n{plan}",
        )
    if not pg_catalog.has_unique_index(conn, table_sql, list(key.columns)):
        if len(columns) == 1:
            problem = (f"column {columns[0]!r} is not unique in {spec.table} (no unique index on it alone); batches end at a key "
                       "value, so duplicates would make batches unbounded and counts wrong. Pick a unique key such as the primary key")
        else:
            problem = (f"key {spec.key} is not unique in {spec.table} (no unique index on these columns or some of them); "
                       "batches end at a key value, so duplicates would make batches unbounded and counts wrong. Add the "
                       "columns that make rows unique, or create a unique index: CREATE UNIQUE INDEX CONCURRENTLY ON "
                       f"{table_sql} ({', '.join(quote(c) for c in columns)})")
        raise SpecError(spec.source, "key", problem)
    return key


def _index_walks_key(conn: Connection, key: Key, table_sql: str) -> tuple[bool, str]:
    """Does an index give the keys in order? Asked of the planner itself, with scans and sorts discouraged.

    A catalog check would miss an index PostgreSQL cannot use for this walk (partial, another
    collation, an expression, columns in another order); the planner does not. Returns the plan
    as it would run with the normal settings, for the error message.
    """
    probe = statements.key_order_probe(table_sql, key)
    with conn.begin_nested():
        set_local(conn, enable_seqscan="off", enable_sort="off", enable_bitmapscan="off")
        plan = conn.execute(clause(statements.explain(probe, "FORMAT JSON"))).scalar_one()
        set_local(conn, enable_seqscan="on", enable_sort="on", enable_bitmapscan="on")
        shown = "\n".join(r[0] for r in conn.execute(clause(statements.explain(probe))))
    if isinstance(plan, str):
        plan = json.loads(plan)
    nodes = []

    def walk(node):
        """Collect the node types of an EXPLAIN (FORMAT JSON) plan tree, depth first, into ``nodes``.

        :param node: one plan node (a dict with ``Node Type`` and optional ``Plans``).
        """
        nodes.append(node.get("Node Type"))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    ok = any(n in ("Index Scan", "Index Only Scan") for n in nodes) and not any(n in ("Sort", "Seq Scan", "Incremental Sort") for n in nodes)
    return ok, "  " + statements.explain(probe) + "\n" + "\n".join("    " + line for line in shown.splitlines())


def _check_sql_compiles(conn: Connection, spec: Spec, key: Key) -> None:
    """EXPLAIN (never execute) each user SQL fragment, so a typo is blamed on its field, not on batch 1.

    The probes are composed exactly as the batches compose the fields (``rowfill.sql.sqltext``).
    """
    table = spec.table.sql
    probes: list[tuple[str, str, dict[str, Any]]] = []  # (field, driver SQL of its EXPLAIN, bind values)
    if spec.where:
        probes.append(("where", spec_driver(spec, statements.explain(statements.where_probe(table))), {}))
    if spec.set:
        probes.append(("set", spec_driver(spec, statements.explain(statements.set_probe(table))), {}))
    if spec.sql:
        writer = SqlWriter(spec)
        writer.key = key
        writer.build(conn)
        params: dict[str, Any] = {name: None for name in writer.binds.names}
        params.update({"lo": 0, "hi": 0} if key.integer else {"lo": None, "hi": None})
        probes.append(("sql", statements.explain(writer.write), params))
    for field, sql, params in probes:
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(sql, params)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise SpecError(spec.source, field, f"the database rejects this SQL: {first}") from exc
