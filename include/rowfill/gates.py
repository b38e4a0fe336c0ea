"""Database health gates: checked between batches, they hold a chunk back while the database is busy.

Each gate measures one number on the target database (replica lag, active backends, the age of
the oldest transaction holding a lock on the target table, sessions waiting for locks on it, or
the user's own SQL probe). Above its ``wait`` threshold the chunk waits and checks again with
backoff, saying why; above its ``critical`` threshold the chunk stops at the batch boundary and
fails, naming the gate. The numbers come from the primary's own statistics views, so a gate
needs no agent on the replicas.

The live-latency probe is different in kind: it is not a load number but what the application
feels. A side connection runs the user's representative query a few times a second, during the
batches as well as between them, and the throttle backs off when the worst latency since the
last batch exceeds the limit (see ``throttle``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Engine

from rowfill.bounds import GATE_COUNT, GATE_SECONDS, LATENCY_EVERY, LATENCY_LIMIT, PROBE_NUMBER
from rowfill.durations import format_duration, parse_duration
from rowfill.errors import RowfillError
from rowfill.sqltext import SqlTextError, probe

log = logging.getLogger("rowfill.gates")

# gate -> (unit, what it measures). "seconds" thresholds are durations (10s, 5min), "count" whole numbers.
KINDS: dict[str, tuple[str, str]] = {
    "replica_lag": ("seconds", "replica lag"),
    "active_backends": ("count", "active backends"),
    "long_transaction": ("seconds", "oldest transaction holding a lock on the table"),
    "lock_waiters": ("count", "sessions waiting for locks on the table"),
    "probe": ("number", "probe"),
}

_SQL = {
    # The worst of the three lags: replay stops while write/flush continue when replay is paused or slow.
    "replica_lag": "SELECT coalesce(max(extract(epoch FROM greatest(write_lag, flush_lag, replay_lag))), 0)::float8, "
                   "NULL FROM pg_stat_replication",
    "active_backends": "SELECT count(*)::float8, NULL FROM pg_stat_activity WHERE state = 'active' "
                       "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    "long_transaction": "SELECT extract(epoch FROM clock_timestamp() - a.xact_start)::float8, "
                        "'pid ' || a.pid || ', ' || coalesce(a.state, '?') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE l.relation = CAST(:table AS regclass) AND l.granted AND a.pid <> pg_backend_pid() "
                        "AND a.xact_start IS NOT NULL ORDER BY a.xact_start LIMIT 1",
    "lock_waiters": "SELECT count(DISTINCT a.pid)::float8, NULL FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                    "WHERE l.relation = CAST(:table AS regclass) AND a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()",
}


@lru_cache(maxsize=64)
def probe_sql(sql: str) -> str:
    """A probe's SQL as driver SQL (``rowfill.sqltext``): its colons and ``%`` reach PostgreSQL as written."""
    return probe(sql).driver()


class GateCritical(RowfillError):
    """A gate passed its critical threshold: stop writing and let a person look."""


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


@dataclass(frozen=True)
class Reading:
    gate: GateSpec
    value: float
    detail: str | None = None

    def _text(self, threshold: float, word: str) -> str:
        what = self.gate.what + (f" ({self.detail})" if self.detail else "")
        return f"{word}{what} {self.gate.show(self.value)} > {self.gate.show(threshold)}"

    @property
    def over_critical(self) -> bool:
        return self.gate.critical is not None and self.value > self.gate.critical

    @property
    def over_wait(self) -> bool:
        return self.gate.wait is not None and self.value > self.gate.wait

    def why_wait(self) -> str:
        return self._text(self.gate.wait, "")

    def why_critical(self) -> str:
        return self._text(self.gate.critical, "")


# -- spec parsing ----------------------------------------------------------------------------


def threshold(unit: str, value, where: str) -> float:
    """A gate threshold in its unit (seconds, a count of sessions, a probe's number), within its upper
    bound (``rowfill.bounds``); ValueError starting with ``where`` (``replica_lag.wait``) otherwise."""
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


# -- checking --------------------------------------------------------------------------------


