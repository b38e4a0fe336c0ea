"""Through a real Airflow 3 (scheduler, DAG processor, API server, triggerer as separate processes) whose
DAG folder is what `rowfill init` writes, with the specs in its `rowfill/` folder:

- a backfill that passed verify emits the Asset event of its table
  (`postgres://host:port/database/schema/table`, the Postgres provider's form), and a DAG scheduled
  on that Asset runs because of it; a dry run (verify skipped) emits nothing;
- Airflow's own DAG pause toggle stops running chunks at a batch boundary without holding a worker or
  pool slot, and un-pausing resumes them in the same run: every row changed exactly once.
"""

from __future__ import annotations

import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import create_database, make_users, wait_until, write_spec
from rowfill.engine.database import engine_from_url
from rowfill.ops.dagfolder import init_dag_folder
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.devstack import AirflowStack
from rowfill_dev.localpg import free_port

pytestmark = pytest.mark.airflow

DOWNSTREAM = "downstream_of_users"
DOWNSTREAM_DAG = '''\
from airflow.sdk import DAG, Asset
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("{dag_id}", schedule=[Asset("{uri}")], catchup=False):
    EmptyOperator(task_id="consume")
'''


@pytest.fixture(scope="module")
def target(pg_cluster):
    url = create_database(pg_cluster, "e2e_assets")
    engine = engine_from_url(url)
    yield url, engine
    engine.dispose()


def users_uri(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"postgres://{parts.hostname}:{parts.port}{parts.path}/public/users"


@pytest.fixture(scope="module")
def stack(target):
    url, _ = target
    home = Path(tempfile.mkdtemp(prefix="rowfill-e2e-assets-"))
    dags = home / "dags"
    init_dag_folder(dags)
    write_spec(dags / "rowfill", name="asset_fill")  # users.full_name, 2 chunks of 1000
    write_spec(dags / "rowfill", name="toggle_points", table="public.users2", where=None,
               set={"points": "points + 10"}, chunk_rows=3_000, batch_rows=100, pause="300ms", retries=0)
    (dags / "downstream.py").write_text(DOWNSTREAM_DAG.format(dag_id=DOWNSTREAM, uri=users_uri(url)))
    s = AirflowStack(home / "airflow", port=free_port(), target_url=url,
                     extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags)})
    s.env.pop("AIRFLOW__ROWFILL__SPECS_FOLDER", None)  # the default: rowfill/ beside the DAG file
    try:
        s.prepare()
        s.start()
        for dag_id in ("rowfill_asset_fill", "rowfill_toggle_points", DOWNSTREAM):
            s.wait_for_dag(dag_id)
        yield s
    finally:
        s.stop()


def runs(stack, dag_id) -> list[dict]:
    return stack.api("GET", f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]


def test_a_verified_backfill_emits_its_tables_asset_event_and_the_dag_scheduled_on_it_runs(stack, target):
    url, engine = target
    make_users(engine, 2_000)
    stack.api("PATCH", f"/dags/{DOWNSTREAM}", {"is_paused": False})

    dry = stack.trigger("rowfill_asset_fill", {"dry_run": True})
    assert stack.wait_for_run("rowfill_asset_fill", dry, timeout=240) == "success"
    time.sleep(10)  # time enough for the scheduler to start a downstream run, if there were an event
    assert runs(stack, DOWNSTREAM) == []  # a dry run writes nothing, verifies nothing, tells nobody

    run_id = stack.trigger("rowfill_asset_fill")
    assert stack.wait_for_run("rowfill_asset_fill", run_id, timeout=300) == "success"
    assert stack.xcom("rowfill_asset_fill", run_id, "verify")["asset"] == users_uri(url)

    [downstream] = wait_until(lambda: runs(stack, DOWNSTREAM), 120, 2, "the DAG scheduled on the users table to run")
    assert downstream["run_type"] == "asset_triggered"
    assert stack.wait_for_run(DOWNSTREAM, downstream["dag_run_id"], timeout=120) == "success"
    rid = urllib.parse.quote(downstream["dag_run_id"], safe="")
    events = stack.api("GET", f"/dags/{DOWNSTREAM}/dagRuns/{rid}/upstreamAssetEvents")["asset_events"]
    assert [(e["uri"], e["source_dag_id"], e["source_run_id"], e["source_task_id"]) for e in events] == [
        (users_uri(url), "rowfill_asset_fill", run_id, "verify")]
    assert events[0]["extra"]["backfill"] == "asset_fill"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NULL")).scalar() == 0


def chunk_tis(stack, dag_id, run_id) -> list[dict]:
    return [t for t in stack.task_instances(dag_id, run_id) if t["task_id"] == "chunk"]


def test_the_airflow_dag_pause_toggle_stops_running_chunks_at_a_batch_boundary_and_unpausing_resumes_them(stack, target):
    _, engine = target
    make_users(engine, 6_000, table="users2")  # 2 chunks x 30 batches, 300 ms rest after each
    dag_id, name = "rowfill_toggle_points", "toggle_points"
    run_id = stack.trigger(dag_id)
    wait_until(lambda: (c := CheckpointStore(engine).chunks(name)) and sum(r.rows_written for r in c) >= 600, 180, 1,
               "the chunks to write some batches")

    stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": True})  # Airflow's own toggle, as the UI does it
    wait_until(lambda: not any(t["state"] in ("running", "queued") for t in chunk_tis(stack, dag_id, run_id)), 90, 1,
               "the chunks to stop at a batch boundary")
    rows = CheckpointStore(engine).chunks(name)
    assert all(r.status != "done" for r in rows), "the test is too fast to see the pause; make the chunks longer"
    assert all("is paused" in (r.throttle_state or "") for r in rows), [r.throttle_state for r in rows]
    pool = stack.api("GET", "/pools/rowfill_app_db")
    assert pool["occupied_slots"] == 0 and pool["running_slots"] == 0  # no pool slot, no worker slot
    written = [r.rows_written for r in rows]
    time.sleep(12)
    assert [r.rows_written for r in CheckpointStore(engine).chunks(name)] == written  # nothing while paused
    assert all(t["state"] in ("scheduled", "deferred") for t in chunk_tis(stack, dag_id, run_id))
    assert stack.run_state(dag_id, run_id) == "running"

    stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    assert stack.wait_for_run(dag_id, run_id, timeout=300) == "success"
    rows = CheckpointStore(engine).chunks(name)
    assert [(r.status, r.rows_written, r.attempts) for r in rows] == [("done", 3_000, 1), ("done", 3_000, 1)]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users2 WHERE points <> 10")).scalar() == 0  # each row once
