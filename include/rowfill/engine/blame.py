"""A batch that failed with a data error, narrowed to the row and the spec field to blame.

PostgreSQL reports ``division by zero`` for a 500-row UPDATE without saying which row. rowfill
finds it: in a new transaction that is always rolled back, the batch's keys are bisected by
writing growing prefixes of the batch, each inside a savepoint that is rolled back at once, until
the shortest prefix that fails is found; its last row is the one to blame, given the rows before
it (so a unique violation between two rows of the same batch blames the second). Then the field:

- ``set.<column>``: the column the error's diagnostics name (not-null), or the one written
  column of the violated constraint (check, unique, foreign key); else each ``set`` expression
  is written alone on that row, and the first that fails is named; ``where`` if even writing a
  column back unchanged fails (``where`` itself fails on that row);
- ``sql``: the statement (rowfill cannot see inside it);
- ``returns.<column>`` for a transform whose result does not fit a column, ``select`` when
  reading the row fails, ``transform`` when no single column is to blame.

Only data errors are narrowed (SQLSTATE classes 22 "data exception" and 23 "integrity constraint
violation", PostgreSQL docs Appendix A): they depend on the rows written, so writing the same
rows again fails the same way. Nothing is written: the batch was rolled back, and so is every probe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from rowfill.engine.modes import writer_for
from rowfill.engine.transform import TransformWriter
from rowfill.errors import RowfillError
from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql import statements
from rowfill.sql.keys import decode, format_value
from rowfill.sql.session import Timeouts
from rowfill.sql.sqlnames import TableName, clause, quote

DATA_ERROR_CLASSES = ("22", "23")


class RowError(RowfillError):
    """A data error narrowed to one row: ``key`` (a JSON key value), ``field`` (e.g. ``set.unit_cents``)."""

    def __init__(self, message: str, *, key: Any, field: str, sqlstate: str | None):
        super().__init__(message)
        self.key = key
        self.field = field
        self.sqlstate = sqlstate


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg's ``sqlstate``), or None."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_data_error(exc: BaseException) -> bool:
    """A data error (SQLSTATE class 22 or 23): it depends on the rows written, so narrowing can find the row."""
    return (sqlstate_of(exc) or "")[:2] in DATA_ERROR_CLASSES


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) or (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    detail = getattr(diag, "message_detail", None)
    return primary + (f" ({detail.rstrip('.')})" if detail else "")


def key_text(spec: Spec, value: Any) -> str:
    """``id 3456`` or ``(tenant, id) (2, 37)``: a key value as people read it."""
    return f"{spec.key} {format_value(value)}"


class Narrowing:
    """Bisects one failed batch ``(lo, hi]`` of ``writer`` on its own connection; see the module docstring."""

    def __init__(self, conn: Connection, spec: Spec, writer):
        self.conn = conn
        self.spec = spec
        self.writer = writer

    def keys(self, lo, hi) -> list:
        """Every key in ``(lo, hi]`` in key order, as JSON values (one batch: at most ``max_batch_rows``)."""
        key = self.writer.key
        sql = clause(statements.keys_in_range(self.spec.table.sql, key, lo is not None, hi is not None))
        params = key.range_params(lo, hi)
        return [decode(v) for v in self.conn.execute(sql, params).scalars()]

    def attempt(self, writer, lo, hi, first) -> DBAPIError | None:
        """Write ``(lo, hi]`` with ``writer`` in a savepoint that is rolled back; the data error, or None.

        :param writer: the writer to try. :param lo: / :param hi: the key bounds, ``lo`` excluded (None: open).
        :param first: the batch's first key, set on the writer as ``batch_first``.
        :returns: the DBAPIError when it is a data error (SQLSTATE class 22 or 23), else None.
        :raises DBAPIError: any other database error, and any other exception, after rolling the savepoint back.
        """
        savepoint = self.conn.begin_nested()
        try:
            writer.batch_first = first
            writer.apply(self.conn, lo, hi)
        except DBAPIError as exc:
            savepoint.rollback()
            if is_data_error(exc):
                return exc
            raise
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.rollback()
        return None

    def culprit(self, lo, keys: list) -> tuple[int, DBAPIError] | None:
        """Index of the row whose write makes the batch fail (shortest failing prefix), and its error."""
        error = self.attempt(self.writer, lo, keys[-1], keys[0]) if keys else None
        if error is None:
            return None  # the batch does not fail any more (the data changed meanwhile)
        good, bad = 0, len(keys)  # prefix of `good` rows writes; prefix of `bad` rows fails
        while bad - good > 1:
            mid = (good + bad) // 2
            failed = self.attempt(self.writer, lo, keys[mid - 1], keys[0])
            if failed is None:
                good = mid
            else:
                bad, error = mid, failed
        return bad - 1, error

    # -- which field ---------------------------------------------------------------------------
    def field(self, prev, key_value, error: DBAPIError) -> str:
        """The spec field to blame for ``error`` at the row ``key_value`` (``prev``: the key before it).

        Called with the rows before it already written (in a savepoint), so the probes see what
        the batch saw.
        """
        mode = self.spec.mode
        if mode == "sql":
            return "sql"
        if mode == "sink":
            return "select"
        if mode == "transform" and self._read_fails(prev, key_value):
            return "select"
        prefix, written = ("set", list(self.spec.set)) if mode == "set" else ("returns", list(self.spec.returns))
        named = self._diagnosed_columns(error) & set(written)
        if len(named) == 1:
            return f"{prefix}.{named.pop()}"
        if len(written) == 1 and mode == "transform":
            return f"returns.{written[0]}"
        if mode == "set" and self.attempt(self._set_writer({written[0]: quote(written[0])}), prev, key_value, key_value):
            return "where"  # writing a column back unchanged fails: `where` itself fails on this row
        for column in written:
            probe = self._set_writer({column: self.spec.set[column]}) if mode == "set" else self._returns_writer(column)
            if self.attempt(probe, prev, key_value, key_value) is not None:
                return f"{prefix}.{column}"
        return prefix if mode == "set" else "transform"

    def _read_fails(self, prev, key_value) -> bool:
        """A transform's read of the row (``select``, ``joins``) fails on its own."""
        savepoint = self.conn.begin_nested()
        try:
            self.writer.reader.read(self.conn, prev, key_value, key_value)
            return False
        except DBAPIError as exc:
            if is_data_error(exc):
                return True
            raise
        finally:
            savepoint.rollback()

    def _diagnosed_columns(self, error: DBAPIError) -> set[str]:
        """Columns the error names: the not-null column, or the violated constraint's (or unique index's) columns."""
        diag = getattr(getattr(error, "orig", None), "diag", None)
        if diag is None:
            return set()
        if diag.column_name:
            return {diag.column_name}
        if not diag.constraint_name or not diag.table_name:
            return set()
        table = TableName(diag.schema_name or None, diag.table_name).sql
        if not pg_catalog.same_relation(self.conn, table, self.spec.table.sql):
            return set()  # a constraint of another table (a row referencing ours, say)
        return pg_catalog.constraint_columns(self.conn, table, diag.constraint_name)

    def _set_writer(self, assignments: dict):
        return writer_for(dataclasses.replace(self.spec, set=assignments, undo=False))

    def _returns_writer(self, column: str):
        """The transform writing one of its columns: the same function, its result cut to ``column``."""
        writer = TransformWriter(dataclasses.replace(self.spec, returns=(column,), undo=False))
        writer.prepare(self.conn)
        whole = self.writer.fn
        value_only = writer.out_kinds[0] in ("json", "jsonb")  # a dict is the value for one json column

        def one_column(rows):
            """The transform over ``rows``, each result cut to ``column`` (a dict ``{column: value}``, or the value for json).

            :param rows: the batch's rows as the transform receives them.
            :returns: one item per row, None where the transform returned None (row left alone).
            """
            out = []
            for r in whole(rows):
                value = r[column] if isinstance(r, Mapping) else r
                out.append(None if r is None else value if value_only else {column: value})
            return out

        def one_returned_column(columns):
            """``batch_form: columns``: the transform over ``columns``, its result cut to ``{column: values}``.

            :param columns: the batch as the transform receives it (column -> list).
            :returns: the returned column alone (a dict of one column, or the list when the whole result is one).
            """
            out = whole(columns)
            return {column: out[column]} if isinstance(out, Mapping) else out

        writer.fn = one_returned_column if writer.columnar else one_column
        return writer


