"""Stall watchdog: alert when a backfill makes no checkpoint progress for ``stall_after``.

Design: a task ``watchdog`` next to the chunks (``plan >> watchdog``) that immediately *defers* to a
trigger. The trigger lives in the triggerer as one coroutine: it holds no worker slot and no slot
of the chunk pool (the task itself is in ``default_pool``, and deferred tasks do not count toward
it), so watching never slows the backfill down. Every few seconds it reads one aggregate of the
checkpoint store (batches committed, chunks done); when that has not moved for ``stall_after``
while chunks of this run are still unfinished in Airflow (running, queued, scheduled, waiting for
a retry or a pool slot), it sends a ``stalled`` alert, once; if the stall goes on past
``stall_repeat_after`` (default 4 x ``stall_after``), a ``still_stalled`` alert, once; and when
batches commit again after an alert, a ``progressing_again`` note. It ends as soon as every chunk
task instance of the run is finished, so it never holds a run open. Each poll asks Airflow before it
reads the checkpoint, so a stall that ended and finished the chunks within one poll interval is
still reported as over (an on-call who was told "stalled" must never be left without the all-clear).

Why not the alternatives: a sensor in ``reschedule`` mode would start a task process (parse the
DAG, open connections) on a worker for every poke; a sensor in ``poke`` mode would hold a worker
slot for the whole backfill; a Deadline Alert fires once at a fixed time and cannot see progress.
The checkpoint store, not Airflow state, says whether rows move, because that is true across
workers and even for a runner that Airflow lost track of.

Whether chunk task instances are unfinished comes from Airflow (``RuntimeTaskInstance.get_ti_count``
through the triggerer), because only Airflow knows a failed chunk is waiting for its retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from airflow.triggers.base import BaseTrigger, TriggerEvent

from rowfill.airflow import alerts
from rowfill.airflow.connections import engine_for
from rowfill.airflow.notifiers import adeliver
from rowfill.airflow.operators import SpecOperator
from rowfill.engine.disconnects import describe, is_connection_error
from rowfill.spec.spec import load_spec
from rowfill.store.checkpoint import CheckpointStore

log = logging.getLogger("rowfill.stall")

FINISHED = ["success", "failed", "skipped", "upstream_failed", "removed"]


def poll_interval(stall_after: float) -> float:
    """Seconds between two watchdog readings: a fifth of ``stall_after`` (seconds), kept within 1 s to 30 s,
    so a stall is reported at most a fifth late and the checkpoint is not read more than once a second."""
    return min(max(stall_after / 5, 1.0), 30.0)


class StallTracker:
    """The watchdog's decisions, apart from any clock or I/O so they can be reasoned about (and tested)."""

    def __init__(self, stall_after: float, again_after: float, now: float):
        self.stall_after, self.again_after = stall_after, again_after
        self.signature = None
        self.since = now
        self.sent = 0  # 0: nothing sent for this stall, 1: 'stalled' sent, 2: 'still_stalled' sent

    def observe(self, signature, now: float) -> tuple[str, float] | None:
        """Feed one reading; returns (event, seconds stalled) when an alert is due."""
        if signature != self.signature:
            stalled_for, was_alerted = now - self.since, self.sent
            self.signature, self.since, self.sent = signature, now, 0
            return ("progressing_again", stalled_for) if was_alerted else None
        stalled_for = now - self.since
        if self.sent == 0 and stalled_for >= self.stall_after:
            self.sent = 1
            return "stalled", stalled_for
        if self.sent == 1 and stalled_for >= self.again_after:
            self.sent = 2
            return "still_stalled", stalled_for
        return None

    def settle(self, signature, now: float) -> tuple[str, float] | None:
        """The last reading, once every chunk has finished: only the all-clear can be due, never a new alert."""
        due = self.observe(signature, now)
        return due if due and due[0] == "progressing_again" else None


