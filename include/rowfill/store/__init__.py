"""rowfill's own schema in the target database: every statement over it, and its lifecycle (Alembic
migrations in ``migrations/``, the version check and `rowfill db migrate` in ``schema``, grants in ``grants``).

Imports ``rowfill.spec.spec`` and ``rowfill.sql``; never Airflow.
"""
