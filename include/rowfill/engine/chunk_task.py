"""One go of a chunk task: decide whether it may write now, run it, and say what should happen next.

Kept free of Airflow so the same decisions drive the Airflow operator (which defers to the
triggerer), ``rowfill run`` (which waits in-process) and the tests (which drive the clock):

- cancelled → ``cancelled``: nothing is written, the cursor stays where it is;
- paused → ``defer`` until resumed;
- outside every window → ``defer`` until the next window opens;
- otherwise check that the table is still the relation planned (``rowfill.engine.resolve``: a ``table``
  SpecError, nothing written, if not) and run from the cursor; the runner stops at a batch boundary when the backfill is
  paused or cancelled, or when the window closes, and the outcome says which. While it runs, the
  control row is read inside each batch's transaction (``BatchControlReads``), not in one of its own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine

from rowfill.engine import reconnect
from rowfill.engine.control import Control, ControlStore, LiveControl, stopping_reason
from rowfill.engine.resolve import pinned_spec
from rowfill.engine.runner import BatchObserver, ChunkResult, ChunkRunner, Sampled
from rowfill.engine.throttle import Throttle
from rowfill.engine.writers import BatchWriter
from rowfill.spec.spec import Spec
from rowfill.spec.windows import Clock, Windows, utcnow
from rowfill.store.checkpoint import CheckpointStore
from rowfill.store.rates import RateRecorder  # one sample a second, not one per batch (runner.Sampled)
from rowfill.store.states import ControlState

log = logging.getLogger("rowfill.chunk")

class _Lent:
    """An engine stand-in that lends one connection, already in a transaction, to a store's reads."""

    def __init__(self):
        self.conn = None

    def connect(self):
        """The lent connection, in a context that leaves it open (its transaction is the batch's)."""
        return contextlib.nullcontext(self.conn)


class BatchControlReads:
    """The chunk's control row read inside each batch's transaction, not in a transaction of its own.

    ``control.LiveControl`` reads the control row (pause, cancel, live knobs) before every batch through
    its store's ``get``; that was a transaction of its own per batch (a pool checkout, a ping, BEGIN,
    SELECT, ROLLBACK: ~1 ms, a tenth of a small batch's work at the default 50 ms target_batch_time).
    The runner calls ``read_in`` inside each batch's transaction (``ChunkRunner(batch_reads=...)``), and
    the next ``get`` returns that reading; only without a fresh one (the first batch) does ``get`` read on
    its own. A pause or knob set while a batch runs is seen by the next batch, which then is the last
    before the stop: still a batch boundary, one batch later at most.
    """

    def __init__(self, store: ControlStore, name: str):
        """:param store: the controls table. :param name: the control row (backfill name)."""
        self.store, self.name = store, name
        self._lent = _Lent()
        # the same table, read on the batch's connection. A cast: _Lent stands in for an Engine, as
        # ControlStore.get only calls connect(), which _Lent has; the type checker cannot know that
        self._in_batch = ControlStore(cast(Engine, self._lent))
        self._reading: Control | None = None

    def read_in(self, conn) -> None:
        """Read the control row on ``conn``, inside the batch's transaction (raises what the read raises:
        the batch then fails and is retried as any batch whose connection was lost)."""
        self._lent.conn = conn
        try:
            self._reading = self._in_batch.get(self.name)
        finally:
            self._lent.conn = None

    def get(self, name: str) -> Control:
        """The reading of the last batch if not used yet, else a read of its own (``ControlStore.get``)."""
        if self._reading is not None and name == self.name:
            reading, self._reading = self._reading, None
            return reading
        return self.store.get(name)


@dataclass(frozen=True)
class Outcome:
    kind: str  # done | defer | cancelled | interrupted (the caller's should_stop)
    reason: str
    until: datetime | None = None  # defer: when the window opens; None = until resumed
    result: ChunkResult | None = None


def _when(moment: datetime, windows: Windows) -> str:
    zone = windows.windows[0].tz if windows else None
    local = moment.astimezone(zone) if zone else moment
    return f"{local:%Y-%m-%d %H:%M:%S %Z}"


