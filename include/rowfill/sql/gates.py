"""Reads of PostgreSQL's statistics views that the health gates and the replica-lag metric make.

Builders only: each function returns a statement and its bound parameters, ``(TextClause,
params)``; the gates (``rowfill.engine.probes``) and the metric (``rowfill.airflow.metrics``) run
them. The views are PostgreSQL docs, 28.2 "The Cumulative Statistics System"
(``pg_stat_activity``, ``pg_stat_replication``) and 54.12 "pg_locks". Other sessions' lags,
queries and transaction starts read as NULL without the ``pg_monitor`` role (or
``pg_read_all_stats``); ``sees_other_sessions`` asks whether the connection has it.

The table a lock gate watches comes in as SQL text (``TableName.sql``) and is bound, then cast to
``regclass`` by PostgreSQL, so a name is never pasted into a statement.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.sql.elements import TextClause

Statement = tuple[TextClause, dict]

# One row per gate: (value as float8, detail text or NULL).
_READINGS = {
    # The worst of the three lags: replay stops while write/flush continue when replay is paused or slow.
    "replica_lag": text(
        "SELECT coalesce(max(extract(epoch FROM greatest(write_lag, flush_lag, replay_lag))), 0)::float8, "
        "NULL FROM pg_stat_replication"),
    "active_backends": text(
        "SELECT count(*)::float8, NULL FROM pg_stat_activity WHERE state = 'active' "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"),
    "long_transaction": text(
        "SELECT extract(epoch FROM clock_timestamp() - a.xact_start)::float8, "
        "'pid ' || a.pid || ', ' || coalesce(a.state, '?') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.relation = CAST(:table AS regclass) AND l.granted AND a.pid <> pg_backend_pid() "
        "AND a.xact_start IS NOT NULL ORDER BY a.xact_start LIMIT 1"),
    "lock_waiters": text(
        "SELECT count(DISTINCT a.pid)::float8, NULL FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        "WHERE l.relation = CAST(:table AS regclass) AND a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()"),
}

GATES = tuple(_READINGS)  # the gates measured here; ``probe`` runs the user's own SQL (rowfill.sql.sqltext.probe)

_SEES_OTHER_SESSIONS = text(
    "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') FROM pg_roles WHERE rolname = current_user")
_CURRENT_USER = text("SELECT current_user")
_REPLICA_LAG = text("SELECT extract(epoch FROM max(replay_lag)), max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) "
                    "FROM pg_stat_replication")


def reading(gate: str, table_sql: str) -> Statement:
    """The statement that measures ``gate``: one row ``(value float8, detail text or NULL)``, or none.

    :param gate: one of ``GATES`` (``replica_lag`` seconds, ``active_backends`` sessions,
        ``long_transaction`` seconds, ``lock_waiters`` sessions).
    :param table_sql: the backfill's table as SQL text (``TableName.sql``), bound as ``:table`` (the lock gates read it).
    :returns: ``(statement, params)``.
    :raises KeyError: for a gate not in ``GATES`` (the spec's validation refuses unknown gates first,
        ``rowfill.spec.gates``).
    """
    return _READINGS[gate], {"table": table_sql}  # only the lock gates use it; the others ignore it


def sees_other_sessions() -> Statement:
    """Whether the connection's role may read other sessions' statistics: superuser, or a member of
    ``pg_read_all_stats`` (which ``pg_monitor`` includes). One row, a boolean.

    :returns: ``(statement, params)``.
    """
    return _SEES_OTHER_SESSIONS, {}


def current_user() -> Statement:
    """The connection's role name, for the message that asks to grant it ``pg_monitor``. :returns: ``(statement, params)``."""
    return _CURRENT_USER, {}


def replica_lag() -> Statement:
    """The furthest-behind streaming replica: one row ``(replay_lag seconds, WAL bytes not yet replayed)``,
    each NULL when there is no replica or it is not visible (``pg_stat_replication``, ``pg_wal_lsn_diff``).

    :returns: ``(statement, params)``.
    """
    return _REPLICA_LAG, {}
