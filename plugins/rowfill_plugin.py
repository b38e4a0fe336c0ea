"""Airflow plugin: the rowfill progress page, mounted in the API server and linked in the navigation."""

from airflow.plugins_manager import AirflowPlugin

from rowfill.airflow.web import create_app


class RowfillPlugin(AirflowPlugin):
    name = "rowfill"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/rowfill", "name": "rowfill progress"}]
    external_views = [{"name": "Backfills", "href": "/rowfill/", "destination": "nav", "url_route": "rowfill", "category": "browse"}]
