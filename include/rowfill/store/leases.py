"""Statements over ``rowfill.leases``: the heartbeat of each running chunk's runner.

The rules (how often, when a lease has run out, what a takeover logs) are
``rowfill.engine.lease``'s; this module only reads and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.store import catalog
from rowfill.store.catalog import SCHEMA
from rowfill.store.states import ChunkState

_CLAIM = text(
    f"INSERT INTO {SCHEMA}.leases AS l (backfill, chunk_no, worker, heartbeat_at) "
    "VALUES (:n, :c, :w, clock_timestamp()) ON CONFLICT (backfill, chunk_no) "
    "DO UPDATE SET worker = excluded.worker, heartbeat_at = excluded.heartbeat_at"
)
# Only the holder renews: a runner that was taken over (frozen, then back) does not take it back.
_RENEW = text(
    f"UPDATE {SCHEMA}.leases SET heartbeat_at = clock_timestamp() WHERE backfill = :n AND chunk_no = :c AND worker = :w"
)
_HOLDER = text(
    f"SELECT c.status, coalesce(l.worker, c.worker), "
    "extract(epoch FROM clock_timestamp() - coalesce(l.heartbeat_at, c.updated_at)) "
    f"FROM {SCHEMA}.chunks c LEFT JOIN {SCHEMA}.leases l ON l.backfill = c.backfill AND l.chunk_no = c.chunk_no "
    "WHERE c.backfill = :n AND c.chunk_no = :c"
)
_STALE = text(
    f"SELECT c.chunk_no FROM {SCHEMA}.chunks c LEFT JOIN {SCHEMA}.leases l "
    "ON l.backfill = c.backfill AND l.chunk_no = c.chunk_no "
    "WHERE c.backfill = :n AND c.status = 'running' "
    "AND coalesce(l.heartbeat_at, c.updated_at) < clock_timestamp() - make_interval(secs => :lease)"
)


@dataclass(frozen=True)
class Holder:
    """Who holds a chunk: its status, the worker of its lease (else of its row), and seconds since it was last heard of."""

    status: ChunkState
    worker: str | None
    quiet: float


def claim(conn: Connection, name: str, chunk_no: int, worker: str) -> None:
    """Take (or take over) the chunk's lease for ``worker``, stamped now."""
    conn.execute(_CLAIM, {"n": name, "c": chunk_no, "w": worker})


def renew(conn: Connection, name: str, chunk_no: int, worker: str) -> None:
    """Stamp the lease now, if ``worker`` still holds it (a runner that was taken over does not take it back)."""
    conn.execute(_RENEW, {"n": name, "c": chunk_no, "w": worker})


def holder(conn: Connection, name: str, chunk_no: int) -> Holder | None:
    """Who holds chunk ``chunk_no`` of ``name`` now; None if there is no such chunk."""
    r = conn.execute(_HOLDER, {"n": name, "c": chunk_no}).first()
    return None if r is None else Holder(ChunkState(r[0]), r[1], float(r[2] or 0.0))


def stale(conn: Connection, name: str, lease: float) -> set[int]:
    """Chunks marked running whose lease is older than ``lease`` seconds (empty if no leases table yet)."""
    if not catalog.exists(conn, catalog.own("leases")):
        return set()
    return set(conn.execute(_STALE, {"n": name, "lease": lease}).scalars())
