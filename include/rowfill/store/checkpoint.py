"""The checkpoint store: one row per chunk in the target database's own ``rowfill`` schema.

It lives next to the data on purpose: a batch's write and its checkpoint advance commit in the
same transaction (see ``runner``), which is what makes a crash at any instant lose nothing and
apply nothing twice. It is also the only state chunks share, so any worker can pick up any chunk.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from rowfill.errors import PlanChanged
from rowfill.spec.gates import KINDS
from rowfill.spec.spec import Spec
from rowfill.sql.keys import decode, encode
from rowfill.sql.ranges import ChunkBounds, KeyRange
from rowfill.sql.session import set_local
from rowfill.store import catalog, schema, waits
from rowfill.store.states import ChunkState

SCHEMA = catalog.SCHEMA  # re-exported: most modules name the schema through this module
# The tables themselves are created by rowfill's migrations (rowfill.store.migrations, `rowfill db migrate`);
# this module only reads and writes them.
_LOCK_KEY = schema._LOCK_KEY  # "rowf": serialises schema changes and planning across workers

@dataclass(frozen=True)
class ChunkRow:
    backfill: str
    chunk_no: int
    lo: Any  # key values as JSON values (see rowfill.sql.keys); lo None = from the start
    hi: Any
    est_rows: int
    cursor: Any
    rows_seen: int
    rows_written: int
    batches: int
    status: ChunkState
    attempts: int
    last_error: str | None
    worker: str | None
    run_id: str | None
    started_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None
    throttled_seconds: float = 0.0
    throttle_state: str | None = None
    first_key: Any = None
    batch_rows_worked: int | None = None

    @property
    def range(self) -> KeyRange:
        """The keys the chunk covers."""
        return KeyRange(self.lo, self.hi)

    @property
    def position(self) -> Any:
        """Where the next batch starts: the cursor, or the chunk's lower bound if nothing is done."""
        return self.lo if self.cursor is None else self.cursor


_KEY_FIELDS = ("lo", "hi", "cursor", "first_key")
# key values are read as JSON text and decoded by rowfill.sql.keys (exact digits for numeric keys)
_COLUMNS = ", ".join(f"CAST({c} AS text)" if c in _KEY_FIELDS else c for c in ChunkRow.__dataclass_fields__)
# the throttle state and since when it holds (kept while the state stays the same); returns the state
# before and, when that hold ended here (another state, or none), the seconds it lasted
_NOTE_THROTTLE = text(
    f"UPDATE {SCHEMA}.chunks c SET throttle_state = :s, throttled_seconds = c.throttled_seconds + :t, "
    "throttle_since = CASE WHEN CAST(:s AS text) IS NULL THEN NULL WHEN o.throttle_state = :s "
    "THEN coalesce(o.throttle_since, clock_timestamp()) ELSE clock_timestamp() END "
    f"FROM (SELECT throttle_state, throttle_since FROM {SCHEMA}.chunks WHERE backfill = :n AND chunk_no = :c "
    "FOR UPDATE) o WHERE c.backfill = :n AND c.chunk_no = :c "
    "RETURNING o.throttle_state, CASE WHEN o.throttle_state IS DISTINCT FROM CAST(:s AS text) "
    "THEN extract(epoch FROM clock_timestamp() - o.throttle_since) END")
_KEY_POSITIONS = [i for i, c in enumerate(ChunkRow.__dataclass_fields__) if c in _KEY_FIELDS]
_STATUS_POSITION = list(ChunkRow.__dataclass_fields__).index("status")


_MAP_INDEX = text(f"UPDATE {SCHEMA}.chunks SET map_index = :m WHERE backfill = :n AND chunk_no = :c")
_SIGNATURE = text(f"SELECT coalesce(sum(batches), 0), count(*) FILTER (WHERE status = 'done'), "
                  f"count(*) FILTER (WHERE status IN ('running', 'pending')) FROM {SCHEMA}.chunks WHERE backfill = :n")