class GateKeeper:
    """Measures every gate in one round trip per gate and holds the chunk while any is above ``wait``.

    Thresholds are mutable (``set_threshold``) so live knobs take effect at the next check.
    """

    def __init__(self, engine: Engine, gates: dict[str, GateSpec], table: str, *, interval: float = 1.0,
                 max_backoff: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.gates = dict(gates)
        self.table = table
        self.interval = interval
        self.max_backoff = max_backoff
        self.clock = clock
        self._last: float | None = None
        self._checked_rights = False

    def set_threshold(self, name: str, which: str, value: float | None) -> None:
        gate = self.gates.get(name) or GateSpec(name)
        self.gates[name] = replace(gate, **{which: value})
        self._last = None  # a changed threshold is checked before the next batch, not a second later

    def active(self) -> bool:
        return any(g.wait is not None or g.critical is not None for g in self.gates.values())

    def due(self) -> bool:
        return self._last is None or self.clock() - self._last >= self.interval

    def measure(self) -> list[Reading]:
        readings = []
        with self.engine.connect() as conn:
            if not self._checked_rights:
                self._warn_if_blind(conn)
            for gate in self.gates.values():
                if gate.wait is None and gate.critical is None:
                    continue
                if gate.name == "probe" and not gate.sql:
                    continue
                if gate.name == "probe":
                    value, detail = conn.exec_driver_sql(probe_sql(gate.sql), {}).scalar(), None
                else:
                    row = conn.execute(text(_SQL[gate.name]), {"table": self.table}).first()
                    value, detail = (row[0], row[1]) if row else (0.0, None)
                readings.append(Reading(gate, float(value or 0), detail))
            conn.rollback()
        self._last = self.clock()
        return readings

    def _warn_if_blind(self, conn) -> None:
        """Without pg_monitor, other sessions' lags and transaction starts read as NULL: say so once."""
        self._checked_rights = True
        needs = {"replica_lag", "long_transaction", "lock_waiters", "active_backends"} & set(self.gates)
        if not needs:
            return
        sees = conn.execute(text(
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') FROM pg_roles WHERE rolname = current_user"
        )).scalar()
        if not sees:
            user = conn.execute(text("SELECT current_user")).scalar()
            log.warning("gates %s cannot see other sessions' details as %r; grant it pg_monitor "
                        "(GRANT pg_monitor TO %s) or these gates read 0 and never hold the backfill",
                        ", ".join(sorted(needs)), user, user)

    def hold(self, wait: Callable[[float, str], None], should_stop: Callable[[], str | None],
             logger: logging.Logger, label: str) -> str | None:
        """Block while any gate is above ``wait``; raise GateCritical above ``critical``.

        Returns a stop reason if ``should_stop`` fires while waiting (pause, window end), else None.
        """
        attempt, waited = 0, 0.0
        while True:
            readings = self.measure()
            critical = [r for r in readings if r.over_critical]
            if critical:
                r = critical[0]
                raise GateCritical(
                    f"gate {r.gate.name} critical: {r.why_critical()}; stopped at a batch boundary so the database can "
                    f"recover. Once it has, clear the chunk task (or raise gates.{r.gate.name}.critical, live: "
                    f"`rowfill set NAME {r.gate.name}.critical=...`)."
                )
            over = [r for r in readings if r.over_wait]
            if not over:
                if attempt:
                    logger.info("%s: gates clear after waiting %s; continuing", label, format_duration(waited))
                return None
            delay = min(self.max_backoff, 2.0 ** attempt)
            wait(delay, "waiting: " + "; ".join(r.why_wait() for r in over))
            waited += delay
            attempt += 1
            if reason := should_stop():
                return reason


class LatencyProbe:
    """Times a representative live query from a side connection, a few times a second, in a thread.

    It runs during batches too: the latency live traffic sees while a batch holds its locks and
    writes its WAL is exactly what the probe must catch.
    """

    def __init__(self, engine: Engine, spec: LatencySpec):
        self.engine = engine
        self.sql = probe_sql(spec.sql)
        self.limit = spec.limit
        self.every = spec.every
        self._samples: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="rowfill-latency-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def take(self) -> list[float]:
        """Latencies measured since the last call."""
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def measure_once(self, conn) -> float:
        """One probe in its own transaction, committed: with ``txid_current()`` in the probe, the
        commit waits for its WAL flush, which is what live writers wait on while a batch writes WAL.

        A probe stuck behind something is a latency too: it is capped (``SET LOCAL``, so the pooled
        connection goes back unchanged) and the cap counts as its latency.
        """
        conn.execute(self._timeout, {"t": f"{max(int(self.limit * 20 * 1000), 1000)}ms"})
        t0 = time.perf_counter()
        conn.exec_driver_sql(self.sql, {}).fetchall()
        conn.commit()
        return time.perf_counter() - t0

    _timeout = text("SELECT set_config('statement_timeout', :t, true)")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.engine.connect() as conn:
                    while not self._stop.is_set():
                        try:
                            latency = self.measure_once(conn)
                        except Exception:
                            conn.rollback()
                            latency = max(self.limit * 20, 1.0)
                            self.errors += 1
                        with self._lock:
                            self._samples.append(latency)
                        self._stop.wait(max(0.0, self.every - latency))
            except Exception:  # connection lost: try again shortly
                self.errors += 1
                self._stop.wait(1.0)
