"""``make demo``: a real backfill of 1M rows through a real Airflow 3, end to end.

1. a throwaway PostgreSQL in .demo/pg (or the database in ROWFILL_DEMO_DB_URL),
2. seeds 1M users with full_name NULL,
3. starts Airflow (scheduler with LocalExecutor on SQLite, DAG processor, API server, triggerer),
4. triggers rowfill_users_full_name and shows its progress until it is done,
5. prints the summary and the run's rows/s beside those of one plain UPDATE of the same rows, timed
   on the same freshly seeded table before the run (``--no-baseline`` skips it), then stops everything
   it started (``--keep`` leaves the UI up; ``make demo-stop`` stops it later).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "include"))  # rowfill_dev: development tooling, not installed

from seed import seed  # noqa: E402

from rowfill.engine.database import engine_from_url  # noqa: E402
from rowfill.engine.status import statuses  # noqa: E402
from rowfill.spec.spec import load_spec  # noqa: E402
from rowfill.ops.cli import progress_bar  # noqa: E402
from rowfill.spec.durations import format_duration  # noqa: E402
from rowfill_dev.devstack import AirflowStack  # noqa: E402
from rowfill_dev.localpg import LocalPostgres, free_port  # noqa: E402
from rowfill_dev.schema import migrate_database  # noqa: E402

DEMO = ROOT / ".demo"
STATE = DEMO / "state.json"
DAG_ID = "rowfill_users_full_name"
SPEC = ROOT / "include" / "specs" / "users_full_name.yaml"


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def stop_previous() -> None:
    """Stop what an earlier ``--keep`` demo left running (process groups, then the database)."""
    if not STATE.exists():
        say("nothing to stop")
        return
    state = json.loads(STATE.read_text())
    for pgid in state.get("process_groups", []):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
                time.sleep(2 if sig == signal.SIGTERM else 0)
            except (ProcessLookupError, PermissionError):
                break
    if state.get("pg_datadir"):
        LocalPostgres(state["pg_datadir"], port=state["pg_port"]).stop()
    STATE.unlink()
    say("stopped the demo's Airflow and PostgreSQL")


def login(stack: AirflowStack) -> str:
    """How to sign in: the admin password is made at random for this demo's AIRFLOW_HOME."""
    return f"(user {stack.user}, password {stack.password}; kept in {stack.secrets_file.relative_to(ROOT)})"


def single_update(url: str) -> tuple[int, float]:
    """(rows, seconds) of one UPDATE doing what the demo's backfill does, in one statement (COMMIT included).

    The baseline the backfill's rows/s is shown beside: the spec's own ``set`` and ``where`` on the same
    table, right after seeding. The caller seeds again afterwards, so the backfill starts from the same state.
    """
    spec = load_spec(SPEC)
    assignments = ", ".join(f"{column} = {expr}" for column, expr in spec.set.items())
    engine = engine_from_url(url)
    try:
        t0 = time.perf_counter()
        with engine.begin() as conn:
            rows = conn.exec_driver_sql(f"UPDATE {spec.table.sql} SET {assignments} WHERE {spec.where}").rowcount
        return rows, time.perf_counter() - t0
    finally:
        engine.dispose()


def run_wall_seconds(stack: AirflowStack, run_id: str) -> float:
    """The DAG run's wall time, queued to end (Airflow REST API), seconds."""
    run = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id.replace('+', '%2B').replace(':', '%3A')}")
    begin, end = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("queued_at", "end_date"))
    return (end - begin).total_seconds()


