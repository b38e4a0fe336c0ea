"""Dry run: what a backfill would do, without doing it.

``rowfill plan NAME`` and the DAG's ``dry_run`` trigger parameter show the chunks a run would
get, how many rows it would walk and change, an estimated duration from one real batch that is
timed and rolled back, and the EXPLAIN of that batch's statements.

Everything happens in one transaction that is rolled back at the end: the checkpoint store is
only read (never created, registered or planned), the sample batch's write and any undo log it
would need vanish with the rollback, and a sink is never called (its batch is read and timed,
not sent). The sample batch does take the same row locks a real batch takes, for the second or
so it runs, with the spec's ``lock_timeout``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from rowfill.engine import chunk_sizing
from rowfill.engine.modes import writer_for
from rowfill.engine.plan import DEFAULT_MAX_MAP_LENGTH, merge_to_limit, walk_boundaries
from rowfill.engine.resolve import pinned, same_meaning
from rowfill.engine.schema_check import check_target
from rowfill.engine.sinks import SinkWriter
from rowfill.engine.sqltarget import check_sql_target
from rowfill.engine.sweep import chunks_to_resweep
from rowfill.engine.undo import UndoLog
from rowfill.spec.durations import format_duration
from rowfill.spec.spec import Spec
from rowfill.sql import statements
from rowfill.sql.keys import chunk_label, format_value, load_key
from rowfill.sql.ranges import KeyRange
from rowfill.sql.session import set_local
from rowfill.sql.sqltext import spec_driver
from rowfill.store import backfills, catalog
from rowfill.store.checkpoint import CheckpointStore


@dataclass
class DryRun:
    backfill: str
    mode: str
    table: str
    chunks: list[dict] = field(default_factory=list)  # label, status, est_rows (rows left to walk)
    chunk_rows: int | None = None  # rows per new chunk (rowfill.engine.chunk_sizing); None: no new chunks
    chunk_size_why: str = ""
    rows_to_walk: int = 0
    rows_to_change: int | None = None  # rows matching `where` in the ranges left (None: not counted in time)
    rows_to_change_estimated: bool = False
    sample_rows: int = 0
    sample_written: int = 0
    sample_seconds: float | None = None
    estimated_seconds: float | None = None
    explain: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data (``rowfill plan --json``)."""
        return asdict(self)

    def render(self) -> str:
        """The report for people: chunks to run (the first and last few of many), rows to change, notes, EXPLAINs."""
        lines = [f"rowfill plan {self.backfill} (dry run: nothing was changed, the checkpoint store was only read)",
                 f"  table {self.table}, mode {self.mode}",
                 f"  {len(self.chunks)} chunk(s) to run:"]
        shown: Sequence[dict | None] = self.chunks if len(self.chunks) <= 12 else [*self.chunks[:6], None, *self.chunks[-5:]]
        for c in shown:
            lines.append("    ..." if c is None else f"    {c['label']:<48} {c['status']:<8} ~{c['est_rows']:,} rows to walk")
        change = ("unknown (counting took too long)" if self.rows_to_change is None
                  else f"{'~' if self.rows_to_change_estimated else ''}{self.rows_to_change:,}")
        lines.append(f"  rows to walk: {self.rows_to_walk:,}; rows to change: {change}")
        if self.chunk_rows:
            lines.append(f"  new chunks of {self.chunk_rows:,} rows: {self.chunk_size_why}")
        if self.sample_seconds is not None:
            lines.append(f"  sample batch: {self.sample_rows:,} rows walked, {self.sample_written:,} would change, "
                         f"{self.sample_seconds * 1000:,.0f} ms (rolled back)")
        if self.estimated_seconds is not None:
            lines.append(f"  estimated duration: {format_duration(self.estimated_seconds)} "
                         "(sample batch time and pause per batch, chunks in parallel up to max_parallel_chunks)")
        for what, plan in self.explain:
            lines.append(f"  EXPLAIN of one batch, {what}:")
            lines.extend("    " + line for line in plan.splitlines())
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def _stored_chunks(conn, spec: Spec):
    if not catalog.exists(conn, catalog.own("chunks")):
        return [], None
    fingerprint = backfills.fingerprint(conn, spec.name)
    return CheckpointStore(conn.engine).chunks(spec.name, conn), fingerprint


def dry_run(engine: Engine, spec: Spec, *, limit: int | None = None, count_timeout: float = 30.0) -> DryRun:
    """What a run of ``spec`` would do, inside one transaction that is always rolled back: the plan
    (stored chunks still to do plus new ones, at most ``limit``, default 1024), the rows ``where`` still
    matches (counted for at most ``count_timeout`` seconds, else the planner's estimate), and one sample
    batch timed and EXPLAINed. Raises SpecError / RowfillError as planning's checks do.
    """
    limit = DEFAULT_MAX_MAP_LENGTH if limit is None else limit
    report = DryRun(spec.name, spec.mode, str(spec.table))
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            _plan(conn, spec, limit, report, count_timeout)
        finally:
            tx.rollback()
    return report


