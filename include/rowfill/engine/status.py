"""Where a backfill stands, for people: rows done of the planned total, rate, ETA, state, per chunk.

Everything comes from the checkpoint store with **one query per backfill** (``rowfill.store.readings``:
chunk rows joined to their rate samples of the moving window and their leases, with the backfill's
row for the last verify's count and the count of skipped keys), so the CLI, the Airflow page, the
stall watchdog and the alerts all read the same numbers, and a page with a thousand chunks costs one
round trip per backfill, not one per chunk.

The total is the planned rows (each chunk's ``est_rows``, counted from the key index when it was
planned): known up front without counting the table. The rate is over the last
``rates.WINDOW_SECONDS`` of committed batches, from any worker; the ETA is what remains at that rate.

Columns other issues add to ``rowfill.chunks`` whose names start with ``throttle`` (the throttle's
state, time spent throttled) are passed through as ``throttle`` per chunk and shown when present.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from rowfill.engine.lease import LEASE_SECONDS
from rowfill.store import catalog, rates, readings
from rowfill.store.states import BackfillState, ChunkState

_ERROR_CHARS = 500  # of last_error carried per chunk; enough to act on, small for a page of 1,000 chunks


def _ts(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


@dataclass
class ChunkStatus:
    chunk_no: int
    status: ChunkState  # stale: marked running, its runner's lease ran out
    lo: object
    hi: object
    est_rows: int
    cursor: object
    rows_seen: int
    rows_written: int
    batches: int
    attempts: int
    last_error: str | None
    worker: str | None
    run_id: str | None
    map_index: int | None
    updated_at: datetime | None
    rows_per_second: float
    eta_seconds: float | None
    throttle: dict = field(default_factory=dict)
    batch_rows_worked: int | None = None  # batch size after a statement_timeout split
    lease_age: float | None = None  # seconds since its runner last renewed its lease (stale: above the lease)

    @property
    def remaining(self) -> int:
        """Keys still to walk by the plan's estimate: 0 once done, never below 0."""
        return 0 if self.status == ChunkState.DONE else max(self.est_rows - self.rows_seen, 0)

    def range_text(self, key: str) -> str:
        """The chunk's key range for people, e.g. ``id 1001..2000`` or ``id start..1000``."""
        if self.lo is None:  # the lowest chunk: from the start of the key space
            return f"{key} start..{self.hi}"
        if isinstance(self.lo, int) and isinstance(self.hi, int):
            return f"{key} {self.lo + 1}..{self.hi}"
        return f"{key} ({self.lo}, {self.hi}]"


@dataclass
class BackfillStatus:
    backfill: str
    state: BackfillState
    chunks: list[ChunkStatus]
    rows_estimated: int = 0
    rows_seen: int = 0
    rows_written: int = 0
    rows_per_second: float = 0.0
    eta_seconds: float | None = None
    chunks_done: int = 0
    chunks_running: int = 0
    chunks_failed: int = 0
    chunks_pending: int = 0
    chunks_stale: int = 0  # marked running, but the runner's lease ran out: its process is gone
    last_progress_at: datetime | None = None
    last_error: str | None = None
    last_error_chunk: int | None = None
    throttle: dict = field(default_factory=dict)
    # rows of the whole table still matching `where` at the last verify (None: none yet); rowfill.engine.verify
    rows_still_matching: int | None = None
    verified_at: datetime | None = None
    rows_skipped: int = 0  # rows other sessions held, still to write (rowfill.engine.rowlocks)

    @property
    def share(self) -> float:
        """How far the backfill is, 0.0 to 1.0: 1.0 when done, else keys walked over keys estimated."""
        if self.state == BackfillState.DONE:
            return 1.0
        return min(self.rows_seen / self.rows_estimated, 1.0) if self.rows_estimated else 0.0

    def to_dict(self, chunks: bool = True) -> dict:
        """JSON-ready data (``rowfill status --json``, the UI page) with ``share`` and ``chunks_total``;
        ``chunks`` False leaves the per-chunk list out.
        """
        d = asdict(self)
        d["share"] = round(self.share, 4)
        d["chunks_total"] = len(self.chunks)
        if not chunks:
            d.pop("chunks")
        return d


def _state(chunks: list[ChunkStatus]) -> BackfillState:
    """The whole backfill's state from its chunks' (``stale`` already marked)."""
    if not chunks:
        return BackfillState.PLANNED
    statuses = {c.status for c in chunks}
    if statuses == {ChunkState.DONE}:
        return BackfillState.DONE
    if ChunkState.RUNNING in statuses:
        return BackfillState.RUNNING
    if ChunkState.STALE in statuses:  # nothing runs; a chunk waits for its next attempt to take it over
        return BackfillState.STALE
    if ChunkState.FAILED in statuses:
        return BackfillState.FAILED
    if any(c.batches or c.status == ChunkState.DONE for c in chunks):
        return BackfillState.WAITING
    return BackfillState.PLANNED


def _eta(remaining: int, rate: float) -> float | None:
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate > 0 else None