def watch(stack: AirflowStack, engine, run_id: str) -> str:
    last_state, last_line = None, ""
    while True:
        state = stack.run_state(DAG_ID, run_id)
        if state != last_state:
            say(f"run {run_id}: {state}")
            last_state = state
        s = statuses(engine, ["users_full_name"])["users_full_name"]
        if s.chunks:
            eta = f", ETA {format_duration(s.eta_seconds)}" if s.eta_seconds else ""
            line = (f"{progress_bar(s.rows_seen, s.rows_estimated)} {s.rows_seen:,} of ~{s.rows_estimated:,} rows, "
                    f"{s.rows_per_second:,.0f} rows/s{eta} | chunks {s.chunks_done}/{len(s.chunks)} done, {s.chunks_running} running")
            if line != last_line:
                say(line)
                last_line = line
        if state in ("success", "failed"):
            return state
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=int(os.environ.get("ROWFILL_DEMO_USERS", 1_000_000)))
    parser.add_argument("--keep", action="store_true", help="leave Airflow and PostgreSQL running to explore the UI")
    parser.add_argument("--stop", action="store_true", help="stop what a --keep demo left running")
    parser.add_argument("--no-baseline", action="store_true", help="skip timing one plain UPDATE of the same rows")
    args = parser.parse_args()
    if args.stop:
        stop_previous()
        return 0
    if STATE.exists():
        say("an earlier demo is still running; stopping it first")
        stop_previous()
    for leftover in (DEMO / "pg", DEMO / "airflow"):  # every demo starts from nothing
        shutil.rmtree(leftover, ignore_errors=True)
    DEMO.mkdir(exist_ok=True)

    pg = None
    url = os.environ.get("ROWFILL_DEMO_DB_URL")
    if url:
        say("using the configured database ROWFILL_DEMO_DB_URL (tables users and users_v2 will be recreated)")
    else:
        pg = LocalPostgres(DEMO / "pg", port=free_port())
        say(f"starting a throwaway PostgreSQL in {pg.datadir} on port {pg.port}")
        pg.start()
        url = pg.url
    port = 8080 if port_is_free(8080) else free_port()
    stack = AirflowStack(DEMO / "airflow", port=port, target_url=url)
    keep = False
    try:
        say(f"seeding {args.users:,} users")
        seed(url, args.users)
        baseline = None
        if not args.no_baseline:
            say("timing one plain UPDATE of the same rows, for comparison")
            baseline = single_update(url)
            say(f"single UPDATE: {baseline[0]:,} rows in {baseline[1]:.1f} s ({baseline[0] / baseline[1]:,.0f} rows/s); "
                "seeding again so the backfill starts from the same table")
            seed(url, args.users)
        say("migrating rowfill's schema (rowfill db migrate): rowfill itself runs no DDL")
        migrate_database(url)
        say("preparing Airflow (metadata DB migration, pools from include/pools.json)")
        stack.prepare()
        say("starting Airflow: scheduler (LocalExecutor), DAG processor, API server, triggerer")
        stack.start()
        say(f"Airflow UI: {stack.base}  {login(stack)}")
        stack.wait_for_dag(DAG_ID)
        run_id = stack.trigger(DAG_ID)
        say(f"triggered {DAG_ID}")
        engine = engine_from_url(url)
        state = watch(stack, engine, run_id)
        if state == "success":
            summary = stack.xcom(DAG_ID, run_id, "summary")
            say("summary: " + json.dumps(summary))
            say(f"{summary['rows_written']:,} rows written in {summary['seconds']:.1f} s ({summary['rows_per_second']:,.0f} rows/s); verify found nothing left to do")
            wall = run_wall_seconds(stack, run_id)
            line = f"the whole DAG run took {wall:.1f} s: {summary['rows_written'] / wall:,.0f} rows/s through Airflow"
            if baseline:
                line += (f", beside {baseline[0] / baseline[1]:,.0f} rows/s of the single UPDATE "
                         f"({summary['rows_written'] / wall / (baseline[0] / baseline[1]):.2f} x; the spec's throttle "
                         "rests between batches so live traffic gets through, a single UPDATE does not)")
            say(line)
        else:
            say(f"the run failed; task logs are in {stack.home}/logs")
        engine.dispose()
        if args.keep:
            keep = True
            say(f"Airflow UI: {stack.base}  {login(stack)}")
            STATE.write_text(json.dumps({"process_groups": [p.pid for p in stack.procs.values()],
                                         "pg_datadir": str(pg.datadir) if pg else None, "pg_port": pg.port if pg else None}))
            say("left running as asked (--keep); stop it with: make demo-stop")
        return 0 if state == "success" else 1
    finally:
        if not keep:
            stack.stop()
            if pg:
                pg.stop()
            say("stopped everything the demo started (`make demo DEMO_ARGS=--keep` leaves the UI up to explore)")


if __name__ == "__main__":
    raise SystemExit(main())
