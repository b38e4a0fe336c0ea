"""The end-of-run checks: every planned chunk is done, and no row in the planned range still needs the work."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from rowfill.checkpoint import CheckpointStore
from rowfill.errors import RowfillError
from rowfill.spec import Spec
from rowfill.sqlnames import quote


class VerificationFailed(RowfillError):
    pass


@dataclass(frozen=True)
class Verification:
    chunks: int
    remaining: int | None  # rows still matching `where` in the planned range; None without `where`
    sample_keys: list[int]


def verify_backfill(engine: Engine, spec: Spec, statement_timeout: str = "0") -> Verification:
    chunks = CheckpointStore(engine).chunks(spec.name)
    unfinished = [c for c in chunks if c.status != "done"]
    if unfinished:
        first = unfinished[0]
        raise VerificationFailed(
            f"backfill {spec.name!r}: {len(unfinished)} of {len(chunks)} chunks are not done "
            f"(first: chunk {first.chunk_no}, status {first.status}, {spec.key} {first.lo + 1}..{first.hi}"
            f"{', error: ' + first.last_error if first.last_error else ''}). Clear the failed chunk tasks to resume them."
        )
    if not chunks or not spec.where:
        return Verification(len(chunks), None, [])
    lo, hi = min(c.lo for c in chunks), max(c.hi for c in chunks)
    key, table = quote(spec.key), spec.table.sql
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('statement_timeout', :t, true)"), {"t": statement_timeout})
        remaining = conn.execute(
            text(f"SELECT count(*) FROM {table} WHERE {key} > :lo AND {key} <= :hi AND ({spec.where})"),
            {"lo": lo, "hi": hi},
        ).scalar()
        sample = list(conn.execute(
            text(f"SELECT {key} FROM {table} WHERE {key} > :lo AND {key} <= :hi AND ({spec.where}) ORDER BY {key} LIMIT 5"),
            {"lo": lo, "hi": hi},
        ).scalars()) if remaining else []
    if remaining:
        raise VerificationFailed(
            f"backfill {spec.name!r}: {remaining:,} rows in {spec.key} {lo + 1}..{hi} still match "
            f"where ({spec.where}), e.g. {spec.key} {', '.join(map(str, sample))}. Rows the application wrote "
            "during the run can do this; run the DAG again to sweep them (done chunks are skipped, so "
            "start over with `rowfill reset` if they lie in done chunks), or check why the write leaves them unmatched."
        )
    return Verification(len(chunks), 0, [])
