"""The end-of-run checks: every planned chunk is done, and no row in the planned range still needs the work."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from rowfill.checkpoint import CheckpointStore
from rowfill.errors import RowfillError
from rowfill.keys import chunk_label, decode, format_value, load_key
from rowfill.spec import Spec
from rowfill.sqltext import spec_driver


class VerificationFailed(RowfillError):
    pass


@dataclass(frozen=True)
class Verification:
    chunks: int
    remaining: int | None  # rows still matching `where` in the planned range; None without `where`
    sample_keys: list


def verify_backfill(engine: Engine, spec: Spec, statement_timeout: str = "0") -> Verification:
    chunks = CheckpointStore(engine).chunks(spec.name)
    unfinished = [c for c in chunks if c.status != "done"]
    if unfinished:
        first = unfinished[0]
        raise VerificationFailed(
            f"backfill {spec.name!r}: {len(unfinished)} of {len(chunks)} chunks are not done "
            f"(first: {chunk_label(spec.key, first.chunk_no, None, first.lo, first.hi, first.first_key)}, status {first.status}"
            f"{', error: ' + first.last_error if first.last_error else ''}). Clear the failed chunk tasks to resume them."
        )
    if not chunks or not spec.where or spec.mode == "sink":  # a sink changes nothing `where` could see
        return Verification(len(chunks), None, [])
    lo, hi = chunks[0].lo, chunks[-1].hi  # chunks are contiguous and numbered in key order
    table = spec.table.sql
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('statement_timeout', :t, true)"), {"t": statement_timeout})
        key = load_key(conn, spec)
        rng, params = key.range_sql(lo, hi)
        remaining = conn.exec_driver_sql(spec_driver(spec, f"SELECT count(*) FROM {table} WHERE {rng} AND @where"), params).scalar()
        sample = [decode(v) for v in conn.exec_driver_sql(
            spec_driver(spec, f"SELECT {key.json_sql()} FROM {table} WHERE {rng} AND @where ORDER BY {key.order_by()} LIMIT 5"),
            params,
        ).scalars()] if remaining else []
    if remaining:
        span = chunk_label(spec.key, 0, None, lo, hi, chunks[0].first_key).split("(", 1)[1].rstrip(")")
        raise VerificationFailed(
            f"backfill {spec.name!r}: {remaining:,} rows in {span} still match "
            f"where ({spec.where}), e.g. {spec.key} {', '.join(format_value(v) for v in sample)}. Rows the application wrote "
            "during the run can do this; run the DAG again to sweep them (done chunks are skipped, so "
            "start over with `rowfill reset` if they lie in done chunks), or check why the write leaves them unmatched."
        )
    return Verification(len(chunks), 0, [])
