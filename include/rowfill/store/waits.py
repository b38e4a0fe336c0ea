"""Throttle waits over time: how long each chunk was held back, and why, per time bucket.

The runner decides every wait (``rowfill.engine.throttle.Throttle.next``) and knows its reason; the
console wants a picture of them over hours, across every chunk of a backfill, on whichever worker
they ran. So, like the rate samples (``rowfill.store.rates``), each chunk adds its waits to a row of
``rowfill.wait_samples`` per 5-second bucket of the database's clock: an upsert on a row no other
chunk touches, once a second (``WaitTally`` sums meanwhile), never a transaction per batch, with
``synchronous_commit`` off (a sample lost in a server crash makes one chart point low; the batch's
own transaction keeps the server's durability). A row's seconds are waits that *ended* in its bucket;
a long one (a night outside the window) is spread back over the time it covered when charted.

A chunk that defers to Airflow's triggerer (a closed window, an operator's pause, Airflow's DAG
toggle) runs no rowfill code while it waits. Its checkpoint row says since when it is held
(``rowfill.chunks.throttle_since``, set with its ``throttle_state`` by ``CheckpointStore.note_throttle``),
so when the chunk runs again ``resume`` records the seconds between then and now under the hold's
reason (and ``note_throttle`` does when the hold turns into another, a pause while it waited for the
window); a chunk still held shows on the chart from ``throttle_since`` up to now (``steps``).

The reasons are ``WaitReason``; ``wait_reason`` reads one from a chunk's recorded throttle state.
Old buckets are pruned as rate samples are (``rates.KEEP_SECONDS``, by the chunk that writes them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from rowfill.sql.session import set_local
from rowfill.store import catalog
from rowfill.store.catalog import SCHEMA
from rowfill.store.rates import BUCKET_SECONDS, KEEP_SECONDS

log = logging.getLogger("rowfill.waits")

PRUNE_EVERY = 500  # records (about one a second while a chunk waits or works): as the rate samples


class WaitReason(StrEnum):
    """Why a chunk is held back; each is a column ``<value>_seconds`` of ``rowfill.wait_samples``."""

    REST = "rest"  # the routine rest between batches: the spec's (or live) pause and pause_ratio
    LATENCY = "latency"  # the live-latency probe over its limit: the back-off's longer rest beyond the routine one
    GATE = "gate"  # a health gate over its wait threshold
    WINDOW = "window"  # outside the spec's time window
    PAUSE = "pause"  # paused or cancelled by an operator (rowfill pause, the console, Airflow's DAG toggle)
    OTHER = "other"  # retries after a lock timeout, rows other sessions hold, anything else


DEFERRED = (WaitReason.WINDOW, WaitReason.PAUSE)  # the reasons a chunk waits for outside its runner (deferred)


def wait_reason(throttle_state: str | None, gate_kinds=()) -> WaitReason | None:
    """Classify a chunk's recorded throttle state (free text written by the engine) by its cause.

    :param throttle_state: ``rowfill.chunks.throttle_state``, e.g. ``"paused with `rowfill pause`: ..."``,
        ``"outside the window (...); opens at ..."``, ``"waiting: replica_lag 12 s > 5 s"``; None: not held.
    :param gate_kinds: names of the gate kinds (``rowfill.spec.gates.KINDS``): a state naming one is a gate.
    :returns: the reason, or None when the chunk is not held back. Never ``REST``: a routine rest
        records no state. Never raises.
    """
    if not throttle_state:
        return None
    words = throttle_state.lower()
    if words.startswith(("paused", "cancelled")) or " is paused" in words:  # the last: Airflow's DAG toggle
        return WaitReason.PAUSE
    if "window" in words:
        return WaitReason.WINDOW
    if "latency" in words:
        return WaitReason.LATENCY
    if "rows other sessions hold" in words:
        return WaitReason.OTHER
    if words.startswith("waiting") or "gate" in words or any(kind in words for kind in gate_kinds):
        return WaitReason.GATE
    return WaitReason.OTHER


COLUMNS = {r: f"{r.value}_seconds" for r in WaitReason}

_ADD = ", ".join(f"{c} = w.{c} + excluded.{c}" for c in COLUMNS.values())
_RECORD = text(
    f"INSERT INTO {SCHEMA}.wait_samples AS w (backfill, chunk_no, bucket, {', '.join(COLUMNS.values())}, "
    "latency_worst, latency_limit) "
    f"SELECT :n, :c, to_timestamp(floor(extract(epoch FROM t) / :b) * :b), "
    f"{', '.join(':' + r.value for r in WaitReason)}, :worst, :limit FROM clock_timestamp() t "
    f"ON CONFLICT (backfill, chunk_no, bucket) DO UPDATE SET {_ADD}, "
    "latency_worst = CASE WHEN excluded.latency_worst IS NULL THEN w.latency_worst "
    "ELSE greatest(w.latency_worst, excluded.latency_worst) END, "
    "latency_limit = coalesce(excluded.latency_limit, w.latency_limit)"
)
_PRUNE = text(f"DELETE FROM {SCHEMA}.wait_samples WHERE backfill = :n AND chunk_no = :c "
              "AND bucket < clock_timestamp() - make_interval(secs => :keep)")
# the hold a chunk comes back from: its state and how long ago it began, cleared in the same statement
_RESUME = text(
    f"UPDATE {SCHEMA}.chunks c SET throttle_since = NULL FROM (SELECT throttle_since FROM {SCHEMA}.chunks "
    "WHERE backfill = :n AND chunk_no = :c AND throttle_since IS NOT NULL FOR UPDATE) o "
    "WHERE c.backfill = :n AND c.chunk_no = :c "
    "RETURNING c.throttle_state, extract(epoch FROM clock_timestamp() - o.throttle_since)")


@dataclass
class WaitTally:
    """Seconds waited per reason and the worst latency reading since the last record, in memory.

    The runner adds every wait here and calls ``record`` about once a second; nothing is written
    when nothing was added.
    """

    seconds: dict[WaitReason, float] = field(default_factory=dict)
    latency_worst: float | None = None  # seconds
    latency_limit: float | None = None  # seconds

    def add(self, reason: WaitReason, seconds: float) -> None:
        """Count ``seconds`` (float, > 0 to count) waited for ``reason``."""
        if seconds > 0:
            self.seconds[reason] = self.seconds.get(reason, 0.0) + seconds

    def probe(self, worst: float, limit: float) -> None:
        """Note the latency probe's worst reading (seconds) of a decision and the limit (seconds) in force."""
        self.latency_worst = worst if self.latency_worst is None else max(self.latency_worst, worst)
        self.latency_limit = limit

    def __bool__(self) -> bool:
        return bool(self.seconds) or self.latency_worst is not None

    def params(self, backfill: str, chunk_no: int) -> dict:
        """The statement's parameters for this tally (every reason, zero when not waited for)."""
        return {"n": backfill, "c": chunk_no, "b": BUCKET_SECONDS, "worst": self.latency_worst, "limit": self.latency_limit,
                **{r.value: self.seconds.get(r, 0.0) for r in WaitReason}}


