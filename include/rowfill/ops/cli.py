"""The ``rowfill`` command: check specs, look at progress, run or reset a backfill outside Airflow.

The target database comes from ``--db URL``, else ``ROWFILL_DATABASE_URL``, else the spec's
Airflow connection (``AIRFLOW_CONN_<ID>`` or the Airflow metadata DB).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from rowfill.airflow import runs as airflow_runs
from rowfill.airflow.chunk_settings import max_map_length
from rowfill.airflow.connections import engine_for, spec_engine
from rowfill.airflow.observers import standard_observers
from rowfill.airflow.pools import pools_for
from rowfill.airflow.specs_folder import pools_file, specs_folder
from rowfill.engine import reconnect
from rowfill.engine.chunk_task import run_chunk_here
from rowfill.engine.control import ControlStore, parse_assignments, stop_reason
from rowfill.engine.database import check_reachable
from rowfill.engine.disconnects import describe, is_connection_error
from rowfill.engine.dryrun import dry_run
from rowfill.engine.plan import plan_backfill
from rowfill.engine.report import backfill_summary
from rowfill.engine.resolve import pinned_spec, stored_table
from rowfill.engine.rollback import control_backfill, finish_rollback, plan_rollback, rollback_target
from rowfill.engine.status import statuses
from rowfill.engine.throttle import format_knob
from rowfill.engine.transform import load_callable
from rowfill.engine.undo import ROLLBACK_SUFFIX, NoUndo, RestoreWriter, no_undo_message, rollback_name, rollback_spec
from rowfill.engine.verify import VerificationFailed, verify_backfill
from rowfill.errors import ChunkFailed, RowfillError, SpecError
from rowfill.ops.dagfolder import init_dag_folder
from rowfill.ops.statusview import progress_bar as share_bar
from rowfill.ops.statusview import render_backfill, render_json
from rowfill.spec.spec import find_spec, load_specs
from rowfill.sql.sqlnames import BadIdentifier, TableName
from rowfill.store import schema
from rowfill.store import audit
from rowfill.store.checkpoint import CheckpointStore
from rowfill.store.grants import grant_statements


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """A text bar for ``done`` of ``total`` chunks (or rows), ``width`` characters; full when ``total`` is 0.

    :returns: the bar, drawn by ``rowfill.ops.statusview.progress_bar``.
    """
    return share_bar(1.0 if total <= 0 else done / total, width)


def _engine(spec, args):
    engine = spec_engine(spec, args.db)
    check_reachable(engine, spec.connection, spec.source, spec.reconnect_for)
    return engine


def _summary_line(engine, spec, after_failure: bool = False) -> str:
    """The closing summary line. After a failure it is read once, without waiting for the database:
    when the failure was the database staying away, waiting again would only delay the error."""
    read = lambda: backfill_summary(engine, spec.name).line()  # noqa: E731
    if not after_failure:
        return reconnect.call(read, spec, "reading the summary")
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - the failure above is what the user must see
        if not is_connection_error(exc):
            raise
        return f"{spec.name}: summary not read, the database is unreachable ({describe(exc)})"


def cmd_validate(args) -> int:
    """``rowfill validate``: load every spec, and import each transform or sink as the workers will.

    :param args: the parsed command line (``specs_dir``).
    :returns: the exit status: 0 when every spec is valid, 1 when any is not (each error printed).
    """
    specs, errors = load_specs(args.specs_dir)
    for spec in specs:
        try:  # a transform or sink must import here as it will on the workers
            if path := spec.transform or spec.sink:
                load_callable(path, spec, "transform" if spec.transform else "sink")
        except SpecError as exc:
            errors.append(exc)
            continue
        print(f"ok    {spec.name:30} {spec.source}")
    for error in errors:
        print(f"error {error}")
    return 1 if errors else 0


def _control_lines(control) -> list[str]:
    """What `rowfill pause/cancel/set` did to a backfill, under its progress line."""
    lines = [f"    {stop_reason(control)}"] if control.state != "running" else []
    if control.knobs:
        lines.append("    live knobs: " + ", ".join(f"{k}={format_knob(k, v)}" for k, v in sorted(control.knobs.items())))
    return lines


def cmd_status(args) -> int:
    """Progress of every backfill (or one): bars, rate over the last minute, ETA, state, last error."""
    specs, _ = load_specs(args.specs_dir)
    specs = [s for s in specs if not args.name or s.name == args.name]
    if args.name and not specs:
        find_spec(args.name, args.specs_dir)  # raises the helpful error
    while True:
        pairs, controls, problems = [], {}, {}
        for spec in specs:
            engine = _engine(spec, args)
            try:
                status, control, table, problems[spec.name] = reconnect.call(
                    functools.partial(_read_status, engine, spec), spec, "reading the status")
                controls[spec.name] = control
                if control.state != "running" and status.state not in ("done", "not started", "stale"):
                    status = dataclasses.replace(status, state=control.state)  # paused / cancelled says more than "waiting"
                pairs.append((dataclasses.replace(spec, table=table), status))
            finally:
                engine.dispose()
        if args.json:
            data = json.loads(render_json(pairs, args.chunks))
            for entry, (spec, _) in zip(data, pairs):
                c = controls[spec.name]
                entry["control"] = {"state": c.state, "knobs": c.knobs, "note": c.note}
                if problems[spec.name]:
                    entry["table_problem"] = problems[spec.name]
            print(json.dumps(data, indent=2, default=str), flush=True)
        else:
            lines = [line for spec, s in pairs for line in render_backfill(spec, s, args.chunks) + _control_lines(controls[spec.name])
                     + ([f"    table: {problems[spec.name]}"] if problems[spec.name] else [])]
            if args.watch:
                print("\033[2J\033[H" + time.strftime("%H:%M:%S") + f"  rowfill status (every {args.watch:g} s, Ctrl-C to stop)")
            print("\n".join(lines) or "no specs", flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _read_status(engine, spec):
    status = statuses(engine, [spec.name])[spec.name]
    control = ControlStore(engine).get(spec.name)
    with engine.connect() as conn:  # the table planned on (schema-qualified), and whether it changed since
        table, problem = stored_table(conn, spec)
    return status, control, table, problem


def cmd_run(args) -> int:
    """Run a whole backfill in this process, chunk after chunk, then verify it as the DAG's verify task does.

    Exit status: 0 when every chunk is done and verify finds no row still matching ``where``
    (or the backfill was cancelled: nothing failed, nothing verified, as in the DAG); 1 when a
    chunk fails or verify does, with the rows that still match printed. The last line always
    says how many rows were written and, once verified, how many rows still match ``where``.
    """
    spec = find_spec(args.name, args.specs_dir)
    engine = _engine(spec, args)
    try:
        _schema_ready_for_run(engine, spec)
        chunks = plan_backfill(engine, spec, limit=max_map_length(), log=logging.getLogger("rowfill.plan"))
        table = reconnect.call(lambda: pinned_spec(engine, spec).table, spec, "reading the planned table")
        print(f"{spec.name}: {len(chunks)} chunks to run on {table}")
        for chunk in chunks:
            # windows, pause and cancel apply here too; waiting happens in this process
            try:
                outcome = run_chunk_here(engine, spec, chunk.chunk_no, label=chunk.label,
                                         logger=logging.getLogger("rowfill.run"), observers=standard_observers(engine, spec))
            except ChunkFailed as exc:
                print(f"rowfill: {exc}", file=sys.stderr)
                print(f"{_summary_line(engine, spec, after_failure=True)}; FAILED: {chunk.label} failed (see above)")
                return 1
            if outcome.kind == "cancelled":
                print(f"{spec.name}: {outcome.reason}; stopped, cursors kept")
                print(f"{_summary_line(engine, spec)}; cancelled, not verified")
                return 0
        try:
            verified = verify_backfill(engine, spec)
        except VerificationFailed as exc:
            print(f"rowfill: verify failed: {exc}", file=sys.stderr)
            print(f"{_summary_line(engine, spec)}; verify FAILED (see above)")
            return 1
        checked = "no row matches `where` any more" if verified.remaining is not None else "every chunk done"
        print(f"{_summary_line(engine, spec)}; verified: {checked}")
    finally:
        engine.dispose()
    return 0


def _what(state: str, resume_with: str) -> str:
    """What a control state does to running chunks, in words (``resume_with``: the name `rowfill resume` takes)."""
    return {"paused": "running chunks stop at their next batch boundary and wait, without holding a worker slot, "
                      f"until `rowfill resume {resume_with}`",
            "running": "waiting chunks continue from their cursors within a few seconds",
            "cancelled": "running chunks stop at their next batch boundary, keep their cursors and end skipped; "
                         f"later runs skip too until `rowfill resume {resume_with}`"}[state]


def _control(args, action) -> int:
    """Change the control state of ``args.name``: a backfill, and then its rollback in progress too, or
    ``NAME.rollback`` alone. A rollback's chunks read their own control row (``NAME.rollback``), so the
    backfill's command writes both rows; ``resume`` also clears a rollback's row stopped earlier."""
    name = args.name
    explicit_rollback = name.endswith(ROLLBACK_SUFFIX)
    if explicit_rollback:  # NAME.rollback: the rollback's chunks (no spec name has a '.')
        spec = find_spec(name[: -len(ROLLBACK_SUFFIX)], args.specs_dir)
        name = rollback_name(spec.name)
    else:
        spec = find_spec(name, args.specs_dir)
        name = spec.name
    engine = _engine(spec, args)
    try:
        store = ControlStore(engine)

        def change():
            """Write the control row, then the rollback's when one is in progress (or, for resume, stopped).
            Retried whole through a restart: each write sets a state, so writing it twice is harmless.

            :returns: (the backfill's control row, (the rollback's row, its progress) or None).
            """
            if explicit_rollback:
                return action(store, name, args.reason), None
            return control_backfill(engine, store, name, action.__name__, args.reason)

        control, rollback = reconnect.call(change, spec, "changing the control state")
        _audit(engine, spec, name, action.__name__, {"state": control.state}, args.reason)
    finally:
        engine.dispose()
    print(f"{name}: {control.state}; {_what(control.state, name)}")
    if rollback is not None:
        rb_control, progress = rollback
        doing = (f"its rollback in progress ({progress.done} of {progress.chunks} chunks done)" if progress
                 else "its rollback")
        print(f"{rb_control.backfill}: {rb_control.state} too, {doing}; {_what(rb_control.state, name)}")
    return 0


def _audit(engine, spec, name: str, action: str, details: dict, reason: str | None) -> None:
    """Record a command's action in ``rowfill.audit`` and Airflow's audit log as the OS user who ran it.

    The action is already done; what cannot be recorded is said on stderr, never raised (issue 14).
    :param name: the backfill (or ``NAME.rollback``) acted on. :param details: JSON-ready facts (state, knobs).
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the uid itself
        user = f"uid {os.getuid()}"
    try:
        audit.record(engine, name, user, audit.Source.CLI, action, details, reason)
    except RowfillError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    try:
        airflow_runs.audit_log(action, user, spec.dag_id, {"backfill": name, "reason": reason, "source": "cli", **details})
    except Exception as exc:  # noqa: BLE001 - no Airflow metadata database here: the audit table has it
        logging.getLogger("rowfill.cli").debug("not in Airflow's audit log: %s", exc)


