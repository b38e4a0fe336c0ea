"""Surviving a restart (issue 10, item 4): a real cluster of its own, restarted and cut off under a running
``rowfill run``; every row must still be written exactly once, and a runner that is gone must show as stale.

The cluster is this module's own (not the session's), because these tests stop and restart it.
The write is ``points = points + 10``, which shows a batch applied twice (20) or lost (0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from helpers import create_database, make_users, write_spec
from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.localpg import LocalPostgres

ROWFILL = str(Path(sys.executable).parent / "rowfill")
N = 20_000


@pytest.fixture(scope="module")
def pg():
    cluster = LocalPostgres(Path(tempfile.mkdtemp(prefix="rowfill-test-restart-")) / "data").start()
    yield cluster
    cluster.stop("immediate")


@pytest.fixture
def target(pg, request, tmp_path):
    """A fresh database with N users (points 0) and a spec adding 10 points, in batches of 100 with a short rest."""
    if not pg.running():
        pg.start()
    url = create_database(pg, f"r_{request.node.name.lower()}"[:60])
    engine = engine_from_url(url)
    make_users(engine, N)
    specs = tmp_path / "specs"
    specs.mkdir()
    yield url, engine, specs
    engine.dispose()


def spec_file(specs: Path, **fields) -> Path:
    return write_spec(specs, name="add_points", where=None, set={"points": "points + 10"}, chunk_rows=5_000,
                      batch_rows=100, pause="20ms", **fields)


def start_run(url: str, specs: Path, worker: str = "runner-1") -> subprocess.Popen:
    env = {**os.environ, "ROWFILL_WORKER_NAME": worker}
    return subprocess.Popen([ROWFILL, "--specs-dir", str(specs), "--db", url, "run", "add_points"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def admin(url: str) -> psycopg.Connection:
    """A connection of the test's own (not named rowfill, so terminating rowfill's sessions spares it)."""
    return psycopg.connect(url, autocommit=True,
                           application_name="rowfill-test-admin")


def batches_done(url: str) -> int:
    try:
        with admin(url) as conn:
            if conn.execute("SELECT to_regclass('rowfill.chunks')").fetchone()[0] is None:
                return 0
            return conn.execute("SELECT coalesce(sum(batches), 0) FROM rowfill.chunks").fetchone()[0]
    except psycopg.OperationalError:
        return 0


def wait_for_batches(url: str, proc: subprocess.Popen, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (done := batches_done(url)) < at_least:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    return done


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    """Exit status, stdout and stderr; the log lines go to stdout when Airflow's logging is configured."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_points_added_once(engine, name: str = "add_points") -> None:
    with engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT points, count(*) FROM users GROUP BY points")).all())
    assert counts == {10: N}, f"points per row (value: rows): {counts}"
    chunks = CheckpointStore(engine).chunks(name)
    assert {c.status for c in chunks} == {"done"}
    assert sum(c.rows_written for c in chunks) == N


def test_a_run_survives_a_sub_second_restart_and_writes_every_row_once(pg, target):
    url, engine, specs = target
    spec_file(specs)
    proc = start_run(url, specs)
    try:
        before = wait_for_batches(url, proc, 20)
        engine.dispose()
        pg.stop("fast")  # every session ends with 57P01; connections are refused until it is back
        pg.start()
        assert batches_done(url) < N // 100, "the run finished before the restart; the test proved nothing"
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out + err
    assert before > 0
    assert "Traceback" not in out + err
    assert "lost the database connection while" in out + err
    assert "database back after" in out + err
    assert "verified" in out
    assert_points_added_once(engine)


def terminate_mid_transaction(url: str, proc: subprocess.Popen, timeout: float = 30) -> int:
    """pg_terminate_backend on rowfill's sessions while its batch is inside its transaction, not idle
    between batches (the pool's pre-ping would replace an idle one without anyone noticing)."""
    deadline = time.monotonic() + timeout
    with admin(url) as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            busy = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'rowfill' AND xact_start IS NOT NULL AND pid <> pg_backend_pid() "
                # the runner's batch (its statements name the table), not a lease renewal or a control read
                "AND query LIKE '%users%' AND query NOT LIKE '%rowfill.%'").fetchone()[0]
            if busy:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND application_name = 'rowfill' AND pid <> pg_backend_pid()")
                return busy
    raise AssertionError("never found rowfill inside a batch to terminate")


