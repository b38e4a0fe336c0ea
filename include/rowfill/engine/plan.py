"""Planning: split the key space into chunks by walking the key's index, and resume old plans.

Boundaries come from the rows that exist (keyset walk: "the key of the Nth row after X"), not
from min/max arithmetic, so sparse keys and gaps give neither empty chunks nor huge ones.
A plan is stored in the checkpoint table, so a later run plans keys beyond the last planned
chunk, hands back the chunks that are not done yet, and (``set``/``transform`` with ``where``)
reopens done chunks that hold rows matching ``where`` again. The lowest chunk starts "from the
start" of the key space, so the chunks always cover every key, below the first and above the last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine

from rowfill.engine import chunk_sizing, reconnect
from rowfill.engine.estimate import EXACT_PLAN_MAX_ROWS, estimated_rows, sampled_boundaries
from rowfill.engine.resolve import pin
from rowfill.engine.schema_check import check_target
from rowfill.engine.sqltarget import check_sql_target
from rowfill.engine.sweep import chunks_to_resweep
from rowfill.engine.undo import ROLLBACK_SUFFIX, prepare_forward_plan  # no backfill while its rollback runs
from rowfill.errors import SpecError
from rowfill.spec.spec import Spec
from rowfill.sql.keys import Boundary, Key, chunk_label, load_key
from rowfill.sql.privileges import table_privileges
from rowfill.sql.ranges import ChunkBounds, KeyRange, as_bounds
from rowfill.store import schema
from rowfill.store.checkpoint import CheckpointStore, ChunkRow

DEFAULT_MAX_MAP_LENGTH = 1024


@dataclass(frozen=True)
class PlannedChunk:
    """What the chunk task receives through XCom: an identity and a label, not the progress itself."""

    backfill: str
    chunk_no: int
    of: int
    lo: Any  # key values as JSON values (see rowfill.sql.keys); lo None = from the start
    hi: Any
    est_rows: int
    key: str
    first: Any = None  # the chunk's first key when planned

    @property
    def range(self) -> KeyRange:
        """The keys the chunk covers."""
        return KeyRange(self.lo, self.hi)

    @property
    def label(self) -> str:
        """How logs and task names show the chunk, e.g. ``chunk 3/10 (id 2001..3000)``."""
        return chunk_label(self.key, self.chunk_no, self.of, self.lo, self.hi, self.first)

    def to_xcom(self) -> dict:
        """The chunk as JSON-ready data for Airflow's XCom (its label included)."""
        return {"backfill": self.backfill, "chunk_no": self.chunk_no, "of": self.of, "lo": self.lo,
                "hi": self.hi, "est_rows": self.est_rows, "key": self.key, "label": self.label}


def walk_boundaries(conn: Connection, spec: Spec, after: Any, chunk_rows: int, key: Key | None = None,
                    table_sql: str | None = None) -> list[ChunkBounds]:
    """Bounds (lo, hi, rows, first) of consecutive chunks of ``chunk_rows`` keys after ``after`` (None = from the start).

    Each step is one index-only range scan of ``chunk_rows`` entries, so planning reads the key
    index once in total and never the table. The first chunk of a new plan starts open (lo None)
    for every key type: no "minimum minus one", which overflows at the type's minimum and would
    leave keys inserted below today's minimum outside every chunk.
    """
    key = key or load_key(conn, spec, table_sql)
    boundary = Boundary(key, table_sql or spec.table.sql)  # the batches' own walk (rowfill.sql.keys.Boundary)
    bounds: list[ChunkBounds] = []
    while True:
        first, hi, rows = boundary.next(conn, after, None, chunk_rows)
        if not rows:
            return bounds
        bounds.append(ChunkBounds(after, hi, rows, first))
        if rows < chunk_rows:
            return bounds
        after = hi


