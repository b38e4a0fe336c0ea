"""Sinks: each batch of rows goes to a Python callable (an external search index, a queue, a file)
instead of back into the database.

The batch transaction still carries the checkpoint: the rows are read, the sink is called, and
only after it returns does the cursor advance and COMMIT. That makes a sink **at least once**,
not exactly once: the sink's system and PostgreSQL cannot commit together, so a crash after the
sink returned and before the COMMIT sends that batch again on the retry. Every batch therefore
carries a stable identity (``batch.id``: the same key range of the same backfill always gets the
same id), so a sink can skip a batch it has already applied, or simply write idempotently
(e.g. upsert documents by key).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from rowfill.engine.transform import RowReader, TransformError, load_callable
from rowfill.engine.writers import BatchWriter
from rowfill.spec.spec import Spec
from rowfill.sql.keys import encode, format_value


@dataclass(frozen=True)
class SinkBatch:
    """What a sink receives. ``id`` is stable across retries of the same key range."""

    id: str
    backfill: str
    first_key: Any  # first and last key of the batch (JSON values; a list for composite keys)
    last_key: Any
    key_columns: tuple[str, ...]
    rows: list[dict] = field(repr=False)

    def __len__(self) -> int:
        return len(self.rows)


def batch_id(spec: Spec, lo, hi) -> str:
    """``<backfill>:<16 hex>`` from what the batch means and the key range (lo, hi] it covers."""
    digest = hashlib.sha256(f"{spec.fingerprint}|{encode(lo)}|{encode(hi)}".encode()).hexdigest()[:16]
    return f"{spec.name}:{digest}"


class SinkError(TransformError):
    pass


class SinkWriter(BatchWriter):
    """``sink:`` mode: read the batch (``select`` + ``joins``, rows matching ``where``), hand it to the sink."""

    def build(self, conn):
        """Load the sink callable named by ``sink`` and the reader of ``select``/``joins``."""
        self.fn = load_callable(self.spec.sink, self.spec, "sink")
        self.reader = RowReader(self.spec, self.key)

    def apply(self, conn: Connection, lo, hi) -> int:
        """Read the batch and hand it to the sink; returns what the sink returns as a count, else the rows sent.
        Raises SinkError (the checkpoint stays before the batch, so the retry sends it again) if the sink raises.
        """
        self.prepare(conn)
        rows = self.reader.read(conn, lo, hi, self.batch_first)
        if not rows:
            return 0
        batch = SinkBatch(batch_id(self.spec, lo, hi), self.spec.name, self.batch_first, hi, self.key.columns, rows)
        try:
            sent = self.fn(batch)
        except Exception as exc:
            raise SinkError(
                f"sink {self.spec.sink} raised {type(exc).__name__}: {exc} for batch {batch.id} "
                f"({self.spec.key} {format_value(batch.first_key)}..{format_value(hi)}, {len(rows)} rows); "
                "the checkpoint stays before this batch, so the retry sends it again"
            ) from exc
        return sent if isinstance(sent, int) and not isinstance(sent, bool) else len(rows)

    def explain(self, conn, lo, hi):
        """``[("read", EXPLAIN text)]`` of the batch's read; the sink is not called."""
        self.prepare(conn)
        return [("read", self.reader.explain(conn, lo, hi, self.batch_first))]
