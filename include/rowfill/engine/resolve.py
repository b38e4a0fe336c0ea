"""Which relation a spec's ``table`` is: resolved once, when planning, and held to afterwards.

An unqualified ``table: orders`` means what it means on the target connection: PostgreSQL's own
lookup, ``to_regclass``, with that connection's ``search_path`` (PostgreSQL docs, 5.9.3 "The
Schema Search Path" and 9.26 "System Information Functions"). Planning stores the
schema-qualified name it found and the relation's OID in ``rowfill.backfills``; every later task
of the backfill (chunks, verify, summary, status, dry run, rollback) works on that stored name,
after checking that it still names the relation with the stored OID. A table dropped and created
again, renamed away, or a search_path that now finds another table first therefore stops the
backfill with a ``table`` error, before anything is written, instead of writing a relation other
than the one planned.

Entry points call ``pin`` (planning) or ``pinned``/``pinned_spec`` (everything later) and go on
with the spec they return, whose ``table`` is always schema-qualified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from rowfill.errors import SpecError
from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql.catalog import search_path  # re-exported: messages name the search_path a name was resolved with
from rowfill.sql.sqlnames import TableName
from rowfill.store import backfills
from rowfill.store.checkpoint import CheckpointStore

_RELKINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table",
             "S": "sequence", "i": "index", "I": "partitioned index", "c": "composite type", "t": "TOAST table"}

@dataclass(frozen=True)
class Relation:
    """A relation as found in the catalog: its schema-qualified name and its OID."""

    table: TableName
    oid: int


def _rollback(name: str) -> bool:
    # rowfill.engine.undo.ROLLBACK_SUFFIX; spec names cannot contain '.', so only a rollback's name has one
    return name.endswith(".rollback")


def lookup(conn: Connection, table: TableName) -> tuple[Relation, str] | None:
    """(relation, relkind) that ``table`` names on this connection now; None if it names nothing."""
    row = pg_catalog.relation(conn, table.sql)
    if row is None:
        return None
    return Relation(table.resolved(row.schema, row.name), int(row.oid)), row.relkind


def resolve(conn: Connection, spec: Spec) -> Relation:
    """The relation ``spec.table`` names on this connection (search_path for unqualified names).

    Raises SpecError on field ``table`` when it names nothing, or something that is not a table
    (rowfill writes tables and partitioned tables; a view would hide where the rows are).
    """
    found = lookup(conn, spec.table)
    if found is None:
        where = "" if spec.table.qualified else f", looked up with search_path {search_path(conn)}"
        raise SpecError(spec.source, "table", f"table {spec.table} does not exist in the target database "
                                              f"(connection {spec.connection!r}{where})")
    relation, kind = found
    if kind not in ("r", "p"):
        raise SpecError(spec.source, "table", f"{relation.table} is a {_RELKINDS.get(kind, 'relation of kind ' + kind)}, "
                                              "not a table; name the table whose rows the backfill changes")
    return relation


def _stored_row(conn: Connection, name: str) -> dict | None:
    """The backfill's row of rowfill.backfills as a dict (to_jsonb: columns an older store lacks are simply absent)."""
    return backfills.row(conn, name, check_table=True)


def _stored_relation(row: dict | None, meaning: str | None) -> Relation | None:
    """The relation recorded at planning; ``meaning``: how the spec wrote the table (kept for the fingerprint)."""
    if not row or row.get("table_oid") is None:
        return None
    return Relation(TableName(row["table_schema"], row["table_name"], meaning), int(row["table_oid"]))


def _changed(spec: Spec, planned: Relation, problem: str, name: str | None = None) -> SpecError:
    name = name or spec.name
    return SpecError(
        spec.source, "table",
        f"the table of backfill {name!r} changed since it was planned: it was planned on {planned.table} "
        f"(relation OID {planned.oid}), and {problem}. Continuing would write another relation than the one planned, "
        f"so nothing was written. If the change is intended, start over with `rowfill reset {name} --yes` "
        "(progress is forgotten, rows already written stay written).",
    )


def check_unchanged(conn: Connection, spec: Spec, planned: Relation, name: str | None = None) -> None:
    """``planned``'s name still names the relation with ``planned``'s OID; else a ``table`` SpecError.

    :param conn: a connection. :param spec: the spec (its source for the error). :param planned: the relation at planning.
    :param name: the backfill named in the error (default: the spec's).
    :raises SpecError: field ``table``, when the table was dropped, renamed, or dropped and created again:
        the plan's chunks and cursors belong to the old one.
    """
    now = lookup(conn, planned.table)
    if now is None:
        raise _changed(spec, planned, f"{planned.table} does not exist any more (dropped or renamed)", name)
    if now[0].oid != planned.oid:
        raise _changed(spec, planned, f"{planned.table} is now another relation (OID {now[0].oid}: dropped and "
                                      "created again?)", name)


def _legacy_fingerprint(spec: Spec) -> str | None:
    """The fingerprint rowfill gave this spec before names were resolved: an unqualified table read as ``public.<name>``."""
    if spec.table.written_qualified:
        return None
    return dataclasses.replace(spec, table=TableName("public", spec.table.name)).fingerprint