def narrow(engine: Engine, spec: Spec, writer, timeouts: Timeouts, lo, hi, error: DBAPIError) -> RowError | None:
    """The row and field to blame for ``error``, a data error of the batch ``(lo, hi]``; None if it no longer fails.

    ``timeouts`` are the runner's batch timeouts (``rowfill.sql.session.Timeouts``), so no probe runs
    longer than a batch may. Runs in its own transaction, always rolled back: nothing is written.
    """
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            timeouts.apply(conn)
            writer.prepare(conn)
            n = Narrowing(conn, spec, writer)
            keys = n.keys(lo, hi)
            found = n.culprit(lo, keys)
            if found is None:
                return None
            index, row_error = found
            culprit = keys[index]
            before = keys[index - 1] if index else lo
            savepoint = conn.begin_nested()
            try:
                if index:  # the rows before it, as the batch wrote them (a duplicate among them, say)
                    writer.batch_first = keys[0]
                    writer.apply(conn, lo, before)
                field = n.field(before, culprit, row_error)
            finally:
                savepoint.rollback()
        finally:
            tx.rollback()
    state = sqlstate_of(row_error)
    span = f"{format_value(keys[0])}..{format_value(keys[-1])}" if len(keys) > 1 else format_value(keys[0])
    message = (f"{field} fails at {key_text(spec, culprit)}: {_first_line(row_error)} (SQLSTATE {state}). "
               f"Nothing of the batch ({spec.key} {span}) was written. Fix that row or the spec's `{field.split('.')[0]}`, "
               "then resume: the chunk continues from its checkpoint, before this batch.")
    return RowError(message, key=culprit, field=field, sqlstate=state)
