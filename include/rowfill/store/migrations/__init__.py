"""rowfill's Alembic migrations of its own schema in the target database (run by ``rowfill.store.schema``)."""
