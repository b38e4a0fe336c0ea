"""One module per migration of rowfill's schema, in Alembic's revision chain (``down_revision``)."""