def cmd_pause(args) -> int:
    """``rowfill pause NAME``: running chunks stop at their next batch boundary and defer without a worker slot.

    A rollback of NAME in progress is paused too (``NAME.rollback`` pauses the rollback alone).

    :param args: the parsed command line (``name``, ``reason``, ``specs_dir``, ``db``).
    :returns: the exit status, 0.
    :raises SpecErrors: for an unknown or broken spec. :raises DatabaseUnavailable: when the database cannot be reached.
    """
    return _control(args, ControlStore.pause)


def cmd_resume(args) -> int:
    """``rowfill resume NAME``: paused or cancelled chunks continue from their cursors.

    A rollback of NAME in progress, or stopped, is resumed too (``NAME.rollback``: the rollback alone).

    :param args: the parsed command line (``name``, ``reason``, ``specs_dir``, ``db``).
    :returns: the exit status, 0.
    :raises SpecErrors: for an unknown or broken spec. :raises DatabaseUnavailable: when the database cannot be reached.
    """
    return _control(args, ControlStore.resume)


def cmd_cancel(args) -> int:
    """``rowfill cancel NAME``: running chunks stop at their next batch boundary, keep their cursors and end skipped.

    A rollback of NAME in progress is cancelled too (``NAME.rollback`` cancels the rollback alone).

    :param args: the parsed command line (``name``, ``reason``, ``specs_dir``, ``db``).
    :returns: the exit status, 0.
    :raises SpecErrors: for an unknown or broken spec. :raises DatabaseUnavailable: when the database cannot be reached.
    """
    return _control(args, ControlStore.cancel)


