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

# The samples of a recent stretch summed into at most :points steps over the time they span, each a
# whole number of 5-second buckets (rates.BUCKET_SECONDS): the chart's points come out of the database
# ready, not 4,320 rows of six hours to sum in Python.
_STEPS = text(f"""
WITH s AS (
    SELECT bucket, rows_seen, batches FROM {SCHEMA}.samples
    WHERE backfill = :n AND bucket >= clock_timestamp() - make_interval(secs => :since)
), w AS (
    SELECT min(bucket) AS lo,
           greatest(ceil(extract(epoch FROM max(bucket) - min(bucket)) / :bucket / :points), 1) * :bucket AS width
    FROM s
)
SELECT extract(epoch FROM w.lo) + floor(extract(epoch FROM s.bucket - w.lo) / w.width) * w.width AS step_at,
       w.width, sum(s.rows_seen) AS rows, sum(s.batches) AS batches
FROM s CROSS JOIN w
GROUP BY 1, 2 ORDER BY 1""")
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


def steps(conn: Connection, backfill: str, since: float, points: int, bucket: float = 5.0) -> tuple[list[Step], float]:
    """The backfill's samples of the last ``since`` seconds, summed over chunks into at most ``points``
    steps over the time they span.

    :param since: how far back, seconds. :param points: at most this many steps.
    :param bucket: the samples' bucket, seconds (``rates.BUCKET_SECONDS``); a step is a whole number of them.
    :returns: (steps in time order, only those with samples; the width of a step in seconds);
        ([], bucket) before any sample table or sample exists.
    """
    if not catalog.exists(conn, catalog.own("samples")):
        return [], bucket
    rows = conn.execute(_STEPS, {"n": backfill, "since": since, "points": points, "bucket": bucket}).all()
    if not rows:
        return [], bucket
    return [Step(float(r.step_at), int(r.rows), int(r.batches)) for r in rows], float(rows[0].width)


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
