"""A spec's write mode, and the writer that does it: the one place every mode's writer is chosen.

Apart from ``rowfill.engine.writers`` (the base class and the plain ``set``/``sql`` writers) so the
writers of the other modes (``transform``, ``sinks``, ``undo``) can build on that base while this
module picks among all of them, without the base importing its subclasses.
"""

from __future__ import annotations

from rowfill.engine.sinks import SinkWriter
from rowfill.engine.transform import TransformWriter
from rowfill.engine.undo import UndoSetWriter
from rowfill.engine.writers import BatchWriter, SetWriter, SqlWriter
from rowfill.spec.spec import Spec


def writer_for(spec: Spec) -> BatchWriter:
    """The writer of ``spec``'s mode: transform, sink, set with undo, sql or set."""
    if spec.mode == "transform":
        return TransformWriter(spec)
    if spec.mode == "sink":
        return SinkWriter(spec)
    if spec.undo:
        return UndoSetWriter(spec)
    return SqlWriter(spec) if spec.sql else SetWriter(spec)
