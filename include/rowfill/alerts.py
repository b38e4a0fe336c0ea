"""What people are told when a backfill fails or finishes, through Airflow callbacks.

The messages carry what someone paged at night needs: which backfill, which chunk (key range),
how far it got, the error, and exactly which task to clear to resume.
"""

from __future__ import annotations

import logging

log = logging.getLogger("rowfill.alerts")


def _chunk_progress(spec, chunk_no: int) -> str:
    """Best effort: the checkpoint says how far the chunk got; an alert must never fail because of it."""
    try:
        from rowfill.checkpoint import CheckpointStore
        from rowfill.db import engine_for

        engine = engine_for(spec.connection)
        try:
            row = CheckpointStore(engine).chunk(spec.name, chunk_no)
        finally:
            engine.dispose()
        share = f" ({row.rows_seen / row.est_rows:.0%} of the chunk)" if row.est_rows else ""
        return f"It got to {spec.key} {row.position}{share}, {row.rows_written:,} rows written, after {row.attempts} attempts."
    except Exception as exc:  # noqa: BLE001 - an alert must still go out
        return f"(progress unavailable: {exc})"


def chunk_failure_message(spec, context) -> str:
    ti = context["ti"]
    chunk = getattr(context.get("task"), "chunk", None) or {}
    label = chunk.get("label", f"map index {ti.map_index}")
    error = context.get("exception")
    progress = _chunk_progress(spec, chunk["chunk_no"]) if "chunk_no" in chunk else ""
    run_id = context.get("run_id") or getattr(ti, "run_id", "")
    return (
        f"rowfill backfill {spec.name!r}: {label} failed after its last retry. {progress} Error: {error}. "
        f"Fix the cause, then resume from the checkpoint by clearing that chunk: Airflow UI → DAG {spec.dag_id} → "
        f"run {run_id} → task 'chunk' → [{label}] → Clear; or "
        f"`airflow tasks clear {spec.dag_id} -t '^chunk$' --only-failed --downstream -y`."
    )


def run_message(spec, context, outcome: str) -> str:
    run = context.get("dag_run")
    run_id = getattr(run, "run_id", None) or context.get("run_id", "")
    if outcome == "success":
        return f"rowfill backfill {spec.name!r}: run {run_id} succeeded; see the 'summary' task's XCom for rows and rate."
    return (f"rowfill backfill {spec.name!r}: run {run_id} failed ({context.get('reason') or 'a task failed'}). "
            f"Failed chunks keep their checkpoints; clear them in the Airflow UI or with "
            f"`airflow tasks clear {spec.dag_id} --only-failed --downstream -y` to resume.")


def on_chunk_failure(spec):
    def callback(context):
        log.error("%s", chunk_failure_message(spec, context))
    return callback


def on_run_outcome(spec, outcome: str):
    def callback(context):
        (log.info if outcome == "success" else log.error)("%s", run_message(spec, context, outcome))
    return callback
