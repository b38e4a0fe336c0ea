#!/usr/bin/env python
"""What does a backfill do to live traffic? pgbench latency next to the backfill's rows/s.

One invocation:
  1. starts a throwaway PostgreSQL with production durability (fsync, full page writes,
     synchronous commit on; see backfill_speed.py), unless ``--db URL`` points at a server;
  2. builds an N-row users table (as backfill_speed.py, plus an integer column ``touched``);
  3. runs a pgbench workload against it at a fixed rate (``pgbench -R``, per-transaction ``--log``):
     each transaction picks a random id, SELECTs that user, and UPDATEs its ``touched`` column;
  4. measures that workload
       (a) idle (no backfill),
       (b) during one plain ``UPDATE users SET full_name = ...`` of every row,
       (c) during rowfill unthrottled (pause 0, fixed 1,000-row batches),
       (d) during rowfill with its default throttle (the spec defaults, nothing set),
       (e) during rowfill with the default throttle plus the live-latency gate
           (``latency_probe``: a point select by random id, limit ``--latency-limit``),
     rebuilding the table before each backfill so each starts from the same state;
  5. prints, per phase, live p50 / p99 / max latency and the share of transactions over 100 ms
     (transactions that *started* while the backfill ran), next to the backfill's rows/s and its
     ratio to the single UPDATE's, the machine, its load average, and the verdict against the
     targets: default throttle -> no live transaction over 100 ms, live p99 <= 3x idle, and
     >= 50 % of the single UPDATE's rows/s.

The latency of a transaction is pgbench's: from its *scheduled* start (``-R``) to its end, so a
transaction that queued behind a blocked one counts the queueing, as an application would.

    .venv/bin/python bench/live_traffic.py                    # 5M rows, 200 tps live
    .venv/bin/python bench/live_traffic.py --rows 1000000 --rate 300 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from backfill_speed import DEFAULT_PG_SETTINGS, SET_EXPR, build_table, machine, make_engine, server, verify
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
from rowfill.engine.plan import plan_backfill  # noqa: E402
from rowfill.engine.runner import ChunkRunner  # noqa: E402
from rowfill.spec.spec import Spec, parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres, _bindir  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first

SPEC_NAME = "bench_live_traffic"
SLOW_MS = 100.0
TARGETS = {"over_100ms": 0, "p99_vs_idle": 3.0, "rows_per_s_vs_update_pct": 50.0}

log = logging.getLogger("bench.live")
say = (lambda *a: print(*a, file=sys.stderr, flush=True))

PGBENCH_SCRIPT = """\\set id random(1, {rows})
BEGIN;
SELECT id, full_name, email FROM {table} WHERE id = :id;
UPDATE {table} SET touched = touched + 1 WHERE id = :id;
END;
"""


def pgbench_bin() -> str:
    found = _bindir() / "pgbench"
    if found.exists():
        return str(found)
    return shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"


# --------------------------------------------------------------------------------------------
# the live workload
# --------------------------------------------------------------------------------------------
class LiveTraffic:
    """One pgbench at a fixed rate per phase, from before the backfill starts to after it ends.

    pgbench runs with a long -T and is interrupted a few seconds after the measured interval:
    an interrupted pgbench loses the unflushed tail of its per-transaction log (about a second of
    transactions), which lies after the interval. One process per phase matters: a pgbench that
    ends by itself while its clients are blocked drops the transactions still scheduled, and
    those are exactly the ones a blocking backfill delays.
    """

    def __init__(self, url: str, script: Path, workdir: Path, rate: int, clients: int):
        u = make_url(url)
        self.conn = ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres", u.database or "postgres"]
        self.env = {**os.environ, **({"PGPASSWORD": u.password} if u.password else {})}
        self.script, self.workdir = script, workdir
        self.rate, self.clients = rate, clients
        self.proc: subprocess.Popen | None = None
        self.prefix: Path | None = None
        self.errors: list[str] = []

    def start(self, name: str) -> "LiveTraffic":
        self.prefix = self.workdir / name
        cmd = [pgbench_bin(), "-n", "-R", str(self.rate), "-c", str(self.clients), "-j", str(min(self.clients, 2)),
               "-T", "86400", "-f", str(self.script), "--log", f"--log-prefix={self.prefix}", *self.conn]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self.errors.append(f"pgbench exited early ({self.proc.returncode}): {self.proc.stderr.read()[-500:]}")
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def transactions(self) -> list[tuple[float, float]]:
        """(scheduled start epoch seconds, latency ms) of every logged transaction."""
        out = []
        for path in self.prefix.parent.glob(self.prefix.name + ".*"):
            for line in path.read_text().splitlines():
                f = line.split()
                if len(f) < 6 or f[2] == "skipped":
                    continue
                try:
                    latency_us, end = int(f[2]), int(f[4]) + int(f[5]) / 1e6
                except ValueError:  # a line cut short by the interrupt
                    continue
                out.append((end - latency_us / 1e6, latency_us / 1000.0))
        return out


def latency_stats(txns: list[tuple[float, float]], t0: float, t1: float) -> dict:
    lat = sorted(ms for start, ms in txns if t0 <= start <= t1)
    if not lat:
        return {"count": 0}

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]

    over = sum(ms > SLOW_MS for ms in lat)
    return {"count": len(lat), "tps": round(len(lat) / max(t1 - t0, 1e-9), 1), "p50_ms": round(pct(50), 2),
            "p99_ms": round(pct(99), 2), "max_ms": round(lat[-1], 1), "over_100ms": over,
            "over_100ms_pct": round(100 * over / len(lat), 3)}


# --------------------------------------------------------------------------------------------
# the backfills
# --------------------------------------------------------------------------------------------
def spec_for(table: str, variant: str, args) -> Spec:
    data = {
        "name": SPEC_NAME,
        "connection": "bench",
        "table": table,
        "key": "id",
        "where": "full_name IS NULL",
        "set": {"full_name": SET_EXPR},
    }
    if args.chunk_rows is not None:  # else the spec's default: chunks sized by chunk_time (issue 13)
        data["chunk_rows"] = args.chunk_rows
    if variant in ("default", "latency_gate"):
        for item in args.override:  # for choosing defaults: what-if runs of other throttles
            k, _, v = item.partition("=")
            data[k.strip()] = yaml.safe_load(v)
    if variant == "unthrottled":
        data.update({"pause": 0, "pause_ratio": 0, "target_batch_time": None, "batch_rows": 1000})
    elif variant == "latency_gate":
        # a point select like the live one; txid_current() makes its commit wait for a WAL flush,
        # as the live UPDATE's commit does
        # (random() inside a sub-select: evaluated once, so the probe is an index lookup, not a scan)
        data["latency_probe"] = {"sql": f"SELECT id, full_name, email, txid_current() FROM {table} "
                                        f"WHERE id = (SELECT 1 + (random() * {args.rows - 1})::int)",
                                 "limit": f"{args.latency_limit}ms"}
    return parse_spec(data, f"bench/live_traffic.py ({variant})")


def run_rowfill(engine: Engine, spec: Spec, parallel: int) -> dict:
    CheckpointStore(engine).reset(spec.name)
    chunks = plan_backfill(engine, spec, log=log)

    def one(chunk):
        return ChunkRunner(engine, spec, label=chunk.label).run(chunk.chunk_no)

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="chunk") as pool:
        results = list(pool.map(one, chunks))
    return {"rows": sum(r.rows_written for r in results), "batches": sum(r.batches for r in results),
            "chunks": len(chunks), "throttled_seconds": round(sum(c.throttled_seconds for c in CheckpointStore(engine).chunks(spec.name)), 1)}


def run_single_update(engine: Engine, table: str) -> dict:
    with engine.begin() as conn:
        rows = conn.execute(text(f"UPDATE {table} SET full_name = {SET_EXPR} WHERE full_name IS NULL")).rowcount
    return {"rows": rows, "batches": 1, "chunks": 1}


def prepare(engine: Engine, table: str, rows: int, autovacuum: str) -> None:
    build_table(engine, table, rows, autovacuum)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN touched integer NOT NULL DEFAULT 0"))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------
def phase(name: str, live: LiveTraffic, work, settle: float) -> dict:
    """Live traffic on; ``settle`` s; the work (timed); ``settle`` s; live traffic off."""
    say(f"  {name}: live traffic on, load average {loadavg()} ...")
    load_before = loadavg()
    live.start(name)
    time.sleep(settle)
    t0 = time.time()
    result = work() if work else {}
    t1 = time.time() if work else t0 + settle * 4
    if not work:
        time.sleep(settle * 4)
    time.sleep(settle)
    live.stop()
    stats = latency_stats(live.transactions(), t0, t1)
    out = {"phase": name, "seconds": round(t1 - t0, 2), **result, "live": stats, "load_before": load_before,
           "load_after": loadavg(), "pgbench_errors": live.errors[:3]}
    if result.get("rows"):
        out["rows_per_s"] = round(result["rows"] / (t1 - t0), 1)
    say(f"    {name}: {out.get('rows', 0):,} rows in {out['seconds']:.1f} s; live p50 {stats.get('p50_ms')} ms, "
        f"p99 {stats.get('p99_ms')} ms, max {stats.get('max_ms')} ms, {stats.get('over_100ms', 0)} over 100 ms")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000, help="rows in the users table (default 5,000,000)")
    p.add_argument("--chunk-rows", type=int, default=Spec.chunk_rows, help="rowfill chunk_rows (default: none, chunks sized by chunk_time as in a spec)")
    p.add_argument("--parallel", type=int, default=Spec.max_parallel_chunks,
                   help="chunks at once, in threads (default: the spec default max_parallel_chunks)")
    p.add_argument("--rate", type=int, default=200, help="live transactions per second (pgbench -R; default 200)")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients (default 4)")
    p.add_argument("--idle-seconds", type=float, default=20, help="length of the idle measurement (default 20)")
    p.add_argument("--latency-limit", type=float, default=10, help="latency_probe limit in ms for phase (e) (default 10)")
    p.add_argument("--phases", default="idle,single_update,unthrottled,default,latency_gate",
                   help="comma-separated subset of idle,single_update,unthrottled,default,latency_gate")
    p.add_argument("--db", metavar="URL", help="use this server instead of a throwaway one (table public.rowfill_live_users is DROPPED)")
    p.add_argument("--autovacuum", choices=["server", "on", "off"], default="server")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="spec field for the default and latency-gate phases instead of its default "
                        "(what-if runs when choosing defaults; the report lists them)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="show rowfill's logs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # importing Airflow (for max_map_length) routes rowfill's INFO logs to stdout: keep the report readable
    logging.getLogger("rowfill").setLevel(logging.INFO if args.verbose else logging.WARNING)
    wanted = [x.strip() for x in args.phases.split(",") if x.strip()]

    work = Path(tempfile.mkdtemp(prefix="rowfill-live-"))
    os.chmod(work, 0o755)
    pg = None
    if args.db:
        url, where, table = args.db, "--db " + make_url(args.db).render_as_string(hide_password=True), "public.rowfill_live_users"
    else:
        settings = dict(DEFAULT_PG_SETTINGS)
        for item in args.pg_setting:
            k, _, v = item.partition("=")
            settings[k.strip()] = v.strip()
        pg = LocalPostgres(work / "pgdata", settings=settings)
        say(f"starting throwaway PostgreSQL in {work} on port {pg.port} ...")
        pg.start()
        url, where, table = pg.url, f"throwaway cluster on port {pg.port}", "public.users"
    engine = make_engine(url, args.parallel + 2)
    migrate_database(engine)  # rowfill runs no DDL while it works: its schema first, as `rowfill db migrate`
    script = work / "live.sql"
    script.write_text(PGBENCH_SCRIPT.format(rows=args.rows, table=table))
    live = LiveTraffic(url, script, work, args.rate, args.clients)
    res = {"machine": machine(), "server": server(engine), "where": where,
           "config": {"rows": args.rows, "table": table, "rate": args.rate, "clients": args.clients,
                      "chunk_rows": args.chunk_rows, "parallel": args.parallel, "latency_limit_ms": args.latency_limit,
                      "overrides": args.override,
                      "defaults": {k: getattr(Spec, k) for k in ("batch_rows", "pause", "pause_ratio", "target_batch_time",
                                                                  "max_parallel_chunks")}},
           "load_start": loadavg(), "phases": []}
    try:
        say(f"building {args.rows:,} rows in {table} ...")
        prepare(engine, table, args.rows, args.autovacuum)
        fresh = True
        for name in wanted:
            if name == "idle":
                res["phases"].append(phase("idle", live, None, args.idle_seconds / 6))
                continue
            if not fresh:
                say(f"  rebuilding {table} ...")
                prepare(engine, table, args.rows, args.autovacuum)
            fresh = False
            if name == "single_update":
                out = phase(name, live, lambda: run_single_update(engine, table), 3)
            else:
                spec = spec_for(table, name, args)
                out = phase(name, live, lambda: run_rowfill(engine, spec, args.parallel), 3)
            out["verify"] = verify(engine, table)
            res["phases"].append(out)
        res["load_end"] = loadavg()
        judge(res)
        print(json.dumps(res, indent=2, default=str) if args.json else report(res))
        return 0
    finally:
        live.kill()
        engine.dispose()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def judge(res: dict) -> None:
    by = {p["phase"]: p for p in res["phases"]}
    idle, update, default = by.get("idle"), by.get("single_update"), by.get("default")
    for p in res["phases"]:
        if update and p.get("rows_per_s") and update.get("rows_per_s"):
            p["rows_per_s_vs_update_pct"] = round(100 * p["rows_per_s"] / update["rows_per_s"], 1)
        if idle and p["live"].get("p99_ms") and idle["live"].get("p99_ms"):
            p["p99_vs_idle"] = round(p["live"]["p99_ms"] / idle["live"]["p99_ms"], 2)
    if default and idle and update:
        res["targets"] = {
            "no live transaction over 100 ms": default["live"].get("over_100ms", 1) == 0,
            "live p99 <= 3x idle": default.get("p99_vs_idle", 99) <= TARGETS["p99_vs_idle"],
            ">= 50% of the single UPDATE's rows/s": default.get("rows_per_s_vs_update_pct", 0) >= TARGETS["rows_per_s_vs_update_pct"],
        }


def report(res: dict) -> str:
    m, s, cfg = res["machine"], res["server"], res["config"]
    d = cfg["defaults"]
    lines = [
        "",
        f"Machine:    {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, Linux {m['kernel']}; "
        f"load average at start {res['load_start']}, at end {res['load_end']} (shared machine: other jobs ran too)",
        f"PostgreSQL: {s['version']} ({res['where']}); " + ", ".join(f"{k}={v}" for k, v in s["settings"].items()),
        f"Table:      {cfg['table']}: {cfg['rows']:,} rows, rebuilt + VACUUM ANALYZE + CHECKPOINT before each backfill",
        f"Live:       pgbench -R {cfg['rate']} -c {cfg['clients']}: BEGIN; SELECT by random id; UPDATE touched by the same id; END "
        f"(latency from the scheduled start)",
        f"rowfill:    chunk_rows={format(cfg['chunk_rows'], ',') if cfg['chunk_rows'] else 'by chunk_time'}, {cfg['parallel']} chunks at once; defaults: batch_rows={d['batch_rows']}, "
        f"pause={d['pause']}s, pause_ratio={d['pause_ratio']}, target_batch_time={d['target_batch_time']}s; "
        f"unthrottled = pause 0, 1,000-row batches; latency gate = defaults + latency_probe limit {cfg['latency_limit_ms']:g} ms"
        + (f"; OVERRIDDEN for this run: {', '.join(cfg['overrides'])}" if cfg["overrides"] else ""),
        "",
        f"{'phase':<22} {'rows/s':>10} {'vs UPDATE':>9} {'live txns':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99/idle':>8} "
        f"{'max ms':>9} {'>100 ms':>8} {'throttled s':>11}",
    ]
    lines.append("-" * len(lines[-1]))
    labels = {"idle": "idle (no backfill)", "single_update": "single UPDATE", "unthrottled": "rowfill unthrottled",
              "default": "rowfill default", "latency_gate": "rowfill + latency gate"}
    for p in res["phases"]:
        live = p["live"]
        rate = f"{p['rows_per_s']:,.0f}" if p.get("rows_per_s") else "-"
        vs = f"{p['rows_per_s_vs_update_pct']:.0f}%" if p.get("rows_per_s_vs_update_pct") else "-"
        over = f"{live.get('over_100ms', 0)} ({live.get('over_100ms_pct', 0):.2f}%)" if live.get("count") else "-"
        lines.append(f"{labels.get(p['phase'], p['phase']):<22} {rate:>10} {vs:>9} {live.get('count', 0):>9,} "
                     f"{live.get('p50_ms', 0):>8.2f} {live.get('p99_ms', 0):>8.2f} {p.get('p99_vs_idle', 0) or 0:>8.1f} "
                     f"{live.get('max_ms', 0):>9.1f} {over:>8} {p.get('throttled_seconds', 0) or 0:>11.1f}")
    bad = [p for p in res["phases"] if p.get("verify") and p["verify"]["null_left"]]
    lines.append("")
    lines.append(f"Verify:     every backfill filled every row: {'no: ' + ', '.join(p['phase'] for p in bad) if bad else 'yes'}")
    for name, ok in res.get("targets", {}).items():
        lines.append(f"Target:     default throttle, {name}: {'PASS' if ok else 'MISS'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
