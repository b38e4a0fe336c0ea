"""The planned chunk as a mapped chunk task receives it: a typed value read from the plan task's XCom.

The plan task (``plan`` or ``plan_rollback``) returns a list of plain JSON mappings, one per
chunk (``rowfill.engine.plan.PlannedChunk.to_xcom``); Airflow maps the chunk task over that list
and hands each instance one mapping as its ``chunk`` argument (Airflow docs, "Dynamic Task
Mapping"). XCom carries JSON, not the class: values stay readable in the UI's XCom tab and need
no ``[core] allowed_deserialization_classes`` entry. The operator turns the mapping into a
``MappedChunk`` once, in its constructor, so no task reads ``chunk["chunk_no"]``.

What a chunk task needs is its identity (backfill, chunk number) and its label for logs and the
UI's map index; its progress lives in the checkpoint table, never in XCom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_REQUIRED = ("backfill", "chunk_no", "label")


@dataclass(frozen=True)
class MappedChunk:
    """One planned chunk of a backfill (or of its rollback), as read from XCom.

    ``lo``/``hi`` are the chunk's key bounds as JSON values (``rowfill.sql.keys``: ``lo`` exclusive,
    None = from the start; ``hi`` inclusive, None = to the end; a composite key is a list), kept for
    the UI and logs only: the runner reads the bounds from the checkpoint row.
    """

    backfill: str
    chunk_no: int
    label: str
    of: int | None = None  # chunks in the plan
    lo: Any = None
    hi: Any = None
    est_rows: int = 0  # the planner's estimate of rows in the range (rows, not a bound)
    key: str = ""  # the key column, or a composite key's label "(tenant_id, id)"

    @classmethod
    def from_xcom(cls, value: Any) -> MappedChunk:
        """The chunk a mapped task was given.

        :param value: one item of the plan task's return value, a mapping with at least
            ``backfill``, ``chunk_no`` (int) and ``label``; other keys (``of``, ``lo``, ``hi``,
            ``est_rows``, ``key``) are optional, unknown keys are ignored (a newer planner may add some).
        :return: the typed chunk.
        :raises ValueError: when ``value`` is not such a mapping, with what to do (plan again).
        """
        if isinstance(value, MappedChunk):
            return value
        missing = [k for k in _REQUIRED if k not in value] if isinstance(value, Mapping) else list(_REQUIRED)
        chunk_no = None if missing else value["chunk_no"]
        if missing or isinstance(chunk_no, bool) or not isinstance(chunk_no, int):
            raise ValueError(f"the chunk task was mapped over {value!r}, which is not a planned chunk (missing or "
                             f"bad: {', '.join(missing) or 'chunk_no'}); clear the plan task of this run so it plans again")
        return cls(backfill=value["backfill"], chunk_no=chunk_no, label=value["label"], of=value.get("of"),
                   lo=value.get("lo"), hi=value.get("hi"), est_rows=value.get("est_rows") or 0, key=value.get("key") or "")

    def to_xcom(self) -> dict:
        """The JSON mapping this chunk travels as; ``from_xcom(c.to_xcom()) == c``."""
        return {"backfill": self.backfill, "chunk_no": self.chunk_no, "of": self.of, "lo": self.lo, "hi": self.hi,
                "est_rows": self.est_rows, "key": self.key, "label": self.label}


def task_chunk(task: Any) -> tuple[int | None, str | None]:
    """(chunk number, label) of the chunk a task instance ran, for failure callbacks; (None, None) if unknown.

    :param task: ``context["task"]``. In the worker it is the unmapped operator holding a
        ``MappedChunk``; when Airflow lost the worker, the DAG processor runs the callback with the
        bare mapped operator, which has none (Airflow docs, "Callbacks"). A plain mapping is read too.
    """
    chunk = getattr(task, "chunk", None)
    if isinstance(chunk, MappedChunk):
        return chunk.chunk_no, chunk.label
    if isinstance(chunk, Mapping):
        return chunk.get("chunk_no"), chunk.get("label")
    return None, None
