"""The DAG factory: every spec becomes a DAG of plan -> mapped chunks -> verify -> summary,
bad specs show up in Airflow without hiding good ones, and a full run works through dag.test()."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import text

from helpers import make_users, write_spec
from rowfill.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]


def dagbag(specs_dir, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(specs_dir))
    return DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)


def test_example_specs_load_as_dags_without_errors(monkeypatch):
    bag = dagbag(ROOT / "include" / "specs", monkeypatch)
    assert bag.import_errors == {}
    assert {"rowfill_users_full_name", "rowfill_users_copy_v2"} <= set(bag.dag_ids)


def test_dag_shape_follows_the_spec(monkeypatch):
    bag = dagbag(ROOT / "include" / "specs", monkeypatch)
    dag = bag.dags["rowfill_users_full_name"]
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "chunk", "verify", "summary"]
    chunk = dag.get_task("chunk")
    assert chunk.pool == "rowfill_app_db"
    assert chunk.max_active_tis_per_dagrun == 2
    assert chunk.map_index_template == "{{ task.chunk.label }}"
    assert chunk.retry_exponential_backoff == 2.0
    assert dag.get_task("verify").trigger_rule == "none_failed"
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 2 * * *"


def test_a_bad_spec_is_an_import_error_and_good_specs_still_load(tmp_path, monkeypatch):
    for spec in (ROOT / "include" / "specs").glob("*.yaml"):
        shutil.copy(spec, tmp_path)
    (tmp_path / "broken.yaml").write_text("connection: app_db\ntable: users\nkey: id\nset: {x: '1'}\npause: soon\n")
    bag = dagbag(tmp_path, monkeypatch)
    assert {"rowfill_users_full_name", "rowfill_users_copy_v2"} <= set(bag.dag_ids)
    [(path, error)] = bag.import_errors.items()
    assert path.endswith("rowfill_spec_errors.py")  # not the file of the good DAGs: they stay runnable
    assert "broken.yaml: field 'pause'" in error and "write it like 100ms" in error


def test_full_run_with_dag_test(tmp_path, db_url, engine, airflow_db, monkeypatch):
    make_users(engine, 5000, step=3)
    write_spec(tmp_path, chunk_rows=1500, batch_rows=200)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    bag = dagbag(tmp_path, monkeypatch)
    dag = bag.dags["rowfill_users_full_name"]

    run = dag.test()

    assert run.state == "success"
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM first_name || ' ' || last_name")).scalar()
    assert left == 0
    chunks = CheckpointStore(engine).chunks("users_full_name")
    assert len(chunks) == 4 and all(c.status == "done" for c in chunks)
    assert sum(c.rows_written for c in chunks) == 5000

    again = dag.test()  # a second run finds nothing left to plan and changes nothing
    assert again.state == "success"
    assert sum(c.rows_written for c in CheckpointStore(engine).chunks("users_full_name")) == 5000
