"""What one batch writes, per write mode. Built once per chunk: identifiers quoted, values bound.

A writer gets the batch's key bounds (``lo`` exclusive, ``None`` = from the start; ``hi``
inclusive) inside the batch transaction and returns how many rows it changed. New write modes
are new classes (``rowfill.engine.transform``, ``rowfill.engine.sinks``, ``rowfill.engine.undo``), chosen
by ``rowfill.engine.modes.writer_for``; the runner does not change. Statements are built on the first batch, when the key's column types can be read from the
table: every bound key value is cast to its column's type so the key's index serves the range.

Statements that hold user SQL are driver SQL composed by ``rowfill.sql.sqltext`` (user expressions in
parentheses, comments gone, only documented binds) and run with ``conn.exec_driver_sql``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from rowfill.engine.lockfirst import lock_first_reason
from rowfill.errors import RowfillError
from rowfill.spec.spec import Spec
from rowfill.sql import statements
from rowfill.sql.keys import Boundary, Key, format_value, load_key
from rowfill.sql.sqltext import driver, key_casts, spec_driver, spec_sql, sql_binds


class BatchOutsideRange(RowfillError):
    """A ``sql`` statement changed more rows of the walked table than its batch holds; the batch rolled back."""


class BatchWriter:
    def __init__(self, spec: Spec):
        self.spec = spec
        self._key: Key | None = None  # read by prepare() (or given by a planning check, see ``key``)
        self.boundary: Boundary | None = None
        self.batch_first: Any = None  # first key of the batch found by the last batch_end()
        self._statements: dict = {}

    @property
    def key(self) -> Key:
        """The spec's key with its column types: read by ``prepare``, or set by a planning check
        (``rowfill.engine.sqltarget``, ``schema_check``) that has it already.

        :raises RuntimeError: neither happened yet (a programming error: every batch prepares first).
        """
        if self._key is None:
            raise RuntimeError(f"{type(self).__name__}: the key is read by prepare(conn); call it first")
        return self._key

    @key.setter
    def key(self, key: Key) -> None:
        """Set the key from outside: a planning check that read it already (``sqltarget``, ``schema_check``)."""
        self._key = key

    def prepare(self, conn: Connection) -> None:
        """Read the key's types and build the statements; once per writer, inside the first batch."""
        if self._key is None:
            self._key = load_key(conn, self.spec)
            self.boundary = Boundary(self._key, self.spec.table.sql)
            self.build(conn)

    def build(self, conn: Connection) -> None:
        """Subclasses build their statements here (the key's types are known)."""

    def statement(self, shape, make):
        """A statement per shape (e.g. with or without a lower bound), built once."""
        if shape not in self._statements:
            self._statements[shape] = make()
        return self._statements[shape]

    def batch_end(self, conn: Connection, lo, hi, rows: int):
        """The last key of the next ``rows`` keys after ``lo`` (an index-only range scan), and how many there are.

        :raises RuntimeError: the key was set from outside, so this writer has no batch walk (a programming error).
        """
        self.prepare(conn)
        if self.boundary is None:
            raise RuntimeError(f"{type(self).__name__}: a key set from outside has no batch walk; batches prepare their own")
        first, end, seen = self.boundary.next(conn, lo, hi, rows)
        self.batch_first = first
        return end, seen

    def apply(self, conn: Connection, lo, hi) -> int:
        """Write the batch ``lo < key <= hi`` (key values as JSON values; ``lo`` None: from the start)
        inside the caller's transaction; returns the rows written. Raises what the database raises
        (the runner retries lock and statement timeouts). Each mode implements it.
        """
        raise NotImplementedError

    # -- lock first (see rowfill.engine.lockfirst) and skip what others hold (see rowfill.engine.rowlocks) ---
    lock_first = False  # writers that read other relations set this in build()
    # Writers whose batches may lock with SKIP LOCKED and be written as runs of keys between the
    # skipped ones (rowfill.engine.rowlocks); sinks and the rollback's restore wait for locks as before.
    skips_locked = False
    rows_locked = False  # set by rowfill.engine.rowlocks while the batch's rows are locked already: lock_rows() does nothing

    @property
    def single_statement(self) -> bool:
        """True when a batch is one UPDATE that takes its own row locks (the fast path of rowfill.engine.rowlocks)."""
        return False

    def _lock(self, has_lo: bool) -> str:
        def make():
            """The lock statement's driver SQL, built once per ``has_lo`` and cached by ``self.statement``."""
            return self.driver(statements.lock_rows(self.spec.table.sql, self.key, has_lo, bool(self.spec.where)))
        return self.statement(("lock", has_lo), make)

    def lock_rows(self, conn: Connection, lo, hi) -> int:
        """Lock the batch's rows that match ``where``, in key order, before the write; the number locked.

        Its own statement on purpose: under READ COMMITTED the write that follows takes a new
        snapshot, which sees every transaction that committed before these locks were granted
        (PostgreSQL docs, 13.2.1 "Read Committed Isolation Level"). ``FOR NO KEY UPDATE`` is the
        lock the UPDATE takes anyway; it lets the application insert rows referencing ours.
        """
        self.prepare(conn)
        if self.rows_locked:
            return 0
        return conn.exec_driver_sql(self._lock(lo is not None), self.key.range_params(lo, hi)).scalar_one()

    def explain(self, conn: Connection, lo, hi) -> list[tuple[str, str]]:
        """(what, EXPLAIN text) of the statements one batch runs, for ``rowfill plan`` (never executed)."""
        return []

    def where_sql(self) -> str:
        """`` AND @where`` for ``driver()`` templates (the checked ``where``, in parentheses), or nothing."""
        return statements.and_where(bool(self.spec.where))

    def driver(self, template: str, binary=()) -> str:
        """A template of rowfill's own SQL with the spec's checked fields in its slots, as driver SQL
        (see ``rowfill.sql.sqltext.driver``); first/last binds cast to the key's types."""
        return spec_driver(self.spec, template, self.key, binary)


