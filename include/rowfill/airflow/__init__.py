"""The Airflow side: DAG factory, operators, triggers, callbacks and notifiers, pools, the UI plugin.

The only layer that imports Airflow.
"""
