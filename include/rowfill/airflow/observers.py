"""The batch observers every chunk run gets, and the task-instance bookkeeping the UI links need.

Kept out of the runner so the batch loop stays about data: observers learn of each committed batch
(``runner.BatchObserver``) and record rates (``rates``) and metrics (``metrics``) on the side.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from rowfill.airflow.metrics import BatchMetrics
from rowfill.spec.spec import Spec
from rowfill.store.checkpoint import CheckpointStore
from rowfill.store.rates import RateRecorder


def standard_observers(engine: Engine, spec: Spec) -> list:
    """The observers of a chunk run in Airflow: rate samples (``RateRecorder``) and metrics (``BatchMetrics``,
    replica lag measured every ``spec.progress_every`` seconds)."""
    # BatchMetrics last: it measures the gap between batches from the moment the others are done.
    return [RateRecorder(engine), BatchMetrics(engine, lag_every=spec.progress_every)]


def remember_task_instance(engine: Engine, backfill: str, chunk_no: int, map_index: int | None) -> None:
    """Note the Airflow map index of this attempt: with the run id it names the task instance to clear.

    :param map_index: ``ti.map_index``; None (not a mapped task) records nothing.
    """
    if map_index is None:
        return
    CheckpointStore(engine).note_task_instance(backfill, chunk_no, map_index)
