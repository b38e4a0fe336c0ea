"""Planning: split the key space into chunks by walking the key's index, and resume old plans.

Boundaries come from the rows that exist (keyset walk: "the key of the Nth row after X"), not
from min/max arithmetic, so sparse keys and gaps give neither empty chunks nor huge ones.
A plan is stored in the checkpoint table, so a later run only plans keys beyond the last
planned chunk and hands back the chunks that are not done yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from rowfill.checkpoint import CheckpointStore, ChunkRow
from rowfill.estimate import EXACT_PLAN_MAX_ROWS, estimated_rows, sampled_boundaries
from rowfill.schema_check import check_target
from rowfill.spec import Spec
from rowfill.sqlnames import quote

DEFAULT_MAX_MAP_LENGTH = 1024


@dataclass(frozen=True)
class PlannedChunk:
    """What the chunk task receives through XCom: an identity and a label, not the progress itself."""

    backfill: str
    chunk_no: int
    of: int
    lo: int
    hi: int
    est_rows: int
    key: str

    @property
    def label(self) -> str:
        return f"chunk {self.chunk_no}/{self.of} ({self.key} {self.lo + 1}..{self.hi})"

    def to_xcom(self) -> dict:
        return {"backfill": self.backfill, "chunk_no": self.chunk_no, "of": self.of, "lo": self.lo,
                "hi": self.hi, "est_rows": self.est_rows, "key": self.key, "label": self.label}


def max_map_length() -> int:
    """Airflow's cap on mapped task instances; the plan must never exceed it."""
    try:
        from airflow.configuration import conf

        return conf.getint("core", "max_map_length", fallback=DEFAULT_MAX_MAP_LENGTH)
    except Exception:  # outside Airflow (CLI, tests): Airflow's default
        return DEFAULT_MAX_MAP_LENGTH


def walk_boundaries(conn: Connection, spec: Spec, after: int | None, chunk_rows: int) -> list[tuple[int, int, int]]:
    """(lo, hi, rows) for consecutive chunks of ``chunk_rows`` keys after ``after`` (None = from the start).

    Each step is one index-only range scan of ``chunk_rows`` entries, so planning reads the key
    index once in total and never the table.
    """
    key, table = quote(spec.key), spec.table.sql
    if after is None:
        first = conn.execute(text(f"SELECT min({key}) FROM {table}")).scalar()
        if first is None:
            return []
        after = first - 1
    step = text(
        f"SELECT max(k), count(*) FROM (SELECT {key} AS k FROM {table} WHERE {key} > :after "
        f"ORDER BY {key} LIMIT :n) s"
    )
    bounds = []
    while True:
        hi, rows = conn.execute(step, {"after": after, "n": chunk_rows}).one()
        if not rows:
            return bounds
        bounds.append((after, hi, rows))
        after = hi


def find_boundaries(conn: Connection, spec: Spec, after: int | None, room: int) -> list[tuple[int, int, int]]:
    """Exact index walk for ordinary tables; estimated boundaries for huge ones (see ``estimate``)."""
    mode = spec.planning
    if mode == "auto":
        rows = estimated_rows(conn, spec)
        mode = "estimated" if rows is not None and rows > EXACT_PLAN_MAX_ROWS else "exact"
    if mode == "estimated":
        return sampled_boundaries(conn, spec, after, spec.chunk_rows, room)
    return walk_boundaries(conn, spec, after, spec.chunk_rows)


def merge_to_limit(bounds: list[tuple[int, int, int]], limit: int) -> list[tuple[int, int, int]]:
    """Grow chunks (merge neighbours) until there are at most ``limit``; Airflow refuses longer maps."""
    if limit <= 0:
        return []
    if len(bounds) <= limit:
        return bounds
    group = math.ceil(len(bounds) / limit)
    merged = []
    for i in range(0, len(bounds), group):
        part = bounds[i : i + group]
        merged.append((part[0][0], part[-1][1], sum(r for _, _, r in part)))
    return merged


def plan_backfill(engine: Engine, spec: Spec, *, limit: int | None = None, log=None) -> list[PlannedChunk]:
    """Chunks still to do: the unfinished ones of the stored plan, plus new chunks for keys beyond it.

    Done chunks are never planned again; a partly done chunk keeps its cursor (the runner reads it).
    """
    limit = max_map_length() if limit is None else limit
    store = CheckpointStore(engine)
    store.ensure_schema()
    with engine.begin() as conn:
        check_target(conn, spec)
        store.lock_planning(conn, spec.name)
        store.register(conn, spec)
        existing = store.chunks(spec.name, conn)
        open_chunks = [c for c in existing if c.status != "done"]
        after = max((c.hi for c in existing), default=None)
        room = limit - len(open_chunks)
        new = find_boundaries(conn, spec, after, max(room, 0))
        if len(new) > room and log and room > 0:
            log.info("plan: %d new chunks of %d rows exceed the room of %d under max_map_length=%d; growing chunks",
                     len(new), spec.chunk_rows, room, limit)
        if room <= 0 and new and log:
            log.warning("plan: %d unfinished chunks already fill max_map_length=%d; keys after %s are planned next run",
                        len(open_chunks), limit, after)
        new = merge_to_limit(new, room)
        store.add_chunks(conn, spec.name, len(existing) + 1, new)
        chunks = store.chunks(spec.name, conn)
    total = len(chunks)
    todo = [PlannedChunk(spec.name, c.chunk_no, total, c.lo, c.hi, c.est_rows, spec.key) for c in chunks if c.status != "done"]
    if len(todo) > limit and log:
        log.warning("plan: %d unfinished chunks exceed max_map_length=%d; running the first %d, the rest next run",
                    len(todo), limit, limit)
    return todo[:limit]


def describe(chunks: list[ChunkRow]) -> str:
    done = sum(c.status == "done" for c in chunks)
    return f"{len(chunks)} chunks, {done} done"
