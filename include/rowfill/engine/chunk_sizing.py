"""How many rows a chunk gets: by default about ``chunk_time`` of work, measured by the plan's sample batch.

A chunk runs as one Airflow task, and each task costs the same to schedule and start (about 1-3 s
in bench/airflow_speed.py) whatever it then writes. Chunks counted in rows (the old default,
100,000) did ~0.3 s of work each on a fast table and paid more than that to start, so a backfill
through Airflow ran at a third of the speed of the same engine outside it. Sized by time, a chunk
pays its start once per ``chunk_time`` (5 minutes by default: see ``rowfill.spec.spec.Spec``).

The decision, in order (``choose``):
  1. an explicit ``chunk_rows`` in the spec wins;
  2. else ``chunk_time`` x the pace of one real batch, timed at planning and rolled back
     (``sample_pace``), at the spec's throttle (adaptive batch size, ``pause``, ``pause_ratio``);
     without a sample (a sink, no rows, the sample failed) ``FALLBACK_CHUNK_ROWS``;
  3. a table big enough for it (``MIN_SPLIT_ROWS`` per chunk) gets a multiple of ``max_parallel_chunks``
     chunks of equal size (at least one each), so every wave runs them all at once;
  4. never more chunks than Airflow maps (``[core] max_map_length``): chunks grow to fit;
  5. after the walk, a stub left by the row estimate joins the chunk before it (``without_stub``).
The result says why in words; the plan task logs it and the dry run shows it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from rowfill.engine.disconnects import describe
from rowfill.engine.estimate import estimated_rows
from rowfill.engine.modes import writer_for
from rowfill.engine.throttle import BatchSize
from rowfill.spec.durations import format_duration
from rowfill.spec.spec import Spec
from rowfill.sql.ranges import ChunkBounds
from rowfill.sql.session import set_local

# The size when nothing can be measured; the size every chunk had before chunk_time.
FALLBACK_CHUNK_ROWS = 100_000
# Rows the sample batch asks for (at least; the spec's batch_rows if larger): enough that the
# per-statement costs of a batch (about 1-2 ms) are a small part of its time, so the per-row cost
# it measures is the one the runner's larger adaptive batches see.
SAMPLE_MIN_ROWS = 5_000
# What a committed batch pays that the rolled-back sample does not, seconds: its COMMIT's WAL flush
# (~6 ms at production durability) plus locking and advancing its checkpoint row (~1-2 ms);
# bench/backfill_speed.py, "Results".
BATCH_OVERHEAD_SECONDS = 0.008
# Rounds of the throttle's adaptive sizing to find the batch size the runner settles at (it grows
# at most x2 a batch: 20 rounds reach any size from 1 row).
ADAPT_ROUNDS = 20
# The smallest chunk the split for max_parallel_chunks makes, rows: a table of fewer than
# max_parallel_chunks x this takes well under a second to write, less than a chunk task's own start.
MIN_SPLIT_ROWS = 10_000


# A last chunk under this share of the chunk size joins the one before it. The even split comes from
# PostgreSQL's row estimate (pg_class.reltuples), which is a little off; a stub of a few hundred rows
# would be a task of its own, and on a full set of slots a wave of its own.
STUB_SHARE = 0.25


@dataclass(frozen=True)
class ChunkSizing:
    """The chosen chunk size and why.

    :param rows: keys per chunk (the walk's step). :param why: the reasons, in words, for the log and the dry run.
    :param rows_per_second: the paced rate the size came from (None: not measured).
    """

    rows: int
    why: str
    rows_per_second: float | None = None


def paced_rate(spec: Spec, rows: int, seconds: float) -> float | None:
    """Rows per second one chunk runner reaches on this table at the spec's throttle.

    :param spec: its ``batch_rows``, ``target_batch_time``, bounds, ``pause`` and ``pause_ratio`` pace the runner.
    :param rows: / :param seconds: the sample batch: keys it walked and its wall time (seconds, a float).
    :returns: rows per second (batch, its commit and the rest after it), or None when the sample measured nothing.
    The batch size is the one the throttle's own arithmetic settles at (``throttle.BatchSize``) for this cost per row.
    """
    if rows <= 0 or seconds <= 0:
        return None
    cost = seconds / rows  # seconds per row
    size = BatchSize(spec.pause, spec.batch_rows, pause_ratio=spec.pause_ratio, target_batch_time=spec.target_batch_time,
                     min_batch_rows=spec.min_batch_rows, max_batch_rows=spec.max_batch_rows)
    for _ in range(ADAPT_ROUNDS):
        size.adapt(cost * size.rows, size.rows)
    batch = size.rows
    per_batch = batch * cost + BATCH_OVERHEAD_SECONDS
    return batch / (per_batch + size.pause_after(per_batch))


def sample_pace(conn: Connection, spec: Spec, after) -> tuple[float | None, str]:
    """Time one real batch at the start of the keys to plan, inside a savepoint that is rolled back.

    :param conn: the planning transaction's connection. :param spec: the backfill (table pinned).
    :param after: the last planned key (JSON value), None = from the start of the key space.
    :returns: (paced rows per second or None, what was measured or why nothing was, in words).
        Never raises: whatever goes wrong (a lock held longer than ``lock_timeout``, a data error in
        the first rows) leaves the size to the fallback, and the run itself reports real errors.
    The sample takes the same row locks a batch takes, for as long as one batch (tens of ms).
    """
    if spec.mode == "sink":
        return None, "a sink is never called by a sample"
    if spec.mode == "set" and not spec.set:  # a rollback (rowfill.engine.undo.rollback_spec) restores with its own writer
        return None, "a rollback's restore is not sampled"
    writer = writer_for(spec)
    asked = max(spec.batch_rows, SAMPLE_MIN_ROWS)
    savepoint = conn.begin_nested()
    try:
        set_local(conn, lock_timeout=spec.lock_timeout, statement_timeout=spec.statement_timeout)
        t0 = time.perf_counter()
        end, seen = writer.batch_end(conn, after, None, asked)
        if end is None or not seen:
            return None, "no rows to sample"
        writer.apply(conn, after, end)
        seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - sizing must never fail a plan; the run reports real errors
        return None, f"the sample batch failed: {describe(exc)}"
    finally:
        savepoint.rollback()
    rate = paced_rate(spec, seen, seconds)
    return rate, f"a sample batch of {seen:,} rows took {format_duration(seconds)}, rolled back"


def choose(spec: Spec, *, rate: float | None, measured: str, total_rows: int | None, room: int) -> ChunkSizing:
    """The chunk size for the keys still to plan (pure arithmetic; the module's docstring gives the order).

    :param spec: ``chunk_rows`` (None: by time), ``chunk_time`` (seconds), ``max_parallel_chunks``.
    :param rate: paced rows per second (``sample_pace``), None when not measured.
    :param measured: what the sample measured, or why nothing was (words, for ``why``).
    :param total_rows: rows to plan, estimated (None: unknown).
    :param room: chunks the plan may still add under ``[core] max_map_length``.
    :returns: a ``ChunkSizing`` (rows >= 1). Never raises.
    """
    if spec.chunk_rows:
        rows, why = spec.chunk_rows, f"chunk_rows {spec.chunk_rows:,} from the spec"
    elif rate:
        rows = max(1, math.ceil(spec.chunk_time * rate))
        why = (f"about chunk_time {format_duration(spec.chunk_time)} at ~{rate:,.0f} rows/s at the spec's throttle "
               f"({measured})")
    else:
        rows = FALLBACK_CHUNK_ROWS
        why = f"{FALLBACK_CHUNK_ROWS:,} rows, the size when nothing is measured ({measured})"
    parallel = spec.max_parallel_chunks
    if not spec.chunk_rows and total_rows and total_rows >= parallel * MIN_SPLIT_ROWS:
        # chunks in full waves: with equal chunks and P slots the run takes ceil(n / P) chunk-times,
        # so 3 chunks on 2 slots take as long as 4 and twice as long as 2
        chunks = math.ceil(total_rows / rows)
        waves = math.ceil(chunks / parallel) * parallel
        rows = math.ceil(total_rows / waves)
        if waves != chunks:
            why += (f"; {waves} chunks of ~{rows:,} rows instead of {chunks}, so that max_parallel_chunks={parallel} "
                    f"run at once in every wave (~{total_rows:,} rows)")
    elif not spec.chunk_rows and total_rows and total_rows > rows:
        rows = math.ceil(total_rows / math.ceil(total_rows / rows))  # the same count of chunks, the last one not a stub
    if total_rows and room > 0 and math.ceil(total_rows / rows) > room:
        rows = math.ceil(total_rows / room)
        why += f"; grown so that ~{total_rows:,} rows fit in {room} chunks (max_map_length)"
    return ChunkSizing(rows, why, rate)


def size_for_plan(conn: Connection, spec: Spec, after, room: int) -> ChunkSizing:
    """The chunk size for the keys after ``after``: sample (unless ``chunk_rows`` is given), then ``choose``.

    :param conn: the planning transaction's connection. :param spec: the backfill, its table pinned.
    :param after: the last planned key (JSON value), None = from the start. :param room: chunks the plan may still add.
    :returns: a ``ChunkSizing``. Raises only what reading the table's row estimate raises (a lost connection).
    The row estimate is PostgreSQL's (``pg_class.reltuples``, no scan); ``resplit`` corrects it after the walk.
    """
    total = estimated_rows(conn, spec)
    if spec.chunk_rows:
        return choose(spec, rate=None, measured="", total_rows=total, room=room)
    rate, measured = sample_pace(conn, spec, after)
    return choose(spec, rate=rate, measured=measured, total_rows=total, room=room)


def resplit(spec: Spec, sizing: ChunkSizing, walked_rows: int, chunks: int, room: int) -> ChunkSizing | None:
    """After the walk: a smaller size when the row estimate was low and too few chunks came out.

    :param walked_rows: rows the walk found. :param chunks: chunks it made.
    :param room: chunks the plan may still add under ``[core] max_map_length``.
    :returns: the size to walk again with, or None to keep the chunks. Never raises.
    """
    parallel = min(spec.max_parallel_chunks, room)
    if spec.chunk_rows or chunks >= parallel or walked_rows < parallel * MIN_SPLIT_ROWS:
        return None
    rows = math.ceil(walked_rows / parallel)
    return ChunkSizing(rows, sizing.why + f"; {parallel} chunks of ~{rows:,} rows, so that max_parallel_chunks="
                                          f"{parallel} run at once ({walked_rows:,} rows)", sizing.rows_per_second)


def without_stub(spec: Spec, bounds: list[ChunkBounds], rows: int) -> list[ChunkBounds]:
    """The walked chunks with a last one under ``STUB_SHARE`` of ``rows`` joined to the one before.

    :param spec: an explicit ``chunk_rows`` keeps every chunk as walked. :param bounds: consecutive
        chunks in key order. :param rows: the chunk size they were walked with.
    :returns: the chunks, still contiguous and covering the same keys. Never raises.
    """
    if spec.chunk_rows or len(bounds) < 2 or bounds[-1].rows >= STUB_SHARE * rows:
        return bounds
    return [*bounds[:-2], bounds[-2].merged(bounds[-1], bounds[-2].rows + bounds[-1].rows)]
