"""The trigger a waiting chunk defers to: it frees the worker slot while the chunk waits.

One trigger covers every reason a chunk waits: until its off-peak window opens (``until``),
until someone resumes a paused backfill (``wait_for_resume``), or, when the Airflow DAG was paused
(``dag_paused``), not at all: it fires at once and the scheduler, which starts no task of a paused
DAG, holds the chunk ``scheduled`` until the DAG is un-paused (the triggerer cannot read the DAG's
pause state itself: its execution-API messages have no ``GetDag``). Either way it also watches the
backfill's control row, so a ``rowfill cancel`` ends the wait at once instead of at the next
window. It runs in Airflow's triggerer: the database is read in a thread (psycopg is not async
here), every ``poll_interval`` seconds. Only chunks that would otherwise be running are
deferred (deferred tasks still count toward ``max_active_tis_per_dagrun``), so a backfill has at
most ``max_parallel_chunks`` of these polling its database.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, UTC
from typing import Any
from collections.abc import AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from sqlalchemy.engine import Engine

from rowfill.airflow.connections import engine_for
from rowfill.engine.control import ControlStore


def read_state(engine: Engine, backfill: str) -> str:
    """The backfill's control state (``running``, ``paused``, ``cancelled``), read in one statement."""
    return ControlStore(engine).get(backfill).state


class ControlTrigger(BaseTrigger):
    """Wait in the triggerer until a window opens, a paused backfill resumes, or it is cancelled.

    :param connection: the Airflow connection id of the target database (the control row lives there).
    :param backfill: the spec name.
    :param until: ISO 8601 instant (UTC) when the next window opens; None when waiting for a resume.
    :param wait_for_resume: wait for the control state to be ``running`` again instead of for ``until``.
    :param poll_interval: seconds between two reads of the control row.
    :param dag_paused: the chunk stopped because its DAG was paused: yield ``dag_paused`` at once (unless cancelled).
    """

    def __init__(self, connection: str, backfill: str, until: str | None = None, wait_for_resume: bool = False,
                 poll_interval: float = 5.0, dag_paused: bool = False):
        super().__init__()
        self.connection = connection
        self.backfill = backfill
        self.until = until  # ISO timestamp, UTC
        self.wait_for_resume = wait_for_resume
        self.poll_interval = poll_interval
        self.dag_paused = dag_paused

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and arguments the triggerer rebuilds this trigger from."""
        return ("rowfill.airflow.triggers.ControlTrigger", {
            "connection": self.connection, "backfill": self.backfill, "until": self.until,
            "wait_for_resume": self.wait_for_resume, "poll_interval": self.poll_interval, "dag_paused": self.dag_paused,
        })

    def _deadline(self) -> datetime | None:
        return datetime.fromisoformat(self.until) if self.until else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event, ``{"event": "cancelled" | "resumed" | "window_open" | "dag_paused"}``, and end.

        A database that cannot be read is logged and polled again: waiting is what the chunk does anyway.
        """
        deadline = self._deadline()
        engine = None
        try:
            while True:
                state = None
                try:
                    if engine is None:
                        engine = await asyncio.to_thread(engine_for, self.connection)
                    state = await asyncio.to_thread(read_state, engine, self.backfill)
                except Exception as exc:  # noqa: BLE001 - the database may be down for a while; keep waiting
                    self.log.warning("rowfill: cannot read the control row of %s yet: %s", self.backfill, exc)
                if state == "cancelled":
                    yield TriggerEvent({"event": "cancelled"})
                    return
                if self.dag_paused:
                    yield TriggerEvent({"event": "dag_paused"})
                    return
                if self.wait_for_resume and state == "running":
                    yield TriggerEvent({"event": "resumed"})
                    return
                now = datetime.now(UTC)
                if deadline is not None and now >= deadline and not self.wait_for_resume:
                    yield TriggerEvent({"event": "window_open", "at": now.isoformat()})
                    return
                delay = self.poll_interval
                if deadline is not None and not self.wait_for_resume:
                    delay = max(0.05, min(delay, (deadline - now).total_seconds()))
                await asyncio.sleep(delay)
        finally:
            if engine is not None:
                engine.dispose()
