"""Pacing inside a chunk: pause and pause_ratio, batch sizes that follow target_batch_time when
rows get expensive, and the live-latency gate backing off while a probe is slow and speeding up
again when it recovers. Throttle fields are validated like every other spec field."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import text

from helpers import Lines, make_users, spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import BatchObserver, ChunkRunner
from rowfill.engine.throttle import BatchDone, Go, Throttle, Wait
from rowfill.errors import SpecErrors
from rowfill.store.checkpoint import CheckpointStore


class Batches(BatchObserver):
    def __init__(self):
        self.rows, self.seconds, self.cursors = [], [], []

    def batch_done(self, *, seen, seconds, cursor, **kw):
        self.rows.append(seen)
        self.seconds.append(seconds)
        self.cursors.append(cursor)


def pace(throttle: Throttle, seconds: float, rows: int) -> tuple[list[Wait], Go]:
    """Tell the throttle a batch of ``rows`` took ``seconds`` and ask again until it says go, as the
    runner does: the waits it decided on (nothing sleeps), and the go with the next batch's rows."""
    waits, decision = [], throttle.next(BatchDone(seconds, rows))
    while isinstance(decision, Wait):
        waits.append(decision)
        decision = throttle.next()
    assert isinstance(decision, Go), decision
    return waits, decision


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


# -- the spec ----------------------------------------------------------------------------------


def test_throttle_fields_are_read_from_the_spec(tmp_path):
    spec = spec_for(tmp_path, pause="20ms", pause_ratio=0.5, target_batch_time="300ms", batch_rows=500,
                    min_batch_rows=50, max_batch_rows=5000, latency_probe={"sql": "SELECT 1", "limit": "15ms"},
                    gates={"replica_lag": "10s", "active_backends": {"wait": 40, "critical": 150},
                           "probe": {"sql": "SELECT count(*) FROM jobs", "critical": 1000, "label": "jobs"}})
    assert (spec.pause, spec.pause_ratio, spec.target_batch_time) == (0.02, 0.5, 0.3)
    assert (spec.min_batch_rows, spec.max_batch_rows) == (50, 5000)
    assert spec.latency_probe.limit == 0.015 and spec.latency_probe.sql == "SELECT 1"
    assert (spec.gates["replica_lag"].wait, spec.gates["replica_lag"].critical) == (10.0, None)
    assert (spec.gates["active_backends"].wait, spec.gates["active_backends"].critical) == (40, 150)
    assert spec.gates["probe"].label == "jobs" and spec.gates["probe"].wait is None


@pytest.mark.parametrize("fields, field, message", [
    ({"pause_ratio": -1}, "pause_ratio", "from 0 up"),
    ({"target_batch_time": "soon"}, "target_batch_time", "write it like 100ms"),
    ({"min_batch_rows": 500, "batch_rows": 100}, "min_batch_rows", "above batch_rows"),
    ({"max_batch_rows": 50, "batch_rows": 100}, "max_batch_rows", "below batch_rows"),
    ({"gates": {"replica_lagg": "10s"}}, "gates", "unknown gate 'replica_lagg'"),
    ({"gates": {"replica_lag": {"wait": "10s", "critical": "5s"}}}, "gates", "critical (5s) is below wait (10s)"),
    ({"gates": {"active_backends": {"wait": 2.5}}}, "gates", "whole number"),
    ({"gates": {"probe": {"wait": 5}}}, "gates", "probe.sql"),
    ({"gates": {"lock_waiters": {}}}, "gates", "give a wait threshold, a critical one, or both"),
    ({"latency_probe": {"sql": "SELECT 1"}}, "latency_probe", "limit"),
    ({"latency_probe": {"sql": "SELECT 1", "limit": "0ms"}}, "latency_probe", "above 0"),
])
def test_bad_throttle_fields_name_the_field(tmp_path, fields, field, message):
    with pytest.raises(SpecErrors) as caught:
        spec_for(tmp_path, **fields)
    assert f"field '{field}'" in str(caught.value) and message in str(caught.value), str(caught.value)


# -- pause and pause_ratio ---------------------------------------------------------------------


def test_pause_and_pause_ratio_add_up():
    t = Throttle(pause=0.01, batch_rows=100, pause_ratio=0.5)
    first, _ = pace(t, 0.2, 100)
    second, _ = pace(t, 0.04, 100)
    assert [w.seconds for w in first + second] == pytest.approx([0.11, 0.03])
    assert [w.reason for w in first + second] == [None, None]  # the routine rest: not logged, no throttle state
    assert t.slept == pytest.approx(0.14)


# -- adaptive batch size -----------------------------------------------------------------------


def test_batch_size_follows_the_cost_per_row_within_its_bounds():
    """A simulated table: 1 ms per row, then 0.05 ms per row, then 2 ms per row."""
    t = Throttle(pause=0, batch_rows=100, target_batch_time=0.2, min_batch_rows=10, max_batch_rows=3000)
    sizes = []
    go = t.next()
    for per_row in [0.001] * 8 + [0.00005] * 12 + [0.002] * 4:
        rows = go.rows
        sizes.append(rows)
        waits, go = pace(t, rows * per_row + 0.002, rows)  # plus a fixed 2 ms per transaction
        assert waits == []  # pause 0: no rest between batches
    assert sizes[0] == 100
    assert all(195 <= n <= 200 for n in sizes[1:9]), sizes  # settles where a batch takes ~0.2 s
    assert all(b <= 2 * a for a, b in zip(sizes[8:15], sizes[9:16])), sizes  # cheaper rows: grows, at most x2
    assert set(sizes[14:21]) == {3000}  # ... up to max_batch_rows
    assert all(95 <= n <= 100 for n in sizes[21:]), sizes  # dearer rows: shrinks at once