def find_boundaries(conn: Connection, spec: Spec, after: Any, room: int, chunk_rows: int) -> list[ChunkBounds]:
    """Exact index walk for ordinary tables; estimated boundaries for huge ones (see ``estimate``).

    :param chunk_rows: keys per chunk (``rowfill.engine.chunk_sizing``).
    Estimation cuts a single integer key (the huge-table case in practice); other keys are walked.
    """
    key = load_key(conn, spec)
    mode = spec.planning if key.integer else "exact"
    if mode == "auto":
        rows = estimated_rows(conn, spec)
        mode = "estimated" if rows is not None and rows > EXACT_PLAN_MAX_ROWS else "exact"
    if mode == "estimated":
        return sampled_boundaries(conn, spec, after, chunk_rows, room)
    return walk_boundaries(conn, spec, after, chunk_rows, key=key)


def sized_boundaries(conn: Connection, spec: Spec, after: Any, room: int, log=None) -> list[ChunkBounds]:
    """The new chunks after ``after``, each about ``chunk_time`` of work (or ``chunk_rows``): see
    ``rowfill.engine.chunk_sizing``. Logs the chosen size and why; walks again when the table's row
    estimate was too low to split for ``max_parallel_chunks``. :returns: at most what ``find_boundaries`` gives.
    """
    if room <= 0:
        return find_boundaries(conn, spec, after, 0, spec.chunk_rows or chunk_sizing.FALLBACK_CHUNK_ROWS)
    sizing = chunk_sizing.size_for_plan(conn, spec, after, room)
    new = find_boundaries(conn, spec, after, room, sizing.rows)
    again = chunk_sizing.resplit(spec, sizing, sum(b.rows for b in new), len(new), room)
    if again is not None:
        sizing, new = again, find_boundaries(conn, spec, after, room, again.rows)
    new = chunk_sizing.without_stub(spec, new, sizing.rows)
    if log and new:
        log.info("plan: chunks of %s rows: %s", f"{sizing.rows:,}", sizing.why)
    return new


def merge_to_limit(bounds: Sequence[ChunkBounds | tuple], limit: int) -> list[ChunkBounds]:
    """Grow chunks (merge neighbours) until there are at most ``limit``; Airflow refuses longer maps.

    ``bounds``: consecutive chunks in key order, as ChunkBounds or ``(lo, hi, rows[, first])`` tuples.
    Returns ChunkBounds; none if ``limit`` <= 0.
    """
    if limit <= 0:
        return []
    chunks = [as_bounds(b) for b in bounds]
    if len(chunks) <= limit:
        return chunks
    group = math.ceil(len(chunks) / limit)
    merged = []
    for i in range(0, len(chunks), group):
        part = chunks[i : i + group]
        merged.append(part[0].merged(part[-1], sum(b.rows for b in part)))
    return merged


def check_grants(conn: Connection, spec: Spec) -> None:
    """The role may read the spec's table (and, for ``set`` and ``transform``, update it), or the plan is
    refused before anything is written (its transaction rolls back).

    :param conn: the planning transaction. :param spec: the spec, its table resolved (``resolve.pin``).
    :raises SpecError: field ``table``, naming the missing privilege and `rowfill db grants ROLE --table`.
    """
    if spec.name.endswith(ROLLBACK_SUFFIX):  # its restore's UPDATE is checked by PostgreSQL; the log is rowfill's
        return
    found = table_privileges(conn, spec.table.sql)
    if found is None:
        return  # no such table: check_target says so
    writes = bool(spec.set or spec.transform)  # sql mode may only read the walked table; a sink only reads
    missing = [what for what, ok in ((f"USAGE on schema {spec.table.schema}", found.usage), ("SELECT", found.select),
                                     ("UPDATE", found.update or not writes)) if not ok]
    if missing:
        raise SpecError(spec.source, "table", f"role {found.role!r} lacks {' and '.join(missing)} on {spec.table}, "
                        f"which this backfill needs. Have the table's owner apply what `rowfill db grants {found.role} "
                        f"--table {spec.table}` prints; nothing was written")


