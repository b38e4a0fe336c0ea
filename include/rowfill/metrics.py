"""Backfill metrics through Airflow's metrics layer (StatsD, OpenTelemetry or Datadog, as configured).

``BatchMetrics`` is a runner batch observer, so metrics come straight from the chunk's task
process after every commit, through ``airflow.sdk.observability.stats.Stats`` and whatever
``[metrics]`` backend the deployment configured (a no-op by default). Names carry the backfill
(``rowfill.<backfill>.<metric>``) because plain StatsD has no tags; the same values are also
tagged ``backfill``/``chunk`` for backends that do (OpenTelemetry, Datadog, InfluxDB-style StatsD).

- ``rows_processed`` (counter): keys walked by committed batches; ``rows_written`` (counter);
- ``batch_duration`` (timer): one batch transaction, retries included;
- ``throttle_wait`` (timer): time between two batches of a chunk (pause, throttle gates, backoff);
- ``replica_lag`` (gauge, seconds): the largest replay lag of the target's streaming replicas, read
  from ``pg_stat_replication`` at the chunk's progress cadence (only when replicas are visible).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Callable

from sqlalchemy import text

log = logging.getLogger("rowfill.metrics")

_LAG = text("SELECT extract(epoch FROM max(coalesce(replay_lag, write_lag, flush_lag))) FROM pg_stat_replication")


def stats():
    from airflow.sdk.observability.stats import Stats

    return Stats


def replica_lag_seconds(engine) -> float | None:
    """Largest replay lag of the target's replicas, None without visible replicas (needs pg_monitor)."""
    with engine.connect() as conn:
        value = conn.execute(_LAG).scalar()
    return None if value is None else float(value)


class BatchMetrics:
    """Emits per-batch metrics; never lets a metrics problem fail a backfill."""

    def __init__(self, engine=None, *, lag_every: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 lag_probe: Callable | None = None):
        self.engine = engine
        self.clock = clock
        self.lag_every = lag_every
        self.lag_probe = lag_probe or (replica_lag_seconds if engine is not None else None)
        self._last_done: float | None = None
        self._next_lag = 0.0
        self._warned = False

    def batch_done(self, *, spec, chunk_no: int, seconds: float, seen: int, written: int, cursor) -> None:
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
            lag = self.lag_probe(self.engine)
            if lag is not None:
                s.gauge(f"{name}.replica_lag", lag, tags=tags)
