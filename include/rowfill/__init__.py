"""rowfill: batched, throttled, resumable, exactly-once data backfills for PostgreSQL on Airflow 3.

The package is small on purpose; each module is one idea:

- ``spec``       a backfill spec (YAML) and its validation
- ``sqlnames``   quoting of identifiers (table, key, columns)
- ``plan``       splitting the key space into chunks by walking the key's index
- ``checkpoint`` the checkpoint store in the target database
- ``runner``     the batches inside one chunk
- ``throttle``   how long to breathe between batches
- ``factory``    spec -> Airflow DAG
- ``alerts``     messages for people when something goes wrong
- ``cli``        the ``rowfill`` command
"""

__version__ = "0.1.0"
