"""The statements a batch runs over the user's table, as templates (in the manner of gh-ost's
``go/sql/builder.go``: one place builds every statement, the callers only run them).

Each function returns a *template* of rowfill's own SQL: the table and key come in already
quoted (``TableName.sql``, ``rowfill.sql.keys.Key``), the batch's bounds are bind parameters
(``:lo``/``:hi``, see ``Key.range_text``), and the spec's checked user SQL is left as slots
(``@where``, ``@sets``) that ``rowfill.sql.sqltext`` fills and turns into driver SQL. So no user
text is ever pasted here, and every value is bound.
"""

from __future__ import annotations

WHERE_SLOT = " AND @where"  # the spec's checked ``where``, in parentheses, filled by rowfill.sql.sqltext


def and_where(has_where: bool) -> str:
    """``" AND @where"`` when the spec has a ``where``, else nothing."""
    return WHERE_SLOT if has_where else ""


def lock_rows(table_sql: str, key, has_lo: bool, has_where: bool) -> str:
    """Lock the batch's rows ``lo < key <= hi`` that match ``where``, in key order, and count them.

    ``FOR NO KEY UPDATE`` is the lock an UPDATE takes anyway; it lets the application insert rows
    referencing ours (PostgreSQL docs, 13.3.2 "Row-Level Locks"). ``has_lo`` False: the range is open below.
    """
    rng = key.range_text(has_lo, True)
    return (f"SELECT count(*) FROM (SELECT 1 FROM {table_sql} WHERE {rng}{and_where(has_where)} "
            f"ORDER BY {key.order_by()} FOR NO KEY UPDATE) AS locked")


def update_rows(table_sql: str, key, has_lo: bool, has_where: bool) -> str:
    """``set`` mode's write: ``UPDATE <table> SET @sets`` over the batch's rows that match ``where``."""
    return f"UPDATE {table_sql} SET @sets WHERE {key.range_text(has_lo, True)}{and_where(has_where)}"


def count_in_range(table_sql: str, key, has_lo: bool, has_hi: bool) -> str:
    """How many rows ``lo < key <= hi`` holds (a side left open when its flag is False)."""
    return f"SELECT count(*) FROM {table_sql} WHERE {key.range_text(has_lo, has_hi)}"


def count_matching_in_ranges(table_sql: str, ranges: list[str]) -> str:
    """How many rows in any of ``ranges`` (conditions from ``Key.range_sql``) match ``where``."""
    return f"SELECT count(*) FROM {table_sql} WHERE ({' OR '.join(f'({r})' for r in ranges)}) AND @where"


def explain(sql: str, options: str = "") -> str:
    """``EXPLAIN [(options)] <sql>``: the plan, never the statement run (PostgreSQL docs, "EXPLAIN").
    ``options``: rowfill's own, e.g. ``"FORMAT JSON"``, ``"VERBOSE, FORMAT JSON"``."""
    return f"EXPLAIN ({options}) {sql}" if options else f"EXPLAIN {sql}"


def same_table_driver() -> str:
    """Driver SQL: do the names ``%(w)s`` and ``%(t)s`` resolve to the same relation? (NULL if either is missing.)"""
    return "SELECT to_regclass(CAST(%(w)s AS text)) = to_regclass(CAST(%(t)s AS text))"


def key_order_probe(table_sql: str, key, rows: int = 1000) -> str:
    """The first ``rows`` keys in key order: EXPLAINed at planning to prove an index walks the key in order."""
    return f"SELECT {', '.join(key.refs())} FROM {table_sql} ORDER BY {key.order_by()} LIMIT {int(rows)}"


def where_probe(table_sql: str) -> str:
    """A statement that only evaluates ``where`` (``@where``), for EXPLAIN at planning."""
    return f"SELECT 1 FROM {table_sql} WHERE @where"


def set_probe(table_sql: str) -> str:
    """An UPDATE that only evaluates the ``set`` expressions (``@sets``) and writes nothing, for EXPLAIN at planning."""
    return f"UPDATE {table_sql} SET @sets WHERE false"


def _driver_escaped(sql: str) -> str:
    # text run through psycopg with parameters: a literal % is written %%
    return sql.replace("%", "%%")


def matching_in_slice(table_sql: str, key, has_lo: bool, has_hi: bool, and_where_driver: str) -> tuple[str, str]:
    """Driver SQL (psycopg ``%(name)s`` binds) over the slice ``lo < key <= hi`` of rows matching ``where``:
    ``(their count, their first keys in key order as JSON text, at most %(sample_n)s)``.

    ``and_where_driver``: `` AND (<where>)`` already composed as driver SQL by ``rowfill.sql.sqltext``
    (``rowfill.engine.sweep.where_clause``), or nothing.
    """
    body = f"FROM {_driver_escaped(table_sql)} WHERE {key.range_text(has_lo, has_hi, driver=True)}{and_where_driver}"
    return (f"SELECT count(*) {body}",
            f"SELECT {_driver_escaped(key.json_sql())} {body} ORDER BY {_driver_escaped(key.order_by())} LIMIT %(sample_n)s")


def keys_in_range(table_sql: str, key, has_lo: bool, has_hi: bool) -> str:
    """Every key of ``lo < key <= hi`` in key order, as JSON text (``rowfill.sql.keys.decode`` reads it)."""
    return (f"SELECT {key.json_sql()} FROM {table_sql} WHERE {key.range_text(has_lo, has_hi)} "
            f"ORDER BY {key.order_by()}")


def probe_view(view_sql: str, expressions: int, table_sql: str) -> str:
    """``CREATE TEMPORARY VIEW`` over ``expressions`` slots ``@expr1``.. ``@exprN`` (as ``c1``.. ``cN``)
    of ``table_sql``: PostgreSQL records what the view's rule depends on (see ``catalog.view_dependencies``)."""
    columns = ", ".join(f"@expr{i} AS c{i}" for i in range(1, expressions + 1))
    return f"CREATE TEMPORARY VIEW {view_sql} AS SELECT {columns} FROM {table_sql}"


def joins_probe(table_sql: str) -> str:
    """Evaluates only ``joins`` (``@joins``), for EXPLAIN at run start."""
    return f"SELECT 1 FROM {table_sql} @joins"


def select_probe(table_sql: str) -> str:
    """Evaluates ``select``, ``joins`` and ``where`` (``@select``, ``@joins``, ``@where``), for EXPLAIN at run start."""
    return f"SELECT @select FROM {table_sql} @joins WHERE @where"


def read_rows(columns_sql: str, table_sql: str, key, has_lo: bool, has_where: bool, lock: bool) -> str:
    """A transform's or sink's read of the batch: ``columns_sql`` (rowfill's column list with ``select``
    slots) of the rows ``lo < key <= hi`` matching ``where``, through ``@joins``, in key order;
    ``lock``: also lock them (``FOR NO KEY UPDATE``), so one statement locks and reads. ``key`` is
    qualified by the table (``Key.qualified``), since ``joins`` may bring columns of the same name."""
    return (f"SELECT {columns_sql} FROM {table_sql} @joins "
            f"WHERE {key.range_text(has_lo, True)}{and_where(has_where)} ORDER BY {key.order_by()}"
            f"{' FOR NO KEY UPDATE' if lock else ''}")


def update_from_values(table_sql: str, sets: str, source: str, match: str) -> str:
    """``UPDATE <table> SET <sets> FROM <source> WHERE <match>``: a transform's write of per-row results,
    ``source`` an ``unnest(...)`` of bound arrays, ``match`` joining it to the rows by key within the batch."""
    return f"UPDATE {table_sql} SET {sets} FROM {source} WHERE {match}"
