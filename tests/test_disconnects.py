"""Which errors mean "the connection is gone" (rowfill.engine.disconnects), from real errors of a real server,
and the spec field that says how long to reconnect (``reconnect_for``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from helpers import write_spec
from rowfill.engine.database import engine_from_url
from rowfill.engine.disconnects import is_connection_error
from rowfill.engine.reconnect import DatabaseUnreachable, call
from rowfill.spec.spec import DEFAULT_RECONNECT_FOR, load_spec
from rowfill_dev.localpg import free_port

ROWFILL = str(Path(sys.executable).parent / "rowfill")


def raised(engine, sql: str, setup: str | None = None) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught:
        with engine.begin() as conn:
            if setup:
                conn.execute(text(setup))
            conn.execute(text(sql))
    return caught.value


def test_a_terminated_session_is_a_connection_error_and_the_pool_reconnects(engine):
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with psycopg.connect(str(engine.url.set(drivername="postgresql")), autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DBAPIError) as caught:
            conn.execute(text("SELECT 1"))
    assert is_connection_error(caught.value)
    assert caught.value.connection_invalidated  # SQLAlchemy invalidated it; the pool hands out a new one
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid


def test_errors_of_the_statement_or_the_data_are_not_connection_errors(engine):
    assert not is_connection_error(raised(engine, "SELECT 1 / 0"))  # 22012
    assert not is_connection_error(raised(engine, "SELECT pg_sleep(1)", "SET LOCAL statement_timeout = '10ms'"))  # 57014
    assert not is_connection_error(raised(engine, "SELECT * FROM no_such_table"))  # 42P01
    assert not is_connection_error(ValueError("server closed the connection unexpectedly"))


def test_a_refused_connection_is_one_and_a_wrong_database_is_not(db_url):
    refused = engine_from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    missing = engine_from_url(db_url.rsplit("/", 1)[0] + "/no_such_database")
    try:
        with pytest.raises(DBAPIError) as caught:
            refused.connect()
        assert is_connection_error(caught.value)
        with pytest.raises(DBAPIError) as caught:
            missing.connect()
        assert not is_connection_error(caught.value)  # FATAL 3D000 never heals by waiting
    finally:
        refused.dispose()
        missing.dispose()


def test_reconnect_gives_up_after_reconnect_for_naming_the_field(tmp_path):
    spec = load_spec(write_spec(tmp_path, reconnect_for="300ms"))
    engine = engine_from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    tries = []

    def ping():
        tries.append(1)
        with engine.connect():
            pass

    try:
        with pytest.raises(DatabaseUnreachable) as caught:
            call(ping, spec, "reading the status")
    finally:
        engine.dispose()
    assert len(tries) > 1  # tried again before giving up
    message = str(caught.value)
    assert f"{spec.source}: field 'reconnect_for'" in message and "while reading the status" in message
    assert "300 ms" in message and "Connection refused" in message


def test_reconnect_for_has_a_default_and_an_upper_bound_that_validate_checks(tmp_path):
    assert load_spec(write_spec(tmp_path)).reconnect_for == DEFAULT_RECONNECT_FOR == 180.0
    assert load_spec(write_spec(tmp_path, reconnect_for="10m")).reconnect_for == 600.0
    assert load_spec(write_spec(tmp_path, reconnect_for=0)).reconnect_for == 0.0  # fail at the first lost connection
    write_spec(tmp_path, reconnect_for="25h")
    done = subprocess.run([ROWFILL, "--specs-dir", str(tmp_path), "validate"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "field 'reconnect_for'" in done.stdout and "upper bound of 24h" in done.stdout