def explain_text(conn: Connection, sql, params: dict) -> str:
    """EXPLAIN of one statement: driver SQL (a str, run with exec_driver_sql) or a ``text()`` clause
    of rowfill's own SQL (no user text in it)."""
    if isinstance(sql, str):
        rows = conn.exec_driver_sql(statements.explain(sql), params)
    else:
        rows = conn.execute(text(statements.explain(sql.text)), params)
    return "\n".join(r[0] for r in rows)


class SetWriter(BatchWriter):
    """``set:`` mode: one UPDATE over the batch's key range, re-checking ``where``.

    When the expressions read anything but the row itself (another table, a function that is
    not immutable; see ``rowfill.engine.lockfirst``) the batch's rows are locked first and the UPDATE
    runs as a second statement, so what it reads is as new as the locks.
    """

    lock_reason: str | None = None
    skips_locked = True

    @property
    def single_statement(self) -> bool:
        """One UPDATE per batch unless the expressions read other relations (then rows are locked first)."""
        return not self.lock_first

    def build(self, conn):
        """Find out whether the ``set``/``where`` expressions read beyond the row (``rowfill.engine.lockfirst``)."""
        self.lock_reason = lock_first_reason(conn, self.spec)
        self.lock_first = self.lock_reason is not None

    def _update_template(self, has_lo: bool) -> str:
        """The UPDATE as a ``driver()`` template (rowfill's own SQL with ``@sets`` and ``@where``)."""
        return statements.update_rows(self.spec.table.sql, self.key, has_lo, bool(self.spec.where))

    def _write(self, has_lo: bool) -> str:
        return self.statement(("write", has_lo), lambda: self.driver(self._update_template(has_lo)))

    def apply(self, conn: Connection, lo, hi) -> int:
        """UPDATE the batch's rows that match ``where`` (locking them first if ``lock_first``); returns the rowcount."""
        self.prepare(conn)
        if self.lock_first:
            self.lock_rows(conn, lo, hi)
        return conn.exec_driver_sql(self._write(lo is not None), self.key.range_params(lo, hi)).rowcount

    def explain(self, conn, lo, hi):
        """``[(step, EXPLAIN text)]`` of the batch's statements (the lock, if any, then the write); nothing runs."""
        self.prepare(conn)
        bounds = self.key.range_params(lo, hi)
        out = [("lock", explain_text(conn, self._lock(lo is not None), bounds))] if self.lock_first else []
        return out + [("write", explain_text(conn, self._write(lo is not None), bounds))]


