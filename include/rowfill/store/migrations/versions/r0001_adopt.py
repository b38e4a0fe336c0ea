"""rowfill's schema as the releases before migrations created it, adopting any such install.

Before Alembic, every plan ran ``CREATE TABLE IF NOT EXISTS`` and added later columns when they
were missing. This first migration does the same once: on an empty database it creates the
schema; on an install made by an earlier rowfill it adds only what is missing, so every stored
plan, checkpoint, control row and skipped key stays as it was. Later changes are later revisions.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from alembic import op

from rowfill.store.catalog import SCHEMA

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.backfills (
    name         text PRIMARY KEY,
    fingerprint  text NOT NULL,
    spec         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    planned_at   timestamptz
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.chunks (
    backfill     text NOT NULL REFERENCES {SCHEMA}.backfills (name) ON DELETE CASCADE,
    chunk_no     integer NOT NULL,
    lo           jsonb NOT NULL,
    hi           jsonb NOT NULL,
    est_rows     bigint NOT NULL,
    cursor       jsonb,
    rows_seen    bigint NOT NULL DEFAULT 0,
    rows_written bigint NOT NULL DEFAULT 0,
    batches      integer NOT NULL DEFAULT 0,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    worker       text,
    run_id       text,
    started_at   timestamptz,
    updated_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (backfill, chunk_no)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.samples (
    backfill     text NOT NULL,
    chunk_no     integer NOT NULL,
    bucket       timestamptz NOT NULL,
    rows_seen    bigint NOT NULL,
    batches      integer NOT NULL,
    work_started timestamptz NOT NULL,
    last_commit  timestamptz NOT NULL,
    PRIMARY KEY (backfill, chunk_no, bucket),
    FOREIGN KEY (backfill, chunk_no) REFERENCES {SCHEMA}.chunks (backfill, chunk_no) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.leases (
    backfill     text NOT NULL,
    chunk_no     integer NOT NULL,
    worker       text NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    PRIMARY KEY (backfill, chunk_no)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.skipped_rows (
    backfill    text NOT NULL,
    chunk_no    integer NOT NULL,
    key         jsonb NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backfill, chunk_no, key),
    FOREIGN KEY (backfill, chunk_no) REFERENCES {SCHEMA}.chunks (backfill, chunk_no) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.controls (
    backfill   text PRIMARY KEY,
    state      text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'cancelled')),
    knobs      jsonb NOT NULL DEFAULT '{{}}',
    version    bigint NOT NULL DEFAULT 0,
    note       text,
    changed_at timestamptz NOT NULL DEFAULT now()
)
"""

# Columns earlier releases added after their first one: an install may lack any of them.
LATER_COLUMNS = {
    "chunks": {
        "map_index": "integer",          # the Airflow map index of the chunk's latest attempt
        "first_key": "jsonb",            # the chunk's first key, for labels (NULL on older plans)
        "throttled_seconds": "double precision NOT NULL DEFAULT 0",  # time held back
        "throttle_state": "text",        # what a held-back chunk waits for now
        "batch_rows_worked": "integer",  # batch size that ran within statement_timeout after a split
    },
    "backfills": {
        "table_schema": "text",          # the relation the spec's table resolved to when planned
        "table_name": "text",
        "table_oid": "oid",
        "rows_still_matching": "bigint",  # what the last verify found
        "verified_at": "timestamptz",
    },
}


def upgrade() -> None:
    """Create what is missing: tables, then the later columns (``ADD COLUMN IF NOT EXISTS``)."""
    for statement in TABLES.split(";"):
        op.execute(statement.strip())
    for table, columns in LATER_COLUMNS.items():
        for column, definition in columns.items():
            op.execute(f"ALTER TABLE {SCHEMA}.{table} ADD COLUMN IF NOT EXISTS {column} {definition}")


def downgrade() -> None:
    """Not supported: dropping the schema would lose every checkpoint; drop it by hand if that is meant.

    :raises NotImplementedError: always (Alembic's ``downgrade`` of this revision).
    """
    raise NotImplementedError("rowfill's first migration is not reversible (it would drop every checkpoint)")
