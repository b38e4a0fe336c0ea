"""Dry runs: ``rowfill plan NAME`` and the DAG's ``dry_run`` parameter show the chunks, the rows to
walk and to change, an estimated duration from a timed sample batch, and the EXPLAIN of one batch,
and change nothing at all: no row (not even its row version), no checkpoint table, no undo log."""

from __future__ import annotations

import json

from sqlalchemy import text

from helpers import example_spec, make_users, spec_for
from rowfill.engine.dryrun import dry_run
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.examples.seed import seed_loyalty
from rowfill.ops import cli
from rowfill.store.checkpoint import CheckpointStore


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def untouched_state(engine) -> tuple:
    """Row contents *and* row versions, which rowfill tables exist, and how many undo records there are."""
    rows = scalar(engine, "SELECT md5(string_agg(u.id || ':' || u.xmin || ':' || u::text, ',' ORDER BY u.id)) FROM users u")
    tables = scalar(engine, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'rowfill'")
    undo = scalar(engine, "SELECT count(*) FROM rowfill.undo_rows")
    return rows, tables, undo


def test_rowfill_plan_shows_the_plan_and_changes_nothing(engine, db_url, tmp_path, capsys):
    make_users(engine, 4_500)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET full_name = 'done' WHERE id <= 500"))
    spec = spec_for(tmp_path, chunk_rows=2_000, batch_rows=250, pause="10ms", max_parallel_chunks=2)
    before = untouched_state(engine)
    assert scalar(engine, "SELECT count(*) FROM rowfill.backfills") == 0  # nothing planned yet

    assert cli.main(["--specs-dir", str(tmp_path), "--db", db_url, "plan", spec.name]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was changed" in out
    assert "chunk 1/3 (id 1..2000)" in out and "chunk 3/3 (id 4001..4500)" in out
    assert "rows to walk: 4,500; rows to change: 4,000" in out
    assert "sample batch: 250 rows walked, 0 would change" in out  # ids 1..250 were already done
    assert "estimated duration:" in out
    assert "EXPLAIN of one batch, write:" in out and "Index Cond" in out
    assert untouched_state(engine) == before

    report = json.loads(_json(db_url, tmp_path, spec.name, capsys))
    assert [c["status"] for c in report["chunks"]] == ["new"] * 3
    assert report["estimated_seconds"] > 18 * 0.010 / 2  # at least the pauses of 18 batches over 2 chunks at once
    assert untouched_state(engine) == before


def _json(db_url, tmp_path, name, capsys) -> str:
    assert cli.main(["--specs-dir", str(tmp_path), "--db", db_url, "plan", name, "--json"]) == 0
    return capsys.readouterr().out


def test_a_dry_run_of_a_transform_with_undo_times_a_real_batch_and_rolls_it_back(engine, tmp_path):
    seed_loyalty(engine, users=1_500)
    spec = example_spec(tmp_path, "users_loyalty_points", chunk_rows=1_000, batch_rows=200, pause=0)
    before = untouched_state(engine)
    report = dry_run(engine, spec, limit=100)
    assert (report.rows_to_walk, report.rows_to_change) == (1_500, 1_500)
    assert (report.sample_rows, report.sample_written) == (200, 200)
    assert report.sample_seconds > 0 and report.estimated_seconds > 0
    assert [what for what, _ in report.explain] == ["lock", "read", "write"]
    assert "orders_user_id_idx" in report.explain[1][1]
    assert "undo_rows" in report.explain[2][1]  # the undo log write is part of the batch
    assert untouched_state(engine) == before  # no undo record left behind either


def test_a_dry_run_of_a_resumed_backfill_shows_what_is_left(engine, tmp_path):
    make_users(engine, 3_000)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100)
    chunks = plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(chunks[0].chunk_no)
    checks = iter([None, None, None, "stop"])
    ChunkRunner(engine, spec, should_stop=lambda: next(checks)).run(chunks[1].chunk_no)
    store = CheckpointStore(engine)
    checkpoints = store.chunks(spec.name)
    report = dry_run(engine, spec, limit=100)
    assert [(c["label"], c["status"], c["est_rows"]) for c in report.chunks] == [
        ("chunk 2/3 (id 1001..2000)", "pending", 700), ("chunk 3/3 (id 2001..3000)", "pending", 1_000)]
    assert (report.rows_to_walk, report.rows_to_change) == (1_700, 1_700)
    assert "id 1301..1400" in report.notes[-1]  # the sample batch is the next real one
    assert store.chunks(spec.name) == checkpoints


def test_a_dry_run_never_calls_the_sink(engine, tmp_path, monkeypatch):
    from rowfill.examples.seed import seed_products

    seed_products(engine, 900, index=False)
    out = tmp_path / "export"
    monkeypatch.setenv("ROWFILL_SEARCH_EXPORT_DIR", str(out))
    report = dry_run(engine, example_spec(tmp_path, "products_search_export", chunk_rows=500, batch_rows=100), limit=100)
    assert report.sample_rows == 100 and not out.exists()
    assert any("was not called" in n for n in report.notes)


def test_the_dag_dry_run_parameter_plans_nothing_and_changes_nothing(tmp_path, db_url, engine, airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from test_dags import ROOT

    make_users(engine, 2_000)
    spec_for(tmp_path, chunk_rows=1_000, batch_rows=200)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags["rowfill_users_full_name"]
    assert dag.params["dry_run"] is False
    before = untouched_state(engine)

    run = dag.test(run_conf={"dry_run": True})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    # the summary of a dry run is the dry-run report itself (see the plan task's XCom `dry_run`)
    assert states == {"plan": "success", "chunk": "skipped", "verify": "skipped", "summary": "success"}
    assert untouched_state(engine) == before

    # the real run afterwards (conf given explicitly: dag.test() runs tasks in this process, where the
    # previous run's conf stays in the DAG object's params; real workers start from the run's own conf)
    assert dag.test(run_conf={"dry_run": False}).state == "success"
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL") == 0
