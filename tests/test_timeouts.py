"""Progress through expensive rows (issue 9, kind 5): a batch that hits statement_timeout is split
(halved down to min_batch_rows, then single rows) and retried at once, without using up
batch_retries; the size that worked is kept on the chunk row so a resumed chunk starts from it;
only a single row that alone exceeds the timeout fails the chunk, and the error names it.

Expensive rows are made with pg_sleep in the write's function: 300 ms per expensive row against
a 1 s statement_timeout, so every batch that should fit has a wide margin."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from helpers import Lines, spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import BatchObserver, ChunkRunner, split_size
from rowfill.errors import ChunkFailed
from rowfill.store.checkpoint import CheckpointStore


class Sizes(BatchObserver):
    def __init__(self):
        self.seen = []

    def batch_done(self, *, seen, **kw):
        self.seen.append(seen)


def docs(engine, n: int, costs: dict[int, int]) -> None:
    """``n`` docs; ``costs`` maps id -> milliseconds the write spends on that row."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE docs (id int PRIMARY KEY, cost_ms int NOT NULL DEFAULT 0, words int)"))
        conn.execute(text("INSERT INTO docs (id) SELECT g FROM generate_series(1, :n) g"), {"n": n})
        for key, ms in costs.items():
            conn.execute(text("UPDATE docs SET cost_ms = :ms WHERE id = :k"), {"ms": ms, "k": key})
        conn.execute(text("CREATE FUNCTION word_count(ms int) RETURNS int LANGUAGE plpgsql AS $$ "
                          "BEGIN IF ms > 0 THEN PERFORM pg_sleep(ms / 1000.0); END IF; RETURN ms + 1; END $$"))


def words_spec(tmp_path, **fields):
    return spec_for(tmp_path, name="docs_words", table="public.docs", where="words IS NULL",
                    set={"words": "word_count(cost_ms)"}, statement_timeout="1s", batch_retries=0, **fields)


def runner(engine, spec, sizes):
    lines = Lines()
    log = logging.getLogger(f"test.timeouts.{id(lines)}")
    log.setLevel(logging.INFO)
    log.addHandler(lines)
    return ChunkRunner(engine, spec, observers=[sizes], logger=log), lines


def words(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, words FROM docs")).all())


@pytest.mark.parametrize("rows, floor, expected", [
    (1000, 100, 500), (150, 100, 100), (100, 100, 1), (7, 100, 1), (2, 1, 1), (1, 1, None), (1, 100, None)])
def test_split_sizes_halve_down_to_min_batch_rows_then_single_rows(rows, floor, expected):
    assert split_size(rows, floor) == expected


def test_a_batch_that_hits_statement_timeout_is_split_until_it_fits_without_using_up_retries(engine, tmp_path):
    docs(engine, 300, {k: 300 for k in range(101, 105)})  # four rows of 300 ms: 1.2 s together, 0.3 s alone
    spec = words_spec(tmp_path, chunk_rows=300, batch_rows=32, min_batch_rows=4)
    [chunk] = plan_backfill(engine, spec)
    sizes = Sizes()
    run, lines = runner(engine, spec, sizes)
    result = run.run(chunk.chunk_no)

    assert result.status == "done" and result.rows_written == 300
    assert words(engine) == {k: (301 if 101 <= k <= 104 else 1) for k in range(1, 301)}
    # 97..128 timed out, then 97..112 and 97..104; 97..100 fit; 101..104 timed out at the floor of 4,
    # so single rows; each cheap row after them (from 105 on) doubles the size back to batch_rows
    assert sizes.seen[:9] == [32, 32, 32, 4, 1, 1, 1, 1, 1]
    assert sizes.seen[9:14] == [2, 4, 8, 16, 32] and sum(sizes.seen) == 300
    splits = [line for line in lines.lines if "hit statement_timeout" in line]
    assert [s.split("retrying at once with ")[1] for s in splits] == ["16 rows", "8 rows", "4 rows", "1 rows"]
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.attempts, row.batch_rows_worked, row.last_error) == ("done", 1, None, None)


def test_a_single_row_that_alone_times_out_fails_the_chunk_naming_it_and_the_resumed_chunk_starts_small(engine, tmp_path):
    docs(engine, 200, {150: 1500})  # row 150 alone takes 1.5 s
    spec = words_spec(tmp_path, chunk_rows=200, batch_rows=32, min_batch_rows=2)
    [chunk] = plan_backfill(engine, spec)
    sizes = Sizes()
    run, _ = runner(engine, spec, sizes)
    with pytest.raises(ChunkFailed) as failed:
        run.run(chunk.chunk_no)
    message = str(failed.value)
    assert "id 150 alone takes longer than statement_timeout (1.0 s) to write, even as a batch of one row" in message
    assert "Raise `statement_timeout`" in message
    done = words(engine)
    assert all(done[k] == 1 for k in range(1, 150)) and all(done[k] is None for k in range(150, 201))
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.cursor, row.batch_rows_worked) == ("failed", 149, 1)
    assert "id 150 alone takes longer" in row.last_error

    with engine.begin() as conn:  # the row is made cheap; the chunk is cleared and resumes
        conn.execute(text("UPDATE docs SET cost_ms = 0 WHERE id = 150"))
    sizes = Sizes()
    run, lines = runner(engine, spec, sizes)
    result = run.run(chunk.chunk_no)
    assert result.status == "done" and words(engine) == {k: 1 for k in range(1, 201)}
    assert sizes.seen[:4] == [1, 2, 4, 8]  # from the size that worked, doubling back
    assert any("starting with batches of 1 rows" in line for line in lines.lines)
    assert CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).batch_rows_worked is None
