#!/usr/bin/env python
"""Does a backfill's console page answer in under 200 ms with 1,000 chunks and 30 days of history?
(a benchmark, not a test; issue 14)

One invocation:
  1. a throwaway PostgreSQL (the target database) and a throwaway Airflow metadata database
     (SQLite, as the development stack uses; ``airflow db migrate`` in a temporary AIRFLOW_HOME);
  2. a backfill planned into 1,000 chunks (400 done, 10 failed, 4 running), six hours of rate
     samples for its running chunks (what ``rowfill.store.rates`` keeps), an hourly DAG run for
     30 days (720 runs, each with start, end, outcome and who triggered it) and 200 audit entries;
  3. the console app exactly as the plugin mounts it (``rowfill.airflow.web.create_app``), with
     Airflow's simple auth manager and a real signed token, asked in-process (Starlette's test
     client: the server's time, no network) for:
       * baseline: the overview of one small backfill (1 chunk, no history) — what any page costs;
       * the backfill's page with everything above;
     each ``--repeat`` times after a warm-up, alternating; prints the machine, the medians, their
     ratio and PASS/MISS against the 200 ms target.

Where the schema has wait samples (migration 0004), the 4 running chunks also get 30 days of them: a
rest in every 5-second bucket, a gate wait every minute, the latency probe's worst reading and limit,
and a night outside the window each day (one row per deferral, as ``waits.resume`` records it); and
the 586 pending chunks are held for the window since three hours (``throttle_since``), so the chart
adds a hold going on for each of them.

With ``--compare-ref REF`` (e.g. ``main``) the same steps run twice in this invocation, each in a
process of its own with its own clusters: once with the code of REF (a throwaway git worktree,
removed at the end) and once with this checkout's, REF first; ``--rounds N`` does that N times and
pools each code's timings, so load that comes and goes meets both. It prints both medians and their ratio.

    .venv/bin/python bench/console_speed.py [--repeat 21] [--compare-ref main [--rounds 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the code measured: this checkout's include/, or a --compare-ref worktree's (its rowfill and rowfill_dev)
CODE = Path(os.environ.get("ROWFILL_BENCH_CODE") or ROOT)
sys.path.insert(0, str(CODE / "include"))

TARGET_MS = 200.0  # issue 14: the page with 1,000 chunks and 30 days of history
CHUNKS = 1_000
DAYS = 30


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, load {load:.1f}, Python {platform.python_version()}"


def write_spec(folder: Path, name: str, table: str, chunk_rows: int) -> None:
    (folder / f"{name}.yaml").write_text(
        f"name: {name}\nconnection: app_db\ntable: {table}\nkey: id\nwhere: full_name IS NULL\n"
        f"set:\n  full_name: first_name || ' ' || last_name\nchunk_rows: {chunk_rows}\nbatch_rows: {chunk_rows}\n")


def fill_target(engine, folder: Path) -> bool:
    from sqlalchemy import text

    from rowfill.engine.plan import plan_backfill
    from rowfill.spec.spec import load_spec
    from rowfill.store import audit
    from rowfill_dev.schema import migrate_database

    migrate_database(engine)  # as `rowfill db migrate` before any backfill
    with engine.begin() as conn:
        for table, rows in (("wide_users", CHUNKS * 20), ("small_users", 100)):
            conn.execute(text(f"CREATE TABLE {table} (id bigint PRIMARY KEY, first_name text, last_name text, full_name text)"))
            conn.execute(text(f"INSERT INTO {table} SELECT g, 'f' || g, 'l' || g, NULL FROM generate_series(1, {rows}) g"))
            conn.execute(text(f"ANALYZE {table}"))
    write_spec(folder, "wide_fill", "public.wide_users", 20)
    write_spec(folder, "small_fill", "public.small_users", 1_000)
    wide = load_spec(folder / "wide_fill.yaml")
    assert len(plan_backfill(engine, wide)) == CHUNKS
    plan_backfill(engine, load_spec(folder / "small_fill.yaml"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE rowfill.chunks SET status = 'done', rows_seen = est_rows, batches = 1 "
                          "WHERE backfill = 'wide_fill' AND chunk_no <= 400"))
        conn.execute(text("UPDATE rowfill.chunks SET status = 'failed', last_error = 'boom ' || chunk_no, run_id = 'r', "
                          "map_index = chunk_no - 1, attempts = 1 WHERE backfill = 'wide_fill' AND chunk_no BETWEEN 401 AND 410"))
        conn.execute(text("UPDATE rowfill.chunks SET status = 'running', throttled_seconds = 12.5, "
                          "throttle_state = CASE WHEN chunk_no = 411 THEN 'waiting: replica_lag 12 s > 5 s' END "
                          "WHERE backfill = 'wide_fill' AND chunk_no BETWEEN 411 AND 414"))
        # six hours of 5-second buckets for the 4 running chunks (what rates.KEEP_SECONDS keeps); now(), not
        # clock_timestamp(): a bucket boundary passing during the insert made two rows of one bucket
        conn.execute(text("""
            INSERT INTO rowfill.samples (backfill, chunk_no, bucket, rows_seen, batches, work_started, last_commit)
            SELECT 'wide_fill', c, to_timestamp(floor(extract(epoch FROM now()) / 5) * 5) - make_interval(secs => 5 * s),
                   500 + (s % 97), 5, now(), now()
            FROM generate_series(411, 414) c, generate_series(0, 6 * 720 - 1) s"""))
        waits = conn.execute(text("SELECT to_regclass('rowfill.wait_samples') IS NOT NULL")).scalar()
        if waits:
            # 30 days of wait samples of the 4 running chunks: a rest in every bucket, a gate wait and a
            # probe reading every minute, and each day a night of 8 h outside the window, one row as recorded
            conn.execute(text("""
                INSERT INTO rowfill.wait_samples (backfill, chunk_no, bucket, rest_seconds, gate_seconds,
                                                  window_seconds, latency_worst, latency_limit)
                SELECT 'wide_fill', c, to_timestamp(floor(extract(epoch FROM now()) / 5) * 5) - make_interval(secs => 5 * s),
                       0.8 + (s % 7) * 0.1, CASE WHEN s % 12 = 0 THEN 2.0 ELSE 0 END,
                       CASE WHEN s % 17280 = 8000 THEN 28800.0 ELSE 0 END,
                       CASE WHEN s % 12 = 0 THEN 0.004 + (s % 50) * 0.0005 END, CASE WHEN s % 12 = 0 THEN 0.02 END
                FROM generate_series(411, 414) c, generate_series(0, :buckets - 1) s
                ORDER BY s DESC, c  -- oldest first, the chunks side by side: the order the runners write them"""),
                         {"buckets": DAYS * 17_280})
            # the pending chunks wait for the window since three hours: a hold going on, each
            conn.execute(text("UPDATE rowfill.chunks SET throttle_state = 'outside the window (22:00-06:00 UTC); opens at 22:00', "
                              "throttle_since = now() - interval '3 hours' WHERE backfill = 'wide_fill' AND status = 'pending'"))
    # vacuumed as a table in steady state is: else autovacuum reads the 2M fresh rows (and sets their hint
    # bits) while the pages are timed, on the same 2 cores
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) rowfill.samples, rowfill.chunks" + (", rowfill.wait_samples" if waits else "")))
    for i in range(200):
        audit.record(engine, "wide_fill", f"user{i % 7}", audit.Source.CONSOLE if i % 2 else audit.Source.CLI,
                     ("pause", "resume", "set")[i % 3], {"state": "paused"}, f"reason {i}")
    return bool(waits)


def fill_airflow_history() -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import insert

    now = datetime.now(UTC)
    rows = []
    for hour in range(DAYS * 24):
        start = now - timedelta(hours=hour)
        rows.append({"dag_id": "rowfill_wide_fill", "run_id": f"scheduled__{start.isoformat()}", "state": "success" if hour % 5 else "failed",
                     "run_type": "scheduled" if hour % 3 else "manual", "run_after": start, "queued_at": start,
                     "start_date": start, "end_date": start + timedelta(minutes=20),
                     "triggering_user_name": None if hour % 3 else "ana"})
    with create_session() as session:
        session.execute(insert(DagRun.__table__), rows)
    return len(rows)


def timed(client, path: str, token: str) -> float:
    t0 = time.perf_counter()
    answer = client.get(path, cookies={"_token": token})
    seconds = time.perf_counter() - t0
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return seconds


def measure(repeat: int) -> dict:
    """One measurement with the code of ``CODE``: its own clusters, seeded, the pages timed; returns medians (ms)."""
    home = Path(tempfile.mkdtemp(prefix="rowfill-bench-console-"))
    os.environ.update({
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "ROWFILL_SPECS_DIR": str(home / "specs"),
    })
    (home / "airflow").mkdir()
    (home / "specs").mkdir()
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)

    from rowfill.engine.database import engine_from_url
    from rowfill_dev.localpg import LocalPostgres

    pg = LocalPostgres(home / "pg").start()
    try:
        os.environ["ROWFILL_DATABASE_URL"] = pg.url
        engine = engine_from_url(pg.url)
        waits = fill_target(engine, home / "specs")
        runs = fill_airflow_history()

        from airflow.api_fastapi.app import init_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from fastapi.testclient import TestClient

        from rowfill.airflow.web import backfill_page, create_app
        from rowfill.spec.spec import load_spec

        token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        client = TestClient(create_app(), root_path="/rowfill")
        page = client.get("/backfills/wide_fill", cookies={"_token": token}).text  # warm-up (DAG build checks, imports)
        counts = (page.count("class='c "), page.count("<tr data-run="), page.count("<tr class='audit'"))
        assert counts[0] >= CHUNKS and counts[1:] == (50, 50) and f"{runs} run(s)" in page, counts
        if waits:  # the wait chart draws the seeded reasons, the window's holds among them
            chart = page.split("aria-label='throttle waits by reason")[1].split("</svg>")[0]
            assert all(f"data-layer='{layer}'" in chart for layer in ("rest between batches", "gate", "window")), chart[:500]
        timed(client, "/backfills/small_fill", token)
        base, full = [], []
        if os.environ.get("ROWFILL_BENCH_PROFILE"):  # where the time goes, for whoever tunes the page
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            backfill_page(load_spec(home / "specs" / "wide_fill.yaml"))  # the route's work, in this thread
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(35)
        for _ in range(repeat):
            base.append(timed(client, "/backfills/small_fill", token))
            full.append(timed(client, "/backfills/wide_fill", token))
    finally:
        pg.stop("immediate")
        shutil.rmtree(home, ignore_errors=True)  # its cluster and Airflow home: ~45 MB a run
    return {"base_ms": [t * 1000 for t in base], "full_ms": [t * 1000 for t in full],
            "runs": runs, "kib": len(page) / 1024, "wait_samples": (4 * DAYS * 17_280) if waits else 0}


def summary(results: list[dict]) -> dict:
    """The medians (ms) of one code's measurements, their timings pooled."""
    base = [t for r in results for t in r["base_ms"]]
    full = [t for r in results for t in r["full_ms"]]
    return {**results[0], "base": statistics.median(base), "base_min": min(base), "base_max": max(base),
            "full": statistics.median(full), "full_min": min(full), "full_max": max(full), "n": len(full)}


