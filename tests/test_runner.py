"""The runner against a real PostgreSQL: every row written once, a rerun changes nothing, live
locks make a batch give up instead of hang, and a worker killed at any instant loses nothing and
applies nothing twice."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import ChunkFailed
from rowfill.store.checkpoint import CheckpointStore


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def run_plan(engine, spec, **runner_kw):
    return [ChunkRunner(engine, spec, **runner_kw).run(c.chunk_no) for c in plan_backfill(engine, spec)]


def table_state(engine, table: str = "users") -> str:
    """A hash of every row *and its row version*: any write, even one to the same value, changes it."""
    return scalar(engine, f"SELECT md5(string_agg(t.id || ':' || t.xmin || ':' || t::text, ',' ORDER BY t.id)) FROM {table} t")


def points_spec(tmp_path, **fields):
    """Not idempotent on purpose: applying a batch twice would show as points 20."""
    return spec_for(tmp_path, name="add_points", where=None, set={"points": "points + 10"}, **fields)


def assert_points_applied_exactly_once(engine, name: str, n: int) -> None:
    assert scalar(engine, "SELECT count(*) FROM users") == n
    wrong = scalar(engine, "SELECT count(*) FROM users WHERE points <> 10")
    assert wrong == 0, f"{wrong} rows do not have points == 10: " + repr(
        scalar(engine, "SELECT string_agg(DISTINCT points::text, ',') FROM users"))
    chunks = CheckpointStore(engine).chunks(name)
    assert {c.status for c in chunks} == {"done"}
    assert sum(c.rows_written for c in chunks) == n
    assert sum(c.rows_seen for c in chunks) == n


# -- the write itself --------------------------------------------------------------------------


def test_every_row_gets_its_full_name(engine, tmp_path):
    make_users(engine, 3_500)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=100)
    results = run_plan(engine, spec)
    assert [r.status for r in results] == ["done"] * 4
    assert [r.batches for r in results] == [10, 10, 10, 5]
    assert sum(r.rows_written for r in results) == 3_500
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM first_name || ' ' || last_name") == 0
    assert scalar(engine, "SELECT full_name FROM users WHERE id = 42") == "first42 last42"
    rows = CheckpointStore(engine).chunks(spec.name)
    assert [(c.status, c.rows_written, c.cursor) for c in rows] == [
        ("done", 1000, 1000), ("done", 1000, 2000), ("done", 1000, 3000), ("done", 500, 3500)]
    assert all(c.finished_at is not None and c.last_error is None for c in rows)


def test_rows_outside_the_where_are_left_alone(engine, tmp_path):
    make_users(engine, 1_000)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET full_name = 'kept' WHERE id % 3 = 0"))
    before = scalar(engine, "SELECT md5(string_agg(id || ':' || xmin, ',' ORDER BY id)) FROM users WHERE id % 3 = 0")
    results = run_plan(engine, spec_for(tmp_path, chunk_rows=1000, batch_rows=100))
    assert sum(r.rows_written for r in results) == 1_000 - 333
    assert sum(r.rows_seen for r in results) == 1_000
    assert scalar(engine, "SELECT md5(string_agg(id || ':' || xmin, ',' ORDER BY id)) FROM users WHERE id % 3 = 0") == before
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name = 'kept'") == 333


def test_a_rerun_changes_nothing(engine, tmp_path):
    make_users(engine, 3_000)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=100)
    run_plan(engine, spec)
    before = table_state(engine)
    checkpoints = CheckpointStore(engine).chunks(spec.name)

    started = time.monotonic()
    assert plan_backfill(engine, spec) == []  # the DAG's next run maps no chunk at all
    again = [ChunkRunner(engine, spec).run(n) for n in (1, 2, 3)]  # a cleared chunk task: a no-op
    assert time.monotonic() - started < 2

    assert [(r.status, r.batches, r.rows_written) for r in again] == [("done", 0, 0)] * 3
    assert table_state(engine) == before
    after = CheckpointStore(engine).chunks(spec.name)
    assert [(c.rows_written, c.batches, c.attempts, c.cursor) for c in after] == [
        (c.rows_written, c.batches, c.attempts, c.cursor) for c in checkpoints]


def test_even_after_reset_a_rerun_writes_no_row_that_is_already_done(engine, tmp_path):
    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=100)
    run_plan(engine, spec)
    before = table_state(engine)
    assert CheckpointStore(engine).reset(spec.name) == 1
    results = run_plan(engine, spec)
    assert sum(r.rows_seen for r in results) == 2_000
    assert sum(r.rows_written for r in results) == 0  # `where` no longer matches: nothing rewritten
    assert table_state(engine) == before


def test_sql_mode_copies_every_row_exactly_once(engine, tmp_path):
    make_users(engine, 2_500)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users_v2 (id bigint PRIMARY KEY, display_name text NOT NULL)"))
        conn.execute(text("INSERT INTO users_v2 SELECT id, 'copied earlier' FROM users WHERE id IN (5, 1500)"))
    spec = spec_for(
        tmp_path, name="users_copy_v2", where=None, set=None, chunk_rows=1000, batch_rows=100,
        sql="INSERT INTO users_v2 (id, display_name) SELECT id, first_name || ' ' || last_name FROM users "
            "WHERE id > :lo AND id <= :hi ON CONFLICT (id) DO NOTHING",
    )
    results = run_plan(engine, spec)
    assert sum(r.rows_written for r in results) == 2_500 - 2  # rows_written counts rows this run inserted
    assert scalar(engine, "SELECT count(*) FROM users_v2") == 2_500
    missing_or_wrong = scalar(engine, """
        SELECT count(*) FROM users u FULL JOIN users_v2 v USING (id)
        WHERE v.id IS NULL OR u.id IS NULL OR v.display_name NOT IN (u.first_name || ' ' || u.last_name, 'copied earlier')""")
    assert missing_or_wrong == 0
    copy_state = table_state(engine, "users_v2")
    assert plan_backfill(engine, spec) == []
    CheckpointStore(engine).reset(spec.name)
    assert sum(r.rows_written for r in run_plan(engine, spec)) == 0
    assert table_state(engine, "users_v2") == copy_state


# -- live locks --------------------------------------------------------------------------------


class RowLock:
    """Another session holding a row lock, as live traffic would: BEGIN; SELECT ... FOR UPDATE."""

    def __init__(self, engine, key: int):
        self.conn = engine.connect()
        self.tx = self.conn.begin()
        self.conn.execute(text("SELECT id FROM users WHERE id = :k FOR UPDATE"), {"k": key})

    def release(self):
        if self.tx.is_active:
            self.tx.rollback()
        self.conn.close()


def test_a_row_held_past_locked_rows_wait_fails_the_chunk_naming_it_after_writing_the_rest(engine, tmp_path):
    make_users(engine, 1_000)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=100, lock_timeout="200ms", locked_rows_wait="1s")
    [chunk] = plan_backfill(engine, spec)
    lock = RowLock(engine, 550)  # in the sixth batch (501..600)
    try:
        with pytest.raises(ChunkFailed) as caught:
            ChunkRunner(engine, spec).run(chunk.chunk_no)
        # every other row is written, the held one is not, and it is kept to come back to
        assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NOT NULL") == 999
        assert scalar(engine, "SELECT count(*) FROM users WHERE id = 550 AND full_name IS NULL") == 1
        assert scalar(engine, "SELECT string_agg(key::text, ',') FROM rowfill.skipped_rows") == "550"
    finally:
        lock.release()
    message = str(caught.value)
    assert "stayed locked by other sessions for longer than locked_rows_wait (1.0 s): id 550" in message
    assert "`locked_rows_wait`" in message and spec.source in message

    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.cursor, row.rows_written, row.batches) == ("failed", 1000, 999, 10)
    assert "id 550" in row.last_error

    # with the lock gone, the retry writes the kept row and finishes
    again = ChunkRunner(engine, spec).run(chunk.chunk_no)
    assert (again.status, again.batches, again.rows_written) == ("done", 0, 1)
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL") == 0
    assert scalar(engine, "SELECT count(*) FROM rowfill.skipped_rows") == 0
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.last_error, row.attempts, row.rows_written) == ("done", None, 2, 1000)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_lock_released_while_the_chunk_comes_back_to_it_lets_the_chunk_finish(engine, tmp_path):
    make_users(engine, 1_000)
    spec = spec_for(tmp_path, chunk_rows=1000, batch_rows=100, lock_timeout="200ms", batch_retries=2)
    [chunk] = plan_backfill(engine, spec)
    lock = RowLock(engine, 550)
    releaser = threading.Timer(0.5, lock.release)
    releaser.start()
    logger, lines = logging.getLogger("test.runner.lock_released"), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        result = ChunkRunner(engine, spec, logger=logger).run(chunk.chunk_no)
    finally:
        releaser.join()
        lock.release()
    assert (result.status, result.batches, result.rows_written) == ("done", 10, 1_000)
    # the batch met the lock, went around it, and came back to the row once it was free
    assert any("1 skipped rows written now that they are free" in line for line in lines.lines)
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL") == 0
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.last_error, row.attempts, row.rows_written) == ("done", None, 1, 1_000)


# -- exactly once ------------------------------------------------------------------------------

CHILD = """
import sys
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.spec.spec import load_spec

