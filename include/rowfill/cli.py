"""The ``rowfill`` command: check specs, look at progress, run or reset a backfill outside Airflow.

The target database comes from ``--db URL``, else ``ROWFILL_DATABASE_URL``, else the spec's
Airflow connection (``AIRFLOW_CONN_<ID>`` or the Airflow metadata DB).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from rowfill.checkpoint import CheckpointStore
from rowfill.db import check_reachable, engine_for
from rowfill.errors import RowfillError
from rowfill.keys import chunk_label
from rowfill.plan import plan_backfill
from rowfill.pools import POOLS_FILE, pools_for
from rowfill.report import backfill_summary
from rowfill.runner import ChunkRunner
from rowfill.spec import find_spec, load_specs


def progress_bar(done: int, total: int, width: int = 30) -> str:
    share = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(round(share * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%}"


def _engine(spec, args):
    engine = engine_for(spec.connection, args.db)
    check_reachable(engine, spec.connection)
    return engine


def cmd_validate(args) -> int:
    from rowfill.errors import SpecError
    from rowfill.transform import load_callable

    specs, errors = load_specs(args.specs_dir)
    for spec in specs:
        try:  # a transform or sink must import here as it will on the workers
            if spec.transform or spec.sink:
                load_callable(spec.transform or spec.sink, spec, "transform" if spec.transform else "sink")
        except SpecError as exc:
            errors.append(exc)
            continue
        print(f"ok    {spec.name:30} {spec.source}")
    for error in errors:
        print(f"error {error}")
    return 1 if errors else 0


def cmd_status(args) -> int:
    specs, _ = load_specs(args.specs_dir)
    specs = [s for s in specs if not args.name or s.name == args.name]
    if args.name and not specs:
        find_spec(args.name, args.specs_dir)  # raises the helpful error
    while True:
        lines, payload = [], []
        for spec in specs:
            engine = _engine(spec, args)
            try:
                store = CheckpointStore(engine)
                if spec.name not in store.backfill_names():
                    lines.append(f"{spec.name:24} not started")
                    payload.append({"backfill": spec.name, "state": "not started"})
                    continue
                s = backfill_summary(engine, spec.name)
                chunks = store.chunks(spec.name)
            finally:
                engine.dispose()
            running = sum(c.status == "running" for c in chunks)
            state = "done" if s.chunks and s.chunks_done == s.chunks else ("failed" if s.chunks_failed else ("running" if running else "waiting"))
            eta = "" if s.eta_seconds in (None, 0) else f", ETA {s.eta_seconds / 60:.1f} min"
            lines.append(f"{spec.name:24} {progress_bar(s.rows_seen, s.rows_estimated)} {s.rows_seen:,} of ~{s.rows_estimated:,} rows, "
                         f"{s.rows_per_second:,.0f} rows/s{eta}, chunks {s.chunks_done}/{s.chunks} done, {running} running, {s.chunks_failed} failed ({state})")
            for c in chunks if args.chunks else []:
                span = chunk_label(spec.key, c.chunk_no, None, c.lo, c.hi, c.first_key).split(" (", 1)[1][:-1]
                lines.append(f"    chunk {c.chunk_no:>4} {c.status:8} {progress_bar(c.rows_seen, c.est_rows, 20)} {span}"
                             f"{'  error: ' + c.last_error if c.last_error else ''}")
            payload.append({**s.to_dict(), "state": state, "chunks_running": running})
        for spec in specs if not args.json else []:
            rb = f"{spec.name}.rollback"  # a rollback in progress (see rowfill.undo)
            engine = _engine(spec, args)
            try:
                if rb in CheckpointStore(engine).backfill_names():
                    r = backfill_summary(engine, rb)
                    lines.append(f"{rb:24} {progress_bar(r.rows_seen, r.rows_estimated)} {r.rows_written:,} rows restored, "
                                 f"chunks {r.chunks_done}/{r.chunks} done, {r.chunks_failed} failed (rollback in progress)")
            finally:
                engine.dispose()
        if args.json:
            print(json.dumps(payload, indent=2, default=str))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print("\n".join(lines) or "no specs")
        if not args.watch:
            return 0
        time.sleep(args.watch)


def cmd_run(args) -> int:
    """Run a whole backfill in this process, chunk after chunk: for small jobs and for trying a spec."""
    spec = find_spec(args.name, args.specs_dir)
    engine = _engine(spec, args)
    try:
        chunks = plan_backfill(engine, spec, log=logging.getLogger("rowfill.plan"))
        print(f"{spec.name}: {len(chunks)} chunks to run")
        for chunk in chunks:
            ChunkRunner(engine, spec, label=chunk.label).run(chunk.chunk_no)
        print(backfill_summary(engine, spec.name).line())
    finally:
        engine.dispose()
    return 0


def cmd_plan(args) -> int:
    """Dry run: chunks, rows, a timed sample batch (rolled back) and its EXPLAIN; nothing is changed."""
    from rowfill.dryrun import dry_run

    spec = find_spec(args.name, args.specs_dir)
    engine = _engine(spec, args)
    try:
        report = dry_run(engine, spec)
    finally:
        engine.dispose()
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.render())
    return 0


def cmd_rollback(args) -> int:
    """Restore the previous values recorded by an ``undo: true`` backfill, in throttled, checkpointed batches."""
    from rowfill.undo import NoUndo, RestoreWriter, finish_rollback, no_undo_message, plan_rollback, rollback_spec

    spec = find_spec(args.name, args.specs_dir)
    if not spec.undo:
        raise NoUndo(no_undo_message(spec))
    if not args.yes:
        print(f"This stops backfill {spec.name!r} (its progress is forgotten) and restores the previous values of "
              f"{', '.join(spec.set or spec.returns)} in {spec.table} for every row it changed that the application "
              "has not changed since. Add --yes to do it.")
        return 2
    engine = _engine(spec, args)
    try:
        rb = rollback_spec(spec)
        chunks = plan_rollback(engine, spec, log=logging.getLogger("rowfill.plan"))
        print(f"{spec.name}: rolling back, {len(chunks)} chunks of the undo log")
        for chunk in chunks:
            ChunkRunner(engine, rb, label=chunk.label, writer=RestoreWriter(rb, spec)).run(chunk.chunk_no)
        print(finish_rollback(engine, spec).line())
    finally:
        engine.dispose()
    return 0


def cmd_reset(args) -> int:
    spec = find_spec(args.name, args.specs_dir)
    if not args.yes:
        print(f"This forgets the plan and progress of {spec.name!r} (rows already written stay written). Add --yes to do it.")
        return 2
    engine = _engine(spec, args)
    try:
        removed = CheckpointStore(engine).reset(spec.name)
        removed += CheckpointStore(engine).reset(f"{spec.name}.rollback")  # an abandoned rollback too
    finally:
        engine.dispose()
    print(f"{spec.name}: {'progress forgotten' if removed else 'nothing to reset'}")
    return 0


def cmd_pools(args) -> int:
    specs, errors = load_specs(args.specs_dir)
    content = json.dumps(pools_for(specs), indent=2) + "\n"
    if args.write:
        POOLS_FILE.write_text(content)
        print(f"wrote {POOLS_FILE}; load it with: airflow pools import {POOLS_FILE}")
    else:
        print(content, end="")
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rowfill", description="Batched, resumable, exactly-once PostgreSQL backfills.")
    p.add_argument("--specs-dir", help="folder of *.yaml specs (default: $ROWFILL_SPECS_DIR or include/specs)")
    p.add_argument("--db", help="target database URL (default: $ROWFILL_DATABASE_URL or the spec's Airflow connection)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check every spec; exit 1 if any is invalid").set_defaults(func=cmd_validate)
    s = sub.add_parser("status", help="progress of backfills")
    s.add_argument("name", nargs="?")
    s.add_argument("--chunks", action="store_true", help="one line per chunk")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", type=float, nargs="?", const=2.0, help="refresh every N seconds (default 2)")
    s.set_defaults(func=cmd_status)
    r = sub.add_parser("run", help="run a backfill here, outside Airflow, chunk after chunk")
    r.add_argument("name")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("plan", help="dry run: chunks, rows, estimated duration from a rolled-back sample batch, EXPLAIN")
    d.add_argument("name")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_plan)
    b = sub.add_parser("rollback", help="restore what an undo: true backfill changed (throttled, resumable)")
    b.add_argument("name")
    b.add_argument("--yes", action="store_true")
    b.set_defaults(func=cmd_rollback)
    x = sub.add_parser("reset", help="forget a backfill's plan and progress")
    x.add_argument("name")
    x.add_argument("--yes", action="store_true")
    x.set_defaults(func=cmd_reset)
    q = sub.add_parser("pools", help="print (or --write) include/pools.json for the specs")
    q.add_argument("--write", action="store_true")
    q.set_defaults(func=cmd_pools)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    try:
        return args.func(args)
    except RowfillError as exc:
        print(f"rowfill: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
