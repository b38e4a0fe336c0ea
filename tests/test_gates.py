"""Health gates tripped for real: a streaming replica with its replay paused, an idle transaction
holding a lock on the table, sessions queued behind it, many active backends, a user probe. Each
time the chunk waits (and says why in the log and the checkpoint row), continues once the cause
is gone, and fails cleanly, naming the gate, above the critical threshold."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from helpers import create_database, make_users, spec_for, wait_until
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.probes import GateCritical
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.throttle import Throttle
from rowfill.errors import ChunkFailed
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.localpg import LocalPostgres


class Background:
    """A chunk running in a thread, so the test can trip and clear gates while it runs."""

    def __init__(self, engine, spec, chunk_no: int):
        self.throttle = Throttle.for_spec(spec, engine=engine)
        self.throttle.gates.max_backoff = 1.0  # re-check every second while waiting: short tests
        self.runner = ChunkRunner(engine, spec, throttle=self.throttle)
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(chunk_no,), daemon=True)
        self.thread.start()

    def _run(self, chunk_no):
        try:
            self.result = self.runner.run(chunk_no)
        except Exception as exc:  # the test inspects it
            self.error = exc

    def join(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the chunk did not finish"
        return self


def chunk_row(engine, spec):
    return CheckpointStore(engine).chunks(spec.name)[0]


def assert_held(engine, spec, phrase: str, hold_for: float = 2.0):
    """The chunk says it is waiting for ``phrase`` and writes nothing while it waits."""
    row = wait_until(lambda: (r := chunk_row(engine, spec)).throttle_state and phrase in r.throttle_state and r,
                     what=f"the chunk to wait for {phrase!r}")
    assert row.throttle_state.startswith("waiting: ")
    time.sleep(hold_for)
    later = chunk_row(engine, spec)
    assert later.rows_written == row.rows_written, "the chunk kept writing while a gate was closed"
    assert later.status == "running" and phrase in later.throttle_state
    return later


def assert_finished(engine, spec, job: Background, n: int):
    job.join()
    assert job.error is None, job.error
    assert job.result.status == "done"
    row = chunk_row(engine, spec)
    assert (row.status, row.rows_written, row.throttle_state) == ("done", n, None)
    assert row.throttled_seconds >= 1.0  # the wait is on record
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NULL")).scalar() == 0


def assert_failed_on(engine, spec, job: Background, gate: str):
    job.join()
    assert isinstance(job.error, ChunkFailed) and isinstance(job.error.__cause__, GateCritical)
    message = str(job.error)
    assert f"gate {gate} critical" in message and "stopped at a batch boundary" in message
    row = chunk_row(engine, spec)
    assert row.status == "failed" and f"gate {gate} critical" in row.last_error
    return row


# -- replication lag ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated():
    base = Path(tempfile.mkdtemp(prefix="rowfill-test-repl-"))
    primary = LocalPostgres(base / "primary").start()
    try:
        replica = primary.start_replica(base / "replica")
    except Exception:
        primary.stop("immediate")
        raise
    yield primary, replica
    replica.stop("immediate")
    primary.stop("immediate")


def replica_lag(engine) -> float:
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication")).scalar()


def make_replica_lag(primary_engine, replica_engine, seconds: float):
    """Pause replay on the replica, write some WAL on the primary, wait until the lag shows."""
    with replica_engine.connect() as conn:
        conn.execute(text("SELECT pg_wal_replay_pause()"))
        conn.commit()
    with primary_engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS wal_noise (x int)"))
        conn.execute(text("INSERT INTO wal_noise SELECT generate_series(1, 1000)"))
    wait_until(lambda: replica_lag(primary_engine) > seconds, what=f"replica lag above {seconds} s")


def resume_replay(replica_engine):
    with replica_engine.connect() as conn:
        conn.execute(text("SELECT pg_wal_replay_resume()"))
        conn.commit()


@pytest.fixture
def repl_engines(replicated):
    primary, replica = replicated
    p, r = engine_from_url(create_database(primary, "gates")), engine_from_url(replica.url)
    wait_until(lambda: _replica_has(r, "gates"), what="the replica to see the new database")
    yield p, r
    resume_replay(r)
    p.dispose()
    r.dispose()


def _replica_has(replica_engine, db: str) -> bool:
    with replica_engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_database WHERE datname = :d"), {"d": db}).scalar() == 1


def test_replica_lag_holds_the_chunk_until_the_replica_catches_up(repl_engines, tmp_path):
    primary, replica = repl_engines
    make_users(primary, 2_000)
    spec = spec_for(tmp_path, chunk_rows=2_000, batch_rows=200, gates={"replica_lag": {"wait": "1s", "critical": "10min"}})
    [chunk] = plan_backfill(primary, spec)
    make_replica_lag(primary, replica, 1.5)

    job = Background(primary, spec, chunk.chunk_no)
    held = assert_held(primary, spec, "replica lag")
    assert held.rows_written == 0 and held.throttle_state.startswith("waiting: replica lag ")
    assert held.throttle_state.endswith(" s > 1.0 s")

    resume_replay(replica)
    assert_finished(primary, spec, job, 2_000)
    wait_until(lambda: _replica_rows_filled(replica) == 2_000, what="the replica to replay every row")


def _replica_rows_filled(replica_engine) -> int:
    engine = engine_from_url(str(replica_engine.url.set(database="gates").render_as_string(hide_password=False)))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NOT NULL")).scalar()
    finally:
        engine.dispose()


def test_replica_lag_above_critical_fails_the_chunk_naming_the_gate(repl_engines, tmp_path):
    primary, replica = repl_engines
    make_users(primary, 1_000)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100, gates={"replica_lag": {"wait": "500ms", "critical": "1s"}})
    [chunk] = plan_backfill(primary, spec)
    make_replica_lag(primary, replica, 1.5)
    row = assert_failed_on(primary, spec, Background(primary, spec, chunk.chunk_no), "replica_lag")
    assert "replica lag" in row.last_error and "> 1.0 s" in row.last_error
    assert row.rows_written == 0 and row.cursor is None  # stopped before writing anything


# -- a transaction holding a lock on the table, and sessions queued behind it ----------------


class IdleLockHolder:
    """BEGIN; SELECT ... FOR UPDATE; then nothing: an 'idle in transaction' session holding a row lock."""

    def __init__(self, engine, key: int):
        self.conn = engine.connect()
        self.conn.execute(text("SELECT id FROM users WHERE id = :k FOR UPDATE"), {"k": key})

    def release(self):
        self.conn.rollback()
        self.conn.close()


class Sessions:
    """Statements running in their own sessions (and threads) until the test ends them."""

    def __init__(self, engine, sql: str, n: int):
        self.own = create_engine(engine.url, poolclass=NullPool)  # not the chunk's pool
        self.conns = [self.own.connect() for _ in range(n)]
        self.pids = [c.execute(text("SELECT pg_backend_pid()")).scalar() for c in self.conns]
        for c in self.conns:
            c.commit()
        self.threads = [threading.Thread(target=self._run, args=(c, sql), daemon=True) for c in self.conns]
        for t in self.threads:
            t.start()
        self.engine = engine

    @staticmethod
    def _run(conn, sql):
        try:
            conn.execute(text(sql))
            conn.commit()
        except Exception:  # cancelled by the test
            conn.rollback()

    def wait_active(self, n: int, state: str = "active"):
        def count():
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p) AND state = :s"),
                                    {"p": self.pids, "s": state}).scalar() >= n
        wait_until(count, what=f"{n} sessions {state}")

    def end(self):
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_cancel_backend(p) FROM unnest(CAST(:p AS int[])) p"), {"p": self.pids})
            conn.commit()
        for t in self.threads:
            t.join(10)
        for c in self.conns:
            c.close()
        self.own.dispose()


def test_an_idle_transaction_holding_a_lock_on_the_table_holds_the_chunk(engine, tmp_path):
    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=2_000, batch_rows=200,
                    gates={"long_transaction": {"wait": "1s"}, "lock_waiters": {"wait": 0}})
    [chunk] = plan_backfill(engine, spec)
    holder = IdleLockHolder(engine, 1_500)
    time.sleep(1.2)
    try:
        job = Background(engine, spec, chunk.chunk_no)
        held = assert_held(engine, spec, "oldest transaction holding a lock on the table")
        assert "idle in transaction" in held.throttle_state
    finally:
        holder.release()
    assert_finished(engine, spec, job, 2_000)


def test_sessions_waiting_for_locks_on_the_table_hold_the_chunk(engine, tmp_path):
    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=2_000, batch_rows=200, gates={"lock_waiters": {"wait": 1, "critical": 10}})
    [chunk] = plan_backfill(engine, spec)
    holder = IdleLockHolder(engine, 1_500)
    queued = Sessions(engine, "UPDATE users SET points = points + 1 WHERE id = 1500", 2)  # both wait for the holder
    try:
        queued.wait_active(2)
        job = Background(engine, spec, chunk.chunk_no)
        held = assert_held(engine, spec, "sessions waiting for locks on the table")
        assert "2 > 1" in held.throttle_state
    finally:
        holder.release()
        queued.end()
    assert_finished(engine, spec, job, 2_000)


def test_a_lock_held_past_critical_fails_the_chunk_naming_the_gate(engine, tmp_path):
    make_users(engine, 1_000)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100, gates={"long_transaction": {"wait": "500ms", "critical": "1s"}})
    [chunk] = plan_backfill(engine, spec)
    holder = IdleLockHolder(engine, 10)
    time.sleep(1.5)
    try:
        row = assert_failed_on(engine, spec, Background(engine, spec, chunk.chunk_no), "long_transaction")
    finally:
        holder.release()
    assert "idle in transaction" in row.last_error
    # once the cause is gone, the same chunk runs to the end from its checkpoint
    assert ChunkRunner(engine, spec).run(chunk.chunk_no).status == "done"


# -- active backends ---------------------------------------------------------------------------


def test_many_active_backends_hold_the_chunk(engine, tmp_path):
    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=2_000, batch_rows=200, gates={"active_backends": {"wait": 3, "critical": 50}})
    [chunk] = plan_backfill(engine, spec)
    busy = Sessions(engine, "SELECT pg_sleep(120)", 5)
    try:
        busy.wait_active(5)
        job = Background(engine, spec, chunk.chunk_no)
        held = assert_held(engine, spec, "active backends")
        assert held.rows_written == 0
    finally:
        busy.end()
    assert_finished(engine, spec, job, 2_000)


def test_active_backends_above_critical_fail_the_chunk(engine, tmp_path):
    make_users(engine, 1_000)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100, gates={"active_backends": {"wait": 1, "critical": 3}})
    [chunk] = plan_backfill(engine, spec)
    busy = Sessions(engine, "SELECT pg_sleep(120)", 5)
    try:
        busy.wait_active(5)
        row = assert_failed_on(engine, spec, Background(engine, spec, chunk.chunk_no), "active_backends")
    finally:
        busy.end()
    assert "active backends 5 > 3" in row.last_error


# -- the user's own probe ----------------------------------------------------------------------


def test_a_user_probe_holds_and_then_stops_the_chunk(engine, tmp_path):
    make_users(engine, 3_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE queue (depth int NOT NULL)"))
        conn.execute(text("INSERT INTO queue VALUES (500)"))
    spec = spec_for(tmp_path, chunk_rows=3_000, batch_rows=100, pause="50ms",
                    gates={"probe": {"sql": "SELECT depth FROM queue", "wait": 100, "critical": 1000, "label": "queue depth"}})
    [chunk] = plan_backfill(engine, spec)
    job = Background(engine, spec, chunk.chunk_no)
    held = assert_held(engine, spec, "queue depth")
    assert "queue depth 500 > 100" in held.throttle_state

    def set_depth(n):
        with engine.begin() as conn:
            conn.execute(text("UPDATE queue SET depth = :n"), {"n": n})

    set_depth(10)
    wait_until(lambda: chunk_row(engine, spec).rows_written >= 500, what="the chunk to continue")
    set_depth(5_000)
    row = assert_failed_on(engine, spec, job, "probe")
    assert "queue depth 5000 > 1000" in row.last_error
    assert 500 <= row.rows_written < 3_000 and row.cursor == row.rows_written  # stopped at a batch boundary
