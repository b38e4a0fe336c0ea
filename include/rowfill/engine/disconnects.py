"""Is this error a lost or refused database connection (worth reconnecting), or something else?

One predicate, used wherever rowfill reconnects (``rowfill.engine.reconnect``), so the runner, the CLI,
planning, verify, control and the stall watchdog agree on what a restart looks like:

- SQLSTATE class ``08`` "Connection Exception" (``08000``, ``08003``, ``08006``, ``08001``, ...);
- ``57P01`` admin_shutdown (a fast shutdown or restart, and ``pg_terminate_backend``),
  ``57P02`` crash_shutdown (another backend crashed; the server resets every session),
  ``57P03`` cannot_connect_now ("the database system is starting up" / "is shutting down");
- errors the client raises itself, without a SQLSTATE: "server closed the connection
  unexpectedly", "connection refused", a connect timeout. The driver raises these as
  ``OperationalError`` without a code; SQLAlchemy marks them ``connection_invalidated`` when its
  dialect's ``is_disconnect`` recognises them, and then invalidates the pool's older connections,
  so the next checkout (with ``pool_pre_ping``) opens a fresh one.

Not included: ``57014`` query_canceled (a statement_timeout or ``pg_cancel_backend``: the session
is fine), ``57P04`` database_dropped (no point waiting), authentication errors (class ``28``).

Source: PostgreSQL documentation, Appendix A "PostgreSQL Error Codes"
(https://www.postgresql.org/docs/current/errcodes-appendix.html); SQLAlchemy, "Dealing with
Disconnects" (https://docs.sqlalchemy.org/en/20/core/pooling.html#dealing-with-disconnects).
"""

from __future__ import annotations

import re

from sqlalchemy.exc import DBAPIError

CONNECTION_CLASS = "08"  # Class 08 — Connection Exception
SERVER_GONE = {
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
}

# The server's messages for those SQLSTATEs (src/backend/tcop/postgres.c, src/backend/postmaster/
# postmaster.c), for the errors at connect time that psycopg raises without their code.
SERVER_GONE_MESSAGES = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "terminating connection due to administrator command",
    "terminating connection because of crash of another server process",
)
_SERVER_SAYS = re.compile(r"\b(?:FATAL|PANIC|ERROR):\s+(.*)")


def _driver_operational_errors() -> tuple[type, ...]:
    """The drivers' own OperationalError classes (psycopg 3, and psycopg2 where Airflow's hook uses it)."""
    found: list[type] = []
    try:
        import psycopg

        found.append(psycopg.OperationalError)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    try:
        import psycopg2

        found.append(psycopg2.OperationalError)
    except ImportError:
        pass
    return tuple(found)


_OPERATIONAL = _driver_operational_errors()


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, wrapped by SQLAlchemy or not; None when the server sent none."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_connection_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (a driver error, wrapped by SQLAlchemy or not) says the connection was lost or refused.

    Only the error itself is looked at, not what it was raised from: a rowfill error that wraps a
    lost connection (the database stayed down past ``reconnect_for``) is final, not retried again.
    """
    if exc is None:
        return False
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = sqlstate_of(exc)
    if state:
        return state.startswith(CONNECTION_CLASS) or state in SERVER_GONE
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(orig, _OPERATIONAL):
        return False
    # No SQLSTATE: the client's own error about the socket (closed, refused, timed out), or a
    # server's FATAL at connect time, which psycopg reports without its code. Of those, only the
    # ones a restart gives count: "database does not exist" or a wrong password never heal.
    said = _SERVER_SAYS.search(str(orig))
    return said is None or any(m in said.group(1) for m in SERVER_GONE_MESSAGES)


def describe(exc: BaseException) -> str:
    """The first line of the driver's message, with its SQLSTATE when there is one: short enough for a log line."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line for line in str(orig).strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else type(orig).__name__
    state = sqlstate_of(exc)
    return f"{first} (SQLSTATE {state})" if state else first
