"""The chunk runner: walk one key range in small committed batches, each advancing the checkpoint.

Per batch, one short transaction:
  1. ``SET LOCAL lock_timeout / statement_timeout`` so a batch never waits long behind live locks;
  2. lock this chunk's checkpoint row and read its cursor (a second runner of the same chunk waits
     here and then continues *after* what the first one committed);
  3. find the batch's upper key with an index-only range scan of ``batch_rows`` keys;
  4. write the batch (``UPDATE ... WHERE key > lo AND key <= batch_hi AND (where)`` or the spec's sql);
  5. advance the cursor; COMMIT.
Write and cursor commit together, so a crash at any instant either keeps both or neither:
nothing is lost and nothing is applied twice, even for ``points = points + 10``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from rowfill.checkpoint import CheckpointStore
from rowfill.errors import ChunkFailed
from rowfill.keys import chunk_label, format_value
from rowfill.progress import progress_line
from rowfill.spec import Spec
from rowfill.throttle import Throttle
from rowfill.writers import BatchWriter, writer_for

log = logging.getLogger("rowfill.runner")

# lock_not_available, query_canceled (statement_timeout), serialization_failure, deadlock_detected
RETRYABLE_SQLSTATES = {"55P03": "lock_timeout", "57014": "statement_timeout", "40001": "serialization failure", "40P01": "deadlock"}


@dataclass(frozen=True)
class ChunkResult:
    backfill: str
    chunk_no: int
    status: str  # done | stopped
    rows_seen: int
    rows_written: int
    batches: int
    seconds: float
    cursor: object  # last key done (a JSON value, see rowfill.keys)


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def worker_name() -> str:
    """Recorded on the chunk row; ROWFILL_WORKER_NAME tells apart workers that share a host."""
    return os.environ.get("ROWFILL_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class BatchObserver:
    """Something that wants to know about every committed batch (metrics, live progress, tests)."""

    def batch_done(self, *, spec: Spec, chunk_no: int, seconds: float, seen: int, written: int, cursor) -> None:
        pass


def _timeouts(spec: Spec) -> tuple:
    # idle_in_transaction_session_timeout: a runner that hangs mid-batch (paused VM, lost
    # network) must not keep its chunk row locked for the retry that replaces it.
    sql = text(
        "SELECT set_config('lock_timeout', :lt, true), set_config('statement_timeout', :st, true), "
        "set_config('idle_in_transaction_session_timeout', :it, true)"
    )
    params = {"lt": f"{int(spec.lock_timeout * 1000)}ms", "st": f"{int(spec.statement_timeout * 1000)}ms",
              "it": f"{int(max(spec.statement_timeout * 2, 60) * 1000)}ms"}
    return sql, params


class ChunkRunner:
    def __init__(
        self,
        engine: Engine,
        spec: Spec,
        *,
        throttle: Throttle | None = None,
        logger: logging.Logger | None = None,
        label: str | None = None,
        run_id: str | None = None,
        should_stop: Callable[[], str | None] = lambda: None,
        observers: list[BatchObserver] = (),
        clock: Callable[[], float] = time.monotonic,
        writer: BatchWriter | None = None,
    ):
        self.engine = engine
        self.spec = spec
        self.store = CheckpointStore(engine)
        self.throttle = throttle or Throttle.for_spec(spec, engine=engine)
        self.log = logger or log
        self.label = label
        self.run_id = run_id
        self.should_stop = should_stop
        self.clock = clock
        self.writer = writer or writer_for(spec)
        self.observers = list(observers)
        self.timeouts, self.timeout_params = _timeouts(spec)

    def run(self, chunk_no: int) -> ChunkResult:
        spec = self.spec
        row = self.store.start(spec.name, chunk_no, worker_name(), self.run_id)
        label = self.label or chunk_label(spec.key, chunk_no, None, row.lo, row.hi, row.first_key)
        started = self.clock()
        seen = written = batches = 0
        if row.status == "done":
            self.log.info("%s: already done (%s rows written earlier); nothing to do", label, f"{row.rows_written:,}")
            return ChunkResult(spec.name, chunk_no, "done", 0, 0, 0, 0.0, row.cursor)
        if row.cursor is not None:
            self.log.info("%s: resuming at %s %s (attempt %d, %s of ~%s rows already done)", label, spec.key,
                          format_value(row.cursor), row.attempts, f"{row.rows_seen:,}", f"{row.est_rows:,}")
        done_before = row.rows_seen
        next_report = started + spec.progress_every
        cursor = row.cursor
        self.throttle.begin(label, self.log, lambda state, secs: self.store.note_throttle(spec.name, chunk_no, state, secs))
        try:
            while True:
                if reason := (self.should_stop() or self.throttle.before_batch(self.should_stop)):
                    self.log.info("%s: stopping at a batch boundary (%s); cursor %s kept", label, reason, cursor)
                    self.throttle.flush(reason)
                    self.store.pause(spec.name, chunk_no)
                    return ChunkResult(spec.name, chunk_no, "stopped", seen, written, batches, self.clock() - started, cursor)
                t0 = self.clock()
                outcome = self._batch_with_retries(chunk_no, label)
                if outcome is None:
                    break
                cursor, b_seen, b_written = outcome
                seen, written, batches = seen + b_seen, written + b_written, batches + 1
                now = self.clock()
                for observer in self.observers:
                    observer.batch_done(spec=spec, chunk_no=chunk_no, seconds=now - t0, seen=b_seen,
                                        written=b_written, cursor=cursor)
                if now >= next_report:
                    rate = seen / max(now - started, 1e-9)
                    self.log.info("%s", progress_line(label, done_before + seen, row.est_rows, rate))
                    next_report = now + spec.progress_every
                self.throttle.after_batch(now - t0, b_seen)
        except Exception as exc:
            self.throttle.flush()
            message = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".strip()
            self.store.fail(spec.name, chunk_no, message)
            raise ChunkFailed(
                f"{label} of backfill {spec.name!r} failed at {spec.key} {format_value(cursor if cursor is not None else row.position)} "
                f"after {batches} batches in this attempt: {message}. Everything committed before is kept; "
                "a retry or a cleared task resumes from the checkpoint."
            ) from exc
        finally:
            self.throttle.end()
        self.throttle.flush(None)
        final = self.store.finish(spec.name, chunk_no)
        elapsed = self.clock() - started
        rate = seen / max(elapsed, 1e-9)
        self.log.info("%s: done, %s rows walked, %s written in %d batches, %.1f s, %s rows/s", label,
                      f"{final.rows_seen:,}", f"{final.rows_written:,}", final.batches, elapsed, f"{rate:,.0f}")
        return ChunkResult(spec.name, chunk_no, "done", seen, written, batches, elapsed, final.cursor)

    def _batch_with_retries(self, chunk_no: int, label: str):
        attempt = 0
        while True:
            try:
                return self._batch(chunk_no)
            except DBAPIError as exc:
                what = RETRYABLE_SQLSTATES.get(sqlstate(exc) or "")
                if what is None or attempt >= self.spec.batch_retries:
                    raise
                delay = self.throttle.backoff(attempt)
                attempt += 1
                self.log.warning("%s: batch hit %s (%s); rolled back, retry %d/%d after %.1f s", label, what,
                                 str(exc.orig).strip().splitlines()[0], attempt, self.spec.batch_retries, delay)

    def _batch(self, chunk_no: int):
        """One batch in one transaction; returns None when the chunk has no keys left."""
        w, name = self.writer, self.spec.name
        throttled = self.throttle.unrecorded
        with self.engine.begin() as conn:
            conn.execute(self.timeouts, self.timeout_params)
            position, hi, _status = self.store.lock_position(conn, name, chunk_no)
            if position == hi:  # the cursor ends exactly on the chunk's upper key
                return None
            end, seen = w.batch_end(conn, position, hi, self.throttle.batch_rows)
            if end is None:  # no keys left in range (rows deleted since planning)
                end, seen = hi, 0
            written = w.apply(conn, position, end) if seen else 0
            self.store.advance(conn, name, chunk_no, end, seen, written, throttled)
        self.throttle.recorded(throttled)
        return end, seen, written
