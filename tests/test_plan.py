"""Planning against a real PostgreSQL: chunks hold the rows that exist (not min/max arithmetic),
a later plan resumes the stored one, and a spec that does not fit the database is refused
naming the field."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for, write_spec
from rowfill.engine.plan import merge_to_limit, plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import PlanChanged, SpecError
from rowfill.spec.spec import load_spec
from rowfill.store.checkpoint import CheckpointStore


def rows_between(engine, lo: int | None, hi: int, table: str = "users") -> int:
    """Rows in (lo, hi]; lo None = from the start."""
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table} WHERE (CAST(:lo AS bigint) IS NULL OR id > :lo) AND id <= :hi"),
                            {"lo": lo, "hi": hi}).scalar()


def insert_users(engine, ids_sql: str) -> None:
    """Add users whose ids come from ``ids_sql`` (a set-returning SQL expression)."""
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO users (id, first_name, last_name) SELECT g, 'first' || g, 'last' || g FROM {ids_sql} g"))


def assert_covers(engine, chunks, chunk_rows: int, table: str = "users") -> None:
    """Chunks are contiguous, cover every key, hold exactly chunk_rows rows except the last, none empty."""
    with engine.connect() as conn:
        lo_key, hi_key, total = conn.execute(text(f"SELECT min(id), max(id), count(*) FROM {table}")).one()
    assert chunks[0].lo is None and chunks[-1].hi == hi_key  # the first chunk starts from the start, below lo_key
    for before, after in zip(chunks, chunks[1:]):
        assert before.hi == after.lo, f"gap or overlap between chunk {before.chunk_no} and {after.chunk_no}"
    counts = [rows_between(engine, c.lo, c.hi, table) for c in chunks]
    assert counts == [c.est_rows for c in chunks]
    assert all(n == chunk_rows for n in counts[:-1]), counts
    assert 0 < counts[-1] <= chunk_rows
    assert sum(counts) == total


def run_all(engine, spec, chunks):
    return [ChunkRunner(engine, spec).run(c.chunk_no) for c in chunks]


def unfilled(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NULL")).scalar()


# -- chunk boundaries --------------------------------------------------------------------------


def test_sparse_keys_give_full_chunks(engine, tmp_path):
    make_users(engine, 5_500, step=1000)  # ids 1, 1001, 2001, ... 5,499,001
    chunks = plan_backfill(engine, spec_for(tmp_path, chunk_rows=1000))
    assert [c.chunk_no for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert all(c.of == 6 for c in chunks)
    assert_covers(engine, chunks, 1000)
    assert [c.est_rows for c in chunks] == [1000] * 5 + [500]


def test_a_huge_gap_in_the_keys_gives_no_empty_and_no_huge_chunk(engine, tmp_path):
    make_users(engine, 2_300)
    insert_users(engine, "generate_series(10000000000, 10000002299)")  # 10^10 .. +2,299
    chunks = plan_backfill(engine, spec_for(tmp_path, chunk_rows=1000))
    assert len(chunks) == 5
    assert_covers(engine, chunks, 1000)
    straddling = chunks[2]
    assert (straddling.lo, straddling.hi) == (2000, 10_000_000_699)


def test_an_empty_table_needs_no_chunks(engine, tmp_path):
    make_users(engine, 0)
    spec = spec_for(tmp_path)
    assert plan_backfill(engine, spec) == []
    assert CheckpointStore(engine).chunks(spec.name) == []


def test_labels_name_the_key_range(engine, tmp_path):
    make_users(engine, 1_500)
    chunks = plan_backfill(engine, spec_for(tmp_path, chunk_rows=1000))
    assert [c.label for c in chunks] == ["chunk 1/2 (id 1..1000)", "chunk 2/2 (id 1001..1500)"]
    assert chunks[0].to_xcom()["hi"] == 1000


# -- plans resume ------------------------------------------------------------------------------


def test_a_finished_backfill_plans_nothing(engine, tmp_path):
    make_users(engine, 2_500)
    spec = spec_for(tmp_path)
    run_all(engine, spec, plan_backfill(engine, spec))
    assert unfilled(engine) == 0
    assert plan_backfill(engine, spec) == []
    assert [c.status for c in CheckpointStore(engine).chunks(spec.name)] == ["done"] * 3


def test_an_interrupted_chunk_is_planned_again_with_the_same_number_and_resumes_at_its_cursor(engine, tmp_path):
    make_users(engine, 3_000)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=100)
    first_plan = plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(1)

    checks = iter([None, None, "worker is shutting down"])  # stop before the third batch
    stopped = ChunkRunner(engine, spec, should_stop=lambda: next(checks)).run(2)
    assert (stopped.status, stopped.batches, stopped.cursor) == ("stopped", 2, 1200)

    second_plan = plan_backfill(engine, spec)
    assert second_plan == first_plan[1:]  # chunk 2 (unfinished) and 3 (not started), same numbers and bounds
    assert CheckpointStore(engine).chunk(spec.name, 2).cursor == 1200

    resumed = ChunkRunner(engine, spec).run(2)
    assert (resumed.status, resumed.batches, resumed.rows_seen, resumed.rows_written) == ("done", 8, 800, 800)
    row = CheckpointStore(engine).chunk(spec.name, 2)
    assert (row.rows_seen, row.rows_written, row.batches, row.attempts) == (1000, 1000, 10, 1)  # stopped, not failed
    assert rows_between(engine, 1000, 2000) == 1000 and unfilled(engine) == 1000  # only chunk 3 left
    assert plan_backfill(engine, spec) == first_plan[2:]


def test_rows_added_beyond_the_plan_get_new_chunks_next_time(engine, tmp_path):
    make_users(engine, 2_500)
    spec = spec_for(tmp_path, chunk_rows=1000)
    run_all(engine, spec, plan_backfill(engine, spec))

    insert_users(engine, "generate_series(2501, 4700)")
    new = plan_backfill(engine, spec)
    assert [(c.chunk_no, c.of, c.lo, c.hi, c.est_rows) for c in new] == [
        (4, 6, 2500, 3500, 1000), (5, 6, 3500, 4500, 1000), (6, 6, 4500, 4700, 200)]
    run_all(engine, spec, new)
    assert unfilled(engine) == 0
    assert plan_backfill(engine, spec) == []


def test_rows_added_to_a_table_that_was_empty_are_planned_from_the_start(engine, tmp_path):
    make_users(engine, 0)
    spec = spec_for(tmp_path, chunk_rows=1000)
    assert plan_backfill(engine, spec) == []
    insert_users(engine, "generate_series(501, 1700)")
    chunks = plan_backfill(engine, spec)
    assert [(c.lo, c.hi) for c in chunks] == [(None, 1500), (1500, 1700)]


# -- max_map_length ----------------------------------------------------------------------------


def test_a_plan_never_exceeds_the_map_limit_and_still_covers_every_key(engine, tmp_path):
    make_users(engine, 20_000)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=1000)
    chunks = plan_backfill(engine, spec, limit=5)
    assert 0 < len(chunks) <= 5
    assert chunks[0].lo is None and chunks[-1].hi == 20_000
    assert all(a.hi == b.lo for a, b in zip(chunks, chunks[1:]))
    assert [rows_between(engine, c.lo, c.hi) for c in chunks] == [c.est_rows for c in chunks]
    assert sum(c.est_rows for c in chunks) == 20_000
    run_all(engine, spec, chunks)
    assert unfilled(engine) == 0


def test_unfinished_chunks_count_against_the_map_limit(engine, tmp_path):
    make_users(engine, 3_000)
    spec = spec_for(tmp_path, chunk_rows=1000)
    first = plan_backfill(engine, spec, limit=3)
    assert len(first) == 3
    insert_users(engine, "generate_series(3001, 5000)")
    assert plan_backfill(engine, spec, limit=3) == first  # no room: the new keys wait
    run_all(engine, spec, first)
    later = plan_backfill(engine, spec, limit=3)
    assert [(c.lo, c.hi) for c in later] == [(3000, 4000), (4000, 5000)]


@pytest.mark.parametrize("n, limit", [(20, 5), (21, 5), (11, 10), (3, 10), (1000, 1), (7, 3)])
def test_merging_to_the_limit_keeps_bounds_contiguous(n, limit):
    bounds = [(i * 10, (i + 1) * 10, 10) for i in range(n)]
    merged = merge_to_limit(bounds, limit)
    assert 0 < len(merged) <= limit
    assert merged[0][0] == 0 and merged[-1][1] == n * 10
    assert all(a[1] == b[0] for a, b in zip(merged, merged[1:]))
    assert sum(r for _, _, r in merged) == n * 10


def test_a_smaller_limit_still_caps_the_chunks_handed_to_airflow(engine, tmp_path):
    make_users(engine, 10_000)
    spec = spec_for(tmp_path, chunk_rows=1000)
    assert len(plan_backfill(engine, spec, limit=10)) == 10
    assert len(plan_backfill(engine, spec, limit=5)) <= 5  # e.g. max_map_length lowered between runs


# -- the plan belongs to one meaning ------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"where": "full_name IS NULL OR full_name = ''"}, {"set": {"full_name": "upper(first_name)"}}, {"key": "alt_id"}],
    ids=["where", "set", "key"],
)
def test_changing_what_a_planned_backfill_means_is_refused(engine, tmp_path, change):
    make_users(engine, 1_500)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE users ADD COLUMN alt_id bigint"))
        conn.execute(text("UPDATE users SET alt_id = id * 2"))
        conn.execute(text("ALTER TABLE users ALTER COLUMN alt_id SET NOT NULL"))
        conn.execute(text("CREATE UNIQUE INDEX ON users (alt_id)"))
    spec = spec_for(tmp_path)
    planned = plan_backfill(engine, spec)

    changed = spec_for(tmp_path, **change)
    with pytest.raises(PlanChanged) as caught:
        plan_backfill(engine, changed)
    assert f"rowfill reset {spec.name}" in str(caught.value)
    assert str(changed.source) in str(caught.value)

    # the stored plan is untouched, and `rowfill reset` is the way forward
    assert plan_backfill(engine, spec) == planned
    assert CheckpointStore(engine).reset(spec.name) == 1
    assert len(plan_backfill(engine, changed)) >= 1


def test_tuning_a_planned_backfill_is_allowed(engine, tmp_path):
    make_users(engine, 2_500)
    spec = spec_for(tmp_path, chunk_rows=1000)
    planned = plan_backfill(engine, spec)
    tuned = spec_for(tmp_path, chunk_rows=500, batch_rows=50, pause="10ms", lock_timeout="1s")
    assert plan_backfill(engine, tuned) == planned


# -- schema checks -----------------------------------------------------------------------------


def _no_index(engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE plain (id bigint NOT NULL, first_name text, last_name text, full_name text)"))


def _partial_index(engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE plain (id bigint NOT NULL, first_name text, last_name text, full_name text)"))
        conn.execute(text("CREATE INDEX ON plain (id) WHERE id > 10"))


SCHEMA_ERRORS = [
    ("missing table", None, {"table": "public.nope"}, "table", "table public.nope does not exist"),
    ("missing schema", None, {"table": "nowhere.users"}, "table", "does not exist"),
    ("missing key column", None, {"key": "user_id"}, "key", "column 'user_id' does not exist in public.users"),
    ("missing set column", None, {"set": {"nickname": "first_name"}}, "set", "column 'nickname' does not exist"),
    ("key without index", _no_index, {"table": "plain"}, "key", 'CREATE INDEX CONCURRENTLY ON "public"."plain" (id)'),
    ("key without index shows the plan", _no_index, {"table": "plain"}, "key", 'Seq Scan on plain'),
    ("key with only a partial index", _partial_index, {"table": "plain"}, "key", "CREATE INDEX"),
    ("where syntax error", None, {"where": "full_name IS NULL AND AND"}, "where", "the database rejects this SQL: syntax error"),
    ("where unknown column", None, {"where": "nick IS NULL"}, "where", 'column "nick" does not exist'),
    ("set expression error", None, {"set": {"full_name": "first_name || nope"}}, "set", 'column "nope" does not exist'),
    ("set type error", None, {"set": {"points": "'many'"}}, "set", "invalid input syntax for type integer"),
    ("sql error", None, {"set": None, "where": None,
                         "sql": "INSERT INTO nowhere SELECT * FROM users WHERE id > :lo AND id <= :hi"},
     "sql", 'relation "nowhere" does not exist'),
]


@pytest.mark.parametrize("setup, changes, field, expected", [s[1:] for s in SCHEMA_ERRORS], ids=[s[0] for s in SCHEMA_ERRORS])
def test_a_spec_that_does_not_fit_the_database_is_refused_before_anything_is_planned(engine, tmp_path, setup, changes, field, expected):
    make_users(engine, 100)
    if setup:
        setup(engine)
    spec = load_spec(write_spec(tmp_path, **changes))
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    error = caught.value
    assert (error.source, error.field) == (spec.source, field)
    assert expected in error.problem
    assert str(error).startswith(f"{spec.source}: field '{field}': ")
    assert CheckpointStore(engine).backfill_names() == []  # nothing registered, nothing planned
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NOT NULL OR points <> 0")).scalar() == 0


def _key_table(engine, key_sql: str, ids_sql: str):
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE loose (id bigint {key_sql}, first_name text, last_name text, full_name text)"))
        conn.execute(text("CREATE INDEX ON loose (id)"))
        conn.execute(text(f"INSERT INTO loose (id, first_name, last_name) SELECT {ids_sql}, 'a', 'b' FROM generate_series(1, 3000) g"))


def test_a_nullable_key_is_refused(engine, tmp_path):
    _key_table(engine, "", "CASE WHEN g % 100 = 0 THEN NULL ELSE g END")
    spec = spec_for(tmp_path, table="loose")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "key"


def test_a_non_unique_key_is_refused(engine, tmp_path):
    _key_table(engine, "NOT NULL", "g / 100")
    spec = spec_for(tmp_path, table="loose")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "key"


def test_quoted_mixed_case_names_are_planned(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(text('CREATE SCHEMA "Sales"'))
        conn.execute(text('CREATE TABLE "Sales"."Order Lines" ("LineId" integer PRIMARY KEY, "Total" int)'))
        conn.execute(text('INSERT INTO "Sales"."Order Lines" SELECT g, 0 FROM generate_series(1, 1500) g'))
    spec = spec_for(tmp_path, table='"Sales"."Order Lines"', key='"LineId"', where=None, set={'"Total"': '"LineId" * 2'})
    chunks = plan_backfill(engine, spec)
    assert [(c.lo, c.hi) for c in chunks] == [(None, 1000), (1000, 1500)]
    run_all(engine, spec, chunks)
    with engine.connect() as conn:
        assert conn.execute(text('SELECT count(*) FROM "Sales"."Order Lines" WHERE "Total" = "LineId" * 2')).scalar() == 1500
