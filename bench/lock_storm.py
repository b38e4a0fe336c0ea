#!/usr/bin/env python
"""Do live writers wait behind rowfill when the application holds rows the backfill must write?

Issue 10, item 5. One invocation:
  1. starts a throwaway PostgreSQL (rowfill_dev.localpg, production durability) unless ``--db URL``;
  2. builds an N-row table ``storm(id bigint PK, points int, bf int)`` (bf 0 = not backfilled);
  3. the application takes ``--held`` scattered rows (seeded random ids) with
     ``SELECT ... FOR UPDATE`` in one transaction and holds them for ``--hold`` seconds;
  4. meanwhile ``--writers`` threads run live point updates (``UPDATE storm SET points = points + 1
     WHERE id = <random id not held>``, autocommit) as fast as they can, each timed;
  5. rowfill backfills ``bf = bf + 1`` (no ``where``: a row written twice shows as 2) with the
     spec's default throttle, ``--parallel`` chunks at once; a chunk that fails (``ChunkFailed``) is
     run again once the application has released its rows, as an Airflow retry would;
  6. prints the live writers' count, p50/p99/max latency while the backfill ran, and the same for
     a baseline of ``--baseline`` seconds just before it (the application already holding its rows,
     no backfill: the machine's own tail latency, fsync included), the backfill's time, chunk
     failures, and rows written 0 / 1 / 2+ times (every row must be exactly 1).

Run the same script against another checkout's package for a before/after on one machine:

    .venv/bin/python bench/lock_storm.py --json
    PYTHONPATH=/path/to/other/checkout/include .venv/bin/python bench/lock_storm.py --json

Target (issue 10): live writers' maximum wait < 100 ms, every row written exactly once.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import rowfill
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
from rowfill.engine.plan import plan_backfill  # noqa: E402
from rowfill.engine.runner import ChunkRunner  # noqa: E402
from rowfill.errors import ChunkFailed  # noqa: E402
from rowfill.spec.spec import parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first

TARGET_MAX_MS = 100.0
PG_SETTINGS = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on", "shared_buffers": "512MB",
               "max_wal_size": "8GB", "checkpoint_timeout": "15min"}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS storm"))
        conn.execute(text("CREATE TABLE storm (id bigint PRIMARY KEY, points int NOT NULL DEFAULT 0, "
                          "bf int NOT NULL DEFAULT 0, pad text)"))
        conn.execute(text("INSERT INTO storm (id, pad) SELECT g, repeat('x', 60) FROM generate_series(1, :n) g"), {"n": rows})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE storm"))
        conn.execute(text("CHECKPOINT"))


class Application:
    """Holds ``ids`` locked for ``hold`` seconds from ``start()``."""

    def __init__(self, engine, ids: list[int], hold: float):
        self.engine, self.ids, self.hold = engine, ids, hold
        self.locked = threading.Event()
        self.released_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.engine.connect() as conn:
            tx = conn.begin()
            conn.execute(text("SELECT id FROM storm WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"), {"ids": self.ids})
            self.locked.set()
            time.sleep(self.hold)
            tx.commit()
            self.released_at = time.perf_counter()

    def start(self):
        self.thread.start()
        self.locked.wait(60)


class LiveWriters:
    def __init__(self, engine, n: int, rows: int, held: set[int], seed: int):
        self.engine, self.n, self.rows, self.held = engine, n, rows, held
        self.stop = threading.Event()
        self.latencies: list[tuple[float, float]] = []  # (start, seconds) per live update
        self.errors = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(n)]

    def _run(self, seed: int):
        rnd = random.Random(seed)
        mine = []
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SET lock_timeout = '30s'"))
            while not self.stop.is_set():
                key = rnd.randint(1, self.rows)
                if key in self.held:
                    continue
                t0 = time.perf_counter()
                try:
                    conn.execute(text("UPDATE storm SET points = points + 1 WHERE id = :k"), {"k": key})
                except Exception:  # noqa: BLE001 - counted; a lock timeout here is a 30 s wait
                    with self.lock:
                        self.errors += 1
                    continue
                mine.append((t0, time.perf_counter() - t0))
                time.sleep(0.001)
        with self.lock:
            self.latencies += mine

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def backfill(engine, args, app: Application) -> dict:
    spec = parse_spec({"name": "storm_bf", "connection": "bench", "table": "public.storm", "key": "id",
                       "set": {"bf": "bf + 1"}, "chunk_rows": args.chunk_rows, "max_parallel_chunks": args.parallel},
                      "bench/lock_storm.py")
    CheckpointStore(engine).reset(spec.name)
    chunks = plan_backfill(engine, spec)
    failures: list[str] = []

    def one(chunk):
        try:
            return ChunkRunner(engine, spec, label=chunk.label).run(chunk.chunk_no)
        except ChunkFailed as exc:
            failures.append(str(exc).splitlines()[0][:300])
            return None

    t0 = time.perf_counter()
    started = t0
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(one, chunks))
    first_pass = time.perf_counter() - t0
    retried = [c for c, r in zip(chunks, results) if r is None]
    if retried:  # as Airflow's task retry would, once the application has let go
        app.thread.join()
        for chunk in retried:
            ChunkRunner(engine, spec, label=chunk.label).run(chunk.chunk_no)
    return {"started": started, "chunks": len(chunks), "seconds_first_pass": round(first_pass, 2),
            "seconds_total": round(time.perf_counter() - t0, 2), "chunk_failures": failures}


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="PostgreSQL URL to use instead of a throwaway cluster (a table `storm` is created)")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--held", type=int, default=1_000, help="rows the application holds")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds the application holds them")
    ap.add_argument("--writers", type=int, default=4, help="live point-update threads")
    ap.add_argument("--chunk-rows", type=int, default=100_000)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds of live writes before the backfill starts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    pg = None
    if args.db:
        url = args.db
    else:
        pg = LocalPostgres(Path(tempfile.mkdtemp(prefix="rowfill-storm-")) / "pgdata", settings=PG_SETTINGS)
        pg.start()
        url = pg.url
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    engine = create_engine(u, pool_size=args.parallel + args.writers + 2, max_overflow=4)
    migrate_database(engine)  # rowfill runs no DDL while it works: its schema first, as `rowfill db migrate`
    try:
        build(engine, args.rows)
        held = sorted(random.Random(args.seed).sample(range(1, args.rows + 1), args.held))
        app = Application(engine, held, args.hold)
        writers = LiveWriters(engine, args.writers, args.rows, set(held), args.seed)
        app.start()
        writers.start()
        time.sleep(args.baseline)  # the live writers' own tail latency, before the backfill starts
        res = backfill(engine, args, app)
        writers.finish()
        app.thread.join()
        with engine.connect() as conn:
            counts = dict(conn.execute(text("SELECT least(bf, 2), count(*) FROM storm GROUP BY 1")).all())
        started = res.pop("started")
        during = [x * 1000 for t, x in writers.latencies if t >= started]
        before = [x * 1000 for t, x in writers.latencies if t < started]

        def stats(lat):
            return {"count": len(lat), "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
                    "max_ms": round(max(lat, default=0), 2), "mean_ms": round(statistics.fmean(lat), 2) if lat else 0}

        out = {
            "rowfill": str(Path(rowfill.__file__).parent),
            "config": {k: getattr(args, k) for k in ("rows", "held", "hold", "writers", "chunk_rows", "parallel", "seed")},
            "backfill": res,
            "live_writes": {**stats(during), "errors": writers.errors},
            "live_writes_baseline": stats(before),
            "rows_written": {"never": counts.get(0, 0), "once": counts.get(1, 0), "twice_or_more": counts.get(2, 0)},
        }
        out["verdict"] = {"max_wait_under_target": out["live_writes"]["max_ms"] < TARGET_MAX_MS,
                          "every_row_exactly_once": counts.get(1, 0) == args.rows}
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            lw = out["live_writes"]
            print(f"rowfill from {out['rowfill']}")
            print(f"backfill: {res['chunks']} chunks, first pass {res['seconds_first_pass']} s, total {res['seconds_total']} s, "
                  f"chunk failures: {len(res['chunk_failures'])}")
            print(f"live writes during the backfill: {lw['count']:,}, errors {lw['errors']}, p50 {lw['p50_ms']} ms, "
                  f"p99 {lw['p99_ms']} ms, max {lw['max_ms']} ms (target < {TARGET_MAX_MS:.0f} ms)")
            b = out["live_writes_baseline"]
            print(f"live writes before it (baseline): {b['count']:,}, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, "
                  f"max {b['max_ms']} ms")
            print(f"rows written: {out['rows_written']}")
        return 0 if all(out["verdict"].values()) else 1
    finally:
        engine.dispose()
        if pg:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
