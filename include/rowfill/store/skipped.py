"""Statements over ``rowfill.skipped_rows``: keys a batch could not lock without waiting, to come back to.

A batch records them in the transaction that advances its checkpoint, and a later batch of the
same chunk writes them once their rows are free and forgets them in its own transaction
(``rowfill.engine.rowlocks`` decides when). Keys are stored as ``rowfill.sql.keys`` encodes key
values (JSON; a list per composite key).
"""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.sql.keys import decode
from rowfill.store.catalog import SCHEMA

_RECORD = text(f"INSERT INTO {SCHEMA}.skipped_rows (backfill, chunk_no, key) "
               "SELECT :n, :c, e FROM jsonb_array_elements(CAST(:k AS jsonb)) AS e ON CONFLICT DO NOTHING")
_PENDING = text(f"SELECT CAST(key AS text) FROM {SCHEMA}.skipped_rows WHERE backfill = :n AND chunk_no = :c "
                "ORDER BY skipped_at, key LIMIT :l")
_FORGET = text(f"DELETE FROM {SCHEMA}.skipped_rows WHERE backfill = :n AND chunk_no = :c "
               "AND key IN (SELECT e FROM jsonb_array_elements(CAST(:k AS jsonb)) AS e)")


def record(conn: Connection, backfill: str, chunk_no: int, keys: list) -> None:
    """Inside the batch transaction (with the checkpoint advance): remember ``keys`` (key values); none: no-op."""
    if keys:
        conn.execute(_RECORD, {"n": backfill, "c": chunk_no, "k": json.dumps(keys)})


def pending(conn: Connection, backfill: str, chunk_no: int, limit: int | None = None) -> list:
    """Skipped keys of a chunk still to write, oldest first (key values as rowfill.sql.keys reads them);
    at most ``limit`` (None: all)."""
    rows = conn.execute(_PENDING, {"n": backfill, "c": chunk_no, "l": limit})
    return [decode(r) for r in rows.scalars()]


def forget(conn: Connection, backfill: str, chunk_no: int, keys: list) -> None:
    """Delete ``keys`` of the chunk from ``rowfill.skipped_rows`` in the caller's transaction; none: no-op."""
    if keys:
        conn.execute(_FORGET, {"n": backfill, "c": chunk_no, "k": json.dumps(keys)})
