"""The planned chunk crosses XCom as JSON and reaches the mapped chunk task as a typed ``MappedChunk``:
what the planner writes is what the task reads, field for field, and anything else is refused with advice."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jinja2
import pytest

from helpers import spec_for
from rowfill.airflow.mapped_chunk import MappedChunk, task_chunk
from rowfill.airflow.operators import BackfillChunkOperator
from rowfill.airflow.rollback_dag import RestoreChunkOperator
from rowfill.engine.plan import PlannedChunk


def through_xcom(value):
    """What a JSON XCom backend hands back (tuples become lists)."""
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("lo, hi, key", [(None, 1000, "id"), (1000, 2000, "id"),
                                         ((3, 17), (4, 2), "(tenant_id, id)")])
def test_what_the_planner_writes_is_what_the_chunk_task_reads(lo, hi, key):
    planned = PlannedChunk(backfill="orders_total", chunk_no=2, of=5, lo=lo, hi=hi, est_rows=1000, key=key)
    chunk = MappedChunk.from_xcom(through_xcom(planned.to_xcom()))
    assert (chunk.backfill, chunk.chunk_no, chunk.of, chunk.est_rows, chunk.key) == ("orders_total", 2, 5, 1000, key)
    assert chunk.label == planned.label
    assert chunk.to_xcom() == through_xcom(planned.to_xcom())
    assert MappedChunk.from_xcom(chunk.to_xcom()) == chunk


@pytest.mark.parametrize("value", [None, [1, 2], {"chunk_no": 1, "label": "chunk 1/1"},
                                   {"backfill": "b", "chunk_no": "1", "label": "chunk 1/1"},
                                   {"backfill": "b", "chunk_no": True, "label": "chunk 1/1"}])
def test_a_value_that_is_not_a_planned_chunk_is_refused_with_advice(value):
    with pytest.raises(ValueError, match="not a planned chunk .*clear the plan task"):
        MappedChunk.from_xcom(value)


@pytest.mark.parametrize("operator", [BackfillChunkOperator, RestoreChunkOperator])
def test_mapped_operators_hold_a_typed_chunk_that_labels_the_map_index(tmp_path, operator):
    spec = spec_for(tmp_path, undo=True)
    planned = PlannedChunk(backfill=spec.name, chunk_no=3, of=4, lo=2000, hi=3000, est_rows=1000, key="id")
    op = operator(task_id="chunk", spec=spec, chunk=through_xcom(planned.to_xcom()))
    assert isinstance(op.chunk, MappedChunk) and op.chunk.chunk_no == 3
    # the DAG's map_index_template, rendered the way Airflow renders it: against the task
    assert jinja2.Template("{{ task.chunk.label }}").render(task=op) == planned.label
    assert task_chunk(op) == (3, planned.label)


def test_a_failure_callback_without_a_chunk_knows_nothing_rather_than_failing():
    assert task_chunk(SimpleNamespace()) == (None, None)
    assert task_chunk(None) == (None, None)
    assert task_chunk(SimpleNamespace(chunk={"chunk_no": 1, "label": "chunk 1/1"})) == (1, "chunk 1/1")
