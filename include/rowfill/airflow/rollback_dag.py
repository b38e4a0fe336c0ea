"""The rollback DAG ``rowfill_<name>_rollback`` of every spec with ``undo: true``: manual only.

Same shape as the backfill it undoes, and the same throttle, pool and checkpoints::

    plan_rollback  ->  restore[1..N] (mapped over the undo log's chunks)  ->  finish

``plan_rollback`` also forgets the backfill's own progress, which stops any chunk of it still
running (its next batch finds no checkpoint row), and the backfill DAG refuses to plan while a
rollback is unfinished. The library side is ``rowfill.engine.undo``; this module only makes tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG

from rowfill.airflow.chunk_settings import mapped_chunk_settings, max_map_length
from rowfill.airflow.connections import target_engine
from rowfill.airflow.mapped_chunk import MappedChunk, task_chunk
from rowfill.airflow.operators import SpecOperator
from rowfill.airflow import task_control
from rowfill.airflow.pools import check_pool
from rowfill.engine.rollback import finish_rollback, plan_rollback
from rowfill.engine.undo import undo_table
from rowfill.errors import SpecError
from rowfill.spec.spec import Spec

log = logging.getLogger("rowfill.alerts")


def rollback_dag_id(spec: Spec) -> str:
    """The rollback DAG's id, ``rowfill_<name>_rollback`` (its backfill DAG is ``rowfill_<name>``).

    :param spec: the backfill the rollback undoes.
    """
    return f"rowfill_{spec.name}_rollback"


class PlanRollbackOperator(SpecOperator):
    """Plan (or resume) the rollback's chunks over the undo log, forgetting the backfill's progress.

    Returns one JSON mapping per chunk (read back as ``MappedChunk``), at most ``[core] max_map_length``.

    :param spec: the backfill to roll back (``undo: true``).
    """

    ui_color = "#fbe8e8"

    def execute(self, context) -> list[dict]:
        """Plan the rollback (``plan_rollback``); raises NoUndo when there is no undo log, PoolMissing when the
        pool does not exist.
        """
        check_pool(self.spec, self.log)
        with target_engine(self.spec) as engine:
            chunks = plan_rollback(engine, self.spec, limit=max_map_length(), log=self.log)
        self.log.info("rollback of %s: %d chunks of the undo log to restore (~%s records); the backfill's own "
                      "progress is forgotten, so it starts over if run again", self.spec.name, len(chunks),
                      f"{sum(c.est_rows for c in chunks):,}")
        return [c.to_xcom() for c in chunks]


class RestoreChunkOperator(SpecOperator):
    """One mapped instance per rollback chunk: restores previous values from the undo log.

    :param spec: the backfill to roll back.
    :param chunk: one item of ``plan_rollback``'s XCom, read as a ``MappedChunk``; raises ValueError
        when it is not a planned chunk.
    """

    ui_color = "#f6d5d5"

    def __init__(self, *, chunk: MappedChunk | Mapping[str, Any], **kwargs):
        super().__init__(**kwargs)
        self.chunk = MappedChunk.from_xcom(chunk)

    def execute(self, context) -> dict:
        """Restore one chunk of the undo log from its cursor, on the table pinned at planning, through the one
        chunk path (pause, cancel, windows, gates, metrics: ``task_control.attempt_restore``); returns the counts
        for XCom. Defers while ``NAME.rollback`` is paused or outside the window; skipped when it is cancelled.
        """
        return task_control.attempt_restore(self, context)

    def execute_complete(self, context, event=None) -> dict:
        """Back from the triggerer (window opened, rollback resumed or cancelled): go again from the cursor."""
        return task_control.attempt_restore(self, context, event)


class FinishRollbackOperator(SpecOperator):
    """Check every rollback chunk is done and the undo log empty; returns the counts for XCom.

    :param spec: the backfill that was rolled back.
    """

    ui_color = "#efe6fb"

    def execute(self, context) -> dict:
        """Raises RollbackIncomplete (``rowfill.engine.rollback``) with what is left when a chunk is not done."""
        with target_engine(self.spec) as engine:
            result = finish_rollback(engine, self.spec)
        self.log.info("%s", result.line())
        return {"chunks": result.chunks, "records": result.walked, "restored": result.restored,
                "left_alone": result.left_alone}


def _failure(spec: Spec):
    def callback(context):
        """Log which restore chunk failed and the command that resumes it."""
        ti = context["ti"]
        _, label = task_chunk(context.get("task"))
        log.error(
            "rowfill rollback of %r: %s failed (%s). Restored batches stay restored; clear the failed task "
            "(`airflow tasks clear %s -t '^restore$' --only-failed --downstream -y`) to resume from its checkpoint.",
            spec.name, label or f"map index {ti.map_index}", context.get("exception"), rollback_dag_id(spec))
    return callback


def build_rollback_dag(spec: Spec) -> DAG:
    """The manual-only rollback DAG of a spec with ``undo: true``: plan_rollback -> restore[1..N] -> finish.

    :param spec: the backfill to roll back.
    :return: the DAG, not auto-registered (``rowfill.airflow.factory.build_all`` decides what is a DAG).
    :raises SpecError: when a duration of the spec does not fit Airflow's timedelta (``spec_timedelta``).
    """
    with DAG(
        dag_id=rollback_dag_id(spec),
        description=f"Restore what rowfill backfill {spec.name} changed in {spec.table}"[:200],
        schedule=None,  # manual only
        catchup=False,
        max_active_runs=1,
        tags=["rowfill", "rollback", *spec.tags],
        doc_md=(f"### Rollback of rowfill backfill `{spec.name}`\n\nRestores the previous values of "
                f"{', '.join(f'`{c}`' for c in (spec.set or spec.returns))} in `{spec.table}` from the undo log "
                f"`{undo_table(spec.name)}`; rows the application changed after the backfill are left alone. "
                f"Stops the backfill first (its progress is forgotten). Spec: `{spec.source}`."),
        default_args={"owner": "rowfill"},
        auto_register=False,  # only what rowfill.airflow.factory.build_all hands back is a DAG
    ) as dag:
        plan = PlanRollbackOperator(task_id="plan_rollback", spec=spec, retries=2, retry_delay=timedelta(seconds=20))
        restore = RestoreChunkOperator.partial(
            task_id="restore", on_failure_callback=_failure(spec), **mapped_chunk_settings(spec),
        ).expand(chunk=plan.output)
        finish = FinishRollbackOperator(task_id="finish", spec=spec, trigger_rule="none_failed")
        restore >> finish
    return dag


def clashes(specs: list[Spec]) -> list[SpecError]:
    """A spec named ``x_rollback`` would take the DAG id of ``x``'s rollback; say so instead of hiding one.

    :param specs: every loaded spec.
    :return: one SpecError (naming the file and ``name``) per clash; empty when there is none.
    """
    taken = {s.dag_id: s for s in specs}
    return [SpecError(taken[rollback_dag_id(s)].source, "name",
                      f"the DAG id {rollback_dag_id(s)} is also the rollback DAG of {s.source} (undo: true); rename one")
            for s in specs if s.undo and rollback_dag_id(s) in taken]
