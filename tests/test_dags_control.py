"""Throttle, windows and control inside Airflow's task semantics, through dag.test(): the trigger
form's parameters reach the chunks, a dry run writes nothing, a chunk outside its window defers
to a trigger and completes when the window opens, a cancelled backfill ends without failing, and a
critical gate fails the chunk without Airflow retries."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import text

from helpers import make_users, write_spec
from rowfill.engine.control import ControlStore
from rowfill.store.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]


def build(tmp_path, db_url, monkeypatch, **fields):
    from airflow.dag_processing.dagbag import DagBag

    write_spec(tmp_path, **fields)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags["rowfill_users_full_name"]


def states(run) -> dict:
    out = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, set()).add(ti.state)
    return {k: sorted(str(s) for s in v) for k, v in out.items()}


def xcom(run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key=key)).first()
        return XComModel.deserialize_value(row) if row else None


def table_state(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT md5(string_agg(t.id || ':' || t.xmin, ',' ORDER BY t.id)) FROM users t")).scalar()


def test_the_trigger_form_offers_batch_size_pause_and_dry_run(tmp_path, db_url, monkeypatch):
    dag = build(tmp_path, db_url, monkeypatch, batch_rows=200, pause="150ms")
    params = dag.params.dump()
    assert params == {"batch_rows": 200, "pause": "150ms", "dry_run": False}


def test_a_dry_run_plans_and_reports_but_writes_nothing(tmp_path, db_url, engine, airflow_db, monkeypatch):
    make_users(engine, 5_000)
    dag = build(tmp_path, db_url, monkeypatch, chunk_rows=2_000, batch_rows=200)
    before = table_state(engine)

    run = dag.test(run_conf={"dry_run": True, "batch_rows": 500})

    assert run.state == "success"
    assert states(run) == {"plan": ["success"], "chunk": ["skipped"], "verify": ["skipped"], "summary": ["success"]}
    report = xcom(run, "summary")  # the dry-run report (rowfill.engine.dryrun), as `rowfill plan` prints it
    assert report["backfill"] == "users_full_name" and len(report["chunks"]) == 3
    assert report["rows_to_walk"] == 5_000 and report["rows_to_change"] == 5_000
    assert report["sample_rows"] > 0 and report["estimated_seconds"] is not None  # a timed sample batch, rolled back
    assert table_state(engine) == before
    with engine.connect() as conn:  # not even a checkpoint was written
        assert conn.execute(text("SELECT count(*) FROM rowfill.backfills")).scalar() == 0


def test_trigger_parameters_set_batch_size_and_pause_for_one_run(tmp_path, db_url, engine, airflow_db, monkeypatch):
    make_users(engine, 2_000)
    dag = build(tmp_path, db_url, monkeypatch, chunk_rows=1_000, batch_rows=100, pause="1s")
    started = time.monotonic()
    run = dag.test(run_conf={"batch_rows": 250, "pause": "0ms"})
    assert run.state == "success"
    chunks = CheckpointStore(engine).chunks("users_full_name")
    assert [c.batches for c in chunks] == [4, 4]  # 1,000 rows in batches of 250, not 100
    assert time.monotonic() - started < 60  # 8 pauses of 1 s would still fit; 20 would not be 0ms


def test_a_chunk_outside_its_window_defers_and_completes_when_it_opens(tmp_path, db_url, engine, airflow_db, monkeypatch):
    make_users(engine, 1_000)
    opens = datetime.now(timezone.utc) + timedelta(seconds=8)
    closes = opens + timedelta(hours=1)
    dag = build(tmp_path, db_url, monkeypatch, chunk_rows=1_000, batch_rows=100,
                window={"start": opens.strftime("%H:%M:%S"), "end": closes.strftime("%H:%M:%S"), "timezone": "UTC"})

    run = dag.test()  # dag.test runs the trigger in line: the chunk defers, the trigger waits, it resumes

    assert run.state == "success"
    assert datetime.now(timezone.utc) >= opens.replace(microsecond=0)
    [chunk] = CheckpointStore(engine).chunks("users_full_name")
    assert (chunk.status, chunk.rows_written, chunk.throttle_state) == ("done", 1_000, None)
    assert chunk.started_at >= opens.replace(microsecond=0)  # nothing was written before the window opened


def test_a_cancelled_backfill_ends_its_run_without_failing(tmp_path, db_url, engine, airflow_db, monkeypatch):
    make_users(engine, 1_000)
    dag = build(tmp_path, db_url, monkeypatch, chunk_rows=500, batch_rows=100)
    ControlStore(engine).cancel("users_full_name")
    run = dag.test()
    assert run.state == "success"
    assert states(run) == {"plan": ["skipped"], "chunk": ["skipped"], "verify": ["skipped"], "summary": ["success"]}
    assert xcom(run, "summary")["control"] == "cancelled"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NOT NULL")).scalar() == 0


def test_a_critical_gate_fails_the_chunk_without_retrying(tmp_path, db_url, engine, airflow_db, monkeypatch):
    make_users(engine, 1_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE queue (depth int NOT NULL)"))
        conn.execute(text("INSERT INTO queue VALUES (5000)"))
    dag = build(tmp_path, db_url, monkeypatch, chunk_rows=1_000, batch_rows=100, retries=3, retry_delay="1h",
                gates={"probe": {"sql": "SELECT depth FROM queue", "wait": 100, "critical": 1000, "label": "queue depth"}})
    run = dag.test()
    assert run.state == "failed"
    [ti] = [t for t in run.get_task_instances() if t.task_id == "chunk"]
    assert ti.state == "failed" and ti.try_number == 1  # no retry an hour later: critical means stop
    [chunk] = CheckpointStore(engine).chunks("users_full_name")
    assert chunk.status == "failed" and "gate probe critical: queue depth 5000 > 1000" in chunk.last_error
