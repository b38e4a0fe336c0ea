"""The statements an ``undo: true`` backfill runs over the target table and its undo log, as text.

Recording writes the target table and the undo log in one statement (a data-modifying ``WITH``),
so a changed row can never be without its record; restoring deletes a batch of records and puts
back the previous values of rows that still hold what was written, again in one statement. The
undo log's table arrives as quoted SQL (``rowfill.store.undo.UNDO_ROWS``: rowfill's own schema is
``store``'s), every other name is quoted here or comes quoted in a ``Key``.

A record's ``key``, ``old`` and ``new`` are ``jsonb`` objects from column name to the value's text
form: text is the one form every PostgreSQL type reads back exactly (PostgreSQL docs, 8 "Data
Types"; what ``pg_dump`` relies on), so a rollback casts each value back to its column's type.
"""

from __future__ import annotations

from rowfill.sql.keys import Key
from rowfill.sql.sqlnames import quote

_PAIRS_PER_CALL = 50  # jsonb_build_object takes at most 100 arguments (FUNC_MAX_ARGS): 50 name/value pairs
# types without an '=' operator: their restore compares the text forms instead
TEXT_COMPARED = frozenset({"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"})


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


def record_sql(undo: str, backfill: str, source: str, key: list[tuple[str, str]], old: list[tuple[str, str]],
               new: list[tuple[str, str]]) -> str:
    """The INSERT of one batch's records (a data-modifying CTE body): from ``source`` (a CTE name).

    A key recorded before keeps its first previous value; its written value is refreshed.
    :param undo: the undo log's table, quoted. :param backfill: the backfill's name.
    :param key: / :param old: / :param new: (column, expression over ``source``).
    :returns: SQL text, ``INSERT ... SELECT ... FROM source ON CONFLICT ...``.
    """
    return (f"INSERT INTO {undo} (backfill, key, old, new) "
            f"SELECT {string_literal(backfill)}, {as_object(key)}, {as_object(old)}, {as_object(new)} FROM {source} "
            "ON CONFLICT (backfill, key) DO UPDATE SET new = EXCLUDED.new")


def take_sql(undo: str, backfill: str, range_text: str) -> str:
    """DELETE one batch of the backfill's records (``range_text`` over ``seq``), returning key, old and new.

    :param undo: the undo log's table, quoted. :returns: SQL text.
    """
    return (f"DELETE FROM {undo} WHERE backfill = {string_literal(backfill)} AND {range_text} "
            "RETURNING key, old, new")


def value(record: str, part: str, column: str, typ: str) -> str:
    """SQL for one recorded value cast back to its column's type: ``CAST(d.old ->> 'col' AS type)``."""
    return f"CAST({record}.{part} ->> {string_literal(column)} AS {typ})"


def _row(names: list[str], prefix: str) -> str:
    refs = [f"{prefix}.{n}" for n in names]
    return refs[0] if len(refs) == 1 else "(" + ", ".join(refs) + ")"


def _old_rows(key: Key, columns: tuple[str, ...], t: str, rng_where: str, lock: bool, order: str
              ) -> tuple[str, list[str], list[str]]:
    okey = [quote(f"__rowfill_k{i}") for i in range(1, len(key.columns) + 1)]
    oold = [quote(f"__rowfill_o{i}") for i in range(1, len(columns) + 1)]
    cols = [f"{quote(c)} AS {n}" for c, n in zip(key.columns, okey)]
    cols += [f"{quote(c)} AS {n}" for c, n in zip(columns, oold)]
    tail = f" ORDER BY {order} FOR NO KEY UPDATE" if lock else ""
    return f"o AS (SELECT {', '.join(cols)} FROM {t} WHERE {rng_where}{tail})", okey, oold


