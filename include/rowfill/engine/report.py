"""Backfill-level numbers from the checkpoint store: how far, how fast, how long to go."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy.engine import Engine

from rowfill.engine.lease import stale_chunks
from rowfill.engine.progress import eta_seconds
from rowfill.store.checkpoint import CheckpointStore, ChunkRow
from rowfill.store.states import ChunkState


@dataclass(frozen=True)
class Summary:
    backfill: str
    chunks: int
    chunks_done: int
    chunks_failed: int
    rows_estimated: int
    rows_seen: int
    rows_written: int
    seconds: float
    rows_per_second: float
    eta_seconds: float | None
    throttled_seconds: float = 0.0  # summed over chunks: paused, waiting on gates, backing off
    # rows of the whole table still matching `where` at the last verify (None: not verified yet,
    # or no `where` to check); see rowfill.engine.verify
    rows_still_matching: int | None = None
    verified_at: str | None = None  # ISO time of that verify
    chunks_stale: int = 0  # marked running, but the runner's lease ran out (rowfill.engine.lease): its process is gone

    def to_dict(self) -> dict:
        """The summary as plain JSON-ready data (XCom, ``rowfill run --json``)."""
        return asdict(self)

    def line(self) -> str:
        """One line for people; what the last verify found, when there was one."""
        return (f"{self.backfill}: {self.rows_seen:,} of ~{self.rows_estimated:,} rows walked, "
                f"{self.rows_written:,} written{still_text(self.rows_still_matching)}, "
                f"{self.chunks_done}/{self.chunks} chunks done, "
                + (f"{self.chunks_stale} stale (runner gone; the next attempt takes over), " if self.chunks_stale else "")
                + f"{self.seconds:,.1f} s, {self.rows_per_second:,.0f} rows/s")


def still_text(count: int | None) -> str:
    """`` (verify: 12 rows still match `where`)``, or nothing before a verify (or without `where`)."""
    if count is None:
        return ""
    return f" (verify: {count:,} rows still match `where`)"


def summarize(name: str, chunks: list[ChunkRow], run_id: str | None = None,
              verified: tuple = (None, None), stale: frozenset[int] = frozenset()) -> Summary:
    """Totals over all chunks; duration and rate over the chunks of ``run_id`` when given.

    ``verified``: (rows still matching `where`, when) from the last verify; ``stale``: chunks whose
    runner's lease ran out; while any is stale, no ETA is given (nothing runs them).
    """
    timed = [c for c in chunks if c.started_at and (run_id is None or c.run_id == run_id)]
    seconds = 0.0
    if timed:
        # every timed chunk has started_at (the filter above); the `is not None` tells the type checker
        start = min(c.started_at for c in timed if c.started_at is not None)
        end = max(e for c in timed if (e := c.finished_at or c.updated_at or c.started_at) is not None)
        seconds = max((end - start).total_seconds(), 0.0)
    seen_timed = sum(c.rows_seen for c in timed)
    rate = seen_timed / seconds if seconds > 0 else 0.0
    total = sum(c.est_rows for c in chunks)
    seen = sum(c.rows_seen for c in chunks)
    return Summary(
        backfill=name,
        chunks=len(chunks),
        chunks_done=sum(c.status == ChunkState.DONE for c in chunks),
        chunks_failed=sum(c.status == ChunkState.FAILED for c in chunks),
        rows_estimated=total,
        rows_seen=seen,
        rows_written=sum(c.rows_written for c in chunks),
        seconds=round(seconds, 3),
        rows_per_second=round(rate, 1),
        eta_seconds=None if stale else eta_seconds(seen, total, rate),
        throttled_seconds=round(sum(c.throttled_seconds for c in timed), 1),
        rows_still_matching=verified[0],
        verified_at=verified[1].isoformat() if verified[1] else None,
        chunks_stale=len(stale),
    )


def backfill_summary(engine: Engine, name: str, run_id: str | None = None) -> Summary:
    """The summary of backfill ``name`` from its stored chunks, last verify and stale chunks; duration
    and rate over the chunks of ``run_id`` (an Airflow run id) when given (see ``summarize``).
    """
    store = CheckpointStore(engine)
    return summarize(name, store.chunks(name), run_id, store.verified(name), frozenset(stale_chunks(engine, name)))
