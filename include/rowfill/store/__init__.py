"""rowfill's own schema in the target database: checkpoints, chunks, rate samples.

Imports ``rowfill.spec.spec`` and ``rowfill.sql``; never Airflow.
"""
