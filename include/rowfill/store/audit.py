"""Statements over ``rowfill.audit``: the append-only trail of what people did to a backfill.

The table comes from the migration ``rowfill.store.migrations.versions.r0003_audit`` (never from
DDL at run time). Rows are only ever inserted; the database refuses UPDATE, DELETE and TRUNCATE.
The console (``rowfill.airflow.web``) and the ``rowfill`` command (``rowfill.ops.cli``) write it;
the backfill's page reads the latest rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from rowfill.errors import RowfillError
from rowfill.store import catalog
from rowfill.store.catalog import SCHEMA

SHOWN = 50  # rows of the trail on a backfill's page: the recent story, one small read
REASON_CHARS = 1_000  # of what a person typed; longer text is cut, not refused

_INSERT = text(f"INSERT INTO {SCHEMA}.audit (backfill, actor, source, action, details, reason) "
               "VALUES (:b, :a, :s, :act, CAST(:d AS jsonb), :r) RETURNING id, at")
_LATEST = text(f"SELECT id, at, backfill, actor, source, action, details, reason FROM {SCHEMA}.audit "
               "WHERE backfill = :b ORDER BY id DESC LIMIT :k")


class Source(StrEnum):
    """Where an action came from (``rowfill.audit.source``)."""

    CONSOLE = "console"  # the Airflow UI's backfills console; actor = the Airflow user
    CLI = "cli"  # the ``rowfill`` command; actor = the OS user who ran it


INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE (PostgreSQL docs, Appendix A)


class AuditUnavailable(RowfillError):
    """rowfill's schema on this database has no audit table yet (a migration is missing)."""


@dataclass(frozen=True)
class Entry:
    """One recorded action: ``id`` (order), ``at`` (database clock), who, from where, what, the details and the reason."""

    id: int
    at: datetime
    backfill: str
    actor: str
    source: str
    action: str
    details: dict
    reason: str | None


def available(conn: Connection) -> bool:
    """Whether ``rowfill.audit`` exists on this database (the migration ran)."""
    return catalog.exists(conn, catalog.own("audit"))


def record(engine: Engine, backfill: str, actor: str, source: Source, action: str, details: dict | None = None,
           reason: str | None = None) -> Entry:
    """Append one action to the trail, in its own transaction.

    :param backfill: the backfill's name (``NAME.rollback`` for its rollback).
    :param actor: the Airflow user's name, or the OS user for the command.
    :param source: ``Source.CONSOLE`` or ``Source.CLI``.
    :param action: ``pause``, ``resume``, ``cancel``, ``set``, ``retry``, ``plan``.
    :param details: JSON-ready facts of the action (knobs set, chunks cleared, the state after it).
    :param reason: what the person typed (blank -> None; cut at ``REASON_CHARS``).
    :returns: the Entry written. :raises AuditUnavailable: when the table is missing (run the migrations) or
        the role may not append to it (grant it).
    """
    reason = (reason or "").strip()[:REASON_CHARS] or None
    try:
        with engine.begin() as conn:
            if not available(conn):
                raise AuditUnavailable(f"rowfill's schema on this database has no audit table ({SCHEMA}.audit), so "
                                       f"{action} of {backfill} by {actor} is not in the audit trail; run the schema "
                                       "migrations (`rowfill db migrate`) to create it")
            row = conn.execute(_INSERT, {"b": backfill, "a": actor, "s": str(source), "act": action,
                                         "d": json.dumps(details or {}, default=str), "r": reason}).one()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise AuditUnavailable(f"this role may not append to {SCHEMA}.audit, so {action} of {backfill} by {actor} is not "
                               f"in the audit trail; have the schema's owner apply what `rowfill db grants ROLE` prints "
                               f"(GRANT SELECT, INSERT ON {SCHEMA}.audit)") from None
    return Entry(row.id, row.at, backfill, actor, str(source), action, details or {}, reason)


def latest(conn: Connection, backfill: str, limit: int = SHOWN) -> list[Entry]:
    """The backfill's newest ``limit`` actions, newest first; [] when the table does not exist yet."""
    if not available(conn):
        return []
    return [Entry(*r) for r in conn.execute(_LATEST, {"b": backfill, "k": limit}).all()]
