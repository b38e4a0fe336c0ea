"""Planning huge tables: boundaries from a sample instead of a full index walk, still contiguous,
still capped at max_map_length, with chunks close to chunk_rows."""

from __future__ import annotations

from sqlalchemy import text

import rowfill.engine.plan
from helpers import make_users, spec_for
from rowfill.engine.estimate import split_key_range
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner


def contiguous(bounds) -> bool:
    return all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_a_billion_row_key_space_fits_into_max_map_length_chunks():
    bounds = split_key_range(1, 1_000_000_000, 1_000_000_000, chunk_rows=200_000, limit=1024)
    assert len(bounds) == 1024
    assert bounds[0][0] is None and bounds[-1][1] == 1_000_000_000 and contiguous(bounds)
    assert {rows for _, _, rows in bounds} == {1_000_000_000 // 1024}


def test_a_key_space_smaller_than_the_chunk_count_gives_one_key_per_chunk_at_most():
    assert split_key_range(1, 3, 3, chunk_rows=1, limit=1024) == [(None, 1, 1), (1, 2, 1), (2, 3, 1)]
    assert split_key_range(5, 5, 1, chunk_rows=10, limit=10) == [(None, 5, 1)]
    assert split_key_range(5, 4, 0, chunk_rows=10, limit=10) == []
    assert split_key_range(6, 9, 4, chunk_rows=2, limit=10, after=5) == [(5, 7, 2), (7, 9, 2)]  # new keys above a plan


def test_the_whole_bigint_range_is_cut_exactly_without_overflow_or_float_rounding():
    lowest, highest = -(2**63), 2**63 - 1
    bounds = split_key_range(lowest, highest, 10_000_000, chunk_rows=10_000, limit=1000)
    assert len(bounds) == 1000 and contiguous(bounds)
    assert bounds[0][0] is None and bounds[-1][1] == highest
    highs = [hi for _, hi, _ in bounds]
    assert highs == sorted(set(highs)) and all(lowest <= hi <= highest for hi in highs)
    widths = {b - a for a, b in zip(highs, highs[1:])}
    assert max(widths) - min(widths) <= 1  # equal widths to the key, as integers


def test_estimated_planning_gives_chunks_near_chunk_rows_and_covers_every_row(engine, tmp_path):
    make_users(engine, 200_000, step=7)
    with engine.begin() as conn:  # a hole in the middle: sampling must follow the rows, not the key width
        conn.execute(text("DELETE FROM users WHERE id BETWEEN 300000 AND 900000"))
        conn.execute(text("ANALYZE users"))
        total = conn.execute(text("SELECT count(*) FROM users")).scalar()
    spec = spec_for(tmp_path, planning="estimated", chunk_rows=10_000, batch_rows=2_000)

    chunks = plan_backfill(engine, spec)

    bounds = [(c.lo, c.hi) for c in chunks]
    assert contiguous([(lo, hi, 0) for lo, hi in bounds])
    assert bounds[0][0] is None  # the first chunk starts from the start of the key space
    with engine.connect() as conn:
        sizes = [conn.execute(text("SELECT count(*) FROM users WHERE id > coalesce(:lo, id - 1) AND id <= :hi"),
                              {"lo": lo, "hi": hi}).scalar() for lo, hi in bounds]
        assert bounds[-1][1] == conn.execute(text("SELECT max(id) FROM users")).scalar()
    assert sum(sizes) == total
    assert 0.7 * total / 10_000 <= len(chunks) <= 1.3 * total / 10_000
    assert all(0 < size < 2.5 * 10_000 for size in sizes), sizes

    for chunk in chunks:
        ChunkRunner(engine, spec, label=chunk.label).run(chunk.chunk_no)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NULL")).scalar() == 0


def test_auto_planning_switches_to_estimates_above_the_exact_limit(engine, tmp_path, monkeypatch):
    make_users(engine, 50_000)
    monkeypatch.setattr(rowfill.engine.plan, "EXACT_PLAN_MAX_ROWS", 10_000)
    spec = spec_for(tmp_path, chunk_rows=5_000)
    chunks = plan_backfill(engine, spec, limit=4)
    assert len(chunks) == 4  # estimated planning cuts straight to the limit instead of merging a walk
    assert chunks[0].lo is None and chunks[-1].hi == 50_000
