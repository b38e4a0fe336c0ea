"""Engines for the target database from a URL, and the early check that it is reachable.

Every engine is created here or in ``rowfill.airflow.connections`` (from an Airflow connection),
so connection problems get one clear message, whichever door (DAG task, CLI, test) the user came
through.
"""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from rowfill.engine.disconnects import is_connection_error
from rowfill.engine.reconnect import retry_connection
from rowfill.errors import RowfillError
from rowfill.spec.durations import format_duration
from rowfill.sql import catalog as pg_catalog


class DatabaseUnavailable(RowfillError):
    pass


def engine_from_url(url: str) -> Engine:
    """A SQLAlchemy engine for a PostgreSQL URL, on psycopg 3 (``postgres://`` and ``postgresql://`` included):
    a small pool (2 + 2 overflow, pre-pinged), ``application_name`` rowfill (visible in pg_stat_activity), and a
    10-second ``connect_timeout``. Raises sqlalchemy.exc.ArgumentError for a URL it cannot parse.
    """
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return create_engine(u, pool_pre_ping=True, pool_size=2, max_overflow=2,
                         connect_args={"application_name": "rowfill", "connect_timeout": 10})


def check_reachable(engine: Engine, connection: str, source: str | None = None, reconnect_for: float = 0.0) -> None:
    """Fail early with advice instead of a driver traceback deep inside a batch.

    A server that refuses or drops connections (restarting, failing over) is tried again for
    ``reconnect_for`` seconds, the spec's field (``rowfill.engine.reconnect``); a wrong database name or
    password fails at once.

    :param engine: the target database. :param connection: the Airflow connection id, named in the error.
    :param source: the spec file, to name field ``connection``. :param reconnect_for: seconds to retry a refused
        or dropped connection (0.0: try once).
    :raises DatabaseUnavailable: when the server still cannot be reached, with the connection and what to check.
    """
    def ping() -> None:
        """One round trip on a fresh connection; a connection-class error lets ``retry_connection`` try again."""
        with engine.connect() as conn:
            pg_catalog.ping(conn)

    where = engine.url.render_as_string(hide_password=True)
    try:
        retry_connection(ping, reconnect_for=reconnect_for, what=f"connecting to {where}")
    except OperationalError as exc:
        prefix = f"{source}: field 'connection': " if source else ""
        waited = (f" (tried again for {format_duration(reconnect_for)}, the spec's reconnect_for)"
                  if reconnect_for and is_connection_error(exc) else "")
        raise DatabaseUnavailable(
            f"{prefix}cannot reach the target database of connection {connection!r} ({where}){waited}: "
            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}. Check that the server is up and "
            f"that the Airflow connection {connection!r} (env AIRFLOW_CONN_{connection.upper()}) points at it; "
            "nothing was changed."
        ) from exc
