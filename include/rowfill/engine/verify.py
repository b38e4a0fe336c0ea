"""The end-of-run checks: every planned chunk is done, and no row of the whole table still needs the work.

The second check covers the whole table, not only the planned range: rows below the first
planned key or above the last one that match ``where`` are found too. It reads the table in slices
of heap blocks (``rowfill.engine.sweep.heap_matching``: sequential reads, whatever the rows' keys),
or, for partitioned and inherited tables and servers before PostgreSQL 14, in key-range slices on
the key's index (``rowfill.engine.sweep.matching``); each slice is a short statement in its own
transaction, so it finishes on a 100M-row table without one long statement or snapshot.

It does not check each chunk's range at the end of its chunk task instead: that cannot replace
this check (rows the application writes after a chunk ends would go unseen), and it would not
make this one cheaper either, since this one reads every page again anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from rowfill.engine import reconnect
from rowfill.engine.resolve import pinned_spec
from rowfill.engine.sweep import SLICE_ROWS, BlockSlicer, heap_matching, matching
from rowfill.errors import RowfillError
from rowfill.spec.spec import Spec
from rowfill.sql.keys import chunk_label, format_value
from rowfill.sql.verify_scans import heap_sweep_possible
from rowfill.store.checkpoint import CheckpointStore


class VerificationFailed(RowfillError):
    pass


@dataclass(frozen=True)
class Verification:
    chunks: int
    remaining: int | None  # rows of the whole table still matching `where`; None without `where`
    sample_keys: list


def _advice(spec: Spec) -> str:
    if spec.mode in ("set", "transform"):
        return ("Rows the application wrote during or after the run can do this: run the backfill again, its plan "
                "walks again the done chunks that hold such rows and adds chunks for keys above the last one. If they "
                "still match after that, the write leaves them unmatched: check `where` against what `set`/the transform "
                "writes.")
    return ("Rows the application wrote during or after the run can do this. A run plans new chunks for keys above the "
            f"last one, but {spec.mode} mode never walks a done chunk again (rowfill cannot know whether the statement "
            f"may run twice on a row): handle rows inside the planned range with `rowfill reset {spec.name} --yes` and a "
            "new run, or a spec of their own.")


def verify_backfill(engine: Engine, spec: Spec, statement_timeout: float | None = None, slice_rows: int = SLICE_ROWS,
                    slicer: BlockSlicer | None = None, by_blocks: bool | None = None) -> Verification:
    """``_verify_backfill``, run again from the start if the connection is lost (``rowfill.engine.reconnect``): it only reads.

    ``statement_timeout`` (seconds; None = the spec's ``statement_timeout``, the limit its batches
    run under, so a sweep never holds a statement longer than the backfill's own writes may).
    """
    timeout = spec.statement_timeout if statement_timeout is None else statement_timeout
    return reconnect.call(lambda: _verify_backfill(engine, spec, timeout, slice_rows, slicer, by_blocks),
                          spec, "verifying")


def _verify_backfill(engine: Engine, spec: Spec, statement_timeout: float, slice_rows: int,
                     slicer: BlockSlicer | None, by_blocks: bool | None) -> Verification:
    """Raise VerificationFailed if a chunk is not done or a row anywhere in the table still matches ``where``.

    ``statement_timeout``: seconds each slice's statements may run (0 = no limit); a block slice
    that hits it is halved and run again (``rowfill.engine.sweep.SweepFailed`` when one block
    alone is too slow). ``by_blocks``: sweep in heap block slices (sized by ``slicer``) or key
    slices of ``slice_rows`` keys; None (the default) = blocks wherever the table and server allow
    (``rowfill.sql.verify_scans.heap_sweep_possible``). The table is the one pinned at planning
    (``rowfill.engine.resolve``; a changed relation raises SpecError on ``table``). Returns the number
    of chunks and of rows still matching (0, or None when there is no ``where`` to check). The
    count is kept on the backfill's row (``rowfill.backfills.rows_still_matching``, with
    ``verified_at``) for the summary, ``rowfill run`` and ``rowfill status``: it is what tells
    rows written apart from rows done (a new value that is NULL leaves a row matching
    ``where IS NULL``), counted once per run instead of in every batch.
    """
    spec = pinned_spec(engine, spec)
    store = CheckpointStore(engine)
    chunks = store.chunks(spec.name)
    unfinished = [c for c in chunks if not c.status.finished]
    if unfinished:
        first = unfinished[0]
        raise VerificationFailed(
            f"backfill {spec.name!r}: {len(unfinished)} of {len(chunks)} chunks are not done "
            f"(first: {chunk_label(spec.key, first.chunk_no, None, first.lo, first.hi, first.first_key)}, status {first.status}"
            f"{', error: ' + first.last_error if first.last_error else ''}). Clear the failed chunk tasks to resume them."
        )
    if not chunks or not spec.where or spec.mode == "sink":  # a sink changes nothing `where` could see
        return Verification(len(chunks), None, [])
    if by_blocks is None:
        with engine.connect() as conn:
            by_blocks = heap_sweep_possible(conn, spec.table.sql)
    if by_blocks:
        found = heap_matching(engine, spec, sample=5, statement_timeout=statement_timeout, slicer=slicer)
    else:
        found = matching(engine, spec, None, None, sample=5, rows=slice_rows, statement_timeout=statement_timeout)
    store.note_verified(spec.name, found.rows)
    if found.rows:
        raise VerificationFailed(
            f"backfill {spec.name!r}: {found.rows:,} rows of {spec.table} still match where ({spec.where}), e.g. "
            f"{spec.key} {', '.join(format_value(v) for v in found.keys)}. {_advice(spec)}"
        )
    return Verification(len(chunks), 0, [])
