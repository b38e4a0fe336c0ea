"""Undo: the previous values of every row a backfill changes, recorded in the batch's own transaction,
and the rollback that puts them back.

With ``undo: true`` each batch also writes, in the same transaction as its UPDATE and its
checkpoint advance, one record per changed row into ``rowfill.undo_rows`` (``rowfill.store.undo``;
one table for every backfill, created by ``rowfill db migrate``, so planning creates nothing): the
row's key, the columns' previous values and the values the backfill wrote, each as its text form.
A crash can therefore never leave a changed row without its undo record, nor a record without
its change. A row written twice (a rerun after ``rowfill reset``) keeps its *first* previous value.

``rowfill rollback NAME`` (or the DAG ``rowfill_<name>_rollback``) is itself a backfill, walking
the backfill's undo records in the order they were written (``seq``), in chunks and batches with
the spec's throttle, checkpointed under the name
``<name>.rollback`` (registered from the moment the rollback starts until it finishes; the
backfill refuses to plan meanwhile). Each batch deletes its undo records and restores the previous values of
the rows that still hold what the backfill wrote; a row the application changed since is left
alone (and counted), because its current value is newer than anything rowfill knows. Planning
and finishing a rollback is ``rowfill.engine.rollback``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from rowfill.engine.writers import BatchWriter, SetWriter, explain_text
from rowfill.errors import RowfillError, SpecError
from rowfill.spec.spec import Spec
from rowfill.sql.keys import Key, column_types, load_key
from rowfill.sql.sqlnames import TableName, clause
from rowfill.sql import undo as undo_sql
from rowfill.sql.session import pin_text_formats
from rowfill.store import backfills
from rowfill.store import undo as undo_store
from rowfill.store.checkpoint import CheckpointStore

ROLLBACK_SUFFIX = ".rollback"  # a name no spec can have ('.' is not allowed in spec names)


class NoUndo(RowfillError):
    """The backfill kept no previous values, so rowfill cannot restore them."""


def no_undo_message(spec: Spec) -> str:
    """The advice given when a rollback is asked of a backfill that kept no undo log (``spec.undo`` false)."""
    return (
        f"backfill {spec.name!r} has no undo log: its spec ({spec.source}) does not say `undo: true`, so the previous "
        "values of the rows it changed were never recorded and rowfill cannot restore them. What you can do instead: "
        "restore the columns from a backup or a point-in-time recovery copy of the database (join it back by key); "
        "or, if the previous values can be computed (e.g. they were all NULL before a column was filled), write a "
        "second spec that sets them back, with a `where` that picks exactly the rows this backfill changed. "
        "For the next backfill, add `undo: true` to its spec before it runs."
    )


def rollback_name(name: str) -> str:
    """The checkpoint name of ``name``'s rollback: ``<name>.rollback`` (no spec name contains a dot)."""
    return name + ROLLBACK_SUFFIX


def undo_table(name: str) -> TableName:
    """Where backfill ``name``'s undo records are: ``rowfill.undo_rows`` (shared; ``backfill = name``).
    Releases before migration 0002 used ``rowfill.undo_<name>``; the migration moved those in."""
    return undo_store.UNDO_ROWS


def changed_columns(spec: Spec) -> list[str]:
    """The columns a backfill changes: the ``set`` columns, or a transform's ``returns``."""
    return list(spec.set) if spec.set else list(spec.returns)


