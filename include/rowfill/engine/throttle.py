"""Pacing as one decision: before each batch the runner asks ``Throttle.next`` what to do.

The answer is one of three values (``Go``, ``Wait``, ``Stop``); only the runner acts on it: it
sleeps, records the throttle state in the chunk's checkpoint row, and stops. Everything else is
an input the decision reads, collected by something that only measures (gh-ost's throttler:
collectors measure, one function decides; Shopify job-iteration: interruption is one callable
that returns a reason):

  - the last batch's outcome (``BatchDone``): its duration and rows feed the adaptive batch size
    (``target_batch_time``) and the rest after it (``pause`` + ``pause_ratio`` x duration, gh-ost's
    nice-ratio);
  - the live-latency probe's samples (``probes.LatencyProbe``): over the limit, back off one level
    (half the rows, twice the pause); after ``RECOVER_AFTER`` good samples, speed up one level;
  - the health gates' readings (``probes.GateKeeper.measure``): above ``wait`` wait with backoff,
    above ``critical`` stop and fail the chunk;
  - live control (``control.LiveControl``): knobs change the numbers above; pause/cancel stop;
  - the spec's windows: a closed window stops;
  - an optional interruption callable (tests, embedding code) returning a reason or None.
Every decision carries its reason in words, for the log and ``rowfill status``. The arithmetic of
size and rest lives in ``BatchSize`` (no I/O); ``Throttle`` reads the inputs and decides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from collections.abc import Callable

from rowfill.engine.probes import GateCritical, GateKeeper, LatencyProbe
from rowfill.spec.durations import format_duration
from rowfill.spec.gates import KINDS
from rowfill.store.states import ControlState
from rowfill.store.waits import WaitReason

log = logging.getLogger("rowfill.throttle")

# Latency back-off: each level halves the rows and doubles the pause; six levels is 1/64 of the
# rows and 64x the pause, slow enough for any probe limit we have seen (bench/live_traffic.py).
MAX_LEVEL = 6
# Good probe samples in a row before speeding up one level: one fast sample proves little.
RECOVER_AFTER = 10
# Extra rest per back-off level beyond the doubling, seconds: with ``pause: 0`` a backed-off
# chunk still gives live traffic some room (0.05 s at level 1, 3.15 s at level 6).
LEVEL_EXTRA_PAUSE = 0.05
# Bounds of the adaptive batch size when the spec names none (rows).
DEFAULT_MIN_BATCH_ROWS = 100
DEFAULT_MAX_BATCH_ROWS = 50_000
# Adaptive size: at most this factor of growth per batch (shrinking is immediate).
MAX_GROWTH = 2
# Smoothing of a falling cost per row (0.5: the new sample and the past weigh the same).
COST_SMOOTHING = 0.5
# Retry backoff after a lock or statement timeout: 0.5 s, 1 s, 2 s, ... at most 30 s.
RETRY_BACKOFF_FIRST = 0.5
RETRY_BACKOFF_MAX = 30.0


def _ms(seconds: float) -> str:
    return format_duration(seconds)


def retry_backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a batch that hit a lock or timeout.

    :param attempt: retries already made for this batch (0 for the first).
    :returns: 0.5 s doubling per attempt, at most ``RETRY_BACKOFF_MAX`` (30 s). Never raises.
    """
    return min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_FIRST * 2 ** attempt)


# -- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchDone:
    """What the last batch did: the only thing the runner tells the throttle.

    :param seconds: wall time of the batch transaction, seconds.
    :param rows: keys the batch walked.
    """

    seconds: float
    rows: int


@dataclass(frozen=True)
class Go:
    """Write the next batch, asking for ``rows`` keys."""

    rows: int


@dataclass(frozen=True)
class Wait:
    """Sleep ``seconds`` (float) before asking again.

    ``reason`` None is the routine rest between batches (not logged, no throttle state);
    otherwise it says what the chunk waits for, and the runner logs it and records it as the
    chunk's throttle state. ``kind`` is the reason's class, the column the runner adds the wait to in
    ``rowfill.wait_samples`` (``rowfill.store.waits``); ``backoff`` is the part of a routine rest,
    seconds, that only the latency probe's back-off added (recorded as ``latency``, the rest as ``rest``).
    """

    seconds: float
    reason: str | None = None
    kind: WaitReason = WaitReason.REST
    backoff: float = 0.0


