from rowfill.airflow.factory import spec_errors_here; spec_errors_here(globals())  # rowfill: bad specs, as this Airflow DAG file's import error
