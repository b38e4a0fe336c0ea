"""Errors a person reads: each one says where the problem is and what to do about it."""

from __future__ import annotations


class RowfillError(Exception):
    """Base class for every error rowfill raises on purpose."""


class SpecError(RowfillError):
    """A spec that cannot be used, named by file and field so the fix is one edit away."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")


class SpecErrors(RowfillError):
    """Several spec errors at once, so a user fixes a file in one pass rather than one per parse."""

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class PlanChanged(RowfillError):
    """The spec's meaning changed after chunks were planned; continuing would mix two backfills."""


class ChunkFailed(RowfillError):
    """A chunk stopped; the checkpoint keeps everything committed before the failure."""
