"""Where rowfill's own schema lives, and whether a part of it exists yet.

The schema is created by ``rowfill db migrate`` (``rowfill.store.schema``), so read-only commands
(``rowfill status``, the dry run, the UI page) must cope with a database that has none of it yet:
they ask here first instead of failing on a missing relation. ``to_regclass`` answers NULL for a missing relation where a cast to ``regclass`` would
raise (PostgreSQL docs, 9.27 "System Information Functions", ``to_regclass``), and it resolves
the name with the connection's ``search_path`` like any statement would.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

SCHEMA = "rowfill"


def own(table: str) -> str:
    """The schema-qualified name of one of rowfill's tables: ``own("chunks")`` -> ``"rowfill.chunks"``."""
    return f"{SCHEMA}.{table}"


@cache
def _existing(count: int) -> TextClause:
    return text("SELECT " + ", ".join(f"to_regclass(:r{i}) IS NOT NULL" for i in range(count)))


def existing(conn: Connection, *relations: str) -> tuple[bool, ...]:
    """Whether each of ``relations`` exists, in one round trip.

    :param conn: any connection to the target database.
    :param relations: relation names as SQL text, schema-qualified and quoted where needed
        (``own("chunks")``, ``rowfill.sql.sqlnames.Name.sql``).
    :returns: one bool per relation, in order.
    :raises sqlalchemy.exc.DBAPIError: a name ``to_regclass`` cannot parse (e.g. an unbalanced quote).
    """
    if not relations:
        return ()
    return tuple(conn.execute(_existing(len(relations)), {f"r{i}": r for i, r in enumerate(relations)}).one())


def exists(conn: Connection, relation: str) -> bool:
    """Whether ``relation`` (SQL text, as for ``existing``) exists; raises as ``existing`` does."""
    return existing(conn, relation)[0]
