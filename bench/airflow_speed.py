#!/usr/bin/env python
"""Through a real Airflow scheduler, how fast is a rowfill backfill compared with one plain UPDATE,
and where does the wall time go?

One invocation:
  1. starts a throwaway PostgreSQL (``rowfill_dev.localpg``) with production durability (fsync,
     full page writes, synchronous commit on; ``backfill_speed.DEFAULT_PG_SETTINGS``) for the target
     table, and a second throwaway cluster (fsync off: it is not what is measured) for Airflow's metadata;
  2. builds an N-row users table (``backfill_speed.build_table``), times the single
     ``UPDATE users SET full_name = first_name || ' ' || last_name WHERE full_name IS NULL``;
  3. starts a real Airflow 3 (``rowfill_dev.devstack.AirflowStack``: scheduler with LocalExecutor,
     DAG processor, API server, triggerer, each its own process) on this checkout's DAGs, runs an
     untimed warm-up backfill of a 1,000-row table (rowfill's tables exist after it); for each
     variant (``unthrottled``: ``pause: 0``, ``pause_ratio: 0``, fixed batches; ``throttle``: the
     spec's defaults) rebuilds the table the same way, triggers the backfill DAG and waits for it;
  4. with ``--compare-ref REF`` does step 3 again with the code of git ref REF (a throwaway git
     worktree, put first on the Airflow processes' PYTHONPATH, its ``dags/`` as the DAG folder);
  5. times the single UPDATE again on a rebuilt table (the machine may have changed meanwhile);
  6. checks every run left the table right, and prints wall time, rows/s, the ratio to the mean
     single UPDATE, load average, and where each run's wall time went, from the task instances
     (Airflow REST API) and rowfill's checkpoint tables (``rowfill.chunks``, ``rowfill.samples``).

This is a benchmark, not a test. One command, e.g.:

    .venv/bin/python bench/airflow_speed.py                              # 300k rows, both variants
    .venv/bin/python bench/airflow_speed.py --rows 3000000 --compare-ref main
    .venv/bin/python bench/airflow_speed.py --rows 10000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))  # rowfill_dev: development tooling, not installed
sys.path.insert(0, str(ROOT / "bench"))
from backfill_speed import (  # noqa: E402
    DEFAULT_PG_SETTINGS, SET_EXPR, build_table, machine, make_engine, run_single_update, server, verify,
)
from rowfill_dev.devstack import AirflowStack  # noqa: E402
from rowfill_dev.localpg import LocalPostgres, free_port  # noqa: E402

TABLE = "public.users"
WARMUP_TABLE = "public.warmup"  # a tiny table the untimed warm-up backfill walks
# The variants: spec fields on top of the common ones. "throttle" is the spec's defaults (pause 0,
# pause_ratio 0.5, target_batch_time 50 ms); "unthrottled" is the measurement.
VARIANTS = {
    "unthrottled": {"pause": 0, "pause_ratio": 0, "target_batch_time": "off"},  # batch_rows from --batch-rows
    "throttle": {},
}
# Metadata database settings: Airflow's own, not what is measured; durability off keeps it out of the way.
META_PG_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def parse_time(value: str | None) -> datetime | None:
    """An ISO timestamp from the REST API or PostgreSQL (aware), or None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def spec_for(name: str, variant: str, args) -> dict:
    """The YAML mapping of one run's backfill spec."""
    spec = {"name": name, "connection": "app_db", "table": TABLE, "key": "id", "where": "full_name IS NULL",
            "set": {"full_name": SET_EXPR}, "max_parallel_chunks": args.parallel, "retries": 0,
            **VARIANTS[variant]}
    if variant == "unthrottled":
        spec["batch_rows"] = args.batch_rows
    for field in ("chunk_rows", "chunk_time"):
        if getattr(args, field) is not None:
            spec[field] = getattr(args, field)
    return spec