def run_chunk(engine: Engine, spec: Spec, chunk_no: int, *, label: str | None = None, run_id: str | None = None,
              logger: logging.Logger | None = None, overrides: dict | None = None, clock: Clock = utcnow,
              sleep: Callable[[float], None] = time.sleep, observers: Sequence[BatchObserver] = (),
              writer: BatchWriter | None = None, check_table: bool = True,
              should_stop: Callable[[], str | None] | None = None) -> Outcome:
    """One go of a chunk: refuse, defer, or run it through the chunk runner until done or stopped.

    :param engine: the target database. :param spec: the backfill's spec, or a rollback's
        (``rowfill.engine.undo.rollback_spec``). :param chunk_no: the chunk to run.
    :param label: names the chunk in the log. :param run_id: Airflow's run id, kept on the chunk row.
    :param logger: where to log. :param overrides: this run's trigger parameters (knob -> value).
    :param clock: the wall clock for windows (an aware datetime). :param sleep: what the runner sleeps with.
    :param observers: told about every batch (metrics, rate samples).
    :param writer: writes a batch (default: the spec's mode; a rollback passes ``undo.RestoreWriter``).
    :param check_table: check the table is still the relation planned (``rowfill.engine.resolve``);
        False when the caller has resolved the tables itself (a rollback: ``rollback.rollback_target``).
    :param should_stop: the caller's own reason to stop at the next batch boundary (Airflow: the DAG was
        paused), or None to go on; asked before every batch (``ChunkRunner``), so it must be cheap.
    :returns: an ``Outcome``: done, defer (paused, or outside the window: ``until``), cancelled, or
        interrupted (``should_stop`` gave a reason; the runner noted it on the chunk row, cursor kept).
    :raises ChunkFailed: the chunk failed (its cause says why; ``probes.GateCritical`` for a critical gate).
    :raises SpecError: the table is no longer the relation planned.
    """
    logger = logger or log
    label = label or f"chunk {chunk_no}"
    controls = ControlStore(engine)
    store = CheckpointStore(engine)
    # every read and write here is retried through a restart of the database (rowfill.engine.reconnect)
    control = reconnect.call(lambda: controls.get(spec.name), spec,
                             "reading the backfill's control state", logger)
    windows = Windows(spec.window)

    def hold(state: str) -> None:
        """Record on the chunk row why it is not running (``paused``, ``cancelled``, window closed), so status shows it.

        :param state: the reason text; written through a database restart (``reconnect.call``).
        """
        reconnect.call(lambda: store.note_throttle(spec.name, chunk_no, state), spec, "recording why the chunk waits", logger)

    if control.state == "cancelled":
        reason = stopping_reason(control)
        hold(reason)
        logger.info("%s: backfill %s is %s; not starting, cursor kept", label, spec.name, reason)
        return Outcome("cancelled", reason)
    if control.state == "paused":
        reason = stopping_reason(control)
        hold(reason)
        logger.info("%s: backfill %s is %s; waiting for `rowfill resume %s` without holding a worker slot",
                    label, spec.name, reason, spec.name)
        return Outcome("defer", reason)
    now = clock()
    if not windows.is_open(now):
        opens = windows.next_open(now)
        reason = f"outside the window ({windows}); opens at {_when(opens, windows)}"
        hold(reason)
        logger.info("%s: %s; waiting without holding a worker slot", label, reason)
        return Outcome("defer", reason, until=opens)

    # the table pinned at planning, after checking it is still the same relation: every statement of
    # the chunk (writes, gates, the throttle's probes) names it schema-qualified
    if check_table:
        spec = reconnect.call(lambda: pinned_spec(engine, spec), spec, "checking the planned table", logger)
    reads = BatchControlReads(controls, spec.name)
    live = LiveControl(reads, spec, overrides=overrides, logger=logger, label=label)
    live.start(control)
    throttle = Throttle.for_spec(spec, sleep, engine=engine, logger=logger).listen(live=live, windows=windows, clock=clock)
    throttle.label = label
    throttle.start_live()
    if windows:
        closes = windows.closes_at(now)
        assert closes is not None  # open at `now` (checked above), so the open period ends after it
        logger.info("%s: inside the window (%s) until %s", label, windows, _when(closes, windows))

    runner = ChunkRunner(engine, spec, throttle=throttle, logger=logger, label=label, run_id=run_id,
                         observers=[Sampled(o) if isinstance(o, RateRecorder) else o for o in observers], writer=writer,
                         should_stop=should_stop, batch_reads=[reads.read_in])
    result = runner.run(chunk_no)
    if result.status == "done":
        return Outcome("done", "done", result=result)
    if result.stopped_by == "interrupted":
        return Outcome("interrupted", "stopped by the caller", result=result)
    if result.stopped_by == ControlState.CANCELLED:
        reason = stopping_reason(live.control)
        hold(reason)
        return Outcome("cancelled", reason, result=result)
    if result.stopped_by == ControlState.PAUSED:
        reason = stopping_reason(live.control)
        hold(reason)
        return Outcome("defer", reason, result=result)
    opens = windows.next_open(clock())
    reason = f"outside the window ({windows}); opens at {_when(opens, windows)}"
    hold(reason)
    logger.info("%s: %s; cursor %s kept", label, reason, result.cursor)
    return Outcome("defer", reason, until=opens, result=result)


def run_chunk_here(engine: Engine, spec: Spec, chunk_no: int, *, poll: float = 5.0, clock: Clock = utcnow,
                   sleep: Callable[[float], None] = time.sleep, **kw) -> Outcome:
    """``run_chunk`` until it is done or cancelled, waiting in this process instead of deferring.

    :param poll: seconds between control-row reads while paused or before a window opens.
    Other parameters, the return value and what is raised: as ``run_chunk``.
    """
    logger = kw.get("logger") or log
    while True:
        outcome = run_chunk(engine, spec, chunk_no, clock=clock, sleep=sleep, **kw)
        if outcome.kind != "defer":
            return outcome
        if outcome.until is not None:
            seconds = (outcome.until - clock()).total_seconds()
            logger.info("sleeping %.0f s until the window opens", max(seconds, 0))
            while (seconds := (outcome.until - clock()).total_seconds()) > 0:
                if _control_state(engine, spec, logger) == "cancelled":
                    break
                sleep(min(seconds, poll))
        else:
            while _control_state(engine, spec, logger) == "paused":
                sleep(poll)


def _control_state(engine: Engine, spec: Spec, logger: logging.Logger) -> str:
    return reconnect.call(lambda: ControlStore(engine).get(spec.name).state, spec, "waiting for resume", logger)
