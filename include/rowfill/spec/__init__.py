"""The spec: loading and validating YAML, and the value types of its fields.

Imports only ``rowfill.sql`` (to read SQL fields); no database access, no Airflow.
"""
