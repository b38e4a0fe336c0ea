"""Undo: the previous values of every row a backfill changes, recorded in the batch's own transaction,
and the rollback that puts them back.

With ``undo: true`` each batch also writes, in the same transaction as its UPDATE and its
checkpoint advance, one row per changed row into ``rowfill.undo_<name>``: the row's key, the
columns' previous values (``old_<column>``) and the values the backfill wrote (``new_<column>``).
A crash can therefore never leave a changed row without its undo record, nor a record without
its change. A row written twice (a rerun after ``rowfill reset``) keeps its *first* previous value.

``rowfill rollback NAME`` (or the DAG ``rowfill_<name>_rollback``) is itself a backfill, walking
the undo log by key in chunks and batches with the spec's throttle, checkpointed under the name
``<name>.rollback`` (registered from the moment the rollback starts until it finishes; the
backfill refuses to plan meanwhile). Each batch deletes its undo records and restores the previous values of
the rows that still hold what the backfill wrote; a row the application changed since is left
alone (and counted), because its current value is newer than anything rowfill knows. Planning
and finishing a rollback is ``rowfill.engine.rollback``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from rowfill.engine.writers import BatchWriter, SetWriter, explain_text
from rowfill.errors import RowfillError, SpecError
from rowfill.spec.spec import Spec
from rowfill.sql.keys import Key, column_types, load_key
from rowfill.sql.sqlnames import TableName, clause, literal, quote
from rowfill.store import backfills, catalog
from rowfill.store.catalog import SCHEMA
from rowfill.store.checkpoint import CheckpointStore

ROLLBACK_SUFFIX = ".rollback"  # a name no spec can have ('.' is not allowed in spec names)
_TEXT_COMPARED = {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}  # no '=' operator


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
    """The undo log table of backfill ``name``: ``rowfill.undo_<name>``, shortened with a hash past
    PostgreSQL's 63-byte names so two backfills never share one.
    """
    table = f"undo_{name}"
    if len(table.encode()) > 63:  # PostgreSQL would truncate; keep it unique instead
        table = f"undo_{name[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return TableName(SCHEMA, table)


def changed_columns(spec: Spec) -> list[str]:
    """The columns a backfill changes: the ``set`` columns, or a transform's ``returns``."""
    return list(spec.set) if spec.set else list(spec.returns)


