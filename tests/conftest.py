"""Shared fixtures: one throwaway PostgreSQL cluster per test session, one fresh database per test.

Tests never use a database the machine already runs; they start their own cluster (see
``rowfill_dev.localpg``) so they behave the same on a laptop, in CI and on a fresh machine.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Every temporary directory of this session (throwaway clusters, Airflow homes) goes under one
# directory that is removed when the session ends: a full run makes several GiB of clusters.
_SESSION_TMP = tempfile.mkdtemp(prefix="rowfill-test-session-")
tempfile.tempdir = _SESSION_TMP

# Airflow reads its configuration at import time: point it at a throwaway home before any test
# imports it, so tests never touch ~/airflow or a developer's real metadata database.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="rowfill-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
os.environ.pop("ROWFILL_DATABASE_URL", None)

import pytest

from helpers import create_database
from rowfill.engine.database import engine_from_url
from rowfill_dev.localpg import LocalPostgres

ROOT = Path(__file__).resolve().parents[1]
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster():
    tmp = tempfile.mkdtemp(prefix="rowfill-test-pg-")
    pg = LocalPostgres(Path(tmp) / "data").start()
    yield pg
    pg.stop("immediate")
    shutil.rmtree(tmp, ignore_errors=True)  # a full suite's cluster is ~4 GB; left behind, a few runs fill the disk


@pytest.fixture
def db_url(pg_cluster, request):
    """A fresh, empty database for one test."""
    name = f"t{next(_db_counter)}_{request.node.name.lower()}"[:60]
    return create_database(pg_cluster, "".join(c if c.isalnum() else "_" for c in name))


@pytest.fixture
def engine(db_url):
    eng = engine_from_url(db_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite), needed by dag.test()."""
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env=os.environ.copy())
    return _AIRFLOW_HOME


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temporary directories (every fixture has stopped its servers by now)."""
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture
def airflow_auth(airflow_db, monkeypatch):
    """Airflow's simple auth manager, and ``token(role, name=None)``: a signed JWT for a user of that role."""
    from airflow.api_fastapi.app import init_auth_manager, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                       "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    purge_cached_app()
    manager = init_auth_manager()
    yield lambda role, name=None: manager.generate_jwt(SimpleAuthManagerUser(username=name or role or "nobody", role=role))
    purge_cached_app()
