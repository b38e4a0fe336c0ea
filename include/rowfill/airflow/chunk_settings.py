"""What every mapped chunk task shares, backfill or rollback: pool, concurrency, retries, label,
and Airflow's cap on how many of them one run may map.

Kept apart from the DAG factory so the backfill DAG (``factory``) and the rollback DAG
(``rollback_dag``) both build on it without importing each other.
"""

from __future__ import annotations

from datetime import timedelta

from rowfill.engine.plan import DEFAULT_MAX_MAP_LENGTH
from rowfill.errors import SpecError
from rowfill.spec.spec import Spec


def max_map_length() -> int:
    """Airflow's cap on mapped task instances (``[core] max_map_length``); the plan must never exceed it.

    Outside an Airflow installation that can be configured, Airflow's default (1024).
    """
    try:
        # Imported here: the `rowfill` command reads this once per plan and otherwise never
        # pays for importing Airflow's configuration.
        from airflow.configuration import conf

        return conf.getint("core", "max_map_length", fallback=DEFAULT_MAX_MAP_LENGTH)
    except Exception:  # outside Airflow (CLI, tests): Airflow's default
        return DEFAULT_MAX_MAP_LENGTH


def spec_timedelta(spec: Spec, field: str) -> timedelta:
    """The duration field ``field`` of ``spec`` (seconds, a float) as the timedelta Airflow wants.

    Raises SpecError naming the spec file and the field when it does not fit in a timedelta
    (more than 999,999,999 days; Python's ``datetime.timedelta.max``), instead of the bare
    OverflowError that would name neither.
    """
    seconds = getattr(spec, field)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise SpecError(spec.source, field, f"{seconds:.3g} s is longer than Airflow can hold (at most "
                                            f"{timedelta.max.days:,} days); give a shorter duration") from None


def mapped_chunk_settings(spec: Spec) -> dict:
    """What every mapped chunk task shares, backfill or rollback: pool, concurrency, retries, label."""
    return dict(
        spec=spec,
        pool=spec.pool_name,
        max_active_tis_per_dagrun=spec.max_parallel_chunks,
        retries=spec.retries,
        retry_delay=spec_timedelta(spec, "retry_delay"),
        retry_exponential_backoff=2.0,
        max_retry_delay=spec_timedelta(spec, "max_retry_delay"),
        map_index_template="{{ task.chunk.label }}",
    )
