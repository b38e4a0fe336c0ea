"""Named states of rowfill's own schema, with the groups code asks about.

Each vocabulary used to be bare strings spread over the engine, the CLI and the UI, so a
misspelt ``"don"`` compared unequal without a sound. They are ``StrEnum`` members now: each one
*is* its string (``ChunkState.DONE == "done"``), so the values stored in ``rowfill.chunks`` and
``rowfill.controls``, the JSON of ``rowfill status --json`` and the XCom payloads stay as they
were. The groups (``FINISHED``, ``ACTIVE`` ...) follow Shopify/maintenance_tasks' status groups:
ask "is it finished?", not "is it one of these three strings?".
"""

from __future__ import annotations

from enum import StrEnum


class ChunkState(StrEnum):
    """``rowfill.chunks.status`` (the CHECK constraint of migration 0001, ``rowfill.store.migrations``), plus ``stale``.

    ``stale`` is never stored: ``rowfill status`` shows a running chunk whose runner's lease ran out
    (``rowfill.engine.lease``) as stale.
    """

    PENDING = "pending"  # planned, or stopped on purpose (pause, window close) with its cursor kept
    RUNNING = "running"  # a runner holds it (or held it and died: see STALE)
    DONE = "done"  # every key of (lo, hi] walked
    FAILED = "failed"  # the last attempt raised; the next attempt continues from the cursor
    STALE = "stale"  # shown only: running, but its runner's lease ran out

    @property
    def finished(self) -> bool:
        """Nothing more to do for this chunk (a rerun is a no-op)."""
        return self in FINISHED_CHUNK

    @property
    def active(self) -> bool:
        """A runner holds the chunk, or held it until its lease ran out."""
        return self in ACTIVE_CHUNK


FINISHED_CHUNK = frozenset({ChunkState.DONE})
ACTIVE_CHUNK = frozenset({ChunkState.RUNNING, ChunkState.STALE})
# the stored values, in the order of the CHECK constraint
STORED_CHUNK = (ChunkState.PENDING, ChunkState.RUNNING, ChunkState.DONE, ChunkState.FAILED)


class BackfillState(StrEnum):
    """What ``rowfill status`` says of a whole backfill (``rowfill.engine.status``), from its chunks."""

    NOT_STARTED = "not started"  # never planned on this database
    PLANNED = "planned"  # planned, no batch yet
    WAITING = "waiting"  # some work done, nothing running now (between runs, paused, window closed)
    RUNNING = "running"  # at least one chunk runs
    STALE = "stale"  # nothing runs, a chunk's runner died; its next attempt takes it over
    FAILED = "failed"  # nothing runs, a chunk failed
    DONE = "done"  # every chunk done

    @property
    def finished(self) -> bool:
        """Every chunk is done."""
        return self is BackfillState.DONE

    @property
    def stuck(self) -> bool:
        """Goes nowhere until it runs again: no ETA comes from its last minute."""
        return self in STUCK_BACKFILL


STUCK_BACKFILL = frozenset({BackfillState.FAILED, BackfillState.STALE})


class ControlState(StrEnum):
    """``rowfill.controls.state``: what an operator asked of a backfill (``rowfill.engine.control``)."""

    RUNNING = "running"  # go on (the default when no row exists)
    PAUSED = "paused"  # stop at the next batch boundary; resume later from the cursor
    CANCELLED = "cancelled"  # stop at the next batch boundary and do not continue

    @property
    def stopping(self) -> bool:
        """Runners stop at their next batch boundary."""
        return self is not ControlState.RUNNING
