#!/usr/bin/env python
"""How fast is rowfill's Python transform path compared with one set-based UPDATE of the same rows?

One invocation, two jobs, each run both ways on a freshly rebuilt table:

  names    users.full_name = first_name || ' ' || last_name, as the Python transform
           rowfill.examples.names:full_name vs. one UPDATE with the SQL expression;
  loyalty  users.loyalty_points from an orders table ~5x larger (tiers, caps, rounding), as the
           example spec include/specs/users_loyalty_points.yaml runs it (the batch's orders
           aggregated in its `joins`, the rule in rowfill.examples.loyalty) vs. one UPDATE joining
           a GROUP BY of all orders.

Each job also runs in its columnar form (``names_columns``, ``loyalty_columns``: the same rule
over ``batch_form: columns``, ``rowfill.examples.names:full_name_columns`` and
``rowfill.examples.loyalty:loyalty_points_columns``).

The rowfill side is the real runner (plan_backfill + ChunkRunner), unthrottled like the single
UPDATE (pause 0, pause_ratio 0, no target_batch_time, so fixed-size batches and no rest; the
spec defaults rest half a batch after each batch, which alone costs a third of the rows/s): per
batch one transaction that locks the batch's rows, reads them, calls the function, writes the
results with one UPDATE ... FROM unnest(...) and advances the checkpoint. Results of both sides
are checked equal. Targets (issue 15): per-row names >= 45%, columnar names >= 70%, loyalty >= 50%
(columnar; per-row loyalty keeps the older 40%) of the single UPDATE's rows/s measured in the
same round; each round's ratio is taken and the median of the rounds' ratios reported.

``--phases`` times every step of the rowfill side's batches (exclusive time: a step's time
without the steps it calls): throttle decision, the checkpoint row lock, finding the batch's end,
the SKIP LOCKED lock, lock + read, building the rows/columns, the user function, shaping results,
encoding arrays, the UPDATE, the checkpoint advance, and the rest (BEGIN, COMMIT, pool). It wraps
methods at class level for that run only; the wrapping costs ~1 us per call.
``--profile FILE`` writes cProfile stats of the last rowfill run of each job (``python -m pstats``).
Peak RSS of the process during each rowfill run is measured (Linux: VmHWM after resetting it
through /proc/self/clear_refs), to show memory is bounded by the batch, not the table.

The machine is described (CPU, cores, RAM, load average before and after each run), because on a
shared machine the numbers move with what others run. Usage:

    .venv/bin/python bench/transform_speed.py                     # 1M users, one chunk, all four jobs
    .venv/bin/python bench/transform_speed.py --users 200000 --jobs loyalty --repeat 3 --json
    .venv/bin/python bench/transform_speed.py --jobs names,names_columns --repeat 3 --phases
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill_speed import DEFAULT_PG_SETTINGS, checkpoint, machine, make_engine, median, server  # noqa: E402

from rowfill.engine import rowlocks, transform  # noqa: E402
from rowfill.engine.plan import plan_backfill  # noqa: E402
from rowfill.engine.throttle import Throttle  # noqa: E402
from rowfill.engine.writers import BatchWriter  # noqa: E402
from rowfill.engine.runner import ChunkRunner  # noqa: E402
from rowfill.examples import loyalty  # noqa: E402
from rowfill.examples.seed import seed_loyalty  # noqa: E402
from rowfill.spec.spec import parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first

TARGET_PCT = 40.0  # jobs without their own target
TARGETS = {"names": 45.0, "names_columns": 70.0, "loyalty": 40.0, "loyalty_columns": 50.0}  # issue 15
ROOT = Path(__file__).resolve().parents[1]
say = (lambda *a: print(*a, file=sys.stderr, flush=True))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_reset() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: writing 5 to /proc/self/clear_refs); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(field: str = "VmHWM") -> float | None:
    """Peak resident set size of this process in MiB since the last reset (``VmHWM``; ``VmRSS``: now), None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Phases:
    """Exclusive time per step of the rowfill side's batches: methods wrapped at class level, for one run.

    A wrapped call's time minus the wrapped calls inside it goes to its step, so the steps add up
    to the batches' time ("batch: BEGIN, COMMIT, rest" is what ``ChunkRunner._batch`` spends
    outside every other step). One thread only (``--parallel 1``).
    """

    STEPS = [  # (owner, attribute, step)
        (Throttle, "next", "throttle decision"),
        (CheckpointStore, "lock_position", "checkpoint row lock"),
        (BatchWriter, "batch_end", "batch end (key walk)"),
        (rowlocks, "short_lock_wait", "lock_timeout setting"),
        (rowlocks, "lock_batch", "SKIP LOCKED lock + count"),
        (BatchWriter, "lock_rows", "lock statement"),
        (transform.RowReader, "fetch", "lock + read (database)"),
        (transform.RowReader, "read", "rows as dicts / columns"),
        (transform.RowReader, "read_columns", "rows as dicts / columns"),
        (transform, "call_with_blame", "user function"),
        (transform, "call_columns_with_blame", "user function"),
        (transform.TransformWriter, "results", "shaping results"),
        (transform.TransformWriter, "column_results", "shaping results"),
        (transform.TransformWriter, "encode", "encoding arrays"),
        (transform.TransformWriter, "write", "UPDATE"),
        (CheckpointStore, "advance", "checkpoint advance"),
        (ChunkRunner, "_batch", "batch: BEGIN, COMMIT, rest"),
    ]

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []
        self._saved: list = []

    def _wrap(self, owner, attr: str, step: str) -> None:
        original = owner.__dict__[attr] if attr in getattr(owner, "__dict__", {}) else getattr(owner, attr)
        self._saved.append((owner, attr, original))
        stack, seconds, calls = self._stack, self.seconds, self.calls

        def timed(*args, **kw):
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                took = time.perf_counter() - t0
                inner = stack.pop()
                seconds[step] += took - inner
                calls[step] += 1
                if stack:
                    stack[-1] += took

        setattr(owner, attr, timed)

    def __enter__(self):
        for owner, attr, step in self.STEPS:
            if hasattr(owner, attr):
                self._wrap(owner, attr, step)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()

    def report(self, batches: int) -> dict:
        """step -> {seconds, pct of the batches' time, ms per batch, calls}."""
        total = sum(self.seconds.values()) or 1e-9
        return {step: {"seconds": round(s, 3), "pct": round(100 * s / total, 1),
                       "ms_per_batch": round(1000 * s / max(batches, 1), 3), "calls": self.calls[step]}
                for step, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


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


JOBS["names_columns"] = {**JOBS["names"], "spec": {
    **JOBS["names"]["spec"], "transform": "rowfill.examples.names:full_name_columns", "batch_form": "columns"}}
JOBS["loyalty_columns"] = {**JOBS["loyalty"], "spec": {
    **JOBS["loyalty"]["spec"], "transform": "rowfill.examples.loyalty:loyalty_points_columns", "batch_form": "columns"}}


def run_single(engine: Engine, job: dict) -> dict:
    t0 = time.perf_counter()
    rows = 0
    with engine.begin() as conn:
        for sql in job["single"]:
            rows += conn.execute(text(sql)).rowcount
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def run_rowfill(engine: Engine, job: dict, args, profile: cProfile.Profile | None = None) -> dict:
    spec = parse_spec({"name": "bench_transform", "connection": "bench", "table": "public.users", "key": "id",
                       "chunk_rows": args.chunk_rows, "batch_rows": args.batch_rows, "pause": 0,
                       # unthrottled, like the single UPDATE: fixed-size batches, no rest after each
                       **({"pause_ratio": 0, "target_batch_time": None} if args.throttle == "off" else {}),
                       **job["spec"]},
                      "bench/transform_speed.py")
    CheckpointStore(engine).reset(spec.name)
    rss_before = peak_rss_mb("VmRSS")
    rss_reset = peak_rss_reset()
    phases = Phases() if args.phases else None
    if phases:
        phases.__enter__()
    if profile:
        profile.enable()
    t0 = time.perf_counter()
    try:
        out = _run_chunks(engine, spec, args)
    finally:
        if profile:
            profile.disable()
        if phases:
            phases.__exit__(None, None, None)
    out["seconds"] = time.perf_counter() - t0
    out["rss_before_mb"] = rss_before
    out["peak_rss_mb"] = peak_rss_mb() if rss_reset else None
    if phases:
        out["phases"] = phases.report(out["batches"])
    return out


def _run_chunks(engine: Engine, spec, args) -> dict:
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
    p.add_argument("--jobs", default="names,names_columns,loyalty,loyalty_columns",
                   help="comma-separated: names, names_columns, loyalty, loyalty_columns")
    p.add_argument("--chunk-rows", type=int, default=1_000_000, help="default 1,000,000: 1M users are one chunk")
    p.add_argument("--batch-rows", type=int, default=10_000)
    p.add_argument("--parallel", type=int, default=1, help="chunks run at once, in threads (default 1; specs default to 2)")
    p.add_argument("--autovacuum", choices=["server", "off"], default="server",
                   help="autovacuum on users during the runs: the server's (default; it starts mid-run on the rowfill side) or off")
    p.add_argument("--repeat", type=int, default=1, help="runs per side (alternating order), medians reported")
    p.add_argument("--db", metavar="URL", help="use this server instead of a throwaway one (public.users/orders are DROPPED)")
    p.add_argument("--throttle", choices=["off", "default"], default="off",
                   help="off (default): fixed-size batches, no rest, like the single UPDATE; default: the spec's "
                        "default throttle (adaptive ~50 ms batches and a rest of half a batch after each)")
    p.add_argument("--phases", action="store_true", help="time each step of the rowfill side's batches")
    p.add_argument("--profile", metavar="FILE", help="cProfile of each job's rowfill runs, to FILE.<job>.pstats")
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
                                                    "parallel", "autovacuum", "throttle")},
           "jobs": {}}
    try:
        for name in [j.strip() for j in args.jobs.split(",") if j.strip()]:
            job = JOBS[name]
            runs = {"single_update": [], "rowfill": []}
            profile = cProfile.Profile() if args.profile else None
            checks = {}
            for i in range(args.repeat):
                for kind in (("single_update", "rowfill") if i % 2 == 0 else ("rowfill", "single_update")):
                    say(f"[{name} {i + 1}/{args.repeat}] rebuilding {args.users:,} users + orders, then {kind} ...")
                    # the names jobs never read orders: one per user keeps the rebuild short (the users table is the same)
                    per_user = args.orders_per_user if name.startswith("loyalty") else 1
                    rebuild(engine, args.users, per_user, args.autovacuum)
                    before = load()
                    r = run_single(engine, job) if kind == "single_update" else run_rowfill(engine, job, args, profile)
                    r["load_before"], r["load_after"] = before, load()
                    r["rows_per_s"] = r["rows"] / r["seconds"]
                    say(f"    {kind}: {r['rows']:,} rows in {r['seconds']:.2f} s = {r['rows_per_s']:,.0f} rows/s "
                        f"(load {before[0]} -> {r['load_after'][0]})")
                    runs[kind].append(r)
                    checks[kind] = check(engine, job)
            if profile:
                profile.dump_stats(f"{args.profile}.{name}.pstats")
            su = median([r["rows_per_s"] for r in runs["single_update"]])
            rf = median([r["rows_per_s"] for r in runs["rowfill"]])
            # each round's ratio against the UPDATE of the same round, then their median (load moves between rounds)
            ratios = [100 * b["rows_per_s"] / a["rows_per_s"] for a, b in zip(runs["single_update"], runs["rowfill"])]
            same = checks["single_update"] == checks["rowfill"] and checks["rowfill"][0] == 0
            target = TARGETS.get(name, TARGET_PCT)
            res["jobs"][name] = {"runs": runs, "checks": checks, "same_result": same, "ratio_pct": median(ratios),
                                 "round_ratios_pct": [round(x, 1) for x in ratios],
                                 "median_rows_per_s": {"single_update": su, "rowfill": rf},
                                 "target_pct": target, "pass": same and median(ratios) >= target}
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
    print(f"Data:       {cfg['users']:,} users, ~{cfg['orders_per_user']} orders per user for the loyalty jobs (1 for the names jobs, "
          "which never read them); rebuilt + VACUUM ANALYZE + CHECKPOINT before each run")
    print(f"rowfill:    chunk_rows={cfg['chunk_rows']:,} batch_rows={cfg['batch_rows']:,} pause=0 "
          + ("pause_ratio=0 target_batch_time=none (unthrottled), " if cfg["throttle"] == "off"
             else "and the spec's default throttle (adaptive batches, rest of half a batch), ")
          + f"{cfg['parallel']} chunk(s) at a time; autovacuum on users: {cfg['autovacuum']}")
    for name, j in res["jobs"].items():
        print()
        print(f"{name}:")
        for kind, label in (("single_update", "single UPDATE"), ("rowfill", "rowfill Python transform")):
            for r in j["runs"][kind]:
                rss = (f"   peak RSS {r['peak_rss_mb']} MiB (before {r['rss_before_mb']})"
                       if r.get("peak_rss_mb") is not None else "")
                print(f"  {label:<26} {r['rows']:>10,} rows {r['seconds']:>8.2f} s {r['rows_per_s']:>10,.0f} rows/s"
                      f"   load {r['load_before'][0]} -> {r['load_after'][0]}{rss}")
        print(f"  same result: {'yes' if j['same_result'] else 'NO'} {j['checks']}")
        print(f"  ratio: {j['ratio_pct']:.1f}% of the single UPDATE's rows/s (median of the rounds' ratios "
              f"{j['round_ratios_pct']}) -> {'PASS' if j['pass'] else 'MISS'} (target >= {j['target_pct']:.0f}%)")
        last = j["runs"]["rowfill"][-1]
        if last.get("phases"):
            print(f"  phases of the last rowfill run ({last['batches']} batches; exclusive time):")
            for step, v in last["phases"].items():
                print(f"    {step:<28} {v['seconds']:>8.2f} s {v['pct']:>6.1f}% {v['ms_per_batch']:>9.2f} ms/batch")


if __name__ == "__main__":
    raise SystemExit(main())
