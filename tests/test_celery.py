"""Scale-out: the same backfill DAGs on a real CeleryExecutor deployment on this machine —
Redis broker, PostgreSQL metadata DB, scheduler, API server, DAG processor, triggerer and two
Celery workers as separate processes. Chunks of one run spread over both workers, the pool still
caps chunks across workers, and a worker killed mid-chunk loses nothing: the chunk is retried on
the other worker and resumes from its cursor."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import create_database, make_users, write_spec
from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.devstack import AirflowStack
from rowfill_dev.localpg import free_port

pytestmark = [pytest.mark.airflow, pytest.mark.celery]

ROWS = 40_000
POOL_SLOTS = 2  # rowfill_app_db in include/pools.json


@pytest.fixture(scope="module")
def redis_url():
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (make test installs it when run as root)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(0.5)
    yield f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def target(pg_cluster):
    url = create_database(pg_cluster, "celery_app")
    engine = engine_from_url(url)
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module")
def stack(pg_cluster, redis_url, target):
    url, _ = target
    meta = create_database(pg_cluster, "celery_airflow_meta").replace("postgresql://", "postgresql+psycopg://")
    home = Path(tempfile.mkdtemp(prefix="rowfill-celery-"))
    specs = home / "specs"
    specs.mkdir()
    # Non-idempotent on purpose; more parallel chunks allowed than the pool has slots.
    for name, table in (("spread", "users_a"), ("survive", "users_b")):
        write_spec(specs, name=name, table=f"public.{table}", where=None, set={"points": "points + 10"},
                   chunk_rows=5_000, batch_rows=250, pause="20ms", max_parallel_chunks=4, retries=3, retry_delay="1s")
    s = AirflowStack(home / "airflow", port=free_port(), target_url=url, specs_dir=specs,
                     metadata_url=meta, broker_url=redis_url,
                     extra_env={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"})
    try:
        s.prepare()
        s.start()
        s.start_workers(["worker1", "worker2"], concurrency=2)
        s.wait_for_dag("rowfill_spread")
        s.wait_for_dag("rowfill_survive")
        yield s
    finally:
        s.stop()


class RunningChunks:
    """Samples how many chunks are running at once, from the checkpoint store every worker writes."""

    def __init__(self, engine, backfill: str):
        self.engine, self.backfill, self.peak = engine, backfill, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            with self.engine.connect() as conn:
                n = conn.execute(text("SELECT count(*) FROM rowfill.chunks WHERE backfill = :b AND status = 'running'"),
                                 {"b": self.backfill}).scalar()
            self.peak = max(self.peak, n)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_chunks_spread_over_both_workers_and_the_pool_caps_them_across_workers(stack, target):
    _, engine = target
    make_users(engine, ROWS, table="users_a")

    with RunningChunks(engine, "spread") as running:
        run_id = stack.trigger("rowfill_spread")
        assert stack.wait_for_run("rowfill_spread", run_id, timeout=600) == "success"

    chunks = CheckpointStore(engine).chunks("spread")
    assert len(chunks) == ROWS // 5_000
    assert {c.worker for c in chunks} == {"worker1", "worker2"}
    assert running.peak == POOL_SLOTS  # 4 worker slots and max_parallel_chunks 4, but the pool has 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users_a WHERE points <> 10")).scalar() == 0


def test_a_worker_killed_mid_chunk_loses_nothing(stack, target):
    _, engine = target
    make_users(engine, ROWS, table="users_b")
    store = CheckpointStore(engine)

    run_id = stack.trigger("rowfill_survive")
    victim_chunk, victim = None, None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:  # a chunk well into its batches
        if "survive" in store.backfill_names():
            for c in store.chunks("survive"):
                if c.status == "running" and c.rows_seen >= 1_000 and c.worker:
                    victim_chunk, victim = c, c.worker
                    break
        time.sleep(0.1)
    assert victim, "no chunk started"
    stack.kill(f"worker-{victim}")
    survivor = ({"worker1", "worker2"} - {victim}).pop()

    assert stack.wait_for_run("rowfill_survive", run_id, timeout=600) == "success"

    resumed = store.chunk("survive", victim_chunk.chunk_no)
    assert resumed.status == "done" and resumed.attempts >= 2
    assert resumed.worker == survivor
    assert resumed.rows_written == resumed.rows_seen == 5_000  # resumed from the cursor: nothing twice
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users_b WHERE points <> 10")).scalar() == 0
