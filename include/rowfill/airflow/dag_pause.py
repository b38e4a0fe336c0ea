"""Airflow's own DAG pause toggle, as a running chunk sees it: a reason to stop at the next batch boundary.

Pausing a DAG in Airflow stops the scheduler from starting its tasks (the scheduler only queues task
instances of DAGs that are not paused: ``scheduler_job_runner._executable_task_instances_to_queued``)
but leaves running ones running. A rowfill chunk may run for hours, so it asks, between batches,
whether its DAG was paused (``RuntimeTaskInstance.get_dag``: the Task SDK's execution API, no
metadata-database access from the worker). When it was, the chunk stops at the batch boundary, keeps
its cursor and defers (``task_control``); the scheduler then keeps it ``scheduled`` (no worker slot, no
pool slot) until the DAG is un-paused, and it resumes from its cursor in the same DAG run.

Only a DAG that *becomes* paused while the chunk runs stops it. A chunk that starts while its DAG is
already paused was started by something that ignores the toggle on purpose (``airflow dags test``,
``dag.test()``, ``airflow tasks test``: they run paused DAGs, which are paused at creation by default);
stopping there would defer and come straight back, forever. (The one other way, a pause in the
seconds between the scheduler queueing the chunk and the chunk starting, lets that go run on; pause
with ``rowfill pause`` to stop it.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PAUSE_CHECK_EVERY = 5.0  # seconds between two asks: one execution-API call, never one per batch

log = logging.getLogger("rowfill.chunk")


class DagPauseWatch:
    """A ``should_stop`` for the chunk runner (``rowfill.engine.chunk_task.run_chunk``): the DAG's pause toggle.

    :param ti: the task's ``RuntimeTaskInstance`` (``context["ti"]``), whose ``get_dag(dag_id)`` answers ``is_paused``.
    :param dag_id: the DAG to watch (the chunk's own).
    :param every: seconds between asks; the first call always asks.
    :param clock: monotonic seconds (tests drive it). :param logger: where an ask that fails is logged.
    """

    def __init__(self, ti, dag_id: str, every: float = PAUSE_CHECK_EVERY, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None):
        self.ti, self.dag_id, self.every, self.clock = ti, dag_id, every, clock
        self.log = logger or log
        self._next: float | None = None  # when to ask again (monotonic seconds); None: at the next call
        self._started_paused: bool | None = None  # the first answer; None until asked

    def reason(self) -> str:
        """The words the chunk row and the log show while the DAG is paused."""
        return f"the Airflow DAG {self.dag_id} is paused (its toggle); un-pause it to resume from the cursor"

    def __call__(self) -> str | None:
        """``reason()`` when the DAG has been paused since the chunk started, else None (see the module docstring).

        Never raises: when the question cannot be asked (an execution API hiccup, a runner without it)
        the chunk goes on and the next ask tries again."""
        now = self.clock()
        if self._next is not None and now < self._next:
            return None
        self._next = now + self.every
        try:
            paused = bool(self.ti.get_dag(self.dag_id).is_paused)
        except Exception as exc:  # noqa: BLE001 - not knowing is no reason to stop or fail a chunk
            self.log.warning("could not ask Airflow whether DAG %s is paused (%s: %s); going on", self.dag_id,
                             type(exc).__name__, exc)
            return None
        if self._started_paused is None:
            self._started_paused = paused
            if paused:
                self.log.info("DAG %s is paused, but this task was started anyway (airflow dags test or tasks test); "
                              "the toggle stops it once the DAG is un-paused and paused again", self.dag_id)
        if self._started_paused:
            self._started_paused = paused  # un-paused meanwhile: from now on a pause stops the chunk
            return None
        return self.reason() if paused else None
