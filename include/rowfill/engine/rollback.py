"""Planning and finishing a rollback: the undo log (``rowfill.engine.undo``) walked like a backfill.

``plan_rollback`` stops the forward backfill by forgetting its progress and plans the undo log's
chunks; the chunks run through the chunk runner with ``undo.RestoreWriter``; ``finish_rollback``
checks every chunk is done and the undo log empty, and frees the backfill to run again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from rowfill.engine.control import Control, ControlStore
from rowfill.engine.plan import plan_backfill
from rowfill.engine.resolve import pinned_relation, pinned_spec, record
from rowfill.engine.undo import NoUndo, no_undo_message, rollback_name, rollback_spec, undo_exists, undo_table
from rowfill.errors import RowfillError
from rowfill.spec.spec import Spec
from rowfill.store import backfills, schema
from rowfill.store import catalog as store_catalog
from rowfill.store import undo as undo_store
from rowfill.store.checkpoint import CheckpointStore
from rowfill.store.states import ControlState


class RollbackIncomplete(RowfillError):
    pass


def plan_rollback(engine: Engine, spec: Spec, *, limit: int | None = None, log=None):
    """Plan (or resume) the rollback, and stop the forward backfill by forgetting its progress.

    Forgetting the forward plan is what makes an in-flight chunk of it stop: its next batch finds
    no checkpoint row (a batch already running finishes first; the chunk row lock orders the two).

    :param engine: the target database. :param spec: the forward backfill (``undo: true``).
    :param limit: the most chunks to plan (Airflow's max_map_length). :param log: the planning logger.
    :returns: the rollback's chunks, as ``plan_backfill`` returns them.
    :raises NoUndo: when the spec has no ``undo: true``, or its undo log does not exist (it never ran).
    """
    if not spec.undo:
        raise NoUndo(no_undo_message(spec))
    store = CheckpointStore(engine)
    rb = rollback_spec(spec)
    with engine.begin() as conn:
        schema.check(conn, spec.source)  # read only: rowfill runs no DDL (`rowfill db migrate` does)
        if not undo_exists(conn, spec) and not backfills.names(conn) & {spec.name, rb.name}:
            raise NoUndo(f"backfill {spec.name!r} has `undo: true` but nothing in its undo log ({undo_table(spec.name)}) "
                         "yet: it never ran, so there is nothing to roll back.")
        # Under the backfill's planning lock: forget its progress (deleting its chunk rows waits for a batch
        # that is running, and makes the next one stop) and mark the rollback as started, in one commit.
        # After this no undo record can be added, so the plan below sees all of them.
        store.lock_planning(conn, spec.name)
        # the table to restore: the one the backfill was planned on (OID checked), kept on the rollback's
        # own row because the backfill's row goes now
        target = pinned_relation(conn, spec, (spec.name, rb.name))
        backfills.forget(conn, spec.name)
        if backfills.fingerprint(conn, rb.name) not in (None, rb.fingerprint):
            # planned by a release before migration 0002 over rowfill.undo_<name>: the migration moved the
            # records left into rowfill.undo_rows, so the rollback is planned again over those
            backfills.forget(conn, rb.name)
        store.register(conn, rb)
        record(conn, rb.name, target)
    return plan_backfill(engine, rb, limit=limit, log=log)


def rollback_target(engine: Engine, spec: Spec) -> Spec:
    """The backfill's spec with the table a rollback restores: pinned when the rollback was planned (OID checked)."""
    return pinned_spec(engine, spec, (rollback_name(spec.name), spec.name))


@dataclass(frozen=True)
class RollbackProgress:
    """A rollback planned and not finished yet: its chunks, and how many of them are done."""

    name: str  # the rollback's own name, ``<backfill>.rollback``
    chunks: int
    done: int


def rollback_in_progress(engine: Engine, backfill: str) -> RollbackProgress | None:
    """The rollback of ``backfill`` that is in progress, if any, so that controlling a backfill
    (``rowfill pause/resume/cancel NAME``) can reach its rollback too.

    A rollback is in progress from ``plan_rollback`` (which registers ``<backfill>.rollback`` in
    ``rowfill.backfills``) until ``finish_rollback`` forgets it: the same test forward planning
    makes before refusing to run (``rowfill.engine.undo.prepare_forward_plan``).

    :param engine: the target database. :param backfill: the backfill's name (not the rollback's).
    :returns: the rollback's name and chunk counts, or None (no rollback, or rowfill's schema not there yet).
    :raises sqlalchemy.exc.DBAPIError: the database could not be read.
    """
    name = rollback_name(backfill)
    with engine.connect() as conn:
        if not store_catalog.exists(conn, store_catalog.own("backfills")) or not backfills.exists(conn, name):
            return None
        chunks = CheckpointStore(engine).chunks(name, conn)
    return RollbackProgress(name, len(chunks), sum(c.status.finished for c in chunks))



CONTROL_ACTIONS = ("pause", "resume", "cancel")


def control_backfill(engine: Engine, store: ControlStore, backfill: str, action: str, reason: str | None
                     ) -> tuple[Control, tuple[Control, RollbackProgress | None] | None]:
    """Pause, resume or cancel a backfill, and its rollback in progress too: the one way the command
    (``rowfill pause NAME``) and the console reach both.

    A rollback's chunks read their own control row (``<backfill>.rollback``), so controlling the
    backfill writes both rows; ``resume`` also clears a rollback's row stopped earlier, so a stale
    pause cannot hold the next rollback. Each write sets a state: retried whole through a restart,
    writing it twice is harmless.

    :param engine: the target database. :param store: its control store.
    :param backfill: the backfill's name (not ``.rollback``). :param action: one of ``CONTROL_ACTIONS``.
    :param reason: the note kept with the state (who, why), or None.
    :returns: (the backfill's control row, (the rollback's row, its progress or None when it was only
        stopped) or None when no rollback was touched).
    :raises ValueError: an action not in ``CONTROL_ACTIONS``.
    :raises sqlalchemy.exc.DBAPIError: as the database does.
    """
    if action not in CONTROL_ACTIONS:
        raise ValueError(f"control_backfill: {action!r} is not one of {CONTROL_ACTIONS}")
    act = getattr(store, action)
    control = act(backfill, reason)
    progress = rollback_in_progress(engine, backfill)
    rollback = rollback_name(backfill)
    stopped = action == "resume" and store.get(rollback).state != ControlState.RUNNING
    if progress is None and not stopped:
        return control, None
    return control, (act(rollback, reason), progress)

@dataclass(frozen=True)
class RollbackResult:
    backfill: str
    chunks: int
    walked: int
    restored: int
    left_alone: int

    def line(self) -> str:
        """The closing line of a rollback: rows restored, and rows left alone because the application changed them."""
        return (f"{self.backfill}: rollback done, {self.restored:,} rows restored to their previous values"
                + (f", {self.left_alone:,} left alone because the application changed them after the backfill"
                   if self.left_alone else ""))


def finish_rollback(engine: Engine, spec: Spec) -> RollbackResult:
    """Every rollback chunk done and the undo log empty; otherwise say what is left and how to finish.

    :param engine: the target database. :param spec: the forward backfill.
    :returns: the RollbackResult (chunks, rows walked, restored, left alone); the rollback's progress is forgotten.
    :raises RollbackIncomplete: when a chunk is not done, or undo records were written while it ran (run it again).
    """
    rb = rollback_spec(spec)
    store = CheckpointStore(engine)
    chunks = store.chunks(rb.name)
    unfinished = [c for c in chunks if c.status != "done"]
    if unfinished:
        raise RollbackIncomplete(f"rollback of {spec.name!r}: {len(unfinished)} of {len(chunks)} chunks are not done "
                                 f"(first: chunk {unfinished[0].chunk_no}, {unfinished[0].status}); run it again to resume.")
    with engine.connect() as conn:
        left = undo_store.count(conn, spec.name)
    if left:
        store.reset(rb.name)  # so the next rollback walks the whole (small) undo log again
        raise RollbackIncomplete(
            f"rollback of {spec.name!r}: {left:,} undo records were written while the rollback ran (was a chunk of the "
            f"backfill still running?). Their rows still hold the backfill's values; run the rollback again to restore them.")
    walked = sum(c.rows_seen for c in chunks)
    restored = sum(c.rows_written for c in chunks)
    store.reset(rb.name)  # finished: the backfill may run again
    return RollbackResult(spec.name, len(chunks), walked, restored, walked - restored)
