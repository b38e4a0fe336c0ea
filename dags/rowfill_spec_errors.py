"""rowfill: invalid backfill specs, shown as this file's import error in the Airflow UI banner.

Kept apart from rowfill_dags.py because Airflow refuses to run any DAG of a file with an import
error; this way one bad spec never stops the good ones. (Safe-mode discovery needs the words
"airflow" and "dag" here.)
"""

from rowfill.airflow.factory import raise_spec_errors

raise_spec_errors()