def record(engine: Engine, backfill: str, chunk_no: int, tally: WaitTally, *, prune: bool = False) -> None:
    """Add ``tally`` to the chunk's row of the current bucket (one short transaction, ``synchronous_commit`` off).

    :param prune: also delete this chunk's buckets older than ``rates.KEEP_SECONDS``.
    :raises sqlalchemy.exc.DBAPIError: as the database does (the caller, ``WaitRecorder``, logs it).
    """
    with engine.begin() as conn:
        set_local(conn, synchronous_commit="off")
        conn.execute(_RECORD, tally.params(backfill, chunk_no))
        if prune:
            conn.execute(_PRUNE, {"n": backfill, "c": chunk_no, "keep": KEEP_SECONDS})


def close_hold(conn: Connection, backfill: str, chunk_no: int, state: str | None, seconds: float,
               gate_kinds=()) -> tuple[WaitReason, float] | None:
    """A hold ended after ``seconds`` (float): record them under its reason when the chunk waited outside
    its runner (``DEFERRED``: a window, a pause); a gate's or a rest's the runner recorded itself.

    :param conn: a connection inside the transaction that ended the hold (``resume``, ``note_throttle``).
    :param state: the hold's ``throttle_state``. :param gate_kinds: as ``wait_reason``.
    :returns: (reason, seconds) recorded, or None when nothing was.
    :raises sqlalchemy.exc.DBAPIError: as the database does.
    """
    reason = wait_reason(state, gate_kinds)
    if reason not in DEFERRED or seconds <= 0:
        return None
    assert reason is not None  # in DEFERRED
    tally = WaitTally()
    tally.add(reason, seconds)
    conn.execute(_RECORD, tally.params(backfill, chunk_no))
    return reason, seconds