def backfill_status(conn: Connection, name: str, window: float = rates.WINDOW_SECONDS,
                    with_samples: bool = True, with_leases: bool = True, lease: float = LEASE_SECONDS,
                    with_skipped: bool = True) -> BackfillStatus:
    """Everything about one backfill (one query: ``readings.backfill_readings``); never planned: 'not started'.

    A chunk marked running whose runner's lease is older than ``lease`` seconds is ``stale``:
    no rate and no ETA come from it, and its samples leave the backfill's rate.
    """
    read = readings.backfill_readings(conn, name, window, samples=with_samples, leases=with_leases, skipped=with_skipped)
    rows = read.chunks
    chunks: list[ChunkStatus] = []
    win_rows, since, last = 0, None, None
    now: datetime | None = None  # the database clock, on every row
    for r in rows:
        c = r.chunk
        now = r.now
        c["status"] = ChunkState(c["status"])
        if c["status"] == ChunkState.RUNNING and r.quiet is not None and float(r.quiet) > lease:
            c["status"] = ChunkState.STALE
        rate = round(rates.window_rate(r.rows, r.span), 1) if c["status"] == ChunkState.RUNNING else 0.0
        error = c.get("last_error")
        chunk = ChunkStatus(
            chunk_no=c["chunk_no"], status=c["status"], lo=c["lo"], hi=c["hi"], est_rows=c["est_rows"],
            cursor=c.get("cursor"), rows_seen=c["rows_seen"], rows_written=c["rows_written"], batches=c["batches"], attempts=c["attempts"],
            last_error=error[:_ERROR_CHARS] if error else None, worker=c.get("worker"), run_id=c.get("run_id"),
            map_index=c.get("map_index"), updated_at=_ts(c.get("updated_at")), rows_per_second=rate,
            eta_seconds=None, throttle={k: v for k, v in c.items() if k.startswith("throttle") and v is not None},
            batch_rows_worked=c.get("batch_rows_worked"),
            lease_age=round(float(r.quiet), 1) if r.quiet is not None and c["status"].active else None,
        )
        chunk.eta_seconds = _eta(chunk.remaining, rate)
        chunks.append(chunk)
        if r.rows and c["status"] != ChunkState.STALE:
            win_rows += int(r.rows)
            since = r.since if since is None else min(since, r.since)
            last = r.last if last is None else max(last, r.last)
    if not chunks:
        return BackfillStatus(name, BackfillState.PLANNED if read.backfill is not None else BackfillState.NOT_STARTED, [])
    assert now is not None  # a chunk came from a row, and every row carries now_.t (clock_timestamp(), never NULL)
    # While chunks run, quiet time counts (a stall shows as a falling rate); once none runs, the rate
    # is that of the last active stretch instead of decaying for a minute after the end.
    end = now if any(c.status == ChunkState.RUNNING for c in chunks) else last
    rate = round(rates.window_rate(win_rows, (end - since).total_seconds()), 1) if since else 0.0
    failed = [c for c in chunks if c.status == ChunkState.FAILED and c.last_error]
    latest_error = max(failed, key=lambda c: c.updated_at or datetime.min.replace(tzinfo=now.tzinfo), default=None)
    remaining = sum(c.remaining for c in chunks)
    throttle: dict = {}  # the running chunks' throttle columns, first one wins
    for c in chunks:
        if c.status == ChunkState.RUNNING:
            for k, v in c.throttle.items():
                throttle.setdefault(k, v)
    state = _state(chunks)
    verified = read.backfill or {}  # what the last verify found
    skipped = read.skipped
    return BackfillStatus(
        backfill=name, state=state, chunks=chunks,
        rows_estimated=sum(c.est_rows for c in chunks), rows_seen=sum(c.rows_seen for c in chunks),
        rows_written=sum(c.rows_written for c in chunks), rows_per_second=rate,
        # a failed or stale backfill goes nowhere until it runs again: no ETA from its last minute
        eta_seconds=None if state.stuck else _eta(remaining, rate),
        chunks_done=sum(c.status == ChunkState.DONE for c in chunks),
        chunks_running=sum(c.status == ChunkState.RUNNING for c in chunks),
        chunks_failed=sum(c.status == ChunkState.FAILED for c in chunks),
        chunks_pending=sum(c.status == ChunkState.PENDING for c in chunks),
        chunks_stale=sum(c.status == ChunkState.STALE for c in chunks),
        last_progress_at=last, last_error=latest_error.last_error if latest_error else None,
        last_error_chunk=latest_error.chunk_no if latest_error else None, throttle=throttle,
        rows_still_matching=verified.get("rows_still_matching"), verified_at=_ts(verified.get("verified_at")),
        rows_skipped=skipped,
    )


def statuses(engine: Engine, names: list[str], window: float = rates.WINDOW_SECONDS) -> dict[str, BackfillStatus]:
    """Status of several backfills on one database, over one connection."""
    with engine.connect() as conn:
        chunks, samples, leases, skipped = catalog.existing(
            conn, catalog.own("chunks"), catalog.own("samples"), catalog.own("leases"), catalog.own("skipped_rows"))
        if not chunks:
            return {n: BackfillStatus(n, BackfillState.NOT_STARTED, []) for n in names}
        return {n: backfill_status(conn, n, window, with_samples=samples, with_leases=leases, with_skipped=skipped)
                for n in names}
