"""Rows per second over a moving window, correct across workers, hosts and processes.

Chunks of one backfill run in different task processes, often on different machines; the only
thing they share is the checkpoint database. So each committed batch adds its rows to a per-chunk
time bucket in ``rowfill.samples`` (an upsert on a row no other chunk touches, so parallel chunks
never wait for each other), stamped with the database's clock, not the worker's. Anyone can then
compute "rows in the last minute / time they took" for a chunk or a whole backfill with one query
(``rowfill.engine.status``), and a process that crashed or moved to another worker changes nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Engine

from rowfill.sql.session import set_local
from rowfill.store.catalog import SCHEMA

BUCKET_SECONDS = 5
WINDOW_SECONDS = 60  # the moving window rates and ETAs are computed over
KEEP_SECONDS = 6 * 3600  # older buckets are pruned; nothing reads them
_PRUNE_EVERY = 500  # calls: batches, or seconds of batches when summed by Sampled (~8 min)

log = logging.getLogger("rowfill.rates")

_RECORD = text(
    f"INSERT INTO {SCHEMA}.samples AS s (backfill, chunk_no, bucket, rows_seen, batches, work_started, last_commit) "
    "SELECT :n, :c, to_timestamp(floor(extract(epoch FROM t) / :b) * :b), :rows, :batches, "
    "t - make_interval(secs => :secs), t FROM clock_timestamp() t "
    "ON CONFLICT (backfill, chunk_no, bucket) DO UPDATE SET rows_seen = s.rows_seen + excluded.rows_seen, "
    "batches = s.batches + excluded.batches, work_started = least(s.work_started, excluded.work_started), "
    "last_commit = greatest(s.last_commit, excluded.last_commit)"
)
# A sample is best effort (see RateRecorder): its commit need not wait for the WAL flush. Without
# this every batch paid a second fsync wait (a few ms each at production durability) for a row
# that only feeds a rate; a sample lost in a server crash makes one rate read a little low.
# The batch's own transaction (write and checkpoint) keeps the server's synchronous_commit.
_PRUNE = text(
    f"DELETE FROM {SCHEMA}.samples WHERE backfill = :n AND chunk_no = :c "
    "AND bucket < clock_timestamp() - make_interval(secs => :keep)"
)


def record_batch(engine: Engine, backfill: str, chunk_no: int, rows: int, seconds: float, *, batches: int = 1,
                 prune: bool = False) -> None:
    """Add committed batches to their chunk's current bucket.

    :param rows: keys the batches walked. :param seconds: how long they took (first start to last commit).
    :param batches: how many batches ``rows`` sums (``rowfill.engine.runner.Sampled`` sums a second's).
    :param prune: also delete the chunk's buckets older than ``KEEP_SECONDS``.
    """
    with engine.begin() as conn:
        set_local(conn, synchronous_commit="off")
        conn.execute(_RECORD, {"n": backfill, "c": chunk_no, "b": BUCKET_SECONDS, "rows": rows, "secs": max(seconds, 0.0),
                             "batches": batches})
        if prune:
            conn.execute(_PRUNE, {"n": backfill, "c": chunk_no, "keep": KEEP_SECONDS})


def window_rate(rows: int | None, span_seconds: float | None) -> float:
    """Rows per second of the samples in a window; 0 when nothing moved in it."""
    if not rows or span_seconds is None:
        return 0.0
    return float(rows) / max(float(span_seconds), 1.0)


class RateRecorder:
    """Batch observer that feeds the samples table after every commit.

    Best effort on purpose: a lost sample makes one rate a little low, while an exception here
    would fail a chunk whose data is fine, so problems are logged, never raised.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._batches = 0
        self._warned = False

    def batch_done(self, *, spec, chunk_no: int, seconds: float, seen: int, written: int, cursor, batches: int = 1) -> None:
        """Record ``batches`` committed batches (one, or a second's summed by ``Sampled``) of ``seen`` keys
        that took ``seconds`` (every ``_PRUNE_EVERY``th call also prunes old buckets). Never raises: the first failure is logged at warning level, later ones not.
        """
        self._batches += 1
        try:
            record_batch(self.engine, spec.name, chunk_no, seen, seconds, batches=batches,
                         prune=self._batches % _PRUNE_EVERY == 0)
        except Exception as exc:  # noqa: BLE001 - observability must never fail a backfill
            if not self._warned:
                log.warning("rate sample for %s chunk %s not recorded (%s); progress rates may read low",
                            spec.name, chunk_no, str(exc).splitlines()[0])
                self._warned = True