def test_a_run_survives_its_sessions_being_terminated(pg, target):
    url, engine, specs = target
    spec_file(specs)
    proc = start_run(url, specs)
    terminated = 0
    try:
        for at in (10, 60, 120):
            wait_for_batches(url, proc, at)
            terminated += terminate_mid_transaction(url, proc)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert terminated >= 3
    assert code == 0, out + err
    assert "Traceback" not in out + err
    # a batch lost its connection mid-transaction, was rolled back and written again
    assert "lost the database connection while writing a batch" in out + err, out + err
    assert "the server rolled the batch back; it is written again from the checkpoint" in out + err
    assert_points_added_once(engine)


def test_a_database_down_past_reconnect_for_fails_with_one_clear_error(pg, target):
    url, engine, specs = target
    path = spec_file(specs, reconnect_for="2s")
    proc = start_run(url, specs)
    try:
        wait_for_batches(url, proc, 10)
        engine.dispose()
        pg.stop("fast")
        code, out, err = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not pg.running():
            pg.start()
    assert code == 1
    assert "Traceback" not in out + err and "During handling" not in out + err, out + err
    errors = [line for line in err.splitlines() if line.startswith("rowfill: ")]
    assert len(errors) == 1, err
    assert f"{path}: field 'reconnect_for'" in errors[0]
    assert "stayed unreachable" in errors[0] and "2.0 s" in errors[0]
    # said once, briefly; the original error is the one reported
    assert (out + err).count("could not record the failure of chunk") == 1
    assert "FAILED" in out and "summary not read" in out
    # nothing was written twice; the run resumes from the checkpoints and finishes
    rerun = start_run(url, specs, worker="runner-2")
    code, out, err = finish(rerun)
    assert code == 0, out + err
    assert_points_added_once(engine)


def status_json(url: str, specs: Path) -> dict:
    done = subprocess.run([ROWFILL, "--specs-dir", str(specs), "--db", url, "status", "add_points", "--json", "--chunks"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)[0]


def test_a_killed_runner_shows_stale_and_the_next_run_takes_its_chunk_over(pg, target):
    from rowfill.airflow import web
    from rowfill.engine.report import backfill_summary
    from rowfill.engine.status import statuses
    from rowfill.spec.spec import load_spec

    url, engine, specs = target
    path = spec_file(specs)
    proc = start_run(url, specs, worker="old-runner")
    wait_for_batches(url, proc, 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    status = status_json(url, specs)
    running = [c for c in status["chunks"] if c["status"] == "running"]
    assert len(running) == 1 and running[0]["worker"] == "old-runner"  # its lease is still fresh
    chunk_no = running[0]["chunk_no"]

    # Let the lease run out without waiting for it: the heartbeat stopped with the process, so
    # its last renewal is what ages; move it back past the lease (rowfill.engine.lease.LEASE_SECONDS).
    with admin(url) as conn:
        moved = conn.execute("UPDATE rowfill.leases SET heartbeat_at = heartbeat_at - interval '1 minute' "
                             "WHERE backfill = 'add_points' AND worker = 'old-runner'").rowcount
    assert moved == 1

    status = status_json(url, specs)
    assert status["state"] == "stale" and status["eta_seconds"] is None and status["chunks_stale"] == 1
    stale = next(c for c in status["chunks"] if c["chunk_no"] == chunk_no)
    assert stale["status"] == "stale" and stale["rows_per_second"] == 0 and stale["eta_seconds"] is None
    shown = subprocess.run([ROWFILL, "--specs-dir", str(specs), "--db", url, "status", "add_points", "--chunks"],
                           capture_output=True, text=True, check=True).stdout
    assert "stale" in shown and "old-runner" in shown and "no ETA" in shown
    summary = backfill_summary(engine, "add_points")
    assert summary.chunks_stale == 1 and summary.eta_seconds is None and "1 stale" in summary.line()
    spec = load_spec(path)
    entry = web._entry(spec, statuses(engine, ["add_points"])["add_points"], "running", {}, False)
    page = web.render_fragment([entry])
    cells, failures = web.chunk_map(entry)
    assert "data-state='stale'" in page and "st tone-bad" in page and entry["eta_text"].startswith("none")
    assert "class='c s'" in cells and [f["kind"] for f in failures] == ["stale"] and "lease ran out" in failures[0]["problem"]

    rerun = start_run(url, specs, worker="new-runner")
    code, out, err = finish(rerun)
    assert code == 0, out + err
    takeover = [line for line in (out + err).splitlines() if "takeover:" in line]
    assert len(takeover) == 1, out + err
    assert f"chunk {chunk_no} of backfill add_points" in takeover[0] and "worker old-runner" in takeover[0]
    assert "lease ran out" in takeover[0] and "new-runner" in takeover[0]
    assert_points_added_once(engine)
