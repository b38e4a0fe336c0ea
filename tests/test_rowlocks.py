"""Never make live writers wait behind a batch (issue 10, item 5; rowfill.engine.rowlocks).

Rows another session holds are skipped without waiting, recorded in ``rowfill.skipped_rows`` with
the checkpoint, and written once they are free; every row exactly once, whatever the key type
and write mode. A live write to a row of the batch completes while the application still holds
the row the batch met.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from helpers import spec_for, wait_until
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.store.checkpoint import CheckpointStore

N = 600

KEYS = {  # key kind -> (key columns DDL, key expression of g, spec key)
    "integer": ("id bigint PRIMARY KEY", "g", "id"),
    "text": ("id text PRIMARY KEY", "'k' || lpad(g::text, 5, '0')", "id"),
    "uuid": ("id uuid PRIMARY KEY", "md5(g::text)::uuid", "id"),
    "composite": ("tenant int, id int, PRIMARY KEY (tenant, id)", "g % 3, g", ["tenant", "id"]),
}


def items(engine, kind: str) -> None:
    columns, expr, _ = KEYS[kind]
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE items ({columns}, g int NOT NULL, n int NOT NULL DEFAULT 0, note text)"))
        cols = "tenant, id" if kind == "composite" else "id"
        conn.execute(text(f"INSERT INTO items ({cols}, g) SELECT {expr}, g FROM generate_series(1, {N}) g"))
        # rows that do not match `where` (already done): left alone by the where-specs
        conn.execute(text("UPDATE items SET note = 'before' WHERE g % 10 = 0"))
        conn.execute(text("ANALYZE items"))


PLUS_ONE = """
def plus_one(rows):
    return [r["n"] + 1 for r in rows]
