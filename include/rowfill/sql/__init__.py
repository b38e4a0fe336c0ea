"""SQL as text: identifiers (sqlnames), the one reader of user SQL (sqltext), key SQL (keys).

Makes no connection and imports no other layer of rowfill and no Airflow.
"""