class BatchBinds:
    """``:first``/``:last`` in user SQL: the batch's first and last key, cast to the key's type.

    For a composite key, one pair per column, by name or position (``:first_tenant_id``,
    ``:first_1``). Used by ``sql`` mode and by ``joins``/``select`` of transforms and sinks; the
    names are ``rowfill.sql.sqltext.sql_binds``.
    """

    def __init__(self, key: Key):
        self.key = key
        self.names: dict[str, tuple[str, int | None]] = sql_binds(key.columns)  # bind name -> ("first"|"last", position)
        self.casts = key_casts(key)

    def params(self, first, last) -> dict:
        """Bind values for every ``:first*``/``:last*`` name the user SQL uses: ``first`` and ``last`` key
        (JSON values; a composite key's are lists, split per column). None stays None.
        """
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

    Guard: when the statement's main verb UPDATEs or DELETEs the walked table, a batch whose
    rowcount exceeds the keys in its range (its WHERE let rows outside the range through, e.g.
    ``AND (id <= :hi OR x)``) raises ``BatchOutsideRange``, and the batch's transaction rolls back.
    """

    # The statement may read anything; its reads must see what committed before the rows were locked.
    lock_first = True
    skips_locked = True

    def build(self, conn):
        """Read the user's statement (``rowfill.sql.sqltext``) and whether it writes the walked table (the guard)."""
        self.binds = BatchBinds(self.key)
        self.names = self.binds.names
        statement = spec_sql(self.spec).sql
        self.write = statement.driver(self.binds.casts)
        self.guarded = statement.writes if self._writes_walked_table(conn, statement.writes) else None
        self._walked = None  # (lo, end, keys) of the last batch_end()

    def _writes_walked_table(self, conn: Connection, writes) -> bool:
        """Is the table the statement UPDATEs/DELETEs the walked table (as this connection resolves both names)?"""
        if writes is None:
            return False
        try:
            with conn.begin_nested():
                return bool(conn.exec_driver_sql(
                    statements.same_table_driver(),
                    {"w": writes[1], "t": self.spec.table.sql}).scalar())
        except DBAPIError:  # a name to_regclass cannot read is not the walked table
            return False

    def params(self, lo, hi) -> dict:
        """Bind values of one batch: ``lo``/``hi`` and ``:first``/``:last`` (see the class docstring).
        On the lowest chunk of an integer key, ``lo`` is the batch's first key minus one, never None.
        """
        if lo is None and self.key.integer and self.batch_first is not None:
            # the lowest chunk starts "from the start": :lo is just below the batch's first key (a
            # Python int, sent as numeric below bigint's minimum), never NULL (id > NULL is no row)
            lo = self.batch_first - 1
        return {"lo": lo, "hi": hi, **self.binds.params(self.batch_first, hi)}

    def batch_end(self, conn: Connection, lo, hi, rows: int):
        """As ``BatchWriter.batch_end``; remembers the batch walked, so the guard counts its keys without a query."""
        end, seen = super().batch_end(conn, lo, hi, rows)
        self._walked = (lo, end, seen)
        return end, seen

    def apply(self, conn: Connection, lo, hi) -> int:
        """Lock the batch's rows, run the user's statement; returns its rowcount.
        Raises BatchOutsideRange when it changed more rows of the walked table than the batch holds.
        """
        self.prepare(conn)
        self.lock_rows(conn, lo, hi)
        written = conn.exec_driver_sql(self.write, self.params(lo, hi)).rowcount
        if self.guarded and written > 0:
            self._check_inside_range(conn, lo, hi, written)
        return written

    def _keys_in_range(self, conn: Connection, lo, hi) -> int:
        sql = driver(statements.count_in_range(self.spec.table.sql, self.key, lo is not None, hi is not None))
        return conn.exec_driver_sql(sql, self.key.range_params(lo, hi)).scalar_one()

    def _check_inside_range(self, conn: Connection, lo, hi, written: int) -> None:
        """Raise if the statement changed more rows than the batch's range holds.

        The keys walked for this batch are the bound; rows committed into the range since the walk
        are counted again before blaming the statement (only when the first bound is exceeded).
        """
        walked = bool(self._walked) and self._walked[:2] == (lo, hi)
        keys = self._walked[2] if walked else self._keys_in_range(conn, lo, hi)
        if written <= keys or written <= self._keys_in_range(conn, lo, hi):
            return
        verb, table = self.guarded
        start = format_value(self.batch_first) if walked else f"after {format_value(lo)}"
        raise BatchOutsideRange(
            f"{self.spec.source}: field 'sql': the statement {'updated' if verb == 'UPDATE' else 'deleted'} {written:,} "
            f"rows of {table}, but this batch ({self.spec.key} {start}..{format_value(hi)}) holds only "
            f"{keys:,} keys: its WHERE lets rows outside the batch's key range through. The batch was rolled back. "
            "Make the range the outermost condition, e.g. WHERE id > :lo AND id <= :hi AND (<your conditions>)")

    def explain(self, conn, lo, hi):
        """``[(step, EXPLAIN text)]`` of the lock and the user's statement for this batch; nothing runs."""
        self.prepare(conn)
        return [("lock", explain_text(conn, self._lock(lo is not None), self.key.range_params(lo, hi))),
                ("sql", explain_text(conn, self.write, self.params(lo, hi)))]
