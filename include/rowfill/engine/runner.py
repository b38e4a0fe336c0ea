"""The chunk runner: walk one key range in small committed batches, each advancing the checkpoint.

Per batch, one short transaction:
  1. ``SET LOCAL lock_timeout / statement_timeout`` so a batch never waits long behind live locks;
  2. lock this chunk's checkpoint row and read its cursor (a second runner of the same chunk waits
     here and then continues *after* what the first one committed);
  3. find the batch's upper key with an index-only range scan of ``batch_rows`` keys;
  4. write the batch (``UPDATE ... WHERE key > lo AND key <= batch_hi AND (where)`` or the spec's sql)
     without waiting on rows the application holds: they are skipped, recorded and written later
     in the chunk (``rowfill.engine.rowlocks``);
  5. advance the cursor; read what rides along (the control row: ``chunk_task.BatchControlReads``); COMMIT.
All batches of a chunk run on one connection held for the chunk (no pool checkout, ping and reset
per batch); rate samples are passed on once a second (``Sampled``), not written per batch.
Write and cursor commit together, so a crash at any instant either keeps both or neither:
nothing is lost and nothing is applied twice, even for ``points = points + 10``.

When a batch fails:
  - ``lock_timeout`` on the fast path (``rowfill.engine.rowlocks``): run again at once on the slow path,
    which skips the rows others hold;
  - ``lock_timeout`` otherwise, serialization failure, deadlock: rolled back and retried after a
    backoff, at most ``batch_retries`` times;
  - ``statement_timeout``: the batch is split and retried at once, not counted as a retry
    (halved down to ``min_batch_rows``, then single rows). The size that worked is kept on the
    chunk's checkpoint row, so a resumed chunk starts there instead of timing out again; it
    doubles back after each batch that took under a quarter of the timeout. Only a single row
    that alone times out (after ``batch_retries``) fails the chunk, naming its key;
  - a data error (SQLSTATE class 22 or 23): the batch is narrowed to the row and the spec field
    to blame (``rowfill.engine.blame``) and the chunk fails naming both; nothing of the batch is written;
  - a lost connection (a restart, ``pg_terminate_backend``; ``rowfill.engine.disconnects``): the server
    rolled the batch back; it is written again from the cursor once reconnected, for up to the
    spec's ``reconnect_for`` (``rowfill.engine.reconnect``), not counted as a retry.
While it runs, the runner holds the chunk's lease (``rowfill.engine.lease``), so a chunk whose process is
gone shows as stale and the next attempt takes it over.

Pacing: before each batch the runner asks its throttle (``rowfill.engine.throttle.Throttle.next``)
what to do, given the last batch: ``Go(rows)``, ``Wait(seconds, reason)`` or ``Stop(reason)``. The
runner is the only one that acts: it sleeps, records the throttle state and throttled seconds in
the checkpoint row, and stops. Backfill chunks, rollback chunks and ``rowfill run`` all come
through here (``rowfill.engine.chunk_task.run_chunk``), so pause, cancel, windows, gates, metrics
and rate samples apply to all of them.

Every second slept is also added, by reason, to the chunk's wait samples (``rowfill.store.waits``:
the rest between batches, the latency back-off beyond it, gates, retries and rows others hold), with
the latency probe's worst reading, written once a second like the rate samples, never per batch. A
chunk that deferred to Airflow's triggerer (a window, a pause, the DAG's toggle) slept outside any
runner: when it runs again, its runner records the time since its hold began (``waits.resume``).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from rowfill.engine import lease, reconnect, rowlocks
from rowfill.engine.blame import is_data_error, narrow
from rowfill.engine.disconnects import describe
from rowfill.engine.modes import writer_for
from rowfill.engine.progress import progress_line
from rowfill.engine.throttle import BatchDone, Stop, Throttle, Wait, retry_backoff
from rowfill.engine.writers import BatchWriter
from rowfill.errors import ChunkFailed, RowfillError
from rowfill.spec.durations import format_duration
from rowfill.spec.gates import KINDS
from rowfill.spec.spec import Spec
from rowfill.sql.keys import chunk_label, format_value
from rowfill.sql.session import Timeouts
from rowfill.store.checkpoint import CheckpointStore, ChunkRow
from rowfill.store.waits import WaitReason, WaitRecorder

log = logging.getLogger("rowfill.runner")

# How often batches are passed on to a ``Sampled`` observer (rate samples), seconds: one write per
# second instead of one per batch; rates are read over 5-second buckets and a 60-second window
# (rowfill.store.rates), so a second's delay changes no rate anyone reads.
SAMPLE_EVERY = 1.0

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
    cursor: object  # last key done (a JSON value, see rowfill.sql.keys)
    stopped_by: str | None = None  # a stopped chunk: the Stop's kind (paused, cancelled, window, interrupted)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error (PostgreSQL docs, Appendix A "Error Codes"); None for anything else."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_statement_timeout(exc: BaseException) -> bool:
    """57014 is also a cancel by pg_cancel_backend; only the timeout says the batch was too big."""
    return sqlstate(exc) == "57014" and "statement timeout" in str(getattr(exc, "orig", None) or exc)


def split_size(rows: int, floor: int) -> int | None:
    """The next smaller batch after a statement_timeout: half, not below ``floor``; from ``floor``, one row.

    None when ``rows`` is already a single row: there is nothing left to split.
    """
    if rows <= 1:
        return None
    if rows > floor:
        return max(rows // 2, floor)
    return 1


class RowTimeout(RowfillError):
    """One row alone takes longer than statement_timeout to write."""


def worker_name() -> str:
    """Recorded on the chunk row; ROWFILL_WORKER_NAME tells apart workers that share a host."""
    return os.environ.get("ROWFILL_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class BatchObserver:
    """Something that wants to know about every committed batch (metrics, live progress, tests)."""

    def batch_done(self, *, spec: Spec, chunk_no: int, seconds: float, seen: int, written: int, cursor) -> None:
        """A batch committed. :param seconds: its wall time, seconds. :param seen: keys walked.
        :param written: rows written. :param cursor: the last key done. Should not raise: an error fails the chunk."""


class Sampled(BatchObserver):
    """Passes the batches of a chunk on to ``observer`` summed over ``every`` seconds.

    For observers that write a row per call (rate samples, ``rowfill.store.rates.RateRecorder``):
    one transaction per interval instead of one per batch. The runner calls ``flush`` when the chunk
    ends or stops, so nothing is left out. The sum reaches ``observer`` as one batch whose ``seconds``
    span from the first summed batch's start to the last one's commit (rests between them included),
    and a ``batches`` keyword says how many batches it sums (``observer`` must take it), so a batch
    size read from the samples (rows / batches) is the batches' size, not a second's rows.
    """

    def __init__(self, observer: BatchObserver, every: float = SAMPLE_EVERY, clock: Callable[[], float] = time.monotonic):
        """:param observer: told the sums. :param every: seconds between calls. :param clock: monotonic seconds."""
        self.observer, self.every, self.clock = observer, every, clock
        self._pending: dict | None = None
        self._since = 0.0  # when the first pending batch began (clock seconds)
        self._last_call = clock()

    def batch_done(self, *, spec: Spec, chunk_no: int, seconds: float, seen: int, written: int, cursor) -> None:
        """Add one committed batch; pass the sum on once ``every`` seconds have passed since the last call."""
        now = self.clock()
        if self._pending is None or self._pending["chunk_no"] != chunk_no:
            self.flush()
            self._pending = {"spec": spec, "chunk_no": chunk_no, "seen": 0, "written": 0, "cursor": None, "batches": 0}
            self._since = now - seconds
        p = self._pending
        p["seen"], p["written"], p["cursor"] = p["seen"] + seen, p["written"] + written, cursor
        p["batches"] += 1
        if now - self._last_call >= self.every:
            self.flush()

    def flush(self) -> None:
        """Pass on what is pending (nothing if nothing is). Raises what the observer raises."""
        pending, self._pending = self._pending, None
        self._last_call = self.clock()
        if pending is not None:
            self.observer.batch_done(seconds=max(self._last_call - self._since, 0.0), **pending)


class ChunkRunner:
    """Runs one chunk in committed batches, paced by its throttle (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        spec: Spec,
        *,
        throttle: Throttle | None = None,
        logger: logging.Logger | None = None,
        label: str | None = None,
        run_id: str | None = None,
        should_stop: Callable[[], str | None] | None = None,
        observers: Sequence[BatchObserver] = (),
        clock: Callable[[], float] = time.monotonic,
        writer: BatchWriter | None = None,
        batch_reads: Sequence[Callable] = (),
    ):
        """:param engine: the target database. :param spec: the backfill (or rollback) spec.
        :param throttle: decides the pace (default: the spec's, with its gates and latency probe);
            the runner sleeps with its ``sleep``.
        :param logger: / :param label: where and as what the chunk logs.
        :param run_id: recorded on the chunk row (Airflow's run id).
        :param should_stop: an interruption: returns a reason to stop at the next batch boundary, or
            None; an input to the throttle's decision.
        :param observers: told about every committed batch (metrics, rate samples, tests).
        :param clock: monotonic seconds. :param writer: writes a batch (default: the spec's mode).
        :param batch_reads: called with the batch's connection inside each batch's transaction, after the
            write: reads that ride along instead of taking a transaction of their own (the control row,
            ``chunk_task.BatchControlReads``). What they raise fails the batch like its own statements.
        """
        self.engine = engine
        self.spec = spec
        self.store = CheckpointStore(engine)
        self.throttle = throttle or Throttle.for_spec(spec, engine=engine)
        self.log = logger or log
        self.label = label
        self._label = label or "chunk"
        self.run_id = run_id
        if should_stop is not None:
            self.throttle.listen(interrupt=should_stop)
        self.clock = clock
        self.writer = writer or writer_for(spec)
        self.observers = list(observers)
        self.batch_reads = list(batch_reads)
        self.timeouts = Timeouts.for_batch(spec.lock_timeout, spec.statement_timeout)
        self.split_rows: int | None = None  # batch size after a statement_timeout split (None: no split)
        self._current: tuple | None = None  # (lo, hi, keys, rows asked for) of the batch being written
        self._told_lock_first = False
        self._heartbeat: lease.Heartbeat | None = None
        self._fast = False  # the batch being written is on the fast path
        self.slow = False  # the next batch locks with SKIP LOCKED (after a lock timeout, or while rows are held)
        self.skipped = rowlocks.SkippedKeys(spec.locked_rows_wait, clock)
        self._rows: int | None = None  # rows the throttle's last Go asked for
        self._unrecorded = 0.0  # seconds slept not yet added to the checkpoint row's throttled_seconds
        self._state: str | None = None  # what the chunk waits for right now (the checkpoint row's throttle_state)
        self.waits: WaitRecorder | None = None  # the chunk's wait samples (rowfill.store.waits), from its start
        # The connection the batches use, held for the chunk: no pool checkout, pre-ping and reset per
        # batch. Dropped after any error in a batch (a lost connection among them); the next batch opens one.
        self._conn = None

    def run(self, chunk_no: int) -> ChunkResult:
        """Run the chunk from its checkpoint to its end (or a stop), holding its lease (``rowfill.engine.lease``) meanwhile.

        :param chunk_no: the planned chunk's number.
        :returns: a ``ChunkResult``: ``done``, or ``stopped`` with ``stopped_by`` saying what stopped it.
        :raises ChunkFailed: the chunk failed (recorded on its row); ``__cause__`` is the error (``RowError``,
            ``RowTimeout``, ``probes.GateCritical``, a driver error, ...). Everything committed is kept.
        """
        try:
            return self._run(chunk_no)
        finally:
            self._flush_observers()
            if self.waits is not None:
                self.waits.flush()
            self._drop_connection()
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None

    def _flush_observers(self) -> None:
        """Pass on what ``Sampled`` observers still hold; best effort, like the observers themselves."""
        for observer in self.observers:
            try:
                getattr(observer, "flush", lambda: None)()
            except Exception as exc:  # noqa: BLE001 - bookkeeping must never hide how the chunk ended
                self.log.warning("%s: could not pass on the last batches to %s: %s", self._label,
                                 type(observer).__name__, describe(exc))

    def _connection(self):
        """The connection held for the chunk's batches (opened on first use)."""
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        """Give the held connection back (it may be broken: closing never raises here)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection is discarded by the pool
                pass

    def _claim(self, chunk_no: int) -> ChunkRow:
        """Claim the chunk (taking it over from a runner that is gone) and keep its lease from now on."""
        me = worker_name()
        row = reconnect.call(lambda: lease.claim(self.store, self.spec.name, chunk_no, me, self.run_id, self.log),
                             self.spec, f"starting chunk {chunk_no}", self.log)
        if row.status != "done":
            self._heartbeat = lease.Heartbeat(self.engine, self.spec.name, chunk_no, me).start()
        return row

    def _record_failure(self, chunk_no: int, message: str) -> None:
        """Mark the chunk failed, best effort: the error that ended the chunk is the one to report.

        When even this write fails (the database is still away), one line says so; the row stays
        ``running`` until the lease runs out and then shows as stale (``rowfill.engine.lease``).
        """
        try:
            self.store.fail(self.spec.name, chunk_no, message)
        except Exception as exc:  # noqa: BLE001 - never hide the original error behind this one
            self.log.warning("could not record the failure of chunk %d in the checkpoint (%s); it shows as stale "
                             "once its lease runs out", chunk_no, describe(exc))

    def _run(self, chunk_no: int) -> ChunkResult:
        spec = self.spec
        row = self._claim(chunk_no)
        label = self._label = self.label or chunk_label(spec.key, chunk_no, None, row.lo, row.hi, row.first_key)
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
        self._load_skipped(chunk_no, label)
        if row.batch_rows_worked:
            self.split_rows = row.batch_rows_worked
            self.log.info("%s: starting with batches of %d rows, the size that ran within statement_timeout (%s) "
                          "before", label, row.batch_rows_worked, format_duration(spec.statement_timeout))
        self.waits = WaitRecorder(self.engine, spec.name, chunk_no, self.clock)
        if held := self.waits.resume(KINDS):  # back from a deferral: the time it waited outside any runner
            self.log.info("%s: waited %s for the %s before this attempt", label, format_duration(held[1]), held[0].value)
        self.throttle.begin(label, self.log)
        done: BatchDone | None = None
        try:
            while True:
                # a read that loses its connection (live control, gates) is retried like a batch (rowfill.engine.reconnect)
                decision = reconnect.call(functools.partial(self.throttle.next, done), spec,
                                          "reading pause, cancel, live knobs and the gates", self.log)
                self._tally_waits()
                if isinstance(decision, Wait):
                    self._wait(chunk_no, decision)
                    continue
                if isinstance(decision, Stop):
                    if decision.error is not None:
                        raise decision.error
                    self.log.info("%s: stopping at a batch boundary (%s); cursor %s kept", label, decision.reason, cursor)
                    self._note(chunk_no, decision.reason)
                    reconnect.call(lambda: self.store.pause(spec.name, chunk_no), spec, "recording the stop", self.log)
                    return ChunkResult(spec.name, chunk_no, "stopped", seen, written, batches, self.clock() - started,
                                       cursor, decision.kind)
                self._rows, done, self._state = decision.rows, None, None  # a commit clears the state on the row
                t0 = self.clock()
                if self.skipped.due():
                    written += self._revisit(chunk_no, label)
                    continue
                outcome = self._batch_with_retries(chunk_no, label)
                if outcome is None:
                    if not self.skipped.count:
                        break
                    self._wait_for_skipped(chunk_no)  # the walk is done; only skipped keys are left
                    continue
                cursor, b_seen, b_written = outcome
                seen, written, batches = seen + b_seen, written + b_written, batches + 1
                now = self.clock()
                self._tell_lock_first(label)
                self._regrow(now - t0)
                for observer in self.observers:
                    observer.batch_done(spec=spec, chunk_no=chunk_no, seconds=now - t0, seen=b_seen,
                                        written=b_written, cursor=cursor)
                if now >= next_report:
                    rate = seen / max(now - started, 1e-9)
                    self.log.info("%s", progress_line(label, done_before + seen, row.est_rows, rate))
                    next_report = now + spec.progress_every
                done = BatchDone(now - t0, b_seen)
        except Exception as exc:
            self._note(chunk_no, self._state)
            if isinstance(exc, RowfillError):  # rowfill's own words: they name the row and the field
                message = str(exc).strip().rstrip(".")
            else:
                message = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".strip()
            self._record_failure(chunk_no, message)
            raise ChunkFailed(
                f"{label} of backfill {spec.name!r} failed at {spec.key} {format_value(cursor if cursor is not None else row.position)} "
                f"after {batches} batches in this attempt: {message}. Everything committed before is kept; "
                "a retry or a cleared task resumes from the checkpoint."
            ) from exc
        finally:
            self.throttle.end()
        self._note(chunk_no, None)
        final = reconnect.call(lambda: self.store.finish(spec.name, chunk_no), spec, f"recording {label} done", self.log)
        elapsed = self.clock() - started
        rate = seen / max(elapsed, 1e-9)
        self.log.info("%s: done, %s rows walked, %s written in %d batches, %.1f s, %s rows/s", label,
                      f"{final.rows_seen:,}", f"{final.rows_written:,}", final.batches, elapsed, f"{rate:,.0f}")
        return ChunkResult(spec.name, chunk_no, "done", seen, written, batches, elapsed, final.cursor)

    # -- acting on the throttle's decisions -------------------------------------------------------
    def _sleep(self, seconds: float, kind: WaitReason = WaitReason.OTHER, backoff: float = 0.0) -> None:
        """Sleep ``seconds`` and count them: on the checkpoint row (throttled seconds) and in the wait
        samples under ``kind`` (``backoff`` of them, seconds, under ``latency``)."""
        self.throttle.sleep(seconds)
        self._unrecorded += seconds
        if self.waits is not None:
            self.waits.tally.add(kind, seconds - backoff)
            self.waits.tally.add(WaitReason.LATENCY, backoff)

    def _tally_waits(self) -> None:
        """Add the probe's latest worst reading to the wait samples and record them if a second has passed."""
        if self.waits is None:
            return
        if probed := self.throttle.take_probed():
            self.waits.tally.probe(*probed)
        self.waits.due()

    def _wait(self, chunk_no: int, wait: Wait) -> None:
        """Sleep a Wait: the routine rest silently; a wait with a reason logged and recorded first."""
        if wait.reason is not None:
            self.log.info("%s: %s (checking again in %s)", self._label, wait.reason, format_duration(wait.seconds))
            self._note(chunk_no, wait.reason)
        self._sleep(wait.seconds, wait.kind, wait.backoff)

    def _note(self, chunk_no: int, state: str | None) -> None:
        """Record the throttle state and the seconds slept so far on the checkpoint row; best effort."""
        self._state = state
        seconds = self._unrecorded
        try:
            self.store.note_throttle(self.spec.name, chunk_no, state, seconds)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never stop a backfill
            self.log.warning("%s: could not record throttle state: %s", self._label, describe(exc))
            return
        self._unrecorded -= seconds

    def _batch_with_retries(self, chunk_no: int, label: str):
        attempt = 0
        while True:
            slow = self.slow
            try:
                # a lost connection: the server rolled the batch back; it is written again from the cursor
                return reconnect.call(lambda: self._batch(chunk_no), self.spec, f"writing a batch of {label}", self.log,
                                      note="the server rolled the batch back; it is written again from the checkpoint")
            except DBAPIError as exc:
                if not slow and sqlstate(exc) == "55P03" and self._fast:
                    self.slow = True  # the batch met a row someone holds: at once, around it
                    self.log.info("%s: a row of the batch is locked by another session; writing the batch around the "
                                  "rows others hold and coming back to them", label)
                    continue
                if is_data_error(exc) and self._current is not None:
                    self._blame(exc)  # raises RowError naming the row and the field, unless the batch no longer fails
                elif is_statement_timeout(exc) and self._split(label, exc):
                    continue  # at once, smaller; not a retry
                what = RETRYABLE_SQLSTATES.get(sqlstate(exc) or "")
                if is_data_error(exc):
                    what = "a data error that writing the batch again no longer gives"
                if what is None or attempt >= self.spec.batch_retries:
                    if is_statement_timeout(exc) and self._current is not None and self._current[2] == 1:
                        raise self._row_timeout(exc) from exc
                    raise
                delay = retry_backoff(attempt)
                self._sleep(delay)
                attempt += 1
                self.log.warning("%s: batch hit %s (%s); rolled back, retry %d/%d after %.1f s", label, what,
                                 str(exc.orig).strip().splitlines()[0], attempt, self.spec.batch_retries, delay)

    def batch_rows(self) -> int:
        """Rows the next batch asks for: the throttle's size, or less while a statement_timeout split is in effect."""
        rows = self._rows or self.throttle.batch_rows
        return min(rows, self.split_rows) if self.split_rows else rows

    def _split(self, label: str, exc: DBAPIError) -> bool:
        """After a statement_timeout: make the next batch smaller; False when it was a single row already."""
        if self._current is None:  # the timeout hit before the write (finding the batch's keys)
            return False
        lo, hi, keys, asked = self._current
        smaller = split_size(min(asked, keys) if keys else asked, self.throttle.min_batch_rows)
        if smaller is None:
            return False
        self.split_rows = smaller
        self.log.warning("%s: batch of %s rows (%s after %s up to %s) hit statement_timeout (%s); rolled back, "
                         "retrying at once with %s rows", label, f"{keys:,}", self.spec.key, format_value(lo),
                         format_value(hi), format_duration(self.spec.statement_timeout), f"{smaller:,}")
        return True

    def _regrow(self, seconds: float) -> None:
        """After a split, double the batch again once a batch took under a quarter of statement_timeout."""
        if self.split_rows is None or seconds >= self.spec.statement_timeout / 4:
            return
        self.split_rows *= 2
        if self.split_rows >= self.throttle.batch_rows:
            self.split_rows = None  # back to the throttle's own size

    def _row_timeout(self, exc: DBAPIError) -> RowTimeout:
        assert self._current is not None  # asked only about a batch being written (see run)
        lo, hi, _, _ = self._current
        return RowTimeout(
            f"{self.spec.key} {format_value(hi)} alone takes longer than statement_timeout "
            f"({format_duration(self.spec.statement_timeout)}) to write, even as a batch of one row "
            f"({str(exc.orig).strip().splitlines()[0]}). Raise `statement_timeout` in the spec, or keep the row out "
            "with `where`; the chunk resumes from its checkpoint, just before this row.")

    def _blame(self, exc: DBAPIError) -> None:
        assert self._current is not None  # asked only about a batch being written (see run)
        lo, hi, _, _ = self._current
        try:
            found = narrow(self.engine, self.spec, self.writer, self.timeouts, lo, hi, exc)
        except Exception as failed:  # noqa: BLE001 - the original error is what matters
            self.log.warning("could not narrow the failed batch to a row (%s: %s); reporting the batch's error",
                             type(failed).__name__, str(failed).splitlines()[0] if str(failed) else "")
            raise exc from None
        if found is not None:
            raise found from exc

    def _tell_lock_first(self, label: str) -> None:
        if self._told_lock_first:
            return
        self._told_lock_first = True
        reason = getattr(self.writer, "lock_reason", None)
        if reason:
            self.log.info("%s: each batch locks its rows first, then writes in a new statement, because the "
                          "expressions %s: what they read is then as new as the row locks", label, reason)

    def _batch(self, chunk_no: int):
        """One batch in one transaction; returns None when the chunk has no keys left."""
        throttled = self._unrecorded
        self._current = None
        self._fast = False
        conn = self._connection()
        try:
            result = self._batch_in(conn, chunk_no, throttled)
        except BaseException:
            self._drop_connection()  # rolled back; after a lost connection the next batch opens a new one
            raise
        return result

    def _batch_in(self, conn, chunk_no: int, throttled: float):
        """``_batch`` on the held connection ``conn``: one transaction, committed when this returns."""
        w, name = self.writer, self.spec.name
        with conn.begin():
            self.timeouts.apply(conn)
            position, hi, _status = self.store.lock_position(conn, name, chunk_no)
            if position == hi:  # the cursor ends exactly on the chunk's upper key
                return None
            asked = self.batch_rows()
            end, seen = w.batch_end(conn, position, hi, asked)
            if end is None:  # no keys left in range (rows deleted since planning)
                end, seen = hi, 0
            self._current = (position, end, seen, asked)
            written, skipped = (self._write(conn, position, end) if seen else (0, []))
            if skipped:
                rowlocks.record_skipped(conn, name, chunk_no, skipped)
            self.store.advance(conn, name, chunk_no, end, seen, written, throttled, self.split_rows)
            for read in self.batch_reads:
                read(conn)
        self._unrecorded -= throttled
        if w.skips_locked:
            self.skipped.met(skipped)
            self.slow = bool(skipped) or not w.single_statement  # back to the fast path once nothing is held
        return end, seen, written

    def _write(self, conn, lo, hi) -> tuple[int, list]:
        """Write one batch: (rows written, keys skipped because others hold them). See ``rowfill.engine.rowlocks``."""
        w = self.writer
        if not w.skips_locked:  # sinks, the rollback's restore: as before, waiting up to lock_timeout
            return w.apply(conn, lo, hi), []
        rowlocks.short_lock_wait(conn)
        if w.single_statement and not self.slow:
            self._fast = True
            return w.apply(conn, lo, hi), []
        _, skipped = rowlocks.lock_batch(conn, w, lo, hi)
        if not skipped:
            return rowlocks.write_runs(conn, w, [rowlocks.Run(lo, hi, w.batch_first)]), []
        return rowlocks.write_runs(conn, w, rowlocks.runs(lo, w.batch_first, hi, skipped)), [s[0] for s in skipped]

    # -- rows others hold (rowfill.engine.rowlocks) ----------------------------------------------------
    def _load_skipped(self, chunk_no: int, label: str) -> None:
        """Skipped keys a previous attempt recorded: this attempt comes back to them too."""
        if not self.writer.skips_locked:
            return
        with self.engine.connect() as conn:
            keys = rowlocks.pending(conn, self.spec.name, chunk_no)
        if keys:
            self.skipped.met(keys)
            self.log.info("%s: %d rows skipped earlier because other sessions held them are still to write", label, len(keys))

    def _revisit(self, chunk_no: int, label: str) -> int:
        """Write the skipped keys that are free now; fail the chunk when one is held past locked_rows_wait."""
        name = self.spec.name
        try:
            with self.engine.begin() as conn:
                self.timeouts.apply(conn)
                self.store.lock_position(conn, name, chunk_no)  # take turns with another runner of this chunk
                rowlocks.short_lock_wait(conn)
                keys = rowlocks.pending(conn, name, chunk_no, rowlocks.REVISIT_KEYS)
                written, done, held = rowlocks.revisit(conn, self.writer, name, chunk_no, keys) if keys else (0, [], [])
                if written:
                    self.store.add_written(conn, name, chunk_no, written)
        except DBAPIError as exc:
            if (state := sqlstate(exc)) not in ("55P03", "40001", "40P01"):
                raise
            # the write met a lock beyond the rows it took (see rowfill.engine.rowlocks): rolled back, look again later
            self.log.warning("%s: writing skipped rows hit %s; rolled back, trying again later", label,
                             RETRYABLE_SQLSTATES[state])
            keys, written, done, held = [None], 0, [], []
        if keys:
            self.skipped.revisited(done, held)
        else:  # another runner of this chunk wrote them
            self.skipped.clear()
        if done:
            self.log.info("%s: %d skipped rows written now that they are free (%d still held)", label, len(done),
                          self.skipped.count)
        if overdue := self.skipped.overdue():
            raise self.skipped.too_long(self.spec, overdue)
        return written

    def _wait_for_skipped(self, chunk_no: int) -> None:
        """The walk is done but rows others hold are left: wait for the next revisit (the throttle is asked again after)."""
        seconds = self.skipped.seconds_to_next()
        if seconds > 0:
            self._wait(chunk_no, Wait(seconds, f"waiting for {self.skipped.count:,} rows other sessions hold",
                                      WaitReason.OTHER))