@dataclass(frozen=True)
class UndoLog:
    """The undo records of one backfill: its key columns, and the changed columns with their SQL types."""

    backfill: str
    key: Key
    columns: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def table(self) -> TableName:
        """``rowfill.undo_rows``, where the records go."""
        return undo_store.UNDO_ROWS

    @classmethod
    def for_spec(cls, spec: Spec, key: Key, columns, types) -> UndoLog:
        """The undo log of ``spec``, with the key and the changed ``columns`` and their SQL ``types``."""
        return cls(spec.name, key, tuple(columns), tuple(types))

    @classmethod
    def load(cls, conn: Connection, spec: Spec) -> UndoLog:
        """From the target table's current types."""
        key = load_key(conn, spec)
        types = {n: t for n, (t, _) in column_types(conn, spec.table.sql).items()}
        cols = changed_columns(spec)
        return cls.for_spec(spec, key, cols, [types[c] for c in cols])

    def ensure(self, conn: Connection, spec: Spec) -> None:
        """Nothing to create: ``rowfill.undo_rows`` exists since migration 0002, and planning checked the
        schema's version. Kept for callers that prepared the per-backfill table of earlier releases."""

    # -- the statements (rowfill.sql.undo) ---------------------------------------------------
    def recording_set(self, t: str, assignments: str, rng_where: str, where: str, qkey: Key) -> str:
        """``set`` mode: lock and read the previous values, UPDATE, and record both, in one statement
        (``rowfill.sql.undo.recording_set``)."""
        return undo_sql.recording_set(self.table.sql, self.backfill, self.key, self.columns, t, assignments,
                                      rng_where, where, qkey)

    def recording_update(self, t: str, sets: str, source: str, match: str, rng_where: str, vrow: str, qkey: Key) -> str:
        """``transform`` mode (rows already locked): UPDATE from the arrays, recording previous and new
        values (``rowfill.sql.undo.recording_update``; ``qkey`` is unused there, kept for callers)."""
        return undo_sql.recording_update(self.table.sql, self.backfill, self.key, self.columns, t, sets, source,
                                         match, rng_where, vrow)

    def restore_sql(self, t: str, rng: str) -> str:
        """Delete a batch of undo records (``rng`` over ``seq``) and put back the previous values of rows
        still holding what was written; returns the rows restored (``rowfill.sql.undo.restore``)."""
        return undo_sql.restore(self.table.sql, self.backfill, self.key, self.columns, self.types, t, rng)


class UndoSetWriter(SetWriter):
    """``set`` mode with ``undo: true``."""

    def build(self, conn):
        """As ``SetWriter.build``, plus the undo log (created at planning) and the key qualified by the table."""
        super().build(conn)  # lock first when the expressions read other relations
        self.undo = UndoLog.load(conn, self.spec)
        self.qkey = self.key.qualified(self.spec.table.sql)

    @property
    def single_statement(self) -> bool:
        """Never: the write reads the previous values of the rows it locks, so batches lock first."""
        return False  # its write locks the rows it reads the previous values of: batches lock first (rowfill.engine.rowlocks)

    def _write(self, has_lo: bool) -> str:
        """The recording write; it returns the rows written."""
        def make():
            """The recording write's driver SQL, built once per ``has_lo`` and cached by ``self.statement``."""
            rng_where = self.key.range_text(has_lo, True) + self.where_sql()
            return self.driver(self.undo.recording_set(self.spec.table.sql, "@sets", rng_where, self.where_sql(),
                                                       self.qkey))
        return self.statement(("undo-write", has_lo), make)

    def apply(self, conn, lo, hi) -> int:
        """UPDATE the batch and record each changed row's previous and new values in the same statement;
        returns the rows written.
        """
        self.prepare(conn)
        pin_text_formats(conn)  # the recorded values are text: see rowfill.sql.session.TEXT_FORMATS
        if self.lock_first:
            self.lock_rows(conn, lo, hi)
        return conn.exec_driver_sql(self._write(lo is not None), self.key.range_params(lo, hi)).scalar()


# -- the rollback as a backfill of its own ------------------------------------------------------


def rollback_spec(spec: Spec) -> Spec:
    """The rollback of ``spec``: walk its undo records in ``seq`` order, with the spec's chunking, throttle
    and timeouts (chunks are planned over ``seq``; each batch counts and restores only this backfill's records)."""
    return dataclasses.replace(
        spec, name=rollback_name(spec.name), table=undo_store.UNDO_ROWS, key=undo_store.SEQ,
        key_columns=(undo_store.SEQ,), where=None, set={}, sql=None,
        transform=None, sink=None, select={}, joins=None, returns=(), undo=False,
        description=f"rollback of {spec.name}",
    )