def cmd_set(args) -> int:
    """Live knobs: take effect at each running chunk's next batch, and stay until unset or reset."""
    spec = find_spec(args.name, args.specs_dir)
    knobs = parse_assignments(args.knobs)
    engine = _engine(spec, args)
    try:
        store = ControlStore(engine)

        def change():
            """Apply ``--reset``, ``--unset`` and the new knobs in that order; retried whole through a restart.

            :returns: the control row after the change.
            """
            if args.reset:
                control = store.reset_knobs(spec.name)
            elif args.unset:
                control = store.unset_knobs(spec.name, args.unset)
            else:
                control = store.get(spec.name)
            if knobs:
                control = store.set_knobs(spec.name, knobs, note=f"set with `rowfill set`: {' '.join(args.knobs)}")
            return control

        control = reconnect.call(change, spec, "changing live knobs")
        if knobs or args.reset or args.unset:  # `rowfill set NAME` alone only shows the knobs
            _audit(engine, spec, spec.name, "set", {"knobs": {k: format_knob(k, v) for k, v in knobs.items()},
                                                   **({"reset": True} if args.reset else {}),
                                                   **({"unset": args.unset} if args.unset else {})}, None)
    finally:
        engine.dispose()
    shown = ", ".join(f"{k}={format_knob(k, v)}" for k, v in sorted((control.knobs or {}).items())) or "none (the spec's values apply)"
    print(f"{spec.name}: {control.state}; live knobs: {shown}")
    return 0


