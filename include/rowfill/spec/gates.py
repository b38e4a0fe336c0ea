"""The ``gates`` and ``latency_probe`` fields of a spec: which numbers hold a chunk back, and at what.

Values and their validation only; measuring them on the database is ``rowfill.engine.probes``.
Each gate measures one number on the target database (replica lag, active backends, the age of
the oldest transaction holding a lock on the target table, sessions waiting for locks on it, or
the user's own SQL probe): above ``wait`` a chunk waits, above ``critical`` it stops. Thresholds
are in the gate's unit: seconds (a float) for durations, whole numbers for counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from rowfill.spec.bounds import GATE_COUNT, GATE_SECONDS, LATENCY_EVERY, LATENCY_LIMIT, PROBE_NUMBER
from rowfill.spec.durations import format_duration, parse_duration
from rowfill.sql.sqltext import SqlTextError, probe

Unit = Literal["seconds", "count", "number"]  # a gate threshold's unit, see KINDS

# gate -> (unit, what it measures). "seconds" thresholds are durations (10s, 5min), "count" whole numbers.
KINDS: dict[str, tuple[Unit, str]] = {
    "replica_lag": ("seconds", "replica lag"),
    "active_backends": ("count", "active backends"),
    "long_transaction": ("seconds", "oldest transaction holding a lock on the table"),
    "lock_waiters": ("count", "sessions waiting for locks on the table"),
    "probe": ("number", "probe"),
}


@dataclass(frozen=True)
class GateSpec:
    """One gate's thresholds, in its unit (``unit``): above ``wait`` a chunk waits, above ``critical`` it stops.

    None means that threshold is not set (at least one of the two is). ``sql`` and ``label`` belong to
    the ``probe`` gate only: the user's SELECT returning one number, and how logs name it.
    """

    name: str  # a key of KINDS
    wait: float | None = None
    critical: float | None = None
    sql: str | None = None  # probe only
    label: str | None = None  # probe only: how logs name it

    @property
    def unit(self) -> Unit:
        """``seconds`` (a float), ``count`` (whole sessions) or ``number`` (a probe's own unit)."""
        return KINDS[self.name][0]

    @property
    def what(self) -> str:
        """How logs and the status name the measured number: the probe's label, or the gate's description."""
        return self.label or KINDS[self.name][1]

    def show(self, value: float) -> str:
        """``value`` in this gate's unit as logs show it: ``12.5 s``/``4 min 10 s``, ``37``, ``0.25``."""
        if self.unit == "seconds":
            return f"{value:.1f} s" if value < 60 else format_duration(value)
        if self.unit == "count":
            return f"{value:.0f}"
        return f"{value:g}"


@dataclass(frozen=True)
class LatencySpec:
    """The ``latency_probe`` field: a representative live query, timed while the backfill runs.

    When it takes longer than ``limit`` seconds, batches shrink (``rowfill.engine.throttle``);
    ``every`` is the seconds between two probes (at least 0.01, at most 60: ``rowfill.spec.bounds``).
    """

    sql: str
    limit: float  # seconds
    every: float = 0.2  # seconds


def threshold(unit: str, value: Any, where: str) -> float:
    """A gate threshold in its unit (seconds, a count of sessions, a probe's number), within its upper
    bound (``rowfill.spec.bounds``).

    :param unit: ``seconds``, ``count`` or ``number`` (``KINDS``).
    :param value: as written: a duration (``10s``, 5) for seconds, a number otherwise.
    :param where: the field path for the message, e.g. ``replica_lag.wait``.
    :raises ValueError: starting with ``where``, when the value is not of the unit, negative, or above its bound.
    """
    if unit == "seconds":
        try:
            return parse_duration(value, GATE_SECONDS)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: expected a number of at least 0, got {value!r}")
    if unit == "count" and int(value) != value:
        raise ValueError(f"{where}: expected a whole number, got {value!r}")
    try:
        return float((GATE_COUNT if unit == "count" else PROBE_NUMBER).check(value))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_gates(value: Any) -> dict[str, GateSpec]:
    """The ``gates`` field: gate name -> thresholds.

    :param value: a mapping of gate -> ``{wait, critical}`` (or a bare wait threshold, ``replica_lag: 10s``);
        ``probe`` also takes ``sql`` (one SELECT returning a number, read by ``rowfill.sql.sqltext``) and ``label``.
    :return: one ``GateSpec`` per gate given.
    :raises ValueError: with what to write instead, for an unknown gate or key, a bad threshold, or
        ``critical`` below ``wait``.
    """
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a mapping of gate: {wait: ..., critical: ...}, e.g. replica_lag: {wait: 10s, critical: 5min}; "
                         "gates are " + ", ".join(KINDS))
    out = {}
    for name, body in value.items():
        if name not in KINDS:
            raise ValueError(f"unknown gate {name!r}; gates are " + ", ".join(KINDS))
        unit = KINDS[name][0]
        if not isinstance(body, dict):
            if name == "probe":
                raise ValueError("probe: expected {sql: \"SELECT ...\", wait: N, critical: M}")
            body = {"wait": body}  # shorthand: replica_lag: 10s
        allowed = {"wait", "critical"} | ({"sql", "label"} if name == "probe" else set())
        unknown = set(body) - allowed
        if unknown:
            raise ValueError(f"{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected " + ", ".join(sorted(allowed)))
        if "wait" not in body and "critical" not in body:
            raise ValueError(f"{name}: give a wait threshold, a critical one, or both")
        wait = threshold(unit, body["wait"], f"{name}.wait") if "wait" in body else None
        critical = threshold(unit, body["critical"], f"{name}.critical") if "critical" in body else None
        if wait is not None and critical is not None and critical < wait:
            raise ValueError(f"{name}: critical ({body['critical']}) is below wait ({body['wait']}); the chunk would fail before it ever waits")
        sql = label = None
        if name == "probe":
            sql = body.get("sql")
            if not isinstance(sql, str) or not sql.strip():
                raise ValueError("probe.sql: expected one SELECT returning a single number, e.g. SELECT count(*) FROM job_queue")
            try:
                probe(sql, "gates")
            except SqlTextError as exc:
                raise ValueError(f"probe.sql: {exc}") from None
            sql = sql.strip().rstrip(";")
            label = body.get("label")
            if label is not None and not isinstance(label, str):
                raise ValueError("probe.label: expected text")
        out[name] = GateSpec(name, wait, critical, sql, label)
    return out


