"""Live control of a running backfill: pause stops chunks at a batch boundary and they wait (the
trigger wakes them on resume), cancel ends them with cursors kept, and knobs changed with
`rowfill set` take effect at the next batch and are logged. All through the real checkpoint
database, from the `rowfill` command and from a second session."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from sqlalchemy import text

from helpers import Lines, create_database, make_users, spec_for
from rowfill.airflow.triggers import ControlTrigger
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.control import BadKnob, ControlStore, parse_assignments
from rowfill.engine.plan import plan_backfill
from rowfill.engine.rollback import finish_rollback, plan_rollback, rollback_target
from rowfill.engine.runner import BatchObserver
from rowfill.engine.undo import RestoreWriter, rollback_spec
from rowfill.ops.cli import main
from legacy_schema import create_legacy_schema
from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.schema import migrate_database


class Batches(BatchObserver):
    def __init__(self):
        self.rows = []

    def batch_done(self, *, seen, **kw):
        self.rows.append(seen)


class ChunkInBackground:
    def __init__(self, engine, spec, chunk_no, **kw):
        self.lines = Lines()
        self.log = logging.getLogger(f"test.control.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self.lines)
        self.batches = Batches()
        self.outcome = self.error = None
        self.thread = threading.Thread(target=self._run, args=(engine, spec, chunk_no, kw), daemon=True)
        self.thread.start()

    def _run(self, engine, spec, chunk_no, kw):
        try:
            self.outcome = run_chunk(engine, spec, chunk_no, logger=self.log, observers=[self.batches], **kw)
        except Exception as exc:
            self.error = exc

    def wait_batches(self, n: int, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while len(self.batches.rows) < n:
            assert self.thread.is_alive() or len(self.batches.rows) >= n, f"chunk ended early: {self.error or self.outcome}"
            assert time.monotonic() < deadline, "the chunk made no progress"
            time.sleep(0.02)

    def join(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the chunk did not stop"
        assert self.error is None, self.error
        return self.outcome


def points_spec(tmp_path, **fields):
    return spec_for(tmp_path, name="add_points", where=None, set={"points": "points + 10"}, **fields)


def points(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT points, count(*) FROM users GROUP BY points")).all())


def cli(db_url, spec, *args) -> int:
    return main(["--db", db_url, "--specs-dir", str(spec.source.rsplit("/", 1)[0]), *args])


async def first_event(trigger, timeout: float):
    async def first():
        async for event in trigger.run():
            return event.payload
    return await asyncio.wait_for(first(), timeout)


def test_pause_stops_at_a_batch_boundary_and_resume_continues_from_the_cursor(engine, db_url, tmp_path, monkeypatch, capsys):
    make_users(engine, 3_000)
    spec = points_spec(tmp_path, chunk_rows=3_000, batch_rows=100, pause="30ms")
    [chunk] = plan_backfill(engine, spec)
    job = ChunkInBackground(engine, spec, chunk.chunk_no)
    job.wait_batches(3)

    assert cli(db_url, spec, "pause", "add_points", "--reason", "checkout traffic peak") == 0
    assert "add_points: paused; running chunks stop at their next batch boundary" in capsys.readouterr().out
    outcome = job.join()
    assert outcome.kind == "defer" and outcome.until is None  # waits for resume, not for a time
    assert outcome.result.status == "stopped"
    assert "paused with `rowfill pause`: checkout traffic peak" in outcome.reason
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert row.status == "pending" and row.cursor == row.rows_written and 0 < row.rows_written < 3_000
    assert row.throttle_state.startswith("paused with `rowfill pause`")
    assert any("stopping at a batch boundary (paused" in line for line in job.lines.lines)
    done_at_pause = row.rows_written

    # a chunk that starts while paused does not start writing at all
    again = run_chunk(engine, spec, chunk.chunk_no)
    assert again.kind == "defer" and again.result is None

    # the deferred chunk's trigger waits ... and fires when someone resumes
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    trigger = ControlTrigger("app_db", spec.name, wait_for_resume=True, poll_interval=0.2)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(first_event(trigger, 1.0))
    assert CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).rows_written == done_at_pause

    assert cli(db_url, spec, "status", "add_points") == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("paused")
    assert cli(db_url, spec, "resume", "add_points") == 0
    assert asyncio.run(first_event(trigger, 10)) == {"event": "resumed"}

    final = run_chunk(engine, spec, chunk.chunk_no)
    assert final.kind == "done"
    assert points(engine) == {10: 3_000}  # every row once: nothing lost, nothing twice
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.rows_written, row.throttle_state, row.attempts) == ("done", 3_000, None, 1)


def test_cancel_ends_the_chunk_with_its_cursor_kept(engine, db_url, tmp_path, monkeypatch, capsys):
    make_users(engine, 3_000)
    spec = points_spec(tmp_path, chunk_rows=3_000, batch_rows=100, pause="30ms")
    [chunk] = plan_backfill(engine, spec)
    job = ChunkInBackground(engine, spec, chunk.chunk_no)
    job.wait_batches(3)
    assert cli(db_url, spec, "cancel", "add_points") == 0
    outcome = job.join()
    assert outcome.kind == "cancelled" and outcome.result.status == "stopped"
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert row.status == "pending" and row.cursor == row.rows_written > 0
    assert row.throttle_state.startswith("cancelled with `rowfill cancel`")
    assert points(engine) == {10: row.rows_written, 0: 3_000 - row.rows_written}

    # cancelled stays cancelled: a new go does nothing
    assert run_chunk(engine, spec, chunk.chunk_no).kind == "cancelled"
    assert CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).rows_written == row.rows_written

    # a chunk waiting for its window hears about a cancel at once, not when the window opens
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    far = "2999-01-01T00:00:00+00:00"
    assert asyncio.run(first_event(ControlTrigger("app_db", spec.name, until=far, poll_interval=0.2), 10)) == {"event": "cancelled"}

    assert cli(db_url, spec, "resume", "add_points") == 0
    assert run_chunk(engine, spec, chunk.chunk_no).kind == "done"
    assert points(engine) == {10: 3_000}


def test_live_knobs_take_effect_at_the_next_batch_and_are_logged(engine, db_url, tmp_path, capsys):
    make_users(engine, 4_000)
    spec = points_spec(tmp_path, chunk_rows=4_000, batch_rows=100, pause="20ms")
    [chunk] = plan_backfill(engine, spec)
    job = ChunkInBackground(engine, spec, chunk.chunk_no)
    job.wait_batches(3)
    assert cli(db_url, spec, "set", "add_points", "batch_rows=25", "pause=5ms") == 0
    assert "live knobs: batch_rows=25, pause=5 ms" in capsys.readouterr().out
    changed_at = len(job.batches.rows)
    outcome = job.join()
    assert outcome.kind == "done"
    rows = job.batches.rows
    assert set(rows[:3]) == {100}
    assert set(rows[changed_at + 1:]) == {25}  # from the next batch on (one may have been under way)
    assert any("live change takes effect: batch_rows 100 -> 25, pause 20 ms -> 5 ms" in l for l in job.lines.lines), job.lines.lines
    assert points(engine) == {10: 4_000}

    # knobs stay until unset, and a new chunk starts with them
    assert ControlStore(engine).get(spec.name).knobs == {"batch_rows": 25, "pause": 0.005}
    assert cli(db_url, spec, "set", "add_points", "--unset", "batch_rows") == 0
    assert ControlStore(engine).get(spec.name).knobs == {"pause": 0.005}
    assert cli(db_url, spec, "set", "add_points", "--reset") == 0
    assert ControlStore(engine).get(spec.name).knobs == {}


def test_a_gate_threshold_changed_live_holds_and_then_releases_the_chunk(engine, db_url, tmp_path, capsys):
    make_users(engine, 6_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE queue (depth int NOT NULL)"))
        conn.execute(text("INSERT INTO queue VALUES (500)"))
    spec = points_spec(tmp_path, chunk_rows=6_000, batch_rows=100, pause="20ms",
                       gates={"probe": {"sql": "SELECT depth FROM queue", "wait": 1000, "label": "queue depth"}})
    [chunk] = plan_backfill(engine, spec)
    job = ChunkInBackground(engine, spec, chunk.chunk_no)
    job.wait_batches(3)
    assert cli(db_url, spec, "set", "add_points", "probe.wait=100") == 0
    deadline = time.monotonic() + 20
    while not ((row := CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)).throttle_state or "").startswith("waiting"):
        assert time.monotonic() < deadline, "the chunk did not start waiting"
        time.sleep(0.05)
    assert "queue depth 500 > 100" in row.throttle_state
    assert cli(db_url, spec, "set", "add_points", "probe.wait=off") == 0
    assert job.join().kind == "done"
    assert any("live change takes effect: probe.wait 1000 -> 100" in l for l in job.lines.lines)
    assert any("probe.wait 100 -> off" in l for l in job.lines.lines)
    assert points(engine) == {10: 6_000}


def test_trigger_parameters_apply_to_one_run_and_live_knobs_win_over_them(engine, tmp_path):
    make_users(engine, 1_000)
    spec = points_spec(tmp_path, chunk_rows=1_000, batch_rows=100)
    [chunk] = plan_backfill(engine, spec)
    batches = Batches()
    ControlStore(engine).set_knobs(spec.name, {"pause": 0.0})
    outcome = run_chunk(engine, spec, chunk.chunk_no, overrides={"batch_rows": 250, "pause": 5.0}, observers=[batches])
    assert outcome.kind == "done" and batches.rows == [250] * 4
    assert outcome.result.seconds < 5  # the live pause=0 won over the run's pause of 5 s


@pytest.mark.parametrize("assignment, message", [
    ("batch_rows=0", "not valid"),
    ("batch_rows=many", "not valid"),
    ("pause=soon", "write it like 100ms"),
    ("replica_lag.wait=-1s", "not valid"),
    ("active_backends.wait=2.5", "whole number"),
    ("speed=fast", "unknown knob 'speed'; live knobs are: batch_rows"),
    ("batch_rows", "write knobs as name=value"),
])
def test_bad_knobs_are_refused_with_advice(assignment, message):
    with pytest.raises(BadKnob) as caught:
        parse_assignments([assignment])
    assert message in str(caught.value)


def test_knobs_parse_like_spec_fields():
    assert parse_assignments(["batch_rows=2000", "pause=50ms", "pause_ratio=0.5", "target_batch_time=off",
                              "replica_lag.wait=5s", "active_backends.critical=100", "latency_limit=20ms"]) == {
        "batch_rows": 2000, "pause": 0.05, "pause_ratio": 0.5, "target_batch_time": None,
        "replica_lag.wait": 5.0, "active_backends.critical": 100.0, "latency_limit": 0.02}


def test_control_commands_name_unknown_backfills(db_url, tmp_path, capsys):
    spec = spec_for(tmp_path)
    assert cli(db_url, spec, "pause", "nope") == 1
    assert "no spec named 'nope'" in capsys.readouterr().err
    assert cli(db_url, spec, "set", "users_full_name", "speed=fast") == 1
    assert "unknown knob 'speed'" in capsys.readouterr().err


def test_the_progress_page_buttons_pause_and_resume_through_the_same_control(engine, tmp_path):
    from rowfill.airflow.web import control_hook
    from rowfill.engine.control import ControlStore

    spec = spec_for(tmp_path)
    hook = control_hook()
    assert hook is not None  # the page shows its pause/resume buttons
    hook.pause(engine, spec, "admin")
    assert hook.state(engine, spec) == "paused"
    assert "from the Airflow UI by admin" in ControlStore(engine).get(spec.name).note
    hook.resume(engine, spec, "admin")
    assert hook.state(engine, spec) == "running"


def test_rowfill_run_honours_cancel_and_resume(engine, db_url, tmp_path, capsys):
    make_users(engine, 1_000)
    spec = points_spec(tmp_path, chunk_rows=500, batch_rows=100)
    assert cli(db_url, spec, "cancel", "add_points") == 0
    assert cli(db_url, spec, "run", "add_points") == 0
    out = capsys.readouterr().out
    assert "cancelled with `rowfill cancel`; stopped, cursors kept" in out
    assert points(engine) == {0: 1_000}
    assert cli(db_url, spec, "resume", "add_points") == 0
    assert cli(db_url, spec, "run", "add_points") == 0
    assert points(engine) == {10: 1_000}


def test_existing_checkpoint_tables_get_the_new_columns(pg_cluster):
    """Installs from before the throttle kept their rowfill.chunks; the first migration adds what is missing."""
    engine = engine_from_url(create_database(pg_cluster, "legacy_throttle", migrated=False))
    create_legacy_schema(engine, first_release=True)  # the tables as the first release created them
    with engine.begin() as conn:
        columns = conn.execute(text("SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = 'rowfill.chunks'::regclass")).scalar()
        assert "throttled_seconds" not in columns
        conn.execute(text("INSERT INTO rowfill.backfills (name, fingerprint, spec) VALUES ('old', 'x', '{}')"))
        conn.execute(text("INSERT INTO rowfill.chunks (backfill, chunk_no, lo, hi, est_rows) VALUES ('old', 1, '0', '10', 10)"))
    migrate_database(engine)
    migrate_database(engine)  # and again: nothing to do the second time
    [row] = CheckpointStore(engine).chunks("old")
    assert (row.throttled_seconds, row.throttle_state) == (0.0, None)
    engine.dispose()


def test_rollback_chunks_honour_pause_and_cancel(engine, db_url, tmp_path, capsys):
    """Rollback chunks take the backfill chunks' path (``run_chunk``): `rowfill pause/cancel NAME.rollback`
    stops them at a batch boundary with the cursor kept, and the resumed rollback restores every row once."""
    make_users(engine, 3_000)
    spec = points_spec(tmp_path, chunk_rows=3_000, batch_rows=100, pause="30ms", undo=True)
    assert all(run_chunk(engine, spec, c.chunk_no).kind == "done" for c in plan_backfill(engine, spec))
    assert points(engine) == {10: 3_000}
    rb = rollback_spec(spec)
    chunks = plan_rollback(engine, spec)
    restore = {"writer": RestoreWriter(rb, rollback_target(engine, spec)), "check_table": False}
    job = ChunkInBackground(engine, rb, chunks[0].chunk_no, **restore)
    job.wait_batches(3)

    assert cli(db_url, spec, "pause", "add_points.rollback") == 0
    assert "add_points.rollback: paused" in capsys.readouterr().out
    outcome = job.join()
    assert outcome.kind == "defer" and outcome.until is None and outcome.result.status == "stopped"
    row = CheckpointStore(engine).chunk(rb.name, chunks[0].chunk_no)
    assert row.status == "pending" and 0 < row.rows_written < 3_000
    assert row.throttle_state.startswith("paused with `rowfill pause`")
    assert points(engine) == {0: row.rows_written, 10: 3_000 - row.rows_written}
    assert run_chunk(engine, rb, chunks[0].chunk_no, **restore).kind == "defer"  # paused: nothing starts

    assert cli(db_url, spec, "cancel", "add_points.rollback") == 0
    assert run_chunk(engine, rb, chunks[0].chunk_no, **restore).kind == "cancelled"
    assert CheckpointStore(engine).chunk(rb.name, chunks[0].chunk_no).rows_written == row.rows_written

    assert cli(db_url, spec, "resume", "add_points.rollback") == 0
    assert all(run_chunk(engine, rb, c.chunk_no, **restore).kind == "done" for c in chunks)
    assert finish_rollback(engine, spec).restored == 3_000
    assert points(engine) == {0: 3_000}  # every row restored once


def test_pausing_a_backfill_pauses_its_rollback_in_progress(engine, db_url, tmp_path, capsys):
    """`rowfill pause NAME` reaches a running rollback of NAME too (its chunks read the control row
    ``NAME.rollback``): it stops at a batch boundary with its cursor kept, says so, `rowfill resume NAME`
    lets it go on, and every row is restored exactly once."""
    make_users(engine, 3_000)
    spec = points_spec(tmp_path, chunk_rows=3_000, batch_rows=100, pause="30ms", undo=True)
    assert all(run_chunk(engine, spec, c.chunk_no).kind == "done" for c in plan_backfill(engine, spec))
    rb = rollback_spec(spec)
    chunks = plan_rollback(engine, spec)
    restore = {"writer": RestoreWriter(rb, rollback_target(engine, spec)), "check_table": False}
    job = ChunkInBackground(engine, rb, chunks[0].chunk_no, **restore)
    job.wait_batches(3)

    assert cli(db_url, spec, "pause", "add_points", "--reason", "month-end close") == 0
    out = capsys.readouterr().out
    assert "add_points: paused; running chunks stop at their next batch boundary" in out
    assert (f"add_points.rollback: paused too, its rollback in progress (0 of {len(chunks)} chunks done); running "
            "chunks stop at their next batch boundary and wait, without holding a worker slot, until "
            "`rowfill resume add_points`") in out
    outcome = job.join()
    assert outcome.kind == "defer" and outcome.until is None and outcome.result.status == "stopped"
    assert "month-end close" in outcome.reason
    row = CheckpointStore(engine).chunk(rb.name, chunks[0].chunk_no)
    assert row.status == "pending" and 0 < row.rows_written < 3_000
    assert points(engine) == {0: row.rows_written, 10: 3_000 - row.rows_written}
    assert run_chunk(engine, rb, chunks[0].chunk_no, **restore).kind == "defer"  # paused: nothing starts

    assert cli(db_url, spec, "resume", "add_points") == 0
    assert "add_points.rollback: running too" in capsys.readouterr().out
    assert all(run_chunk(engine, rb, c.chunk_no, **restore).kind == "done" for c in chunks)
    result = finish_rollback(engine, spec)
    assert (result.walked, result.restored, result.left_alone) == (3_000, 3_000, 0)  # each row restored once
    assert points(engine) == {0: 3_000}

    # with no rollback in progress, pausing the backfill touches only the backfill
    assert cli(db_url, spec, "pause", "add_points") == 0
    assert ".rollback" not in capsys.readouterr().out
    assert ControlStore(engine).get(rb.name).state == "running"
