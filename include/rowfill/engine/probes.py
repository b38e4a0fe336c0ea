"""Database health gates, measured: checked between batches, they hold a chunk back while the database is busy.

Each gate measures one number on the target database (replica lag, active backends, the age of
the oldest transaction holding a lock on the target table, sessions waiting for locks on it, or
the user's own SQL probe). Above its ``wait`` threshold the chunk waits and checks again with
backoff, saying why (the decision is ``rowfill.engine.throttle``'s); above its ``critical`` threshold the chunk stops at the batch boundary and
fails, naming the gate. The numbers come from the primary's own statistics views, so a gate
needs no agent on the replicas; the statements that read them are ``rowfill.sql.gates``'s, this
module only runs them.

The live-latency probe is different in kind: it is not a load number but what the application
feels. A side connection runs the user's representative query a few times a second, during the
batches as well as between them, and the throttle backs off when the worst latency since the
last batch exceeds the limit (see ``throttle``). The gates' thresholds and the probe's limit are
spec values (``rowfill.spec.gates``); this module measures them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from collections.abc import Callable

from sqlalchemy.engine import Engine

from rowfill.errors import RowfillError
from rowfill.spec.gates import GateSpec, LatencySpec
from rowfill.sql import gates as stat_reads
from rowfill.sql.session import set_local
from rowfill.sql.sqltext import probe

log = logging.getLogger("rowfill.gates")


@lru_cache(maxsize=64)
def probe_sql(sql: str) -> str:
    """A probe's SQL as driver SQL (``rowfill.sql.sqltext``): its colons and ``%`` reach PostgreSQL as written."""
    return probe(sql).driver()


class GateCritical(RowfillError):
    """A gate passed its critical threshold: stop writing and let a person look."""


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
        """True when the gate has a critical threshold and the reading is above it (stop writing)."""
        return self.gate.critical is not None and self.value > self.gate.critical

    @property
    def over_wait(self) -> bool:
        """True when the gate has a wait threshold and the reading is above it (hold the next batch)."""
        return self.gate.wait is not None and self.value > self.gate.wait

    def why_wait(self) -> str:
        """The reading against its wait threshold, as the reason of a Wait (e.g. ``replica lag 12.0 s > 5.0 s``).

        :returns: the text; it assumes ``over_wait``.
        :raises ValueError: the gate has no wait threshold (none to show; ``over_wait`` is False then).
        """
        if self.gate.wait is None:
            raise ValueError(f"gate {self.gate.name} has no wait threshold; ask why_wait only when over_wait")
        return self._text(self.gate.wait, "")

    def why_critical(self) -> str:
        """The reading against its critical threshold, for the error that stops the chunk.

        :returns: the text; it assumes ``over_critical``.
        :raises ValueError: the gate has no critical threshold (``over_critical`` is False then).
        """
        if self.gate.critical is None:
            raise ValueError(f"gate {self.gate.name} has no critical threshold; ask why_critical only when over_critical")
        return self._text(self.gate.critical, "")


# -- checking --------------------------------------------------------------------------------


class GateKeeper:
    """Measures every gate, one round trip per gate; it only measures: ``throttle.Throttle`` decides.

    Thresholds are mutable (``set_threshold``) so live knobs take effect at the next check;
    ``interval`` (seconds) is how often readings are due between batches, ``max_backoff`` (seconds)
    caps the throttle's wait between readings while a gate is over ``wait``.
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
        """A live knob: set gate ``name``'s ``which`` (``wait`` | ``critical``) to ``value`` (its unit; None = off).

        :raises ValueError: ``which`` is neither (``control.parse_knob`` lets only those two through).
        """
        gate = self.gates.get(name) or GateSpec(name)
        if which == "wait":
            self.gates[name] = replace(gate, wait=value)
        elif which == "critical":
            self.gates[name] = replace(gate, critical=value)
        else:
            raise ValueError(f"gate {name}: {which!r} is not a threshold (wait or critical)")
        self._last = None  # a changed threshold is checked before the next batch, not a second later

    def active(self) -> bool:
        """True when any gate has a threshold, i.e. there is something to measure."""
        return any(g.wait is not None or g.critical is not None for g in self.gates.values())

    def due(self) -> bool:
        """True when the last readings are ``interval`` seconds old (or a threshold changed since)."""
        return self._last is None or self.clock() - self._last >= self.interval

    def measure(self) -> list[Reading]:
        """One reading per gate with a threshold, from the primary's statistics views (PostgreSQL docs,
        "The Cumulative Statistics System"). :raises DBAPIError: the database could not be read."""
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
                    row = conn.execute(*stat_reads.reading(gate.name, self.table)).first()
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
        sees = conn.execute(*stat_reads.sees_other_sessions()).scalar()
        if not sees:
            user = conn.execute(*stat_reads.current_user()).scalar()
            log.warning("gates %s cannot see other sessions' details as %r; grant it pg_monitor "
                        "(GRANT pg_monitor TO %s) or these gates read 0 and never hold the backfill",
                        ", ".join(sorted(needs)), user, user)


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
        """Start the background thread that times the probe query every ``every`` seconds; a no-op if it runs.

        A thread, so the latency is measured between batches as well as during them.
        """
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="rowfill-latency-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the probe thread to stop and wait up to 5.0 seconds for it; it can be started again."""
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
        set_local(conn, statement_timeout=max(self.limit * 20, 1.0))
        t0 = time.perf_counter()
        conn.exec_driver_sql(self.sql, {}).fetchall()
        conn.commit()
        return time.perf_counter() - t0

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