# --------------------------------------------------------------------------------------------
# where the wall time went
# --------------------------------------------------------------------------------------------
def breakdown(stack: AirflowStack, engine, dag_id: str, run_id: str, name: str, parallel: int) -> dict:
    """Segments of the run's wall time (they add up to it) and the chunk tasks' seconds, from the task
    instances' timestamps and rowfill's checkpoint rows; seconds as floats."""
    run = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id.replace('+', '%2B').replace(':', '%3A')}")
    tis = stack.task_instances(dag_id, run_id)
    by = {t["task_id"]: t for t in tis if t["task_id"] != "chunk"}
    chunks = sorted((t for t in tis if t["task_id"] == "chunk" and t.get("start_date")), key=lambda t: t["start_date"])
    with engine.connect() as conn:
        rows = {r.chunk_no: r for r in conn.execute(text(
            "SELECT c.chunk_no, c.throttled_seconds, c.batches, c.rows_seen, min(s.work_started) AS first_work, "
            "max(s.last_commit) AS last_commit FROM rowfill.chunks c LEFT JOIN rowfill.samples s "
            "USING (backfill, chunk_no) WHERE c.backfill = :n GROUP BY 1, 2, 3, 4"), {"n": name})}
    queued, end = parse_time(run["queued_at"]), parse_time(run["end_date"])
    t = {k: (parse_time(v.get("start_date")), parse_time(v.get("end_date"))) for k, v in by.items()}
    sec = lambda a, b: max((b - a).total_seconds(), 0.0) if a and b else 0.0  # noqa: E731
    seg = {"queued → plan start": sec(queued, t["plan"][0]), "plan": sec(*t["plan"])}
    c_start = [parse_time(c["start_date"]) for c in chunks]
    c_end = [parse_time(c["end_date"]) for c in chunks]
    if chunks:
        seg["plan end → first chunk start"] = sec(t["plan"][1], min(c_start))
        seg["chunks (first start → last end)"] = sec(min(c_start), max(c_end))
        last = max(c_end)
    else:
        last = t["plan"][1]
    seg["last chunk end → verify start"] = sec(last, t["verify"][0])
    seg["verify"] = sec(*t["verify"])
    seg["verify end → summary start"] = sec(t["verify"][1], t["summary"][0])
    seg["summary"] = sec(*t["summary"])
    seg["summary end → run end"] = sec(t["summary"][1], end)
    wall = sec(queued, end)
    # chunk task seconds: task start -> first batch, batches, throttle waits, last commit -> task end,
    # and the gaps between a chunk's end and the start of the next one in its slot
    cs = {"task start → first batch": 0.0, "batches": 0.0, "throttle waits": 0.0, "last commit → task end": 0.0,
          "gaps between a chunk's end and the next start": 0.0}
    batch_intervals = []
    for i, c in enumerate(chunks):
        row = rows.get(_chunk_no(c))
        if row is None or row.first_work is None:
            continue
        cs["task start → first batch"] += sec(c_start[i], row.first_work)
        cs["throttle waits"] += float(row.throttled_seconds or 0)
        cs["batches"] += max(sec(row.first_work, row.last_commit) - float(row.throttled_seconds or 0), 0.0)
        cs["last commit → task end"] += sec(row.last_commit, c_end[i])
        batch_intervals.append((row.first_work, row.last_commit))
        if i >= parallel:
            ready = sorted(c_end[:i])[i - parallel]
            cs["gaps between a chunk's end and the next start"] += sec(ready, c_start[i])
    writing = _union_seconds(batch_intervals)
    return {"wall": wall, "segments": seg, "chunk_seconds": cs, "chunks": len(chunks), "writing_wall": writing,
            "airflow_share": (wall - writing) / wall if wall else None,
            "batches": sum(int(r.batches) for r in rows.values())}


def _chunk_no(ti: dict) -> int | None:
    """The chunk number from the task instance's rendered map index ("chunk 3/10 (...)")."""
    m = re.match(r"chunk (\d+)/", ti.get("rendered_map_index") or "")
    return int(m.group(1)) if m else None


