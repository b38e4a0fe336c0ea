#!/usr/bin/env python
"""How fast is an unthrottled rowfill backfill compared with one plain UPDATE of the same rows?

One invocation:
  1. starts a throwaway PostgreSQL (rowfill_dev.localpg) with production durability (fsync, full page
     writes, synchronous commit all on) in a temp dir, unless ``--db URL`` points at a server;
  2. builds an N-row users table (id bigint PK, first_name, last_name, email, full_name NULL),
     VACUUM ANALYZE, CHECKPOINT;
  3. (a) baseline: ``UPDATE users SET full_name = first_name || ' ' || last_name WHERE full_name IS NULL``
     in one statement, timed including its COMMIT;
  4. rebuilds the table from scratch the same way (same pages, same hint bits, same visibility map,
     fresh checkpoint), so both runs start from the same state;
  5. (b) rowfill: plan_backfill + ChunkRunner for every chunk, pause 0, up to ``--parallel`` chunks
     at once in threads, timed from planning to the last chunk's finish;
  6. checks both runs left the same table (no NULL left, every full_name right, same checksum);
     with ``--set-reads-table`` the expression also reads a 100-row ``<table>_teams`` table through a
     correlated subquery, so rowfill locks each batch's rows first and writes in a second statement
     (see rowfill.engine.lockfirst); the single UPDATE runs the same expression;
  7. prints rows, seconds, rows/s, the ratio, the machine and the verdict against the target
     "rowfill unthrottled >= 90% of single UPDATE rows/s".

This is a benchmark, not a test: run it by hand, e.g.

    .venv/bin/python bench/backfill_speed.py                       # 5M rows, defaults
    .venv/bin/python bench/backfill_speed.py --rows 1000000 --batch-rows 5000 --parallel 2 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))  # rowfill_dev: development tooling, not installed
from rowfill.engine.plan import plan_backfill  # noqa: E402
from rowfill.engine.runner import ChunkRunner  # noqa: E402
from rowfill.spec.spec import parse_spec  # noqa: E402
from rowfill.store.checkpoint import CheckpointStore  # noqa: E402
from rowfill_dev.localpg import LocalPostgres  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402  # rowfill runs no DDL: migrate first

TARGET_PCT = 90.0
SPEC_NAME = "bench_users_full_name"
SET_EXPR = "first_name || ' ' || last_name"


def set_expression(table: str, reads_table: bool) -> str:
    """The ``set`` expression of the run: plain, or one that also reads ``<table>_teams`` per row."""
    if not reads_table:
        return SET_EXPR
    bare = table.rpartition(".")[2]
    return f"{SET_EXPR} || ' (' || (SELECT t.label FROM {table}_teams t WHERE t.id = {bare}.id % 100) || ')'"

# Durability as in production (LocalPostgres defaults to fsync=off for tests; the benchmark must not).
# Memory and WAL sizes are those of a modest, sensibly configured server, fixed so runs compare.
DEFAULT_PG_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "16GB",  # no WAL-triggered checkpoint inside a timed run (they made runs vary by +-50%)
    "checkpoint_timeout": "15min",
}
SHOWN_SETTINGS = ["fsync", "full_page_writes", "synchronous_commit", "wal_level", "shared_buffers",
                  "max_wal_size", "checkpoint_timeout", "wal_compression", "autovacuum"]

log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------------
# machine and server description
# --------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "kernel": platform.release(),
            "python": platform.python_version()}


def server(engine: Engine) -> dict:
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        settings = {}
        for name in SHOWN_SETTINGS:
            settings[name] = conn.execute(text("SELECT current_setting(:n, true)"), {"n": name}).scalar()
    return {"version": version, "settings": settings}


# --------------------------------------------------------------------------------------------
# table set-up: the same state before each run
# --------------------------------------------------------------------------------------------
def build_table(engine: Engine, table: str, rows: int, autovacuum: str, reads_table: bool = False) -> None:
    """Fresh table from scratch, vacuumed and analyzed, its pages on disk after a CHECKPOINT."""
    with engine.begin() as conn:
        if reads_table:  # the small table the expression reads (see set_expression)
            conn.execute(text(f"DROP TABLE IF EXISTS {table}_teams"))
            conn.execute(text(f"CREATE TABLE {table}_teams (id int PRIMARY KEY, label text NOT NULL)"))
            conn.execute(text(f"INSERT INTO {table}_teams SELECT g, 'team ' || g FROM generate_series(0, 99) g"))
            conn.execute(text(f"ANALYZE {table}_teams"))
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, "
            "email text NOT NULL, full_name text)"
        ))
        if autovacuum != "server":
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = {autovacuum})"))
        # Demo-like names from small lists (realistic widths), unique emails; full_name NULL.
        conn.execute(text(
            f"INSERT INTO {table} (id, first_name, last_name, email) "
            "SELECT g, f, l, lower(f) || '.' || lower(l) || g || '@example.com' FROM ("
            "  SELECT g,"
            "    (ARRAY['Ada','Alan','Barbara','Claude','Donald','Edsger','Frances','Grace','Hedy','John',"
            "           'Ken','Leslie','Margaret','Niklaus','Radia','Shafi','Tim','Vint','Whitfield','Yukihiro'])"
            "      [1 + g % 20] AS f,"
            "    (ARRAY['Lovelace','Turing','Liskov','Shannon','Knuth','Dijkstra','Allen','Hopper','Lamarr',"
            "           'McCarthy','Thompson','Lamport','Hamilton','Wirth','Perlman','Goldwasser','Berners-Lee',"
            "           'Cerf','Diffie','Matsumoto','Ritchie','Backus','Hoare','Milner','Kay','Floyd','Rivest'])"
            "      [1 + (g / 20) % 27] AS l"
            "  FROM generate_series(1, :n) g) s"
        ), {"n": rows})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM (ANALYZE) {table}"))
        checkpoint(conn)


def checkpoint(conn) -> None:
    try:
        conn.execute(text("CHECKPOINT"))
    except Exception as exc:  # not superuser / no pg_checkpoint on a --db server
        log.warning("CHECKPOINT not allowed (%s); runs may start with different dirty-page backlogs",
                    str(getattr(exc, "orig", exc)).strip().splitlines()[0])


def table_stats(engine: Engine, table: str) -> dict:
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": table}).scalar()
        autovac = conn.execute(text("SELECT coalesce(autovacuum_count, 0) + coalesce(autoanalyze_count, 0) "
                                    "FROM pg_stat_all_tables WHERE relid = CAST(:t AS regclass)"), {"t": table}).scalar()
        return {"total_bytes": size, "autovacuum_runs": autovac or 0}


def wal_position(engine: Engine) -> dict:
    """WAL counters (PG14+: pg_stat_wal), to show what each run cost the server."""
    with engine.connect() as conn:
        lsn = conn.execute(text("SELECT pg_current_wal_lsn()")).scalar()
        try:
            fpi, wal_bytes, syncs = conn.execute(text("SELECT wal_fpi, wal_bytes, wal_sync FROM pg_stat_wal")).one()
        except Exception:
            fpi = wal_bytes = syncs = None
        ckpts = conn.execute(text("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")).scalar()
        return {"lsn": lsn, "fpi": fpi, "wal_bytes": wal_bytes, "wal_sync": syncs, "checkpoints": ckpts}


def cpu_pressure_us() -> int | None:
    """Linux PSI: total microseconds some runnable task waited for a CPU (None where PSI is missing)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_ticks() -> dict[int, tuple[str, int]]:
    ticks = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                raw = (d / "stat").read_text()
                comm = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw[raw.rindex(")") + 2 :].split()
                ticks[int(d.name)] = (comm, int(fields[11]) + int(fields[12]))  # utime + stime
            except (OSError, ValueError, IndexError):
                pass
    return ticks


