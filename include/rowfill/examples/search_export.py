"""A sink example: send products to an external search index, here a folder of JSON-lines files.

Each batch becomes one file named by its batch id, written to a temporary name and renamed into
place, so a batch sent again after a crash (sinks are at-least-once; see rowfill.engine.sinks) replaces
its own file instead of adding duplicates: the same idea as upserting documents by id in a real
search engine. The folder is ``$ROWFILL_SEARCH_EXPORT_DIR`` (default /tmp/rowfill-search-export).
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path


def export_dir() -> Path:
    """The export folder: ``$ROWFILL_SEARCH_EXPORT_DIR``, default ``/tmp/rowfill-search-export``."""
    return Path(os.environ.get("ROWFILL_SEARCH_EXPORT_DIR", "/tmp/rowfill-search-export"))


def _plain(value):
    return str(value) if isinstance(value, Decimal) else value


def to_jsonl(batch) -> int:
    """The sink: write the batch to ``<batch id>.jsonl``, via a temporary file renamed into place.

    Renaming makes a batch sent again after a crash replace its own file (sinks are at-least-once).
    :param batch: the sink batch (``id``, ``rows`` as dicts); Decimal values are written as text.
    :returns: the number of rows sent.
    """
    folder = export_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (batch.id.replace(":", "_") + ".jsonl")
    tmp = target.with_suffix(".tmp")
    with tmp.open("w") as out:
        for row in batch.rows:
            out.write(json.dumps({k: _plain(v) for k, v in row.items()}, default=str) + "\n")
    tmp.replace(target)
    return len(batch.rows)
