"""Live control of a backfill: pause, resume, cancel and knobs, changed while it runs.

The state lives in the target database next to the checkpoints (``rowfill.controls``, one row
per backfill), because that is the one place every worker, the triggerer and the ``rowfill``
command can all reach, and it outlives worker restarts and DAG runs. Running chunks read their
row between batches (one primary-key lookup) and log every change when it takes effect.

- ``paused``: running chunks stop at the next batch boundary and defer (no worker slot) until
  ``rowfill resume``; chunks that start while paused defer at once.
- ``cancelled``: chunks stop at the next batch boundary, keep their cursors and end *skipped*;
  verify is skipped, the summary says "cancelled", the run ends without failing. It stays
  cancelled (later runs skip too) until ``rowfill resume``.
- knobs: ``batch_rows``, ``pause``, ``pause_ratio``, ``target_batch_time``, ``min_batch_rows``,
  ``max_batch_rows``, ``latency_limit`` and gate thresholds (``replica_lag.wait``, ...). They
  override the spec and the run's trigger parameters until cleared with ``rowfill set NAME --reset``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.engine import Engine

from rowfill.engine.disconnects import describe, is_connection_error
from rowfill.errors import RowfillError
from rowfill.spec.bounds import FIELDS as BOUNDS
from rowfill.spec.bounds import LATENCY_LIMIT
from rowfill.spec.durations import parse_duration
from rowfill.spec.gates import KINDS, threshold
from rowfill.store import controls, schema
from rowfill.store.controls import Control  # re-exported: the control row callers read
from rowfill.store.states import ControlState

log = logging.getLogger("rowfill.control")

STATES = tuple(ControlState)  # rowfill.store.states


class BadKnob(RowfillError):
    pass


# -- knobs -----------------------------------------------------------------------------------

_SIMPLE_KNOBS = {
    "batch_rows": "rows", "min_batch_rows": "rows", "max_batch_rows": "rows",
    "pause": "duration", "pause_ratio": "ratio", "target_batch_time": "duration_or_off", "latency_limit": "positive_duration",
}


def knob_names() -> list[str]:
    """Every live knob's name: the simple ones, then ``<gate>.wait`` / ``<gate>.critical`` for each gate kind."""
    return [*_SIMPLE_KNOBS, *(f"{g}.{w}" for g in KINDS for w in ("wait", "critical"))]


def parse_knob(name: str, value) -> float | int | None:
    """One knob from the command line (``pause=50ms``) or JSON, validated like the spec field.

    :param name: the knob (``batch_rows``, ``pause``, ``replica_lag.wait``...).
    :param value: text such as ``50ms`` or a JSON number/None; ``off`` or None clears a threshold.
    :returns: rows as int, durations as seconds (float), ratios as float, or None for ``off``.
    :raises BadKnob: for an unknown knob, or a value out of the spec field's bounds, with examples of valid ones.
    """
    raw = value.strip() if isinstance(value, str) else value
    try:
        kind = _SIMPLE_KNOBS.get(name)
        bound = BOUNDS.get(name)  # the spec field's upper bound (rowfill.spec.bounds); latency_limit is latency_probe.limit
        if kind == "rows":
            rows = int(raw)
            if rows < 1 or (isinstance(raw, float) and rows != raw):
                raise ValueError
            return BOUNDS[name].check(rows)  # every rows knob is a spec field with a bound
        if kind == "duration":
            return parse_duration(raw, bound)
        if kind == "ratio":
            ratio = float(raw)
            if not 0 <= ratio <= 100:
                raise ValueError
            return ratio
        if kind == "duration_or_off":
            return None if raw in ("off", None) else parse_duration(raw, bound)
        if kind == "positive_duration":
            seconds = parse_duration(raw, LATENCY_LIMIT)
            if seconds <= 0:
                raise ValueError
            return seconds
        gate, _, which = name.partition(".")
        if gate in KINDS and which in ("wait", "critical"):
            if raw in ("off", None):
                return None
            unit = KINDS[gate][0]
            if unit != "seconds" and isinstance(raw, str):
                raw = float(raw)
            return threshold(unit, raw, name)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf) of a JSON Infinity
        detail = f": {exc}" if str(exc) else ""
        raise BadKnob(f"knob {name}={value!r} is not valid{detail}; e.g. batch_rows=2000, pause=50ms, pause_ratio=0.5, "
                      "target_batch_time=300ms, latency_limit=20ms, replica_lag.wait=5s, active_backends.critical=100") from None
    raise BadKnob(f"unknown knob {name!r}; live knobs are: {', '.join(knob_names())}")


