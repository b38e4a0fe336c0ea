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

from rowfill.spec.bounds import GATE_COUNT, GATE_SECONDS, LATENCY_EVERY, LATENCY_LIMIT, PROBE_NUMBER
from rowfill.spec.durations import format_duration, parse_duration
from rowfill.sql.sqltext import SqlTextError, probe

# gate -> (unit, what it measures). "seconds" thresholds are durations (10s, 5min), "count" whole numbers.
KINDS: dict[str, tuple[str, str]] = {
    "replica_lag": ("seconds", "replica lag"),
    "active_backends": ("count", "active backends"),
    "long_transaction": ("seconds", "oldest transaction holding a lock on the table"),
    "lock_waiters": ("count", "sessions waiting for locks on the table"),
    "probe": ("number", "probe"),
}


@dataclass(frozen=True)
class GateSpec:
    name: str
    wait: float | None = None
    critical: float | None = None
    sql: str | None = None  # probe only
    label: str | None = None  # probe only: how logs name it

    @property
    def unit(self) -> str:
        return KINDS[self.name][0]

    @property
    def what(self) -> str:
        return self.label or KINDS[self.name][1]

    def show(self, value: float) -> str:
        if self.unit == "seconds":
            return f"{value:.1f} s" if value < 60 else format_duration(value)
        if self.unit == "count":
            return f"{value:.0f}"
        return f"{value:g}"


@dataclass(frozen=True)
class LatencySpec:
    sql: str
    limit: float
    every: float = 0.2


def threshold(unit: str, value, where: str) -> float:
    """A gate threshold in its unit (seconds, a count of sessions, a probe's number), within its upper
    bound (``rowfill.spec.bounds``); ValueError starting with ``where`` (``replica_lag.wait``) otherwise."""
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


def parse_gates(value) -> dict[str, GateSpec]:
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


def parse_latency(value) -> LatencySpec:
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
