"""Backfill-level numbers from the checkpoint store: how far, how fast, how long to go."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy.engine import Engine

from rowfill.engine.lease import stale_chunks
from rowfill.engine.progress import eta_seconds
from rowfill.store.checkpoint import CheckpointStore, ChunkRow


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
    rows_still_matching: int = 0  # of rows_written: rows whose new values still match `where`
    chunks_stale: int = 0  # marked running, but the runner's lease ran out (rowfill.engine.lease): its process is gone

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self, show_still: bool = False) -> str:
        """One line for people; the rows still matching `where` appear when there are any, or when ``show_still``."""
        return (f"{self.backfill}: {self.rows_seen:,} of ~{self.rows_estimated:,} rows walked, "
                f"{self.rows_written:,} written{still_text(self.rows_still_matching, show_still)}, "
                f"{self.chunks_done}/{self.chunks} chunks done, "
                + (f"{self.chunks_stale} stale (runner gone; the next attempt takes over), " if self.chunks_stale else "")
                + f"{self.seconds:,.1f} s, {self.rows_per_second:,.0f} rows/s")


def counts_still(spec) -> bool:
    """Whether the spec's writes count rows still matching `where` (set and transform with a `where`)."""
    return bool(spec.where) and spec.mode in ("set", "transform")


def still_text(count: int, show: bool = False) -> str:
    """`` (12 still matching `where` after their write)``: rows written that verify will find again."""
    if not count and not show:
        return ""
    return f" ({count:,} still matching `where` after their write)"


def summarize(name: str, chunks: list[ChunkRow], run_id: str | None = None, stale: frozenset[int] = frozenset()) -> Summary:
    """Totals over all chunks; duration and rate over the chunks of ``run_id`` when given.

    ``stale``: chunks whose runner's lease ran out; while any is stale, no ETA is given (nothing runs them).
    """
    timed = [c for c in chunks if c.started_at and (run_id is None or c.run_id == run_id)]
    seconds = 0.0
    if timed:
        start = min(c.started_at for c in timed)
        end = max((c.finished_at or c.updated_at or c.started_at) for c in timed)
        seconds = max((end - start).total_seconds(), 0.0)
    seen_timed = sum(c.rows_seen for c in timed)
    rate = seen_timed / seconds if seconds > 0 else 0.0
    total = sum(c.est_rows for c in chunks)
    seen = sum(c.rows_seen for c in chunks)
    return Summary(
        backfill=name,
        chunks=len(chunks),
        chunks_done=sum(c.status == "done" for c in chunks),
        chunks_failed=sum(c.status == "failed" for c in chunks),
        rows_estimated=total,
        rows_seen=seen,
        rows_written=sum(c.rows_written for c in chunks),
        seconds=round(seconds, 3),
        rows_per_second=round(rate, 1),
        eta_seconds=None if stale else eta_seconds(seen, total, rate),
        throttled_seconds=round(sum(c.throttled_seconds for c in timed), 1),
        rows_still_matching=sum(c.rows_still_matching for c in chunks),
        chunks_stale=len(stale),
    )


def backfill_summary(engine: Engine, name: str, run_id: str | None = None) -> Summary:
    return summarize(name, CheckpointStore(engine).chunks(name), run_id, frozenset(stale_chunks(engine, name)))