def cmd_plan(args) -> int:
    """Dry run: chunks, rows, a timed sample batch (rolled back) and its EXPLAIN; nothing is changed."""
    spec = find_spec(args.name, args.specs_dir)
    engine = _engine(spec, args)
    try:
        report = reconnect.call(lambda: dry_run(engine, spec, limit=max_map_length()), spec, "the dry run")  # rolled back: safe to redo
    finally:
        engine.dispose()
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.render())
    return 0


def cmd_rollback(args) -> int:
    """Restore the previous values recorded by an ``undo: true`` backfill, in throttled, checkpointed batches.

    :param args: the parsed command line (``name``, ``yes``, ``specs_dir``, ``db``).
    :returns: the exit status: 0 done, 1 cancelled, 2 without ``--yes`` (nothing changed).
    :raises NoUndo: when the spec has no ``undo: true``. :raises RollbackIncomplete: from ``finish_rollback``.
    :raises SpecErrors: for an unknown or broken spec.
    """
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
        chunks = plan_rollback(engine, spec, limit=max_map_length(), log=logging.getLogger("rowfill.plan"))
        forward = rollback_target(engine, spec)
        print(f"{spec.name}: rolling back {forward.table}, {len(chunks)} chunks of the undo log")
        for chunk in chunks:  # the one chunk path: pause, cancel (of NAME.rollback), windows, gates, metrics
            outcome = run_chunk_here(engine, rb, chunk.chunk_no, label=chunk.label, logger=logging.getLogger("rowfill.run"),
                                     observers=standard_observers(engine, rb), writer=RestoreWriter(rb, forward),
                                     check_table=False)
            if outcome.kind == "cancelled":
                print(f"{spec.name}: rollback cancelled ({outcome.reason}); restored batches stay restored, "
                      f"`rowfill resume {rb.name}` and run it again to continue")
                return 1
        print(finish_rollback(engine, spec).line())
    finally:
        engine.dispose()
    return 0


