"""Keys beyond one integer: uuid, text, timestamp and composite keys are planned and walked with
row-value comparisons, gaps included; labels stay readable; a key without a usable index or
without uniqueness is refused with the reason (and the EXPLAIN that proves a missing index)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from helpers import spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.verify import verify_backfill
from rowfill.errors import SpecError
from rowfill.store.checkpoint import CheckpointStore


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def run_all(engine, spec, **kw):
    return [ChunkRunner(engine, spec, **kw).run(c.chunk_no) for c in plan_backfill(engine, spec)]


def items_table(engine, key_ddl: str, key_expr: str, n: int, delete_where: str | None = None) -> int:
    """``items`` keyed by ``key_expr`` (over g = 1..n), ``done`` NULL and ``hits`` 0; some rows deleted for gaps."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE items ({key_ddl}, label text NOT NULL, done text, hits integer NOT NULL DEFAULT 0)"))
        conn.execute(text(f"INSERT INTO items SELECT {key_expr}, 'item ' || g FROM generate_series(1, :n) g"), {"n": n})
        if delete_where:  # gaps, chosen by the generating number g (recovered from the label)
            conn.execute(text(f"DELETE FROM items i WHERE (SELECT {delete_where} FROM (SELECT split_part(i.label, ' ', 2)::int AS g) s)"))
        conn.execute(text("ANALYZE items"))
        return conn.execute(text("SELECT count(*) FROM items")).scalar()


def items_spec(tmp_path, key, **fields):
    # not idempotent on purpose: a batch applied twice shows as hits = 2
    return spec_for(tmp_path, name="items_done", table="items", key=key, where="done IS NULL",
                    set={"done": "upper(label)", "hits": "hits + 1"}, chunk_rows=700, batch_rows=90, **fields)


def assert_every_row_once(engine, spec, rows: int) -> None:
    assert scalar(engine, "SELECT count(*) FROM items WHERE done IS DISTINCT FROM upper(label) OR hits <> 1") == 0
    chunks = CheckpointStore(engine).chunks(spec.name)
    assert {c.status for c in chunks} == {"done"}
    assert sum(c.rows_seen for c in chunks) == rows
    assert sum(c.rows_written for c in chunks) == rows
    assert sum(c.est_rows for c in chunks) == rows
    assert verify_backfill(engine, spec).remaining == 0


KEYS = [
    ("uuid", "id uuid PRIMARY KEY", "md5('u' || g)::uuid", "g % 3 = 0", "id"),
    ("text", "code text PRIMARY KEY", "'code-' || g", "g % 5 IN (1, 2)", "code"),
    ("timestamp", "at timestamptz PRIMARY KEY", "timestamptz '2024-01-01' + g * interval '90 seconds'",
     "g BETWEEN 500 AND 1500", "at"),
    ("composite", "tenant_id integer NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id)",
     "g % 4, g * 10", "g % 7 = 0", ["tenant_id", "id"]),
]


