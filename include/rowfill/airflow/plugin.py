"""The Airflow plugin: the rowfill progress page, mounted in the API server and linked in the navigation.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), which Airflow reads in every
component (``airflow/_shared/plugins_manager``: ``_load_entrypoint_plugins``), so installing the wheel
is enough: no file in the plugins folder. A second plugin named ``rowfill`` (an old copy of
``plugins/rowfill_plugin.py``) would be skipped by Airflow with an "already registered" import error.
"""

from airflow.plugins_manager import AirflowPlugin

from rowfill.airflow.web import EXTERNAL_VIEWS, URL_PREFIX, create_app


class RowfillPlugin(AirflowPlugin):
    """The backfills console as a FastAPI app (``web.create_app``), linked under Browse and as a tab on DAG and run pages."""

    name = "rowfill"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "rowfill progress"}]
    external_views = EXTERNAL_VIEWS  # the overview under Browse, a "Backfill" tab on DAG and DAG run pages
