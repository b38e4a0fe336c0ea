"""Airflow pools for rowfill: which ones the specs need, and a loud check that they exist.

Airflow 3 leaves a task whose pool does not exist in ``scheduled`` forever, without an error,
and tasks cannot create pools. So pools are created at deploy time from the pools file
(``rowfill pools --write`` writes ``<specs folder>/pools.json``; ``airflow pools import`` loads it), and the plan task checks through Airflow's REST API that the pool is
there, failing with the exact command to run when it is not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from rowfill.airflow.specs_folder import POOLS_FILE_NAME
from rowfill.errors import RowfillError
from rowfill.spec.spec import Spec

API_CONNECTION = "rowfill_airflow_api"


class PoolMissing(RowfillError):
    """The spec's Airflow pool does not exist; the message holds the command that creates it."""


def pools_for(specs: list[Spec]) -> dict[str, dict]:
    """The pools file content for these specs: one pool per target database, sized for its backfills."""
    pools: dict[str, dict] = {}
    for spec in specs:
        entry = pools.setdefault(spec.pool_name, {"slots": 0, "description": f"rowfill chunks writing to connection {spec.connection}", "include_deferred": False})
        entry["slots"] = max(entry["slots"], spec.max_parallel_chunks)
    return dict(sorted(pools.items()))


def create_command(spec: Spec) -> str:
    """The ``airflow pools set`` command creating the spec's pool with ``max_parallel_chunks`` slots."""
    return f"airflow pools set {spec.pool_name} {spec.max_parallel_chunks} 'rowfill chunks writing to connection {spec.connection}'"


def check_pool(spec: Spec, log) -> bool | None:
    """Whether the spec's pool exists, asked through Airflow's REST API (``GET /api/v2/pools/{name}``).

    :param log: the task's logger, for the warnings.
    :return: True when it exists; None when it could not be asked (no ``rowfill_airflow_api``
        connection, the API unreachable or refusing): then only a warning is logged.
    :raises PoolMissing: when the API says 404, with the command that creates the pool.
    """
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(API_CONNECTION)
    except Exception:
        log.warning(
            "Cannot check that pool %r exists: no Airflow connection %r (an http connection to the API server "
            "with a user allowed to read pools). If the pool is missing, chunk tasks stay 'scheduled' forever; "
            "create it with: %s", spec.pool_name, API_CONNECTION, create_command(spec))
        return None
    base = f"{conn.schema or 'http'}://{conn.host}{':' + str(conn.port) if conn.port else ''}".rstrip("/")
    try:
        token = _post_json(f"{base}/auth/token", {"username": conn.login, "password": conn.password})["access_token"]
        req = urllib.request.Request(f"{base}/api/v2/pools/{spec.pool_name}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise PoolMissing(
                f"Airflow pool {spec.pool_name!r} does not exist, so the chunk tasks of {spec.dag_id} would wait in "
                f"'scheduled' forever. Create it, then clear this task: {create_command(spec)} "
                f"(or import all rowfill pools: rowfill pools --write && airflow pools import "
                f"{Path(spec.source).parent / POOLS_FILE_NAME})"
            ) from exc
        log.warning("Could not check pool %r through the Airflow API (%s %s); continuing", spec.pool_name, exc.code, exc.reason)
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        log.warning("Could not check pool %r through the Airflow API at %s (%s); continuing", spec.pool_name, base, exc)
    return None


def _post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
