"""Rate samples over time, for the console's charts: rows and batches per time step of one backfill.

``rowfill.samples`` holds rows and batches per chunk per 5-second bucket (``rowfill.store.rates``);
a chart needs a few hundred points over hours, so buckets are summed over all chunks into wider
steps by the database, in one query over the ``(backfill, chunk_no, bucket)`` primary key's range.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.store import catalog
from rowfill.store.catalog import SCHEMA

_STEPS = text(f"""
SELECT floor(extract(epoch FROM bucket) / :step) * :step AS step_at, sum(rows_seen) AS rows, sum(batches) AS batches
FROM {SCHEMA}.samples
WHERE backfill = :n AND bucket >= clock_timestamp() - make_interval(secs => :since)
GROUP BY 1 ORDER BY 1""")
_RUN_ROWS = text(f"""
SELECT coalesce(sum(rows_seen), 0) FROM {SCHEMA}.samples
WHERE backfill = :n AND bucket >= to_timestamp(:lo) - interval '5 seconds' AND bucket < to_timestamp(:hi)""")
_OLDEST = text(f"SELECT extract(epoch FROM min(bucket)) FROM {SCHEMA}.samples WHERE backfill = :n")


@dataclass(frozen=True)
class Step:
    """One time step: ``t`` its start (seconds since the epoch), rows walked and batches committed in it."""

    t: float
    rows: int
    batches: int


def steps(conn: Connection, backfill: str, since: float, step: float) -> list[Step]:
    """The backfill's samples of the last ``since`` seconds, summed over chunks per ``step`` seconds.

    :param since: how far back, seconds. :param step: the width of a step, seconds (>= the 5 s bucket).
    :returns: steps in time order, only those with samples; [] before any sample table exists.
    """
    if not catalog.exists(conn, catalog.own("samples")):
        return []
    return [Step(float(r.step_at), int(r.rows), int(r.batches))
            for r in conn.execute(_STEPS, {"n": backfill, "since": since, "step": step}).all()]


def rows_between(conn: Connection, backfill: str, lo: float, hi: float) -> int | None:
    """Keys walked by the backfill between two moments (seconds since the epoch), from its samples;
    None when the samples of that time were already pruned (``rates.KEEP_SECONDS``) or never existed."""
    if not catalog.exists(conn, catalog.own("samples")):
        return None
    oldest = conn.execute(_OLDEST, {"n": backfill}).scalar()
    if oldest is None or float(oldest) > lo:
        return None
    return int(conn.execute(_RUN_ROWS, {"n": backfill, "lo": lo, "hi": hi}).scalar())