def parse_assignments(items: list[str]) -> dict:
    """``name=value`` words of ``rowfill set`` as validated knobs (name -> value). :raises BadKnob: a word is not one."""
    knobs = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise BadKnob(f"{item!r}: write knobs as name=value, e.g. batch_rows=2000 pause=50ms")
        knobs[name.strip()] = parse_knob(name.strip(), value)
    return knobs


def spec_knobs(spec) -> dict:
    """The knob values a spec starts from: what clearing a live knob goes back to."""
    base = {"batch_rows": spec.batch_rows, "pause": spec.pause, "pause_ratio": getattr(spec, "pause_ratio", 0.0),
            "target_batch_time": getattr(spec, "target_batch_time", None)}
    if getattr(spec, "min_batch_rows", None):
        base["min_batch_rows"] = spec.min_batch_rows
    if getattr(spec, "max_batch_rows", None):
        base["max_batch_rows"] = spec.max_batch_rows
    if getattr(spec, "latency_probe", None):
        base["latency_limit"] = spec.latency_probe.limit
    gates = getattr(spec, "gates", None) or {}
    for name in KINDS:
        gate = gates.get(name)
        base[f"{name}.wait"] = gate.wait if gate else None
        base[f"{name}.critical"] = gate.critical if gate else None
    return base


# -- the table -------------------------------------------------------------------------------


class ControlStore:
    """The controls of backfills on one database (``rowfill.store.controls``), read and changed."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._exists = False

    def _table_exists(self, conn) -> bool:
        if not self._exists:
            self._exists = controls.table_exists(conn)
        return self._exists

    def get(self, name: str) -> Control:
        """The backfill's control row; a backfill nobody touched is running with no knobs."""
        with self.engine.connect() as conn:
            if not self._table_exists(conn):
                return Control(name)
            return controls.get(conn, name)

    def _write(self, name: str, *, state: str | None = None, knobs: dict | None = None, replace_knobs: bool = False,
               note: str | None = None) -> Control:
        with self.engine.begin() as conn:
            if not self._table_exists(conn):  # a clear error naming `rowfill db migrate`, not a missing relation
                schema.check(conn)
            return controls.write(conn, name, state=state, knobs=knobs or {}, replace_knobs=replace_knobs, note=note)

    def pause(self, name: str, reason: str | None = None) -> Control:
        """Pause backfill ``name``. :returns: the control row written.
        :raises SchemaNotReady: rowfill's schema was never migrated on this database."""
        return self._write(name, state="paused", note=_note("paused with `rowfill pause`", reason))

    def resume(self, name: str, reason: str | None = None) -> Control:
        """Resume backfill ``name`` after a pause or cancel. :returns: the control row written."""
        return self._write(name, state="running", note=_note("resumed with `rowfill resume`", reason))

    def cancel(self, name: str, reason: str | None = None) -> Control:
        """Cancel backfill ``name``: chunks stop and end skipped until resumed. :returns: the control row written."""
        return self._write(name, state="cancelled", note=_note("cancelled with `rowfill cancel`", reason))

    def set_knobs(self, name: str, knobs: dict, note: str | None = None) -> Control:
        """Merge knobs. A value of None means "off" (a gate threshold or target_batch_time switched off)."""
        stored = {k: (_OFF if v is None else v) for k, v in knobs.items()}
        return self._write(name, knobs=stored)

    def unset_knobs(self, name: str, names: list[str]) -> Control:
        """Drop knobs: those values go back to the spec's (or the run's trigger parameters)."""
        current = dict(self.get(name).knobs or {})
        for knob in names:
            current.pop(knob, None)
        return self._write(name, knobs=current, replace_knobs=True)

    def reset_knobs(self, name: str) -> Control:
        """Drop every live knob of ``name``: back to the spec's values. :returns: the control row written."""
        return self._write(name, knobs={}, replace_knobs=True)


def _note(what: str, reason: str | None) -> str:
    return f"{what}: {reason}" if reason else what


# A knob switched "off" must be stored (it overrides the spec), but JSON null is what
# jsonb_strip_nulls drops: store a marker instead.
_OFF = "off"


def knob_value(name: str, stored):
    """A knob as stored in ``controls.knobs`` back to its value (the "off" marker is None)."""
    return None if stored == _OFF else stored


def stop_reason(control: Control) -> str | None:
    """Why chunks stop, in words (``paused with `rowfill pause`: ...``); None while running."""
    if control.state == "running":
        return None
    note = control.note if control.note and control.note.startswith(control.state) else control.state
    return note


def stopping_reason(control: Control) -> str:
    """``stop_reason`` of a control row that stops chunks (paused or cancelled).

    :raises ValueError: the row says running (nothing to stop for; a caller that did not check the state).
    """
    reason = stop_reason(control)
    if reason is None:
        raise ValueError("the backfill's control row says running: there is no reason to stop")
    return reason


