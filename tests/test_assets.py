"""The Asset a verified backfill updates is named the way Airflow's Postgres provider names a table,
already in the provider's normal form, so a downstream DAG's `Asset("postgres://...")` matches it.
(A downstream DAG running because of it, through a real scheduler: test_airflow_assets_pause_e2e.py.)"""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow.providers.postgres.assets.postgres import sanitize_uri
from airflow.sdk import AssetAlias
from sqlalchemy.engine import make_url

from helpers import spec_for
from rowfill.airflow.assets import outlets, table_uri
from rowfill.sql.sqlnames import TableName


def test_the_table_uri_is_the_postgres_providers_normal_form():
    for url, table, expected in [
        ("postgresql+psycopg://rowfill:pw@db.internal/app", TableName("public", "users"),
         "postgres://db.internal:5432/app/public/users"),
        ("postgresql://rowfill@10.0.0.5:6543/sales", TableName("billing", "invoices"),
         "postgres://10.0.0.5:6543/sales/billing/invoices"),
    ]:
        uri = table_uri(make_url(url), table)
        assert uri == expected and "pw" not in uri
        assert sanitize_uri(urlsplit(uri)).geturl() == uri  # nothing left for Airflow to normalise


def test_verify_declares_the_alias_except_for_a_sink_which_leaves_the_table_as_it_was(tmp_path):
    assert outlets(spec_for(tmp_path, name="fill")) == [AssetAlias("rowfill_fill")]
    sink = spec_for(tmp_path, name="export", set=None, sink="rowfill.examples.search_export:to_jsonl",
                    select={"first_name": "first_name"})
    assert outlets(sink) == []
