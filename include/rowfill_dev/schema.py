"""rowfill's schema for development databases: the one helper tests, the demo and the benches call.

rowfill runs no DDL while it works (``rowfill.store.schema``), so every database a test, the demo
or a bench runs a backfill on is migrated first, exactly as a user does with ``rowfill db migrate``.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from rowfill.engine.database import engine_from_url
from rowfill.store.schema import migrate


def migrate_database(target: str | Engine) -> str:
    """Apply rowfill's migrations to ``target`` (a URL or an engine) as ``rowfill db migrate`` does.

    :returns: the revision the schema is at afterwards.
    :raises rowfill.store.schema.MigrationFailed: as ``migrate`` does.
    """
    engine = engine_from_url(target) if isinstance(target, str) else target
    try:
        return migrate(engine)[1]
    finally:
        if isinstance(target, str):
            engine.dispose()