url, spec_path = sys.argv[1], sys.argv[2]
engine = engine_from_url(url)
spec = load_spec(spec_path)
for chunk in plan_backfill(engine, spec, limit=100):  # a limit: no Airflow import, faster start
    ChunkRunner(engine, spec).run(chunk.chunk_no)
"""


def start_child(db_url: str, spec_path: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, db_url, spec_path], stdout=log, stderr=log)


def progress(engine, name: str) -> int:
    with engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass('rowfill.chunks')")).scalar() is None:
            return 0
        return conn.execute(text("SELECT coalesce(sum(rows_seen), 0) FROM rowfill.chunks WHERE backfill = :n"), {"n": name}).scalar()


KILLS = 8


def test_a_worker_killed_at_random_moments_applies_every_row_exactly_once(engine, db_url, tmp_path):
    n = 20_000
    make_users(engine, n)
    spec = points_spec(tmp_path, chunk_rows=5_000, batch_rows=20, pause=0)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    log_path = tmp_path / "child.log"

    with open(log_path, "ab") as log:
        for kill in range(KILLS):
            before = progress(engine, spec.name)
            child = start_child(db_url, spec.source, log)
            deadline = time.monotonic() + 30
            while progress(engine, spec.name) <= before:  # wait until this worker has committed batches
                assert child.poll() is None, f"worker exited early ({child.returncode}): {log_path.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "worker made no progress"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.1))
            assert child.poll() is None, "the backfill finished before kill %d; make it longer" % (kill + 1)
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL

        assert 0 < progress(engine, spec.name) < n
        final = start_child(db_url, spec.source, log)
        assert final.wait(60) == 0, log_path.read_text()[-3000:]

    assert_points_applied_exactly_once(engine, spec.name, n)
    assert max(c.attempts for c in CheckpointStore(engine).chunks(spec.name)) >= 2  # some chunk was resumed


def test_two_runners_on_the_same_chunk_apply_each_row_once(engine, db_url, tmp_path):
    n = 5_000
    make_users(engine, n)
    spec = points_spec(tmp_path, chunk_rows=n, batch_rows=100, pause="5ms")
    [chunk] = plan_backfill(engine, spec)
    engines = [engine_from_url(db_url) for _ in range(2)]
    start = threading.Barrier(2)
    results, errors = [None, None], []

    def worker(i):
        try:
            start.wait(10)
            results[i] = ChunkRunner(engines[i], spec).run(chunk.chunk_no)
        except Exception as exc:  # reported below, with the thread's result
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()

    assert errors == []
    assert [r.status for r in results] == ["done", "done"]
    assert all(r.batches > 0 for r in results), "the runners did not overlap; the test proved nothing"
    assert sum(r.batches for r in results) == n // 100
    assert sum(r.rows_written for r in results) == n
    assert_points_applied_exactly_once(engine, spec.name, n)


def test_a_dead_database_is_reported_with_the_spec_file_and_connection(tmp_path):
    from rowfill.engine.database import DatabaseUnavailable, check_reachable, engine_from_url
    from rowfill_dev.localpg import free_port

    spec = spec_for(tmp_path)
    engine = engine_from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    with pytest.raises(DatabaseUnavailable) as caught:
        check_reachable(engine, spec.connection, spec.source)
    message = str(caught.value)
    assert f"{spec.source}: field 'connection'" in message
    assert "AIRFLOW_CONN_APP_DB" in message and "nothing was changed" in message


def test_a_missing_airflow_connection_is_a_spec_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    """`rowfill plan` with no --db and no such Airflow connection: one line naming the file, the field
    and how to create the connection."""
    from rowfill.ops.cli import main

    monkeypatch.delenv("ROWFILL_DATABASE_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_APP_DB", raising=False)
    spec = spec_for(tmp_path)
    assert main(["--specs-dir", str(tmp_path), "plan", spec.name]) == 1
    err = capsys.readouterr().err
    assert f"{spec.source}: field 'connection': there is no Airflow connection 'app_db'" in err
    assert "AIRFLOW_CONN_APP_DB" in err and "--db" in err and "Traceback" not in err
