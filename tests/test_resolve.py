"""Name resolution: an unqualified `table` means what it means on the target connection (its
search_path), is resolved once when planning, and the backfill refuses to go on when that name
later means another relation. Never a stale copy in another schema, never a partial run reported
as success."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from helpers import write_spec
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.database import engine_from_url
from rowfill.engine.dryrun import dry_run
from rowfill.engine.plan import plan_backfill
from rowfill.engine.verify import verify_backfill
from rowfill.errors import PlanChanged, SpecError
from rowfill.ops import cli
from rowfill.spec.spec import load_spec
from rowfill.store.checkpoint import CheckpointStore


def sql(engine, statement: str, **params):
    with engine.begin() as conn:
        result = conn.execute(text(statement), params)
        return result.scalar() if result.returns_rows else None


def two_orders(engine, app_rows: int = 500, old_rows: int = 100, name: str = "orders") -> None:
    """``app.<name>`` (the live table) and ``public.<name>`` (an old copy), both with total NULL."""
    for schema, rows in (("app", app_rows), ("public", old_rows)):
        sql(engine, f"CREATE SCHEMA IF NOT EXISTS {schema}")
        sql(engine, f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, total_cents int NOT NULL, total numeric)")
        sql(engine, f"INSERT INTO {schema}.{name} SELECT g, g, NULL FROM generate_series(1, :n) g", n=rows)


def set_search_path(engine, path: str) -> None:
    """As a DBA would: for every new session of the database (the case's ALTER DATABASE ... SET)."""
    db = sql(engine, "SELECT current_database()")
    sql(engine, f'ALTER DATABASE "{db}" SET search_path = {path}')


def orders_spec(tmp_path, **fields):
    fields = {"table": "orders", "where": "total IS NULL", "set": {"total": "total_cents / 100.0"},
              "chunk_rows": 200, "batch_rows": 50, **fields}
    return load_spec(write_spec(tmp_path, name="orders_total", **fields))


def rowfill(tmp_path, db_url, *args) -> int:
    return cli.main(["--specs-dir", str(tmp_path), "--db", db_url, *args])


def left(engine, table: str) -> int:
    return sql(engine, f"SELECT count(*) FROM {table} WHERE total IS NULL")


def stored(engine, name: str) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT table_schema, table_name, CAST(table_oid AS bigint) FROM rowfill.backfills "
                                       "WHERE name = :n"), {"n": name}).one())


def oid(engine, table: str) -> int:
    return sql(engine, f"SELECT CAST(to_regclass('{table}') AS oid)::bigint")