class ControlReads(Protocol):
    """What ``LiveControl`` reads its control row through: a ``ControlStore``, or a reader that takes the
    row inside each batch's transaction (``rowfill.engine.chunk_task.BatchControlReads``)."""

    def get(self, name: str) -> Control:
        """The control row of backfill ``name`` (a running row when none is stored)."""
        ...


class LiveControl:
    """What a running chunk reads between batches: its control row, as an input to the throttle.

    It measures and reports; it changes nothing itself: ``throttle.Throttle.next`` applies the
    knobs it reports and stops on its state (gh-ost: collectors measure, one function decides).
    """

    def __init__(self, store: ControlReads, spec, *, overrides: dict | None = None,
                 logger: logging.Logger | None = None, label: str = "chunk", name: str | None = None):
        """:param store: the controls table. :param spec: the backfill's spec (its knobs are the base).
        :param overrides: this run's trigger parameters (knob name -> value).
        :param logger: / :param label: where and as what changes are logged.
        :param name: the control row to read (default: the spec's name).
        """
        self.store = store
        self.spec = spec
        self.name = name or spec.name
        self.overrides = dict(overrides or {})  # this run's trigger parameters
        self.log = logger or log
        self.label = label
        self.base = spec_knobs(spec)
        self.applied = dict(self.base)
        self.version: int | None = None
        self.control = Control(self.name)
        self._first: dict = {}

    def start(self, control: Control) -> None:
        """Take the control row read when the chunk starts (``starting`` then says what to apply)."""
        self._first = self._take(control, first=True)

    def starting(self) -> list[tuple[str, dict]]:
        """Knobs to apply before the first batch, each with how to log it: the run's trigger
        parameters, then the live knobs in force. Never raises."""
        return [("this run's trigger parameters", dict(self.overrides)), ("live knobs in force", self._first)]

    def poll(self) -> tuple[Control, dict]:
        """Read the control row again.

        :returns: (the control row, knob values changed since the last reading: name -> value).
            A read that fails for another reason than a lost connection keeps the last row.
        :raises: a connection error (``rowfill.engine.disconnects``): the runner reconnects and asks again.
        """
        try:
            control = self.store.get(self.name)
        except Exception as exc:  # noqa: BLE001 - a control hiccup must not fail a batch; keep the last state
            if is_connection_error(exc):  # a restart: the runner reconnects and reads again (rowfill.engine.reconnect)
                raise
            self.log.warning("%s: could not read live controls (%s); keeping the last ones", self.label, describe(exc))
            return self.control, {}
        if control.version == self.version:
            return control, {}
        return control, self._take(control)

    def reason(self) -> str:
        """Why the chunk stops, in the words of the last control row read (``stop_reason``).

        :raises ValueError: asked while that row says running (the throttle asks only once it does not).
        """
        return stopping_reason(self.control)

    def _take(self, control: Control, first: bool = False) -> dict:
        self.control, self.version = control, control.version
        if first:
            self.applied.update(self.overrides)
        wanted = {**self.base, **self.overrides, **{k: knob_value(k, v) for k, v in (control.knobs or {}).items()}}
        diff = {k: v for k, v in wanted.items() if self.applied.get(k) != v}
        self.applied.update(diff)
        if not first and control.state != "running":
            self.log.info("%s: %s", self.label, stop_reason(control))
        return diff


class WebControl:
    """Pause/resume for the progress page's buttons (``rowfill.airflow.web`` looks up ``web_control``)."""

    def state(self, engine: Engine, spec) -> str:
        """The backfill's control state (``running``, ``paused`` or ``cancelled``) for the progress page.

        :param engine: the target database. :param spec: the backfill spec (its ``name`` is the control row).
        """
        return ControlStore(engine).get(spec.name).state

    def states(self, engine: Engine, specs) -> dict[str, str]:
        """All backfills of one database in one query, so the page stays one query per backfill."""
        names = [s.name for s in specs]
        with engine.connect() as conn:
            found = controls.states(conn, names)
        return {name: found.get(name, "running") for name in names}

    def pause(self, engine: Engine, spec, user: str) -> Control:
        """Pause the backfill from the progress page's button; the reason names the Airflow user.

        :param engine: the target database. :param spec: the backfill. :param user: the Airflow user who pressed it.
        :returns: the control row after the change.
        """
        return ControlStore(engine).pause(spec.name, reason=f"from the Airflow UI by {user}")

    def resume(self, engine: Engine, spec, user: str) -> Control:
        """Resume a paused or cancelled backfill from the progress page; the reason names the Airflow user.

        :param engine: the target database. :param spec: the backfill. :param user: the Airflow user who pressed it.
        :returns: the control row after the change.
        """
        return ControlStore(engine).resume(spec.name, reason=f"from the Airflow UI by {user}")


web_control = WebControl()