def report(label: str, r: dict) -> None:
    print(f"[{label}] page: {CHUNKS:,} chunks (400 done, 10 failed, 4 running), {r['runs']} DAG runs over {DAYS} days, "
          f"{4 * 6 * 720:,} rate samples, {r['wait_samples']:,} wait samples, 200 audit entries; {r['kib']:.0f} KiB of HTML")
    print(f"[{label}] baseline  /backfills/small_fill (1 chunk, no history): median {r['base']:6.1f} ms  "
          f"(min {r['base_min']:.1f}, max {r['base_max']:.1f})")
    print(f"[{label}] measured  /backfills/wide_fill:                        median {r['full']:6.1f} ms  "
          f"(min {r['full_min']:.1f}, max {r['full_max']:.1f}; {r['n']} requests)")
    print(f"[{label}] ratio to baseline: {r['full'] / r['base']:.2f}x; target: under {TARGET_MS:.0f} ms -> "
          f"{'PASS' if r['full'] < TARGET_MS else 'MISS'}")


def in_child(code: Path, repeat: int) -> dict:
    """``measure`` in a process of its own with the code of ``code`` (its include/ first on the path)."""
    env = {**os.environ, "ROWFILL_BENCH_CODE": str(code), "PYTHONPATH": f"{code / 'include'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, __file__, "--repeat", str(repeat), "--json"], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the measurement with {code} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--compare-ref", default=None, help="also measure the code of this git ref first, e.g. main")
    ap.add_argument("--rounds", type=int, default=1, help="with --compare-ref: REF then this checkout, this many times, "
                                                          "timings pooled (load that changes meets both)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child of --compare-ref
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.repeat)))
        return
    if not args.compare_ref:
        print(f"machine: {machine()}")
        report("this checkout", summary([measure(args.repeat)]))
        print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        return
    where = Path(tempfile.mkdtemp(prefix="rowfill-ref-")) / "code"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), args.compare_ref], check=True,
                   capture_output=True)
    befores, afters = [], []
    try:
        print(f"machine: {machine()}")
        for n in range(1, args.rounds + 1):
            befores.append(in_child(where, args.repeat))
            print(f"round {n}, uptime after {args.compare_ref}: "
                  f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
            afters.append(in_child(ROOT, args.repeat))
            print(f"round {n}, uptime after this checkout: "
                  f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False, capture_output=True)
        shutil.rmtree(where.parent, ignore_errors=True)
    before, after = summary(befores), summary(afters)
    report(args.compare_ref, before)
    report("this checkout", after)
    print(f"this checkout / {args.compare_ref}: {after['full'] / before['full']:.2f}x the 1,000-chunk page's median "
          f"({before['full']:.1f} -> {after['full']:.1f} ms); baselines {before['base']:.1f} -> {after['base']:.1f} ms")


if __name__ == "__main__":
    main()