@dataclass(frozen=True)
class Stop:
    """Stop at this batch boundary, cursor kept.

    :param reason: in words, for the log and the checkpoint row.
    :param kind: ``paused`` | ``cancelled`` (live control), ``window`` (the window closed),
        ``interrupted`` (the interruption callable), ``critical`` (a gate above critical: the
        runner fails the chunk with ``error``).
    :param error: the exception to fail the chunk with (``probes.GateCritical``), for ``critical``.
    """

    reason: str
    kind: str = "interrupted"
    error: Exception | None = None


Decision = Go | Wait | Stop


class BatchSize:
    """Rows of the next batch and the rest after it (GitLab's BatchOptimizer, with rowfill's inputs).

    Two things move the size: the measured cost per row against ``target_batch_time`` (adaptive
    size), and the latency back-off ``level`` (each level halves the rows and doubles the rest).
    Pure arithmetic: no I/O, no sleeping, no logging.
    """

    def __init__(self, pause: float, batch_rows: int, *, pause_ratio: float = 0.0,
                 target_batch_time: float | None = None, min_batch_rows: int | None = None,
                 max_batch_rows: int | None = None):
        """:param pause: rest after each batch, seconds. :param batch_rows: rows of the first batch.
        :param pause_ratio: extra rest per second of batch. :param target_batch_time: seconds a batch
        should take (None: fixed size). :param min_batch_rows: / :param max_batch_rows: bounds (rows).
        """
        self.pause = pause
        self.pause_ratio = pause_ratio
        self.target_batch_time = target_batch_time
        self.min_batch_rows = min(min_batch_rows or DEFAULT_MIN_BATCH_ROWS, batch_rows)
        self.max_batch_rows = max(max_batch_rows or DEFAULT_MAX_BATCH_ROWS, batch_rows)
        self.size = batch_rows  # the adaptive size before bounds and back-off
        self.cost: float | None = None  # seconds per row, smoothed
        self.level = 0  # latency back-off level, 0..MAX_LEVEL
        self.good = 0  # good probe samples in a row while backed off

    @property
    def rows(self) -> int:
        """Rows the next batch asks for: the adaptive size, within bounds, halved per back-off level."""
        rows = max(self.min_batch_rows, min(self.size, self.max_batch_rows))
        if self.level:
            rows = max(self.min_batch_rows, rows >> self.level)
        return max(1, rows)

    def adapt(self, seconds: float, rows: int) -> int | None:
        """Follow the measured cost per row towards ``target_batch_time``; at most x2 or /2 per step.

        :param seconds: the last batch's wall time. :param rows: its keys.
        :returns: the new adaptive size when it changed, else None. Never raises.
        """
        if not self.target_batch_time or rows <= 0 or seconds <= 0:
            return None
        per_row = seconds / rows
        # Rising cost is believed at once (a slow batch holds live traffic back: shrink now);
        # falling cost is smoothed and growth is at most x2 a batch (one fast batch proves little).
        if self.cost is None or per_row > self.cost:
            self.cost = per_row
        else:
            self.cost = COST_SMOOTHING * self.cost + (1 - COST_SMOOTHING) * per_row
        ideal = self.target_batch_time / self.cost
        current = max(self.min_batch_rows, min(self.size, self.max_batch_rows))
        new = int(min(current * MAX_GROWTH, ideal))
        self.size = max(self.min_batch_rows, min(new, self.max_batch_rows))
        return self.size if self.size != current else None

    def pause_after(self, batch_seconds: float) -> float:
        """Rest after a batch of ``batch_seconds``: pause + pause_ratio x duration, longer per back-off level.

        :returns: seconds (float). Never raises.
        """
        base = self.pause + self.pause_ratio * batch_seconds
        if not self.level:
            return base
        factor = 2 ** self.level
        return base * factor + LEVEL_EXTRA_PAUSE * (factor - 1)

    def latency(self, worst: float, limit: float, samples: int) -> int:
        """Move the back-off level after probe samples: +1 when ``worst`` > ``limit`` (seconds), -1
        after ``RECOVER_AFTER`` good samples in a row. :returns: the change (-1, 0 or +1; 0 at the bounds)."""
        if worst > limit:
            self.good = 0
            if self.level < MAX_LEVEL:
                self.level += 1
                return 1
            return 0
        if self.level:
            self.good += samples
            if self.good >= RECOVER_AFTER:
                self.good = 0
                self.level -= 1
                return -1
        return 0

    def last_seconds(self) -> float:
        """What a batch of the current size is expected to take, from the measured cost (seconds; 0 unknown)."""
        return (self.cost or 0.0) * self.rows


