"""What the connected role may do with the user's table: one catalog read, before a plan writes anything.

Without it a role missing a grant fails deep inside planning with PostgreSQL's bare "permission
denied" (in the middle of an EXPLAIN or a key walk); with it the plan is refused at once with the
GRANT to apply (``rowfill.engine.plan``). ``has_any_column_privilege`` counts table-level and
column-level grants alike (PostgreSQL docs, 9.27 "Access Privilege Inquiry Functions").
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Connection

_TABLE = text(
    "SELECT current_user, has_schema_privilege(c.relnamespace, 'USAGE'), "
    "has_any_column_privilege(c.oid, 'SELECT'), has_any_column_privilege(c.oid, 'UPDATE') "
    "FROM pg_class c WHERE c.oid = to_regclass(:t)"
)


class TablePrivileges(NamedTuple):
    """The connected role's privileges on one table: its name, USAGE on the table's schema, SELECT and UPDATE
    (on the table or any of its columns)."""

    role: str
    usage: bool
    select: bool
    update: bool


def table_privileges(conn: Connection, table_sql: str) -> TablePrivileges | None:
    """The connected role's privileges on ``table_sql`` (SQL text, as ``TableName.sql``); None if there is no such table.

    :raises sqlalchemy.exc.DBAPIError: a name ``to_regclass`` cannot parse.
    """
    row = conn.execute(_TABLE, {"t": table_sql}).first()
    return TablePrivileges(*row) if row else None