def parse_latency(value: Any) -> LatencySpec:
    """The ``latency_probe`` field.

    :param value: ``{sql: "SELECT ...", limit: 20ms, every: 200ms}``; ``every`` is optional (0.2 s).
    :return: the probe, durations in seconds.
    :raises ValueError: with what to write instead, for a missing or unknown key, SQL that is not one
        query, a limit of 0 or above 1 min, or probes closer than 10 ms.
    """
    if not isinstance(value, dict) or "sql" not in value or "limit" not in value:
        raise ValueError("expected {sql: \"SELECT ... WHERE id = 4242\", limit: 20ms} (a representative live query and its latency limit)")
    unknown = set(value) - {"sql", "limit", "every"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected sql, limit, every")
    sql = value["sql"]
    if not isinstance(sql, str) or not sql.strip():
        raise ValueError("sql: expected a single query, such as a point select your application runs")
    try:
        probe(sql, "latency_probe")
    except SqlTextError as exc:
        raise ValueError(f"sql: {exc}") from None
    try:
        limit = parse_duration(value["limit"], LATENCY_LIMIT)
    except ValueError as exc:
        raise ValueError(f"limit: {exc}") from None
    if limit <= 0:
        raise ValueError("limit: expected a duration above 0, e.g. 20ms")
    try:
        every = parse_duration(value.get("every", 0.2), LATENCY_EVERY)
    except ValueError as exc:
        raise ValueError(f"every: {exc}") from None
    if every < 0.01:
        raise ValueError("every: at least 10ms between probes")
    return LatencySpec(sql.strip().rstrip(";"), limit, every)