def _union_seconds(intervals) -> float:
    """Seconds covered by at least one interval: the wall time when some chunk was writing (or resting
    between its batches)."""
    total, cur = 0.0, None
    for a, b in sorted(intervals):
        if cur is None or a > cur[1]:
            if cur:
                total += (cur[1] - cur[0]).total_seconds()
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur:
        total += (cur[1] - cur[0]).total_seconds()
    return total


# --------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------
def code_checkout(ref: str, keep: list) -> Path:
    """A throwaway git worktree of ``ref`` (removed at the end); its include/ and dags/ run in Airflow."""
    where = Path(tempfile.mkdtemp(prefix="rowfill-ref-")) / "code"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)
    keep.append(where)
    return where


def run_code(label: str, code: Path | None, args, target_url: str, engine, meta: LocalPostgres, home: Path) -> list[dict]:
    """Start Airflow on ``code`` (None: this checkout), run every variant on a freshly built table."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    specs = home / f"specs-{slug}"
    specs.mkdir(parents=True)
    names = {v: f"speed_{slug}_{v}" for v in args.variants}
    for variant, name in names.items():
        (specs / f"{name}.yaml").write_text(yaml.safe_dump(spec_for(name, variant, args), sort_keys=False))
    warmup = f"speed_{slug}_warmup"
    (specs / f"{warmup}.yaml").write_text(yaml.safe_dump(
        {"name": warmup, "connection": "app_db", "table": WARMUP_TABLE, "key": "id", "set": {"n": "n + 1"}}, sort_keys=False))
    meta_db = f"airflow_{slug}"
    admin = make_engine(meta.url, 1)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{meta_db}"'))
    admin.dispose()
    code = code or ROOT  # the Airflow processes import rowfill from the checkout measured, whatever the venv points at
    extra = {"AIRFLOW__CORE__PARALLELISM": "8",
             "PYTHONPATH": f"{code / 'include'}:{os.environ.get('PYTHONPATH', '')}",
             "AIRFLOW__CORE__DAGS_FOLDER": str(code / "dags"),
             "AIRFLOW__CORE__PLUGINS_FOLDER": str(code / "plugins")}
    stack = AirflowStack(home / f"airflow-{slug}", port=free_port(), target_url=target_url, specs_dir=specs,
                         metadata_url=meta.url_for(meta_db).replace("postgresql://", "postgresql+psycopg://"),
                         extra_env=extra)
    results = []
    try:
        say(f"{label}: starting Airflow (logs in {stack.home / 'logs'})")
        stack.prepare()
        stack.start()
        # each code measured starts from a database it never saw: a newer code's rowfill schema (a
        # migration the older code does not know) would make the older code refuse to plan
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS rowfill CASCADE"))
        migrate_schema(code, target_url, stack.env)
        if not args.no_warmup:
            # untimed: a first backfill creates rowfill's own tables and warms the executor, as in any
            # deployment after its first backfill; the measured runs should not pay for that
            say(f"{label}: warm-up backfill of {WARMUP_TABLE} (untimed)")
            stack.wait_for_dag(f"rowfill_{warmup}", timeout=300)
            if wait_for_run(stack, f"rowfill_{warmup}", stack.trigger(f"rowfill_{warmup}"), args.timeout) != "success":
                raise SystemExit(f"the warm-up backfill failed; see {stack.home / 'logs'}")
        for variant, name in names.items():
            dag_id = f"rowfill_{name}"
            stack.wait_for_dag(dag_id, timeout=300)
            say(f"{label} {variant}: building {args.rows:,} rows")
            build_table(engine, TABLE, args.rows, "server")
            load_before = os.getloadavg()
            run_id = stack.trigger(dag_id)
            state = wait_for_run(stack, dag_id, run_id, args.timeout)
            if state != "success":
                raise SystemExit(f"{dag_id} ended {state}; see {stack.home / 'logs'}")
            b = breakdown(stack, engine, dag_id, run_id, name, args.parallel)
            b["log_counts"] = log_counts(stack.home / "logs", dag_id)
            check = verify(engine, TABLE)
            if check["null_left"] or check["correct"] != args.rows:
                raise SystemExit(f"{dag_id}: the table is not right after the run: {check}")
            results.append({"code": label, "variant": variant, "rows": args.rows, "seconds": b["wall"],
                            "rows_per_s": args.rows / b["wall"], "load": [load_before, os.getloadavg()], **b})
            say(f"{label} {variant}: {b['wall']:.1f} s, {args.rows / b['wall']:,.0f} rows/s, {b['chunks']} chunks")
    finally:
        stack.stop()
    return results


# Task-log lines counted per run: the fast path's lock_timeout sending a batch to the slow path
# (rowfill.engine.rowlocks; without application traffic in the bench, every one is a wait on
# something other than a row, e.g. the other chunk's relation-extension lock), and batches retried
# after a lock_timeout on the slow path.
LOG_COUNTS = {"fast path → slow path (lock_timeout)": "a row of the batch is locked by another session",
              "batch retried after lock_timeout": "batch hit lock_timeout"}


def log_counts(logs: Path, dag_id: str) -> dict:
    """How many lines of ``LOG_COUNTS`` the run's task logs hold (each variant's DAG runs once)."""
    counts = dict.fromkeys(LOG_COUNTS, 0)
    for path in (logs / f"dag_id={dag_id}").rglob("*.log"):
        body = path.read_text(errors="replace")
        for label, needle in LOG_COUNTS.items():
            counts[label] += body.count(needle)
    return counts


def migrate_schema(code: Path, url: str, env: dict) -> None:
    """``rowfill db migrate`` with ``code``'s rowfill, where it has the command (code that creates its
    tables while it runs has none, and needs none)."""
    done = subprocess.run([sys.executable, "-c", "import sys; from rowfill.ops.cli import main; sys.exit(main(sys.argv[1:]))",
                           "db", "migrate", "--db", url], env=env, capture_output=True, text=True)
    if done.returncode == 0:
        say(f"rowfill db migrate: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else 'done'}")


def wait_for_run(stack: AirflowStack, dag_id: str, run_id: str, timeout: float) -> str:
    """The run's final state; an API call that times out on a busy machine is asked again, not fatal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = stack.run_state(dag_id, run_id)
        except (OSError, RuntimeError) as exc:  # urllib's timeouts and connection errors, HTTP 5xx
            say(f"asking Airflow for the run's state failed ({exc}); asking again")
            state = None
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise SystemExit(f"run {run_id} of {dag_id} did not finish within {timeout:.0f} s")


