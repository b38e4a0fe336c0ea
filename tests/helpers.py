"""Small builders the tests share: demo-like tables and specs written as YAML files."""

from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import text

from rowfill.engine.database import engine_from_url
from rowfill.spec.spec import load_spec
from rowfill_dev.schema import migrate_database


def make_users(engine, n: int, *, step: int = 1, start: int = 1, table: str = "users") -> None:
    """``n`` users with keys start, start+step, ...; full_name NULL and points 0."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, "
            "full_name text, points integer NOT NULL DEFAULT 0)"
        ))
        conn.execute(text(
            f"INSERT INTO {table} (id, first_name, last_name) "
            "SELECT :start + (g - 1) * :step, 'first' || g, 'last' || g FROM generate_series(1, :n) g"
        ), {"n": n, "step": step, "start": start})
        conn.execute(text(f"ANALYZE {table}"))


def write_spec(tmp_path: Path, name: str = "users_full_name", **fields) -> Path:
    data = {
        "name": name,
        "connection": "app_db",
        "table": "public.users",
        "key": "id",
        "where": "full_name IS NULL",
        "set": {"full_name": "first_name || ' ' || last_name"},
        "chunk_rows": 1000,
        "batch_rows": 100,
        "pause": 0,
        # fixed-size batches and no rest unless a test asks: batch counts stay predictable
        "target_batch_time": "off",
        "pause_ratio": 0,
        **fields,
    }
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spec_for(tmp_path: Path, **fields):
    return load_spec(write_spec(tmp_path, **fields))


def create_database(pg_cluster, name: str, *, migrated: bool = True) -> str:
    """(Re)create a database in the test cluster and return its URL; with ``migrated`` (the default)
    rowfill's schema is migrated into it, as `rowfill db migrate` does before any backfill."""
    admin = engine_from_url(pg_cluster.url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = pg_cluster.url_for(name)
    if migrated:
        migrate_database(url)
    return url


def example_spec(tmp_path: Path, name: str, **changes):
    """An example spec from include/specs/ with ``changes`` (None removes a field), written to ``tmp_path``, with fixed-size batches."""
    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "include" / "specs" / f"{name}.yaml").read_text())
    # These tests count batches and time application writes against them: fixed-size batches and
    # exactly the pause they ask for, not the adaptive default throttle (tested in test_throttle).
    data.update({"target_batch_time": "off", "pause_ratio": 0})
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


class Lines(logging.Handler):
    """Collects the log lines a runner writes, so tests can read what a person would see."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def wait_until(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    """Poll until ``predicate()`` is truthy and return that value; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} not met within {timeout:.0f} s")


def module(tmp_path: Path, monkeypatch, name: str, source: str) -> str:
    """A transform or sink module the test writes, importable as a worker would import it; returns its name."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return name
