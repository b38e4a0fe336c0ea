"""The Airflow Asset a finished backfill updates: its table, so other DAGs can be scheduled on it.

The URI is the one Airflow's Postgres provider defines and normalises
(``airflow/providers/postgres/assets/postgres.py``: ``postgres://host:port/database/schema/table``,
port 5432 when the connection gives none), so a downstream DAG written as
``schedule=[Asset("postgres://db.internal:5432/app/public/users")]`` runs after each verified backfill
of ``public.users``. Host, port and database are those of the connection the backfill wrote through,
as that connection writes them (``db.internal`` and ``10.0.0.5`` are different Assets to Airflow).

The database is only known at run time (DAG files must not read connections while they are parsed),
so the verify task declares an ``AssetAlias`` (``rowfill_<name>``) as its outlet and, once verify has
passed, adds the table's Asset to it; Airflow then records the event for that Asset, creating the
Asset if no DAG has named it yet (Airflow docs, "Asset aliases"; ``TaskInstance.register_asset_changes_in_db``).
"""

from __future__ import annotations

from urllib.parse import quote

from airflow.sdk import Asset, AssetAlias
from sqlalchemy.engine import URL

from rowfill.spec.spec import Spec
from rowfill.sql.sqlnames import TableName

POSTGRES_PORT = 5432  # the provider's default when the URI gives none (sanitize_uri)


def alias_for(spec: Spec) -> AssetAlias:
    """The verify task's outlet: the alias ``rowfill_<name>`` the table's Asset is added to at run time."""
    return AssetAlias(spec.dag_id)


def outlets(spec: Spec) -> list:
    """What the verify task declares as outlets: the alias, except for a sink, which writes elsewhere
    and leaves the table as it was (``spec.mode``)."""
    return [] if spec.mode == "sink" else [alias_for(spec)]


def table_uri(url: URL, table: TableName) -> str:
    """``postgres://host:port/database/schema/table`` for a schema-qualified table on the database of ``url``.

    :param url: the SQLAlchemy URL rowfill wrote through (host, port, database; the database defaults to
        the user name, as libpq's does).
    :param table: the table, schema-qualified (as pinned at planning, ``rowfill.engine.resolve``).
    :returns: the URI, each part percent-quoted so a name with ``/`` or spaces stays one path segment.
    """
    database = url.database or url.username or "postgres"
    return (f"postgres://{url.host or 'localhost'}:{url.port or POSTGRES_PORT}/{_segment(database)}/"
            f"{_segment(table.schema or 'public')}/{_segment(table.name)}")


def _segment(name: str) -> str:
    """One path segment of the URI: percent-quoted, ``/`` included (a plain lower-case name stays as it is)."""
    return quote(str(name), safe="")


def emit_table_event(context, url: URL, spec: Spec, extra: dict) -> str | None:
    """Add the Asset event of a verified backfill's table to the verify task's alias (``outlets``).

    :param context: the verify task's Airflow context (its ``outlet_events``).
    :param url: the database URL the backfill wrote through. :param spec: the backfill, table pinned.
    :param extra: the event's extra (JSON-able): what the backfill did.
    :returns: the Asset's URI, or None for a sink (no event).
    """
    if spec.mode == "sink":
        return None
    uri = table_uri(url, spec.table)
    context["outlet_events"][alias_for(spec)].add(Asset(uri), extra=extra)
    return uri
