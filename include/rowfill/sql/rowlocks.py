"""The skip-locked statements of a batch that met a held row (``rowfill.engine.rowlocks`` runs them).

``SELECT ... FOR NO KEY UPDATE SKIP LOCKED`` takes the rows it can without waiting (PostgreSQL docs,
SELECT, "The Locking Clause"); the statements return what was taken and what was skipped, with
the neighbouring keys the engine needs to write the runs between skipped keys. Every name comes
quoted (``Key``, the pinned table's SQL); the keys to revisit come as one bound JSON array ``:keys``.
"""

from __future__ import annotations

from rowfill.sql.keys import Key


def _in_list(key: Key, row: str) -> str:
    """``row IN (the keys of the JSON array :keys, each cast to its column's type)``."""
    if key.composite:
        casts = ", ".join(f"CAST(e.value ->> {i} AS {typ})" for i, typ in enumerate(key.types))
    else:
        casts = f"CAST(e.value #>> '{{}}' AS {key.types[0]})"
    return f"{row} IN (SELECT {casts} FROM jsonb_array_elements(CAST(:keys AS jsonb)) AS e)"


def _neighbour(key: Key, t: str, mine: str, op: str, bound: str | None) -> str:
    """The key of table ``t`` just below (``op`` '<') or above ('>') the key ``mine`` (SQL), as JSON text."""
    there = Key(key.columns, key.types, "__rowfill_p")
    limit = f" AND {bound}" if bound else ""
    return (f"(SELECT {there.json_sql()} FROM {t} AS __rowfill_p WHERE {there.row()} {op} {mine}{limit} "
            f"ORDER BY {there.order_by(desc=op == '<')} LIMIT 1)")


def _locked_cte(key: Key, t: str, scope: str, where: str) -> str:
    cols = ", ".join(f"{r} AS __rowfill_k{i}" for i, r in enumerate(key.refs(), 1))
    return (f"__rowfill_l AS MATERIALIZED (SELECT {cols} FROM {t} WHERE {scope}{where} "
            f"ORDER BY {key.order_by()} FOR NO KEY UPDATE SKIP LOCKED)")


def _not_obtained(key: Key, t: str) -> str:
    got = ", ".join(f"__rowfill_l.__rowfill_k{i}" for i in range(1, len(key.columns) + 1))
    return f"NOT EXISTS (SELECT 1 FROM __rowfill_l WHERE ({got}) = ({', '.join(key.qualified(t).refs())}))"


def batch_count(key: Key, t: str, where: str, has_lo: bool) -> str:
    """Lock the batch's rows that match ``where`` without waiting; return (rows locked, rows matching).

    The common case, nobody holding a row of the batch, costs this one statement: the lock plus a
    count of the same range in the same snapshot; only when the counts differ does ``batch_lock``
    find which keys were skipped. Parameters as for ``batch_lock``.
    :returns: SQL text with ``:lo``/``:hi`` binds.
    """
    scan = f"FROM {t} WHERE {key.range_text(has_lo, True)}{where}"
    return (f"SELECT (SELECT count(*) FROM (SELECT 1 {scan} ORDER BY {key.order_by()} "
            f"FOR NO KEY UPDATE SKIP LOCKED) AS __rowfill_l), (SELECT count(*) {scan})")


def batch_lock(key: Key, t: str, where: str, has_lo: bool) -> str:
    """Lock the batch's rows that match ``where`` without waiting; return (rows locked, skipped keys).

    :param key: the walked key (its columns and types). :param t: the table, quoted SQL.
    :param where: the writer's ``where`` as SQL text starting with `` AND `` (or empty).
    :param has_lo: whether the batch has a lower bound (``:lo``; always ``:hi``).
    :returns: SQL text with ``:lo``/``:hi`` binds. The skipped keys come as a JSON array of
        ``[key, key before it in the batch, key after it in the batch]`` (JSON null where there is
        none), in key order. The locked count is read in the same statement, which makes PostgreSQL
        run the locking CTE to its end.
    """
    rng = key.range_text(has_lo, True)
    q = key.qualified(t)
    p = Key(key.columns, key.types, "__rowfill_p")
    below = _neighbour(key, t, q.row(), "<", p.range_text(True, False) if has_lo else None)
    above = _neighbour(key, t, q.row(), ">", p.range_text(False, True))
    skipped = (f"SELECT jsonb_build_array(CAST({q.json_sql()} AS jsonb), CAST({below} AS jsonb), "
               f"CAST({above} AS jsonb)) AS s FROM {t} WHERE {rng}{where} AND {_not_obtained(key, t)} "
               f"ORDER BY {q.order_by()}")
    return (f"WITH {_locked_cte(key, t, rng, where)} SELECT (SELECT count(*) FROM __rowfill_l), "
            f"(SELECT CAST(jsonb_agg(s) AS text) FROM ({skipped}) AS __rowfill_s)")


def revisit_lock(key: Key, t: str, where: str) -> str:
    """Lock the listed keys' rows that match ``where`` without waiting; return (obtained, still held).

    :param key: the walked key. :param t: the table, quoted SQL. :param where: as for ``batch_lock``.
    :returns: SQL text with the bind ``:keys`` (a JSON array of keys). Obtained: a JSON array of
        ``[key, the table's key just below it]``; still held: a JSON array of keys that match
        ``where`` but could not be locked. Keys in neither are gone or no longer match.
    """
    q = key.qualified(t)
    scope = _in_list(key, q.row())
    got = Key(tuple(f"__rowfill_k{i}" for i in range(1, len(key.columns) + 1)), key.types, "__rowfill_l")
    below = _neighbour(key, t, got.row(), "<", None)
    obtained = (f"SELECT jsonb_build_array(CAST({got.json_sql()} AS jsonb), CAST({below} AS jsonb)) AS s "
                "FROM __rowfill_l")
    held = (f"SELECT CAST({q.json_sql()} AS jsonb) AS s FROM {t} WHERE {scope}{where} "
            f"AND {_not_obtained(key, t)}")
    return (f"WITH {_locked_cte(key, t, scope, where)} SELECT "
            f"(SELECT CAST(jsonb_agg(s) AS text) FROM ({obtained}) AS __rowfill_o), "
            f"(SELECT CAST(jsonb_agg(s) AS text) FROM ({held}) AS __rowfill_h)")
