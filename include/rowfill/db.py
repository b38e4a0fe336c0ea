"""Engines for the target database: from an Airflow connection inside Airflow, from a URL outside it.

Every engine is created here so connection problems get one clear message, whichever door
(DAG task, CLI, test) the user came through.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from rowfill.disconnects import is_connection_error
from rowfill.durations import format_duration
from rowfill.errors import RowfillError
from rowfill.reconnect import retry_connection

# Connection extras that psycopg understands and SQLAlchemy URLs built by the hook would drop.
_LIBPQ_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "connect_timeout", "options")


class DatabaseUnavailable(RowfillError):
    pass


def engine_from_url(url: str) -> Engine:
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return create_engine(u, pool_pre_ping=True, pool_size=2, max_overflow=2,
                         connect_args={"application_name": "rowfill", "connect_timeout": 10})


def engine_from_airflow(conn_id: str) -> Engine:
    """Build the engine from the Airflow connection, keeping the extras the hook's URL loses."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    connect_args = {"application_name": "rowfill", "connect_timeout": 10}
    connect_args.update({k: extra[k] for k in _LIBPQ_EXTRAS if k in extra})
    return hook.get_sqlalchemy_engine(engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args})


def engine_for(connection: str, url: str | None = None) -> Engine:
    """URL given (or ROWFILL_DATABASE_URL) wins; otherwise the Airflow connection of the spec."""
    url = url or os.environ.get("ROWFILL_DATABASE_URL")
    return engine_from_url(url) if url else engine_from_airflow(connection)


def check_reachable(engine: Engine, connection: str, source: str | None = None, reconnect_for: float = 0.0) -> None:
    """Fail early with advice instead of a driver traceback deep inside a batch.

    A server that refuses or drops connections (restarting, failing over) is tried again for
    ``reconnect_for`` seconds, the spec's field (``rowfill.reconnect``); a wrong database name or
    password fails at once.
    """
    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

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