def _plan(conn, spec: Spec, limit: int, report: DryRun, count_timeout: float) -> None:
    spec = pinned(conn, spec)  # the table the plan was made on (OID checked), or resolved as planning would
    report.table = str(spec.table)
    target = check_target(conn, spec)
    check_sql_target(conn, spec, target.key)
    key = load_key(conn, spec)
    stored, fingerprint = _stored_chunks(conn, spec)
    if fingerprint and not same_meaning(fingerprint, spec):
        report.notes.append(f"the stored plan was made for a different table/key/where/set/sql: a run refuses to "
                            f"start until `rowfill reset {spec.name}`; shown as if it had been reset")
        stored = []
    if stored and stored[0].lo is not None:  # planning opens the lowest chunk of an older plan
        stored[0] = dataclasses.replace(stored[0], lo=None)
    again = set(chunks_to_resweep(conn.engine, spec, stored))
    if again:
        report.notes.append(f"{len(again)} done chunk(s) hold rows that match `where` again: a run walks them again")
    open_chunks = [c for c in stored if not c.status.finished or c.chunk_no in again]
    after = stored[-1].hi if stored else None
    room = max(limit - len(open_chunks), 0)
    sizing = chunk_sizing.size_for_plan(conn, spec, after, max(room, 1))  # as planning sizes them
    new = walk_boundaries(conn, spec, after, sizing.rows, key)
    if (smaller := chunk_sizing.resplit(spec, sizing, sum(b.rows for b in new), len(new), room)) is not None:
        sizing, new = smaller, walk_boundaries(conn, spec, after, smaller.rows, key)
    new = merge_to_limit(chunk_sizing.without_stub(spec, new, sizing.rows), room)
    if new:
        report.chunk_rows, report.chunk_size_why = sizing.rows, sizing.why
    total = len(stored) + len(new)
    todo = []  # (label, status, position, hi, rows left)
    for c in open_chunks:
        label = chunk_label(spec.key, c.chunk_no, total, c.lo, c.hi, c.first_key)
        if c.chunk_no in again:
            todo.append((label, "again", c.lo, c.hi, c.est_rows))
        else:
            todo.append((label, c.status, c.position, c.hi, max(c.est_rows - c.rows_seen, 0)))
    for i, b in enumerate(new, len(stored) + 1):
        todo.append((chunk_label(spec.key, i, total, b.lo, b.hi, b.first), "new", b.lo, b.hi, b.rows))
    todo = todo[:limit]
    report.chunks = [{"label": label, "status": status, "est_rows": rows} for label, status, _, _, rows in todo]
    report.rows_to_walk = sum(t[4] for t in todo)
    if stored and not open_chunks and not new:
        report.notes.append("every chunk is done: a run now changes nothing")
    _count_changes(conn, spec, key, todo, report, count_timeout)
    if todo:
        _sample(conn, spec, todo[0][2], todo[0][3], report)
        assert report.sample_seconds is not None  # _sample sets it or raises
        per_batch = report.sample_seconds / max(report.sample_rows, 1) * min(spec.batch_rows, max(report.rows_to_walk, 1))
        batches = math.ceil(report.rows_to_walk / spec.batch_rows)
        parallel = max(1, min(spec.max_parallel_chunks, len(todo)))
        report.estimated_seconds = batches * (per_batch + spec.pause) / parallel


def _count_changes(conn, spec: Spec, key, todo, report: DryRun, timeout: float) -> None:
    """Rows matching ``where`` in the ranges left: exact if it takes under ``timeout``, else the planner's estimate."""
    if not spec.where:
        report.rows_to_change = report.rows_to_walk
        report.rows_to_change_estimated = True
        return
    if not todo:
        report.rows_to_change = 0
        return
    ranges, params = [], {}
    for i, (_, _, lo, hi, _) in enumerate(todo):
        rng, p = KeyRange(lo, hi).sql(key, lo_name=f"lo{i}", hi_name=f"hi{i}")
        ranges.append(rng)
        params.update(p)
    sql = spec_driver(spec, statements.count_matching_in_ranges(spec.table.sql, ranges))
    try:
        with conn.begin_nested():
            set_local(conn, statement_timeout=timeout)
            report.rows_to_change = conn.exec_driver_sql(sql, params).scalar()
            set_local(conn, statement_timeout=0)
    except DBAPIError:
        plan = conn.exec_driver_sql(statements.explain(sql, "FORMAT JSON"), params).scalar()
        report.rows_to_change = int(plan[0]["Plan"].get("Plan Rows", 0))
        report.rows_to_change_estimated = True
        report.notes.append(f"counting the rows to change took longer than {format_duration(timeout)}; the number is the planner's estimate")


def _sample(conn, spec: Spec, position, hi, report: DryRun) -> None:
    """Time one real batch at the start of the first chunk and roll it back; keep the EXPLAIN of its statements."""
    writer = writer_for(spec)
    savepoint = conn.begin_nested()
    try:
        set_local(conn, lock_timeout=spec.lock_timeout, statement_timeout=spec.statement_timeout)
        if spec.undo:
            _undo_log(conn, spec)  # created inside the savepoint if missing, so it vanishes too
        t0 = time.perf_counter()
        end, seen = writer.batch_end(conn, position, hi, spec.batch_rows)
        if end is None:
            report.sample_seconds = time.perf_counter() - t0
            return
        if isinstance(writer, SinkWriter):  # spec.mode == "sink" (writer_for)
            rows = writer.reader.read(conn, position, end, writer.batch_first)  # never call the sink in a dry run
            written = len(rows)
            report.notes.append(f"the sink {spec.sink} was not called; the sample time covers reading its batch only")
        else:
            written = writer.apply(conn, position, end)
        report.sample_seconds = time.perf_counter() - t0
        report.sample_rows, report.sample_written = seen, written
        savepoint.rollback()
        savepoint = conn.begin_nested()
        if spec.undo:
            _undo_log(conn, spec)
        report.explain = writer.explain(conn, position, end)
        report.notes.append(f"sample batch: {spec.key} {format_value(writer.batch_first)}..{format_value(end)}")
    finally:
        savepoint.rollback()


def _undo_log(conn, spec: Spec) -> None:
    UndoLog.load(conn, spec).ensure(conn, spec)
