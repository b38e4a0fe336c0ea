"""What one batch writes, per write mode. Built once per chunk: identifiers quoted, values bound.

A writer gets the batch's key bounds (``lo`` exclusive, ``None`` = from the start; ``hi``
inclusive) inside the batch transaction and returns how many rows it changed. New write modes
are new classes (``rowfill.transform``, ``rowfill.sinks``, ``rowfill.undo``); the runner does not
change. Statements are built on the first batch, when the key's column types can be read from the
table: every bound key value is cast to its column's type so the key's index serves the range.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.keys import Boundary, Key, load_key
from rowfill.spec import Spec
from rowfill.sqlnames import quote


class BatchWriter:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.key: Key | None = None
        self.boundary: Boundary | None = None
        self.batch_first: Any = None  # first key of the batch found by the last batch_end()
        self._statements: dict = {}

    def prepare(self, conn: Connection) -> None:
        """Read the key's types and build the statements; once per writer, inside the first batch."""
        if self.key is None:
            self.key = load_key(conn, self.spec)
            self.boundary = Boundary(self.key, self.spec.table.sql)
            self.build(conn)

    def build(self, conn: Connection) -> None:
        """Subclasses build their statements here (the key's types are known)."""

    def statement(self, shape, make):
        """A statement per shape (e.g. with or without a lower bound), built once."""
        if shape not in self._statements:
            self._statements[shape] = make()
        return self._statements[shape]

    def batch_end(self, conn: Connection, lo, hi, rows: int):
        """The last key of the next ``rows`` keys after ``lo`` (an index-only range scan), and how many there are."""
        self.prepare(conn)
        first, end, seen = self.boundary.next(conn, lo, hi, rows)
        self.batch_first = first
        return end, seen

    def apply(self, conn: Connection, lo, hi) -> int:
        raise NotImplementedError

    def explain(self, conn: Connection, lo, hi) -> list[tuple[str, str]]:
        """(what, EXPLAIN text) of the statements one batch runs, for ``rowfill plan`` (never executed)."""
        return []

    def where_sql(self) -> str:
        return f" AND ({self.spec.where})" if self.spec.where else ""


def explain_text(conn: Connection, sql, params: dict) -> str:
    stmt = sql if not isinstance(sql, str) else text(sql)
    return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + stmt.text), params))


class SetWriter(BatchWriter):
    """``set:`` mode: one UPDATE over the batch's key range, re-checking ``where``."""

    def _write(self, has_lo: bool):
        def make():
            assignments = ", ".join(f"{quote(col)} = {expr}" for col, expr in self.spec.set.items())
            rng = self.key.range_text(has_lo, True)
            return text(f"UPDATE {self.spec.table.sql} SET {assignments} WHERE {rng}{self.where_sql()}")
        return self.statement(("write", has_lo), make)

    def apply(self, conn: Connection, lo, hi) -> int:
        self.prepare(conn)
        return conn.execute(self._write(lo is not None), self.key.range_params(lo, hi)).rowcount

    def explain(self, conn, lo, hi):
        self.prepare(conn)
        return [("write", explain_text(conn, self._write(lo is not None), self.key.range_params(lo, hi)))]


_SQL_BIND = re.compile(r"(?<!:):((?:first|last)(?:_[a-z0-9_]+)?)\b")


class BatchBinds:
    """``:first``/``:last`` in user SQL: the batch's first and last key, cast to the key's type.

    For a composite key, one pair per column, by name or position (``:first_tenant_id``,
    ``:first_1``). Used by ``sql`` mode and by ``joins``/``select`` of transforms and sinks.
    """

    def __init__(self, key: Key):
        self.key = key
        self.names: dict[str, tuple[str, int | None]] = {}  # bind name -> ("first"|"last", position)
        if not key.composite:
            self.names = {"first": ("first", None), "last": ("last", None)}
        else:
            for prefix in ("first", "last"):
                for name, pos in key.bind_names(prefix).items():
                    self.names[name] = (prefix, pos)

    def typed(self, sql: str) -> str:
        def cast(m):
            name = m.group(1)
            if name not in self.names:
                return m.group(0)
            return f"CAST(:{name} AS {self.key.types[self.names[name][1] or 0]})"

        return _SQL_BIND.sub(cast, sql)

    def params(self, first, last) -> dict:
        ends = {"first": first, "last": last}
        out = {}
        for name, (which, pos) in self.names.items():
            value = ends[which]
            out[name] = value if pos is None or value is None else value[pos]
        return out


class SqlWriter(BatchWriter):
    """``sql:`` mode: the user's statement with the batch's bounds bound as parameters.

    Single integer keys get ``:lo`` (exclusive) and ``:hi`` (inclusive), as always. Every key also
    gets the batch's first and last key, inclusive (see ``BatchBinds``), so
    ``id BETWEEN :first AND :last`` works for uuid, text and timestamp keys alike.
    """

    def build(self, conn):
        self.binds = BatchBinds(self.key)
        self.names = self.binds.names
        self.write = text(self.binds.typed(self.spec.sql))

    def params(self, lo, hi) -> dict:
        if lo is None and self.key.integer and self.batch_first is not None:
            # the lowest chunk starts "from the start": :lo is just below the batch's first key (a
            # Python int, sent as numeric below bigint's minimum), never NULL (id > NULL is no row)
            lo = self.batch_first - 1
        return {"lo": lo, "hi": hi, **self.binds.params(self.batch_first, hi)}

    def apply(self, conn: Connection, lo, hi) -> int:
        self.prepare(conn)
        return conn.execute(self.write, self.params(lo, hi)).rowcount

    def explain(self, conn, lo, hi):
        self.prepare(conn)
        return [("sql", explain_text(conn, self.write, self.params(lo, hi)))]


def writer_for(spec: Spec) -> BatchWriter:
    if spec.mode == "transform":
        from rowfill.transform import TransformWriter

        return TransformWriter(spec)
    if spec.mode == "sink":
        from rowfill.sinks import SinkWriter

        return SinkWriter(spec)
    if spec.undo:
        from rowfill.undo import UndoSetWriter

        return UndoSetWriter(spec)
    return SqlWriter(spec) if spec.sql else SetWriter(spec)
