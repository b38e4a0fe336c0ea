"""rowfill: batched, throttled, resumable, exactly-once data backfills for PostgreSQL on Airflow 3.

The package is small on purpose; each module is one idea:

- ``spec``       a backfill spec (YAML) and its validation
- ``sqlnames``   quoting of identifiers (table, key, columns)
- ``keys``       key columns of any orderable type, row-value comparisons, key values as JSON
- ``plan``       splitting the key space into chunks by walking the key's index
- ``checkpoint`` the checkpoint store in the target database
- ``runner``     the batches inside one chunk
- ``writers``    what a batch writes, per mode (``set``, ``sql``); ``transform`` (Python functions),
                 ``sinks`` (batches sent elsewhere), ``undo`` (undo log and rollback) add modes
- ``dryrun``     ``rowfill plan``: what a run would do, changing nothing
- ``throttle``   how long to breathe between batches
- ``factory``    spec -> Airflow DAG; ``rollback_dag`` the rollback DAG of ``undo: true`` specs
- ``alerts``     messages for people when something goes wrong
- ``cli``        the ``rowfill`` command
"""

__version__ = "0.1.0"
