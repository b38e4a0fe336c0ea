"""The whole key space, for every key kind, at the edges of its type: the lowest chunk starts from the
start (no "minimum minus one"), new chunks go above the last, done chunks holding rows that match
`where` again are walked again, and verify looks at the whole table in short slices.

Every test asserts the values in the table: each row written exactly once (`points + 10` is not
idempotent, so a second write shows), no row left out."""

from __future__ import annotations

import importlib
import sys

import pytest
from sqlalchemy import text

from helpers import spec_for
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.plan import plan_backfill
from rowfill.engine.verify import VerificationFailed, verify_backfill
from rowfill.store.checkpoint import CheckpointStore


def sql(engine, statement: str, **params):
    with engine.begin() as conn:
        result = conn.execute(text(statement), params)
        return result.scalar() if result.returns_rows else None


def run(engine, spec, **kw) -> list:
    """One run as `rowfill run` does it: plan, then every chunk handed out."""
    chunks = plan_backfill(engine, spec, **kw)
    for chunk in chunks:
        assert run_chunk(engine, spec, chunk.chunk_no, label=chunk.label).kind == "done"
    return chunks


# (id, key DDL, key columns, initial keys as SQL over g = 1..100, keys added later: below the first,
#  inside the planned range (in a gap), above the last) -- the type's minimum and maximum among them
KINDS = [
    ("smallint", "id smallint PRIMARY KEY", ["id"], "g * 3 - 150",
     ["-32768", "-32767", "-1000"], ["-146", "1"], ["32767", "1000"]),
    ("integer", "id integer PRIMARY KEY", ["id"], "g * 3 - 150",
     ["-2147483648", "-2147483647"], ["-145", "2"], ["2147483647"]),
    ("bigint", "id bigint PRIMARY KEY", ["id"], "g * 3 - 150",
     ["-9223372036854775808", "-9223372036854775807"], ["-143", "4"], ["9223372036854775807", "9223372036854775806"]),
    ("numeric", "id numeric PRIMARY KEY", ["id"], "(g - 50) * 1.25",
     ["-1e30", "-123456789012345678901234567890.123456789"], ["0.001", "-0.0001", "1.2500001"],
     ["1e30", "99999999999999999999.99999999999999999999"]),
    ("numeric infinities and NaN", "id numeric PRIMARY KEY", ["id"], "(g - 50) * 1.25",
     ["'-Infinity'"], ["0.001"], ["'Infinity'", "'NaN'"]),
    ("double precision", "id double precision PRIMARY KEY", ["id"], "(g - 50) / 3.0",
     ["'-Infinity'", "float8 '-1.7976931348623157e308'"], ["float8 '5e-324'", "float8 '0.1'"],
     ["float8 '1.7976931348623157e308'", "'Infinity'", "'NaN'"]),
    ("text", "id text PRIMARY KEY", ["id"], "'m' || lpad(g::text, 4, '0')",
     ["''", "'A'", "'0'"], ["'m0001x'", "'m0050 '"], ["'zzzz'", "'~~'"]),
    ("uuid", "id uuid PRIMARY KEY", ["id"], "md5('u' || g)::uuid",
     ["'00000000-0000-0000-0000-000000000000'"], ["md5('later')::uuid"], ["'ffffffff-ffff-ffff-ffff-ffffffffffff'"]),
    ("timestamptz", "id timestamptz PRIMARY KEY", ["id"], "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'",
     ["'-infinity'", "'4713-01-01 00:00:00+00 BC'", "'1999-12-31 23:59:59.999999+00'"],
     ["timestamptz '2024-01-01 05:30:00.123456+00'"], ["'infinity'", "'294276-12-31 23:59:59.999999+00'"]),
    ("composite", "tenant_id integer NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id)", ["tenant_id", "id"],
     "g % 4, g * 10", ["-2147483648, -9223372036854775808", "0, -5"], ["1, 15", "2, 0"],
     ["2147483647, 9223372036854775807", "3, 100000"]),
]
IDS = [k[0] for k in KINDS]
PARAMS = [k[1:] for k in KINDS]


