"""The DAG's trigger form: batch size, pause and dry run for a single run (Airflow Params).

The defaults are the spec's own values, so triggering without touching the form runs the spec
as written. What a run sets here applies to that run only; live knobs (``rowfill set``) still
win over it, because they are the most recent thing someone asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from rowfill.spec.bounds import FIELDS as BOUNDS
from rowfill.spec.durations import parse_duration
from rowfill.spec.spec import Spec

_DURATION = r"^\s*\d+(\.\d+)?\s*(ms|s|min|m|h)?\s*$"


def duration_text(seconds: float) -> str:
    """100ms, 2s, 1.5s: the way people write it in the spec."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def trigger_params(spec: Spec) -> dict[str, Param]:
    """The trigger form's Airflow Params (Airflow docs, "Params"), defaulting to the spec's values:
    ``batch_rows`` (rows), ``pause`` (duration text such as ``100ms``) and ``dry_run``."""
    return {
        "batch_rows": Param(spec.batch_rows, type="integer", minimum=1, maximum=int(BOUNDS["batch_rows"].limit),
                            title="Batch size (rows)",
                            description="Rows per transaction for this run (the start size when target_batch_time adapts it)."),
        "pause": Param(duration_text(spec.pause), type="string", pattern=_DURATION, title="Pause between batches",
                       description="For this run, e.g. 100ms, 2s. Live knobs set with `rowfill set` still win."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Plan and report what would be done (chunks, rows, batches); write nothing."),
    }


def run_overrides(params: Mapping[str, Any] | None, spec: Spec) -> dict:
    """The knobs this run's parameters change relative to the spec.

    :param params: the run's ``params`` (trigger form values).
    :return: ``batch_rows`` (rows) and/or ``pause`` (seconds, a float), only where they differ.
    :raises ValueError: when a value is above its bound (``rowfill.spec.bounds``) or ``pause`` is not a duration.
    """
    params = params or {}
    out: dict[str, float] = {}  # knob -> value: rows (int) or seconds (float)
    rows = params.get("batch_rows")
    if rows is not None and int(rows) != spec.batch_rows:
        out["batch_rows"] = int(BOUNDS["batch_rows"].check(int(rows)))
    pause = params.get("pause")
    if pause is not None and pause != "":
        seconds = parse_duration(pause, BOUNDS["pause"])
        if seconds != spec.pause:
            out["pause"] = seconds
    return out


def is_dry_run(params: Mapping[str, Any] | None) -> bool:
    """Whether the run's ``dry_run`` parameter is on (true, or its text from the REST API: "true", "1", "yes")."""
    value = (params or {}).get("dry_run", False)
    return value is True or str(value).lower() in ("true", "1", "yes")
