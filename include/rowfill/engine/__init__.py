"""Planning, running, writing, pacing, verifying and reporting a backfill.

Imports ``rowfill.store``, ``rowfill.spec.spec`` and ``rowfill.sql``; never Airflow.
"""