def make_items(engine, key_ddl: str, columns: list[str], initial: str) -> int:
    sql(engine, f"CREATE TABLE items ({key_ddl}, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, f"INSERT INTO items ({', '.join(columns)}) SELECT {initial} FROM generate_series(1, 100) g")
    return 100


def add_items(engine, columns: list[str], keys: list[str]) -> None:
    sql(engine, f"INSERT INTO items ({', '.join(columns)}) VALUES " + ", ".join(f"({k})" for k in keys))


def items_spec(tmp_path, key, **fields):
    fields = {"name": "items_fill", "table": "public.items", "key": key if len(key) > 1 else key[0],
              "where": "filled IS NULL", "set": {"filled": "1", "points": "points + 10"},
              "chunk_rows": 20, "batch_rows": 7, **fields}
    return spec_for(tmp_path, **fields)


def wrong(engine) -> int:
    """Rows not written exactly once."""
    return sql(engine, "SELECT count(*) FROM items WHERE filled IS DISTINCT FROM 1 OR points <> 10")


@pytest.mark.parametrize("key_ddl, columns, initial, below, inside, above", PARAMS, ids=IDS)
def test_rows_added_below_inside_and_above_a_finished_plan_are_written_once_by_the_next_run(
        engine, tmp_path, key_ddl, columns, initial, below, inside, above):
    rows = make_items(engine, key_ddl, columns, initial)
    spec = items_spec(tmp_path, columns)
    first = run(engine, spec)
    assert first[0].lo is None and len(first) == 5  # from the start of the key space; 100 rows / 20
    assert wrong(engine) == 0
    assert verify_backfill(engine, spec).remaining == 0

    later = below + inside + above
    add_items(engine, columns, later)
    with pytest.raises(VerificationFailed) as caught:  # verify looks at the whole table, not the planned range
        verify_backfill(engine, spec, slice_rows=9)
    assert f"{len(later)} rows of public.items still match" in str(caught.value)

    second = {c.chunk_no for c in run(engine, spec)}
    assert 1 in second and max(second) > 5  # the lowest chunk walked again (rows below), new chunks above
    assert wrong(engine) == 0, "a row was missed or written twice"
    assert sql(engine, "SELECT count(*) FROM items") == rows + len(later)
    assert verify_backfill(engine, spec, slice_rows=9).remaining == 0
    assert run(engine, spec) == []  # nothing left: a third run plans nothing
    assert wrong(engine) == 0
    chunks = CheckpointStore(engine).chunks(spec.name)
    assert sum(c.rows_written for c in chunks) == rows + len(later)


@pytest.mark.parametrize("key_ddl, columns, initial, below, inside, above", PARAMS, ids=IDS)
def test_keys_at_the_edges_of_their_type_are_written_in_the_first_run(
        engine, tmp_path, key_ddl, columns, initial, below, inside, above):
    make_items(engine, key_ddl, columns, initial)
    add_items(engine, columns, below + inside + above)
    spec = items_spec(tmp_path, columns, chunk_rows=3, batch_rows=2)  # edges alone in their chunks and batches
    run(engine, spec)
    assert wrong(engine) == 0
    assert verify_backfill(engine, spec).remaining == 0


@pytest.mark.parametrize("key_ddl, columns, initial, below, inside, above", PARAMS, ids=IDS)
def test_without_where_every_row_is_written_exactly_once_and_new_keys_above_get_new_chunks(
        engine, tmp_path, key_ddl, columns, initial, below, inside, above):
    """Without `where` rowfill cannot tell a row that still needs the work: a later run walks only keys
    above the last planned chunk. Rows added below or inside the planned range are left to the application."""
    make_items(engine, key_ddl, columns, initial)
    spec = items_spec(tmp_path, columns, where=None)
    run(engine, spec)
    assert sql(engine, "SELECT count(*) FROM items WHERE points <> 10") == 0
    add_items(engine, columns, below + inside + above)
    run(engine, spec)
    run(engine, spec)
    keys = ", ".join(columns)
    points = dict(sql_rows(engine, f"SELECT CAST(({keys}) AS text), points FROM items"))
    added_above = {sql(engine, f"SELECT CAST(({k}) AS text) FROM (SELECT {k}) AS s ({keys})") for k in above}
    added_elsewhere = {sql(engine, f"SELECT CAST(({k}) AS text) FROM (SELECT {k}) AS s ({keys})") for k in below + inside}
    assert {k for k, p in points.items() if p == 10} == set(points) - added_elsewhere
    assert {k for k, p in points.items() if p == 0} == added_elsewhere
    assert added_above <= {k for k, p in points.items() if p == 10}


def sql_rows(engine, statement: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(statement))]


# -- the lowest chunk and sql mode ---------------------------------------------------------------


