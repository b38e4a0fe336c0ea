"""rowfill's schema as releases before migrations created it on first use: the legacy fixture of the
adoption tests (copied from ``CheckpointStore.ensure_schema`` and ``ControlStore.ensure`` as they were
before issue 12, and the per-backfill undo tables of ``rowfill.engine.undo`` then). Never used by rowfill itself.
"""

from __future__ import annotations

from sqlalchemy import text

SCHEMA = "rowfill"

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
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
    lo           jsonb NOT NULL,          -- exclusive lower key bound; JSON null = from the start (the lowest chunk)
    hi           jsonb NOT NULL,          -- inclusive upper key bound
    est_rows     bigint NOT NULL,         -- rows in (lo, hi] when planned
    cursor       jsonb,                   -- last key done; NULL = not started
    rows_seen    bigint NOT NULL DEFAULT 0,  -- keys walked
    rows_written bigint NOT NULL DEFAULT 0,  -- rows the write changed
    batches      integer NOT NULL DEFAULT 0,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,  -- starts after a failure or crash, plus the first; a stop at a
                                              -- pause or window close and its resume are one attempt
    last_error   text,
    worker       text,
    run_id       text,
    started_at   timestamptz,
    updated_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (backfill, chunk_no)
);
-- Observability (see rowfill.store.rates and rowfill.engine.status): the Airflow map index of a chunk's latest
-- attempt (with run_id it names the task instance to link to and clear), and per-chunk batch
-- samples in time buckets, from which any process computes the rate over a moving window.
ALTER TABLE {SCHEMA}.chunks ADD COLUMN IF NOT EXISTS map_index integer;
CREATE TABLE IF NOT EXISTS {SCHEMA}.samples (
    backfill     text NOT NULL,
    chunk_no     integer NOT NULL,
    bucket       timestamptz NOT NULL,    -- start of a fixed time bucket
    rows_seen    bigint NOT NULL,
    batches      integer NOT NULL,
    work_started timestamptz NOT NULL,    -- when the bucket's first batch began
    last_commit  timestamptz NOT NULL,    -- when the bucket's latest batch committed
    PRIMARY KEY (backfill, chunk_no, bucket),
    FOREIGN KEY (backfill, chunk_no) REFERENCES {SCHEMA}.chunks (backfill, chunk_no) ON DELETE CASCADE
);
-- added for non-integer keys: the chunk's first key, so labels read "id a1b2..f00d" (NULL on older plans)
ALTER TABLE {SCHEMA}.chunks ADD COLUMN IF NOT EXISTS first_key jsonb;
-- The lease of a running chunk's runner (see rowfill.engine.lease): renewed by a heartbeat; a running chunk
-- whose lease ran out is stale (its process is gone). A table of its own: a batch holds its chunk row.
CREATE TABLE IF NOT EXISTS {SCHEMA}.leases (
    backfill     text NOT NULL,
    chunk_no     integer NOT NULL,
    worker       text NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    PRIMARY KEY (backfill, chunk_no)
);
"""
# Keys a batch could not lock without waiting, to come back to (rowfill.engine.rowlocks): the batch
# records them in the transaction that advances its checkpoint.
SKIPPED_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.skipped_rows (
    backfill    text NOT NULL,
    chunk_no    integer NOT NULL,
    key         jsonb NOT NULL,           -- the key value, as rowfill.sql.keys stores key values
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backfill, chunk_no, key),
    FOREIGN KEY (backfill, chunk_no) REFERENCES {SCHEMA}.chunks (backfill, chunk_no) ON DELETE CASCADE
);
"""

# Columns added after the first release: CREATE TABLE IF NOT EXISTS leaves existing installs'
# tables as they were, so each later column is added here, only when missing (a plain
# ADD COLUMN IF NOT EXISTS would still take an exclusive lock on every plan).
UPGRADES = {
    "throttled_seconds": "double precision NOT NULL DEFAULT 0",  # time spent pausing, waiting on gates, backing off
    "throttle_state": "text",  # what a throttled or deferred chunk is waiting for right now
    # batch size that ran within statement_timeout after a batch was split (NULL: no split in effect);
    # a resumed chunk starts from it instead of timing out again
    "batch_rows_worked": "integer",
}


# Columns of rowfill.backfills added later, the same way. The relation the spec's `table` resolved
# to when the backfill was planned (see rowfill.engine.resolve): every later task uses this name, after
# checking that it still is the same relation (OID). For a rollback (``<name>.rollback``) they hold
# the table it restores, since the backfill's own row is gone while the rollback runs.
BACKFILL_UPGRADES = {
    "table_schema": "text",
    "table_name": "text",
    "table_oid": "oid",
    # what the last verify found (rowfill.engine.verify): rows of the whole table still matching `where`
    # (NULL: not verified yet, or nothing to check), and when it looked
    "rows_still_matching": "bigint",
    "verified_at": "timestamptz",
}


def upgrade_sql() -> str:
    steps = "".join(
        f"IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{SCHEMA}.{table}'::regclass "
        f"AND attname = '{column}' AND NOT attisdropped) THEN "
        f"ALTER TABLE {SCHEMA}.{table} ADD COLUMN {column} {definition}; END IF; "
        for table, columns in (("chunks", UPGRADES), ("backfills", BACKFILL_UPGRADES))
        for column, definition in columns.items()
    )
    return f"DO $$ BEGIN {steps}END $$;"

CONTROLS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.controls (
    backfill   text PRIMARY KEY,
    state      text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'cancelled')),
    knobs      jsonb NOT NULL DEFAULT '{{}}',
    version    bigint NOT NULL DEFAULT 0,
    note       text,
    changed_at timestamptz NOT NULL DEFAULT now()
);
"""

# The first release's tables: DDL without the later columns (the "ALTER TABLE ... ADD COLUMN" lines).
FIRST_RELEASE_DDL = "\n".join(line for line in DDL.splitlines() if not line.startswith("ALTER TABLE"))


def create_legacy_schema(engine, *, first_release: bool = False) -> None:
    """Create rowfill's schema the way rowfill did before migrations (every table and column of that
    release, or with ``first_release`` only the first release's tables, without the later columns)."""
    with engine.begin() as conn:
        if first_release:
            conn.exec_driver_sql(FIRST_RELEASE_DDL)
            return
        conn.exec_driver_sql(DDL)
        conn.exec_driver_sql(upgrade_sql())
        conn.exec_driver_sql(SKIPPED_DDL)
        conn.exec_driver_sql(CONTROLS_DDL)


def create_legacy_undo_table(engine, name: str, table: str, key_ddl: str, columns: dict[str, str]) -> str:
    """A per-backfill undo table as rowfill created it before issue 12: ``rowfill.undo_<name>`` with the
    key columns, then ``old_<column>`` and ``new_<column>`` per changed column, and its comment.

    :param key_ddl: the key columns' definitions, e.g. ``"id bigint NOT NULL"``. :param columns: column -> type.
    :returns: the undo table's qualified name.
    """
    undo = f'{SCHEMA}."undo_{name}"'
    cols = [key_ddl, *(f'"old_{c}" {t}' for c, t in columns.items()), *(f'"new_{c}" {t}' for c, t in columns.items())]
    pk = ", ".join(part.split()[0] for part in key_ddl.split(","))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {undo} ({', '.join(cols)}, PRIMARY KEY ({pk}))"))
        conn.execute(text(f"COMMENT ON TABLE {undo} IS 'rowfill undo log of backfill {name} on {table}: previous "
                          "(old_*) and written (new_*) values by key; restored by rowfill rollback'"))
    return undo
