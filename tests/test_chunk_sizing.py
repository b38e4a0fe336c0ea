"""Chunks sized by time: by default a chunk gets about ``chunk_time`` of work, measured by the plan's
sample batch; an explicit ``chunk_rows`` wins; a table big enough gets at least ``max_parallel_chunks``
chunks; never more than Airflow's ``max_map_length``. Whatever the size, the chunks cover the whole key
space and a run writes every row exactly once (a non-idempotent ``points + 1`` shows it)."""

from __future__ import annotations

import logging
import math
import re

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for
from rowfill.engine import chunk_sizing
from rowfill.engine.dryrun import dry_run
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner

ADD_ONE = {"points": "points + 1"}


class Lines(logging.Handler):
    """Collects what planning logs."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def planned_size(lines: list[str]) -> int:
    [size] = [int(m.group(1).replace(",", "")) for line in lines if (m := re.match(r"plan: chunks of ([\d,]+) rows", line))]
    return size


def plan_logged(engine, spec, **kw):
    log = logging.getLogger(f"test.plan.{id(spec)}")
    handler = Lines()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return plan_backfill(engine, spec, log=log, **kw), handler.lines
    finally:
        log.removeHandler(handler)


def assert_covers_and_runs_once(engine, spec, chunks, rows: int) -> list[int]:
    """The chunks are contiguous from the start of the key space to the last key, none empty; running them
    all adds 1 to every row exactly once. Returns the rows per chunk."""
    with engine.connect() as conn:
        last = conn.execute(text("SELECT max(id) FROM users")).scalar()
        counts = [conn.execute(text("SELECT count(*) FROM users WHERE (CAST(:lo AS bigint) IS NULL OR id > :lo) "
                                    "AND id <= :hi"), {"lo": c.lo, "hi": c.hi}).scalar() for c in chunks]
    assert chunks[0].lo is None and chunks[-1].hi == last
    assert all(a.hi == b.lo for a, b in zip(chunks, chunks[1:]))
    assert all(counts) and sum(counts) == rows
    for c in chunks:
        assert ChunkRunner(engine, spec).run(c.chunk_no).status == "done"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FILTER (WHERE points = 1), count(*) FROM users")).one() == (rows, rows)
    return counts


def test_a_small_table_is_one_chunk(engine, tmp_path):
    make_users(engine, 5_000)
    spec = spec_for(tmp_path, where=None, set=ADD_ONE, chunk_rows=None, max_parallel_chunks=2)
    chunks, lines = plan_logged(engine, spec)
    assert len(chunks) == 1
    assert "about chunk_time 5 min" in lines[-1]
    assert_covers_and_runs_once(engine, spec, chunks, 5_000)


def test_a_table_big_enough_gets_at_least_max_parallel_chunks(engine, tmp_path):
    # 60,000 rows are far less than 5 minutes of work, but three chunks can run at once
    make_users(engine, 60_000)
    spec = spec_for(tmp_path, where=None, set=ADD_ONE, chunk_rows=None, max_parallel_chunks=3)
    chunks, lines = plan_logged(engine, spec)
    assert len(chunks) == 3
    assert planned_size(lines) == 20_000 and "3 chunks of ~20,000 rows instead of 1" in lines[-1]
    assert assert_covers_and_runs_once(engine, spec, chunks, 60_000) == [20_000, 20_000, 20_000]


def test_a_large_table_gets_chunks_of_about_chunk_time(engine, tmp_path):
    # small fixed batches make a slow pace: one second of it is a small part of the table
    make_users(engine, 200_000)
    spec = spec_for(tmp_path, where=None, set=ADD_ONE, chunk_rows=None, chunk_time="1s", batch_rows=100,
                    max_parallel_chunks=2)
    chunks, lines = plan_logged(engine, spec)
    size = planned_size(lines)
    assert "about chunk_time 1.0 s at ~" in lines[-1]
    assert len(chunks) == math.ceil(200_000 / size) > 2
    counts = assert_covers_and_runs_once(engine, spec, chunks, 200_000)
    assert counts[:-1] == [size] * (len(chunks) - 1)


def test_an_explicit_chunk_rows_wins(engine, tmp_path):
    # fewer chunks than max_parallel_chunks: chunk_rows says so
    make_users(engine, 60_000)
    spec = spec_for(tmp_path, where=None, set=ADD_ONE, chunk_rows=50_000, max_parallel_chunks=3)
    chunks, lines = plan_logged(engine, spec)
    assert planned_size(lines) == 50_000 and "chunk_rows 50,000 from the spec" in lines[-1]
    assert assert_covers_and_runs_once(engine, spec, chunks, 60_000) == [50_000, 10_000]


def test_never_more_chunks_than_max_map_length(engine, tmp_path):
    make_users(engine, 60_000)
    spec = spec_for(tmp_path, where=None, set=ADD_ONE, chunk_rows=None, max_parallel_chunks=3)
    chunks, lines = plan_logged(engine, spec, limit=2)
    assert len(chunks) == 2 and "max_map_length" in lines[-1]
    assert assert_covers_and_runs_once(engine, spec, chunks, 60_000) == [30_000, 30_000]


@pytest.mark.parametrize("rate, total, room, rows, why", [
    (1_000.0, 1_000_000, 1024, 250_000, "about chunk_time 5 min at ~1,000 rows/s"),  # 4 chunks, evened out
    (1_000.0, 100_000_000, 10, 10_000_000, "fit in 10 chunks (max_map_length)"),
    (1_000.0, 400_000, 1024, 200_000, "about chunk_time"),  # two chunks of 300,000 and 100,000 evened out
    (1_000.0, 30_000, 1024, 15_000, "2 chunks of ~15,000 rows instead of 1, so that max_parallel_chunks=2"),
    (1_000.0, 900_000, 1024, 225_000, "4 chunks of ~225,000 rows instead of 3"),  # full waves on 2 slots
    (1_000.0, 15_000, 1024, 300_000, "about chunk_time"),  # too small to split: one chunk
    (None, 1_000_000, 1024, 100_000, "the size when nothing is measured"),
])
def test_the_sizing_decision(tmp_path, rate, total, room, rows, why):
    spec = spec_for(tmp_path, chunk_rows=None, max_parallel_chunks=2)
    sizing = chunk_sizing.choose(spec, rate=rate, measured="a sample", total_rows=total, room=room)
    assert sizing.rows == rows and why in sizing.why


def test_the_dry_run_shows_the_chunk_size_and_why(engine, tmp_path):
    make_users(engine, 60_000)
    spec = spec_for(tmp_path, chunk_rows=None, max_parallel_chunks=3)
    report = dry_run(engine, spec)
    assert report.chunk_rows == 20_000 and len(report.chunks) == 3
    assert "new chunks of 20,000 rows: about chunk_time 5 min at ~" in report.render()
    assert "so that max_parallel_chunks=3 run at once" in report.render()


def test_a_stub_left_by_the_row_estimate_joins_the_chunk_before(engine, tmp_path):
    # PostgreSQL's estimate says 60,000 rows, 60,300 are there: an even split in two would leave a
    # third chunk of 300 rows, a task (and on two slots a wave) of its own
    make_users(engine, 60_000)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, first_name, last_name) SELECT g, 'f', 'l' FROM generate_series(60001, 60300) g"))
    spec = spec_for(tmp_path, where=None, set=ADD_ONE, chunk_rows=None, max_parallel_chunks=2)
    chunks, lines = plan_logged(engine, spec)
    assert planned_size(lines) == 30_000
    assert assert_covers_and_runs_once(engine, spec, chunks, 60_300) == [30_000, 30_300]
