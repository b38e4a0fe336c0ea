"""DAGs of the new example specs: every example loads, each ``undo: true`` spec gets a manual
rollback DAG, a name clash with a rollback DAG is an import error of its own, and the loyalty
transform runs inside Airflow tasks (its module is importable where chunks run)."""

from __future__ import annotations

import shutil

from sqlalchemy import text

from helpers import example_spec
from rowfill.examples.loyalty import REFERENCE_SQL
from rowfill.examples.seed import seed_loyalty
from test_dags import ROOT, dagbag


def test_every_example_spec_loads_and_undo_specs_get_a_rollback_dag(monkeypatch):
    bag = dagbag(ROOT / "include" / "specs", monkeypatch)
    assert bag.import_errors == {}
    assert {"rowfill_users_loyalty_points", "rowfill_products_search_vector", "rowfill_products_search_export",
            "rowfill_users_loyalty_points_rollback"} <= set(bag.dag_ids)
    assert "rowfill_users_full_name_rollback" not in bag.dag_ids  # no undo, no rollback DAG
    rollback = bag.dags["rowfill_users_loyalty_points_rollback"]
    assert rollback.max_active_runs == 1 and "rollback" in rollback.tags
    assert rollback.get_task("restore").max_active_tis_per_dagrun == 2
    assert "dry_run" in bag.dags["rowfill_users_loyalty_points"].params


def test_a_spec_named_like_a_rollback_dag_is_reported_not_hidden(tmp_path, monkeypatch):
    for name in ("users_full_name", "users_loyalty_points"):
        shutil.copy(ROOT / "include" / "specs" / f"{name}.yaml", tmp_path)
    clash = (ROOT / "include" / "specs" / "users_full_name.yaml").read_text().replace(
        "name: users_full_name", "name: users_loyalty_points_rollback")
    (tmp_path / "clash.yaml").write_text(clash)
    bag = dagbag(tmp_path, monkeypatch)
    [(path, error)] = bag.import_errors.items()
    assert path.endswith("rowfill_spec_errors.py")
    assert "clash.yaml: field 'name'" in error and "is also the rollback DAG of" in error
    assert {"rowfill_users_full_name", "rowfill_users_loyalty_points", "rowfill_users_loyalty_points_rollback"} <= set(bag.dag_ids)


def test_the_loyalty_transform_runs_through_airflow_tasks(tmp_path, db_url, engine, airflow_db, monkeypatch):
    seed_loyalty(engine, users=2_000)
    example_spec(tmp_path, "users_loyalty_points", chunk_rows=700, batch_rows=100, pause=0)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    dag = dagbag(tmp_path, monkeypatch).dags["rowfill_users_loyalty_points"]
    assert dag.test().state == "success"
    with engine.connect() as conn:
        wrong = conn.execute(text(f"SELECT count(*) FROM users u JOIN ({REFERENCE_SQL}) r USING (id) "
                                  "WHERE u.loyalty_points IS DISTINCT FROM r.points")).scalar()
    assert wrong == 0