class Throttle:
    """Paces one chunk: decides, from the last batch and what the collectors measure, what comes next.

    The runner calls ``begin`` once, then asks ``next(done)`` until it gets ``Go`` (sleeping on
    each ``Wait``, stopping on ``Stop``), writes the batch, and asks again with its ``BatchDone``;
    ``end`` at the end. ``sleep`` is the function the runner sleeps with (injectable for tests);
    ``slept`` is the total of the waits this throttle decided, seconds.
    """

    def __init__(self, pause: float = 0.1, batch_rows: int = 1000, sleep: Callable[[float], None] = time.sleep, *,
                 pause_ratio: float = 0.0, target_batch_time: float | None = None,
                 min_batch_rows: int | None = None, max_batch_rows: int | None = None,
                 gates: GateKeeper | None = None, latency: LatencyProbe | None = None,
                 logger: logging.Logger | None = None):
        """:param pause: rest after each batch, seconds. :param batch_rows: rows of the first batch.
        :param sleep: what the runner sleeps with. :param pause_ratio: extra rest per second of batch.
        :param target_batch_time: seconds a batch should take (None: fixed size).
        :param min_batch_rows: / :param max_batch_rows: bounds of the adaptive size (rows).
        :param gates: the health gates' collector. :param latency: the live-latency probe.
        :param logger: where decisions are logged.
        """
        self.size = BatchSize(pause, batch_rows, pause_ratio=pause_ratio, target_batch_time=target_batch_time,
                              min_batch_rows=min_batch_rows, max_batch_rows=max_batch_rows)
        self.gates = gates
        self.latency = latency
        self.sleep = sleep
        self.slept = 0.0
        self.log = logger or log
        self.label = "chunk"
        # inputs a chunk task adds (see ``listen``)
        self.live = None  # control.LiveControl
        self.windows = None  # spec.windows.Windows
        self.wall_clock: Callable | None = None
        self.interrupt: Callable[[], str | None] | None = None
        self._fed: BatchDone | None = None
        self._rest = 0.0  # the rest still owed after the last batch, seconds
        self._backoff = 0.0  # the part of that rest the latency back-off added, seconds
        self._probed: tuple[float, float] | None = None  # the probe's worst reading and limit since last taken, seconds
        self._holding = 0  # gate waits in a row (0: not holding)
        self._held = 0.0

    @classmethod
    def for_spec(cls, spec, sleep: Callable[[float], None] = time.sleep, *, engine=None,
                 logger: logging.Logger | None = None) -> Throttle:
        """The spec's throttle; with an engine, also its gates and latency probe.

        :param spec: a ``rowfill.spec.spec.Spec``. :param sleep: what the runner sleeps with.
        :param engine: the target database (None: no gates, no probe). :param logger: for decisions.
        :returns: a Throttle. Never raises.
        """
        gates = latency = None
        if engine is not None:
            # always a keeper: a live knob may switch on a gate the spec left out
            gates = GateKeeper(engine, getattr(spec, "gates", None) or {}, spec.table.sql)
            if getattr(spec, "latency_probe", None):
                latency = LatencyProbe(engine, spec.latency_probe)
        return cls(spec.pause, spec.batch_rows, sleep, pause_ratio=getattr(spec, "pause_ratio", 0.0),
                   target_batch_time=getattr(spec, "target_batch_time", None),
                   min_batch_rows=getattr(spec, "min_batch_rows", None), max_batch_rows=getattr(spec, "max_batch_rows", None),
                   gates=gates, latency=latency, logger=logger)

    def listen(self, *, live=None, windows=None, clock: Callable | None = None,
               interrupt: Callable[[], str | None] | None = None) -> Throttle:
        """Add the stop inputs: live control, windows (closing at ``clock()``, an aware datetime) and
        an interruption callable returning a reason or None. Returns self. Never raises."""
        if live is not None:
            self.live = live
        if windows:
            self.windows, self.wall_clock = windows, clock
        if interrupt is not None:
            self.interrupt = interrupt
        return self

    # -- the decision --------------------------------------------------------------------------
    def next(self, done: BatchDone | None = None) -> Decision:
        """What the runner does next, given the last batch (None: none since the last question).

        Asking again with the same ``done`` (after a lost connection) does not count it twice.
        :returns: ``Wait`` for the rest after a batch or while a gate is over ``wait``; ``Stop`` when
            paused, cancelled, out of the window, interrupted, or a gate is over ``critical``;
            otherwise ``Go`` with the rows to ask for.
        :raises: what a collector raises on a lost connection (the runner reconnects and asks again).
        """
        if done is not None and done is not self._fed:
            self._fed = done
            if (new := self.size.adapt(done.seconds, done.rows)) is not None:
                self.log.debug("%s: batch of %d rows took %s (target %s): next batches %d rows", self.label, done.rows,
                               _ms(done.seconds), format_knob("target_batch_time", self.size.target_batch_time), new)
            self._rest = self.size.pause_after(done.seconds)
            # what the rest would be at full pace: the remainder is the latency back-off's (BatchSize.pause_after)
            self._backoff = max(self._rest - (self.size.pause + self.size.pause_ratio * done.seconds), 0.0)
        if self._rest > 0:
            rest, self._rest = self._rest, 0.0
            backoff, self._backoff = min(self._backoff, rest), 0.0
            return self._waiting(rest, None, WaitReason.REST, backoff)
        if stop := self._stop():
            return stop
        if self.latency is not None:
            self._react_to_latency(self.latency)
        if self.gates is not None and self.gates.active() and (self._holding or self.gates.due()):
            if decision := self._gates(self.gates):
                return decision
        return Go(self.batch_rows)

    def _waiting(self, seconds: float, reason: str | None, kind: WaitReason, backoff: float = 0.0) -> Wait:
        self.slept += seconds
        return Wait(seconds, reason, kind, backoff)

    def _stop(self) -> Stop | None:
        """Live control, then the window, then the interruption callable: the first reason wins."""
        if self.live is not None:
            control, changes = self.live.poll()
            self._apply_logged(changes, "live change takes effect")
            if control.state != ControlState.RUNNING:
                return Stop(self.live.reason(), control.state)
        if self.windows and not self.windows.is_open(self.wall_clock()):
            return Stop(f"the window ({self.windows}) closed", "window")
        if self.interrupt is not None and (reason := self.interrupt()):
            return Stop(reason, "interrupted")
        return None

    def _gates(self, gates: GateKeeper) -> Decision | None:
        """Readings above ``critical`` stop the chunk; above ``wait`` hold it with backoff (1 s, 2 s, ...)."""
        readings = gates.measure()
        if critical := [r for r in readings if r.over_critical]:
            r = critical[0]
            error = GateCritical(
                f"gate {r.gate.name} critical: {r.why_critical()}; stopped at a batch boundary so the database can "
                f"recover. Once it has, clear the chunk task (or raise gates.{r.gate.name}.critical, live: "
                f"`rowfill set NAME {r.gate.name}.critical=...`)."
            )
            return Stop(str(error), "critical", error)
        if over := [r for r in readings if r.over_wait]:
            delay = min(gates.max_backoff, 2.0 ** self._holding)
            self._holding += 1
            self._held += delay
            return self._waiting(delay, "waiting: " + "; ".join(r.why_wait() for r in over), WaitReason.GATE)
        if self._holding:
            self.log.info("%s: gates clear after waiting %s; continuing", self.label, format_duration(self._held))
            self._holding, self._held = 0, 0.0
        return None

    # -- what the runner and the tests read ------------------------------------------------------
    @property
    def batch_rows(self) -> int:
        """Rows the next batch asks for (``BatchSize.rows``)."""
        return self.size.rows

    @batch_rows.setter
    def batch_rows(self, rows: int) -> None:
        """Set the next batch's size, rows (a live knob or a test); the adaptive size goes on from there.

        :param rows: rows per batch.
        """
        self.size.size = rows

    @property
    def level(self) -> int:
        """The latency back-off level (0: full pace)."""
        return self.size.level

    @property
    def min_batch_rows(self) -> int:
        """The smallest batch the adaptive size goes down to, rows."""
        return self.size.min_batch_rows

    def pause_after(self, batch_seconds: float) -> float:
        """Rest after a batch of ``batch_seconds`` (``BatchSize.pause_after``), seconds."""
        return self.size.pause_after(batch_seconds)

    def take_probed(self) -> tuple[float, float] | None:
        """The latency probe's worst reading and its limit (seconds) since the last call, for the wait
        samples (``rowfill.store.waits``); None when no reading came in meanwhile (or there is no probe)."""
        probed, self._probed = self._probed, None
        return probed

    # -- start and end -------------------------------------------------------------------------
    def begin(self, label: str, logger: logging.Logger | None = None) -> None:
        """Name the chunk in the log and start the latency probe's thread. Never raises."""
        self.label = label
        if logger is not None:
            self.log = logger
        if self.latency is not None:
            self.latency.start()

    def end(self) -> None:
        """Stop the latency probe's thread. Never raises."""
        if self.latency is not None:
            self.latency.stop()

    # -- the live-latency gate -----------------------------------------------------------------
    def _react_to_latency(self, latency: LatencyProbe) -> None:
        samples = latency.take()
        if not samples:
            return
        worst, limit, size = max(samples), latency.limit, self.size
        self._probed = (max(worst, self._probed[0]) if self._probed else worst, limit)
        change = size.latency(worst, limit, len(samples))
        pace = f"{size.rows} rows, pause {_ms(size.pause_after(size.last_seconds()))}"
        if change > 0:
            self.log.info("%s: latency probe %s > %s: backing off to batches of %s", self.label, _ms(worst), _ms(limit), pace)
        elif worst > limit:
            self.log.info("%s: latency probe %s > %s: already at the slowest pace (%s)", self.label, _ms(worst),
                          _ms(limit), pace)
        elif change < 0:
            self.log.info("%s: latency probe %s <= %s for %d probes: speeding up to batches of %s", self.label,
                          _ms(worst), _ms(limit), RECOVER_AFTER, pace)

    # -- live knobs ----------------------------------------------------------------------------
    def start_live(self) -> None:
        """Apply the run's trigger parameters and the live knobs in force when the chunk starts."""
        if self.live is not None:
            for when, knobs in self.live.starting():
                self._apply_logged(knobs, when)

    def _apply_logged(self, knobs: dict, when: str) -> None:
        if knobs and (changes := self.apply(knobs)):
            self.log.info("%s: %s: %s", self.label, when, ", ".join(changes))

    def apply(self, knobs: dict) -> list[str]:
        """Apply knob values (already validated, ``control.parse_knob``).

        :param knobs: knob name -> value (seconds as floats, rows as ints, None = off).
        :returns: what changed, as ``name old -> new`` for the log. Never raises.
        """
        changes = []
        for name, value in knobs.items():
            size = self.size
            old: float | None  # the knob's value before: rows (int), seconds or a threshold (float), None = off
            if name == "batch_rows":
                old = size.size
                size.size = value
                size.min_batch_rows = min(size.min_batch_rows, value)
                size.max_batch_rows = max(size.max_batch_rows, value)
            elif name in ("pause", "pause_ratio", "target_batch_time", "min_batch_rows", "max_batch_rows"):
                old = getattr(size, name)
                setattr(size, name, value)
                if name == "target_batch_time":
                    size.cost = None
            elif name == "latency_limit" and self.latency is not None:
                old = self.latency.limit
                self.latency.limit = value
            elif "." in name and self.gates is not None:
                gate, which = name.split(".", 1)
                current = self.gates.gates.get(gate)
                old = getattr(current, which) if current else None
                self.gates.set_threshold(gate, which, value)
            else:
                continue
            if old != value:
                changes.append(f"{name} {_show(name, old)} -> {_show(name, value)}")
        return changes


def format_knob(name: str, value) -> str:
    """A knob's value the way people write it: 50 ms, 10 s, 2000, off."""
    if value is None or value == "off":
        return "off"
    gate, _, which = name.partition(".")
    if name in ("pause", "target_batch_time", "latency_limit") or (which and KINDS.get(gate, ("",))[0] == "seconds"):
        return _ms(float(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_show = format_knob