def _row(r) -> ChunkRow:
    values = list(r)
    for i in _KEY_POSITIONS:
        values[i] = decode(values[i])
    values[_STATUS_POSITION] = ChunkState(values[_STATUS_POSITION])
    return ChunkRow(*values)


class CheckpointStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # -- set-up -----------------------------------------------------------------------------
    def lock_planning(self, conn: Connection, name: str) -> None:
        """Inside planning's transaction: serialise planning of backfill ``name`` across workers
        (a transaction-level advisory lock, released at commit; PostgreSQL docs, 9.28.10 "Advisory Lock Functions").
        """
        conn.execute(text("SELECT pg_advisory_xact_lock(:k, hashtext(:n))"), {"k": _LOCK_KEY, "n": name})

    def register(self, conn: Connection, spec: Spec) -> None:
        """Record the backfill's meaning; refuse to continue a plan made for a different meaning.

        Planning a new run forgets what the last verify found (``note_verified``), so no run shows
        an earlier run's outcome as its own.

        :param conn: the planning transaction (the backfill's row is locked FOR UPDATE).
        :param spec: the backfill; its ``fingerprint`` is what ``meaning`` hashes to.
        :raises PlanChanged: when the row was registered with another fingerprint (reset to start over).
        """
        meaning = spec.meaning
        existing = conn.execute(
            text(f"SELECT fingerprint FROM {SCHEMA}.backfills WHERE name = :n FOR UPDATE"), {"n": spec.name}
        ).scalar()
        if existing is None:
            conn.execute(
                text(f"INSERT INTO {SCHEMA}.backfills (name, fingerprint, spec) VALUES (:n, :f, CAST(:s AS jsonb))"),
                {"n": spec.name, "f": spec.fingerprint, "s": json.dumps(meaning)},
            )
        elif existing == spec.fingerprint:
            # a new run: what the last verify found is no longer the outcome; this run's verify says it again
            conn.execute(text(f"UPDATE {SCHEMA}.backfills SET rows_still_matching = NULL, verified_at = NULL "
                              "WHERE name = :n AND verified_at IS NOT NULL"), {"n": spec.name})
        else:
            raise PlanChanged(
                f"{spec.source}: the backfill {spec.name!r} was planned for a different table/key/where/set/sql "
                "than the spec says now. Finishing the old plan with the new meaning would mix two backfills. "
                f"If the change is intended, start over with `rowfill reset {spec.name}` (progress is forgotten, "
                "rows already written stay written)."
            )

    # -- reading ----------------------------------------------------------------------------
    def chunks(self, name: str, conn: Connection | None = None) -> list[ChunkRow]:
        """Every chunk row of backfill ``name`` in chunk order (empty if never planned); on ``conn``
        if given (inside its transaction), else on a connection of its own.
        """
        sql = text(f"SELECT {_COLUMNS} FROM {SCHEMA}.chunks WHERE backfill = :n ORDER BY chunk_no")
        if conn is not None:
            return [_row(r) for r in conn.execute(sql, {"n": name})]
        with self.engine.connect() as c:
            return [_row(r) for r in c.execute(sql, {"n": name})]

    def chunk(self, name: str, chunk_no: int) -> ChunkRow:
        """Chunk ``chunk_no`` of backfill ``name``. Raises LookupError (advice: rerun the DAG to plan
        again) if the backfill was reset since planning.
        """
        with self.engine.connect() as conn:
            r = conn.execute(
                text(f"SELECT {_COLUMNS} FROM {SCHEMA}.chunks WHERE backfill = :n AND chunk_no = :c"),
                {"n": name, "c": chunk_no},
            ).first()
        if r is None:
            raise LookupError(f"backfill {name!r} has no chunk {chunk_no}; was it reset after planning? Rerun the DAG to plan again.")
        return _row(r)

    def backfill_names(self) -> list[str]:
        """Every backfill registered on this database, by name (empty before the schema exists)."""
        with self.engine.connect() as conn:
            if not catalog.exists(conn, catalog.own("backfills")):
                return []
            return list(conn.execute(text(f"SELECT name FROM {SCHEMA}.backfills ORDER BY name")).scalars())

    # -- writing ----------------------------------------------------------------------------
    @contextmanager
    def _short_txn(self):
        """Bookkeeping transactions: never wait long for a chunk row a dead session may still lock."""
        with self.engine.begin() as conn:
            set_local(conn, lock_timeout=30.0)
            yield conn

    def add_chunks(self, conn: Connection, name: str, first_no: int, bounds: list[ChunkBounds]) -> None:
        """Inside planning: store chunks ``first_no``, ``first_no + 1``... with ``bounds`` (key values as JSON values)."""
        if not bounds:
            return
        conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.chunks (backfill, chunk_no, lo, hi, est_rows, first_key) "
                "VALUES (:n, :c, CAST(:lo AS jsonb), CAST(:hi AS jsonb), :e, CAST(:f AS jsonb))"
            ),
            [{"n": name, "c": first_no + i, "lo": encode(b.lo), "hi": encode(b.hi), "e": b.rows,
              "f": encode(b.first) if b.first is not None else None} for i, b in enumerate(bounds)],
        )
        conn.execute(text(f"UPDATE {SCHEMA}.backfills SET planned_at = now() WHERE name = :n"), {"n": name})

    def start(self, name: str, chunk_no: int, worker: str, run_id: str | None) -> ChunkRow:
        """Claim a chunk for an attempt. A chunk already done stays done (rerunning it is a no-op).

        A chunk that stopped on purpose (``pause``: status back to pending with attempts already
        counted) continues the same attempt, so ``attempts`` keeps meaning "how often it had to
        start over after something went wrong", which is what an on-call reads it for.

        :param name: the backfill. :param chunk_no: the chunk. :param worker: recorded on the row.
        :param run_id: Airflow's run id (None keeps the one recorded).
        :returns: the chunk row after the claim.
        :raises LookupError: when the chunk is not planned (reset after planning).
        """
        with self._short_txn() as conn:
            r = conn.execute(
                text(
                    f"UPDATE {SCHEMA}.chunks SET status = CASE WHEN status = 'done' THEN status ELSE 'running' END, "
                    "attempts = attempts + CASE WHEN status = 'done' OR (status = 'pending' AND attempts > 0) THEN 0 ELSE 1 END, "
                    "worker = CASE WHEN status = 'done' THEN worker ELSE :w END, "
                    "run_id = CASE WHEN status = 'done' THEN run_id ELSE coalesce(:r, run_id) END, "
                    "last_error = CASE WHEN status = 'done' THEN last_error END, "
                    "started_at = coalesce(started_at, now()), updated_at = now() "
                    f"WHERE backfill = :n AND chunk_no = :c RETURNING {_COLUMNS}"
                ),
                {"n": name, "c": chunk_no, "w": worker, "r": run_id},
            ).first()
        if r is None:
            raise LookupError(f"backfill {name!r} has no chunk {chunk_no}; was it reset after planning? Rerun the DAG to plan again.")
        return _row(r)

    def lock_position(self, conn: Connection, name: str, chunk_no: int) -> tuple[Any, Any, str]:
        """Inside a batch transaction: lock the chunk row and read where to continue.

        The row lock makes two runners of the same chunk (a zombie and its retry) take turns, and
        each one reads the cursor the other committed, so no batch is applied twice.

        :param conn: the batch transaction. :param name: the backfill. :param chunk_no: the chunk.
        :returns: (where to continue: the cursor, or ``lo`` before the first batch; ``hi``; the chunk's state).
        :raises LookupError: when the chunk row is gone (reset or rolled back while it ran): the chunk stops.
        """
        cursor, lo, hi, status = conn.execute(
            text(
                f"SELECT CAST(cursor AS text), CAST(lo AS text), CAST(hi AS text), status "
                f"FROM {SCHEMA}.chunks WHERE backfill = :n AND chunk_no = :c FOR UPDATE"
            ),
            {"n": name, "c": chunk_no},
        ).first() or (None, None, None, None)
        if status is None:
            raise LookupError(f"backfill {name!r} has no chunk {chunk_no} any more: it was reset or rolled back "
                              "while this chunk ran, so the chunk stops here. Rerun the DAG to plan again.")
        cursor, lo, hi = decode(cursor), decode(lo), decode(hi)
        return (lo if cursor is None else cursor), hi, ChunkState(status)

    def advance(self, conn: Connection, name: str, chunk_no: int, cursor: Any, seen: int, written: int,
                throttled: float = 0.0, batch_rows_worked: int | None = None) -> None:
        """Inside the batch transaction: move the cursor past the batch just written.

        ``throttled`` is the time the chunk was held back since the last batch; a batch that
        commits is no longer waiting for anything, so the throttle state (and since when) is cleared.
        ``batch_rows_worked``: the batch size in effect after a statement_timeout split (None: none
        in effect).
        """
        conn.execute(
            text(
                f"UPDATE {SCHEMA}.chunks SET cursor = CAST(:cur AS jsonb), rows_seen = rows_seen + :s, "
                "rows_written = rows_written + :w, "
                "batches = batches + 1, updated_at = now(), batch_rows_worked = :b, "
                "throttled_seconds = throttled_seconds + :t, throttle_state = NULL, throttle_since = NULL "
                "WHERE backfill = :n AND chunk_no = :c"
            ),
            {"n": name, "c": chunk_no, "cur": encode(cursor), "s": seen, "w": written, "t": throttled,
             "b": batch_rows_worked},
        )

    def add_written(self, conn: Connection, name: str, chunk_no: int, written: int) -> None:
        """Inside a revisit of skipped keys (``rowfill.engine.rowlocks``): count the rows written; the cursor stays."""
        conn.execute(text(f"UPDATE {SCHEMA}.chunks SET rows_written = rows_written + :w, updated_at = now() "
                          "WHERE backfill = :n AND chunk_no = :c"), {"n": name, "c": chunk_no, "w": written})

    def note_verified(self, name: str, still_matching: int | None) -> None:
        """What verify found: rows of the whole table still matching ``where`` (None: nothing to check)."""
        with self._short_txn() as conn:
            conn.execute(text(f"UPDATE {SCHEMA}.backfills SET rows_still_matching = :m, verified_at = now() "
                              "WHERE name = :n"), {"n": name, "m": still_matching})

    def verified(self, name: str) -> tuple[int | None, datetime | None]:
        """(rows still matching ``where`` at the last verify, when); (None, None) before any verify."""
        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT to_jsonb(b) FROM {SCHEMA}.backfills b WHERE name = :n"), {"n": name}).scalar()
        row = row or {}
        at = row.get("verified_at")
        return row.get("rows_still_matching"), datetime.fromisoformat(at) if at else None

    def note_throttle(self, name: str, chunk_no: int, state: str | None, seconds: float = 0.0) -> None:
        """Outside a batch: record why the chunk is held back (shown by `rowfill status`) and time throttled.

        ``throttle_since`` keeps when the chunk began to be held for this same state (a new state starts
        it again, None clears it): a chunk deferred to Airflow's triggerer records that time when it runs
        again (``rowfill.store.waits.resume``), or here, when its hold turns into another one (a pause
        while it waited for the window), in the same transaction.
        """
        with self._short_txn() as conn:
            ended = conn.execute(_NOTE_THROTTLE, {"n": name, "c": chunk_no, "s": state[:500] if state else None,
                                                  "t": seconds}).first()
            if ended is not None and ended[1] is not None:
                waits.close_hold(conn, name, chunk_no, ended[0], float(ended[1]), KINDS)

    def finish(self, name: str, chunk_no: int) -> ChunkRow:
        """Mark the chunk done (its first ``finished_at`` is kept on a rerun) and return its row.
        Raises sqlalchemy's NoResultFound if the chunk no longer exists.
        """
        with self._short_txn() as conn:
            r = conn.execute(
                text(
                    f"UPDATE {SCHEMA}.chunks SET status = 'done', finished_at = coalesce(finished_at, now()), "
                    f"updated_at = now() WHERE backfill = :n AND chunk_no = :c RETURNING {_COLUMNS}"
                ),
                {"n": name, "c": chunk_no},
            ).one()
        return _row(r)

    def pause(self, name: str, chunk_no: int) -> None:
        """A chunk stopped on purpose at a batch boundary: not running, not failed, cursor kept."""
        with self._short_txn() as conn:
            conn.execute(
                text(f"UPDATE {SCHEMA}.chunks SET status = 'pending', updated_at = now() "
                     "WHERE backfill = :n AND chunk_no = :c AND status = 'running'"),
                {"n": name, "c": chunk_no},
            )

    def fail(self, name: str, chunk_no: int, error: str) -> None:
        """Mark the chunk failed with ``error`` (first 2,000 characters kept); a done chunk stays done."""
        with self._short_txn() as conn:
            conn.execute(
                text(
                    f"UPDATE {SCHEMA}.chunks SET status = 'failed', last_error = :e, updated_at = now() "
                    "WHERE backfill = :n AND chunk_no = :c AND status <> 'done'"
                ),
                {"n": name, "c": chunk_no, "e": error[:2000]},
            )

    def open_lowest(self, conn: Connection, name: str) -> int:
        """Inside planning: the lowest chunk starts "from the start" (lo NULL), whatever its key type.

        Plans made before this had an integer key's chunk 1 start at its minimum minus one, which
        left keys inserted below that minimum outside every chunk for good (and overflows at the
        type's minimum). Returns 1 if a stored plan was changed.
        """
        return conn.execute(
            text(f"UPDATE {SCHEMA}.chunks SET lo = 'null'::jsonb WHERE backfill = :n AND lo <> 'null'::jsonb "
                 f"AND chunk_no = (SELECT min(chunk_no) FROM {SCHEMA}.chunks WHERE backfill = :n)"),
            {"n": name},
        ).rowcount

    def reopen(self, conn: Connection, name: str, chunk_nos: list[int]) -> list[int]:
        """Inside planning: done chunks that hold rows still matching ``where`` are walked again from their start.

        The re-walk only writes rows that still match ``where`` (every write re-checks it), so what
        was written stays written once. ``rows_seen`` starts over with the walk (progress reads
        right); ``rows_written`` keeps counting. Returns the chunks that were still done.
        """
        if not chunk_nos:
            return []
        return list(conn.execute(
            text(f"UPDATE {SCHEMA}.chunks SET status = 'pending', cursor = NULL, finished_at = NULL, rows_seen = 0, "
                 "last_error = NULL, throttle_state = NULL, throttle_since = NULL, updated_at = now() "
                 "WHERE backfill = :n AND chunk_no = ANY(:c) AND status = 'done' RETURNING chunk_no"),
            {"n": name, "c": list(chunk_nos)},
        ).scalars())

    def note_task_instance(self, name: str, chunk_no: int, map_index: int) -> None:
        """Note the Airflow map index of the chunk's latest attempt: with the run id it names the task
        instance the UI links to and clears. Waits at most 10 s for the chunk row."""
        with self.engine.begin() as conn:
            set_local(conn, lock_timeout=10.0)
            conn.execute(_MAP_INDEX, {"m": map_index, "n": name, "c": chunk_no})

    def signature(self, name: str) -> tuple[int, int, int]:
        """(batches committed, chunks done, chunks running or pending) of backfill ``name``, in one aggregate:
        what the stall watchdog compares between readings (``rowfill.airflow.stall``)."""
        with self.engine.connect() as conn:
            batches, done, open_chunks = conn.execute(_SIGNATURE, {"n": name}).one()
        return int(batches), int(done), int(open_chunks)

    def reset(self, name: str) -> int:
        """Forget a backfill's plan and progress (rows already written stay written)."""
        with self.engine.begin() as conn:
            if not catalog.exists(conn, catalog.own("backfills")):
                return 0
            return conn.execute(text(f"DELETE FROM {SCHEMA}.backfills WHERE name = :n"), {"n": name}).rowcount