"""


def spec_of(tmp_path, monkeypatch, kind: str, mode: str, **fields):
    key = KEYS[kind][2]
    base = dict(table="public.items", key=key, chunk_rows=10 * N, batch_rows=50, where=None, set={"n": "n + 1"})
    if mode == "set with where":
        base.update(where="note IS NULL", set={"n": "n + 1", "note": "'done'"})
    elif mode == "set reading another table":
        with_table = "(SELECT count(*) FROM one_row)"
        base.update(set={"n": f"n + {with_table}"})
    elif mode == "undo":
        base.update(undo=True)
    elif mode == "sql":
        base.update(set=None, sql="UPDATE items SET n = n + 1 WHERE id > :lo AND id <= :hi")
    elif mode == "transform":
        (tmp_path / "rowlocks_plus_one.py").write_text(PLUS_ONE)
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("rowlocks_plus_one", None)
        importlib.invalidate_caches()
        base.update(set=None, transform="rowlocks_plus_one:plus_one", select=["n"], returns=["n"])
    base.update(fields)
    return spec_for(tmp_path, name="items_n", **base)


class Holder:
    """The application: one open transaction holding row locks (``SELECT ... FOR UPDATE``)."""

    def __init__(self, engine, condition: str):
        self.conn = engine.connect()
        self.tx = self.conn.begin()
        self.keys = self.conn.execute(text(f"SELECT g FROM items WHERE {condition} ORDER BY g FOR UPDATE")).scalars().all()

    def release(self):
        if self.tx.is_active:
            self.tx.commit()
        self.conn.close()


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def skipped(engine) -> int | None:
    """Rows in rowfill.skipped_rows; None before the checkpoint store exists."""
    if not scalar(engine, "SELECT to_regclass('rowfill.skipped_rows') IS NOT NULL"):
        return None
    return scalar(engine, "SELECT count(*) FROM rowfill.skipped_rows")


def run_in_thread(engine, spec, chunk_no) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go():
        try:
            out["result"] = ChunkRunner(engine, spec).run(chunk_no)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            out["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


HELD = "g IN (7, 8, 9, 51, 52, 299, 301, 600)"  # scattered, two runs of neighbours, the first and last batch's edges


@pytest.mark.parametrize("kind,mode", [
    ("integer", "set"), ("integer", "set with where"), ("text", "set with where"), ("uuid", "set"),
    ("composite", "set with where"), ("integer", "set reading another table"), ("text", "undo"),
    ("integer", "sql"), ("uuid", "transform"), ("composite", "transform"),
])
def test_held_rows_are_skipped_then_written_once_released_every_row_once(engine, tmp_path, monkeypatch, kind, mode):
    items(engine, kind)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE one_row (x int)"))
        conn.execute(text("INSERT INTO one_row VALUES (1)"))
    spec = spec_of(tmp_path, monkeypatch, kind, mode)
    [chunk] = plan_backfill(engine, spec)
    holder = Holder(engine, HELD)
    thread, out = run_in_thread(engine, spec, chunk.chunk_no)
    try:
        # the walk gets past the held rows and writes everything else while they are held
        held_where = HELD if mode != "set with where" else f"{HELD} AND g % 10 <> 0"
        expected_skipped = scalar(engine, f"SELECT count(*) FROM items WHERE {held_where}")
        wait_until(lambda: skipped(engine) == expected_skipped and scalar(
            engine, "SELECT cursor IS NOT NULL AND cursor = hi FROM rowfill.chunks"), timeout=60, what="the walk past the held rows")
        assert thread.is_alive() and "error" not in out
        assert CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).status == "running"  # not done: rows are left
        todo = "TRUE" if mode != "set with where" else "g % 10 <> 0"
        assert scalar(engine, f"SELECT count(*) FROM items WHERE NOT ({HELD}) AND {todo} AND n <> 1") == 0
        assert scalar(engine, f"SELECT count(*) FROM items WHERE ({HELD}) AND n <> 0") == 0
    finally:
        holder.release()
    thread.join(60)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert out["result"].status == "done"
    # every row exactly once; rows outside `where` left alone
    if mode == "set with where":
        assert scalar(engine, "SELECT count(*) FROM items WHERE g % 10 <> 0 AND (n, note) IS DISTINCT FROM (1, 'done')") == 0
        assert scalar(engine, "SELECT count(*) FROM items WHERE g % 10 = 0 AND (n, note) IS DISTINCT FROM (0, 'before')") == 0
    else:
        assert scalar(engine, "SELECT count(*) FROM items WHERE n <> 1") == 0
    assert scalar(engine, "SELECT count(*) FROM rowfill.skipped_rows") == 0
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert row.rows_written == (N - N // 10 if mode == "set with where" else N)
    if mode == "undo":  # every written row has its undo record, the late ones too
        assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'items_n'") == N


def test_a_live_write_to_a_row_of_the_batch_completes_while_the_application_holds_another(engine, tmp_path, monkeypatch):
    """Today's single UPDATE waits for row 50 holding row 10; a live update of row 10 waits as long.

    Here the batch gives row 50 up: the live update of row 10 completes while row 50 is still held
    (its own lock_timeout is a safety net for the old behaviour, which would wait for ever).
    """
    items(engine, "integer")
    spec = spec_of(tmp_path, monkeypatch, "integer", "set", batch_rows=100, lock_timeout="1h")
    [chunk] = plan_backfill(engine, spec)
    holder = Holder(engine, "g = 50")
    thread, out = run_in_thread(engine, spec, chunk.chunk_no)
    try:
        # our batch has written row 10, or is waiting for row 50 with row 10 locked
        wait_until(lambda: scalar(engine, "SELECT n FROM items WHERE g = 10") == 1 or scalar(
            engine, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"), timeout=30)
        with engine.begin() as live:
            live.execute(text("SET LOCAL lock_timeout = '10s'"))
            live.execute(text("UPDATE items SET n = n + 100 WHERE g = 10"))
        assert holder.tx.is_active and thread.is_alive()  # row 50 is still held, the chunk not done
    finally:
        holder.release()
    thread.join(60)
    assert "error" not in out, out.get("error")
    assert scalar(engine, "SELECT n FROM items WHERE g = 10") == 101  # both writes, each once
    assert scalar(engine, "SELECT count(*) FROM items WHERE g <> 10 AND n <> 1") == 0


CHILD = """
import sys
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.spec.spec import load_spec

engine = engine_from_url(sys.argv[1])
spec = load_spec(sys.argv[2])
for chunk in plan_backfill(engine, spec, limit=100):
    ChunkRunner(engine, spec).run(chunk.chunk_no)
"""


def test_a_crash_between_skipping_and_revisiting_loses_no_key(engine, db_url, tmp_path, monkeypatch):
    items(engine, "text")
    spec = spec_of(tmp_path, monkeypatch, "text", "set")
    holder = Holder(engine, HELD)
    child = subprocess.Popen([sys.executable, "-c", CHILD, db_url, spec.source], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: skipped(engine) == 8, timeout=60, what="the skipped keys recorded")
        child.kill()  # SIGKILL: no clean-up of any kind
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        holder.release()
    assert scalar(engine, f"SELECT count(*) FROM items WHERE ({HELD}) AND n <> 0") == 0
    [chunk] = plan_backfill(engine, spec)  # unfinished: runs again
    result = ChunkRunner(engine, spec).run(chunk.chunk_no)
    assert result.status == "done"
    assert scalar(engine, "SELECT count(*) FROM items WHERE n <> 1") == 0
    assert scalar(engine, "SELECT count(*) FROM rowfill.skipped_rows") == 0


def test_locked_rows_wait_is_a_checked_duration(tmp_path):
    from rowfill.errors import SpecErrors

    assert spec_for(tmp_path).locked_rows_wait == 600.0
    assert spec_for(tmp_path, locked_rows_wait="30s").locked_rows_wait == 30.0
    with pytest.raises(SpecErrors, match="(?s)locked_rows_wait.*24h"):
        spec_for(tmp_path, locked_rows_wait="25h")
