"""The one state the backfills console shows for a backfill, and why a chunk waits, in the
console's words.

``rowfill status`` says what the *chunks* do (``rowfill.store.states.BackfillState``: planned,
waiting, running, failed, done ...); a person looking at a list of backfills also needs what an
operator asked (the control row: paused, cancelled), why nothing runs (a closed window, a gate, a
pause), and whether the backfill was rolled back. This module folds those into one
``ConsoleState`` with a tone: states that are part of a normal life (not started, planned, waiting,
done) are never shown like errors; only ``failed`` and ``stale`` are. Pure functions over plain
values, so the overview, the backfill's page and their tests agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from rowfill.spec.gates import KINDS
from rowfill.store import waits
from rowfill.store.states import BackfillState, ControlState
from rowfill.store.waits import WaitReason

__all__ = ["TONE", "ConsoleState", "Tone", "WaitReason", "console_state", "wait_reason"]  # WaitReason: the store's


class ConsoleState(StrEnum):
    """What the console shows for a whole backfill (its value is the text on the page)."""

    NOT_STARTED = "not started"  # never planned on its database
    PLANNED = "planned"  # planned, no batch yet
    RUNNING = "running"  # a chunk runs now
    WAITING_WINDOW = "waiting for a window"  # chunks deferred until the spec's window opens
    WAITING_GATE = "waiting for a gate"  # a health gate (replica lag, ...) or the latency probe holds it
    WAITING_PAUSE = "waiting for a pause"  # resting between batches / between runs, nothing wrong
    PAUSED = "paused"  # an operator paused it (`rowfill pause`, the console)
    CANCELLED = "cancelled"  # an operator cancelled it; later runs skip until resumed
    STALE = "stale"  # a chunk's runner is gone; its next attempt takes it over
    FAILED = "failed"  # a chunk failed; retry it
    DONE = "done"  # every chunk done
    ROLLING_BACK = "rolling back"  # its rollback is in progress
    ROLLED_BACK = "rolled back"  # its rollback finished: the previous values are back


class Tone(StrEnum):
    """How a state looks: a CSS class of the page. Only ``bad`` is red."""

    QUIET = "quiet"  # nothing happens, nothing is wrong (not started, planned)
    ACTIVE = "active"  # work goes on
    WAITING = "waiting"  # held on purpose (window, gate, pause, operator)
    GOOD = "good"  # finished
    BAD = "bad"  # needs a person


TONE = {
    ConsoleState.NOT_STARTED: Tone.QUIET, ConsoleState.PLANNED: Tone.QUIET, ConsoleState.RUNNING: Tone.ACTIVE,
    ConsoleState.WAITING_WINDOW: Tone.WAITING, ConsoleState.WAITING_GATE: Tone.WAITING,
    ConsoleState.WAITING_PAUSE: Tone.WAITING, ConsoleState.PAUSED: Tone.WAITING, ConsoleState.CANCELLED: Tone.WAITING,
    ConsoleState.STALE: Tone.BAD, ConsoleState.FAILED: Tone.BAD, ConsoleState.DONE: Tone.GOOD,
    ConsoleState.ROLLING_BACK: Tone.ACTIVE, ConsoleState.ROLLED_BACK: Tone.GOOD,
}


def wait_reason(throttle_state: str | None) -> WaitReason | None:
    """Classify a chunk's recorded throttle state (free text written by the engine) by its cause
    (``rowfill.store.waits.wait_reason``, the classes the wait samples are recorded in).

    :param throttle_state: ``rowfill.chunks.throttle_state``, e.g. ``"paused with `rowfill pause`: ..."``,
        ``"outside the window (...); opens at ..."``, ``"waiting: replica_lag 12 s > 5 s"``; None: not held.
    :returns: the reason, or None when the chunk is not held back.
    """
    return waits.wait_reason(throttle_state, KINDS)


def console_state(status: str, control: str = ControlState.RUNNING, waits: Sequence[str | None] = (),
                  *, rolling_back: bool = False, rolled_back: bool = False) -> ConsoleState:
    """The console's state of one backfill.

    :param status: ``BackfillState`` of its chunks (``rowfill.engine.status``).
    :param control: its control row's state (``ControlState``; running when no row exists).
    :param waits: the ``throttle_state`` of its chunks that are not running (why each waits), any order.
    :param rolling_back: its rollback is in progress (``rowfill.engine.rollback.rollback_in_progress``).
    :param rolled_back: its plan is gone and its latest rollback run succeeded (Airflow's run history).
    :returns: a ``ConsoleState``. Order: a rollback, then what fails or finished, then what an
        operator asked, then what the chunks do, then why they wait.
    """
    status = BackfillState(status)
    if rolling_back:
        return ConsoleState.ROLLING_BACK
    if status == BackfillState.NOT_STARTED:
        return ConsoleState.ROLLED_BACK if rolled_back else ConsoleState.NOT_STARTED
    if status == BackfillState.DONE:
        return ConsoleState.DONE
    if control == ControlState.PAUSED:
        return ConsoleState.PAUSED
    if control == ControlState.CANCELLED:
        return ConsoleState.CANCELLED
    if status == BackfillState.FAILED:
        return ConsoleState.FAILED
    if status == BackfillState.STALE:
        return ConsoleState.STALE
    reasons = {wait_reason(w) for w in waits} - {None}
    if status == BackfillState.RUNNING:
        # every running chunk held by a gate or the probe reads as waiting for it
        return ConsoleState.WAITING_GATE if reasons & {WaitReason.GATE, WaitReason.LATENCY} and not _any_moving(waits) \
            else ConsoleState.RUNNING
    if WaitReason.WINDOW in reasons:
        return ConsoleState.WAITING_WINDOW
    if reasons & {WaitReason.GATE, WaitReason.LATENCY}:
        return ConsoleState.WAITING_GATE
    if status == BackfillState.PLANNED:
        return ConsoleState.PLANNED
    return ConsoleState.WAITING_PAUSE  # some work done, nothing runs, nothing wrong: between runs


def _any_moving(waits) -> bool:
    """Whether some chunk in ``waits`` is not held (None): then the backfill still moves."""
    return any(w is None for w in waits)
