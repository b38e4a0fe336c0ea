"""Metrics go out through Airflow's metrics layer as configured: with StatsD on, a UDP listener on
loopback receives rows processed, batch durations, throttle waits and replica lag as real packets."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for
from helpers import wait_until
from receivers import StatsdReceiver
from rowfill.airflow.metrics import BatchMetrics
from rowfill.airflow.observers import standard_observers
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill_dev.localpg import LocalPostgres, free_port
from rowfill_dev.schema import migrate_database


@pytest.fixture
def statsd(monkeypatch):
    """Airflow's StatsD backend pointed at a listener, initialised the way a task process does it."""
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk.observability.metrics import stats_utils

    with StatsdReceiver() as receiver:
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(receiver.port))
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
        stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
        yield receiver
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)  # env restored: no-op again


def test_a_chunk_run_emits_rows_durations_and_throttle_waits(engine, tmp_path, statsd):
    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=2_000, batch_rows=250, pause="50ms")
    [chunk] = plan_backfill(engine, spec)

    ChunkRunner(engine, spec, observers=standard_observers(engine, spec)).run(chunk.chunk_no)

    name = "airflow.rowfill.users_full_name"
    rows = wait_until(lambda: len(statsd.values(f"{name}.rows_processed", "c")) == 8 and statsd.values(f"{name}.rows_processed", "c"),
                      timeout=10, what="8 rows_processed packets")
    assert rows == [250.0] * 8
    assert sum(statsd.values(f"{name}.rows_written", "c")) == 2_000
    durations = statsd.values(f"{name}.batch_duration", "ms")
    assert len(durations) == 8 and all(d > 0 for d in durations)
    waits = statsd.values(f"{name}.throttle_wait", "ms")
    assert len(waits) == 7  # between batches, not before the first
    assert all(w >= 45 for w in waits), waits  # the 50 ms pause, seen from outside the throttle


def scalar_on(engine, sql: str):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@pytest.fixture(scope="module")
def primary_with_paused_replica():
    """A primary and a real streaming replica (pg_basebackup) whose replay is paused, so it falls behind."""
    home = Path(tempfile.mkdtemp(prefix="rowfill-test-replica-"))
    primary = LocalPostgres(home / "primary").start()
    replica_dir = home / "replica"
    replica_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(replica_dir, "postgres", "postgres")
    os.chmod(replica_dir, 0o700)
    primary._run(str(primary.bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                 "-D", str(replica_dir), "-R", "-X", "stream")
    replica = LocalPostgres(replica_dir, port=free_port()).start()
    try:
        with engine_from_url(replica.url).execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text("SELECT pg_wal_replay_pause()"))
        # the replica's WAL receiver connects on its own time (slower on a busy machine): until the
        # primary lists it as streaming there is no replica to measure, and early batches send no gauge
        primary_engine = engine_from_url(primary.url)
        try:
            wait_until(lambda: scalar_on(primary_engine, "SELECT count(*) FROM pg_stat_replication "
                                                         "WHERE state = 'streaming'") == 1, timeout=60)
        finally:
            primary_engine.dispose()
        yield primary
    finally:
        replica.stop("immediate")
        primary.stop("immediate")


def test_replica_lag_is_sent_as_gauges_while_a_replica_falls_behind(primary_with_paused_replica, tmp_path, statsd):
    engine = engine_from_url(primary_with_paused_replica.url)
    try:
        migrate_database(engine)
        make_users(engine, 3_000)
        spec = spec_for(tmp_path, chunk_rows=3_000, batch_rows=500, progress_every="0s")
        [chunk] = plan_backfill(engine, spec)
        ChunkRunner(engine, spec, observers=[BatchMetrics(engine, lag_every=0)]).run(chunk.chunk_no)
    finally:
        engine.dispose()

    behind = wait_until(lambda: len(statsd.values("airflow.rowfill.users_full_name.replica_lag_bytes", "g")) == 6
                        and statsd.values("airflow.rowfill.users_full_name.replica_lag_bytes", "g"), timeout=10)
    assert behind[0] > 0 and behind == sorted(behind) and behind[-1] > behind[0]  # replay paused: it only grows
    assert len(statsd.values("airflow.rowfill.users_full_name.replica_lag", "g")) == 6


def test_no_replica_no_lag_gauge(engine, tmp_path, statsd):
    make_users(engine, 500)
    spec = spec_for(tmp_path, chunk_rows=500, batch_rows=250)
    [chunk] = plan_backfill(engine, spec)
    ChunkRunner(engine, spec, observers=[BatchMetrics(engine, lag_every=0)]).run(chunk.chunk_no)
    wait_until(lambda: len(statsd.values("airflow.rowfill.users_full_name.rows_processed", "c")) == 2, timeout=10)
    assert not [p for p in statsd.packets if "replica_lag" in p]  # nothing to report is not a lag of 0
