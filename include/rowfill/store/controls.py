"""Statements over ``rowfill.controls``: one row per backfill with its live state and knobs.

The table is created by rowfill's migrations (``rowfill.store.migrations``); the meaning of the
state and the knobs is ``rowfill.engine.control``'s. A backfill without a row is running with no
knobs, so readers cope with no row, and with no table on a database never migrated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.store import catalog
from rowfill.store.catalog import SCHEMA


@dataclass(frozen=True)
class Control:
    """A backfill's control row: ``state`` (``rowfill.store.states.ControlState``), ``knobs`` (name ->
    value, "off" stored as a marker), ``version`` (bumped by every change), the ``note`` of the last
    change and when it was made."""

    backfill: str
    state: str = "running"
    knobs: dict = field(default_factory=dict)
    version: int = 0
    note: str | None = None
    changed_at: datetime | None = None


_GET = text(f"SELECT state, knobs, version, note, changed_at FROM {SCHEMA}.controls WHERE backfill = :n")
_WRITE = text(
    f"INSERT INTO {SCHEMA}.controls AS c (backfill, state, knobs, version, note) "
    "VALUES (:n, coalesce(:s, 'running'), CAST(:k AS jsonb), 1, :note) "
    "ON CONFLICT (backfill) DO UPDATE SET state = coalesce(:s, c.state), "
    "knobs = CASE WHEN :replace THEN CAST(:k AS jsonb) ELSE jsonb_strip_nulls(c.knobs || CAST(:k AS jsonb)) END, "
    "version = c.version + 1, note = coalesce(:note, c.note), changed_at = now() "
    "RETURNING state, knobs, version, note, changed_at"
)
_STATES = text(f"SELECT backfill, state FROM {SCHEMA}.controls WHERE backfill = ANY(:n)")


def table_exists(conn: Connection) -> bool:
    """Whether ``rowfill.controls`` exists (False on a database never migrated)."""
    return catalog.exists(conn, catalog.own("controls"))


def get(conn: Connection, name: str) -> Control:
    """The control row of ``name`` (one primary-key lookup); a backfill without one is running, no knobs.
    ``rowfill.controls`` must exist (``table_exists``)."""
    row = conn.execute(_GET, {"n": name}).first()
    return Control(name, *row) if row else Control(name)


def write(conn: Connection, name: str, *, state: str | None, knobs: dict, replace_knobs: bool,
          note: str | None) -> Control:
    """Upsert the control row of ``name`` and bump its version.

    :param state: the new state, or None to keep it. :param knobs: knobs to merge (``replace_knobs``:
        to replace all with); a knob whose value is JSON null is dropped by the merge.
    :param note: what changed it, or None to keep the last note. :returns: the row written.
    """
    row = conn.execute(_WRITE, {"n": name, "s": state, "k": json.dumps(knobs), "replace": replace_knobs,
                                "note": note}).one()
    return Control(name, *row)


def states(conn: Connection, names: list[str]) -> dict[str, str]:
    """The stored state of each of ``names`` that has a control row (others are running); {} without the table."""
    if not table_exists(conn):
        return {}
    return dict(conn.execute(_STATES, {"n": list(names)}).all())
