"""Spec -> DAG. Loading and validating YAML is ``spec``'s job; this module only assembles tasks.

Shape of every backfill DAG::

    plan  ->  chunk[1..N] (mapped, pool + max_active_tis_per_dagrun)  ->  verify  ->  summary

Bad specs do not stop good ones: their errors become an import error of a separate DAG file
(shown in Airflow's UI banner and ``airflow dags list-import-errors``), while the good specs'
DAGs load and run normally.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

from rowfill import alerts
from rowfill.errors import SpecErrors
from rowfill.operators import (
    BackfillChunkOperator,
    BackfillSummaryOperator,
    PlanChunksOperator,
    VerifyBackfillOperator,
)
from rowfill.runparams import trigger_params
from rowfill.spec import Spec, load_specs
from rowfill.stall import StallWatchdogOperator

def _doc(spec: Spec) -> str:
    if spec.transform or spec.sink:
        fn = spec.transform or spec.sink
        what = (f"Python {'transform' if spec.transform else 'sink'} `{fn}` receives "
                f"{', '.join(f'`{n}`' for n in spec.select) or 'every column'} per row"
                + (f" and returns `{', '.join(spec.returns)}`" if spec.returns else "") + ".")
    else:
        what = ("\n".join(f"- `{c}` = `{e}`" for c, e in spec.set.items()) if spec.set else f"```sql\n{spec.sql}\n```")
    if spec.undo:
        what += f"\n\nPrevious values are kept (`undo: true`): the DAG `rowfill_{spec.name}_rollback` restores them."
    return (
        f"### rowfill backfill `{spec.name}`\n\n{spec.description}\n\n"
        f"**Table** `{spec.table}` walked by `{spec.key}`"
        f"{f', rows where `{spec.where}`' if spec.where else ''}.\n\n{what}\n\n"
        f"Chunks of {spec.chunk_rows:,} rows, batches of {spec.batch_rows:,} rows, pause {spec.pause}s, "
        f"at most {spec.max_parallel_chunks} chunks at once in pool `{spec.pool_name}`.\n\n"
        f"Spec: `{spec.source}`. A failed chunk resumes from its checkpoint when you clear it."
    )


def _schedule(spec: Spec):
    """Cron schedules wait for their next off-peak time; enabling a DAG at noon must not start a backfill at noon."""
    if spec.schedule and not spec.schedule.startswith("@"):
        # run_immediately=False still runs the last slot if it was within 10% of the period;
        # a zero buffer means "wait for the next slot", always.
        return CronTriggerTimetable(spec.schedule, timezone="UTC", run_immediately=timedelta(0))
    return spec.schedule


def mapped_chunk_settings(spec: Spec) -> dict:
    """What every mapped chunk task shares, backfill or rollback: pool, concurrency, retries, label."""
    return dict(
        spec=spec,
        pool=spec.pool_name,
        max_active_tis_per_dagrun=spec.max_parallel_chunks,
        retries=spec.retries,
        retry_delay=timedelta(seconds=spec.retry_delay),
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(seconds=spec.max_retry_delay),
        map_index_template="{{ task.chunk.label }}",
    )


def build_dag(spec: Spec) -> DAG:
    with DAG(
        dag_id=spec.dag_id,
        description=(spec.description or f"rowfill backfill of {spec.table}")[:200],
        schedule=_schedule(spec),
        catchup=False,
        max_active_runs=1,
        tags=["rowfill", *spec.tags],
        doc_md=_doc(spec),
        on_success_callback=alerts.on_run_outcome(spec, "success"),
        on_failure_callback=alerts.on_run_outcome(spec, "failure"),
        default_args={"owner": "rowfill"},
        deadline=_deadline(spec),
        params=trigger_params(spec),
    ) as dag:
        plan = PlanChunksOperator(task_id="plan", spec=spec, retries=2, retry_delay=timedelta(seconds=20))
        chunks = BackfillChunkOperator.partial(
            task_id="chunk", on_failure_callback=alerts.on_chunk_failure(spec), **mapped_chunk_settings(spec),
        ).expand(chunk=plan.output)
        # none_failed: when every chunk is already done the mapped task is skipped, and the
        # run should still verify and report instead of skipping to the end.
        verify = VerifyBackfillOperator(task_id="verify", spec=spec, trigger_rule="none_failed")
        summary = BackfillSummaryOperator(task_id="summary", spec=spec, trigger_rule="none_failed")
        chunks >> verify >> summary
        if spec.stall_after:
            # Next to the chunks, not after them; deferred at once, so it holds no worker or chunk pool slot.
            plan >> StallWatchdogOperator(task_id="watchdog", spec=spec, retries=2, retry_delay=timedelta(seconds=10))
    return dag


def _deadline(spec: Spec):
    """The expected-duration alert as an Airflow 3 Deadline Alert: the scheduler notices the miss, the
    triggerer runs the callback, even if the run is stuck where no task of ours could report it."""
    if not spec.expected_duration:
        return None
    from pathlib import Path

    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(seconds=spec.expected_duration),
                         callback=AsyncCallback(alerts.run_overdue, kwargs={"spec_source": str(Path(spec.source).resolve())}))


def build_dags(directory=None) -> dict[str, DAG]:
    """Every good spec's DAG; bad specs are reported by ``raise_spec_errors`` from a file of their own."""
    from rowfill.rollback_dag import rollback_dags

    specs, _errors = load_specs(directory)
    return {**{spec.dag_id: build_dag(spec) for spec in specs}, **rollback_dags(specs)}


def raise_spec_errors(directory=None) -> None:
    """Raise all bad specs' errors at once, for ``dags/rowfill_spec_errors.py``.

    Airflow marks every DAG of a file that has an import error as stale and refuses to trigger
    it, so the errors must come from a different DAG file than the good DAGs: there they show in
    the UI's import-error banner and in ``airflow dags list-import-errors`` without hiding anything.
    """
    from rowfill.rollback_dag import clashes

    specs, errors = load_specs(directory)
    errors = [*errors, *clashes(specs)]
    if errors:
        raise SpecErrors(errors)
