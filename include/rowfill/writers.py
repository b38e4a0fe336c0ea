"""What one batch writes, per write mode. Built once per chunk: identifiers quoted, values bound.

A writer gets the batch's key bounds (``lo`` exclusive, ``hi`` inclusive) inside the batch
transaction and returns how many rows it changed. New write modes are new classes here; the
runner does not change.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.spec import Spec
from rowfill.sqlnames import quote


class BatchWriter:
    def __init__(self, spec: Spec):
        self.spec = spec
        key, table = quote(spec.key), spec.table.sql
        self.boundary = text(
            f"SELECT max(k), count(*) FROM (SELECT {key} AS k FROM {table} "
            f"WHERE {key} > :lo AND {key} <= :hi ORDER BY {key} LIMIT :n) s"
        )

    def batch_end(self, conn: Connection, lo, hi, rows: int):
        """The last key of the next ``rows`` keys after ``lo`` (an index-only range scan), and how many there are."""
        end, seen = conn.execute(self.boundary, {"lo": lo, "hi": hi, "n": rows}).one()
        return end, seen

    def apply(self, conn: Connection, lo, hi) -> int:
        raise NotImplementedError


class SetWriter(BatchWriter):
    """``set:`` mode: one UPDATE over the batch's key range, re-checking ``where``."""

    def __init__(self, spec: Spec):
        super().__init__(spec)
        key = quote(spec.key)
        assignments = ", ".join(f"{quote(col)} = {expr}" for col, expr in spec.set.items())
        where = f" AND ({spec.where})" if spec.where else ""
        self.write = text(f"UPDATE {spec.table.sql} SET {assignments} WHERE {key} > :lo AND {key} <= :hi{where}")

    def apply(self, conn: Connection, lo, hi) -> int:
        return conn.execute(self.write, {"lo": lo, "hi": hi}).rowcount


class SqlWriter(BatchWriter):
    """``sql:`` mode: the user's statement with the batch's bounds bound to ``:lo`` and ``:hi``."""

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.write = text(spec.sql)

    def apply(self, conn: Connection, lo, hi) -> int:
        return conn.execute(self.write, {"lo": lo, "hi": hi}).rowcount


def writer_for(spec: Spec) -> BatchWriter:
    return SqlWriter(spec) if spec.sql else SetWriter(spec)