class StallTrigger(BaseTrigger):
    """Watches one run's checkpoint progress in the triggerer and sends the stall alerts itself.

    :param spec_source: absolute path of the spec file; the triggerer loads the spec from it (a
        trigger's arguments must serialize, Airflow docs "Deferrable Operators & Triggers").
    :param dag_id: the backfill DAG, whose chunk task states say when the run's chunks have finished.
    :param run_id: the run being watched.
    :param poll: seconds between readings; default ``poll_interval(stall_after)``.
    """

    def __init__(self, spec_source: str, dag_id: str, run_id: str, poll: float | None = None):
        super().__init__()
        self.spec_source, self.dag_id, self.run_id, self.poll = spec_source, dag_id, run_id, poll

    def serialize(self) -> tuple[str, dict]:
        """The class path and arguments the triggerer rebuilds this trigger from."""
        return ("rowfill.airflow.stall.StallTrigger",
                {"spec_source": self.spec_source, "dag_id": self.dag_id, "run_id": self.run_id, "poll": self.poll})

    async def run(self):
        """Read progress every ``poll`` seconds, send due alerts, and yield one event when the chunks have
        finished (``{"status": "done", "alerts": [...]}``) or the watchdog cannot watch (``"error"``)."""
        from asgiref.sync import sync_to_async

        try:
            spec = await sync_to_async(load_spec)(self.spec_source)
            engine = await sync_to_async(engine_for)(spec.connection)
        except Exception as exc:  # noqa: BLE001 - a watchdog that cannot start must not fail the backfill
            yield TriggerEvent({"status": "error", "error": f"{type(exc).__name__}: {exc}", "alerts": []})
            return
        poll = self.poll or poll_interval(spec.stall_after)
        tracker = StallTracker(spec.stall_after, spec.stall_again_after, time.monotonic())
        sent = []
        try:
            while True:
                # Airflow first, then the checkpoint: when Airflow says every chunk has finished, the
                # reading taken after it holds all their batches, so the all-clear cannot be missed.
                unfinished = await self._unfinished_chunks()
                try:
                    batches, done, open_chunks = await sync_to_async(_signature)(engine, spec.name)
                except Exception as exc:  # noqa: BLE001 - a database blip is not a reason to stop watching
                    # a restart (rowfill.engine.disconnects) is ridden out poll by poll; the pool reconnects
                    what = "database unreachable" if is_connection_error(exc) else "cannot read the checkpoint"
                    self.log.warning("rowfill watchdog: %s for %s (%s); trying again in %.0f s", what, spec.name,
                                     describe(exc), poll)
                    await asyncio.sleep(poll)
                    continue
                if unfinished is None:
                    unfinished = open_chunks
                observe = tracker.settle if unfinished == 0 else tracker.observe
                due = observe((batches, done), time.monotonic())
                if due:
                    event, stalled_for = due
                    status = await sync_to_async(alerts.current_status)(spec)  # None while the database is away
                    alert = alerts.stall_alert(spec, event, self.run_id, stalled_for, status)
                    self.log.warning("rowfill watchdog: %s", alert.text)
                    await adeliver(spec.alerts, alert, {"run_id": self.run_id})
                    sent.append(event)
                if unfinished == 0:
                    yield TriggerEvent({"status": "finished", "alerts": sent})
                    return
                await asyncio.sleep(poll)
        finally:
            engine.dispose()

    async def _unfinished_chunks(self) -> int | None:
        """Chunk task instances of this run that are not finished; None if Airflow cannot say (then the checkpoint does)."""
        from asgiref.sync import sync_to_async

        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            total = await sync_to_async(RuntimeTaskInstance.get_ti_count)(
                dag_id=self.dag_id, task_ids=["chunk"], run_ids=[self.run_id])
            finished = await sync_to_async(RuntimeTaskInstance.get_ti_count)(
                dag_id=self.dag_id, task_ids=["chunk"], run_ids=[self.run_id], states=FINISHED)
            return total - finished
        except Exception as exc:  # noqa: BLE001
            self.log.warning("rowfill watchdog: Airflow task states unavailable (%s); using the checkpoint", exc)
            return None


def _signature(engine, name: str) -> tuple[int, int, int]:
    return CheckpointStore(engine).signature(name)


class StallWatchdogOperator(SpecOperator):
    """Defers at once to ``StallTrigger`` and ends when the run's chunks have all finished.

    :param spec: the backfill, with ``stall_after`` set.
    """

    ui_color = "#fdecea"

    def execute(self, context):
        """Defer at once; the watchdog holds no worker slot while it watches."""
        self.log.info("%s: watching for stalls (stall_after %ss, again after %ss)", self.spec.name,
                      self.spec.stall_after, self.spec.stall_again_after)
        self.defer(trigger=StallTrigger(str(Path(self.spec.source).resolve()), self.spec.dag_id, context["run_id"]),
                   method_name="finished")

    def finished(self, context, event=None) -> dict:
        """Back from the trigger: log what it did; returns ``{"stall_alerts": [...]}`` for XCom."""
        if (event or {}).get("status") == "error":
            self.log.error("%s: the stall watchdog could not watch this run: %s (the backfill itself is not affected)",
                           self.spec.name, event.get("error"))
        alerts_sent = (event or {}).get("alerts") or []
        self.log.info("%s: chunks finished; stall alerts sent in this run: %s", self.spec.name, alerts_sent or "none")
        return {"stall_alerts": alerts_sent}
