#!/usr/bin/env python
"""How long does planning take for very large tables? (a benchmark, not a test)

One invocation, on a throwaway PostgreSQL:
  1. a real N-row table (default 10M): the exact index walk (the baseline) against estimated
     planning (block sample + quantiles), with the estimated chunks' real sizes;
  2. a 1-billion-row key space: a table whose keys span 1..1,000,000,000 and whose statistics say
     it holds a billion rows (its pages hold a 1-in-1000 sample of them; creating a billion rows
     here would take hours and 100 GB), planned by plan_backfill into at most max_map_length chunks.

    .venv/bin/python bench/plan_speed.py [--rows 10000000] [--chunk-rows 200000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
from rowfill.engine.database import engine_from_url  # noqa: E402
from rowfill.engine.plan import DEFAULT_MAX_MAP_LENGTH, plan_backfill  # noqa: E402
from rowfill.spec.spec import parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first


def spec(name: str, table: str, chunk_rows: int, planning: str):
    return parse_spec({"name": name, "connection": "bench", "table": table, "key": "id", "where": "v IS NULL",
                       "set": {"v": "1"}, "chunk_rows": chunk_rows, "batch_rows": 1000, "planning": planning}, "bench")


def timed_plan(engine, s):
    CheckpointStore(engine).reset(s.name)
    t0 = time.perf_counter()
    chunks = plan_backfill(engine, s, limit=DEFAULT_MAX_MAP_LENGTH)
    return time.perf_counter() - t0, chunks


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--chunk-rows", type=int, default=200_000)
    args = ap.parse_args()
    pg = LocalPostgres(Path(tempfile.mkdtemp(prefix="rowfill-bench-plan-")) / "pg",
                       settings={"shared_buffers": "1GB", "max_wal_size": "8GB"}).start()
    engine = engine_from_url(pg.url)
    migrate_database(engine)  # rowfill runs no DDL while it works: its schema first, as `rowfill db migrate`
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
        print(f"machine: {machine()}; PostgreSQL {version}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id bigint PRIMARY KEY, v int, pad text)"))
            conn.execute(text("INSERT INTO t SELECT g * 3, NULL, md5(g::text) FROM generate_series(1, :n) g"), {"n": args.rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE t"))

        exact_s, exact = timed_plan(engine, spec("exact", "t", args.chunk_rows, "exact"))
        est_s, est = timed_plan(engine, spec("estimated", "t", args.chunk_rows, "estimated"))
        with engine.connect() as conn:
            sizes = [conn.execute(text("SELECT count(*) FROM t WHERE id > :lo AND id <= :hi"), {"lo": c.lo, "hi": c.hi}).scalar()
                     for c in est]
        print(f"\n{args.rows:,}-row table, chunk_rows {args.chunk_rows:,}")
        print(f"  exact walk (baseline): {len(exact):5} chunks in {exact_s:7.2f} s")
        print(f"  estimated (sample):    {len(est):5} chunks in {est_s:7.2f} s  ({exact_s / est_s:.0f}x faster); "
              f"real chunk sizes min {min(sizes):,} / median {statistics.median(sizes):,.0f} / max {max(sizes):,}; "
              f"all {sum(sizes):,} rows covered: {sum(sizes) == args.rows}")

        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE huge (id bigint PRIMARY KEY, v int)"))
            conn.execute(text("INSERT INTO huge SELECT g * 1000, NULL FROM generate_series(1, 1000000) g"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE huge"))
            # The statistics of a billion-row table: what the planner's huge-table path reads.
            conn.execute(text("UPDATE pg_class SET reltuples = 1e9 WHERE oid = 'huge'::regclass"))
        huge_s, huge = timed_plan(engine, spec("huge", "huge", args.chunk_rows, "auto"))
        covered = huge[0].lo < 1000 and huge[-1].hi == 1_000_000_000
        print(f"\n1,000,000,000-row key space (auto planning), chunk_rows {args.chunk_rows:,}, max_map_length {DEFAULT_MAX_MAP_LENGTH}")
        print(f"  {len(huge)} chunks of ~{huge[0].est_rows:,} rows in {huge_s:.2f} s; covers 1..1e9: {covered}; "
              f"target < 5 s: {'PASS' if huge_s < 5 and len(huge) <= DEFAULT_MAX_MAP_LENGTH else 'MISS'}")
    finally:
        engine.dispose()
        pg.stop()


if __name__ == "__main__":
    main()
