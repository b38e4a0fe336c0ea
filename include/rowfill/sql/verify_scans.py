"""Reads of the user's table for verify's sweep in heap order (``rowfill.engine.sweep.heap_matching``).

The sweep reads the table in **block ranges**: ``ctid >= '(b1,0)' AND ctid < '(b2,0)'`` is a TID
Range Scan (PostgreSQL 14+; PostgreSQL docs, 9.x "Comparison Operators" on ``tid`` and the
planner's "Tid Range Scan" node), a sequential read of just those heap pages: no index walk, no
random heap fetches, and every row version on those pages is looked at whatever its key. Block
numbers are bound as text cast to ``tid``; the table and key come in already quoted
(``TableName.sql``, ``rowfill.sql.keys.Key``) and the spec's ``where`` arrives as driver SQL
composed by ``rowfill.sql.sqltext`` (`` AND (<where>)``), so statements here are driver SQL
(psycopg ``%(name)s`` binds, ``%`` doubled in names).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from rowfill.sql.sqlnames import clause

TID_RANGE_SCAN_VERSION = 140000  # server_version_num from which `ctid` ranges are a TID Range Scan


def _d(sql: str) -> str:
    # names run through psycopg with parameters: a literal % is written %%
    return sql.replace("%", "%%")


def heap_sweep_possible(conn: Connection, table_sql: str) -> bool:
    """Can the table be swept by block ranges? A plain table (relkind ``r``) without inheritance
    children or partitions (their rows live in other relations, with block numbers of their own),
    on PostgreSQL 14 or later (before that a ``ctid`` range is a full scan per slice)."""
    return bool(conn.execute(clause(
        "SELECT current_setting('server_version_num')::int >= :v AND c.relkind = 'r' AND NOT c.relhassubclass "
        "FROM pg_class c WHERE c.oid = to_regclass(:t)"), {"v": TID_RANGE_SCAN_VERSION, "t": table_sql}).scalar())


def heap_extent(conn: Connection, table_sql: str) -> tuple[int, int]:
    """``(file node, blocks)`` of the table's main fork now: the relation's size in blocks
    (``pg_relation_size`` / ``block_size``) and its ``pg_relation_filenode``, which changes when
    the table is rewritten (VACUUM FULL, CLUSTER, TRUNCATE, some ALTER TABLEs) and with it every row's ``ctid``."""
    node, blocks = conn.execute(clause(
        "SELECT pg_relation_filenode(to_regclass(:t)), "
        "pg_relation_size(to_regclass(:t)) / current_setting('block_size')::bigint"), {"t": table_sql}).one()
    return int(node or 0), int(blocks or 0)


def tid(block: int) -> str:
    """The first tuple address of ``block`` as ``tid`` text: ``'(block,0)'``; ``ctid >= tid(b)`` starts at block ``b``."""
    return f"({int(block)},0)"


def _blocks(has_hi: bool) -> str:
    upper = " AND ctid < CAST(%(b_hi)s AS tid)" if has_hi else ""
    return f"ctid >= CAST(%(b_lo)s AS tid){upper}"


def matching_in_blocks(table_sql: str, key, has_hi: bool, and_where_driver: str) -> tuple[str, str]:
    """Driver SQL over the rows in blocks ``[b_lo, b_hi)`` (``has_hi`` False: from ``b_lo`` to the
    end of the relation, whatever it holds when the statement runs) that match ``where``:
    ``(their count, up to %(sample_n)s of them in key order as (key JSON text, ctid text))``.

    ``b_lo``/``b_hi`` are bound as ``tid(block)``. ``and_where_driver``: `` AND (<where>)`` as
    driver SQL (``rowfill.engine.sweep.where_clause``), or nothing.
    """
    body = f"FROM {_d(table_sql)} WHERE {_blocks(has_hi)}{and_where_driver}"
    return (f"SELECT count(*) {body}",
            f"SELECT {_d(key.json_sql())}, CAST(ctid AS text) {body} ORDER BY {_d(key.order_by())} LIMIT %(sample_n)s")


def first_keys_of(table_sql: str, key, and_where_driver: str) -> str:
    """Driver SQL: the first %(sample_n)s rows in key order, as (key JSON text, ctid text), of the rows at
    the tuple addresses %(tids)s (a ``tid[]`` as text) that still match ``where``: a TID Scan of just those rows."""
    return (f"SELECT {_d(key.json_sql())}, CAST(ctid AS text) FROM {_d(table_sql)} WHERE ctid = ANY(CAST(%(tids)s AS tid[]))"
            f"{and_where_driver} ORDER BY {_d(key.order_by())} LIMIT %(sample_n)s")
