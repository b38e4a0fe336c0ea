"""The console's audit trail, ``rowfill.audit``: who did what to a backfill, when, and why.

Every action on a backfill, from the Airflow console or the ``rowfill`` command (pause, resume,
cancel, knobs, retrying failed chunks, a dry-run plan), appends one row (``rowfill.store.audit``).
Append-only, enforced by the database: a trigger refuses UPDATE and DELETE, another TRUNCATE, so
nobody rewrites history through rowfill's own role by mistake (PostgreSQL docs, "CREATE TRIGGER";
an owner can still drop the triggers on purpose, which leaves a trace in the DDL log).

Revision ID: 0003
Revises: 0002

For the lead: written on branch i14-console on top of i12-schema's head (0002); only this file of
the migrations folder is on that branch.
"""

from __future__ import annotations

from alembic import op

from rowfill.store.catalog import SCHEMA

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AUDIT = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.audit (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the order actions were recorded in
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),  -- the database's clock, as rate samples
    backfill  text NOT NULL,
    actor     text NOT NULL,      -- the Airflow user (console) or the OS user (rowfill command)
    source    text NOT NULL CHECK (source IN ('console', 'cli')),
    action    text NOT NULL,      -- pause, resume, cancel, set, retry, plan
    details   jsonb NOT NULL DEFAULT '{{}}',  -- what exactly: knobs, chunks cleared, the outcome
    reason    text                -- what the person typed; NULL when they typed nothing
)"""
AUDIT_INDEX = f"CREATE INDEX IF NOT EXISTS audit_backfill_id ON {SCHEMA}.audit (backfill, id DESC)"
# append-only: the rows are evidence
REFUSE = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rowfill.audit is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$"""
ROW_TRIGGER = (f"CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.audit "
               f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.audit_is_append_only()")
TRUNCATE_TRIGGER = (f"CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {SCHEMA}.audit "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.audit_is_append_only()")

STATEMENTS = (AUDIT, AUDIT_INDEX, REFUSE, ROW_TRIGGER, TRUNCATE_TRIGGER)


def upgrade() -> None:
    """Create the audit table, its index and the append-only triggers."""
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    """Drop the audit table and its trigger function (the trail is lost: only for a rolled-back release)."""
    op.execute(f"DROP TABLE IF EXISTS {SCHEMA}.audit")
    op.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.audit_is_append_only()")
