"""How the Airflow tasks honour windows, pause/cancel, trigger parameters and dry runs.

The operators stay thin and call in here; the decisions themselves live in ``chunk_task``
(free of Airflow) and this module only turns them into Airflow outcomes:

- a chunk that must wait **defers** to the triggerer (``triggers.ControlTrigger``): it gives back
  its worker slot and its pool slot, keeps its cursor, and resumes in ``execute_complete``;
- a **cancelled** backfill's chunks end *skipped* (cursor kept), verify is skipped, the summary
  says "cancelled" and the run ends without a failure;
- a **critical gate** fails the chunk without Airflow retries (retrying into a database in
  trouble is what ``critical`` is there to prevent); clear the task once it has recovered;
- a **dry run** plans read-only, reports, and maps no chunk at all;
- Airflow's own **DAG pause toggle** stops a running chunk at the next batch boundary
  (``dag_pause.DagPauseWatch``); the chunk defers, the scheduler holds it ``scheduled`` while the DAG
  is paused (no worker or pool slot), and un-pausing resumes it from its cursor in the same run.
"""

from __future__ import annotations

from datetime import UTC

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from rowfill.airflow.connections import target_engine
from rowfill.airflow.dag_pause import DagPauseWatch
from rowfill.airflow.observers import remember_task_instance, standard_observers
from rowfill.airflow.runparams import is_dry_run, run_overrides
from rowfill.airflow.triggers import ControlTrigger
from rowfill.engine import reconnect
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.control import ControlStore, stop_reason
from rowfill.engine.probes import GateCritical
from rowfill.engine.rollback import rollback_target
from rowfill.engine.undo import RestoreWriter, rollback_spec
from rowfill.errors import ChunkFailed, SpecError

POLL_INTERVAL = 5.0  # seconds between control-row reads of a deferred chunk


def _control(engine, spec):
    """The backfill's control row, read through a database restart (``rowfill.engine.reconnect``)."""
    return reconnect.call(lambda: ControlStore(engine).get(spec.name), spec, "reading pause/cancel")


def _params(context) -> dict:
    return dict(context.get("params") or {})


def attempt(op, context, event=None):
    """One go of a backfill chunk task (``operators.BackfillChunkOperator``), and of its return after deferring.

    :param op: the operator (``spec``, ``chunk``: a ``MappedChunk``, ``log``, ``defer``).
    :param context: the Airflow task context (``run_id``, ``ti``, ``params``).
    :param event: the trigger's event when back from deferring (None on the first go).
    :returns: the chunk's XCom summary (chunk_no, status, rows_seen, rows_written, batches, seconds).
    :raises AirflowSkipException: the backfill is cancelled. :raises TaskDeferred: (``op.defer``) paused
        (``rowfill pause`` or the Airflow DAG's toggle) or outside the window.
    :raises AirflowFailException: a critical gate or a changed table (no retries).
    :raises ChunkFailed: any other failure of the chunk (Airflow retries it from the checkpoint).
    """
    result = _go(op, context, event, op.spec, lambda engine: {})
    return {"chunk_no": result.chunk_no, "status": result.status, "rows_seen": result.rows_seen,
            "rows_written": result.rows_written, "batches": result.batches, "seconds": round(result.seconds, 3)}


def attempt_restore(op, context, event=None):
    """One go of a rollback chunk task (``rollback_dag.RestoreChunkOperator``): the same chunk path as
    ``attempt``, so pause, cancel, windows, gates and metrics apply, with the rollback's own control
    row (``rowfill pause``/``cancel`` of ``NAME.rollback``) and ``undo.RestoreWriter``.

    Parameters and what is raised: as ``attempt``.
    :returns: the XCom summary (chunk_no, status, records, restored, seconds).
    """
    def restore(engine):
        """The rollback's writer for ``_go``: ``RestoreWriter`` over the forward table pinned at planning.

        :param engine: the target database.
        :returns: ``run_chunk`` keyword arguments (``writer``, and ``check_table=False``: the undo log is the target).
        """
        forward = rollback_target(engine, op.spec)  # the table pinned when the rollback was planned
        return {"writer": RestoreWriter(rb, forward), "check_table": False}

    rb = rollback_spec(op.spec)
    result = _go(op, context, event, rb, restore)
    return {"chunk_no": result.chunk_no, "status": result.status, "records": result.rows_seen,
            "restored": result.rows_written, "seconds": round(result.seconds, 3)}


