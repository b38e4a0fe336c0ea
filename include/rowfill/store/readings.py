"""The read of ``rowfill status``: every chunk row of a backfill with its rate samples and lease, in one query.

The rules (what is stale, the rate, the ETA, the backfill's state) are ``rowfill.engine.status``'s;
this module only builds and runs the statements over rowfill's own tables.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import TextClause

from rowfill.store.catalog import SCHEMA

# Rows skipped because other sessions held them, still to write (rowfill.engine.rowlocks).
_SKIPPED = text(f"SELECT count(*) FROM {SCHEMA}.skipped_rows WHERE backfill = :n")


@lru_cache(maxsize=None)
def _query(samples: bool, leases: bool) -> TextClause:
    win = f"""
win AS (
    SELECT s.chunk_no, sum(s.rows_seen) AS rows, min(s.work_started) AS since, max(s.last_commit) AS last
    FROM {SCHEMA}.samples s, now_
    WHERE s.backfill = :n AND s.last_commit >= now_.t - make_interval(secs => :w)
    GROUP BY s.chunk_no
)""" if samples else """
win AS (SELECT NULL::integer AS chunk_no, NULL::bigint AS rows, NULL::timestamptz AS since, NULL::timestamptz AS last)"""
    lease_join = (f"LEFT JOIN {SCHEMA}.leases l ON l.backfill = c.backfill AND l.chunk_no = c.chunk_no" if leases else "")
    beat = "coalesce(l.heartbeat_at, c.updated_at)" if leases else "c.updated_at"
    return text(f"""
WITH now_ AS (SELECT clock_timestamp() AS t),{win}
SELECT to_jsonb(c) - 'backfill' AS chunk, win.rows, extract(epoch FROM now_.t - win.since) AS span,
       win.since, win.last, now_.t AS now, extract(epoch FROM now_.t - {beat}) AS quiet
FROM {SCHEMA}.chunks c CROSS JOIN now_ LEFT JOIN win ON win.chunk_no = c.chunk_no {lease_join}
WHERE c.backfill = :n
ORDER BY c.chunk_no
""")


def chunk_readings(conn: Connection, name: str, window: float, *, samples: bool = True, leases: bool = True) -> list[Row]:
    """One row per chunk of ``name``, in chunk order.

    Each row: ``chunk`` (the chunk row as a dict, JSON values), ``rows`` (rows seen in rate samples
    of the last ``window`` seconds), ``span`` (seconds from the first of those samples to now),
    ``since``/``last`` (their first start and last commit), ``now`` (the database clock) and
    ``quiet`` (seconds since the chunk's runner last renewed its lease, see ``rowfill.engine.lease``).
    ``samples``/``leases`` False: a store created before rate samples or leases existed gets the
    same shape without them (planning adds the tables).
    """
    return conn.execute(_query(samples, leases), {"n": name, "w": window}).all()


def skipped_count(conn: Connection, name: str) -> int:
    """Rows of ``name`` skipped because other sessions held them, still to write."""
    return conn.execute(_SKIPPED, {"n": name}).scalar()
