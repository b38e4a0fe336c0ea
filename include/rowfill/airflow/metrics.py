"""Backfill metrics through Airflow's metrics layer (StatsD, OpenTelemetry or Datadog, as configured).

``BatchMetrics`` is a runner batch observer, so metrics come straight from the chunk's task
process after every commit, through ``airflow.sdk.observability.stats.Stats`` and whatever
``[metrics]`` backend the deployment configured (a no-op by default). Names carry the backfill
(``rowfill.<backfill>.<metric>``) because plain StatsD has no tags; the same values are also
tagged ``backfill``/``chunk`` for backends that do (OpenTelemetry, Datadog, InfluxDB-style StatsD).

- ``rows_processed`` (counter): keys walked by committed batches; ``rows_written`` (counter);
- ``batch_duration`` (timer): one batch transaction, retries included;
- ``throttle_wait`` (timer): time between two batches of a chunk (pause, throttle gates, backoff);
- ``replica_lag`` (gauge, seconds) and ``replica_lag_bytes`` (gauge, WAL not yet replayed): the
  furthest-behind streaming replica of the target, read from ``pg_stat_replication`` at the chunk's
  progress cadence (only when replicas are visible to the connection's user).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from collections.abc import Callable

from rowfill.sql import gates as stat_reads

log = logging.getLogger("rowfill.metrics")


def stats():
    """Airflow's ``Stats`` (``airflow.sdk.observability.stats``), imported when first used so that
    building a DAG does not set up a metrics client."""
    from airflow.sdk.observability.stats import Stats

    return Stats


def replica_lag(engine) -> tuple[float | None, float | None]:
    """(seconds, bytes) the target's furthest-behind replica lags, or None where not visible.

    Seconds is PostgreSQL's ``replay_lag``; it is only re-measured while the replica replays, so a
    replica that stopped replaying keeps its last value. Bytes (WAL not yet replayed) keep growing
    then, which is why both are sent. Seeing them needs the ``pg_monitor`` role (or superuser).
    """
    with engine.connect() as conn:
        seconds, behind = conn.execute(*stat_reads.replica_lag()).one()
    return (None if seconds is None else float(seconds)), (None if behind is None else float(behind))


class BatchMetrics:
    """Emits per-batch metrics; never lets a metrics problem fail a backfill."""

    def __init__(self, engine=None, *, lag_every: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 lag_probe: Callable | None = None):
        self.engine = engine
        self.clock = clock
        self.lag_every = lag_every
        self.lag_probe = lag_probe or (replica_lag if engine is not None else None)
        self._last_done: float | None = None
        self._next_lag = 0.0
        self._warned = False

    def batch_done(self, *, spec, chunk_no: int, seconds: float, seen: int, written: int, cursor) -> None:
        """Emit one committed batch's metrics; a metrics failure is logged once and never raised.

        :param seconds: the batch transaction's duration, retries included.
        :param seen: keys walked; :param written: rows written; :param cursor: the checkpoint key (unused here).
        """
        now = self.clock()
        try:
            self._emit(spec, chunk_no, seconds, seen, written, now)
        except Exception as exc:  # noqa: BLE001 - observability must never fail a backfill
            if not self._warned:
                log.warning("rowfill metrics for %s not sent: %s", spec.name, exc)
                self._warned = True
        self._last_done = self.clock()

    def _emit(self, spec, chunk_no, seconds, seen, written, now) -> None:
        s, name = stats(), f"rowfill.{spec.name}"
        tags = {"backfill": spec.name, "chunk": str(chunk_no)}
        s.incr(f"{name}.rows_processed", count=seen, tags=tags)
        s.incr(f"{name}.rows_written", count=written, tags=tags)
        s.timing(f"{name}.batch_duration", timedelta(seconds=seconds), tags=tags)
        if self._last_done is not None:
            wait = max(now - seconds - self._last_done, 0.0)
            s.timing(f"{name}.throttle_wait", timedelta(seconds=wait), tags=tags)
        if self.lag_probe is not None and now >= self._next_lag:
            self._next_lag = now + self.lag_every
            seconds, behind = self.lag_probe(self.engine)
            if seconds is not None:
                s.gauge(f"{name}.replica_lag", seconds, tags=tags)
            if behind is not None:
                s.gauge(f"{name}.replica_lag_bytes", behind, tags=tags)