def cmd_reset(args) -> int:
    """``rowfill reset NAME --yes``: forget the plan and progress of a backfill and of its rollback.

    Rows already written stay written. Without ``--yes`` it only says what it would do.
    :param args: the parsed command line (``name``, ``yes``, ``specs_dir``, ``db``).
    :returns: the exit status: 0, or 2 without ``--yes``.
    """
    spec = find_spec(args.name, args.specs_dir)
    if not args.yes:
        print(f"This forgets the plan and progress of {spec.name!r} (rows already written stay written). Add --yes to do it.")
        return 2
    engine = _engine(spec, args)
    try:
        store = CheckpointStore(engine)
        # an abandoned rollback too
        removed = reconnect.call(lambda: store.reset(spec.name) + store.reset(f"{spec.name}.rollback"), spec, "resetting")
    finally:
        engine.dispose()
    print(f"{spec.name}: {'progress forgotten' if removed else 'nothing to reset'}")
    return 0


def _db_engine(args):
    """The target database of a ``rowfill db`` command: ``--db``/ROWFILL_DATABASE_URL, else ``--conn``
    (an Airflow connection), else the connection of spec ``NAME``; checked reachable."""
    if args.db or os.environ.get("ROWFILL_DATABASE_URL"):
        engine, connection, source = engine_for("", args.db), "--db", None
    elif args.conn:
        engine, connection, source = engine_for(args.conn), args.conn, None
    elif args.spec:
        spec = find_spec(args.spec, args.specs_dir)
        engine, connection, source = spec_engine(spec), spec.connection, spec.source
    else:
        raise RowfillError("which database? Give --db URL (or ROWFILL_DATABASE_URL), --conn AIRFLOW_CONN_ID, or the "
                           "name of a spec whose connection to use")
    check_reachable(engine, connection, source)
    return engine


@contextmanager
def _db_connection(args) -> Iterator[Connection]:
    """A connection to the target database of a ``rowfill db`` command (``_db_engine``), disposed after."""
    engine = _db_engine(args)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def cmd_db_migrate(args) -> int:
    """``rowfill db migrate``: apply rowfill's schema migrations (``--sql``: print their DDL instead).

    Each attempt waits at most ``--lock-timeout`` seconds for a lock held by running work, then rolls
    back and tries again (``rowfill.store.schema.migrate``), so live batches are never held up long.
    :param args: the parsed command line (``spec``, ``conn``, ``sql``, ``lock_timeout``, ``attempts``, ``db``).
    :returns: the exit status, 0. :raises MigrationFailed: locks held through every attempt, or privileges missing.
    """
    if args.sql:
        since = None
        if args.db or args.conn or args.spec or os.environ.get("ROWFILL_DATABASE_URL"):  # from where that database is
            with _db_connection(args) as conn:
                since = schema.current(conn)
        print(schema.migration_sql(since=since, lock_timeout=args.lock_timeout), end="")
        return 0
    engine = _db_engine(args)
    try:
        before, after = schema.migrate(engine, lock_timeout=args.lock_timeout, attempts=args.attempts)
    finally:
        engine.dispose()
    print(f"rowfill schema: at {after}, nothing to do" if before == after
          else f"rowfill schema: migrated from {before or 'nothing'} to {after}")
    return 0


def cmd_db_check(args) -> int:
    """``rowfill db check``: the schema's revision against the one this rowfill requires.

    :returns: the exit status: 0 when they match, 1 when the schema is missing, behind or newer.
    """
    with _db_connection(args) as conn:
        found = schema.version(conn)
    print(found.line())
    return 0 if found.ready else 1


