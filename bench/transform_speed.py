#!/usr/bin/env python
"""How fast is rowfill's Python transform path compared with one set-based UPDATE of the same rows?

One invocation, two jobs, each run both ways on a freshly rebuilt table:

  names    users.full_name = first_name || ' ' || last_name, as the Python transform
           rowfill.examples.names:full_name vs. one UPDATE with the SQL expression;
  loyalty  users.loyalty_points from an orders table ~5x larger (tiers, caps, rounding), as the
           example spec include/specs/users_loyalty_points.yaml runs it (the batch's orders
           aggregated in its `joins`, the rule in rowfill.examples.loyalty) vs. one UPDATE joining
           a GROUP BY of all orders.

The rowfill side is the real runner (plan_backfill + ChunkRunner, pause 0): per batch one
transaction that locks the batch's rows, reads them, calls the function, writes the results with
one UPDATE ... FROM unnest(...) and advances the checkpoint. Results of both sides are checked
equal. The target is "Python path >= 40% of the single UPDATE's rows/s".

The machine is described (CPU, cores, RAM, load average before and after each run), because on a
shared machine the numbers move with what others run. Usage:

    .venv/bin/python bench/transform_speed.py                     # 1M users, both jobs
    .venv/bin/python bench/transform_speed.py --users 200000 --jobs loyalty --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill_speed import DEFAULT_PG_SETTINGS, checkpoint, machine, make_engine, median, server  # noqa: E402

from rowfill.engine.plan import plan_backfill  # noqa: E402
from rowfill.engine.runner import ChunkRunner  # noqa: E402
from rowfill.examples import loyalty  # noqa: E402
from rowfill.examples.seed import seed_loyalty  # noqa: E402
from rowfill.spec.spec import parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first

TARGET_PCT = 40.0
ROOT = Path(__file__).resolve().parents[1]
say = (lambda *a: print(*a, file=sys.stderr, flush=True))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rebuild(engine: Engine, users: int, per_user: int, autovacuum: str) -> None:
    """users + orders from scratch (same rows every time), vacuumed, analyzed, checkpointed."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS rowfill CASCADE")
    migrate_database(engine)  # rowfill's schema from scratch, as `rowfill db migrate` makes it
    seed_loyalty(engine, users=users, per_user=per_user)
    if autovacuum == "off":
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE public.users SET (autovacuum_enabled = false)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        checkpoint(conn)


JOBS = {
    "names": {
        "column": "full_name",
        "single": ["UPDATE public.users SET full_name = first_name || ' ' || last_name WHERE full_name IS NULL"],
        "spec": {"where": "full_name IS NULL", "transform": "rowfill.examples.names:full_name",
                 "select": ["first_name", "last_name"], "returns": ["full_name"]},
        "check": "SELECT count(*) FILTER (WHERE full_name IS DISTINCT FROM first_name || ' ' || last_name), "
                 "coalesce(sum(hashtext(full_name)::bigint), 0) FROM public.users",
    },
    "loyalty": {
        "column": "loyalty_points",
        "single": [loyalty.SINGLE_UPDATE_SQL, loyalty.SINGLE_UPDATE_ZERO_SQL],
        # transform, select, joins and returns exactly as in the example spec
        "spec": {k: v for k, v in yaml.safe_load((ROOT / "include" / "specs" / "users_loyalty_points.yaml").read_text()).items()
                 if k in ("where", "transform", "select", "joins", "returns")},
        "check": f"SELECT count(*) FILTER (WHERE u.loyalty_points IS DISTINCT FROM r.points), "
                 f"coalesce(sum(u.loyalty_points::bigint * (u.id % 1000)), 0) FROM public.users u JOIN ({loyalty.REFERENCE_SQL}) r USING (id)",
    },
}


def run_single(engine: Engine, job: dict) -> dict:
    t0 = time.perf_counter()
    rows = 0
    with engine.begin() as conn:
        for sql in job["single"]:
            rows += conn.execute(text(sql)).rowcount
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def run_rowfill(engine: Engine, job: dict, args) -> dict:
    spec = parse_spec({"name": "bench_transform", "connection": "bench", "table": "public.users", "key": "id",
                       "chunk_rows": args.chunk_rows, "batch_rows": args.batch_rows, "pause": 0, **job["spec"]},
                      "bench/transform_speed.py")
    CheckpointStore(engine).reset(spec.name)
    t0 = time.perf_counter()
    chunks = plan_backfill(engine, spec, limit=1024)
    if args.parallel == 1:
        results = [ChunkRunner(engine, spec, label=c.label).run(c.chunk_no) for c in chunks]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(pool.map(lambda c: ChunkRunner(engine, spec, label=c.label).run(c.chunk_no), chunks))
    return {"rows": sum(r.rows_written for r in results), "seconds": time.perf_counter() - t0,
            "chunks": len(chunks), "batches": sum(r.batches for r in results)}


