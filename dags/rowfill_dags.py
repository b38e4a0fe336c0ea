"""rowfill: one Airflow DAG per valid backfill spec in ROWFILL_SPECS_DIR (default include/specs).

Invalid specs are reported by rowfill_spec_errors.py. (The words "airflow" and "dag" in this
docstring are what Airflow's safe-mode file discovery looks for; keep them.)
"""

from rowfill.airflow.factory import build_dags

globals().update(build_dags())
