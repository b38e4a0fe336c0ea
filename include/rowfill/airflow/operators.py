"""Airflow task semantics for rowfill; the SQL lives in the library modules these call.

Each operator holds the validated spec it was built from (workers re-parse the DAG file, so the
spec is read from the same YAML the DAG was made of) and opens its own engine for the duration
of one task: no state is shared between tasks except through the checkpoint store and XCom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from rowfill.airflow import assets, task_control
from rowfill.airflow.chunk_settings import max_map_length
from rowfill.airflow.connections import target_engine
from rowfill.airflow.mapped_chunk import MappedChunk
from rowfill.airflow.pools import check_pool
from rowfill.engine import reconnect
from rowfill.engine.dryrun import dry_run
from rowfill.engine.plan import plan_backfill
from rowfill.engine.report import backfill_summary
from rowfill.engine.resolve import pinned_spec
from rowfill.engine.verify import verify_backfill
from rowfill.spec.spec import Spec


def is_dry_run(context: Mapping[str, Any]) -> bool:
    """Whether this run was triggered with the ``dry_run`` parameter (``rowfill.airflow.runparams``).

    :param context: the task's Airflow context; its ``params`` hold the trigger parameters.
    """
    return bool((context.get("params") or {}).get("dry_run"))


def skip_if_dry_run(context: Mapping[str, Any]) -> None:
    """End the task *skipped* in a dry run, which writes nothing and so has nothing to check.

    :param context: the task's Airflow context.
    :raises AirflowSkipException: in a dry run (Airflow docs, "Special exceptions").
    """
    if is_dry_run(context):
        raise AirflowSkipException("dry run: nothing was changed")


def dry_run_task(spec: Spec, context: Mapping[str, Any], log) -> list:
    """The plan task of a ``dry_run`` trigger: log the report, push it to XCom, map no chunk.

    :param spec: the backfill.
    :param context: the task's Airflow context; the report goes to XCom key ``dry_run`` of its ``ti``.
    :param log: the task's logger.
    :return: an empty list, so the mapped chunk task has nothing to run.
    """
    with target_engine(spec) as engine:
        report = dry_run(engine, spec, limit=max_map_length())
    log.info("%s", report.render())
    context["ti"].xcom_push(key="dry_run", value=report.to_dict())
    return []


class SpecOperator(BaseOperator):
    """An operator made from one validated spec; every rowfill task is one.

    The hook-and-operator split of Airflow's common-sql provider: the library modules
    (``rowfill.engine``, ``rowfill.store``) do the I/O, the operator does task semantics (skip,
    defer, fail without retry, what goes to XCom). Nothing is templated: every value comes from the
    validated spec, and Jinja rendering would read ``{{`` in a spec's SQL as a template.

    :param spec: the validated backfill this task belongs to (workers re-parse the DAG file, so it is
        read from the same YAML the DAG was built from).
    :param kwargs: ``BaseOperator`` arguments (``task_id``, ``retries``, ``pool``, ...).
    """

    template_fields: Sequence[str] = ()

    def __init__(self, *, spec: Spec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec


class PlanChunksOperator(SpecOperator):
    """Plan (or resume) the chunks; the returned list is what the chunk task is mapped over.

    Returns one JSON mapping per chunk (``PlannedChunk.to_xcom``, read back as ``MappedChunk``), at
    most ``[core] max_map_length`` of them; a later run plans the rest. In a dry run, the report.

    :param spec: the backfill.
    """

    ui_color = "#e8f1fb"

    def execute(self, context) -> list[dict]:
        """Plan, or resume the stored plan (``plan_backfill``); raises AirflowSkipException when the backfill is
        cancelled, PoolMissing when its pool does not exist.
        """
        spec = self.spec
        if is_dry_run(context):
            return dry_run_task(spec, context, self.log)
        check_pool(spec, self.log)
        with target_engine(spec) as engine:
            if (early := task_control.before_plan(engine, spec, context, self.log)) is not None:
                return early
            chunks = plan_backfill(engine, spec, limit=max_map_length(), log=self.log)
        est = sum(c.est_rows for c in chunks)
        self.log.info("%s: %d chunks to run (~%s rows in their ranges), at most %d at once in pool %r",
                      spec.name, len(chunks), f"{est:,}", spec.max_parallel_chunks, spec.pool_name)
        return [c.to_xcom() for c in chunks]


class BackfillChunkOperator(SpecOperator):
    """One mapped instance per chunk: batches from the chunk's checkpoint cursor to its upper bound.

    Waits (a closed window, a pause) defer to the triggerer and come back in ``execute_complete``
    (Airflow docs, "Deferrable Operators & Triggers"); see ``rowfill.airflow.task_control``.

    :param spec: the backfill.
    :param chunk: one item of the plan task's XCom (``expand(chunk=plan.output)``), read as a
        ``MappedChunk``; raises ValueError when it is not a planned chunk.
    """

    ui_color = "#dff5e1"

    def __init__(self, *, chunk: MappedChunk | Mapping[str, Any], **kwargs):
        super().__init__(**kwargs)
        self.chunk = MappedChunk.from_xcom(chunk)

    def execute(self, context) -> dict:
        """Run the chunk from its cursor (``task_control.attempt``): defers to wait, raises AirflowSkipException
        when cancelled, AirflowFailException (no retry) for a critical gate or a changed table.
        """
        return task_control.attempt(self, context)

    def execute_complete(self, context, event=None) -> dict:
        """Back from the triggerer (window opened, backfill resumed or cancelled): go again from the cursor."""
        return task_control.attempt(self, context, event)


class VerifyBackfillOperator(SpecOperator):
    """Fail loudly if a chunk is unfinished or rows anywhere in the table still match ``where``.

    Returns ``{"chunks": n, "remaining": rows still matching where, or None without where, "asset": URI}``;
    skipped in a dry run and when the backfill is cancelled. Once verify has passed, the table's Airflow
    Asset gets an event (``rowfill.airflow.assets``; declare ``outlets=assets.outlets(spec)``), so DAGs
    scheduled on the table run next.

    :param spec: the backfill.
    """

    ui_color = "#fff4d6"

    def execute(self, context) -> dict:
        """Check every chunk is done and, with ``where``, that no row matches it; raises VerificationFailed
        (``rowfill.engine.verify``) otherwise.
        """
        skip_if_dry_run(context)
        with target_engine(self.spec) as engine:
            task_control.before_verify(engine, self.spec, context)
            result = verify_backfill(engine, self.spec)
            # the table planned on, schema-qualified, names the Asset
            spec = reconnect.call(lambda: pinned_spec(engine, self.spec), self.spec, "checking the planned table", self.log)
            url = engine.url
        if result.remaining is None:
            self.log.info("%s: all %d chunks done (no `where` to re-check)", self.spec.name, result.chunks)
        else:
            self.log.info("%s: all %d chunks done; no row of the table matches `where` any more", self.spec.name, result.chunks)
        uri = assets.emit_table_event(context, url, spec, {"backfill": spec.name, "run_id": context["run_id"],
                                                            "chunks": result.chunks})
        if uri:
            self.log.info("%s: Asset event for %s", spec.name, uri)
        return {"chunks": result.chunks, "remaining": result.remaining, "asset": uri}


class BackfillSummaryOperator(SpecOperator):
    """Rows, duration and rate of the backfill, pushed to XCom for people and downstream tools.

    :param spec: the backfill.
    """

    ui_color = "#efe6fb"

    def execute(self, context) -> dict | None:
        """The run's summary (rows, seconds, rows per second, control state); in a dry run, the plan's report."""
        if (dry := task_control.dry_run_summary(context)) is not None:
            return dry  # the dry run's report, as the plan task made it
        with target_engine(self.spec) as engine:
            # the table planned on, still the same relation
            spec = reconnect.call(lambda: pinned_spec(engine, self.spec), self.spec, "checking the planned table", self.log)
            summary = reconnect.call(lambda: backfill_summary(engine, spec.name, run_id=context["run_id"]), spec,
                                     "reading the summary", self.log)
            self.log.info("%s (table %s)", summary.line(), spec.table)
            return task_control.annotate_summary(engine, spec, {**summary.to_dict(), "table": str(spec.table)}, self.log)
