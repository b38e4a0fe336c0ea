"""What people are told when a backfill fails, finishes, stalls or runs late, through Airflow callbacks.

The messages carry what someone paged at night needs: which backfill, which chunk (key range),
how far it got, the error, and exactly which task to clear to resume. They always go to the task
or processor log, and to the spec's ``alerts`` notifiers (``rowfill.airflow.notifiers``).

Where each one runs (Airflow 3): a chunk's ``on_failure_callback`` in the worker's task process
after the chunk's *last* retry (retries have their own ``on_retry_callback``, which stays quiet);
the DAG's success/failure callbacks in the DAG processor; the stall alerts in the triggerer
(``rowfill.airflow.stall``); the expected-duration alert as a Deadline Alert callback in the triggerer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from rowfill.airflow.connections import engine_for
from rowfill.airflow.mapped_chunk import task_chunk
from rowfill.airflow.notifiers import Alert, adeliver, deliver
from rowfill.engine.status import statuses
from rowfill.spec.durations import format_duration
from rowfill.spec.spec import Spec, load_spec

log = logging.getLogger("rowfill.alerts")


# -- reading the checkpoint for a message -------------------------------------------------------
@contextmanager
def _engine(spec):
    engine = engine_for(spec.connection)
    try:
        yield engine
    finally:
        engine.dispose()


def current_status(spec: Spec):
    """The backfill's status for a message (``rowfill.engine.status.BackfillStatus``), or None.

    Never raises: an alert must go out even if the database is down (the failure is logged).
    """
    try:
        with _engine(spec) as engine:
            return statuses(engine, [spec.name])[spec.name]
    except Exception as exc:  # noqa: BLE001 - an alert must still go out
        log.warning("rowfill: progress for the %s alert unavailable: %s", spec.name, str(exc).splitlines()[0])
        return None


def _ui_base() -> str | None:
    try:
        from airflow.sdk.configuration import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/") or None
    except Exception:  # noqa: BLE001
        return None


def ti_url(dag_id: str, run_id: str | None, map_index: int | None, base: str | None = None) -> str | None:
    """The Airflow 3 UI page of one mapped chunk task instance (where "Clear" is).

    :param base: the UI's address; default ``[api] base_url`` (Airflow configuration reference).
    :return: the URL, or None when the run, the map index or the base URL is unknown.
    """
    base = _ui_base() if base is None else base
    if run_id is None or map_index is None:
        return None
    return f"{base or ''}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/chunk/mapped/{map_index}"


def _how_far(chunk, key: str) -> str:
    share = f" ({min(chunk.rows_seen / chunk.est_rows, 1):.0%} of the chunk)" if chunk.est_rows else ""
    position = "nothing committed yet" if not chunk.batches else f"committed up to {key} {_cursor_of(chunk)}"
    return (f"{position}: {chunk.rows_seen:,} of ~{chunk.est_rows:,} rows walked{share}, "
            f"{chunk.rows_written:,} written, {chunk.attempts} attempt(s)")


def _cursor_of(chunk) -> str:
    return "?" if chunk.cursor is None else str(chunk.cursor)


def _resume_advice(spec, run_id: str | None, chunks) -> str:
    idx = [c.map_index for c in chunks if c.map_index is not None]
    task_ids = ", ".join(f'["chunk", {i}]' for i in idx) or '"chunk"'
    links = [u for c in chunks if (u := ti_url(spec.dag_id, run_id or c.run_id, c.map_index))]
    ui = f" ({', '.join(links[:5])})" if links and _ui_base() else ""
    return (f"To resume from the checkpoint, fix the cause, then clear the failed chunk task(s): Airflow UI → DAG "
            f"{spec.dag_id} → run {run_id or '?'} → task 'chunk' → the failed map index{ui} → Clear (with downstream); "
            f"or `airflow tasks clear {spec.dag_id} -t '^chunk$' --only-failed --downstream -y`; or REST "
            f"POST /api/v2/dags/{spec.dag_id}/clearTaskInstances with "
            f'{{"dry_run": false, "dag_run_id": "{run_id or "..."}", "task_ids": [{task_ids}], "only_failed": true, '
            f'"include_downstream": true}}. Rows before the cursor are not written again.')


# -- the messages -------------------------------------------------------------------------------
def chunk_failed_alert(spec: Spec, context: Mapping[str, Any]) -> Alert:
    """``chunk_failed``: which chunk, how far it got (from the checkpoint), the error, and what to clear.

    :param spec: the backfill.
    :param context: the failure callback's Airflow context (``ti``, ``task``, ``run_id``, ``exception``);
        ``task`` may lack its chunk when the DAG processor runs the callback (``task_chunk``).
    """
    ti = context["ti"]
    chunk_no, task_label = task_chunk(context.get("task"))
    label = task_label or f"map index {ti.map_index}"
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    error = context.get("exception")
    status = current_status(spec)
    chunk = None
    if status is not None:
        # The worker's own callback knows its chunk; when Airflow lost the worker, the DAG processor
        # runs this with the bare mapped task, and the checkpoint's (run, map index) finds the chunk.
        chunk = next((c for c in status.chunks if c.chunk_no == chunk_no), None) if chunk_no is not None else next(
            (c for c in status.chunks if c.run_id == run_id and c.map_index == ti.map_index), None)
        if chunk is not None and task_label is None:
            label = f"chunk {chunk.chunk_no}/{len(status.chunks)} ({chunk.range_text(spec.key)})"
    if chunk is not None:
        chunk.map_index = ti.map_index  # the failing attempt is this task instance, whatever the row says
        how_far = f"It had {_how_far(chunk, spec.key)}."
        overall = (f" The backfill as a whole: {status.rows_seen:,} of ~{status.rows_estimated:,} rows "
                   f"({status.share:.1%}), {status.chunks_done}/{len(status.chunks)} chunks done.")
    else:
        how_far, overall = "(How far it got is unavailable: the checkpoint could not be read.)", ""
    text = (f"rowfill backfill {spec.name!r}: {label} failed after its last retry "
            f"(try {getattr(ti, 'try_number', '?')}). {how_far}{overall} Error: {error}. "
            + _resume_advice(spec, run_id, [chunk] if chunk else []))
    return Alert("chunk_failed", spec.name, f"[rowfill] {spec.name}: {label} failed", text, {
        "dag_id": spec.dag_id, "run_id": run_id, "chunk": _chunk_details(chunk, label) if chunk else {"label": label},
        "error": str(error), "ti_url": ti_url(spec.dag_id, run_id, ti.map_index)})


def _chunk_details(chunk, label: str | None = None) -> dict:
    return {"chunk_no": chunk.chunk_no, "label": label, "lo": chunk.lo, "hi": chunk.hi, "rows_seen": chunk.rows_seen,
            "est_rows": chunk.est_rows, "rows_written": chunk.rows_written, "status": chunk.status,
            "map_index": chunk.map_index, "last_error": chunk.last_error}


def run_outcome_alert(spec: Spec, context: Mapping[str, Any], outcome: str) -> Alert:
    """``run_succeeded`` or ``run_failed`` with the backfill's progress and, on failure, each failed chunk.

    :param context: the DAG run callback's context (``dag_run``, ``reason``).
    :param outcome: ``success`` or ``failure``.
    """
    run = context.get("dag_run")
    run_id = getattr(run, "run_id", None) or context.get("run_id")
    status = current_status(spec)
    progress = (f"{status.rows_seen:,} of ~{status.rows_estimated:,} rows walked ({status.share:.1%}), "
                f"{status.rows_written:,} written, {status.chunks_done}/{len(status.chunks)} chunks done"
                if status else "progress unavailable (the checkpoint could not be read)")
    if outcome == "success":
        text = f"rowfill backfill {spec.name!r}: run {run_id} succeeded: {progress}. The 'summary' task's XCom has rows and rate."
        return Alert("run_succeeded", spec.name, f"[rowfill] {spec.name}: run succeeded", text,
                     {"dag_id": spec.dag_id, "run_id": run_id, "progress": status.to_dict(chunks=False) if status else None})
    failed = [c for c in status.chunks if c.status == "failed"] if status else []
    lines = [f"  - chunk {c.chunk_no} ({c.range_text(spec.key)}): {_how_far(c, spec.key)}; error: {c.last_error}"
             for c in failed[:20]]
    more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
    text = (f"rowfill backfill {spec.name!r}: run {run_id} failed ({context.get('reason') or 'a task failed'}). "
            f"Progress: {progress}.\n"
            + ("Failed chunks:\n" + "\n".join(lines) + more + "\n" if lines else "")
            + _resume_advice(spec, run_id, failed))
    return Alert("run_failed", spec.name, f"[rowfill] {spec.name}: run failed", text, {
        "dag_id": spec.dag_id, "run_id": run_id, "reason": context.get("reason"),
        "failed_chunks": [_chunk_details(c) for c in failed[:100]],
        "progress": status.to_dict(chunks=False) if status else None})


def stall_alert(spec, event: str, run_id: str | None, stalled_for: float, status) -> Alert:
    """``stalled``/``still_stalled``: no batch committed for ``stalled_for`` seconds while chunks run or wait."""
    progress = (f"{status.rows_seen:,} of ~{status.rows_estimated:,} rows ({status.share:.1%}), "
                f"{status.chunks_done}/{len(status.chunks)} chunks done, {status.chunks_running} running, "
                f"{status.chunks_pending} waiting, {status.chunks_failed} failed" if status else "progress unavailable")
    if event == "progressing_again":
        text = f"rowfill backfill {spec.name!r}: progressing again after a stall of {format_duration(stalled_for)}; {progress}."
        return Alert(event, spec.name, f"[rowfill] {spec.name}: progressing again", text,
                     {"dag_id": spec.dag_id, "run_id": run_id, "stalled_seconds": round(stalled_for, 1)})
    running = [c for c in status.chunks if c.status == "running"] if status else []
    stale = [c for c in status.chunks if c.status == "stale"] if status else []  # rowfill.engine.lease
    stale_text = ", ".join(f"chunk {c.chunk_no} on {c.worker or '?'}" for c in stale[:10])
    where = "; ".join(f"chunk {c.chunk_no} ({c.range_text(spec.key)}) on {c.worker or '?'} at {c.rows_seen:,} rows"
                      for c in running[:10]) or "no chunk is running: chunks are waiting for a slot (pool, "\
                                                "max_parallel_chunks, executor) or for a retry"
    again = " still" if event == "still_stalled" else ""
    text = (f"rowfill backfill {spec.name!r}{again} stalled: no checkpoint progress for {format_duration(stalled_for)} "
            f"(stall_after {format_duration(spec.stall_after)}) in run {run_id}. {progress}. Running: {where}. "
            + (f"Stale (marked running, but the runner's lease ran out: its process is gone; the next attempt takes "
               f"it over): {stale_text}. " if stale else "")
            + (f"Last error: chunk {status.last_error_chunk}: {status.last_error}. " if status and status.last_error else "")
            + "Look for lock waits or long transactions on the target table (pg_stat_activity), a full pool, "
              "or a paused/throttled backfill; `rowfill status " + spec.name + " --chunks` shows each chunk.")
    return Alert(event, spec.name, f"[rowfill] {spec.name}:{again} stalled for {format_duration(stalled_for)}", text,
                 {"dag_id": spec.dag_id, "run_id": run_id, "stalled_seconds": round(stalled_for, 1),
                  "progress": status.to_dict(chunks=False) if status else None})


def overdue_alert(spec: Spec, run_id: str | None, status) -> Alert:
    """``overdue``: the run is past ``expected_duration`` (seconds); a heads-up, the run goes on.

    :param spec: the spec as its file reads now: the deadline was set when the run was queued, so
        ``expected_duration`` may have been removed since (the alert says so instead of a duration).
    :param status: the backfill's status, or None when the checkpoint could not be read.
    """
    expected = (f" of {format_duration(spec.expected_duration)}" if spec.expected_duration is not None
                else " (since removed from the spec)")
    progress = (f"{status.rows_seen:,} of ~{status.rows_estimated:,} rows ({status.share:.1%}), "
                f"{status.rows_per_second:,.0f} rows/s now"
                + (f", ETA {format_duration(status.eta_seconds)}" if status.eta_seconds else "")
                if status else "progress unavailable")
    text = (f"rowfill backfill {spec.name!r}: run {run_id} is still not finished after its expected duration"
            f"{expected}. {progress}. It keeps running; this is a heads-up.")
    return Alert("overdue", spec.name, f"[rowfill] {spec.name}: running longer than expected", text,
                 {"dag_id": spec.dag_id, "run_id": run_id, "progress": status.to_dict(chunks=False) if status else None})


# -- the Airflow callbacks ----------------------------------------------------------------------
def on_chunk_failure(spec: Spec) -> Callable[[Mapping[str, Any]], None]:
    """The chunk task's ``on_failure_callback``: runs after the last retry (Airflow docs, "Callbacks")."""
    def callback(context):
        """Send ``chunk_failed`` to the log and the spec's notifiers."""
        deliver(spec.alerts, chunk_failed_alert(spec, context), context)
    return callback


