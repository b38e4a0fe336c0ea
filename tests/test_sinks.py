"""Sinks and the search re-index: a sink gets every batch before the checkpoint moves past it, a
failing sink keeps the checkpoint before its batch, a crash after the sink returned sends that
batch again with the same identity (at least once, deduplicable), and the search_vector example
rebuilds every row with its GIN index in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import text

from helpers import example_spec
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.verify import verify_backfill
from rowfill.errors import ChunkFailed
from rowfill.examples.seed import seed_products
from rowfill.store.checkpoint import CheckpointStore

SINK = """
import json, os
from sqlalchemy import text
from rowfill.engine.database import engine_from_url

LOG = {log!r}
URL = {url!r}
engine = engine_from_url(URL)

def send(batch):
    with engine.connect() as conn:  # what another session sees while the sink runs
        cursor = conn.execute(text("SELECT (cursor #>> '{{}}')::bigint FROM rowfill.chunks WHERE backfill = :n "
                                   "AND status = 'running'"), {{"n": batch.backfill}}).scalar()
    with open(LOG, "a") as out:
        out.write(json.dumps({{"id": batch.id, "first": batch.first_key, "last": batch.last_key,
                              "keys": [r["id"] for r in batch.rows], "cursor": cursor,
                              "names": sorted(batch.rows[0])}}) + "\\n")
    {after}
"""


def sink_module(tmp_path, monkeypatch, db_url, name="product_sink", after="return None"):
    log = tmp_path / f"{name}.jsonl"
    (tmp_path / f"{name}.py").write_text(SINK.format(log=str(log), url=db_url, after=after))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name, log


def sent(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sink_spec(tmp_path, name, **changes):
    return example_spec(tmp_path, "products_search_export", **{"sink": f"{name}:send", "chunk_rows": 1_000,
                                                                "batch_rows": 100, "pause": 0, **changes})


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def test_each_batch_reaches_the_sink_before_the_checkpoint_moves_past_it(engine, db_url, tmp_path, monkeypatch):
    seed_products(engine, 2_500, index=False)
    name, log = sink_module(tmp_path, monkeypatch, db_url)
    spec = sink_spec(tmp_path, name, where="id % 10 <> 0")
    results = [ChunkRunner(engine, spec).run(c.chunk_no) for c in plan_backfill(engine, spec)]
    batches = sent(log)
    assert len(batches) == 25
    keys = [k for b in batches for k in b["keys"]]
    assert keys == [k for k in range(1, 2_501) if k % 10]  # every matching row once, in key order
    assert all(b["cursor"] is None or b["cursor"] < b["first"] for b in batches)  # not advanced while the sink ran
    assert all(b["names"] == ["category", "description", "id", "name", "price"] for b in batches)
    assert len({b["id"] for b in batches}) == 25 and all(b["id"].startswith("products_search_export:") for b in batches)
    assert sum(r.rows_written for r in results) == len(keys)  # rows sent count as written
    assert scalar(engine, "SELECT count(*) FROM products WHERE search_vector IS NOT NULL") == 0  # nothing written back
    assert verify_backfill(engine, spec).remaining is None  # `where` still matches: a sink writes elsewhere


def test_a_sink_that_fails_keeps_the_checkpoint_before_its_batch_and_the_retry_resends_it(engine, db_url, tmp_path, monkeypatch):
    seed_products(engine, 1_000, index=False)
    name, log = sink_module(tmp_path, monkeypatch, db_url, after="if batch.first_key == 401: raise ConnectionError('index unreachable')")
    spec = sink_spec(tmp_path, name)
    [chunk] = plan_backfill(engine, spec)
    with pytest.raises(ChunkFailed) as caught:
        ChunkRunner(engine, spec).run(chunk.chunk_no)
    assert "sink product_sink:send raised ConnectionError: index unreachable" in str(caught.value)
    assert "id 401..500" in str(caught.value)
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.cursor, row.rows_written) == ("failed", 400, 400)
    first_try = sent(log)
    assert [b["first"] for b in first_try] == [1, 101, 201, 301, 401]  # the sink got batch 5, then failed

    sink_module(tmp_path, monkeypatch, db_url, name=name)  # the index is back
    ChunkRunner(engine, spec).run(chunk.chunk_no)
    retry = sent(log)[len(first_try):]
    assert retry[0]["id"] == first_try[-1]["id"] and retry[0]["first"] == 401  # the same batch, the same identity
    assert [k for b in retry for k in b["keys"]] == list(range(401, 1_001))


CRASHING = """
import sys
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.spec.spec import load_spec
sys.path.insert(0, sys.argv[3])
engine = engine_from_url(sys.argv[1])
spec = load_spec(sys.argv[2])
for chunk in plan_backfill(engine, spec, limit=100):
    ChunkRunner(engine, spec).run(chunk.chunk_no)
