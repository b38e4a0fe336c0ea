"""Test helpers for the backfills console: the audit table's migration applied to a test database.

On this branch only the console's own revision (``r0003_audit``) of rowfill's Alembic migrations
exists; the helper runs its ``upgrade()`` through Alembic's Operations on one connection, the way
Alembic runs a revision, so the tests use the very DDL the migration ships.
"""

from __future__ import annotations

import importlib

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import text

from rowfill.store.catalog import SCHEMA


def migrate_audit(engine) -> None:
    """Create ``rowfill.audit`` on ``engine``'s database with the migration's own ``upgrade()``."""
    revision = importlib.import_module("rowfill.store.migrations.versions.r0003_audit")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        with Operations.context(MigrationContext.configure(conn)):
            revision.upgrade()