def single_update(engine, rows: int) -> dict:
    """The baseline: build the table, one UPDATE of every row (COMMIT included), check it."""
    build_table(engine, TABLE, rows, "server")
    load_before = os.getloadavg()
    res = run_single_update(engine, TABLE)
    check = verify(engine, TABLE)
    if check["null_left"] or check["correct"] != rows:
        raise SystemExit(f"single UPDATE left the table wrong: {check}")
    say(f"single UPDATE: {res['seconds']:.1f} s, {rows / res['seconds']:,.0f} rows/s")
    return {"seconds": res["seconds"], "rows_per_s": rows / res["seconds"], "load": [load_before, os.getloadavg()]}


def say(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", flush=True)


def print_report(res: dict) -> None:
    m, s = res["machine"], res["server"]
    print()
    print(f"Machine:    {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; load average at start "
          f"{'/'.join(f'{x:.2f}' for x in res['load_at_start'])}")
    print(f"PostgreSQL: {s['version']}; " + ", ".join(f"{k}={v}" for k, v in s["settings"].items()))
    ups = res["single_update"]
    print(f"Single UPDATE of {res['rows']:,} rows: " + ", ".join(f"{u['seconds']:.1f} s (load {u['load'][0][0]:.2f})"
                                                                 for u in ups)
          + f"; mean {res['baseline_rows_per_s']:,.0f} rows/s")
    print()
    head = f"{'code':<10} {'variant':<12} {'chunks':>6} {'wall s':>8} {'rows/s':>10} {'ratio':>6} {'airflow':>8} {'load':>10}"
    print(head)
    print("-" * len(head))
    for r in res["runs"]:
        print(f"{r['code']:<10} {r['variant']:<12} {r['chunks']:>6} {r['seconds']:>8.1f} {r['rows_per_s']:>10,.0f} "
              f"{r['ratio']:>6.2f} {100 * r['airflow_share']:>7.1f}% {r['load'][0][0]:>4.2f}→{r['load'][1][0]:.2f}")
    for r in res["runs"]:
        print(f"\n{r['code']} {r['variant']}: where the {r['seconds']:.1f} s went (wall segments, they add up)")
        for k, v in r["segments"].items():
            print(f"  {k:<42} {v:>8.2f} s {100 * v / r['seconds']:>5.1f}%")
        print(f"  chunk tasks ({r['chunks']} chunks, {r['batches']} batches, up to {res['parallel']} at once; task seconds)")
        for k, v in r["chunk_seconds"].items():
            print(f"    {k:<46} {v:>8.2f} s")
        print(f"  some chunk writing: {r['writing_wall']:.2f} s of the wall; Airflow's share (the rest): "
              f"{100 * r['airflow_share']:.1f}%")
        for k, v in r.get("log_counts", {}).items():
            print(f"  {k:<46} {v:>8d} times")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="rows in the table (3000000 and 10000000 are the issue's sizes)")
    p.add_argument("--variants", default="unthrottled,throttle", help="comma-separated: unthrottled, throttle")
    p.add_argument("--batch-rows", type=int, default=10_000, help="fixed batch size of the unthrottled variant")
    p.add_argument("--parallel", type=int, default=2, help="max_parallel_chunks (the default pool has 2 slots)")
    p.add_argument("--chunk-rows", type=int, default=None, help="set chunk_rows in the specs (default: the spec default)")
    p.add_argument("--chunk-time", default=None, help="set chunk_time in the specs, e.g. 1min (not for --compare-ref "
                                                      "refs that predate the field)")
    p.add_argument("--compare-ref", default=None, help="also run the Airflow side with this git ref's code, e.g. main")
    p.add_argument("--pg-setting", action="append", default=[], help="name=value for the target cluster")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one DAG run")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up backfill per Airflow stack "
                                                             "(the first measured run then creates rowfill's tables)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (clusters' data, Airflow logs)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="rowfill-airflow-speed-"))
    settings = {**DEFAULT_PG_SETTINGS, **dict(s.split("=", 1) for s in args.pg_setting)}
    target = LocalPostgres(home / "target", settings=settings)
    meta = LocalPostgres(home / "meta", settings=META_PG_SETTINGS)
    checkouts: list[Path] = []
    load_at_start = os.getloadavg()
    try:
        target.init(), target.start(), meta.init(), meta.start()
        engine = make_engine(target.url, 2)
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {WARMUP_TABLE} (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0)"))
            conn.execute(text(f"INSERT INTO {WARMUP_TABLE} (id) SELECT generate_series(1, 1000)"))
        res = {"machine": machine(), "server": server(engine), "rows": args.rows, "parallel": args.parallel,
               "load_at_start": load_at_start, "single_update": [single_update(engine, args.rows)], "runs": []}
        res["runs"] += run_code("HEAD", None, args, target.url, engine, meta, home)
        if args.compare_ref:
            code = code_checkout(args.compare_ref, checkouts)
            res["runs"] += run_code(args.compare_ref, code, args, target.url, engine, meta, home)
        res["single_update"].append(single_update(engine, args.rows))
        res["baseline_rows_per_s"] = sum(u["rows_per_s"] for u in res["single_update"]) / len(res["single_update"])
        for r in res["runs"]:
            r["ratio"] = r["rows_per_s"] / res["baseline_rows_per_s"]
        engine.dispose()
    finally:
        for code in checkouts:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(code)], capture_output=True)
            shutil.rmtree(code.parent, ignore_errors=True)  # the rowfill-ref-* folder that held the worktree
        for pg in (target, meta):
            try:
                pg.stop()
            except Exception:  # noqa: BLE001 - it may never have started
                pass
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
