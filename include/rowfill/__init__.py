"""rowfill: batched, throttled, resumable, exactly-once data backfills for PostgreSQL on Airflow 3.

The package is layered; a layer imports only the layers below it (README "Layout", checked by
``tests/test_layers.py``):

- ``ops``      the ``rowfill`` command and its terminal views
- ``airflow``  DAG factory, operators, triggers, callbacks and notifiers, the UI plugin; the only
               layer that imports Airflow
- ``engine``   planning, the chunk runner, the writers of each mode, pacing, verifying, reporting
- ``store``    rowfill's own tables in the target database: checkpoints, rate samples
- ``spec``     a backfill spec (YAML): loading, validation and the value types of its fields
- ``sql``      SQL as text: identifiers, the one reader of user SQL, key SQL

``errors`` (at the root) holds the exceptions every layer raises.
"""

__version__ = "0.1.0"