def _returning_insert(undo: str, backfill: str, key: Key, columns: tuple[str, ...], update_sql: str,
                      okey: list[str], oold: list[str], t: str) -> str:
    """The UPDATE's rows into the undo log; the statement returns the rows written. The INSERT
    runs although the final SELECT does not read it: PostgreSQL runs every data-modifying WITH once."""
    returning = ", ".join([*(f"o.{k}" for k in okey), *(f"o.{o}" for o in oold), *(f"{t}.{quote(c)}" for c in columns)])
    record = record_sql(undo, backfill, "u", list(zip(key.columns, okey)), list(zip(columns, oold)),
                        [(c, quote(c)) for c in columns])
    return f"u AS ({update_sql} RETURNING {returning}), i AS ({record}) SELECT count(*) FROM u"


def recording_set(undo: str, backfill: str, key: Key, columns: tuple[str, ...], t: str, assignments: str,
                  rng_where: str, where: str, qkey: Key) -> str:
    """``set`` mode: lock and read the previous values, UPDATE, and record both, in one statement.

    The CTE's row locks return the rows' latest committed versions, so the recorded previous
    values are exactly the values the UPDATE replaces, even under concurrent writes.
    :param undo: the undo log's table, quoted. :param backfill: the backfill's name.
    :param key: the walked key. :param columns: the changed columns. :param t: the target table, quoted.
    :param assignments: the SET list (SQL). :param rng_where: the batch's range predicate (SQL).
    :param where: the spec's ``where`` as `` AND (...)`` or empty. :param qkey: ``key`` qualified by ``t``.
    :returns: SQL text returning the rows written.
    """
    o, okey, oold = _old_rows(key, columns, t, rng_where, True, key.order_by())
    update = f"UPDATE {t} SET {assignments} FROM o WHERE {qkey.row()} = {_row(okey, 'o')}{where}"
    return f"WITH {o}, " + _returning_insert(undo, backfill, key, columns, update, okey, oold, t)


def recording_update(undo: str, backfill: str, key: Key, columns: tuple[str, ...], t: str, sets: str, source: str,
                     match: str, rng_where: str, vrow: str) -> str:
    """``transform`` mode (rows already locked): UPDATE from the arrays, recording previous and new values.

    :param source: the arrays as a FROM item (SQL). :param match: the join of ``source`` to ``t`` (SQL).
    :param vrow: the key of ``source``'s row (SQL). Others as for ``recording_set``.
    :returns: SQL text returning the rows written.
    """
    o, okey, oold = _old_rows(key, columns, t, rng_where, False, "")
    update = (f"UPDATE {t} SET {sets} FROM {source}, o "
              f"WHERE {match} AND {_row(okey, 'o')} = {vrow}")
    return f"WITH {o}, " + _returning_insert(undo, backfill, key, columns, update, okey, oold, t)


def restore(undo: str, backfill: str, key: Key, columns: tuple[str, ...], types: tuple[str, ...], t: str,
            rng: str) -> str:
    """Delete a batch of undo records (``rng`` over ``seq``) and put back the previous values of rows
    still holding what was written; the statement returns the rows restored.

    :param t: the target table, qualified and quoted. :param types: the SQL types of ``columns``.
    :returns: SQL text.
    """
    qkey = key.qualified(t)
    drow = [value("d", "key", c, typ) for c, typ in zip(key.columns, key.types)]
    drow_sql = drow[0] if len(drow) == 1 else "(" + ", ".join(drow) + ")"
    unchanged = []
    for c, typ in zip(columns, types):
        if typ.split("(")[0].strip().rstrip("[]").lower() in TEXT_COMPARED:  # no '=': compare the text forms
            unchanged.append(f"CAST({t}.{quote(c)} AS text) IS NOT DISTINCT FROM (d.new ->> {string_literal(c)})")
        else:
            unchanged.append(f"{t}.{quote(c)} IS NOT DISTINCT FROM {value('d', 'new', c, typ)}")
    sets = ", ".join(f"{quote(c)} = {value('d', 'old', c, typ)}" for c, typ in zip(columns, types))
    return (f"WITH d AS ({take_sql(undo, backfill, rng)}), "
            f"r AS (UPDATE {t} SET {sets} FROM d WHERE {qkey.row()} = {drow_sql} AND {' AND '.join(unchanged)} RETURNING 1) "
            "SELECT count(*) FROM r")