def cmd_db_grants(args) -> int:
    """``rowfill db grants ROLE [--table SCHEMA.TABLE ...]``: the GRANTs the runtime role needs (printed, not run).

    :returns: the exit status, 0. :raises RowfillError: a ``--table`` that is not a table name.
    """
    try:
        tables = [TableName.parse(t) for t in args.table]
    except BadIdentifier as exc:
        raise RowfillError(f"--table: {exc}") from None
    database = args.database
    if database is None and (args.db or os.environ.get("ROWFILL_DATABASE_URL")):
        database = make_url(args.db or os.environ["ROWFILL_DATABASE_URL"]).database
    print("\n".join(grant_statements(args.role, database or "DATABASE", tables)))
    return 0


def _schema_ready_for_run(engine, spec) -> None:
    """`rowfill run` is the one-machine path: a schema never migrated (or behind) is migrated first,
    as `rowfill db migrate` would (Airflow tasks never do: they report SchemaNotReady)."""
    with engine.connect() as conn:
        found = schema.version(conn)
    if found.ready or found.newer:
        return  # a newer schema: the plan's check says what to do
    print(f"{spec.name}: {found.line()}; migrating first (as `rowfill db migrate` does)", file=sys.stderr)
    schema.migrate(engine)


def cmd_pools(args) -> int:
    """``rowfill pools [--write [FILE]]``: the Airflow pools the specs need, as ``airflow pools import`` reads them.

    :param args: the parsed command line (``write``: True for ``<specs folder>/pools.json``, or a path; ``specs_dir``).
    :returns: the exit status: 0, or 1 when a spec did not load (its pool is then missing).
    """
    specs, errors = load_specs(args.specs_dir)
    content = json.dumps(pools_for(specs), indent=2) + "\n"
    if args.write:
        target = pools_file(args.specs_dir) if args.write is True else args.write
        with open(target, "w", encoding="utf-8") as out:
            out.write(content)
        print(f"wrote {target}; load it with: airflow pools import {target}")
    else:
        print(content, end="")
    return 1 if errors else 0


