"""Engines for the target database from a URL, and the early check that it is reachable.

Every engine is created here or in ``rowfill.airflow.connections`` (from an Airflow connection),
so connection problems get one clear message, whichever door (DAG task, CLI, test) the user came
through.
"""

from __future__ import annotations

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from rowfill.engine.disconnects import is_connection_error
from rowfill.engine.reconnect import retry_connection
from rowfill.errors import RowfillError
from rowfill.spec.durations import format_duration
from rowfill.sql import catalog as pg_catalog
from rowfill.sql.session import text_formats_for_session


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
    return with_text_formats(create_engine(u, pool_pre_ping=True, pool_size=2, max_overflow=2,
                                           connect_args={"application_name": "rowfill", "connect_timeout": 10}))


def with_text_formats(engine: Engine) -> Engine:
    """``engine``, whose every new connection starts with ``rowfill.sql.session.TEXT_FORMATS``.

    A role or database may default to ``DateStyle = 'SQL, DMY'`` or ``extra_float_digits = 0``: psycopg
    then cannot read a timestamp, and a float read or recorded as text loses digits. The session
    setting covers every statement; transactions whose values travel as text (the undo log) pin the
    same settings again with ``SET LOCAL`` semantics, for poolers that hand out other server sessions.
    :returns: the same engine (a ``connect`` event listener is added).
    """
    statement = text_formats_for_session()

    @event.listens_for(engine, "connect")
    def _pin(dbapi_connection, _record):  # SQLAlchemy's documented hook for per-connection setup
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # the SELECT must not leave a transaction open
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute(statement)
            cursor.close()
        finally:
            dbapi_connection.autocommit = autocommit

    return engine


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
