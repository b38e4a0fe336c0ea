from rowfill.airflow.factory import dags_here; dags_here(globals())  # rowfill: one Airflow DAG per valid spec
