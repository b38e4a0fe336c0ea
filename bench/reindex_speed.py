#!/usr/bin/env python
"""Search re-index: build the GIN index before the backfill or after it?

One invocation, both orders on the same freshly seeded products table (rowfill.examples.seed):

  before   GIN index on search_vector exists; rowfill runs include/specs/products_search_vector.yaml
           (pause 0), every UPDATE maintaining the index (fastupdate pending list, merged as it fills);
  after    no index; the same rowfill run, then CREATE INDEX CONCURRENTLY.

Prints seconds, rows/s, WAL written and the index size of each, with the machine and its load
average (a shared machine makes these move). Usage:

    .venv/bin/python bench/reindex_speed.py                    # 500,000 products
    .venv/bin/python bench/reindex_speed.py --products 200000 --batch-rows 5000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill_speed import DEFAULT_PG_SETTINGS, checkpoint, flush_backend_stats, machine, make_engine, server, wal_delta, wal_position  # noqa: E402

from rowfill.engine.plan import plan_backfill  # noqa: E402
from rowfill.engine.runner import ChunkRunner  # noqa: E402
from rowfill.examples.seed import SEARCH_INDEX, seed_products  # noqa: E402
from rowfill.spec.spec import parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first

ROOT = Path(__file__).resolve().parents[1]
say = (lambda *a: print(*a, file=sys.stderr, flush=True))


def spec_for(args):
    data = yaml.safe_load((ROOT / "include" / "specs" / "products_search_vector.yaml").read_text())
    data.update(pause=0, batch_rows=args.batch_rows, chunk_rows=max(args.batch_rows, 250_000))
    return parse_spec(data, "bench/reindex_speed.py")


def run(engine, args, order: str) -> dict:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS rowfill CASCADE")
    migrate_database(engine)  # rowfill's schema from scratch, as `rowfill db migrate` makes it
    seed_products(engine, args.products, index=(order == "before"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        checkpoint(conn)
    spec = spec_for(args)
    CheckpointStore(engine).reset(spec.name)
    load_before = os.getloadavg()[0]
    wal0 = wal_position(engine)
    t0 = time.perf_counter()
    results = [ChunkRunner(engine, spec).run(c.chunk_no) for c in plan_backfill(engine, spec, limit=1024)]
    backfill_s = time.perf_counter() - t0
    index_s = 0.0
    if order == "after":
        t1 = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(SEARCH_INDEX.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY"))
        index_s = time.perf_counter() - t1
    total = time.perf_counter() - t0
    flush_backend_stats(engine)
    wal = wal_delta(engine, wal0, wal_position(engine))
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_relation_size('products_search_vector_idx')")).scalar()
        found = conn.execute(text("SELECT count(*) FROM products WHERE search_vector @@ to_tsquery('english', 'kettle & travel')")).scalar()
    rows = sum(r.rows_written for r in results)
    return {"order": order, "rows": rows, "backfill_seconds": backfill_s, "index_seconds": index_s, "seconds": total,
            "rows_per_s": rows / total, "wal_mb": wal["wal_mb"], "index_mb": round(size / 2**20, 1), "found": found,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--products", type=int, default=500_000)
    p.add_argument("--batch-rows", type=int, default=2_000, help="the example spec's batch_rows (default 2000)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="rowfill-bench-")
    pg = LocalPostgres(Path(tmp) / "pgdata", settings=dict(DEFAULT_PG_SETTINGS))
    say(f"starting throwaway PostgreSQL in {tmp} on port {pg.port} ...")
    pg.start()
    engine = make_engine(pg.url, 1)
    try:
        res = {"machine": machine(), "server": server(engine), "products": args.products, "batch_rows": args.batch_rows,
               "runs": []}
        for order in ("before", "after"):
            say(f"{order}: seeding {args.products:,} products, then the re-index ...")
            r = run(engine, args, order)
            say(f"    {r['seconds']:.1f} s, {r['rows_per_s']:,.0f} rows/s, WAL {r['wal_mb']:,.0f} MB")
            res["runs"].append(r)
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            m = res["machine"]
            print(f"\nMachine:    {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; load average now "
                  f"{[round(x, 2) for x in os.getloadavg()]} (shared machine)")
            print(f"PostgreSQL: {res['server']['version']}; {args.products:,} products, batch_rows={args.batch_rows:,}, pause 0\n")
            print(f"{'GIN index':<10} {'backfill s':>10} {'index s':>8} {'total s':>8} {'rows/s':>9} {'WAL MB':>7} {'index MB':>8} {'load':>11}")
            for r in res["runs"]:
                print(f"{r['order']:<10} {r['backfill_seconds']:>10.1f} {r['index_seconds']:>8.1f} {r['seconds']:>8.1f} "
                      f"{r['rows_per_s']:>9,.0f} {r['wal_mb']:>7,.0f} {r['index_mb']:>8,.1f} {r['load_before']:>5}->{r['load_after']:<5}")
            same = len({r["found"] for r in res["runs"]}) == 1
            print(f"\nsame search results both ways: {'yes' if same else 'NO'} ({res['runs'][0]['found']:,} products match 'kettle & travel')")
        return 0
    finally:
        engine.dispose()
        pg.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