def resume(engine: Engine, backfill: str, chunk_no: int, gate_kinds=()) -> tuple[WaitReason, float] | None:
    """A chunk runs again: record the time since its hold began (``throttle_since``) under the hold's
    reason when it waited outside its runner (``close_hold``), and clear the mark. One short transaction.

    :param gate_kinds: as ``wait_reason``.
    :returns: (reason, seconds) recorded, or None when nothing was.
    :raises sqlalchemy.exc.DBAPIError: as the database does (the caller logs it).
    """
    with engine.begin() as conn:
        set_local(conn, synchronous_commit="off")
        found = conn.execute(_RESUME, {"n": backfill, "c": chunk_no}).first()
        if found is None or found[1] is None:
            return None
        return close_hold(conn, backfill, chunk_no, found[0], max(float(found[1]), 0.0), gate_kinds)


class WaitRecorder:
    """A chunk's waits, recorded once a second: the runner ``add``s every wait and calls ``due`` often.

    Best effort, like the rate samples: a lost record makes one chart point low, while an exception
    here would fail a chunk whose data is fine; the first failure is logged at warning level, later ones not.
    """

    def __init__(self, engine: Engine, backfill: str, chunk_no: int, clock, every: float = 1.0):
        """:param clock: monotonic seconds. :param every: seconds between records."""
        self.engine, self.backfill, self.chunk_no = engine, backfill, chunk_no
        self.clock, self.every = clock, every
        self.tally = WaitTally()
        self._last = clock()
        self._records = 0
        self._warned = False

    def due(self) -> None:
        """Record what was tallied if ``every`` seconds passed since the last record."""
        if self.clock() - self._last >= self.every:
            self.flush()

    def flush(self) -> None:
        """Record what was tallied now (nothing when nothing was). Never raises."""
        self._last = self.clock()
        tally, self.tally = self.tally, WaitTally()
        if not tally:
            return
        self._records += 1
        try:
            record(self.engine, self.backfill, self.chunk_no, tally, prune=self._records % PRUNE_EVERY == 0)
        except Exception as exc:  # noqa: BLE001 - observability must never fail a backfill
            self._warn(exc)

    def resume(self, gate_kinds=()) -> tuple[WaitReason, float] | None:
        """``resume`` for this chunk; None (and a warning, once) when it could not be recorded. Never raises."""
        try:
            return resume(self.engine, self.backfill, self.chunk_no, gate_kinds)
        except Exception as exc:  # noqa: BLE001 - observability must never fail a backfill
            self._warn(exc)
            return None

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("wait samples of %s chunk %s not recorded (%s); the console's wait chart may read low",
                        self.backfill, self.chunk_no, str(exc).splitlines()[0])
            self._warned = True


# -- the console's chart ---------------------------------------------------------------------------
# The waits of the last :since seconds summed over chunks into steps of a whole number of buckets, at
# most :points of them from the first wait (or :held_from, the oldest hold going on) to now. A row's
# waits ended in its bucket and are summed in its step, as are the latency columns (the worst reading
# and the limit of the step). A row longer than a bucket (a deferral recorded by ``resume``) comes back
# on its own (kind 1: its end and seconds), to be spread over the steps it covered (``_spread``): a
# spread in SQL (generate_series per row) made the planner expect millions of rows and compile the
# query with JIT, 0.8 s of a 25 ms query.
_ALL = ", ".join(COLUMNS.values())
_STEPS = text(f"""
WITH r AS (
    SELECT bucket, {_ALL}, latency_worst, latency_limit, greatest({_ALL}) > :bucket AS long
    FROM {SCHEMA}.wait_samples
    WHERE backfill = :n AND bucket >= now() - make_interval(secs => :since)  -- now(): stable, so the index serves it
), g AS (  -- the grid: from the first wait (a long one's start, a hold's) to now
    SELECT lo, hi, greatest(ceil((hi - lo) / :bucket / :points), 1) * :bucket AS width FROM (
        SELECT floor(greatest(least(extract(epoch FROM min(bucket)) + :bucket - greatest(max(greatest({_ALL})), :bucket), :held_from),
                              extract(epoch FROM now()) - :since) / :bucket) * :bucket AS lo,
               extract(epoch FROM clock_timestamp()) AS hi
        FROM r) x
    WHERE lo IS NOT NULL
), s AS (  -- per bucket over the chunks first: a quarter of the rows to place on the grid with 4 chunks
    SELECT bucket, {', '.join(f"sum({c}) FILTER (WHERE NOT long) AS {c}" for c in COLUMNS.values())},
           max(latency_worst) AS latency_worst, max(latency_limit) AS latency_limit
    FROM r GROUP BY bucket
)
SELECT 0 AS kind, floor((extract(epoch FROM s.bucket) - g.lo) / g.width) AS at, g.lo, g.width, g.hi,
       {', '.join(f"sum(s.{c}) AS {c}" for c in COLUMNS.values())},
       max(s.latency_worst) AS latency_worst, max(s.latency_limit) AS latency_limit
FROM s CROSS JOIN g GROUP BY 2, 3, 4, 5
UNION ALL
SELECT 1, extract(epoch FROM r.bucket) + :bucket, g.lo, g.width, g.hi, {', '.join('r.' + c for c in COLUMNS.values())},
       NULL, NULL
FROM r CROSS JOIN g WHERE r.long
ORDER BY 1, 2""")


