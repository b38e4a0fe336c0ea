"""Planning for tables too big to walk: chunk boundaries estimated from statistics and a sample.

Walking the key index row by row is exact but reads every index entry: fine for tens of millions
of rows, minutes for a billion. Above ``EXACT_PLAN_MAX_ROWS`` (or with ``planning: estimated``)
boundaries come from a block sample of the keys (``TABLESAMPLE SYSTEM``) cut at its quantiles, so
each chunk holds about ``chunk_rows`` rows while planning reads a few thousand pages. When the
sample is too thin to cut (statistics out of date, synthetic key spaces) the key range is split
into equal widths, which is exact for dense keys such as ids from a sequence.
"""

from __future__ import annotations

import math

from sqlalchemy.engine import Connection

from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql import scans
from rowfill.sql.ranges import ChunkBounds
from rowfill.sql.sqlnames import quote

EXACT_PLAN_MAX_ROWS = 20_000_000
PAGES_PER_CHUNK = 10  # sampled pages per planned chunk: chunk sizes within about ±30 %


def estimated_rows(conn: Connection, spec: Spec) -> int | None:
    """PostgreSQL's own row estimate (no scan); None if the table was never analyzed."""
    reltuples = _stats(conn, spec)[0]
    return None if reltuples is None or reltuples < 0 else int(reltuples)


def _stats(conn: Connection, spec: Spec) -> tuple[float | None, int]:
    """(reltuples, relpages at least 1) of the spec's table; (None, 1) if it does not exist."""
    row = pg_catalog.size_estimate(conn, spec.table.sql)
    return (row[0], max(row[1], 1)) if row else (None, 1)


def key_span(conn: Connection, spec: Spec, after: int | None) -> tuple[int, int] | None:
    """(first, last) key after ``after`` (None = the whole table); two index probes."""
    key, table = quote(spec.key), spec.table.sql
    first = scans.lowest_key(conn, key, table, after)
    if first is None:
        return None
    return first, scans.highest_key(conn, key, table)


def split_key_range(first: int, last: int, rows: int, chunk_rows: int, limit: int,
                    after: int | None = None) -> list[ChunkBounds]:
    """Equal key-width chunks over the keys ``first..last``, each estimated at rows/n rows.

    The first chunk's lower bound is ``after`` (None = from the start of the key space), never
    ``first - 1``: that overflows at the type's minimum. Integer arithmetic throughout, so bigint
    ranges near ±9.2e18 are cut exactly (floats have 53 bits).
    """
    if last < first or limit <= 0:
        return []
    width = last - first + 1  # keys in first..last
    n = max(1, min(limit, math.ceil(max(rows, 1) / chunk_rows), width))
    highs = [first - 1 + width * i // n for i in range(1, n + 1)]  # strictly increasing: n <= width
    per_chunk = max(rows, 0) // n
    bounds, lo = [], after
    for hi in highs:
        bounds.append(ChunkBounds(lo, hi, per_chunk))
        lo = hi
    return bounds


def sampled_boundaries(conn: Connection, spec: Spec, after: int | None, chunk_rows: int, limit: int,
                       rows: int | None = None) -> list[ChunkBounds]:
    """Chunks of about ``chunk_rows`` rows from a block sample's quantiles; at most ``limit`` chunks.

    ``after`` None plans a new table: the first chunk starts from the start of the key space
    (lo None) and names its first key, like a walked plan.
    """
    span = key_span(conn, spec, after)
    if span is None or limit <= 0:
        return []
    first, last = span
    total = rows if rows is not None else estimated_rows(conn, spec)
    if total is None:
        total = scans.row_count(conn, spec.table.sql)
    n = max(1, min(limit, math.ceil(max(total, 1) / chunk_rows)))
    if n == 1:
        return [ChunkBounds(after, last, total, first)]
    # Rows on one page have neighbouring keys, so what matters is the number of sampled pages.
    percent = min(100.0, 100.0 * n * PAGES_PER_CHUNK / _stats(conn, spec)[1])
    sampled, cuts = scans.sampled_quantiles(conn, quote(spec.key), spec.table.sql, percent,
                                            [i / n for i in range(1, n)], after)
    if sampled < 5 * n:  # too thin to cut (stale statistics, synthetic key spaces)
        bounds = split_key_range(first, last, total, chunk_rows, limit, after=after)
    else:
        highs = [c for c in sorted(set(cuts)) if first <= c < last] + [last]
        per_chunk = total // len(highs)
        bounds, lo = [], after
        for hi in highs:
            bounds.append(ChunkBounds(lo, hi, per_chunk))
            lo = hi
    return [ChunkBounds(*bounds[0], first), *bounds[1:]] if bounds else bounds
