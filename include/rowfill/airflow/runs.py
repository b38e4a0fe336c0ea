"""What Airflow knows about a backfill's DAG runs, and what the console tells Airflow: run history,
latest runs, the audit log, and clearing failed chunk task instances.

Run history comes from Airflow's metadata database (``airflow.models.dagrun.DagRun``), read in the
API server that serves the console: one indexed query per page instead of one REST round trip per
run. Clearing goes through Airflow's own REST API (``POST /api/v2/dags/{dag_id}/clearTaskInstances``,
``ClearTaskInstancesBody``) with the signed-in user's token, so Airflow checks that user's rights
and records the clear in its audit log itself. Console and command actions are also written to
Airflow's audit log (``airflow.models.log.Log``, the table behind Browse → Audit Log), as Airflow's
own API does for its actions (``airflow/api_fastapi/logging/decorators.py``: ``action_logging``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta

log = logging.getLogger("rowfill.console")

HISTORY_DAYS = 30  # runs shown on a backfill's page
HISTORY_RUNS = 1_000  # at most: an hourly schedule over 30 days is 720 runs
CHUNK_TASK = "chunk"  # the mapped task of a backfill DAG (rowfill.airflow.factory)
EVENT_PREFIX = "rowfill."  # Airflow audit log events: rowfill.pause, rowfill.retry, ...
_CLEAR_TIMEOUT = 30.0  # seconds for Airflow's clear call


@dataclass(frozen=True)
class Run:
    """One DAG run: its id, state (Airflow's: queued, running, success, failed), start and end
    (None while not started/running), run type (manual, scheduled ...) and who triggered it."""

    dag_id: str
    run_id: str
    state: str
    start: datetime | None
    end: datetime | None
    run_type: str
    triggered_by: str | None

    @property
    def seconds(self) -> float | None:
        """How long it ran (to now while it runs); None before it started."""
        if self.start is None:
            return None
        end = self.end or datetime.now(self.start.tzinfo)
        return (end - self.start).total_seconds()


def _run(row) -> Run:
    return Run(row.dag_id, row.run_id, str(row.state), row.start_date, row.end_date, str(row.run_type),
               row.triggering_user_name)


def history(dag_ids: list[str], days: float = HISTORY_DAYS, limit: int = HISTORY_RUNS) -> list[Run]:
    """The runs of these DAGs that started (or were queued) in the last ``days`` days, newest first.

    :param dag_ids: a backfill's DAG and its rollback DAG. :param limit: at most this many runs.
    :returns: Runs. :raises sqlalchemy.exc.SQLAlchemyError: Airflow's metadata database cannot be read.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    since = datetime.now().astimezone() - timedelta(days=days)
    query = (select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date,
                    DagRun.run_type, DagRun.triggering_user_name)
             .where(DagRun.dag_id.in_(dag_ids), DagRun.run_after >= since)
             .order_by(DagRun.run_after.desc()).limit(limit))
    with create_session() as session:
        return [_run(r) for r in session.execute(query).all()]


def latest(dag_ids: list[str]) -> dict[str, Run]:
    """Each DAG's newest run (by ``run_after``), for the overview; DAGs never run are absent.

    :raises sqlalchemy.exc.SQLAlchemyError: Airflow's metadata database cannot be read.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    newest = (select(DagRun.dag_id, func.max(DagRun.run_after).label("after"))
              .where(DagRun.dag_id.in_(dag_ids)).group_by(DagRun.dag_id).subquery())
    query = (select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date,
                    DagRun.run_type, DagRun.triggering_user_name)
             .join(newest, (DagRun.dag_id == newest.c.dag_id) & (DagRun.run_after == newest.c.after)))
    with create_session() as session:
        return {r.dag_id: _run(r) for r in session.execute(query).all()}


def audit_log(event: str, user: str, dag_id: str | None, extra: dict, run_id: str | None = None) -> None:
    """Write one entry to Airflow's audit log (``log`` table; Browse → Audit Log), as ``rowfill.<event>``.

    :param event: the action (pause, resume, cancel, set, retry, plan). :param user: who (Airflow or OS user).
    :param dag_id: the backfill's DAG. :param extra: JSON-ready details (reason, knobs, chunks).
    :raises sqlalchemy.exc.SQLAlchemyError: the metadata database cannot be written.
    """
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(Log(event=f"{EVENT_PREFIX}{event}"[:60], owner=user, owner_display_name=user, dag_id=dag_id,
                        run_id=run_id, extra=json.dumps(extra, default=str)))


class ClearRefused(Exception):
    """Airflow refused or failed to clear task instances; the message carries its answer."""


def clear_chunks(api_base: str, token: str, dag_id: str, run_id: str, map_indexes: list[int]) -> dict:
    """Clear failed chunk task instances of one run through Airflow's REST API, so the scheduler runs
    them again (each resumes from its checkpoint).

    :param api_base: the API server's address as the browser reached it (``http://host:port``).
    :param token: the signed-in user's JWT (their ``_token`` cookie or bearer token): Airflow decides.
    :param map_indexes: the chunk tasks' map indexes (``rowfill.chunks.map_index``).
    :returns: Airflow's answer (``task_instances`` cleared, ``total_entries``).
    :raises ClearRefused: Airflow answered with an error (403 for a user who may not clear, 404 ...).
    """
    body = {"dry_run": False, "dag_run_id": run_id, "task_ids": [[CHUNK_TASK, i] for i in map_indexes],
            "only_failed": True, "include_downstream": True, "reset_dag_runs": True}  # a failed run runs again
    request = urllib.request.Request(
        f"{api_base}/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/clearTaskInstances",
        data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=_CLEAR_TIMEOUT) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ClearRefused(f"Airflow refused to clear {dag_id} {run_id}: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClearRefused(f"could not reach Airflow's API at {api_base} to clear {dag_id} {run_id}: {exc}") from None