def on_run_outcome(spec: Spec, outcome: str) -> Callable[[Mapping[str, Any]], None]:
    """The DAG's ``on_success_callback`` (``outcome`` ``success``) or ``on_failure_callback`` (``failure``)."""
    def callback(context):
        """Send the run's outcome to the log and the spec's notifiers."""
        deliver(spec.alerts, run_outcome_alert(spec, context, outcome), context)
    return callback


async def run_overdue(context=None, *, spec_source: str, **_):
    """Deadline Alert callback (runs in the triggerer): the run exceeded the spec's expected_duration."""
    from asgiref.sync import sync_to_async

    spec = load_spec(spec_source)
    run = (context or {}).get("dag_run") or {}
    status = await sync_to_async(current_status, thread_sensitive=False)(spec)
    await adeliver(spec.alerts, overdue_alert(spec, run.get("dag_run_id") or run.get("run_id"), status), context)


# Kept for callers of the foundation's API.
def chunk_failure_message(spec: Spec, context: Mapping[str, Any]) -> str:
    """The text of ``chunk_failed_alert``."""
    return chunk_failed_alert(spec, context).text


def run_message(spec: Spec, context: Mapping[str, Any], outcome: str) -> str:
    """The text of ``run_outcome_alert``."""
    return run_outcome_alert(spec, context, outcome).text
