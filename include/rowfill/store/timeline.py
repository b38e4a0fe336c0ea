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
# rows walked in each of several time ranges (one per DAG run), in one statement
# (CASE runs the sum only for ranges recent enough: a month of hourly runs does not scan the samples 720 times)
_RANGES_ROWS = text(f"""
SELECT r.i, CASE WHEN r.lo >= extract(epoch FROM clock_timestamp()) - :keep THEN (
           SELECT coalesce(sum(s.rows_seen), 0) FROM {SCHEMA}.samples s
           WHERE s.backfill = :n AND s.bucket >= to_timestamp(r.lo) - interval '5 seconds' AND s.bucket < to_timestamp(r.hi))
       END AS rows
FROM unnest(CAST(:los AS double precision[]), CAST(:his AS double precision[])) WITH ORDINALITY AS r(lo, hi, i)
ORDER BY r.i""")


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


def rows_in(conn: Connection, backfill: str, ranges: list[tuple[float, float]], keep: float) -> list[int | None]:
    """Keys walked by the backfill in each time range (seconds since the epoch, ``(start, end)``),
    from its samples, in one statement; None for a range that starts more than ``keep`` seconds ago
    (its samples may be pruned: ``rates.KEEP_SECONDS``), and for every range when there is no sample table.

    :returns: one value per range, in the order given.
    """
    if not ranges or not catalog.exists(conn, catalog.own("samples")):
        return [None] * len(ranges)
    rows = conn.execute(_RANGES_ROWS, {"n": backfill, "keep": keep, "los": [lo for lo, _ in ranges],
                                       "his": [hi for _, hi in ranges]}).all()
    return [None if r.rows is None else int(r.rows) for r in rows]