def plan_backfill(engine: Engine, spec: Spec, *, limit: int | None = None, log=None) -> list[PlannedChunk]:
    """``_plan_backfill``, run again from the start if the connection is lost (``rowfill.engine.reconnect``).

    Planning's transactions are all-or-nothing and each re-reads the stored plan, so a second go
    after a restart continues from whatever the first one committed.
    """
    return reconnect.call(lambda: _plan_backfill(engine, spec, limit=limit, log=log), spec, "planning", log)


def _plan_backfill(engine: Engine, spec: Spec, *, limit: int | None = None, log=None) -> list[PlannedChunk]:
    """Chunks still to do: the unfinished ones of the stored plan, done ones that hold rows matching
    ``where`` again (re-sweep), and new chunks for keys beyond the last planned one.

    Together the chunks cover the whole key space: the lowest starts "from the start" and new
    ones are added above the highest. A partly done chunk keeps its cursor (the runner reads it).
    The table is resolved and pinned first (``rowfill.engine.resolve``): a table that is not the relation
    the stored plan was made on is refused (SpecError on ``table``) before anything is written.
    Raises SchemaNotReady (``rowfill.store.schema``) when rowfill's schema is missing or behind, before
    anything is written; SpecError / PlanChanged / RowfillError as the checks do; returns at most ``limit`` chunks
    (Airflow's default max_map_length, 1024, unless given: the Airflow tasks and the ``rowfill`` command
    pass the configured one, ``rowfill.airflow.chunk_settings.max_map_length``).
    """
    limit = DEFAULT_MAX_MAP_LENGTH if limit is None else limit
    store = CheckpointStore(engine)
    with engine.begin() as conn:
        # the one read-only version check of a plan: rowfill runs no DDL (`rowfill db migrate` does)
        schema.check(conn, spec.source)
        store.lock_planning(conn, spec.name)
        resolved = pin(conn, spec)
        check_grants(conn, resolved)  # a clear GRANT to apply instead of "permission denied" mid-plan
        target = check_target(conn, resolved)
        check_sql_target(conn, resolved, target.key)
        prepare_forward_plan(conn, store, resolved)
        if store.open_lowest(conn, spec.name) and log:
            log.info("plan: the lowest chunk now starts from the start of the key space (it started at a key before)")
        stored = store.chunks(spec.name, conn)
    # Outside the planning transaction: many short statements, none holding a snapshot for long.
    resweep = chunks_to_resweep(engine, resolved, stored, log)
    with engine.begin() as conn:
        store.lock_planning(conn, spec.name)
        resolved = pin(conn, resolved)  # still the same relation (and registered, if reset meanwhile)
        store.reopen(conn, spec.name, resweep)
        existing = store.chunks(spec.name, conn)
        open_chunks = [c for c in existing if not c.status.finished]
        after = existing[-1].hi if existing else None  # chunks are numbered in key order
        room = limit - len(open_chunks)
        new = sized_boundaries(conn, resolved, after, max(room, 0), log)
        if len(new) > room and log and room > 0:
            log.info("plan: %d new chunks exceed the room of %d under max_map_length=%d; growing chunks",
                     len(new), room, limit)
        if room <= 0 and new and log:
            log.warning("plan: %d unfinished chunks already fill max_map_length=%d; keys after %s are planned next run",
                        len(open_chunks), limit, after)
        new = merge_to_limit(new, room)
        store.add_chunks(conn, spec.name, len(existing) + 1, new)
        chunks = store.chunks(spec.name, conn)
    total = len(chunks)
    todo = [PlannedChunk(spec.name, c.chunk_no, total, c.lo, c.hi, c.est_rows, spec.key, c.first_key)
            for c in chunks if not c.status.finished]
    if len(todo) > limit and log:
        log.warning("plan: %d unfinished chunks exceed max_map_length=%d; running the first %d, the rest next run",
                    len(todo), limit, limit)
    return todo[:limit]


def describe(chunks: list[ChunkRow]) -> str:
    """``"N chunks, M done"`` for logs."""
    done = sum(c.status.finished for c in chunks)
    return f"{len(chunks)} chunks, {done} done"
