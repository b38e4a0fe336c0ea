"""The backfills console's pieces that need no Airflow: what state to show a backfill in, and its
charts as SVG text. ``rowfill.airflow.web`` renders them inside Airflow's API server."""