def test_sql_mode_lo_bind_reaches_the_bigint_minimum(engine, tmp_path):
    """`id > :lo` in the first batch: :lo is below the first key, even below bigint's minimum."""
    sql(engine, "CREATE TABLE ledger (id bigint PRIMARY KEY, amount_cents bigint NOT NULL, amount numeric)")
    sql(engine, "INSERT INTO ledger VALUES (-9223372036854775808, 5, NULL), (-1, 7, NULL), (1, 10, NULL), "
                "(9223372036854775807, 3, NULL)")
    spec = spec_for(tmp_path, name="ledger_amount", table="ledger", where="amount IS NULL", set=None,
                    sql="UPDATE ledger SET amount = amount_cents / 100.0 WHERE id > :lo AND id <= :hi AND amount IS NULL",
                    chunk_rows=2, batch_rows=1)
    run(engine, spec)
    assert sql(engine, "SELECT count(*) FROM ledger WHERE amount IS DISTINCT FROM amount_cents / 100.0") == 0


def test_estimated_planning_starts_from_the_start_at_the_bigint_minimum(engine, tmp_path):
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (id) SELECT (g - 2500) * 3689348814741910 FROM generate_series(1, 5000) g")
    sql(engine, "INSERT INTO items (id) VALUES (-9223372036854775808), (9223372036854775807)")
    sql(engine, "ANALYZE items")
    spec = items_spec(tmp_path, ["id"], planning="estimated", chunk_rows=500, batch_rows=100)
    chunks = run(engine, spec)
    assert chunks[0].lo is None and chunks[-1].hi == 9223372036854775807
    assert all(a.hi == b.lo for a, b in zip(chunks, chunks[1:]))
    assert wrong(engine) == 0
    sql(engine, "INSERT INTO items (id) VALUES (-9223372036854775807), (17)")
    run(engine, spec)
    assert wrong(engine) == 0


def test_a_stored_plan_whose_first_chunk_started_at_a_key_is_opened_and_rows_below_are_written(engine, tmp_path):
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (id) SELECT g FROM generate_series(1000, 1099) g")
    spec = items_spec(tmp_path, ["id"])
    run(engine, spec)
    sql(engine, "UPDATE rowfill.chunks SET lo = '999' WHERE backfill = :n AND chunk_no = 1", n=spec.name)  # an older plan
    add_items(engine, ["id"], ["5", "-20", "-9223372036854775808", "2500"])
    run(engine, spec)
    assert CheckpointStore(engine).chunk(spec.name, 1).lo is None
    assert wrong(engine) == 0


# -- re-sweep ------------------------------------------------------------------------------------


def test_a_reopened_chunk_walks_again_from_its_start_and_keeps_counting_rows_written(engine, tmp_path):
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (id) SELECT g * 10 FROM generate_series(1, 100) g")
    spec = items_spec(tmp_path, ["id"])
    run(engine, spec)
    sql(engine, "UPDATE items SET filled = NULL, points = 0 WHERE id IN (250, 260)")  # chunk 2 again (the application)
    again = plan_backfill(engine, spec)
    assert [c.chunk_no for c in again] == [2]
    row = CheckpointStore(engine).chunk(spec.name, 2)
    assert (row.status, row.cursor, row.finished_at, row.rows_seen, row.rows_written) == ("pending", None, None, 0, 20)
    assert run_chunk(engine, spec, 2).kind == "done"
    row = CheckpointStore(engine).chunk(spec.name, 2)
    assert (row.status, row.rows_seen, row.rows_written) == ("done", 20, 22)
    assert wrong(engine) == 0


def test_reopened_chunks_count_toward_max_map_length(engine, tmp_path):
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (id) SELECT g * 2 FROM generate_series(1, 100) g")  # chunks of 2..40, 42..80, ...
    spec = items_spec(tmp_path, ["id"])
    run(engine, spec)
    add_items(engine, ["id"], ["-1", "45", "125", *map(str, range(201, 261))])  # chunks 1, 2, 4 and 3 new chunks' worth
    chunks = plan_backfill(engine, spec, limit=4)
    assert [c.chunk_no for c in chunks] == [1, 2, 4, 6]  # the reopened ones, then the room left, for new keys
    assert (chunks[-1].lo, chunks[-1].hi) == (200, 260)  # grown to fit the room
    for chunk in chunks:
        run_chunk(engine, spec, chunk.chunk_no)
    assert wrong(engine) == 0