def busy_others(window: float = 1.0) -> list[str]:
    """Other processes using CPU right now (sampled over ``window`` s); a busy machine makes numbers noisy."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    a = _cpu_ticks()
    time.sleep(window)
    b = _cpu_ticks()
    me = os.getpid()
    busy = []
    for pid, (comm, t) in b.items():
        if pid == me or pid not in a:
            continue
        pct = 100 * (t - a[pid][1]) / hz / window
        if pct >= 10:
            busy.append((pct, f"{comm}({pid}) {pct:.0f}%"))
    return [s for _, s in sorted(busy, reverse=True)[:5]]


def flush_backend_stats(engine: Engine) -> None:
    """Backends report WAL statistics lazily; closing the pool's connections makes them report now."""
    engine.dispose()
    time.sleep(1.0)


def wal_delta(engine: Engine, before: dict, after: dict) -> dict:
    with engine.connect() as conn:
        lsn_bytes = conn.execute(text("SELECT pg_wal_lsn_diff(CAST(:a AS pg_lsn), CAST(:b AS pg_lsn))"),
                                 {"a": after["lsn"], "b": before["lsn"]}).scalar()
    out = {"wal_mb": round(float(lsn_bytes) / 2**20, 1), "checkpoints": int(after["checkpoints"] - before["checkpoints"])}
    if before["fpi"] is not None:
        out["full_page_images"] = int(after["fpi"] - before["fpi"])
        out["wal_syncs"] = int(after["wal_sync"] - before["wal_sync"])
    return out


