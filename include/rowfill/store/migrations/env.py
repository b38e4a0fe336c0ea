"""Alembic's environment for rowfill's schema: run by ``rowfill.store.schema``, never by an ``alembic.ini``.

Online, ``rowfill.store.schema.migrate`` opens the transaction (with its ``lock_timeout`` and the
advisory lock) and hands its connection over in ``config.attributes["connection"]``; Alembic then
runs inside that transaction (Alembic cookbook, "Sharing a Connection across one or more programmatic
migration commands"). Offline (``rowfill db migrate --sql``) it writes the DDL for a DBA instead.
The version table is ``rowfill.alembic_version``: inside rowfill's schema, never next to Airflow's
own ``alembic_version`` in the metadata database.
"""

from __future__ import annotations

from alembic import context

from rowfill.store.catalog import SCHEMA

VERSION_TABLE = "alembic_version"  # Alembic's default name, in rowfill's schema (version_table_schema)

config = context.config

if context.is_offline_mode():
    # named paramstyle: the script's '%' stay single, as psql reads them (Alembic's own env.py template does this)
    context.configure(dialect_name="postgresql", literal_binds=True, dialect_opts={"paramstyle": "named"},
                      version_table=VERSION_TABLE, version_table_schema=SCHEMA, transactional_ddl=True)
    with context.begin_transaction():
        # the version table lives in the schema, so the schema comes first (a no-op where it exists)
        context.execute(f"SET LOCAL lock_timeout = '{config.attributes.get('lock_timeout_ms', 2000)}ms'")
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()
else:
    context.configure(connection=config.attributes["connection"], version_table=VERSION_TABLE,
                      version_table_schema=SCHEMA, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