def test_sql_mode_never_walks_a_done_chunk_again_and_verify_says_so(engine, tmp_path):
    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (id) SELECT g * 2 FROM generate_series(1, 100) g")
    spec = items_spec(tmp_path, ["id"], set=None,
                      sql="UPDATE items SET filled = 1, points = points + 10 WHERE id > :lo AND id <= :hi AND filled IS NULL")
    run(engine, spec)
    add_items(engine, ["id"], ["51", "500"])  # 51: inside a done chunk; 500: above the plan
    chunks = run(engine, spec)
    assert [c.chunk_no for c in chunks] == [6]  # only new keys above; no done chunk reopened
    assert sql(engine, "SELECT count(*) FROM items WHERE filled IS NULL") == 1  # id 51
    with pytest.raises(VerificationFailed) as caught:
        verify_backfill(engine, spec)
    assert "1 rows of public.items still match" in str(caught.value) and "id 51" in str(caught.value)
    assert "never walks a done chunk again" in str(caught.value)
    assert sql(engine, "SELECT count(*) FROM items WHERE points NOT IN (0, 10)") == 0


TRANSFORM = """
def fill(rows):
    return [{"filled": 1, "points": r["points"] + 10} for r in rows]
"""


def test_transform_mode_walks_reopened_chunks_and_writes_each_row_once(engine, tmp_path, monkeypatch):
    (tmp_path / "keyspace_rule.py").write_text(TRANSFORM)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("keyspace_rule", None)
    importlib.invalidate_caches()
    sql(engine, "CREATE TABLE items (code text PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (code) SELECT 'k' || lpad(g::text, 3, '0') FROM generate_series(1, 100) g")
    spec = items_spec(tmp_path, ["code"], set=None, transform="keyspace_rule:fill", select=["points"],
                      returns=["filled", "points"])
    run(engine, spec)
    add_items(engine, ["code"], ["'a'", "'k050x'", "'z'"])
    run(engine, spec)
    assert wrong(engine) == 0
    assert verify_backfill(engine, spec).remaining == 0


# -- verify in slices ------------------------------------------------------------------------------


@pytest.mark.parametrize("slice_rows", [1, 7, 10_000])
def test_verify_counts_every_matching_row_of_the_table_in_slices_and_names_the_first_keys(engine, tmp_path, slice_rows):
    sql(engine, "CREATE TABLE items (tenant_id int NOT NULL, id bigint NOT NULL, filled int, points int NOT NULL DEFAULT 0, "
                "PRIMARY KEY (tenant_id, id))")
    sql(engine, "INSERT INTO items (tenant_id, id) SELECT g % 3, g FROM generate_series(1, 300) g")
    spec = items_spec(tmp_path, ["tenant_id", "id"])
    run(engine, spec)
    add_items(engine, ["tenant_id", "id"], ["-5, 0", "1, 1000", "9, -1", "2, 7"])  # below, inside, above, inside
    sql(engine, "UPDATE items SET filled = NULL WHERE id IN (100, 200)")  # (1, 100), (2, 200)
    with pytest.raises(VerificationFailed) as caught:
        verify_backfill(engine, spec, slice_rows=slice_rows)
    message = str(caught.value)
    assert "6 rows of public.items still match" in message
    assert "e.g. (tenant_id, id) (-5, 0), (1, 100), (1, 1000), (2, 7), (2, 200)" in message


def test_a_dry_run_shows_the_done_chunks_a_run_would_walk_again_and_changes_nothing(engine, tmp_path):
    from rowfill.engine.dryrun import dry_run

    sql(engine, "CREATE TABLE items (id bigint PRIMARY KEY, filled int, points int NOT NULL DEFAULT 0)")
    sql(engine, "INSERT INTO items (id) SELECT g * 2 FROM generate_series(1, 100) g")
    spec = items_spec(tmp_path, ["id"])
    run(engine, spec)
    add_items(engine, ["id"], ["-7", "101"])  # below the first key (chunk 1) and inside chunk 3
    report = dry_run(engine, spec)
    assert report.table == "public.items"
    assert [(c["label"], c["status"]) for c in report.chunks] == [("chunk 1/5 (id 2..40)", "again"),
                                                                  ("chunk 3/5 (id 82..120)", "again")]
    assert report.rows_to_change == 2
    assert sql(engine, "SELECT count(*) FROM items WHERE filled IS NULL") == 2  # nothing changed
    assert {c.status for c in CheckpointStore(engine).chunks(spec.name)} == {"done"}