@dataclass(frozen=True)
class UndoLog:
    """The undo table of one backfill: key columns, then old_<column> and new_<column> per changed column."""

    table: TableName
    key: Key
    columns: tuple[str, ...]
    types: tuple[str, ...]

    @classmethod
    def for_spec(cls, spec: Spec, key: Key, columns, types) -> "UndoLog":
        """The undo log of ``spec``, with the key and the changed ``columns`` and their SQL ``types``."""
        return cls(undo_table(spec.name), key, tuple(columns), tuple(types))

    @classmethod
    def load(cls, conn: Connection, spec: Spec) -> "UndoLog":
        """From the target table's current types (the undo table is created with the same ones)."""
        key = load_key(conn, spec)
        types = {n: t for n, (t, _) in column_types(conn, spec.table.sql).items()}
        cols = changed_columns(spec)
        return cls.for_spec(spec, key, cols, [types[c] for c in cols])

    @staticmethod
    def old(col: str) -> str:
        """The quoted undo-log column of ``col``'s previous value (``old_<col>``)."""
        return quote(f"old_{col}")

    @staticmethod
    def new(col: str) -> str:
        """The quoted undo-log column of ``col``'s written value (``new_<col>``)."""
        return quote(f"new_{col}")

    def column_names(self) -> list[str]:
        """The undo table's columns in order: the key's, then ``old_*``, then ``new_*``."""
        return [*self.key.columns, *(f"old_{c}" for c in self.columns), *(f"new_{c}" for c in self.columns)]

    def check_names(self, spec: Spec) -> None:
        """Raise SpecError (field ``undo``) if a column name would exceed 63 bytes or repeat another."""
        names = self.column_names()
        too_long = [n for n in names if len(n.encode()) > 63]
        if too_long or len(set(names)) != len(names):
            raise SpecError(spec.source, "undo", f"cannot name the undo log's columns {too_long or names} (PostgreSQL "
                            "allows 63 bytes per name, and old_/new_ names must not repeat a key column); "
                            "rename the column or leave undo off")

    def ddl(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` of the undo table (key columns NOT NULL, primary key on the key)."""
        cols = [f"{quote(c)} {t} NOT NULL" for c, t in zip(self.key.columns, self.key.types)]
        cols += [f"{self.old(c)} {t}" for c, t in zip(self.columns, self.types)]
        cols += [f"{self.new(c)} {t}" for c, t in zip(self.columns, self.types)]
        pk = ", ".join(quote(c) for c in self.key.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.table.sql} ({', '.join(cols)}, PRIMARY KEY ({pk}))"

    def ensure(self, conn: Connection, spec: Spec) -> None:
        """Create the undo table, or check that the one there has the shape this spec writes.

        :param conn: a connection in the planning transaction. :param spec: the backfill.
        :raises SpecError: field ``undo``, when the table there has other columns: it belongs to an earlier version
            of the backfill, whose previous values a rollback may still need.
        """
        self.check_names(spec)
        expected = dict(zip(self.column_names(), [*self.key.types, *self.types, *self.types]))
        existing = column_types(conn, self.table.sql)
        if not existing:
            conn.execute(clause(self.ddl()))
            # COMMENT ON takes no bound parameter: the text is quoted by the driver, never pasted
            comment = (f"rowfill undo log of backfill {spec.name} on {spec.table}: previous (old_*) and written (new_*) "
                       "values by key; restored by rowfill rollback")
            conn.execute(clause(f"COMMENT ON TABLE {self.table.sql} IS {literal(conn, comment)}"))
            return
        found = {n: t for n, (t, _) in existing.items()}
        if found != expected:
            raise SpecError(
                spec.source, "undo",
                f"the undo log {self.table} has columns {found}, but this spec would record {expected}: it belongs to "
                f"an earlier version of this backfill. Roll that back first (`rowfill rollback {spec.name}`), or, if "
                f"its previous values are no longer needed, drop it: DROP TABLE {self.table.sql}",
            )

    # -- recording ---------------------------------------------------------------------------
    def _returning_insert(self, update_sql: str, okey: list[str], oold: list[str], t: str) -> str:
        """The UPDATE's rows into the undo log; the statement returns the rows written. The INSERT
        runs although the final SELECT does not read it: PostgreSQL runs every data-modifying WITH once."""
        kcols = ", ".join(quote(c) for c in self.key.columns)
        target = ", ".join([kcols, *(self.old(c) for c in self.columns), *(self.new(c) for c in self.columns)])
        returning = ", ".join([*(f"o.{k}" for k in okey), *(f"o.{o}" for o in oold), *(f"{t}.{quote(c)}" for c in self.columns)])
        refresh = ", ".join(f"{self.new(c)} = EXCLUDED.{self.new(c)}" for c in self.columns)
        picked = ", ".join([*okey, *oold, *(quote(c) for c in self.columns)])
        return (f"u AS ({update_sql} RETURNING {returning}), "
                f"i AS (INSERT INTO {self.table.sql} ({target}) SELECT {picked} FROM u "
                f"ON CONFLICT ({kcols}) DO UPDATE SET {refresh}) "
                "SELECT count(*) FROM u")

    def _old_rows(self, t: str, rng_where: str, lock: bool, order: str) -> tuple[str, list[str], list[str]]:
        okey = [quote(f"__rowfill_k{i}") for i in range(1, len(self.key.columns) + 1)]
        oold = [quote(f"__rowfill_o{i}") for i in range(1, len(self.columns) + 1)]
        cols = [f"{quote(c)} AS {n}" for c, n in zip(self.key.columns, okey)]
        cols += [f"{quote(c)} AS {n}" for c, n in zip(self.columns, oold)]
        tail = f" ORDER BY {order} FOR NO KEY UPDATE" if lock else ""
        return f"o AS (SELECT {', '.join(cols)} FROM {t} WHERE {rng_where}{tail})", okey, oold

    @staticmethod
    def _row(names: list[str], prefix: str) -> str:
        refs = [f"{prefix}.{n}" for n in names]
        return refs[0] if len(refs) == 1 else "(" + ", ".join(refs) + ")"

    def recording_set(self, t: str, assignments: str, rng_where: str, where: str, qkey: Key) -> str:
        """``set`` mode: lock and read the previous values, UPDATE, and record both, in one statement.

        The CTE's row locks return the rows' latest committed versions, so the recorded previous
        values are exactly the values the UPDATE replaces, even under concurrent writes.
        """
        o, okey, oold = self._old_rows(t, rng_where, True, self.key.order_by())
        update = f"UPDATE {t} SET {assignments} FROM o WHERE {qkey.row()} = {self._row(okey, 'o')}{where}"
        return f"WITH {o}, " + self._returning_insert(update, okey, oold, t)

    def recording_update(self, t: str, sets: str, source: str, match: str, rng_where: str, vrow: str, qkey: Key) -> str:
        """``transform`` mode (rows already locked): UPDATE from the arrays, recording previous and new values."""
        o, okey, oold = self._old_rows(t, rng_where, False, "")
        update = (f"UPDATE {t} SET {sets} FROM {source}, o "
                  f"WHERE {match} AND {self._row(okey, 'o')} = {vrow}")
        return f"WITH {o}, " + self._returning_insert(update, okey, oold, t)

    # -- restoring ---------------------------------------------------------------------------
    def restore_sql(self, t: str, rng: str) -> str:
        """Delete a batch of undo records and put back the previous values of rows still holding what was written."""
        qkey = self.key.qualified(t)
        drow = "(" + ", ".join(f"d.{quote(c)}" for c in self.key.columns) + ")" if self.key.composite else f"d.{quote(self.key.columns[0])}"
        unchanged = []
        for c, typ in zip(self.columns, self.types):
            cur, new = f"{t}.{quote(c)}", f"d.{self.new(c)}"
            if typ.split("(")[0].strip().lower() in _TEXT_COMPARED:
                cur, new = f"CAST({cur} AS text)", f"CAST({new} AS text)"
            unchanged.append(f"{cur} IS NOT DISTINCT FROM {new}")
        sets = ", ".join(f"{quote(c)} = d.{self.old(c)}" for c in self.columns)
        return (f"WITH d AS (DELETE FROM {self.table.sql} WHERE {rng} RETURNING *), "
                f"r AS (UPDATE {t} SET {sets} FROM d WHERE {qkey.row()} = {drow} AND {' AND '.join(unchanged)} RETURNING 1) "
                "SELECT count(*) FROM r")


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
        if self.lock_first:
            self.lock_rows(conn, lo, hi)
        return conn.exec_driver_sql(self._write(lo is not None), self.key.range_params(lo, hi)).scalar()


# -- the rollback as a backfill of its own ------------------------------------------------------


def rollback_spec(spec: Spec) -> Spec:
    """The rollback of ``spec``: walk its undo table by key, with the spec's chunking, throttle and timeouts."""
    return dataclasses.replace(
        spec, name=rollback_name(spec.name), table=undo_table(spec.name), where=None, set={}, sql=None,
        transform=None, sink=None, select={}, joins=None, returns=(), undo=False,
        description=f"rollback of {spec.name}",
    )


class RestoreWriter(BatchWriter):
    """Batches of the rollback: walk the undo table, restore the target table.

    ``forward`` must have its table pinned (``rollback_target``): the restore names it qualified.
    """

    def __init__(self, spec: Spec, forward: Spec):
        super().__init__(spec)
        self.forward = forward

    def build(self, conn):
        """The undo log as it is (its ``old_*`` types from the undo table itself)."""
        undo_types = {n: t for n, (t, _) in column_types(conn, self.spec.table.sql).items()}
        cols = changed_columns(self.forward)
        self.undo = UndoLog(self.spec.table, self.key, tuple(cols), tuple(undo_types[f"old_{c}"] for c in cols))

    def _write(self, has_lo: bool):
        return self.statement(("restore", has_lo), lambda: clause(
            self.undo.restore_sql(self.forward.table.sql, self.key.range_text(has_lo, True))))

    def apply(self, conn, lo, hi) -> int:
        """Delete the batch's undo records and restore the rows that still hold what the backfill wrote;
        returns the rows restored (rows changed since are left alone).
        """
        self.prepare(conn)
        return conn.execute(self._write(lo is not None), self.key.range_params(lo, hi)).scalar()

    def explain(self, conn, lo, hi):
        """``[("restore", EXPLAIN text)]`` of the batch's restore statement; nothing runs."""
        self.prepare(conn)
        return [("restore", explain_text(conn, self._write(lo is not None), self.key.range_params(lo, hi)))]


def undo_exists(conn: Connection, spec: Spec) -> bool:
    """Whether the undo log of ``spec`` (``rowfill.undo_<name>``, schema-qualified) exists."""
    return catalog.exists(conn, undo_table(spec.name).sql)


def prepare_forward_plan(conn: Connection, store: CheckpointStore, spec: Spec) -> None:
    """Hook of forward planning: no backfill while its rollback is unfinished; create the undo log.

    :param conn: the planning transaction. :param store: the checkpoint store. :param spec: the spec being planned.
    :raises RowfillError: when a rollback of this backfill is unfinished (finish or reset it first).
    :raises SpecError: field ``undo``, from ``UndoLog.ensure``, when the undo log has another shape.
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
    if spec.undo:
        UndoLog.load(conn, spec).ensure(conn, spec)

