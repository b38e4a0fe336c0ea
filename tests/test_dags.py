"""The DAG factory: every spec becomes a DAG of plan -> mapped chunks -> verify -> summary,
bad specs show up in Airflow without hiding good ones, and a full run works through dag.test()."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import make_users, write_spec
from rowfill.store.checkpoint import CheckpointStore

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


@pytest.mark.parametrize("dag_id", ["rowfill_users_full_name", "rowfill_users_loyalty_points_rollback"])
def test_a_task_process_builds_only_its_own_dag(monkeypatch, dag_id):
    # Airflow's task runner parses the DAG file with the running task's DAG id in the parsing
    # context; building every spec's DAGs there would be paid again by every task.
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", dag_id)
    bag = dagbag(ROOT / "include" / "specs", monkeypatch)
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {dag_id}
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID")
    full = dagbag(ROOT / "include" / "specs", monkeypatch)
    assert dag_id in full.dag_ids and len(full.dag_ids) > 1
    assert [t.task_id for t in bag.dags[dag_id].topological_sort()] == \
        [t.task_id for t in full.dags[dag_id].topological_sort()]


def test_a_task_of_a_dag_no_spec_has_anymore_finds_no_dag(monkeypatch):
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "rowfill_gone")
    assert dagbag(ROOT / "include" / "specs", monkeypatch).dag_ids == []


def test_a_bad_spec_is_an_import_error_and_good_specs_still_load(tmp_path, monkeypatch):
    for spec in (ROOT / "include" / "specs").glob("*.yaml"):
        shutil.copy(spec, tmp_path)
    (tmp_path / "broken.yaml").write_text("connection: app_db\ntable: users\nkey: id\nset: {x: '1'}\npause: soon\n")
    bag = dagbag(tmp_path, monkeypatch)
    assert {"rowfill_users_full_name", "rowfill_users_copy_v2"} <= set(bag.dag_ids)
    [(path, error)] = bag.import_errors.items()
    assert path.endswith("rowfill_spec_errors.py")  # not the file of the good DAGs: they stay runnable
    assert "broken.yaml: field 'pause'" in error and "write it like 100ms" in error


EXAMPLE_DAGS = {"rowfill_users_full_name", "rowfill_users_copy_v2", "rowfill_users_loyalty_points",
                "rowfill_users_loyalty_points_rollback", "rowfill_products_search_vector", "rowfill_products_search_export"}


def with_examples(folder):
    for spec in (ROOT / "include" / "specs").glob("*.yaml"):
        shutil.copy(spec, folder)
    return folder


def test_a_spec_that_is_not_utf8_only_hides_itself(tmp_path, monkeypatch):
    with_examples(tmp_path)
    (tmp_path / "latin.yaml").write_bytes("connection: app_db\ntable: users\nkey: id\nset: {full_name: \"'Zoë'\"}\n"
                                          .encode("latin-1"))
    bag = dagbag(tmp_path, monkeypatch)
    assert set(bag.dag_ids) == EXAMPLE_DAGS
    [(path, error)] = bag.import_errors.items()
    assert path.endswith("rowfill_spec_errors.py")
    assert f"{tmp_path / 'latin.yaml'}: is not UTF-8 text (byte 0xeb at line 4); save it as UTF-8" in error


@pytest.mark.parametrize("field, value, bound", [
    ("retry_delay", "99999999999h", "24h"),  # once beyond Python's timedelta: every rowfill DAG disappeared
    ("max_retry_delay", "86400001ms", "24h"),
    ("expected_duration", "8785h", "8784h (366 days)"),
    ("lock_timeout", "2147483648ms", "2147483647ms (about 24.8 days)"),
    ("chunk_rows", 2**63, "2147483647"),
    ("pause", "24.001h", "24h"),
])
def test_a_value_above_its_bound_only_hides_its_own_spec(tmp_path, monkeypatch, field, value, bound):
    """Refused when the spec is read (as by `rowfill validate`), naming the field and the bound: that spec's
    error in the spec-errors DAG file, while every good spec's DAG loads."""
    with_examples(tmp_path)
    write_spec(tmp_path, name="too_long", **{field: value})
    bag = dagbag(tmp_path, monkeypatch)
    assert set(bag.dag_ids) == EXAMPLE_DAGS  # and no half-built rowfill_too_long
    [(path, error)] = bag.import_errors.items()
    assert path.endswith("rowfill_spec_errors.py")
    assert f"{tmp_path / 'too_long.yaml'}: field '{field}': {value!r} is above the upper bound of {bound}" in error


def test_values_at_their_bounds_build_dags_airflow_accepts(tmp_path, monkeypatch):
    """The bounds themselves are accepted by Airflow: the DAG loads with them (validated and serialized)."""
    from datetime import timedelta

    with_examples(tmp_path)
    write_spec(tmp_path, name="at_bounds", retry_delay="24h", max_retry_delay="24h", expected_duration="8784h",
               stall_after="168h", stall_repeat_after="672h", retries=1000, max_parallel_chunks=1024,
               chunk_rows=2**31 - 1, batch_rows=2**31 - 1, lock_timeout="2147483647ms", statement_timeout="1073741823ms")
    bag = dagbag(tmp_path, monkeypatch)
    assert bag.import_errors == {}
    chunk = bag.dags["rowfill_at_bounds"].get_task("chunk")
    assert (chunk.retries, chunk.max_active_tis_per_dagrun) == (1000, 1024)
    assert chunk.retry_delay == chunk.max_retry_delay == timedelta(hours=24)
    assert "watchdog" in bag.dags["rowfill_at_bounds"].task_ids


def test_an_exception_while_building_a_dag_only_hides_its_own_spec(tmp_path, monkeypatch):
    """Anything Airflow rejects while the DAG is built (here a tag over Airflow's 100 characters,
    which the spec does not check) is that spec's error, naming its file."""
    with_examples(tmp_path)
    write_spec(tmp_path, name="long_tag", tags=["t" * 101])
    bag = dagbag(tmp_path, monkeypatch)
    assert set(bag.dag_ids) == EXAMPLE_DAGS
    [(path, error)] = bag.import_errors.items()
    assert path.endswith("rowfill_spec_errors.py")
    assert (f"{tmp_path / 'long_tag.yaml'}: Airflow rejects its DAG (ValueError: tag cannot be longer than 100 "
            "characters); change the spec so Airflow accepts it") in error


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
