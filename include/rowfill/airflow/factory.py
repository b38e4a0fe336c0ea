"""Spec -> DAG. Loading and validating YAML is ``spec``'s job; this module only assembles tasks.

Shape of every backfill DAG::

    plan  ->  chunk[1..N] (mapped, pool + max_active_tis_per_dagrun)  ->  verify  ->  summary

verify's outlet is the table's Airflow Asset (through an alias, ``rowfill.airflow.assets``): a run that
passed verify tells the DAGs scheduled on that table.

Bad specs do not stop good ones: their errors become an import error of a separate DAG file
(shown in Airflow's UI banner and ``airflow dags list-import-errors``), while the good specs'
DAGs load and run normally. "Bad" includes a spec that loads but whose DAG cannot be built (a
duration too long for Python's timedelta, anything Airflow rejects): each spec's DAGs are built
and checked the way Airflow will check them, on their own, so an exception there is that spec's
error and not the whole file's (``build_all``).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from datetime import timedelta
from pathlib import Path

# airflow.sdk exports these lazily (__all__ and its __getattr__ table), but its __init__.pyi stub leaves them out
from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, get_parsing_context  # type: ignore[attr-defined]
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

from rowfill.airflow import alerts, assets
from rowfill.airflow.chunk_settings import mapped_chunk_settings, spec_timedelta
from rowfill.airflow.operators import (
    BackfillChunkOperator,
    BackfillSummaryOperator,
    PlanChunksOperator,
    VerifyBackfillOperator,
)
from rowfill.airflow.rollback_dag import build_rollback_dag, clashes, rollback_dag_id
from rowfill.airflow.runparams import trigger_params
from rowfill.airflow.specs_folder import specs_folder
from rowfill.airflow.stall import StallWatchdogOperator
from rowfill.errors import SpecError, SpecErrors
from rowfill.spec.spec import Spec, load_specs


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
        f"Chunks of {f'{spec.chunk_rows:,} rows' if spec.chunk_rows else f'about {spec.chunk_time:g}s of work'}, "
        f"batches of {spec.batch_rows:,} rows, pause {spec.pause}s, "
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


def build_dag(spec: Spec) -> DAG:
    """The backfill DAG ``rowfill_<name>``: plan -> chunk[1..N] -> verify -> summary (+ watchdog).

    :param spec: a validated spec.
    :return: the DAG, not auto-registered (only ``build_all``'s DAGs are registered).
    :raises SpecError: naming the field when a duration does not fit Airflow's timedelta (``spec_timedelta``);
        anything else Airflow raises propagates, and ``spec_dags`` turns it into this spec's error.
    """
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
        auto_register=False,  # only what build_all hands back is a DAG: never one that failed halfway
    ) as dag:
        plan = PlanChunksOperator(task_id="plan", spec=spec, retries=2, retry_delay=timedelta(seconds=20))
        chunks = BackfillChunkOperator.partial(
            task_id="chunk", on_failure_callback=alerts.on_chunk_failure(spec), **mapped_chunk_settings(spec),
        ).expand(chunk=plan.output)
        # none_failed: when every chunk is already done the mapped task is skipped, and the
        # run should still verify and report instead of skipping to the end.
        verify = VerifyBackfillOperator(task_id="verify", spec=spec, trigger_rule="none_failed", outlets=assets.outlets(spec))
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
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=spec_timedelta(spec, "expected_duration"),
                         callback=AsyncCallback(alerts.run_overdue, kwargs={"spec_source": str(Path(spec.source).resolve())}))


def spec_dags(spec: Spec, taken: AbstractSet[str] = frozenset()) -> dict[str, DAG]:
    """The DAGs of one spec (backfill and, with ``undo: true``, rollback) by DAG id, built and checked
    as Airflow's DAG processor will check them (``DAG.validate`` and serialization;
    ``airflow/dag_processing/dagbag.py``, ``processor.py``), so a DAG Airflow would drop never gets
    that far. ``taken``: every spec's backfill DAG id; a rollback DAG whose id is taken is left out
    (``rollback_dag.clashes`` reports it).

    Raises SpecErrors naming the spec file for anything that goes wrong, and the field when the
    failure is one that knows it (``spec_timedelta``).
    """
    from airflow.serialization.serialized_objects import DagSerialization

    try:
        built = {spec.dag_id: build_dag(spec)}
        if spec.undo and rollback_dag_id(spec) not in taken:
            built[rollback_dag_id(spec)] = build_rollback_dag(spec)
        for dag in built.values():
            dag.validate()
            DagSerialization.to_dict(dag)
    except SpecErrors:
        raise
    except SpecError as exc:
        raise SpecErrors([exc]) from exc
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is this spec's, not every spec's
        problem = " ".join(str(exc).split())[:500] or "(no message)"
        raise SpecErrors([SpecError(spec.source, None, f"Airflow rejects its DAG ({type(exc).__name__}: {problem}); "
                                                       "change the spec so Airflow accepts it")]) from exc
    return built


def build_all(directory=None) -> tuple[dict[str, DAG], list[SpecError]]:
    """Every good spec's DAGs by DAG id, and the errors of every bad spec: those that do not load
    and those whose DAGs cannot be built (``spec_dags``). Each spec is built on its own, so one that
    fails becomes its own error while the other specs' DAGs stay. Never raises for a spec.

    :param directory: the specs folder (default ``specs_folder()``: ``ROWFILL_SPECS_DIR``,
        ``[rowfill] specs_folder``, else ``rowfill/`` in ``[core] dags_folder``).
    """
    specs, errors = load_specs(directory or specs_folder())
    taken = {s.dag_id for s in specs}
    dags: dict[str, DAG] = {}
    for spec in specs:
        try:
            dags.update(spec_dags(spec, taken))
        except SpecErrors as exc:
            errors.extend(exc.errors)
    return dags, [*errors, *clashes(specs)]


def build_task_dag(dag_id: str, directory=None) -> dict[str, DAG]:
    """Only the DAG ``dag_id`` (backfill or rollback), for a task about to run in it; {} when no spec has it.

    Every task process parses the DAG file again to find its DAG (Airflow's task runner runs it
    inside ``_airflow_parsing_context_manager``, ``airflow/sdk/execution_time/task_runner.py``).
    Building and serializing every spec's DAGs there is work done once per task instead of once per
    parse: with many specs it is most of a short task's start (Airflow's "Optimizing DAG parsing
    delays during execution" advice). The DAG processor already checked these DAGs, so the check by
    serialization (``spec_dags``) is not repeated here; a spec that does not load anymore simply has
    no DAG, and Airflow fails the task saying the DAG is missing.

    :param dag_id: the running task's DAG id (``get_parsing_context().dag_id``).
    :param directory: as ``build_all``.
    :returns: ``{dag_id: DAG}``, or ``{}``.
    """
    specs, _ = load_specs(directory or specs_folder())
    taken = {s.dag_id for s in specs}
    for spec in specs:
        if spec.dag_id == dag_id:
            return {dag_id: build_dag(spec)}
        if spec.undo and rollback_dag_id(spec) == dag_id and dag_id not in taken:
            return {dag_id: build_rollback_dag(spec)}
    return {}


def build_dags(directory=None) -> dict[str, DAG]:
    """Every good spec's DAG; bad specs are reported by ``raise_spec_errors`` from a file of their own
    (see ``build_all``). In a task process only the task's own DAG is built (``build_task_dag``).
    ``directory``: as ``build_all``."""
    running = get_parsing_context().dag_id
    if running:
        return build_task_dag(running, directory)
    return build_all(directory)[0]


def raise_spec_errors(directory=None) -> None:
    """Raise all bad specs' errors at once (``directory``: as ``build_all``).

    Airflow marks every DAG of a file that has an import error as stale and refuses to trigger
    it, so the errors must come from a different DAG file than the good DAGs: there they show in
    the UI's import-error banner and in ``airflow dags list-import-errors`` without hiding anything.
    The DAGs built here to find build errors are thrown away (they are not auto-registered).

    :raises SpecErrors: every bad spec's errors, when there is one.
    """
    errors = build_all(directory)[1]
    if errors:
        raise SpecErrors(errors)


def dags_here(namespace: dict) -> None:
    """The whole body of the one-line DAG file ``rowfill init`` writes::

        from rowfill.airflow.factory import dags_here; dags_here(globals())

    Adds every good spec's DAGs to the DAG file's globals, where Airflow's DAG processor finds them.
    The specs folder is ``specs_folder(<the DAG file>)``: configured, else ``rowfill/`` beside the file.

    :param namespace: the DAG file's ``globals()`` (its ``__file__`` locates the default specs folder).
    """
    namespace.update(build_dags(specs_folder(namespace.get("__file__"))))


def spec_errors_here(namespace: dict) -> None:
    """The whole body of the one-line spec-errors DAG file ``rowfill init`` writes::

        from rowfill.airflow.factory import spec_errors_here; spec_errors_here(globals())

    :param namespace: the DAG file's ``globals()`` (its ``__file__`` locates the default specs folder).
    :raises SpecErrors: every bad spec's errors, shown as this file's import error (``raise_spec_errors``).
    """
    raise_spec_errors(specs_folder(namespace.get("__file__")))