def test_an_unqualified_table_is_the_one_the_search_path_finds_and_the_old_copy_is_untouched(db_url, engine, tmp_path, capsys):
    two_orders(engine, app_rows=5_000, old_rows=1_000)
    set_search_path(engine, "app, public")
    orders_spec(tmp_path)
    assert rowfill(tmp_path, db_url, "run", "orders_total") == 0
    assert "on app.orders" in capsys.readouterr().out
    assert left(engine, "app.orders") == 0
    assert sql(engine, "SELECT count(*) FROM app.orders WHERE total <> total_cents / 100.0") == 0
    assert sql(engine, "SELECT count(*) FROM public.orders WHERE total IS NOT NULL") == 0  # the old copy: not one row
    assert stored(engine, "orders_total") == ("app", "orders", oid(engine, "app.orders"))
    # status names the table it works on, schema-qualified
    assert rowfill(tmp_path, db_url, "status", "orders_total", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["table"] == "app.orders"


def test_a_quoted_mixed_case_name_is_resolved_as_postgresql_reads_it(db_url, engine, tmp_path):
    two_orders(engine, app_rows=300, old_rows=50, name='"Orders"')
    two_orders(engine, app_rows=40, old_rows=30, name="orders")  # same letters, other case: other tables
    set_search_path(engine, "app, public")
    orders_spec(tmp_path, table='"Orders"')
    assert rowfill(tmp_path, db_url, "run", "orders_total") == 0
    assert left(engine, 'app."Orders"') == 0
    assert left(engine, 'public."Orders"') == 50
    assert left(engine, "app.orders") == 40 and left(engine, "public.orders") == 30
    assert stored(engine, "orders_total")[:2] == ("app", "Orders")


def test_a_table_dropped_and_created_again_between_runs_is_refused_with_nothing_written(db_url, engine, tmp_path, capsys):
    two_orders(engine, app_rows=1_000)
    set_search_path(engine, "app, public")
    spec = orders_spec(tmp_path)
    eng = engine_from_url(db_url)  # new sessions: they see the database's search_path
    try:
        chunks = plan_backfill(eng, spec)
        assert run_chunk(eng, spec, chunks[0].chunk_no).kind == "done"  # one chunk done, four to go
        sql(engine, "DROP TABLE app.orders")
        sql(engine, "CREATE TABLE app.orders (id int PRIMARY KEY, total_cents int NOT NULL, total numeric)")
        sql(engine, "INSERT INTO app.orders SELECT g, g, NULL FROM generate_series(1, 1000) g")

        # every entry point refuses, naming the field and the way out
        for attempt in (lambda: run_chunk(eng, spec, chunks[1].chunk_no), lambda: plan_backfill(eng, spec),
                        lambda: verify_backfill(eng, spec), lambda: dry_run(eng, spec)):
            with pytest.raises(SpecError) as caught:
                attempt()
            assert caught.value.field == "table"
            assert "app.orders is now another relation" in caught.value.problem
            assert "rowfill reset orders_total" in caught.value.problem
        assert rowfill(tmp_path, db_url, "run", "orders_total") == 1
        assert "field 'table'" in capsys.readouterr().err
        assert left(engine, "app.orders") == 1000 and left(engine, "public.orders") == 100  # nothing written anywhere
        assert CheckpointStore(eng).chunk("orders_total", 2).rows_written == 0

        # resetting is the way forward: the new table is planned and filled
        assert rowfill(tmp_path, db_url, "reset", "orders_total", "--yes") == 0
        assert rowfill(tmp_path, db_url, "run", "orders_total") == 0
        assert left(engine, "app.orders") == 0 and left(engine, "public.orders") == 100
    finally:
        eng.dispose()


def test_a_search_path_that_finds_another_table_later_is_refused(db_url, engine, tmp_path, capsys):
    two_orders(engine, app_rows=600)
    set_search_path(engine, "app, public")
    orders_spec(tmp_path)
    assert rowfill(tmp_path, db_url, "run", "orders_total") == 0
    sql(engine, "UPDATE app.orders SET total = NULL WHERE id % 2 = 0")  # work for the next run
    set_search_path(engine, "public, app")
    assert rowfill(tmp_path, db_url, "run", "orders_total") == 1
    err = capsys.readouterr().err
    assert "field 'table'" in err and "now resolves to public.orders" in err and "search_path public, app" in err
    assert left(engine, "public.orders") == 100 and left(engine, "app.orders") == 300  # nothing written


def test_a_view_is_not_a_table(engine, tmp_path):
    two_orders(engine)
    sql(engine, "CREATE VIEW public.orders_v AS SELECT * FROM app.orders")
    spec = orders_spec(tmp_path, table="orders_v")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "table" and "public.orders_v is a view, not a table" in caught.value.problem
    assert CheckpointStore(engine).backfill_names() == []


def test_a_missing_unqualified_table_names_the_search_path_it_was_looked_up_with(engine, tmp_path):
    spec = orders_spec(tmp_path, table="nowhere")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "table"
    assert "table nowhere does not exist" in caught.value.problem and "search_path" in caught.value.problem


# -- sql mode: the statement must work on the resolved table -------------------------------------


SQL_UPDATE = "UPDATE {t} SET total = total_cents / 100.0 WHERE id > :lo AND id <= :hi AND total IS NULL"


@pytest.mark.parametrize("statement", [
    SQL_UPDATE.format(t="orders"),
    # the same write hidden in a data-modifying CTE, schema-qualified
    "WITH w AS (" + SQL_UPDATE.format(t="public.orders") + " RETURNING id) SELECT count(*) FROM w",
], ids=["update", "cte"])
def test_sql_mode_writing_a_same_named_table_in_another_schema_is_refused(engine, tmp_path, statement):
    two_orders(engine)
    # the table is app.orders, but the statement's plain `orders` is public.orders on this connection
    spec = orders_spec(tmp_path, table="app.orders", set=None, sql=statement)
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "sql"
    assert "writes public.orders, but the backfill's table is app.orders" in caught.value.problem
    assert CheckpointStore(engine).backfill_names() == []
    assert left(engine, "app.orders") == 500 and left(engine, "public.orders") == 100


def test_sql_mode_resolving_both_names_the_same_way_runs(db_url, engine, tmp_path):
    two_orders(engine)
    set_search_path(engine, "app, public")
    orders_spec(tmp_path, set=None, sql=SQL_UPDATE.format(t="orders"))
    assert rowfill(tmp_path, db_url, "run", "orders_total") == 0
    assert left(engine, "app.orders") == 0 and left(engine, "public.orders") == 100


def test_sql_mode_that_neither_reads_nor_writes_the_table_is_refused(engine, tmp_path):
    two_orders(engine)
    sql(engine, "CREATE TABLE public.audit (n bigint)")
    spec = orders_spec(tmp_path, table="app.orders", set=None, where=None,
                       sql="INSERT INTO public.audit SELECT g FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "sql" and "neither reads nor writes app.orders" in caught.value.problem
    assert sql(engine, "SELECT count(*) FROM public.audit") == 0


def test_sql_mode_copying_from_the_walked_table_into_another_is_fine(engine, tmp_path):
    two_orders(engine)
    sql(engine, "CREATE TABLE public.orders_v2 (id int PRIMARY KEY, total numeric)")
    spec = orders_spec(tmp_path, table="app.orders", set=None, where=None,
                       sql="INSERT INTO public.orders_v2 SELECT id, total_cents / 100.0 FROM app.orders "
                           "WHERE id > :lo AND id <= :hi ON CONFLICT (id) DO NOTHING")
    for chunk in plan_backfill(engine, spec):
        assert run_chunk(engine, spec, chunk.chunk_no).kind == "done"
    assert sql(engine, "SELECT count(*) FROM public.orders_v2 v JOIN app.orders o USING (id) "
                       "WHERE v.total = o.total_cents / 100.0") == 500


def test_sql_mode_on_a_partitioned_table_writes_it_through_its_partitions(engine, tmp_path):
    sql(engine, "CREATE TABLE events (id bigint PRIMARY KEY, n int NOT NULL, done int) PARTITION BY RANGE (id)")
    sql(engine, "CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (MINVALUE) TO (0)")
    sql(engine, "CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (0) TO (MAXVALUE)")
    sql(engine, "INSERT INTO events SELECT g, 1, NULL FROM generate_series(-300, 300) g")
    spec = orders_spec(tmp_path, table="events", where="done IS NULL", set=None,
                       sql="UPDATE events SET done = n WHERE id > :lo AND id <= :hi AND done IS NULL")
    for chunk in plan_backfill(engine, spec):
        assert run_chunk(engine, spec, chunk.chunk_no).kind == "done"
    assert sql(engine, "SELECT count(*) FROM events WHERE done IS DISTINCT FROM 1") == 0


# -- plans from before names were resolved ---------------------------------------------------------


def legacy_plan(engine, spec, table: str) -> None:
    """What an earlier rowfill stored: `orders` read as public.orders, no table columns, chunk 1 from min - 1."""
    import dataclasses

    from rowfill.sql.sqlnames import TableName

    old = dataclasses.replace(spec, table=TableName("public", "orders"))
    sql(engine, "INSERT INTO rowfill.backfills (name, fingerprint, spec) VALUES (:n, :f, CAST(:s AS jsonb))",
        n=spec.name, f=old.fingerprint, s=json.dumps(old.meaning))
    sql(engine, "INSERT INTO rowfill.chunks (backfill, chunk_no, lo, hi, est_rows, status) "
                "VALUES (:n, 1, '0', '60', 60, 'done'), (:n, 2, '60', '100', 40, 'pending')", n=spec.name)
    sql(engine, f"UPDATE {table} SET total = total_cents / 100.0 WHERE id <= 60")


def test_a_plan_made_before_resolution_is_adopted_while_the_name_still_means_public(engine, tmp_path):
    two_orders(engine, app_rows=50, old_rows=100)
    spec = orders_spec(tmp_path)  # default search_path: orders is public.orders
    legacy_plan(engine, spec, "public.orders")
    chunks = plan_backfill(engine, spec)  # no PlanChanged: the stored fingerprint said public.orders
    assert [(c.chunk_no, c.lo) for c in chunks] == [(2, 60)]
    assert CheckpointStore(engine).chunk(spec.name, 1).lo is None  # the lowest chunk now starts from the start
    assert stored(engine, spec.name)[:2] == ("public", "orders")
    for chunk in chunks:
        run_chunk(engine, spec, chunk.chunk_no)
    assert left(engine, "public.orders") == 0 and left(engine, "app.orders") == 50


def test_a_plan_made_before_resolution_is_refused_when_the_name_now_means_another_table(db_url, engine, tmp_path):
    two_orders(engine, app_rows=50, old_rows=100)
    spec = orders_spec(tmp_path)
    legacy_plan(engine, spec, "public.orders")
    set_search_path(engine, "app, public")
    eng = engine_from_url(db_url)
    try:
        with pytest.raises(SpecError) as caught:
            plan_backfill(eng, spec)
        assert caught.value.field == "table"
        assert "planned by an earlier rowfill on public.orders" in caught.value.problem
        assert "now resolves to app.orders" in caught.value.problem
        with pytest.raises(SpecError):
            run_chunk(eng, spec, 2)  # a chunk task of the old plan refuses too
    finally:
        eng.dispose()
    assert left(engine, "app.orders") == 50 and left(engine, "public.orders") == 40


def test_a_changed_meaning_is_still_refused_as_before(engine, tmp_path):
    two_orders(engine)
    spec = orders_spec(tmp_path, table="app.orders")
    plan_backfill(engine, spec)
    with pytest.raises(PlanChanged):
        plan_backfill(engine, orders_spec(tmp_path, table="app.orders", where="total IS NULL OR total = 0"))


# -- rollback restores the table planned on ----------------------------------------------------


def test_a_rollback_restores_the_resolved_table_and_not_its_namesake(db_url, engine, tmp_path):
    two_orders(engine, app_rows=700, old_rows=100)
    sql(engine, "UPDATE public.orders SET total = -1")  # the old copy has values of its own
    set_search_path(engine, "app, public")
    orders_spec(tmp_path, undo=True)
    assert rowfill(tmp_path, db_url, "run", "orders_total") == 0
    assert left(engine, "app.orders") == 0
    assert rowfill(tmp_path, db_url, "rollback", "orders_total", "--yes") == 0
    assert left(engine, "app.orders") == 700  # back as it was
    assert sql(engine, "SELECT count(*) FROM public.orders WHERE total = -1") == 100  # untouched
