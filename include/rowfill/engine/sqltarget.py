"""``sql`` mode: the statement must work on the table the batches walk, as PostgreSQL itself reads it.

Names inside a user's statement are resolved by PostgreSQL, with the connection's search_path,
when the statement runs; rowfill does not rewrite them. So at planning the statement is
EXPLAINed (``EXPLAIN (VERBOSE, FORMAT JSON)``, never executed; PostgreSQL docs, "EXPLAIN") with
bind values spanning the whole table, and the relations its plan writes (ModifyTable nodes and
their target partitions) and reads (every scan) are compared with the resolved table by OID:

- it writes a relation with the table's name in another schema (a stale copy found first on the
  search_path, a hard-coded schema) -> ``sql`` error;
- it neither reads nor writes the table -> ``sql`` error: the batches would walk keys the
  statement never looks at.

Writing another table while reading the walked one (a copy migration) is what ``sql`` is for.
A statement that works only through a function call cannot be seen into and is refused by the
second rule; write the UPDATE/INSERT itself.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from rowfill.engine.resolve import resolve, search_path
from rowfill.engine.writers import SqlWriter
from rowfill.errors import SpecError
from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql import scans
from rowfill.sql import statements
from rowfill.sql.keys import Key, decode


def _relations(plan: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(writes, reads) as (schema, relation name) pairs, from an EXPLAIN (VERBOSE, FORMAT JSON) plan."""
    writes: list[tuple[str, str]] = []
    reads: list[tuple[str, str]] = []

    def walk(node: dict) -> None:
        """Sort one EXPLAIN (VERBOSE, FORMAT JSON) node and its children into ``writes`` and ``reads``.

        ``ModifyTable`` nodes (and their ``Target Tables``) are writes, any other node naming a relation a read
        (PostgreSQL docs, EXPLAIN).
        :param node: one plan node.
        """
        named: tuple[Any, Any] = (node.get("Schema"), node.get("Relation Name"))  # JSON values: text when named
        if node.get("Node Type") == "ModifyTable":
            if named[1]:
                writes.append(named)
            writes.extend((t.get("Schema"), t.get("Relation Name")) for t in node.get("Target Tables", []))
        elif named[1]:
            reads.append(named)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return writes, reads


def _whole_table_params(conn: Connection, writer, key: Key, table_sql: str) -> dict | None:
    """Bind values for one "batch" spanning the whole table: first and last key (None if the table is empty).

    Real key values, not NULLs: a NULL bound folds the statement to "no rows" and PostgreSQL
    then leaves the scans out of the plan.
    """
    first, last = scans.first_and_last(conn, key, table_sql)
    if first is None:
        return None
    first, last = decode(first), decode(last)
    writer.batch_first = first
    lo = first - 1 if key.integer else None  # a Python int: psycopg sends it as numeric below bigint's minimum
    return writer.params(lo, last)


def check_sql_target(conn: Connection, spec: Spec, key: Key) -> None:
    """At planning, ``sql`` mode only: EXPLAIN the statement and refuse it (field ``sql``) if it misses the table.

    ``spec`` has its table resolved (``rowfill.engine.resolve``); ``key`` its key with types.

    :raises SpecError: field ``sql``, when the database rejects the statement, writes another relation of
        the table's name, or neither reads nor writes the table (so the batches would not bound it).
    """
    if spec.mode != "sql":
        return
    relation = resolve(conn, spec)  # the table the spec was resolved to (SpecError if it is gone)
    writer = SqlWriter(spec)
    writer.key = key
    writer.build(conn)
    params = _whole_table_params(conn, writer, key, relation.table.sql)
    empty = params is None
    if empty:
        params = {name: None for name in writer.binds.names}
        params.update({"lo": 0, "hi": 0} if key.integer else {"lo": None, "hi": None})
    try:
        with conn.begin_nested():
            plan = conn.exec_driver_sql(statements.explain(writer.write, "VERBOSE, FORMAT JSON"), params).scalar_one()
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SpecError(spec.source, "sql", f"the database rejects this SQL: {first}") from exc
    if isinstance(plan, str):
        plan = json.loads(plan)
    writes, reads = _relations(plan[0])
    ours_w, ours_r = pg_catalog.same_or_partition(conn, writes, relation.oid), pg_catalog.same_or_partition(conn, reads, relation.oid)
    table = relation.table
    how = "" if spec.table.written_qualified else f" (`{spec.table.meaning}` resolved with search_path {search_path(conn)})"
    stale = sorted({f"{s}.{r}" for (s, r), ours in zip(writes, ours_w) if not ours and r == table.name})
    if stale:
        raise SpecError(
            spec.source, "sql",
            f"the statement writes {', '.join(stale)}, but the backfill's table is {table}{how}: another relation of the "
            f"same name, which the batches never walk. Name the table schema-qualified in the statement ({table.sql}) "
            "or fix `table`.",
        )
    if not empty and not any(ours_w) and not any(ours_r):
        seen = sorted({f"{s}.{r}" for s, r in writes + reads})
        raise SpecError(
            spec.source, "sql",
            f"EXPLAIN shows the statement neither reads nor writes {table}{how}, whose keys the batches walk "
            f"(it touches {', '.join(seen) or 'no table'}). Restrict it to the batch with the key bounds on {table}, "
            "e.g. UPDATE ... WHERE id > :lo AND id <= :hi, or SELECT ... FROM it in a copy.",
        )
