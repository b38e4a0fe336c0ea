"""Verify's sweep of the whole table in heap block slices (issue 13): every row that matches `where`
is found and counted exactly wherever it is (below the first planned key, above the last, inside,
appended at the end of the heap while the sweep runs), its first keys named in key order, each
slice a short statement under `statement_timeout`; the key-slice sweep stays for partitioned tables.

Each test asserts what verify reports against the table's actual rows."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from helpers import spec_for
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.plan import plan_backfill
from rowfill.engine.resolve import pinned_spec
from rowfill.engine.sweep import BlockSlicer, SweepFailed, heap_matching
from rowfill.engine.verify import VerificationFailed, verify_backfill
from rowfill.sql.verify_scans import heap_sweep_possible


def sql(engine, statement: str, **params):
    with engine.begin() as conn:
        result = conn.execute(text(statement), params)
        return result.all() if result.returns_rows else None


def run(engine, spec) -> None:
    for chunk in plan_backfill(engine, spec):
        assert run_chunk(engine, spec, chunk.chunk_no, label=chunk.label).kind == "done"


# (id, key DDL, key columns, keys over g = 1..600, keys added after the run: below the first, inside, above
#  the last, as SQL values; the first five keys in key order of the rows left matching)
KINDS = [
    ("bigint", "id bigint PRIMARY KEY", ["id"], "g * 10",
     ["-5", "0"], ["15", "2995"], ["6001", "9000000000"], "id -5, 0, 15, 1000, 2995"),
    ("text", "code text PRIMARY KEY", ["code"], "'k' || lpad(g::text, 4, '0')",
     ["''", "'a'"], ["'k0010x'", "'k0300 '"], ["'z'", "'~'"], "code , a, k0010x, k0100, k0300"),
    ("composite", "tenant_id int NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id)", ["tenant_id", "id"],
     "g % 3, g", ["-1, 5", "0, -7"], ["1, 2", "2, 298"], ["3, 1", "9, 9"],
     "(tenant_id, id) (-1, 5), (0, -7), (0, 300), (1, 2), (1, 298)"),
]


def make_items(engine, key_ddl: str, columns: list[str], initial: str) -> None:
    # a wide filler: ~14 rows per 8 kB block, so the 600 rows span ~45 blocks and block slices are many
    sql(engine, f"CREATE TABLE items ({key_ddl}, filled int, pad text NOT NULL DEFAULT repeat('x', 500)) "
                "WITH (autovacuum_enabled = false)")
    sql(engine, f"INSERT INTO items ({', '.join(columns)}) SELECT {initial} FROM generate_series(1, 600) g")


def items_spec(tmp_path, columns: list[str], **fields):
    fields = {"where": "filled IS NULL", **fields}
    return spec_for(tmp_path, name="items_fill", table="public.items", key=columns if len(columns) > 1 else columns[0],
                    set={"filled": "1"}, chunk_rows=200, batch_rows=50, **fields)


@pytest.mark.parametrize("by_blocks, blocks", [(True, 1), (True, 7), (True, None), (False, None)],
                         ids=["single-block slices", "7-block slices", "sized by time", "key slices"])
@pytest.mark.parametrize("key_ddl, columns, initial, below, inside, above, first", [k[1:] for k in KINDS],
                         ids=[k[0] for k in KINDS])
def test_verify_counts_every_matching_row_of_the_table_and_names_the_first_keys_in_key_order(
        engine, tmp_path, key_ddl, columns, initial, below, inside, above, first, by_blocks, blocks):
    make_items(engine, key_ddl, columns, initial)
    spec = items_spec(tmp_path, columns)
    run(engine, spec)
    assert sql(engine, "SELECT count(*) FROM items WHERE filled IS NULL")[0][0] == 0
    slicer = BlockSlicer(blocks=blocks, largest=blocks) if blocks else None
    assert verify_backfill(engine, spec, slicer=slicer, by_blocks=by_blocks).remaining == 0

    later = below + inside + above
    sql(engine, f"INSERT INTO items ({', '.join(columns)}) VALUES " + ", ".join(f"({k})" for k in later))
    # two rows written by the run that match again: the 100th and the 300th in key order
    sql(engine, f"UPDATE items SET filled = NULL WHERE ({', '.join(columns)}) IN (SELECT {', '.join(columns)} FROM items "
                f"WHERE filled = 1 ORDER BY {', '.join(columns)} OFFSET 99 LIMIT 1) OR ({', '.join(columns)}) IN "
                f"(SELECT {', '.join(columns)} FROM items WHERE filled = 1 ORDER BY {', '.join(columns)} OFFSET 299 LIMIT 1)")
    expected = sql(engine, "SELECT count(*) FROM items WHERE filled IS NULL")[0][0]
    assert expected == len(later) + 2
    with pytest.raises(VerificationFailed) as caught:
        verify_backfill(engine, spec, slicer=BlockSlicer(blocks=blocks, largest=blocks) if blocks else None,
                        by_blocks=by_blocks)
    message = str(caught.value)
    assert f"{expected} rows of public.items still match" in message
    assert f"e.g. {first}." in message


def test_rows_appended_at_the_end_of_the_heap_while_the_sweep_runs_are_counted(engine, tmp_path):
    """After every slice the application appends a matching row; the sweep reads the relation's size
    again when it reaches the end it knew, and ends with a slice open above."""
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, pad text NOT NULL DEFAULT repeat('x', 500)) "
                "WITH (autovacuum_enabled = false)")
    sql(engine, "INSERT INTO items (id, filled) SELECT g, CASE WHEN g % 50 = 0 THEN NULL ELSE 1 END "
                "FROM generate_series(1, 300) g")  # 6 matching rows over ~22 blocks; no free space before the end
    end = sql(engine, "SELECT pg_relation_size('items') / 8192")[0][0]
    sql(engine, "ALTER TABLE items ALTER pad SET STORAGE PLAIN")  # a 7 kB row fits in no page but a new one
    spec = items_spec(tmp_path, ["id"])
    appended: list[int] = []

    class Appending(BlockSlicer):
        def took(self, seconds: float) -> None:
            super().took(seconds)
            appended.append(100_000 + len(appended))
            sql(engine, "INSERT INTO items (id, pad) VALUES (:k, repeat('y', 7000))", k=appended[-1])

    found = heap_matching(engine, spec, slicer=Appending(blocks=4, largest=4))
    blocks = [b for (b,) in sql(engine, "SELECT (ctid::text::point)[0]::int FROM items WHERE id >= 100000")]
    assert len(appended) >= end // 4 and max(blocks) >= end  # rows landed past the end the sweep started with
    assert found.rows == 6 + len(appended) == sql(engine, "SELECT count(*) FROM items WHERE filled IS NULL")[0][0]
    assert found.keys == [50, 100, 150, 200, 250]


def slow_items(engine, rows: int = 140) -> None:
    """``rows`` rows, ~14 per block, all matching; ``slow(id)`` sleeps 5 ms per row it is asked about."""
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, pad text NOT NULL DEFAULT repeat('x', 500)) "
                "WITH (autovacuum_enabled = false)")
    sql(engine, "INSERT INTO items (id) SELECT g FROM generate_series(1, :n) g", n=rows)
    sql(engine, "CREATE FUNCTION slow(k bigint) RETURNS boolean LANGUAGE plpgsql AS $$ "
                "BEGIN PERFORM pg_sleep(0.005); RETURN true; END $$")


def test_a_slice_that_hits_statement_timeout_is_halved_and_every_row_still_counted(engine, tmp_path):
    """140 rows at 5 ms: 0.7 s in one statement, under 0.1 s per slice of one or two blocks."""
    slow_items(engine)
    spec = items_spec(tmp_path, ["id"], where="filled IS NULL AND slow(id)")
    sizes = []

    class Watching(BlockSlicer):
        def took(self, seconds: float) -> None:
            sizes.append(self.blocks)
            assert seconds < 0.6  # its count and its sample statement, each under the timeout
            super().took(seconds)

    found = heap_matching(engine, spec, statement_timeout=0.3, slicer=Watching(blocks=64, largest=64, target=10))
    assert found.rows == 140 and found.keys == [1, 2, 3, 4, 5]
    assert sizes and max(sizes) < 64  # the first, whole-table slice timed out and was cut down


def test_one_block_slower_than_statement_timeout_fails_naming_the_setting(engine, tmp_path):
    slow_items(engine, rows=28)  # ~14 rows at 5 ms: 70 ms per block
    spec = items_spec(tmp_path, ["id"], where="filled IS NULL AND slow(id)")
    with pytest.raises(SweepFailed) as caught:
        heap_matching(engine, spec, statement_timeout=0.03)
    message = str(caught.value)
    assert "one block of public.items takes longer than statement_timeout (30 ms)" in message
    assert "Make `where` in" in message and "items_fill.yaml cheaper to evaluate" in message


def test_key_slices_honour_statement_timeout_per_slice(engine, tmp_path):
    """The key-slice sweep (partitioned tables, servers before 14): each slice of ``slice_rows`` keys
    is its own statement under the timeout; a whole-table statement would not fit in it."""
    slow_items(engine)
    spec = items_spec(tmp_path, ["id"], where="filled IS NULL AND slow(id)")
    with pytest.raises(Exception) as caught:
        verify_sweep_keys(engine, spec, slice_rows=140, statement_timeout=0.3)
    assert "statement timeout" in str(caught.value)
    assert verify_sweep_keys(engine, spec, slice_rows=10, statement_timeout=0.3) == 140


def verify_sweep_keys(engine, spec, slice_rows: int, statement_timeout: float) -> int:
    from rowfill.engine.sweep import matching

    return matching(engine, spec, rows=slice_rows, statement_timeout=statement_timeout).rows


def test_a_partitioned_table_is_verified_in_key_slices_over_all_its_partitions(engine, tmp_path):
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int) PARTITION BY RANGE (id)")
    sql(engine, "CREATE TABLE items_low PARTITION OF items FOR VALUES FROM (MINVALUE) TO (500)")
    sql(engine, "CREATE TABLE items_high PARTITION OF items FOR VALUES FROM (500) TO (MAXVALUE)")
    sql(engine, "INSERT INTO items (id) SELECT g FROM generate_series(1, 1000) g")
    spec = items_spec(tmp_path, ["id"])
    run(engine, spec)
    with engine.connect() as conn:
        assert not heap_sweep_possible(conn, pinned_spec(engine, spec).table.sql)
        assert heap_sweep_possible(conn, "public.items_low")
    sql(engine, "INSERT INTO items (id) VALUES (-3), (5000)")
    sql(engine, "UPDATE items SET filled = NULL WHERE id IN (499, 500)")
    with pytest.raises(VerificationFailed) as caught:
        verify_backfill(engine, spec)
    assert "4 rows of public.items still match" in str(caught.value)
    assert "e.g. id -3, 499, 500, 5000." in str(caught.value)


def test_verify_runs_its_slices_under_the_specs_statement_timeout(engine, tmp_path):
    # Verify reads the whole table: without a limit, one slow slice could hold a statement (and a
    # snapshot) far longer than the backfill's own batches are allowed to.
    slow_items(engine, rows=28)
    run(engine, items_spec(tmp_path, ["id"]))
    # the same backfill, its `where` now slow on every row (5 ms each, ~70 ms a block), its limit 30 ms
    spec = items_spec(tmp_path, ["id"], where="slow(id) = (filled IS NULL)", statement_timeout="30ms")
    with pytest.raises(SweepFailed) as caught:
        verify_backfill(engine, spec)
    assert "takes longer than statement_timeout (30 ms)" in str(caught.value)
    assert verify_backfill(engine, spec, statement_timeout=0).remaining == 0  # no limit: the same sweep passes