def verify(engine: Engine, table: str, expr: str = SET_EXPR) -> dict:
    with engine.connect() as conn:
        total, nulls, right, checksum = conn.execute(text(
            f"SELECT count(*), count(*) FILTER (WHERE full_name IS NULL), "
            f"count(*) FILTER (WHERE full_name = {expr}), coalesce(sum(hashtext(full_name)::bigint), 0) "
            f"FROM {table}"
        )).one()
    return {"rows": total, "null_left": nulls, "correct": right, "checksum": int(checksum)}


# --------------------------------------------------------------------------------------------
# the two runs
# --------------------------------------------------------------------------------------------
def run_single_update(engine: Engine, table: str, expr: str = SET_EXPR) -> dict:
    sql = text(f"UPDATE {table} SET full_name = {expr} WHERE full_name IS NULL")
    t0 = time.perf_counter()
    with engine.begin() as conn:
        updated = conn.execute(sql).rowcount
    seconds = time.perf_counter() - t0  # includes the COMMIT (and its WAL flush)
    return {"rows": updated, "seconds": seconds}


class PhaseTimer:
    """Optional per-phase timing of rowfill's batch transaction (wraps instance methods; no library edits)."""

    PHASES = ["checkout+timeouts", "lock_position", "boundary", "update", "advance", "commit"]

    def __init__(self, engine: Engine):
        self.totals: dict[str, float] = defaultdict(float)
        self.batches = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, conn):
        self._local.commit_at = time.perf_counter()

    def _add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.totals[name] += seconds

    def wrap(self, obj, name: str, phase: str):
        original = getattr(obj, name)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                self._add(phase, time.perf_counter() - t0)
                if phase == "lock_position":
                    self._local.in_batch = t0

        setattr(obj, name, timed)

    def instrument(self, runner: ChunkRunner) -> None:
        self.wrap(runner.store, "lock_position", "lock_position")
        self.wrap(runner.writer, "batch_end", "boundary")
        # the runner writes through apply (main before issue 10 item 5 had write_counts, counting rows still matching)
        self.wrap(runner.writer, "write_counts" if hasattr(runner.writer, "write_counts") else "apply", "update")
        self.wrap(runner.store, "advance", "advance")
        original = runner._batch

        def batch(chunk_no):
            t0 = time.perf_counter()
            self._local.commit_at = None
            self._local.in_batch = None
            result = original(chunk_no)
            end = time.perf_counter()
            with self._lock:
                if self._local.in_batch is not None:
                    self.totals["checkout+timeouts"] += self._local.in_batch - t0
                if self._local.commit_at is not None:
                    self.totals["commit"] += end - self._local.commit_at
                self.totals["batch total"] += end - t0
                self.batches += 1
            return result

        runner._batch = batch

    def report(self) -> dict:
        total = self.totals.get("batch total", 0.0) or 1e-9
        out = {}
        for phase in [*self.PHASES, "batch total"]:
            s = self.totals.get(phase, 0.0)
            out[phase] = {"seconds": round(s, 3), "pct": round(100 * s / total, 1),
                          "ms_per_batch": round(1000 * s / max(self.batches, 1), 3)}
        return out


