"""Leases: tell a chunk whose runner is alive from one whose process is gone.

A chunk row says ``running`` from the moment a runner claims it until the runner finishes, fails
or stops at a batch boundary. A runner that is killed (``kill -9``, the OOM killer, a lost VM),
or that cannot record its failure because the database is down, leaves the row ``running`` for
good, and ``rowfill status`` used to show it running, with an ETA, long after its process was gone.

So a runner holds a lease while it runs: a heartbeat thread stamps the chunk's row in
``rowfill.leases`` every ``HEARTBEAT_SECONDS`` with the database's clock. A ``running`` chunk
whose last heartbeat (or, without a lease row, its last update) is older than ``LEASE_SECONDS``
is **stale**: ``rowfill status``, the summary and the progress page show it as stale, with no
rate or ETA from it. The next attempt of the chunk (an Airflow retry, a cleared task, ``rowfill
run``) takes it over and logs who held it. Taking over needs no lock of its own: batches of two
runners of one chunk already take turns on the chunk row (``CheckpointStore.lock_position``), and
each continues after what the other committed, so even a runner that was only frozen, not dead,
writes nothing twice.

Why a table of its own, not a column of ``rowfill.chunks``: a batch holds its chunk row locked
for as long as it runs (up to ``statement_timeout``), and a heartbeat on that row would wait
behind the very batch it vouches for.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

from rowfill.engine.disconnects import describe
from rowfill.spec.durations import format_duration
from rowfill.sql.session import set_local
from rowfill.store import leases
from rowfill.store.checkpoint import ChunkRow, CheckpointStore
from rowfill.store.states import ChunkState

log = logging.getLogger("rowfill.lease")

HEARTBEAT_SECONDS = 5.0  # how often a running chunk's runner stamps its lease
# A lease older than this is a runner that is gone: six heartbeats in a row missed. A heartbeat is
# one single-row upsert that nothing else locks and that does not wait for the WAL flush, so only
# a dead or frozen process (or a database that was away, until the runner reconnects) misses them.
LEASE_SECONDS = 30.0

def claim(store: CheckpointStore, name: str, chunk_no: int, worker: str, run_id: str | None,
          logger: logging.Logger | None = None) -> ChunkRow:
    """``store.start`` plus the lease; logs a takeover when another worker's attempt left the chunk running."""
    engine = store.engine
    with engine.connect() as conn:
        before = leases.holder(conn, name, chunk_no)
    row = store.start(name, chunk_no, worker, run_id)
    if not row.status.finished:
        with engine.begin() as conn:
            leases.claim(conn, name, chunk_no, worker)
    if before is not None and before.status == ChunkState.RUNNING and before.worker and before.worker != worker:
        age = before.quiet
        if age > LEASE_SECONDS:
            why = (f"whose lease ran out (last heartbeat {format_duration(age)} ago, more than {format_duration(LEASE_SECONDS)}): "
                   "its process is gone")
        else:
            why = (f"whose last heartbeat was {format_duration(age)} ago; should it still be alive, its batches and ours "
                   "take turns on the chunk row, so nothing is written twice")
        (logger or log).warning("takeover: chunk %d of backfill %s was left running by worker %s, %s; %s takes it over "
                                "from its checkpoint", chunk_no, name, before.worker, why, worker)
    return row


def stale_chunks(engine: Engine, name: str, lease: float = LEASE_SECONDS) -> set[int]:
    """Chunks of ``name`` marked running whose runner's lease ran out (empty if none, or no store yet)."""
    with engine.connect() as conn:
        return leases.stale(conn, name, lease)


class Heartbeat:
    """Renews a chunk's lease every ``HEARTBEAT_SECONDS`` from a daemon thread, until ``stop``.

    Failures are logged at debug level only: a database outage is reported (and ridden out) by
    the runner itself, and the lease simply runs out if the outage lasts.
    """

    def __init__(self, engine: Engine, name: str, chunk_no: int, worker: str, every: float = HEARTBEAT_SECONDS):
        self.engine, self.name, self.chunk_no, self.worker, self.every = engine, name, chunk_no, worker, every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rowfill-lease-{name}-{chunk_no}", daemon=True)

    def start(self) -> Heartbeat:
        """Start renewing from a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing; waits at most 2 seconds for a renewal in flight."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)  # a renewal stuck in connect is left to its daemon thread

    def _loop(self) -> None:
        while not self._stopped.wait(self.every):
            try:
                with self.engine.begin() as conn:
                    # best effort: its commit need not wait for the WAL flush (as rate samples, rowfill.store.rates)
                    set_local(conn, lock_timeout=2.0, synchronous_commit="off")
                    leases.renew(conn, self.name, self.chunk_no, self.worker)
            except Exception as exc:  # noqa: BLE001 - the runner reports outages; the lease runs out if it lasts
                log.debug("lease of chunk %d of %s not renewed: %s", self.chunk_no, self.name, describe(exc))