def _go(op, context, event, spec, how):
    chunk = op.chunk
    if event:
        op.log.info("%s: back from waiting (%s)", chunk.label, event.get("event") if isinstance(event, dict) else event)
    ti = context.get("ti")
    # Airflow's DAG pause toggle, asked between batches (no answer, e.g. no execution API: never stops)
    dag_paused = DagPauseWatch(ti, op.dag_id, logger=op.log) if hasattr(ti, "get_dag") else None
    with target_engine(spec) as engine:
        map_index = getattr(ti, "map_index", None)
        reconnect.call(lambda: remember_task_instance(engine, spec.name, chunk.chunk_no, map_index), spec,
                       "recording the task instance", op.log)
        try:
            outcome = run_chunk(engine, spec, chunk.chunk_no, label=chunk.label, run_id=context["run_id"],
                                logger=op.log, overrides=run_overrides(_params(context), spec),
                                observers=standard_observers(engine, spec), should_stop=dag_paused, **how(engine))
        except ChunkFailed as exc:
            if isinstance(exc.__cause__, GateCritical):
                raise AirflowFailException(str(exc)) from exc
            raise
        except SpecError as exc:  # e.g. the table changed since planning: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
    if outcome.kind == "cancelled":
        raise AirflowSkipException(f"{chunk.label}: {outcome.reason}; cursor kept. `rowfill resume {spec.name}` "
                                   "and trigger the DAG again to continue.")
    if outcome.kind == "interrupted":  # only DagPauseWatch interrupts here: the DAG was paused
        op.log.info("%s: %s; stopped at a batch boundary, cursor kept", chunk.label, dag_paused.reason())
        # fires at once: the task goes back to `scheduled`, where the scheduler keeps it until the DAG is un-paused
        op.defer(trigger=ControlTrigger(spec.connection, spec.name, dag_paused=True, poll_interval=POLL_INTERVAL),
                 method_name="execute_complete")
    if outcome.kind == "defer":
        until = outcome.until.astimezone(UTC).isoformat() if outcome.until else None
        op.defer(trigger=ControlTrigger(spec.connection, spec.name, until=until, wait_for_resume=until is None,
                                        poll_interval=POLL_INTERVAL),
                 method_name="execute_complete")
    return outcome.result


def before_plan(engine, spec, context, log):
    """A cancelled backfill plans nothing (dry runs never get here: see operators). None = plan as usual.

    :param engine: the target database. :param spec: the backfill.
    :param context: / :param log: the task's Airflow context and logger (unused here; the hook's signature).
    :returns: None: plan as usual.
    :raises AirflowSkipException: when the backfill is cancelled, so the run ends skipped with the way to resume
        (Airflow docs, "Special exceptions").
    """
    control = _control(engine, spec)
    if control.state == "cancelled":
        raise AirflowSkipException(f"backfill {spec.name} is {stop_reason(control)}; nothing planned. "
                                   f"`rowfill resume {spec.name}` to run it again.")
    return None


def before_verify(engine, spec, context) -> None:
    """Skip the verify task when there is nothing to verify: a dry run, or a cancelled backfill.

    :param engine: the target database. :param spec: the backfill.
    :param context: the task's Airflow context (its ``params`` say whether this is a dry run).
    :raises AirflowSkipException: in a dry run, or when the backfill is cancelled (unfinished chunks keep
        their cursors) (Airflow docs, "Special exceptions").
    """
    if is_dry_run(_params(context)):
        raise AirflowSkipException("dry run: nothing was written, nothing to verify")
    control = _control(engine, spec)
    if control.state == "cancelled":
        raise AirflowSkipException(f"backfill {spec.name} is {stop_reason(control)}; unfinished chunks keep their "
                                   "cursors, so there is nothing to verify yet")


def dry_run_summary(context):
    """The dry-run report the plan task pushed to XCom (key ``dry_run``), or None outside a dry run.

    :param context: the task's Airflow context.
    :returns: the report as pushed by the plan task, or None: summarise as usual.
    """
    if not is_dry_run(_params(context)):
        return None
    return context["ti"].xcom_pull(task_ids="plan", key="dry_run")


def annotate_summary(engine, spec, summary: dict, log) -> dict:
    """Add the backfill's control state to the run summary and log why it is not running, if it is not.

    :param engine: the target database. :param spec: the backfill.
    :param summary: the summary dict, changed in place. :param log: the task's logger.
    :returns: ``summary`` with ``control`` set to ``running``, ``paused`` or ``cancelled``.
    """
    control = _control(engine, spec)
    summary["control"] = control.state
    if control.state != "running":
        log.info("%s: %s", spec.name, stop_reason(control))
    return summary
