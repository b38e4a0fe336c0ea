"""A dry run: what a run would do, from a read-only transaction, so nothing at all is written.

It walks the key index the way planning does (the stored plan is read, never extended), and
estimates the rows that still match ``where`` from the planner's statistics instead of counting
them: a dry run must stay cheap on a 100M-row table.
"""

from __future__ import annotations

import json
import math

from sqlalchemy import text
from sqlalchemy.engine import Engine

from rowfill.checkpoint import SCHEMA
from rowfill.control import ControlStore
from rowfill.plan import max_map_length, merge_to_limit, walk_boundaries
from rowfill.schema_check import check_target
from rowfill.spec import Spec
from rowfill.sqlnames import quote
from rowfill.windows import Windows


def dry_run(engine: Engine, spec: Spec, *, batch_rows: int | None = None, pause: float | None = None,
            limit: int | None = None) -> dict:
    batch_rows = batch_rows or spec.batch_rows
    pause = spec.pause if pause is None else pause
    limit = max_map_length() if limit is None else limit
    with engine.connect() as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        check_target(conn, spec)
        existing = []
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": f"{SCHEMA}.chunks"}).scalar() is not None:
            existing = conn.execute(text(
                f"SELECT (lo #>> '{{}}')::bigint, (hi #>> '{{}}')::bigint, est_rows, rows_seen, status "
                f"FROM {SCHEMA}.chunks WHERE backfill = :n ORDER BY chunk_no"), {"n": spec.name}).all()
        open_chunks = [c for c in existing if c.status != "done"]
        after = max((c.hi for c in existing), default=None)
        new = merge_to_limit(walk_boundaries(conn, spec, after, spec.chunk_rows), max(limit - len(open_chunks), 0))
        rows_to_walk = sum(max(c.est_rows - c.rows_seen, 0) for c in open_chunks) + sum(rows for _, _, rows in new)
        ranges = [(c.lo, c.hi) for c in open_chunks] + [(lo, hi) for lo, hi, _ in new]
        matching = _estimate_matching(conn, spec, ranges) if ranges else 0
        conn.rollback()
    batches = math.ceil(rows_to_walk / batch_rows) if rows_to_walk else 0
    control = ControlStore(engine).get(spec.name)
    return {
        "dry_run": True,
        "backfill": spec.name,
        "chunks_done": len(existing) - len(open_chunks),
        "chunks_unfinished": len(open_chunks),
        "chunks_new": len(new),
        "rows_to_walk": rows_to_walk,
        "rows_matching_estimate": matching,
        "batch_rows": batch_rows,
        "batches": batches,
        "pause_seconds_total": round(batches * pause, 1),
        "window": str(Windows(spec.window)),
        "control": control.state,
        "wrote": 0,
    }


def _estimate_matching(conn, spec: Spec, ranges: list[tuple[int, int]]) -> int:
    """The planner's estimate of rows in the ranges that still match ``where`` (no scan)."""
    key, table = quote(spec.key), spec.table.sql
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    where = f" AND ({spec.where})" if spec.where else ""
    plan = conn.execute(text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE {key} > :lo AND {key} <= :hi{where}"),
                        {"lo": lo, "hi": hi}).scalar()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


def describe(report: dict) -> str:
    return (f"dry run of {report['backfill']}: {report['chunks_unfinished']} unfinished and {report['chunks_new']} new chunks "
            f"({report['chunks_done']} done), ~{report['rows_to_walk']:,} rows to walk, ~{report['rows_matching_estimate']:,} "
            f"still matching `where` (planner estimate), {report['batches']:,} batches of {report['batch_rows']:,} rows, "
            f"{report['pause_seconds_total']:,} s of pauses; window: {report['window']}; control: {report['control']}. "
            "Nothing was written.")