@dataclass(frozen=True)
class WaitSteps:
    """A backfill's waits as chart steps: step ``k`` starts at ``lo + k * width`` (seconds since the epoch).

    ``seconds[reason][k]``: seconds its chunks waited for ``reason`` in step ``k`` (all chunks summed);
    ``worst[k]`` / ``limit[k]``: the latency probe's worst reading and limit in it (seconds; None: no reading).
    """

    lo: float
    width: float
    count: int
    seconds: dict[WaitReason, list[float]]
    worst: list[float | None]
    limit: list[float | None]

    def times(self) -> list[float]:
        """The start of each step, seconds since the epoch."""
        return [self.lo + k * self.width for k in range(self.count)]


def steps(conn: Connection, backfill: str, since: float, points: int, holds: Sequence[tuple[WaitReason, float]] = (),
          bucket: float = float(BUCKET_SECONDS)) -> WaitSteps | None:
    """The backfill's waits of the last ``since`` seconds, summed over its chunks into at most ``points``
    steps from the first wait to now, in one statement.

    :param since: how far back, seconds. :param points: at most this many steps.
    :param holds: holds going on now (reason, ``throttle_since`` in seconds since the epoch) of chunks
        deferred for a window or a pause: counted from then up to now, as if they ended now.
    :param bucket: the samples' bucket, seconds (``rates.BUCKET_SECONDS``); a step is a whole number of them.
    :returns: ``WaitSteps``; None when nothing waited in that time (or there is no wait table yet).
    """
    if not catalog.exists(conn, catalog.own("wait_samples")):
        return None
    held_from = min((t for _, t in holds), default=None)
    rows = conn.execute(_STEPS, {"n": backfill, "since": since, "points": points, "bucket": bucket,
                                 "held_from": held_from}).all()
    if rows:
        lo, width, hi = float(rows[0].lo), float(rows[0].width), float(rows[0].hi)
    elif held_from is not None:
        hi = float(conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())
        lo = max(held_from, hi - since) // bucket * bucket
        width = max(math.ceil((hi - lo) / bucket / points), 1) * bucket
    else:
        return None
    count = int((hi - lo) // width) + 1
    found = WaitSteps(lo, width, count, {r: [0.0] * count for r in WaitReason}, [None] * count, [None] * count)
    spread: dict[WaitReason, list[tuple[float, float]]] = {}
    for row in rows:
        if row.kind == 0:  # a step's sums
            k = int(row.at)
            if not 0 <= k < count:
                continue
            for r, c in COLUMNS.items():
                found.seconds[r][k] += float(getattr(row, c) or 0.0)
            found.worst[k] = None if row.latency_worst is None else float(row.latency_worst)
            found.limit[k] = None if row.latency_limit is None else float(row.latency_limit)
        else:  # a long row: each reason's seconds ended at its bucket's end
            end = float(row.at)
            for r, c in COLUMNS.items():
                if value := float(getattr(row, c) or 0.0):
                    spread.setdefault(r, []).append((end - value, end))
    for reason, since_ in holds:
        spread.setdefault(reason, []).append((since_, hi))
    for reason, intervals in spread.items():
        _spread(found, found.seconds[reason], intervals)
    return found


def _spread(found: WaitSteps, column: list[float], intervals: list[tuple[float, float]]) -> None:
    """Add each interval ``(start, end)`` (seconds since the epoch) to the steps it covers, by overlap:
    its partial first and last steps directly, the whole steps between through a running count, so
    a thousand chunks held all night cost one pass over the steps, not one per chunk."""
    lo, width, count = found.lo, found.width, found.count
    whole = [0] * (count + 1)  # +1 where a run of whole steps begins, -1 after it ends
    for start, end in intervals:
        start, end = max(start, lo), min(end, lo + count * width)
        if end <= start:
            continue
        first, last = int((start - lo) // width), min(int((end - lo) // width), count - 1)
        if first == last:
            column[first] += end - start
            continue
        column[first] += lo + (first + 1) * width - start
        column[last] += end - (lo + last * width)
        whole[first + 1] += 1
        whole[last] -= 1
    running = 0
    for k in range(count):
        running += whole[k]
        column[k] += running * width