def check(engine: Engine, job: dict) -> tuple[int, int]:
    with engine.connect() as conn:
        wrong, checksum = conn.execute(text(job["check"])).one()
    return int(wrong), int(checksum)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--orders-per-user", type=int, default=6, help="average orders per user (default 6)")
    p.add_argument("--jobs", default="names,loyalty", help="comma-separated: names, loyalty")
    p.add_argument("--chunk-rows", type=int, default=250_000)
    p.add_argument("--batch-rows", type=int, default=10_000)
    p.add_argument("--parallel", type=int, default=1, help="chunks run at once, in threads (default 1; specs default to 2)")
    p.add_argument("--autovacuum", choices=["server", "off"], default="server",
                   help="autovacuum on users during the runs: the server's (default; it starts mid-run on the rowfill side) or off")
    p.add_argument("--repeat", type=int, default=1, help="runs per side (alternating order), medians reported")
    p.add_argument("--db", metavar="URL", help="use this server instead of a throwaway one (public.users/orders are DROPPED)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pg = tmp = None
    if args.db:
        url, where = args.db, "--db " + make_url(args.db).render_as_string(hide_password=True)
    else:
        tmp = tempfile.mkdtemp(prefix="rowfill-bench-")
        pg = LocalPostgres(Path(tmp) / "pgdata", settings=dict(DEFAULT_PG_SETTINGS))
        say(f"starting throwaway PostgreSQL in {tmp} on port {pg.port} ...")
        pg.start()
        url, where = pg.url, f"throwaway cluster on port {pg.port}"
    engine = make_engine(url, args.parallel)
    res = {"machine": machine(), "server": server(engine), "where": where, "target_pct": TARGET_PCT,
           "config": {k: getattr(args, k) for k in ("users", "orders_per_user", "chunk_rows", "batch_rows", "repeat",
                                                    "parallel", "autovacuum")},
           "jobs": {}}
    try:
        for name in [j.strip() for j in args.jobs.split(",") if j.strip()]:
            job = JOBS[name]
            runs = {"single_update": [], "rowfill": []}
            checks = {}
            for i in range(args.repeat):
                for kind in (("single_update", "rowfill") if i % 2 == 0 else ("rowfill", "single_update")):
                    say(f"[{name} {i + 1}/{args.repeat}] rebuilding {args.users:,} users + orders, then {kind} ...")
                    rebuild(engine, args.users, args.orders_per_user, args.autovacuum)
                    before = load()
                    r = run_single(engine, job) if kind == "single_update" else run_rowfill(engine, job, args)
                    r["load_before"], r["load_after"] = before, load()
                    r["rows_per_s"] = r["rows"] / r["seconds"]
                    say(f"    {kind}: {r['rows']:,} rows in {r['seconds']:.2f} s = {r['rows_per_s']:,.0f} rows/s "
                        f"(load {before[0]} -> {r['load_after'][0]})")
                    runs[kind].append(r)
                    checks[kind] = check(engine, job)
            su = median([r["rows_per_s"] for r in runs["single_update"]])
            rf = median([r["rows_per_s"] for r in runs["rowfill"]])
            same = checks["single_update"] == checks["rowfill"] and checks["rowfill"][0] == 0
            res["jobs"][name] = {"runs": runs, "checks": checks, "same_result": same, "ratio_pct": 100 * rf / su,
                                 "pass": same and 100 * rf / su >= TARGET_PCT}
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            report(res)
        return 0 if all(j["same_result"] for j in res["jobs"].values()) else 1
    finally:
        engine.dispose()
        if pg:
            pg.stop()
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def report(res: dict) -> None:
    m, s, cfg = res["machine"], res["server"], res["config"]
    print()
    print(f"Machine:    {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, Linux {m['kernel']}, Python {m['python']}")
    print(f"            load average now {load()} (shared machine: other engineers' jobs run alongside)")
    print(f"PostgreSQL: {s['version']} ({res['where']}); " + ", ".join(f"{k}={v}" for k, v in s["settings"].items()))
    print(f"Data:       {cfg['users']:,} users, ~{cfg['orders_per_user']} orders per user; rebuilt + VACUUM ANALYZE + CHECKPOINT before each run")
    print(f"rowfill:    chunk_rows={cfg['chunk_rows']:,} batch_rows={cfg['batch_rows']:,} pause=0, "
          f"{cfg['parallel']} chunk(s) at a time; autovacuum on users: {cfg['autovacuum']}")
    for name, j in res["jobs"].items():
        print()
        print(f"{name}:")
        for kind, label in (("single_update", "single UPDATE"), ("rowfill", "rowfill Python transform")):
            for r in j["runs"][kind]:
                print(f"  {label:<26} {r['rows']:>10,} rows {r['seconds']:>8.2f} s {r['rows_per_s']:>10,.0f} rows/s"
                      f"   load {r['load_before'][0]} -> {r['load_after'][0]}")
        print(f"  same result: {'yes' if j['same_result'] else 'NO'} {j['checks']}")
        print(f"  ratio: {j['ratio_pct']:.1f}% of the single UPDATE's rows/s "
              f"-> {'PASS' if j['pass'] else 'MISS'} (target >= {TARGET_PCT:.0f}%)")


if __name__ == "__main__":
    raise SystemExit(main())
