"""How a chunk paces itself, so live traffic gets the database back between (and during) batches.

From coarse to fine, inside one chunk:
  - ``pause`` after every batch, plus ``pause_ratio`` x the batch's duration (gh-ost's nice-ratio);
  - adaptive batch size: with ``target_batch_time`` the next batch's rows follow the measured cost
    per row, within ``[min_batch_rows, max_batch_rows]``, so a batch stays short when rows get
    expensive (a trigger, a wide index, a busy disk) and grows when they are cheap; it shrinks
    at once and grows at most x2 per batch;
  - health gates (``gates``) checked between batches: wait with backoff, or stop at ``critical``;
  - the live-latency gate: when the probe's worst latency since the last batch exceeds its limit,
    back off one level (half the rows, twice the pause), and after ten good probes in a row
    speed up one level again.
Every decision is logged with its reason, and the time spent throttled is handed to the runner
to record in the chunk's checkpoint row. ``sleep`` is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from rowfill.engine.disconnects import describe
from rowfill.engine.probes import GateKeeper, LatencyProbe
from rowfill.spec.durations import format_duration
from rowfill.spec.gates import KINDS

log = logging.getLogger("rowfill.throttle")

MAX_LEVEL = 6  # latency back-off: at most 1/64 of the rows and 64x the pause
RECOVER_AFTER = 10  # good probe samples in a row before speeding up one level
DEFAULT_MIN_BATCH_ROWS = 100
DEFAULT_MAX_BATCH_ROWS = 50_000


def _ms(seconds: float) -> str:
    return format_duration(seconds)


class Throttle:
    """Paces one chunk: the size of the next batch, the rest after it, the gates before it.

    The runner calls ``begin`` once, then per batch ``before_batch`` (gates, latency), reads
    ``batch_rows``, runs the batch, and calls ``after_batch(seconds, rows)``; ``end`` at the end.
    """

    def __init__(self, pause: float = 0.1, batch_rows: int = 1000, sleep: Callable[[float], None] = time.sleep, *,
                 pause_ratio: float = 0.0, target_batch_time: float | None = None,
                 min_batch_rows: int | None = None, max_batch_rows: int | None = None,
                 gates=None, latency=None, logger: logging.Logger | None = None):
        self.pause = pause
        self.pause_ratio = pause_ratio
        self.target_batch_time = target_batch_time
        self.min_batch_rows = min(min_batch_rows or DEFAULT_MIN_BATCH_ROWS, batch_rows)
        self.max_batch_rows = max(max_batch_rows or DEFAULT_MAX_BATCH_ROWS, batch_rows)
        self._size = batch_rows
        self._cost: float | None = None  # seconds per row, smoothed
        self.level = 0  # latency back-off level
        self._good = 0
        self.gates = gates  # probes.GateKeeper or None
        self.latency = latency  # probes.LatencyProbe or None
        self._sleep = sleep
        self.slept = 0.0
        self._recorded = 0.0
        self.state: str | None = None  # what the throttle is waiting for right now, for the checkpoint row
        self.log = logger or log
        self.label = "chunk"
        self.note: Callable[[str | None, float], None] | None = None  # set by the runner: records state + seconds

    @classmethod
    def for_spec(cls, spec, sleep: Callable[[float], None] = time.sleep, *, engine=None,
                 logger: logging.Logger | None = None) -> "Throttle":
        """The spec's throttle; with an engine, also its gates and latency probe."""
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

    # -- the batch size ------------------------------------------------------------------------
    @property
    def batch_rows(self) -> int:
        rows = max(self.min_batch_rows, min(self._size, self.max_batch_rows))
        if self.level:
            rows = max(self.min_batch_rows, rows >> self.level)
        return max(1, rows)

    @batch_rows.setter
    def batch_rows(self, rows: int) -> None:
        self._size = rows

    def _adapt(self, seconds: float, rows: int) -> None:
        """Follow the measured cost per row towards ``target_batch_time``; at most x2 or /2 per step."""
        if not self.target_batch_time or rows <= 0 or seconds <= 0:
            return
        per_row = seconds / rows
        # Rising cost is believed at once (a slow batch holds live traffic back: shrink now);
        # falling cost is smoothed and growth is at most x2 a batch (one fast batch proves little).
        if self._cost is None or per_row > self._cost:
            self._cost = per_row
        else:
            self._cost = 0.5 * self._cost + 0.5 * per_row
        ideal = self.target_batch_time / self._cost
        current = max(self.min_batch_rows, min(self._size, self.max_batch_rows))
        new = int(min(current * 2, ideal))
        new = max(self.min_batch_rows, min(new, self.max_batch_rows))
        if new != current:
            self.log.debug("%s: batch of %d rows took %s (target %s): next batches %d rows", self.label, rows,
                           _ms(seconds), _ms(self.target_batch_time), new)
        self._size = new

    # -- the pause -----------------------------------------------------------------------------
    def pause_after(self, batch_seconds: float) -> float:
        base = self.pause + self.pause_ratio * batch_seconds
        if not self.level:
            return base
        factor = 2 ** self.level
        return base * factor + 0.05 * (factor - 1)

    # -- the runner's hooks --------------------------------------------------------------------
    def begin(self, label: str, logger: logging.Logger | None = None,
              note: Callable[[str | None, float], None] | None = None) -> None:
        self.label = label
        if logger is not None:
            self.log = logger
        self.note = note
        if self.latency is not None:
            self.latency.start()

    def end(self) -> None:
        if self.latency is not None:
            self.latency.stop()

    def before_batch(self, should_stop: Callable[[], str | None] = lambda: None) -> str | None:
        """Gates and latency between batches; returns a stop reason if one came up while waiting."""
        if self.latency is not None:
            self._react_to_latency()
        if self.gates is not None and self.gates.active() and self.gates.due():
            reason = self.gates.hold(self.wait, should_stop, self.log, self.label)
            if reason is None:
                self.state = None  # the next batch's commit clears it in the checkpoint row too
            return reason
        return None

    def after_batch(self, batch_seconds: float, rows: int = 0) -> None:
        self._adapt(batch_seconds, rows)
        rest = self.pause_after(batch_seconds)
        if rest > 0:
            self._sleep(rest)
            self.slept += rest

    def backoff(self, attempt: int) -> float:
        """Wait before retrying a batch that hit a lock or statement timeout: 0.5 s, 1 s, 2 s, ... 30 s."""
        delay = min(30.0, 0.5 * 2 ** attempt)
        self._sleep(delay)
        self.slept += delay
        return delay

    def wait(self, seconds: float, why: str) -> None:
        """A throttle decision that holds the chunk: logged, recorded, then slept."""
        self.log.info("%s: %s (checking again in %s)", self.label, why, _ms(seconds))
        self.state = why
        self.flush()
        self._sleep(seconds)
        self.slept += seconds

    # -- accounting ----------------------------------------------------------------------------
    @property
    def unrecorded(self) -> float:
        return self.slept - self._recorded

    def recorded(self, seconds: float) -> None:
        self._recorded += seconds

    def flush(self, state: str | None | object = ...) -> None:
        """Hand throttled time and the current state to the checkpoint row (if the runner gave a way).

        ``state`` replaces the current state when given (None clears it).
        """
        if state is not ...:
            self.state = state
        if self.note is None:
            return
        seconds = self.unrecorded
        try:
            self.note(self.state, seconds)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never stop a backfill
            self.log.warning("%s: could not record throttle state: %s", self.label, describe(exc))
            return
        self.recorded(seconds)

    # -- the live-latency gate -----------------------------------------------------------------
    def _react_to_latency(self) -> None:
        samples = self.latency.take()
        if not samples:
            return
        worst = max(samples)
        limit = self.latency.limit
        if worst > limit:
            self._good = 0
            if self.level < MAX_LEVEL:
                self.level += 1
                self.log.info("%s: latency probe %s > %s: backing off to batches of %d rows, pause %s", self.label,
                              _ms(worst), _ms(limit), self.batch_rows, _ms(self.pause_after(self._last_seconds())))
            else:
                self.log.info("%s: latency probe %s > %s: already at the slowest pace (%d rows, pause %s)", self.label,
                              _ms(worst), _ms(limit), self.batch_rows, _ms(self.pause_after(self._last_seconds())))
            return
        if self.level:
            self._good += len(samples)
            if self._good >= RECOVER_AFTER:
                self._good = 0
                self.level -= 1
                self.log.info("%s: latency probe %s <= %s for %d probes: speeding up to batches of %d rows, pause %s",
                              self.label, _ms(worst), _ms(limit), RECOVER_AFTER, self.batch_rows,
                              _ms(self.pause_after(self._last_seconds())))

    def _last_seconds(self) -> float:
        return (self._cost or 0.0) * self.batch_rows

    # -- live knobs ----------------------------------------------------------------------------
    def apply(self, knobs: dict) -> list[str]:
        """Apply knob values (already validated); return what changed, for the log."""
        changes = []
        for name, value in knobs.items():
            if name == "batch_rows":
                old = self._size
                self._size = value
                self.min_batch_rows = min(self.min_batch_rows, value)
                self.max_batch_rows = max(self.max_batch_rows, value)
            elif name in ("pause", "pause_ratio", "target_batch_time", "min_batch_rows", "max_batch_rows"):
                old = getattr(self, name)
                setattr(self, name, value)
                if name == "target_batch_time":
                    self._cost = None
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