def cmd_init(args) -> int:
    """``rowfill init DAGS_FOLDER [--force]``: the one-line DAG files and the ``rowfill/`` specs folder
    (``rowfill.ops.dagfolder``); raises InitRefused (one line, exit 1) rather than overwrite a changed file.

    :param args: the parsed command line (``dags_folder``, ``force``).
    :returns: 0.
    """
    for written in init_dag_folder(args.dags_folder, force=args.force):
        print(f"{written.action:11} {written.path}")
    print("next: put your *.yaml specs in the rowfill/ folder, create their Airflow connections and pools "
          "(rowfill pools --write; airflow pools import), see README \"Installing into your Airflow\"")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``rowfill`` command line: global options and one subcommand per ``cmd_*`` function (``args.func``)."""
    p = argparse.ArgumentParser(prog="rowfill", description="Batched, resumable, exactly-once PostgreSQL backfills.")
    p.add_argument("--specs-dir", help="folder of *.yaml specs (default: $ROWFILL_SPECS_DIR, Airflow's [rowfill] "
                                       "specs_folder, else rowfill/ in [core] dags_folder)")
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
    for name, func, text_ in (("pause", cmd_pause, "pause a backfill: chunks stop at a batch boundary and wait"),
                              ("resume", cmd_resume, "resume a paused (or cancelled) backfill"),
                              ("cancel", cmd_cancel, "cancel a backfill's run: chunks stop, keep their cursors, end skipped")):
        c = sub.add_parser(name, help=text_)
        c.add_argument("name")
        c.add_argument("--reason", help="recorded with the change and shown in the logs")
        c.set_defaults(func=func)
    k = sub.add_parser("set", help="change live knobs: batch_rows=2000 pause=50ms replica_lag.wait=5s ...")
    k.add_argument("name")
    k.add_argument("knobs", nargs="*", metavar="KNOB=VALUE")
    k.add_argument("--unset", action="append", metavar="KNOB", help="drop a knob: back to the spec's value")
    k.add_argument("--reset", action="store_true", help="drop every knob")
    k.set_defaults(func=cmd_set)
    q = sub.add_parser("pools", help="print (or --write) the pools file for the specs (default <specs folder>/pools.json)")
    q.add_argument("--write", nargs="?", const=True, default=False, metavar="FILE")
    q.set_defaults(func=cmd_pools)
    db = sub.add_parser("db", help="rowfill's own schema: migrate, check, grants").add_subparsers(dest="db_command", required=True)
    for name, func, text_ in (("migrate", cmd_db_migrate, "apply rowfill's schema migrations (--sql: print the DDL)"),
                              ("check", cmd_db_check, "the schema's version vs. the one required; exit 1 when behind")):
        m = db.add_parser(name, help=text_)
        m.add_argument("spec", nargs="?", metavar="NAME", help="use this spec's connection (else --db or --conn)")
        m.add_argument("--conn", help="an Airflow connection id to use")
        m.add_argument("--db", default=argparse.SUPPRESS, help="target database URL (as the global --db)")
        m.set_defaults(func=func)
        if name == "migrate":
            m.add_argument("--sql", action="store_true", help="print the DDL for a DBA instead of applying it")
            m.add_argument("--lock-timeout", type=float, default=schema.LOCK_TIMEOUT,
                           help=f"seconds an attempt may wait for a lock (default {schema.LOCK_TIMEOUT:g})")
            m.add_argument("--attempts", type=int, default=schema.ATTEMPTS, help=f"attempts (default {schema.ATTEMPTS})")
    g = db.add_parser("grants", help="print the GRANTs rowfill's runtime role needs")
    g.add_argument("role")
    g.add_argument("--table", action="append", default=[], metavar="SCHEMA.TABLE", help="a target table (repeatable)")
    g.add_argument("--db", default=argparse.SUPPRESS, help="target database URL (its name goes into the GRANTs)")
    g.add_argument("--database", help="the database name in GRANT ... ON DATABASE (default: from --db)")
    g.set_defaults(func=cmd_db_grants)
    i = sub.add_parser("init", help="write the one-line DAG files and the rowfill/ specs folder into a DAG folder")
    i.add_argument("dags_folder", metavar="DAGS_FOLDER")
    i.add_argument("--force", action="store_true", help="overwrite files that differ from what init writes")
    i.set_defaults(func=cmd_init)
    return p


_INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE of "permission denied" (PostgreSQL docs, Appendix A "Error Codes")


def _role(args) -> str:
    """The role the command connected as, for the grants advice (from --db or ROWFILL_DATABASE_URL; else ROLE)."""
    url = getattr(args, "db", None) or os.environ.get("ROWFILL_DATABASE_URL")
    return (make_url(url).username if url else None) or "ROLE"


def main(argv: list[str] | None = None) -> int:
    """Run one ``rowfill`` command; errors people can act on become one line on stderr, not a traceback.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :returns: the exit status: the command's, 1 for a RowfillError or a lost connection, 130 for Ctrl-C.
    :raises Exception: any other error, as is (a bug: the traceback is what to report).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    if not args.verbose:  # Airflow's start-up notes ("Reading the config from ...") are not rowfill's output
        logging.getLogger("airflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # `rowfill db migrate` says what it did in one line
    try:
        if args.func is not cmd_init and not args.specs_dir:
            args.specs_dir = str(specs_folder())
        return args.func(args)
    except RowfillError as exc:
        print(f"rowfill: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:  # a missing grant: say which to apply
            print(f"rowfill: {str(exc.orig).strip().splitlines()[0]}. Have the owner apply what `rowfill db grants "
                  f"{_role(args)} --table SCHEMA.TABLE` prints for the spec's table; nothing was written by this "
                  "statement (its transaction rolled back)", file=sys.stderr)
            return 1
        if not is_connection_error(exc):
            raise
        print(f"rowfill: lost the connection to the database: {describe(exc)}. Nothing committed is lost; run the "
              "command again once the server is back (a backfill resumes from its checkpoints).", file=sys.stderr)
        return 1
    except Exception as exc:  # a lost connection where no retry applies: advice, not a traceback
        if not is_connection_error(exc):
            raise
        print(f"rowfill: lost the connection to the database: {describe(exc)}. Nothing committed is lost; run the "
              "command again once the server is back (a backfill resumes from its checkpoints).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