class RestoreWriter(BatchWriter):
    """Batches of the rollback: walk the backfill's undo records, restore the target table.

    ``forward`` must have its table pinned (``rollback_target``): the restore names it qualified.
    """

    def __init__(self, spec: Spec, forward: Spec):
        super().__init__(spec)
        self.forward = forward

    def build(self, conn):
        """The undo log of the forward backfill, with its key and columns typed as the target table is now."""
        types = {n: t for n, (t, _) in column_types(conn, self.forward.table.sql).items()}
        cols = changed_columns(self.forward)
        self.undo = UndoLog(self.forward.name, load_key(conn, self.forward), tuple(cols), tuple(types[c] for c in cols))

    def batch_end(self, conn, lo, hi, rows: int):
        """The next ``rows`` of this backfill's records after ``lo`` (other backfills' are not counted)."""
        self.prepare(conn)
        first, end, seen = undo_store.batch_end(conn, self.forward.name, lo, hi, rows)
        self.batch_first = first
        return end, seen

    def _write(self, has_lo: bool):
        return self.statement(("restore", has_lo), lambda: clause(
            self.undo.restore_sql(self.forward.table.sql, self.key.range_text(has_lo, True))))

    def apply(self, conn, lo, hi) -> int:
        """Delete the batch's undo records and restore the rows that still hold what the backfill wrote;
        returns the rows restored (rows changed since are left alone).
        """
        self.prepare(conn)
        pin_text_formats(conn)  # read the recorded text as it was written: rowfill.sql.session.TEXT_FORMATS
        return conn.execute(self._write(lo is not None), self.key.range_params(lo, hi)).scalar()

    def explain(self, conn, lo, hi):
        """``[("restore", EXPLAIN text)]`` of the batch's restore statement; nothing runs."""
        self.prepare(conn)
        return [("restore", explain_text(conn, self._write(lo is not None), self.key.range_params(lo, hi)))]


def undo_exists(conn: Connection, spec: Spec) -> bool:
    """Whether backfill ``spec`` recorded anything in ``rowfill.undo_rows``."""
    return undo_store.has_records(conn, spec.name)


def prepare_forward_plan(conn: Connection, store: CheckpointStore, spec: Spec) -> None:
    """Hook of forward planning: no backfill while its rollback is unfinished.

    :param conn: the planning transaction. :param store: the checkpoint store. :param spec: the spec being planned.
    :raises RowfillError: when a rollback of this backfill is unfinished (finish or reset it first).
    :raises SpecError: field ``undo``, when the undo log holds an earlier version's records (``check_recorded_shape``).
    """
    if spec.name.endswith(ROLLBACK_SUFFIX):  # a rollback's own plan
        return
    rb = rollback_name(spec.name)
    if rb in backfills.names(conn):  # registered from the start of a rollback until it finishes
        chunks = store.chunks(rb, conn)
        done = sum(c.status.finished for c in chunks)
        raise RowfillError(
            f"a rollback of {spec.name!r} is in progress ({done} of {len(chunks)} chunks done); running the backfill "
            f"now would fight it. Finish it first (`rowfill rollback {spec.name} --yes` or the DAG "
            f"rowfill_{spec.name}_rollback), or abandon it with `rowfill reset {spec.name} --yes`.")
    if spec.undo:  # its records go into rowfill.undo_rows (migration 0002): nothing to create, one shape to keep
        check_recorded_shape(conn, spec)


def check_recorded_shape(conn: Connection, spec: Spec) -> None:
    """Refuse to add records of other columns to an undo log that holds an earlier version's records.

    A rollback restores the columns the spec names now from each record; records of an earlier version
    (other ``set``/``returns`` columns, or another key, then a ``rowfill reset``) would restore the
    wrong columns.

    :raises SpecError: field ``undo``, saying how to roll the earlier version back or drop its records.
    """
    found = undo_store.recorded_columns(conn, spec.name)
    expected = (sorted(spec.key_columns), sorted(changed_columns(spec)))
    if found is not None and found != expected:
        raise SpecError(
            spec.source, "undo",
            f"the undo log of {spec.name!r} holds records of an earlier version of this backfill (key {found[0]}, "
            f"columns {found[1]}), but this spec would record key {expected[0]}, columns {expected[1]}. Roll that "
            f"back first with the earlier spec (`rowfill rollback {spec.name}`), or, if its previous values are no "
            f"longer needed, delete them: DELETE FROM {undo_store.UNDO_ROWS.sql} WHERE backfill = '{spec.name}'")