"""


def test_a_crash_after_the_sink_returned_sends_that_batch_again_with_the_same_id(engine, db_url, tmp_path, monkeypatch):
    seed_products(engine, 600, index=False)
    # the worker dies right after the sink returned batch 3, before its checkpoint commits
    name, log = sink_module(tmp_path, monkeypatch, db_url, name="crash_sink",
                            after="import os, signal\n    if batch.first_key == 201 and not os.environ.get('SURVIVE'): "
                                  "os.kill(os.getpid(), signal.SIGKILL)")
    spec = sink_spec(tmp_path, name)
    child = subprocess.run([sys.executable, "-c", CRASHING, db_url, spec.source, str(tmp_path)], capture_output=True)
    assert child.returncode == -signal.SIGKILL
    assert [b["first"] for b in sent(log)] == [1, 101, 201]
    assert CheckpointStore(engine).chunks(spec.name)[0].cursor == 200

    done = subprocess.run([sys.executable, "-c", CRASHING, db_url, spec.source, str(tmp_path)],
                          env={**os.environ, "SURVIVE": "1"}, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    batches = sent(log)
    assert [b["first"] for b in batches] == [1, 101, 201, 201, 301, 401, 501]  # at least once: batch 3 twice
    assert batches[2]["id"] == batches[3]["id"]  # ... with the same identity, so the sink can skip it
    assert len({b["id"] for b in batches}) == 6


def test_the_example_export_sink_writes_each_batch_once_even_when_resent(engine, tmp_path, monkeypatch):
    seed_products(engine, 1_200, index=False)
    out = tmp_path / "export"
    monkeypatch.setenv("ROWFILL_SEARCH_EXPORT_DIR", str(out))
    spec = example_spec(tmp_path, "products_search_export", chunk_rows=500, batch_rows=250)
    for c in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(c.chunk_no)
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == 5
    CheckpointStore(engine).reset(spec.name)  # run it all again: every batch is resent ...
    for c in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(c.chunk_no)
    assert sorted(out.glob("*.jsonl")) == files  # ... and replaces its own file
    docs = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted(d["id"] for d in docs) == list(range(1, 1_201))
    assert docs[0]["price"] == str(scalar(engine, "SELECT price FROM products WHERE id = :i", i=docs[0]["id"]))


# -- the search re-index example ----------------------------------------------------------------

VECTOR = ("setweight(to_tsvector('english', coalesce(name, '')), 'A') || "
          "setweight(to_tsvector('english', coalesce(category, '')), 'B') || "
          "setweight(to_tsvector('english', coalesce(description, '')), 'C')")


def test_search_vectors_are_rebuilt_for_every_row_with_the_gin_index_in_place(engine, tmp_path):
    seed_products(engine, 3_000, index=True)
    with engine.begin() as conn:  # an old, different vector on some rows: "rebuilt for every row"
        conn.execute(text("UPDATE products SET search_vector = to_tsvector('simple', name) WHERE id % 4 = 0"))
    spec = example_spec(tmp_path, "products_search_vector", chunk_rows=1_000, batch_rows=200, pause=0)
    results = [ChunkRunner(engine, spec).run(c.chunk_no) for c in plan_backfill(engine, spec)]
    assert sum(r.rows_written for r in results) == 3_000
    assert scalar(engine, f"SELECT count(*) FROM products WHERE search_vector IS DISTINCT FROM {VECTOR}") == 0
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(conn.execute(text("EXPLAIN SELECT id FROM products WHERE search_vector @@ "
                                           "to_tsquery('english', 'kettle & travel')")).scalars())
        found = conn.execute(text("SELECT count(*) FROM products WHERE search_vector @@ to_tsquery('english', 'kettle & travel')")).scalar()
    assert "products_search_vector_idx" in plan  # the GIN index serves searches over the rebuilt vectors
    expected = scalar(engine, "SELECT count(*) FROM products WHERE name ILIKE '%kettle%' AND description ILIKE '%travel%'")
    assert found == expected > 0
