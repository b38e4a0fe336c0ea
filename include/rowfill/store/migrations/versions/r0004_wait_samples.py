"""Throttle waits over time, ``rowfill.wait_samples``: seconds each chunk waited, by reason, per time bucket.

``rowfill.samples`` holds what chunks did (rows, batches) per 5-second bucket; this holds what held
them back in the same buckets (``rowfill.store.waits``): the rest between batches (the spec's
``pause`` and ``pause_ratio``), the latency probe's back-off beyond that rest, health gates, a closed
window, an operator's pause (``rowfill pause``, the console, Airflow's DAG toggle), and anything else
(retries after a lock timeout, rows other sessions hold). One row per chunk and bucket, a column per
reason, so a chunk's recorder writes one row a second that no other chunk touches (parallel chunks
never wait for each other), as the rate samples do. With a latency probe, the worst reading of the
bucket and the limit in force ride along in the same row (NULL without a probe): the console draws
latency against its limit from them instead of from readings an API server kept in memory.

``rowfill.chunks.throttle_since`` is when the chunk's current hold (its ``throttle_state``) began: a
chunk that defers to Airflow's triggerer for a window or a pause runs no code while it waits, so
when it runs again its runner records the time since then (``waits.resume``). Its name starts with
``throttle`` so ``rowfill status`` shows it beside the state (``rowfill.engine.status``).

The index on ``(backfill, bucket)`` serves the console's chart, which reads the recent buckets of
all of a backfill's chunks; the primary key leads with the chunk and would read every bucket kept.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

from rowfill.store.catalog import SCHEMA

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WAIT_SAMPLES = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.wait_samples (
    backfill        text NOT NULL,
    chunk_no        integer NOT NULL,
    bucket          timestamptz NOT NULL,  -- as rowfill.samples: the 5-second bucket of the database's clock
    rest_seconds    double precision NOT NULL DEFAULT 0,  -- the rest between batches (pause, pause_ratio)
    latency_seconds double precision NOT NULL DEFAULT 0,  -- the latency probe's back-off beyond that rest
    gate_seconds    double precision NOT NULL DEFAULT 0,  -- health gates over their wait threshold
    window_seconds  double precision NOT NULL DEFAULT 0,  -- outside the spec's window (deferred)
    pause_seconds   double precision NOT NULL DEFAULT 0,  -- paused or cancelled by an operator (deferred)
    other_seconds   double precision NOT NULL DEFAULT 0,  -- retries after lock timeouts, rows others hold
    latency_worst   double precision,  -- seconds: the worst probe reading of the bucket; NULL without a probe
    latency_limit   double precision,  -- seconds: the probe's limit in force then
    PRIMARY KEY (backfill, chunk_no, bucket),
    FOREIGN KEY (backfill, chunk_no) REFERENCES {SCHEMA}.chunks (backfill, chunk_no) ON DELETE CASCADE
)"""
WAIT_SAMPLES_INDEX = f"CREATE INDEX IF NOT EXISTS wait_samples_backfill_bucket ON {SCHEMA}.wait_samples (backfill, bucket)"
THROTTLE_SINCE = f"ALTER TABLE {SCHEMA}.chunks ADD COLUMN IF NOT EXISTS throttle_since timestamptz"


def upgrade() -> None:
    """Create ``rowfill.wait_samples`` and its index, and add ``rowfill.chunks.throttle_since``."""
    for statement in (WAIT_SAMPLES, WAIT_SAMPLES_INDEX, THROTTLE_SINCE):
        op.execute(statement)


def downgrade() -> None:
    """Drop the wait samples and ``throttle_since`` (the wait history is lost; checkpoints are not touched)."""
    op.execute(f"DROP TABLE IF EXISTS {SCHEMA}.wait_samples")
    op.execute(f"ALTER TABLE {SCHEMA}.chunks DROP COLUMN IF EXISTS throttle_since")
