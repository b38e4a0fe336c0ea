"""Progress everywhere: the total is known from the plan, the rate is a moving window shared by every
worker through the checkpoint store, the ETA follows from both, and `rowfill status` shows it with
bars, per chunk, with the throttle's state when there is one and the last error."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from sqlalchemy import text

from helpers import make_users, spec_for, write_spec
from rowfill.airflow.observers import standard_observers
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.status import statuses
from rowfill.errors import ChunkFailed
from rowfill.ops.cli import main as cli
from rowfill.store import rates
from rowfill.store.checkpoint import CheckpointStore


def status_of(engine, name="users_full_name"):
    return statuses(engine, [name])[name]


def test_total_is_known_from_the_plan_before_any_row_is_written(engine, tmp_path):
    make_users(engine, 5_000, step=7)  # sparse keys: the total comes from rows, not from min/max
    spec = spec_for(tmp_path, chunk_rows=1_200)
    plan_backfill(engine, spec)

    s = status_of(engine)
    assert s.state == "planned"
    assert s.rows_estimated == 5_000 and s.rows_seen == 0
    assert [c.est_rows for c in s.chunks] == [1_200, 1_200, 1_200, 1_200, 200]
    assert s.rows_per_second == 0 and s.eta_seconds is None  # nothing moved yet: no rate, no guess


def test_backfill_rate_adds_up_what_every_worker_committed_in_the_window(engine, db_url, tmp_path):
    make_users(engine, 20_000)
    spec = spec_for(tmp_path, chunk_rows=10_000)
    plan_backfill(engine, spec)
    # Two "workers" with engines of their own: the database is all they share.
    for chunk_no, rows, seconds in ((1, 3_000, 2.0), (2, 1_000, 1.0)):
        worker = engine_from_url(db_url)
        with worker.begin() as conn:
            conn.execute(text("UPDATE rowfill.chunks SET status = 'running', rows_seen = :r, batches = 1 "
                              "WHERE backfill = 'users_full_name' AND chunk_no = :c"), {"r": rows, "c": chunk_no})
        rates.record_batch(worker, "users_full_name", chunk_no, rows, seconds)
        worker.dispose()
    # An old sample outside the window must not count.
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rowfill.samples VALUES ('users_full_name', 1, now() - interval '10 min', 50000, 9, "
                          "now() - interval '10 min', now() - interval '10 min')"))

    s = status_of(engine)
    # 4,000 rows since the earliest batch began (2 s before it committed, plus the moments since)
    assert 4_000 / 10 < s.rows_per_second <= 4_000 / 2
    assert s.state == "running" and s.chunks_running == 2
    assert s.eta_seconds == (20_000 - 4_000) / s.rows_per_second
    c1, c2 = s.chunks
    assert 3_000 / 10 < c1.rows_per_second <= 3_000 / 2 and 1_000 / 10 < c2.rows_per_second <= 1_000
    assert c1.eta_seconds == 7_000 / c1.rows_per_second


def test_a_running_backfill_reports_rate_and_eta_from_its_batches_and_finishes_at_zero(engine, db_url, tmp_path):
    make_users(engine, 6_000)
    spec = spec_for(tmp_path, chunk_rows=3_000, batch_rows=100, pause="20ms")
    chunks = plan_backfill(engine, spec)
    seen_running = []

    def run(chunk_no):
        eng = engine_from_url(db_url)
        try:
            ChunkRunner(eng, spec, observers=standard_observers(eng, spec)).run(chunk_no)
        finally:
            eng.dispose()

    workers = [threading.Thread(target=run, args=(c.chunk_no,)) for c in chunks]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        s = status_of(engine)
        if s.state == "running" and s.rows_seen > 500:
            seen_running.append(s)
        time.sleep(0.2)
    for w in workers:
        w.join()

    assert seen_running, "never saw the backfill running"
    mid = seen_running[len(seen_running) // 2]
    assert mid.rows_per_second > 0 and mid.eta_seconds is not None and mid.eta_seconds > 0
    assert 0 < mid.rows_seen < 6_000
    done = status_of(engine)
    assert done.state == "done" and done.rows_seen == 6_000 and done.eta_seconds == 0
    with engine.connect() as conn:
        sampled = conn.execute(text("SELECT sum(rows_seen), sum(batches) FROM rowfill.samples")).one()
    assert tuple(sampled) == (6_000, 60)  # every committed batch was sampled, once


def test_status_shows_bars_chunks_throttle_state_and_the_last_error(engine, db_url, tmp_path, capsys):
    make_users(engine, 3_000)
    write_spec(tmp_path, chunk_rows=1_000, batch_rows=250)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=250)
    plan_backfill(engine, spec)
    ChunkRunner(engine, spec, observers=standard_observers(engine, spec)).run(1)
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.id = 1700 THEN RAISE EXCEPTION 'no full name for id 1700'; END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER boom BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION boom()"))
    try:
        ChunkRunner(engine, spec).run(2)
    except ChunkFailed:
        pass
    failed = status_of(engine)
    assert failed.state == "failed" and failed.eta_seconds is None  # it goes nowhere until cleared
    # The throttle issue records its state in columns named throttle*; status shows whatever is there.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE rowfill.chunks ADD COLUMN IF NOT EXISTS throttle_state text"))
        conn.execute(text("UPDATE rowfill.chunks SET status = 'running', throttle_state = 'waiting: replica lag 12.4 s > 10 s' "
                          "WHERE chunk_no = 3"))

    capsys.readouterr()  # only what the command prints
    assert cli(["--specs-dir", str(tmp_path), "--db", db_url, "status", "--chunks"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("users_full_name") and "1,500 of ~3,000 rows" in lines[0] and "running" in lines[0]
    assert "[" in lines[0] and " 50.0%" in lines[0]
    assert "chunks: 1/3 done, 1 running, 0 waiting, 1 failed" in out
    assert "throttle: state: waiting: replica lag 12.4 s > 10 s" in out
    assert "last error, chunk 2 (id 1001..2000): " in out and "no full name for id 1700" in out
    chunk_lines = [line for line in lines if line.startswith("    chunk")]
    assert len(chunk_lines) == 3
    assert "done" in chunk_lines[0] and "100.0%" in chunk_lines[0]
    assert "FAIL" in chunk_lines[1] and " 50.0%" in chunk_lines[1] and "no full name for id 1700" in chunk_lines[1]
    assert "run " in chunk_lines[2] and "replica lag" in chunk_lines[2]

    assert cli(["--specs-dir", str(tmp_path), "--db", db_url, "status", "--json", "--chunks"]) == 0
    [data] = json.loads(capsys.readouterr().out)
    assert data["backfill"] == "users_full_name" and data["dag_id"] == "rowfill_users_full_name"
    assert (data["rows_estimated"], data["rows_seen"], data["state"]) == (3_000, 1_500, "running")
    assert data["last_error_chunk"] == 2 and "id 1700" in data["last_error"]
    assert data["throttle"] == {"throttle_state": "waiting: replica lag 12.4 s > 10 s", "throttled_seconds": 0}
    assert [c["status"] for c in data["chunks"]] == ["done", "failed", "running"]
    assert data["chunks"][1]["cursor"] == 1_500


def test_status_of_a_backfill_never_planned(db_url, tmp_path, capsys):
    write_spec(tmp_path)
    assert cli(["--specs-dir", str(tmp_path), "--db", db_url, "status"]) == 0
    out = capsys.readouterr().out
    assert "users_full_name" in out and "not started" in out


def test_status_watch_refreshes_until_stopped(engine, db_url, tmp_path):
    make_users(engine, 2_000)
    write_spec(tmp_path)
    plan_backfill(engine, spec_for(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "rowfill.ops.cli", "--specs-dir", str(tmp_path), "--db", db_url,
                             "status", "--watch", "0.3"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        with engine.begin() as conn:  # progress made meanwhile shows up in a later refresh
            conn.execute(text("UPDATE rowfill.chunks SET rows_seen = est_rows, status = 'done'"))
        time.sleep(3)
    finally:
        proc.terminate()
    out = proc.communicate(timeout=30)[0]
    assert out.count("rowfill status (every 0.3 s") >= 3
    assert "0 of ~2,000 rows" in out and "2,000 of ~2,000 rows" in out and "finished" in out


def test_samples_go_with_a_reset_backfill(engine, tmp_path):
    make_users(engine, 1_000)
    spec = spec_for(tmp_path)
    plan_backfill(engine, spec)
    ChunkRunner(engine, spec, observers=standard_observers(engine, spec)).run(1)
    CheckpointStore(engine).reset(spec.name)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rowfill.samples")).scalar() == 0
    assert status_of(engine).state == "not started"


def test_samples_count_batches_not_seconds_when_a_chunk_task_sums_them(engine, tmp_path):
    # A chunk task records its rate samples once a second (runner.Sampled), each summing many
    # batches; the samples must still say how many batches, so rows / batches is the batch size
    # the console draws (it read ~6x batch_rows when a second's batches counted as one).
    from rowfill.engine.chunk_task import run_chunk

    make_users(engine, 3_000)
    spec = spec_for(tmp_path, batch_rows=100, pause=0, pause_ratio=0)
    for chunk in plan_backfill(engine, spec):
        assert run_chunk(engine, spec, chunk.chunk_no, observers=[rates.RateRecorder(engine)]).kind == "done"
    with engine.connect() as conn:
        rows, batches = conn.execute(text("SELECT sum(rows_seen), sum(batches) FROM rowfill.samples")).one()
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NULL")).scalar() == 0
    assert (rows, batches) == (3_000, 30)
