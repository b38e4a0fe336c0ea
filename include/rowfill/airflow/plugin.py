"""The Airflow plugin: the rowfill progress page, mounted in the API server and linked in the navigation.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), which Airflow reads in every
component (``airflow/_shared/plugins_manager``: ``_load_entrypoint_plugins``), so installing the wheel
is enough: no file in the plugins folder. A second plugin named ``rowfill`` (an old copy of
``plugins/rowfill_plugin.py``) would be skipped by Airflow with an "already registered" import error.
"""

from airflow.plugins_manager import AirflowPlugin

from rowfill.airflow.web import create_app

URL_PREFIX = "/rowfill"  # where the page lives in the API server; the navigation link points here


class RowfillPlugin(AirflowPlugin):
    """The progress page as a FastAPI app (``web.create_app``) and its link under Browse in the Airflow UI."""

    name = "rowfill"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "rowfill progress"}]
    external_views = [{"name": "Backfills", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "rowfill",
                       "category": "browse"}]
