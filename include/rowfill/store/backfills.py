"""Statements over ``rowfill.backfills``: one row per backfill, what it means and which table it walks.

The table's columns are in rowfill's migrations (``rowfill.store.migrations``). Rows are
read with ``to_jsonb`` where older installs may lack a later column: a missing column is simply
an absent key, not an error.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from rowfill.store import catalog
from rowfill.store.catalog import SCHEMA

_ROW = text(f"SELECT to_jsonb(b) FROM {SCHEMA}.backfills b WHERE b.name = :n")
_FINGERPRINT = text(f"SELECT fingerprint FROM {SCHEMA}.backfills WHERE name = :n")
_NAMES = text(f"SELECT name FROM {SCHEMA}.backfills")
_RETABLE = text(f"UPDATE {SCHEMA}.backfills SET fingerprint = :f, spec = jsonb_set(spec, '{{table}}', "
                "to_jsonb(CAST(:t AS text))) WHERE name = :n")
_RELATION = text(f"UPDATE {SCHEMA}.backfills SET table_schema = :s, table_name = :t, table_oid = :o WHERE name = :n")
_EXISTS = text(f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.backfills WHERE name = :n)")


def row(conn: Connection, name: str, *, check_table: bool = False) -> dict | None:
    """The backfill's row as a dict of its columns (JSON values); None if there is none.

    :param check_table: first check that ``rowfill.backfills`` exists (None if not), for readers
        that may run before anything was ever planned on this database.
    """
    if check_table and not catalog.exists(conn, catalog.own("backfills")):
        return None
    return conn.execute(_ROW, {"n": name}).scalar()


def exists(conn: Connection, name: str) -> bool:
    """Whether the backfill ``name`` is registered (``rowfill.backfills`` must exist)."""
    return conn.execute(_EXISTS, {"n": name}).scalar_one()


def fingerprint(conn: Connection, name: str) -> str | None:
    """The fingerprint of the meaning the backfill was planned for; None if it never was."""
    return conn.execute(_FINGERPRINT, {"n": name}).scalar()


def names(conn: Connection) -> set[str]:
    """Every registered backfill (rollbacks included, as ``<name>.rollback``)."""
    return set(conn.execute(_NAMES).scalars())


def retable(conn: Connection, name: str, fingerprint: str, table: str) -> None:
    """Rewrite a stored plan's table (as the spec writes it) and fingerprint, for a plan an older rowfill made."""
    conn.execute(_RETABLE, {"f": fingerprint, "t": table, "n": name})


def record_relation(conn: Connection, name: str, schema: str, table: str, oid: int) -> None:
    """Store the relation (schema, name, OID) the backfill's table resolved to; the row must exist."""
    conn.execute(_RELATION, {"s": schema, "t": table, "o": oid, "n": name})


_FORGET = text(f"DELETE FROM {SCHEMA}.backfills WHERE name = :n")


def forget(conn: Connection, name: str) -> int:
    """Delete the backfill's row, and with it (ON DELETE CASCADE) its chunks, samples and skipped keys.

    :returns: rows deleted (0 or 1).
    """
    return conn.execute(_FORGET, {"n": name}).rowcount
