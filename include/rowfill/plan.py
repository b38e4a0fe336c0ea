"""Planning: split the key space into chunks by walking the key's index, and resume old plans.

Boundaries come from the rows that exist (keyset walk: "the key of the Nth row after X"), not
from min/max arithmetic, so sparse keys and gaps give neither empty chunks nor huge ones.
A plan is stored in the checkpoint table, so a later run only plans keys beyond the last
planned chunk and hands back the chunks that are not done yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from rowfill.checkpoint import CheckpointStore, ChunkRow
from rowfill.estimate import EXACT_PLAN_MAX_ROWS, estimated_rows, sampled_boundaries
from rowfill.keys import Key, chunk_label, decode, load_key
from rowfill.schema_check import check_target
from rowfill.spec import Spec

DEFAULT_MAX_MAP_LENGTH = 1024


@dataclass(frozen=True)
class PlannedChunk:
    """What the chunk task receives through XCom: an identity and a label, not the progress itself."""

    backfill: str
    chunk_no: int
    of: int
    lo: Any  # key values as JSON values (see rowfill.keys); lo None = from the start
    hi: Any
    est_rows: int
    key: str
    first: Any = None  # the chunk's first key when planned

    @property
    def label(self) -> str:
        return chunk_label(self.key, self.chunk_no, self.of, self.lo, self.hi, self.first)

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


def walk_boundaries(conn: Connection, spec: Spec, after: Any, chunk_rows: int, key: Key | None = None,
                    table_sql: str | None = None) -> list[tuple]:
    """(lo, hi, rows, first) for consecutive chunks of ``chunk_rows`` keys after ``after`` (None = from the start).

    Each step is one index-only range scan of ``chunk_rows`` entries, so planning reads the key
    index once in total and never the table. A single integer key starts at min-1 (plans and
    labels stay plain numbers); other keys start with an open lower bound (None).
    """
    key = key or load_key(conn, spec, table_sql)
    table = table_sql or spec.table.sql
    if key.integer:
        ref = key.row()
        if after is None:
            first = conn.execute(text(f"SELECT min({ref}) FROM {table}")).scalar()
            if first is None:
                return []
            after = first - 1
        step = text(
            f"SELECT min(k), max(k), count(*) FROM (SELECT {ref} AS k FROM {table} WHERE {ref} > CAST(:after AS {key.types[0]}) "
            f"ORDER BY {ref} LIMIT :n) s"
        )
        bounds = []
        while True:
            first, hi, rows = conn.execute(step, {"after": after, "n": chunk_rows}).one()
            if not rows:
                return bounds
            bounds.append((after, hi, rows, first))
            after = hi
    return _walk_general(conn, key, table, after, chunk_rows)


def _walk_general(conn: Connection, key: Key, table: str, after: Any, chunk_rows: int) -> list[tuple]:
    """The same walk for any btree-orderable key: the n-th key by OFFSET (index-only), then the tail."""
    order, order_desc, js = key.order_by(), key.order_by(desc=True), key.json_sql()
    bounds = []
    while True:
        rng, params = key.range_sql(after, None, lo_name="after")
        first = conn.execute(text(f"SELECT {js} FROM {table} WHERE {rng} ORDER BY {order} LIMIT 1"), params).scalar()
        if first is None:
            return bounds
        nth = conn.execute(text(f"SELECT {js} FROM {table} WHERE {rng} ORDER BY {order} OFFSET :skip LIMIT 1"),
                           {**params, "skip": chunk_rows - 1}).scalar()
        if nth is not None:
            hi, rows = decode(nth), chunk_rows
        else:
            last, rows = conn.execute(
                text(f"SELECT (SELECT {js} FROM {table} WHERE {rng} ORDER BY {order_desc} LIMIT 1), "
                     f"(SELECT count(*) FROM {table} WHERE {rng})"), params).one()
            hi = decode(last)
        bounds.append((after, hi, rows, decode(first)))
        if nth is None:
            return bounds
        after = hi


def find_boundaries(conn: Connection, spec: Spec, after: Any, room: int) -> list[tuple]:
    """Exact index walk for ordinary tables; estimated boundaries for huge ones (see ``estimate``).

    Estimation cuts a single integer key (the huge-table case in practice); other keys are walked.
    """
    key = load_key(conn, spec)
    mode = spec.planning if key.integer else "exact"
    if mode == "auto":
        rows = estimated_rows(conn, spec)
        mode = "estimated" if rows is not None and rows > EXACT_PLAN_MAX_ROWS else "exact"
    if mode == "estimated":
        return sampled_boundaries(conn, spec, after, spec.chunk_rows, room)
    return walk_boundaries(conn, spec, after, spec.chunk_rows, key=key)


def merge_to_limit(bounds: list[tuple], limit: int) -> list[tuple]:
    """Grow chunks (merge neighbours) until there are at most ``limit``; Airflow refuses longer maps."""
    if limit <= 0:
        return []
    if len(bounds) <= limit:
        return bounds
    group = math.ceil(len(bounds) / limit)
    merged = []
    for i in range(0, len(bounds), group):
        part = bounds[i : i + group]
        merged.append((part[0][0], part[-1][1], sum(b[2] for b in part), *part[0][3:]))
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
        from rowfill.undo import prepare_forward_plan  # undo log; no backfill while its rollback runs

        prepare_forward_plan(conn, store, spec)
        existing = store.chunks(spec.name, conn)
        open_chunks = [c for c in existing if c.status != "done"]
        after = existing[-1].hi if existing else None  # chunks are numbered in key order
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
    todo = [PlannedChunk(spec.name, c.chunk_no, total, c.lo, c.hi, c.est_rows, spec.key, c.first_key)
            for c in chunks if c.status != "done"]
    if len(todo) > limit and log:
        log.warning("plan: %d unfinished chunks exceed max_map_length=%d; running the first %d, the rest next run",
                    len(todo), limit, limit)
    return todo[:limit]


def describe(chunks: list[ChunkRow]) -> str:
    done = sum(c.status == "done" for c in chunks)
    return f"{len(chunks)} chunks, {done} done"
