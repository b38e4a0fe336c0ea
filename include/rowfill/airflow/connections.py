"""Engines for the target database from the spec's Airflow connection (or a URL that overrides it).

Inside Airflow a spec's ``connection`` names an Airflow connection; the ``rowfill`` command and the
tests may give a URL instead (``--db`` or ``ROWFILL_DATABASE_URL``), which wins. Engines from a URL
and the reachability check are ``rowfill.engine.database``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from sqlalchemy.engine import Engine

from rowfill.engine.database import check_reachable, engine_from_url, with_text_formats
from rowfill.errors import SpecError
from rowfill.spec.spec import Spec

# Connection extras that psycopg understands and SQLAlchemy URLs built by the hook would drop.
_LIBPQ_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "connect_timeout", "options")


class ConnectionNotFound(LookupError):
    """No Airflow connection has the id a spec's ``connection`` names (raised before any database work)."""

    def __init__(self, conn_id: str):
        self.conn_id = conn_id
        super().__init__(
            f"there is no Airflow connection {conn_id!r}. Create it (`airflow connections add {conn_id} "
            f"--conn-uri postgresql://USER@HOST:5432/DB`, or the environment variable "
            f"AIRFLOW_CONN_{conn_id.upper()}), or, outside Airflow, give the database with `--db URL` or "
            "ROWFILL_DATABASE_URL")


def spec_engine(spec: Spec, url: str | None = None) -> Engine:
    """:func:`engine_for` the spec's target; a missing connection is a :class:`SpecError` naming the
    spec file and its ``connection`` field.

    :param spec: the backfill's spec (its ``connection`` and ``source`` are read)
    :param url: a database URL that overrides the connection (``--db``), or None
    :raises SpecError: the connection does not exist and no URL was given
    """
    try:
        return engine_for(spec.connection, url)
    except ConnectionNotFound as exc:
        raise SpecError(spec.source, "connection", str(exc)) from None


def engine_from_airflow(conn_id: str) -> Engine:
    """Build the engine from the Airflow connection, keeping the extras the hook's URL loses.

    :param conn_id: the Airflow connection id (the spec's ``connection``).
    :returns: a SQLAlchemy engine with ``pool_pre_ping``, ``application_name=rowfill``, a 10 s connect timeout
        and the libpq extras of the connection.
    :raises ConnectionNotFound: when Airflow has no such connection (its ``AirflowNotFoundException``);
        any other error of the lookup as is.
    """
    # Imported here: the `rowfill` command with --db (or ROWFILL_DATABASE_URL) never pays for
    # importing Airflow's Postgres provider.
    from airflow.exceptions import AirflowNotFoundException
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    try:
        conn = hook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise ConnectionNotFound(conn_id) from None
    extra = conn.extra_dejson or {}
    connect_args = {"application_name": "rowfill", "connect_timeout": 10}
    connect_args.update({k: extra[k] for k in _LIBPQ_EXTRAS if k in extra})
    return with_text_formats(
        hook.get_sqlalchemy_engine(engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args}))


def engine_for(connection: str, url: str | None = None) -> Engine:
    """URL given (or ROWFILL_DATABASE_URL) wins; otherwise the Airflow connection of the spec."""
    url = url or os.environ.get("ROWFILL_DATABASE_URL")
    return engine_from_url(url) if url else engine_from_airflow(connection)


@contextmanager
def target_engine(spec: Spec):
    """An engine on the spec's target database for the length of one task, checked reachable
    first, riding out a restart for the spec's ``reconnect_for`` (``DatabaseUnavailable`` names the spec
    file and its ``connection`` field), disposed after."""
    engine = spec_engine(spec)
    try:
        check_reachable(engine, spec.connection, spec.source, spec.reconnect_for)
        yield engine
    finally:
        engine.dispose()