@pytest.mark.parametrize("key_ddl, key_expr, gaps, key", [k[1:] for k in KEYS], ids=[k[0] for k in KEYS])
def test_any_orderable_key_is_walked_once_with_gaps(engine, tmp_path, key_ddl, key_expr, gaps, key):
    n = items_table(engine, key_ddl, key_expr, 3_000, delete_where=gaps)
    assert n < 3_000
    spec = items_spec(tmp_path, key)
    chunks = plan_backfill(engine, spec)
    assert [c.est_rows for c in chunks] == [700] * (n // 700) + ([n % 700] if n % 700 else [])
    assert chunks[0].lo is None  # no "minimum minus one" for these keys: the first chunk starts open
    assert all(a.hi == b.lo for a, b in zip(chunks, chunks[1:]))
    results = [ChunkRunner(engine, spec, label=c.label).run(c.chunk_no) for c in chunks]
    assert all(r.status == "done" for r in results)
    assert_every_row_once(engine, spec, n)
    assert plan_backfill(engine, spec) == []


def test_a_stopped_composite_chunk_resumes_after_its_cursor(engine, tmp_path):
    n = items_table(engine, "tenant_id integer NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id)", "g % 3, g", 2_000)
    spec = items_spec(tmp_path, ["tenant_id", "id"])
    first = plan_backfill(engine, spec)
    checks = iter([None, None, None, "shutting down"])
    stopped = ChunkRunner(engine, spec, should_stop=lambda: next(checks, None)).run(first[0].chunk_no)
    assert (stopped.status, stopped.batches) == ("stopped", 3)
    assert isinstance(stopped.cursor, list) and len(stopped.cursor) == 2
    assert scalar(engine, "SELECT count(*) FROM items WHERE done IS NOT NULL") == 270
    assert plan_backfill(engine, spec) == first  # same chunks, the stopped one among them
    run_all(engine, spec)
    assert_every_row_once(engine, spec, n)


def test_labels_show_first_and_last_key_of_each_chunk(engine, tmp_path):
    items_table(engine, "code text PRIMARY KEY", "'k' || lpad(g::text, 4, '0')", 1_500)
    chunks = plan_backfill(engine, items_spec(tmp_path, "code"))
    assert [c.label for c in chunks] == ["chunk 1/3 (code k0001..k0700)", "chunk 2/3 (code k0701..k1400)",
                                         "chunk 3/3 (code k1401..k1500)"]


def test_composite_and_uuid_labels_stay_short(engine, tmp_path):
    items_table(engine, "tenant_id integer NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id)", "g / 1000, g", 1_200)
    chunks = plan_backfill(engine, items_spec(tmp_path, ["tenant_id", "id"]))
    assert chunks[0].label == "chunk 1/2 ((tenant_id, id) (0, 1)..(0, 700))"
    assert chunks[1].label == "chunk 2/2 ((tenant_id, id) (0, 701)..(1, 1200))"


def test_sql_mode_binds_the_batch_first_and_last_key_for_any_key(engine, tmp_path):
    n = items_table(engine, "id uuid PRIMARY KEY", "md5('x' || g)::uuid", 1_000)
    spec = spec_for(tmp_path, name="items_sql", table="items", key="id", where="done IS NULL", set=None,
                    sql="UPDATE items SET done = upper(label), hits = hits + 1 WHERE id BETWEEN :first AND :last",
                    chunk_rows=400, batch_rows=60)
    run_all(engine, spec)
    assert scalar(engine, "SELECT count(*) FROM items WHERE done IS DISTINCT FROM upper(label) OR hits <> 1") == 0
    assert sum(c.rows_written for c in CheckpointStore(engine).chunks(spec.name)) == n


def test_sql_mode_with_a_composite_key_binds_each_column(engine, tmp_path):
    items_table(engine, "tenant_id integer NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id)", "g % 5, g", 1_000)
    spec = spec_for(tmp_path, name="items_sql", table="items", key=["tenant_id", "id"], where="done IS NULL", set=None,
                    sql="UPDATE items SET done = upper(label), hits = hits + 1 "
                        "WHERE (tenant_id, id) BETWEEN (:first_tenant_id, :first_id) AND (:last_1, :last_2)",
                    chunk_rows=400, batch_rows=60)
    run_all(engine, spec)
    assert scalar(engine, "SELECT count(*) FROM items WHERE done IS DISTINCT FROM upper(label) OR hits <> 1") == 0


def test_sql_mode_with_lo_and_hi_on_a_uuid_key_is_refused_with_the_alternative(engine, tmp_path):
    items_table(engine, "id uuid PRIMARY KEY", "md5('x' || g)::uuid", 10)
    spec = spec_for(tmp_path, name="items_sql", table="items", key="id", where=None, set=None,
                    sql="UPDATE items SET done = 'x' WHERE id > :lo AND id <= :hi")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "sql"
    assert "WHERE id BETWEEN :first AND :last" in caught.value.problem


# -- refused keys -------------------------------------------------------------------------------


def refused(engine, tmp_path, key, expected: list[str]):
    spec = items_spec(tmp_path, key)
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "key"
    for part in expected:
        assert part in caught.value.problem, caught.value.problem
    assert CheckpointStore(engine).backfill_names() == []
    return caught.value.problem


def test_a_composite_key_without_an_index_in_its_order_is_refused_showing_the_plan(engine, tmp_path):
    items_table(engine, "tenant_id integer NOT NULL, id bigint NOT NULL", "g % 4, g", 2_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE UNIQUE INDEX ON items (id, tenant_id)"))  # the wrong column order for this walk
    refused(engine, tmp_path, ["tenant_id", "id"],
            ["no usable btree index", 'CREATE INDEX CONCURRENTLY ON "public"."items" (tenant_id, id)',
             'EXPLAIN SELECT "tenant_id", "id"', "Sort Key: tenant_id, id", "Seq Scan on items"])


def test_a_uuid_key_without_an_index_is_refused_with_the_explain(engine, tmp_path):
    items_table(engine, "id uuid NOT NULL", "md5('x' || g)::uuid", 500)
    refused(engine, tmp_path, "id", ["no usable btree index", "Seq Scan on items"])


def test_a_composite_key_that_is_not_unique_is_refused(engine, tmp_path):
    items_table(engine, "tenant_id integer NOT NULL, id bigint NOT NULL", "g % 4, g / 2", 500)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ON items (tenant_id, id)"))
    refused(engine, tmp_path, ["tenant_id", "id"], ["not unique", "CREATE UNIQUE INDEX CONCURRENTLY"])


def test_a_text_key_that_is_not_unique_is_refused(engine, tmp_path):
    items_table(engine, "code text NOT NULL", "'c' || (g / 3)", 300)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ON items (code)"))
    refused(engine, tmp_path, "code", ["column 'code' is not unique"])


def test_a_nullable_column_of_a_composite_key_is_refused(engine, tmp_path):
    items_table(engine, "tenant_id integer, id bigint NOT NULL", "g % 4, g", 300)
    with engine.begin() as conn:
        conn.execute(text("CREATE UNIQUE INDEX ON items (tenant_id, id)"))
    refused(engine, tmp_path, ["tenant_id", "id"], ["column 'tenant_id' allows NULL", "SET NOT NULL"])


def test_a_composite_key_is_unique_when_one_of_its_columns_is(engine, tmp_path):
    n = items_table(engine, "tenant_id integer NOT NULL, id bigint NOT NULL UNIQUE", "g % 4, g", 900)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ON items (tenant_id, id)"))  # walkable, but not unique itself
    spec = items_spec(tmp_path, ["tenant_id", "id"])
    run_all(engine, spec)
    assert_every_row_once(engine, spec, n)