def _check_legacy(conn: Connection, spec: Spec, row: dict | None, found: Relation) -> None:
    """A plan made before names were resolved was made on ``public.<name>``: adopt it if that is still the table."""
    if not row or row.get("fingerprint") in (None, spec.fingerprint):
        return
    legacy = _legacy_fingerprint(spec)
    if legacy is None or row["fingerprint"] != legacy:
        return  # a different meaning: CheckpointStore.register says so
    if found.table.schema != "public":
        raise SpecError(
            spec.source, "table",
            f"backfill {spec.name!r} was planned by an earlier rowfill on public.{spec.table.name} (it read an "
            f"unqualified name as public), but `{spec.table.meaning}` now resolves to {found.table} with search_path "
            f"{search_path(conn)}. Write the table you mean schema-qualified (table: public.{spec.table.name} to "
            f"finish the old plan), or start over with `rowfill reset {spec.name} --yes`.",
        )
    backfills.retable(conn, spec.name, spec.fingerprint, spec.table.meaning)


def same_meaning(stored_fingerprint: str, spec: Spec) -> bool:
    """Was a stored plan made for what ``spec`` (table resolved) means? Plans from before name
    resolution carry ``public.<name>`` for an unqualified name, and still match while it resolves there."""
    if stored_fingerprint == spec.fingerprint:
        return True
    return spec.table.schema == "public" and stored_fingerprint == _legacy_fingerprint(spec)


def pin(conn: Connection, spec: Spec) -> Spec:
    """Planning (under the planning lock): resolve the table, hold it to the stored plan, register, record it.

    Returns the spec with its table schema-qualified. Raises SpecError (``table``) when the
    relation is not the one the stored plan was made on, and PlanChanged (from ``register``)
    when the spec means something else now.
    """
    store = CheckpointStore(conn.engine)
    row = _stored_row(conn, spec.name)
    if _rollback(spec.name):
        # a rollback walks its own undo table (always qualified); its row holds the table it restores,
        # recorded by rowfill.engine.rollback.plan_rollback, which must still be the same relation
        target = _stored_relation(row, None)
        if target is not None:
            check_unchanged(conn, spec, target, spec.name.removesuffix(".rollback"))
        store.register(conn, spec)
        return spec
    found = resolve(conn, spec)
    planned = _stored_relation(row, spec.table.meaning)
    if planned is not None and planned.oid != found.oid:
        now = lookup(conn, planned.table)
        if now is not None and now[0].oid == planned.oid:
            raise _changed(spec, planned, f"`{spec.table.meaning}` now resolves to {found.table} (OID {found.oid}) with "
                                          f"search_path {search_path(conn)}")
        check_unchanged(conn, spec, planned)
        raise _changed(spec, planned, f"`{spec.table.meaning}` now resolves to {found.table} (OID {found.oid})")
    _check_legacy(conn, spec, row, found)
    store.register(conn, spec)
    record(conn, spec.name, found)
    return dataclasses.replace(spec, table=found.table)


def record(conn: Connection, name: str, relation: Relation) -> None:
    """Store ``relation`` as the backfill's table (the backfill's row must exist).

    :raises ValueError: ``relation``'s name has no schema (only names ``lookup`` resolved are recorded).
    """
    schema = relation.table.schema
    if schema is None:
        raise ValueError(f"{relation.table}: only a resolved table name (with its schema) is recorded")
    backfills.record_relation(conn, name, schema, relation.table.name, relation.oid)


def pinned_relation(conn: Connection, spec: Spec, names: tuple[str, ...] | None = None) -> Relation:
    """The relation later tasks must use: the one stored at planning (OID checked), else resolved now.

    ``names``: the rows of rowfill.backfills to take it from, first found wins (default the
    backfill's own). A backfill never planned (a dry run, status) is resolved with the
    connection's search_path, as planning would.
    """
    names = names or (spec.name,)
    row = None
    for name in names:
        row = _stored_row(conn, name)
        planned = _stored_relation(row, spec.table.meaning)
        if planned is not None:
            check_unchanged(conn, spec, planned, name.removesuffix(".rollback"))
            return planned
        if row is not None:
            break
    found = resolve(conn, spec)
    _check_legacy_read_only(conn, spec, row, found)
    return found


def _check_legacy_read_only(conn: Connection, spec: Spec, row: dict | None, found: Relation) -> None:
    legacy = _legacy_fingerprint(spec)
    if row and legacy and row.get("fingerprint") == legacy and row.get("fingerprint") != spec.fingerprint \
            and found.table.schema != "public":
        raise SpecError(
            spec.source, "table",
            f"backfill {spec.name!r} was planned by an earlier rowfill on public.{spec.table.name}, but "
            f"`{spec.table.meaning}` now resolves to {found.table} with search_path {search_path(conn)}; plan it again "
            f"(run the DAG or `rowfill run {spec.name}`), which says what to do",
        )


def pinned(conn: Connection, spec: Spec, names: tuple[str, ...] | None = None) -> Spec:
    """``spec`` with the table later tasks must use (see ``pinned_relation``)."""
    return dataclasses.replace(spec, table=pinned_relation(conn, spec, names).table)


def pinned_spec(engine: Engine, spec: Spec, names: tuple[str, ...] | None = None) -> Spec:
    """``pinned`` on a connection of its own."""
    with engine.connect() as conn:
        return pinned(conn, spec, names)


def stored_table(conn: Connection, spec: Spec) -> tuple[TableName, str | None]:
    """For people (status): the table the backfill works on, and what is wrong with it (None if nothing)."""
    try:
        return pinned_relation(conn, spec).table, None
    except SpecError as exc:
        return spec.table, exc.problem