def test_batch_time_converges_to_the_target_when_rows_become_expensive(engine, tmp_path):
    """Rows above id 6000 cost ~0.5 ms each (a trigger sleeps); the batches shrink to hold ~150 ms."""
    make_users(engine, 12_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ "
                          "BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER slow_row BEFORE UPDATE ON users FOR EACH ROW WHEN (NEW.id > 6000) "
                          "EXECUTE FUNCTION slow_row()"))
    target = 0.15
    spec = spec_for(tmp_path, chunk_rows=12_000, batch_rows=100, min_batch_rows=10, max_batch_rows=3_000,
                    target_batch_time="150ms")
    [chunk] = plan_backfill(engine, spec)
    batches = Batches()
    result = ChunkRunner(engine, spec, observers=[batches]).run(chunk.chunk_no)
    assert result.status == "done" and result.rows_written == 12_000

    cheap = [r for r, c in zip(batches.rows, batches.cursors) if c <= 6_000]
    expensive = [(r, s) for r, s, c, prev in zip(batches.rows, batches.seconds, batches.cursors, [0] + batches.cursors)
                 if prev >= 6_000]
    assert max(cheap) >= 1_600, cheap  # cheap rows: batches grew (x2 per batch from 100)
    settled = expensive[2:]
    assert len(settled) >= 10, expensive
    sizes = sorted(r for r, _ in settled)
    times = sorted(s for _, s in settled)
    median_time = times[len(times) // 2]
    assert 0.5 * target <= median_time <= 2 * target, (median_time, expensive)
    assert sizes[len(sizes) // 2] < max(cheap) / 4, (sizes, cheap)  # fewer rows per batch, where rows cost more


# -- the live-latency gate ---------------------------------------------------------------------


def test_the_latency_gate_backs_off_while_the_probe_is_slow_and_speeds_up_when_it_recovers(engine, tmp_path):
    make_users(engine, 24_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE live_app (slow boolean NOT NULL)"))
        conn.execute(text("INSERT INTO live_app VALUES (false)"))
    # the "application query": fast, until the test makes it slow
    probe = "SELECT pg_sleep(CASE WHEN slow THEN 0.03 ELSE 0 END) FROM live_app"
    spec = spec_for(tmp_path, chunk_rows=24_000, batch_rows=400, min_batch_rows=25, pause="20ms",
                    latency_probe={"sql": probe, "limit": "15ms", "every": "20ms"})
    [chunk] = plan_backfill(engine, spec)
    lines = Lines()
    log = logger_with(lines, "test.latency")
    throttle = Throttle.for_spec(spec, engine=engine, logger=log)
    batches = Batches()
    job = threading.Thread(target=lambda: ChunkRunner(engine, spec, throttle=throttle, observers=[batches], logger=log)
                           .run(chunk.chunk_no), daemon=True)
    job.start()

    def set_slow(flag):
        with engine.begin() as conn:
            conn.execute(text("UPDATE live_app SET slow = :s"), {"s": flag})

    def wait_for(check, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; log: {lines.lines[-5:]}"
            time.sleep(0.05)

    try:
        wait_for(lambda: len(batches.rows) >= 5, "some batches")
        assert throttle.level == 0 and set(batches.rows[:5]) == {400}
        set_slow(True)
        wait_for(lambda: throttle.level >= 3, "the throttle to back off three levels")
        n = len(batches.rows)
        wait_for(lambda: len(batches.rows) >= n + 2, "batches at the slower pace")
        assert max(batches.rows[n:]) <= 400 >> 3
        assert throttle.pause_after(0.0) >= 0.02 * 8
        set_slow(False)
        wait_for(lambda: throttle.level == 0, "the throttle to speed up again")
        n = len(batches.rows)
        wait_for(lambda: len(batches.rows) >= n + 2, "batches at full pace")
        assert batches.rows[n + 1] == 400
    finally:
        set_slow(False)
        job.join(120)
    assert not job.is_alive()
    backing = [l for l in lines.lines if "backing off" in l]
    assert backing and "latency probe" in backing[0] and "> 15 ms" in backing[0] and "batches of 200 rows" in backing[0]
    assert any("speeding up to batches of 400 rows" in l for l in lines.lines)
    row = CheckpointStore(engine).chunks(spec.name)[0]
    assert row.status == "done" and row.rows_written == 24_000
    assert row.throttled_seconds > throttle.slept * 0.9  # pauses, longer while backing off, are on record
    # the probe's statement cap was transaction-local: the pooled connections went back unchanged
    conns = [engine.connect() for _ in range(engine.pool.size())]
    try:
        assert {c.execute(text("SHOW statement_timeout")).scalar() for c in conns} == {"0"}
    finally:
        for c in conns:
            c.close()


def test_a_rest_says_which_part_of_it_the_latency_back_off_added():
    from rowfill.store.waits import WaitReason

    throttle = Throttle(pause=0.1, batch_rows=1000, pause_ratio=0.5)
    [rest], _ = pace(throttle, 0.2, 1000)
    assert (rest.kind, rest.reason, rest.backoff) == (WaitReason.REST, None, 0.0)  # full pace: all of it is the rest
    assert rest.seconds == pytest.approx(0.1 + 0.5 * 0.2)
    assert throttle.size.latency(0.05, 0.01, 1) == 1 and throttle.size.latency(0.05, 0.01, 1) == 1  # two levels back
    [rest], _ = pace(throttle, 0.2, 1000)
    assert rest.seconds == pytest.approx(0.2 * 4 + 0.05 * 3)  # (pause + ratio x batch) x 2^2, plus 50 ms per doubling
    assert rest.backoff == pytest.approx(rest.seconds - 0.2)  # what full pace would have rested is not the probe's