def make_engine(url: str, parallel: int) -> Engine:
    """Like rowfill.engine.database.engine_from_url (psycopg 3, pre-ping), with a pool for ``parallel`` runners + planning."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return create_engine(u, pool_pre_ping=True, pool_size=parallel + 1, max_overflow=2,
                         connect_args={"application_name": "rowfill-bench", "connect_timeout": 10})


def run_rowfill(engine: Engine, table: str, args, phases: PhaseTimer | None) -> dict:
    schema, _, name = table.rpartition(".")
    spec = parse_spec({
        "name": SPEC_NAME,
        "connection": "bench",
        "table": f"{schema or 'public'}.{name}",
        "key": "id",
        "where": "full_name IS NULL",
        "set": {"full_name": set_expression(table, args.set_reads_table)},
        "pause": 0,
        "pause_ratio": 0,
        "target_batch_time": None,  # unthrottled: fixed-size batches, no rest
        "chunk_rows": args.chunk_rows,
        "batch_rows": args.batch_rows,
        "max_parallel_chunks": args.parallel,
    }, "bench/backfill_speed.py")
    CheckpointStore(engine).reset(spec.name)  # no plan left over from an earlier bench run

    def one(chunk):
        runner = ChunkRunner(engine, spec, label=chunk.label)
        if phases:
            phases.instrument(runner)
        return runner.run(chunk.chunk_no)

    t0 = time.perf_counter()
    chunks = plan_backfill(engine, spec)
    t_plan = time.perf_counter() - t0
    if args.parallel == 1:
        results = [one(c) for c in chunks]
    else:
        with ThreadPoolExecutor(max_workers=args.parallel, thread_name_prefix="chunk") as pool:
            results = list(pool.map(one, chunks))
    seconds = time.perf_counter() - t0
    return {
        "rows": sum(r.rows_written for r in results),
        "seconds": seconds,
        "plan_seconds": t_plan,
        "chunks": len(chunks),
        "batches": sum(r.batches for r in results),
        "statuses": sorted({r.status for r in results}),
    }


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def print_report(res: dict) -> None:
    m, s, cfg = res["machine"], res["server"], res["config"]
    print()
    print(f"Machine:    {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, Linux {m['kernel']}")
    print(f"PostgreSQL: {s['version']} ({res['where']})")
    print("Settings:   " + ", ".join(f"{k}={v}" for k, v in s["settings"].items()))
    print(f"Table:      {cfg['table']}: {cfg['rows']:,} rows (id bigint PK, first_name, last_name, email, full_name NULL), "
          f"rebuilt + VACUUM ANALYZE + CHECKPOINT before each run; "
          f"untimed warm-up run: {'yes' if cfg['warmup'] else 'no'}; table autovacuum: {cfg['autovacuum']}")
    print(f"rowfill:    chunk_rows={cfg['chunk_rows']:,} batch_rows={cfg['batch_rows']:,} parallel={cfg['parallel']} pause=0"
          + ("; set reads another table (lock first, then write)" if cfg.get("set_reads_table") else ""))
    print()
    header = (f"{'run':<26} {'rows':>11} {'seconds':>9} {'rows/s':>11} {'WAL MB':>8} {'FPIs':>9} {'syncs':>7} "
              f"{'ckpts':>5} {'autovac':>7} {'cpu wait':>8}")
    print(header)
    print("-" * len(header))
    for key, label in (("single_update", "single UPDATE"), ("rowfill", "rowfill (unthrottled)")):
        for i, r in enumerate(res["runs"][key]):
            tag = label if len(res["runs"][key]) == 1 else f"{label} #{i + 1}"
            w = r.get("wal", {})
            print(f"{tag:<26} {r['rows']:>11,} {r['seconds']:>9.2f} {r['rows_per_s']:>11,.0f} "
                  f"{w.get('wal_mb', 0):>8,.0f} {w.get('full_page_images', 0):>9,} {w.get('wal_syncs', 0):>7,} "
                  f"{w.get('checkpoints', 0):>5} {r.get('autovacuum_runs', 0):>7} "
                  f"{(str(r['cpu_wait_pct']) + '%') if 'cpu_wait_pct' in r else '-':>8}")
    rf = res["runs"]["rowfill"][-1]
    print("(WAL MB/FPIs/syncs/ckpts: WAL written, full-page images, WAL fsyncs, checkpoints during the run; autovac: "
          "autovacuum/analyze runs on the table during it; cpu wait: share of the run some task waited for a CPU)")
    if res.get("busy_at_start"):
        print(f"WARNING: other processes were using CPU when the benchmark started: {', '.join(res['busy_at_start'])}; "
              "numbers may be noisy.")
    print()
    print(f"rowfill: {rf['chunks']} chunks, {rf['batches']:,} batches, planning {rf['plan_seconds']:.2f} s")
    if res.get("phases"):
        print("rowfill batch phases (time summed over all runners):")
        for phase, v in res["phases"].items():
            print(f"  {phase:<18} {v['seconds']:>8.2f} s  {v['pct']:>5.1f}%  {v['ms_per_batch']:>8.2f} ms/batch")
    v = res["verify"]
    print(f"Verify:     same result: {'yes' if v['same'] else 'NO'} "
          f"(rows {v['single_update']['rows']:,}, NULL left {v['single_update']['null_left']}/{v['rowfill']['null_left']}, "
          f"correct {v['single_update']['correct']:,}/{v['rowfill']['correct']:,}, checksums "
          f"{'equal' if v['single_update']['checksum'] == v['rowfill']['checksum'] else 'DIFFER'})")
    verdict = "PASS" if res["pass"] else "MISS"
    print(f"Ratio:      rowfill / single UPDATE = {res['ratio_pct']:.1f}% of rows/s "
          f"(median of {len(res['runs']['rowfill'])} run(s) each)")
    print(f"Target:     rowfill unthrottled >= {TARGET_PCT:.0f}% of single UPDATE rows/s -> {verdict}")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000, help="rows in the users table (default 5,000,000)")
    p.add_argument("--chunk-rows", type=int, default=1_000_000, help="rowfill chunk_rows (default 1,000,000)")
    p.add_argument("--batch-rows", type=int, default=50_000, help="rowfill batch_rows (default 50,000)")
    p.add_argument("--parallel", type=int, default=1, help="chunks run at once, in threads (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="run each side this many times, alternating the order; medians are compared (default 3)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="first build the table and update it once untimed, so WAL segment files exist and caches are "
                        "warm for every timed run, and run rowfill once over it (imports, checkpoint schema); without it "
                        "the first timed runs pay for creating WAL files and for rowfill's first start (default: on)")
    p.add_argument("--db", metavar="URL", help="use this server instead of a throwaway one (table --table is DROPPED and rebuilt)")
    p.add_argument("--table", help="table to build (default public.users; with --db: public.rowfill_bench_users)")
    p.add_argument("--autovacuum", choices=["server", "on", "off"], default="server",
                   help="autovacuum on the bench table: the server's setting (default) or forced on/off")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="extra/overriding setting for the throwaway server (repeatable)")
    p.add_argument("--phases", action="store_true", help="time each phase of rowfill's batch transaction")
    p.add_argument("--set-reads-table", action="store_true",
                   help="a set expression that also reads another (100-row) table per row: rowfill locks first, then writes")
    p.add_argument("--keep", action="store_true", help="keep the throwaway cluster running and print its URL")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("-v", "--verbose", action="store_true", help="show rowfill's progress logs")
    args = p.parse_args(argv)
    if args.batch_rows > args.chunk_rows:
        p.error("--batch-rows must not exceed --chunk-rows")
    if args.parallel < 1 or args.repeat < 1 or args.rows < 1:
        p.error("--rows, --parallel and --repeat must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Importing Airflow pieces may install its own handlers; keep rowfill's progress lines off stdout
    # (and out of --json) unless -v.
    logging.getLogger("rowfill").setLevel(logging.INFO if args.verbose else logging.WARNING)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True))
    pg = tmp = None
    if args.db:
        url, where = args.db, "--db " + make_url(args.db).render_as_string(hide_password=True)
        table = args.table or "public.rowfill_bench_users"
    else:
        settings = dict(DEFAULT_PG_SETTINGS)
        for item in args.pg_setting:
            k, _, v = item.partition("=")
            settings[k.strip()] = v.strip()
        tmp = tempfile.mkdtemp(prefix="rowfill-bench-")
        pg = LocalPostgres(Path(tmp) / "pgdata", settings=settings)  # free port, never 5432
        say(f"starting throwaway PostgreSQL in {tmp} on port {pg.port} ...")
        pg.start()
        url, where = pg.url, f"throwaway cluster on port {pg.port}"
        table = args.table or "public.users"
    engine = make_engine(url, args.parallel)
    migrate_database(engine)  # rowfill runs no DDL while it works: its schema first, as `rowfill db migrate`
    expr = set_expression(table, args.set_reads_table)
    phases = PhaseTimer(engine) if args.phases else None
    try:
        res = {"machine": machine(), "server": server(engine), "where": where, "target_pct": TARGET_PCT,
               "busy_at_start": busy_others(), "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
               "config": {"rows": args.rows, "table": table, "chunk_rows": args.chunk_rows, "batch_rows": args.batch_rows,
                          "parallel": args.parallel, "repeat": args.repeat, "autovacuum": args.autovacuum,
                          "warmup": args.warmup, "set_reads_table": args.set_reads_table},
               "runs": {"single_update": [], "rowfill": []}}
        checks = {}
        if args.warmup:
            say(f"warm-up: building {args.rows:,} rows and updating them once, untimed ...")
            build_table(engine, table, args.rows, args.autovacuum, args.set_reads_table)
            run_single_update(engine, table, expr)
            # and rowfill once over the filled table (it writes nothing): its modules are imported and
            # its checkpoint schema exists, as in any worker after its first backfill; without it the
            # first timed rowfill run paid ~1.3 s for both
            run_rowfill(engine, table, args, None)
        for i in range(args.repeat):
            # Alternate the order on repeats so neither side always runs on a "warmer" server.
            order = ("single_update", "rowfill") if i % 2 == 0 else ("rowfill", "single_update")
            for kind in order:
                say(f"[{i + 1}/{args.repeat}] building {args.rows:,} rows in {table} ...")
                t0 = time.perf_counter()
                build_table(engine, table, args.rows, args.autovacuum, args.set_reads_table)
                say(f"    built in {time.perf_counter() - t0:.1f} s ({table_stats(engine, table)['total_bytes'] / 2**20:,.0f} MB); "
                    f"running {kind} ...")
                before, psi0 = wal_position(engine), cpu_pressure_us()
                r = run_single_update(engine, table, expr) if kind == "single_update" else run_rowfill(engine, table, args, phases)
                psi1 = cpu_pressure_us()
                flush_backend_stats(engine)
                if psi0 is not None and psi1 is not None:
                    r["cpu_wait_pct"] = round(100 * (psi1 - psi0) / 1e6 / r["seconds"], 1)
                r["wal"] = wal_delta(engine, before, wal_position(engine))
                r["rows_per_s"] = r["rows"] / r["seconds"]
                after = table_stats(engine, table)
                r["table_bytes_after"], r["autovacuum_runs"] = after["total_bytes"], after["autovacuum_runs"]
                say(f"    {kind}: {r['rows']:,} rows in {r['seconds']:.2f} s = {r['rows_per_s']:,.0f} rows/s")
                res["runs"][kind].append(r)
                checks[kind] = verify(engine, table, expr)
        su, rf = checks["single_update"], checks["rowfill"]
        same = (su == rf and su["null_left"] == 0 and su["correct"] == su["rows"] == args.rows)
        res["verify"] = {"same": same, "single_update": su, "rowfill": rf}
        su_rate = median([r["rows_per_s"] for r in res["runs"]["single_update"]])
        rf_rate = median([r["rows_per_s"] for r in res["runs"]["rowfill"]])
        res["ratio_pct"] = 100 * rf_rate / su_rate
        res["pass"] = same and res["ratio_pct"] >= TARGET_PCT
        if phases:
            res["phases"] = phases.report()
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            print_report(res)
        return 0 if same else 1
    finally:
        engine.dispose()
        if pg:
            if args.keep:
                say(f"kept running: {pg.url}  (stop: PYTHONPATH=include python -m rowfill_dev.localpg stop {pg.datadir})")
            else:
                pg.stop()
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
