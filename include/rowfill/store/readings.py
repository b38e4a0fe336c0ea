"""The read of ``rowfill status``: a backfill's row, every chunk row with its rate samples and lease, and
the count of its skipped keys, in one query (one round trip per backfill).

The rules (what is stale, the rate, the ETA, the backfill's state) are ``rowfill.engine.status``'s;
this module only builds and runs the statements over rowfill's own tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from sqlalchemy import text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import TextClause

from rowfill.store.catalog import SCHEMA


@cache
def _query(samples: bool, leases: bool, skipped: bool = True) -> TextClause:
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
    count_skipped = f"(SELECT count(*) FROM {SCHEMA}.skipped_rows WHERE backfill = :n)" if skipped else "0"
    return text(f"""
WITH now_ AS (SELECT clock_timestamp() AS t),{win},
b AS (SELECT (SELECT to_jsonb(bf) FROM {SCHEMA}.backfills bf WHERE bf.name = :n) AS backfill, {count_skipped} AS skipped)
SELECT b.backfill, b.skipped, to_jsonb(c) - 'backfill' AS chunk, win.rows, extract(epoch FROM now_.t - win.since) AS span,
       win.since, win.last, now_.t AS now, extract(epoch FROM now_.t - {beat}) AS quiet
FROM b CROSS JOIN now_ LEFT JOIN {SCHEMA}.chunks c ON c.backfill = :n
     LEFT JOIN win ON win.chunk_no = c.chunk_no {lease_join}
ORDER BY c.chunk_no
""")


@dataclass(frozen=True)
class Readings:
    """What ``rowfill status`` reads of one backfill: its row (a dict of JSON values; None if never
    registered), the count of its skipped keys still to write, and one reading per chunk (see ``chunk_readings``)."""

    backfill: dict | None
    skipped: int
    chunks: list[Row]


def backfill_readings(conn: Connection, name: str, window: float, *, samples: bool = True, leases: bool = True,
                      skipped: bool = True) -> Readings:
    """Everything ``rowfill status`` shows of backfill ``name``, in one round trip.

    :param window: seconds of rate samples to read. :param samples: / :param leases: / :param skipped:
        False for a store without that table (read as none). :returns: ``Readings``; each chunk reading has
        ``chunk`` (the chunk row as a dict, JSON values), ``rows`` (rows seen in rate samples of the last
        ``window`` seconds), ``span`` (seconds from the first of those samples to now), ``since``/``last``
        (their first start and last commit), ``now`` (the database clock) and ``quiet`` (seconds since the
        chunk's runner last renewed its lease, see ``rowfill.engine.lease``).
    """
    rows = conn.execute(_query(samples, leases, skipped), {"n": name, "w": window}).all()
    first = rows[0]
    return Readings(first.backfill, int(first.skipped), [r for r in rows if r.chunk is not None])
