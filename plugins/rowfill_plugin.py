"""Airflow plugin: the rowfill progress page, mounted in the API server and linked in the navigation."""

from airflow.plugins_manager import AirflowPlugin

from rowfill.airflow.web import EXTERNAL_VIEWS, create_app


class RowfillPlugin(AirflowPlugin):
    name = "rowfill"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/rowfill", "name": "rowfill progress"}]
    external_views = EXTERNAL_VIEWS  # the overview under Browse, a "Backfill" tab on DAG and DAG run pages
