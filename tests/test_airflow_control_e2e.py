"""Through a real Airflow 3 (scheduler, workers, triggerer as separate processes): a chunk running
when its off-peak window closes stops at a batch boundary, defers to the triggerer and finishes
when the next window opens, in the same DAG run; a paused backfill's chunk defers (its pool slot
free) until `rowfill resume`. Nothing is missed or applied twice."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import create_database, make_users, wait_until, write_spec
from rowfill.engine.control import ControlStore
from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.devstack import AirflowStack
from rowfill_dev.localpg import free_port

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def target(pg_cluster):
    url = create_database(pg_cluster, "e2e_control")
    engine = engine_from_url(url)
    yield url, engine
    engine.dispose()


def window_spec(specs: Path, windows) -> None:
    # not idempotent on purpose: a batch applied twice would show as points 20
    write_spec(specs, name="window_points", where=None, set={"points": "points + 10"}, chunk_rows=4_000,
               batch_rows=100, pause="2s", retries=0, window=windows)


@pytest.fixture(scope="module")
def stack(target):
    url, _ = target
    home = Path(tempfile.mkdtemp(prefix="rowfill-e2e-control-"))
    specs = home / "specs"
    specs.mkdir()
    window_spec(specs, {"start": "00:00", "end": "00:01"})  # rewritten with real times by the test
    write_spec(specs, name="paused_points", table="public.users2", where=None, set={"points": "points + 10"},
               chunk_rows=5_000, batch_rows=100, pause="300ms", retries=0)
    s = AirflowStack(home / "airflow", port=free_port(), target_url=url, specs_dir=specs)
    try:
        s.prepare()
        s.start()
        s.wait_for_dag("rowfill_window_points")
        s.wait_for_dag("rowfill_paused_points")
        s.specs = specs
        yield s
    finally:
        s.stop()


def chunk_state(stack, dag_id, run_id) -> str | None:
    tis = [t for t in stack.task_instances(dag_id, run_id) if t["task_id"] == "chunk"]
    return tis[0]["state"] if tis else None


def hms(t: datetime) -> str:
    return t.strftime("%H:%M:%S")


def test_a_chunk_stops_when_its_window_closes_defers_and_finishes_in_the_next_window(stack, target):
    _, engine = target
    make_users(engine, 4_000)  # 40 batches with 2 s pauses: ~80 s of work, more than the first window leaves
    now = datetime.now(timezone.utc)
    closes = now + timedelta(seconds=60)
    reopens = closes + timedelta(seconds=15)
    window_spec(stack.specs, [{"start": hms(now - timedelta(hours=1)), "end": hms(closes)},
                              {"start": hms(reopens), "end": hms(reopens + timedelta(hours=1))}])
    dag_id = "rowfill_window_points"
    run_id = stack.trigger(dag_id)

    wait_until(lambda: chunk_state(stack, dag_id, run_id) == "deferred", 120, 1, "the chunk to defer when the window closes")
    row = CheckpointStore(engine).chunks("window_points")[0]
    assert datetime.now(timezone.utc) < reopens, "the test is too slow to see the deferral; widen its windows"
    assert row.status == "pending" and "outside the window" in row.throttle_state
    assert 0 < row.rows_written < 4_000, "the chunk should have stopped part-way (it started inside the window)"
    written_at_close = row.rows_written
    time.sleep(5)
    assert CheckpointStore(engine).chunks("window_points")[0].rows_written == written_at_close  # nothing while deferred

    assert stack.wait_for_run(dag_id, run_id, timeout=240) == "success"
    row = CheckpointStore(engine).chunks("window_points")[0]
    assert (row.status, row.rows_written, row.rows_seen, row.attempts) == ("done", 4_000, 4_000, 1)  # one attempt, two goes
    assert row.finished_at >= reopens.replace(microsecond=0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE points <> 10")).scalar() == 0
    states = {t["task_id"]: t["state"] for t in stack.task_instances(dag_id, run_id)}
    assert states == {"plan": "success", "chunk": "success", "verify": "success", "summary": "success"}


def test_a_paused_backfill_defers_without_holding_its_pool_slot_until_resumed(stack, target):
    _, engine = target
    make_users(engine, 5_000, table="users2")
    dag_id = "rowfill_paused_points"
    run_id = stack.trigger(dag_id)
    wait_until(lambda: (c := CheckpointStore(engine).chunks("paused_points")) and c[0].rows_written >= 300, 180, 1,
               "the chunk to write some batches")
    ControlStore(engine).pause("paused_points", "e2e test")

    wait_until(lambda: chunk_state(stack, dag_id, run_id) == "deferred", 60, 1, "the paused chunk to defer")
    pool = stack.api("GET", "/pools/rowfill_app_db")
    assert pool["occupied_slots"] == 0 and pool["running_slots"] == 0  # deferred: the slot is free for others
    row = CheckpointStore(engine).chunks("paused_points")[0]
    assert row.status == "pending" and row.throttle_state.startswith("paused with `rowfill pause`: e2e test")
    time.sleep(5)
    assert CheckpointStore(engine).chunks("paused_points")[0].rows_written == row.rows_written

    ControlStore(engine).resume("paused_points")
    assert stack.wait_for_run(dag_id, run_id, timeout=240) == "success"
    row = CheckpointStore(engine).chunks("paused_points")[0]
    assert (row.status, row.rows_written, row.attempts) == ("done", 5_000, 1)  # paused and resumed: still one attempt
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users2 WHERE points <> 10")).scalar() == 0
