"""Through a real Airflow 3 (scheduler + LocalExecutor, DAG processor, API server, triggerer as
separate processes): a backfill runs, a failed chunk is cleared and resumes from its cursor,
a bad spec is visible as an import error, and a missing pool fails loudly instead of hanging."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import create_database, make_users, write_spec
from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.devstack import AirflowStack
from rowfill_dev.localpg import free_port

pytestmark = pytest.mark.airflow

DAG_ID = "rowfill_points_bonus"
ROWS = 30_000
FAIL_AT = 15_500  # inside chunk 2 of 3, after several of its batches


@pytest.fixture(scope="module")
def target(pg_cluster):
    url = create_database(pg_cluster, "e2e_app")
    engine = engine_from_url(url)
    make_users(engine, ROWS)
    with engine.begin() as conn:
        # A switch the test flips: while it holds a key, updating that row raises.
        conn.execute(text("CREATE TABLE fail_switch (id bigint PRIMARY KEY)"))
        conn.execute(text(
            "CREATE FUNCTION fail_on_switch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF EXISTS (SELECT 1 FROM fail_switch WHERE id = NEW.id) THEN "
            "RAISE EXCEPTION 'injected failure at id %', NEW.id; END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER fail_on_switch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION fail_on_switch()"))
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module")
def stack(target):
    url, _ = target
    home = Path(tempfile.mkdtemp(prefix="rowfill-e2e-"))
    specs = home / "specs"
    specs.mkdir()
    # Non-idempotent on purpose: resuming from the chunk start instead of the cursor would add 20.
    write_spec(specs, name="points_bonus", where=None, set={"points": "points + 10"},
               chunk_rows=10_000, batch_rows=500, retries=0, max_parallel_chunks=2)
    write_spec(specs, name="needs_missing_pool", pool="rowfill_no_such_pool", retries=0)
    (specs / "broken.yaml").write_text("connection: app_db\ntable: users\nkey: id OR 1=1\nset: {x: '1'}\n")
    s = AirflowStack(home / "airflow", port=free_port(), target_url=url, specs_dir=specs)
    try:
        s.prepare()
        s.start()
        s.wait_for_dag(DAG_ID)
        yield s
    finally:
        s.stop()


def test_failed_chunk_is_cleared_and_resumes_from_its_cursor(stack, target):
    _, engine = target
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO fail_switch VALUES (:id)"), {"id": FAIL_AT})

    run_id = stack.trigger(DAG_ID)
    assert stack.wait_for_run(DAG_ID, run_id, timeout=300) == "failed"

    tis = {(t["task_id"], t["map_index"]): t for t in stack.task_instances(DAG_ID, run_id)}
    chunk_tis = sorted((t for (task, _), t in tis.items() if task == "chunk"), key=lambda t: t["map_index"])
    assert [t["rendered_map_index"] for t in chunk_tis] == [
        "chunk 1/3 (id 1..10000)", "chunk 2/3 (id 10001..20000)", "chunk 3/3 (id 20001..30000)"]
    assert [t["state"] for t in chunk_tis] == ["success", "failed", "success"]
    assert all(t["pool"] == "rowfill_app_db" for t in chunk_tis)

    failed = CheckpointStore(engine).chunk("points_bonus", 2)
    assert failed.status == "failed" and "injected failure at id 15500" in failed.last_error
    assert failed.cursor == 15_000  # the batches before the bad row are committed

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM fail_switch"))
    stack.clear_failed(DAG_ID, run_id, [["chunk", chunk_tis[1]["map_index"]]])
    assert stack.wait_for_run(DAG_ID, run_id, timeout=300) == "success"

    resumed = CheckpointStore(engine).chunk("points_bonus", 2)
    assert resumed.status == "done" and resumed.attempts == 2
    assert resumed.rows_written == 10_000
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE points <> 10")).scalar() == 0
    summary = stack.xcom(DAG_ID, run_id, "summary")
    assert summary["rows_written"] == ROWS and summary["chunks_done"] == 3
    assert summary["seconds"] > 0 and summary["rows_per_second"] > 0


def test_a_finished_backfill_run_again_changes_nothing(stack, target):
    _, engine = target
    run_id = stack.trigger(DAG_ID)
    assert stack.wait_for_run(DAG_ID, run_id, timeout=300) == "success"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE points <> 10")).scalar() == 0
    states = {t["task_id"]: t["state"] for t in stack.task_instances(DAG_ID, run_id)}
    assert states == {"plan": "success", "chunk": "skipped", "verify": "success", "summary": "success"}


def test_a_bad_spec_shows_as_an_import_error_next_to_the_good_dags(stack):
    errors = stack.api("GET", "/importErrors")["import_errors"]
    assert any("broken.yaml: field 'key'" in e["stack_trace"] for e in errors), errors
    assert stack.api("GET", f"/dags/{DAG_ID}")["dag_id"] == DAG_ID


def test_a_missing_pool_fails_the_plan_with_the_command_to_fix_it(stack):
    run_id = stack.trigger("rowfill_needs_missing_pool")
    assert stack.wait_for_run("rowfill_needs_missing_pool", run_id, timeout=300) == "failed"
    rid = run_id.replace("+", "%2B").replace(":", "%3A")
    log = stack.api("GET", f"/dags/rowfill_needs_missing_pool/dagRuns/{rid}/taskInstances/plan/logs/1?full_content=true")
    text_ = str(log)
    assert "airflow pools set rowfill_no_such_pool" in text_


def test_the_progress_page_shows_backfills_to_signed_in_users_only(stack):
    import json
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stack.base}/rowfill/api/progress", timeout=30)
    assert refused.value.code in (401, 403)

    req = urllib.request.Request(f"{stack.base}/rowfill/api/progress", headers={"Authorization": f"Bearer {stack.token()}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        progress = {b["backfill"]: b for b in json.loads(resp.read())}
    assert progress["points_bonus"]["state"] == "done"
    assert progress["points_bonus"]["rows_seen"] == ROWS
    assert [c["status"] for c in progress["points_bonus"]["chunks"]] == ["done"] * 3

    req = urllib.request.Request(f"{stack.base}/rowfill/", headers={"Authorization": f"Bearer {stack.token()}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        page = resp.read().decode()
    assert "points_bonus" in page and "30,000 of ~30,000 rows" in page
