"""Throttle waits over time (issue 14): real chunks held back by their rest, a gate, the latency probe,
a closed window and an operator's pause leave rows in ``rowfill.wait_samples`` with the right reason and
the seconds they waited; a chunk deferred outside its runner counts from when it was held; the
backfill's page draws them (and the probe against its limit) as SVG from those rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from helpers import make_users, spec_for, wait_until, write_spec
from rowfill.console.states import WaitReason
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.control import ControlStore
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.throttle import Throttle
from rowfill.store import waits
from rowfill.store.checkpoint import CheckpointStore

SUMS = ("SELECT coalesce(sum(rest_seconds), 0) AS rest, coalesce(sum(latency_seconds), 0) AS latency, "
        "coalesce(sum(gate_seconds), 0) AS gate, coalesce(sum(window_seconds), 0) AS window, "
        "coalesce(sum(pause_seconds), 0) AS pause, coalesce(sum(other_seconds), 0) AS other, "
        "max(latency_worst) AS worst, max(latency_limit) AS lim, count(*) AS n "
        "FROM rowfill.wait_samples WHERE backfill = :n")


def sums(engine, name: str):
    with engine.connect() as conn:
        return conn.execute(text(SUMS), {"n": name}).one()


def waited(row) -> float:
    return row.rest + row.latency + row.gate + row.window + row.pause + row.other


def test_rest_and_the_latency_back_off_are_recorded_as_they_happen_with_the_probe_readings(engine, db_url, tmp_path,
                                                                                              monkeypatch):
    from rowfill.airflow.web import backfill_page

    make_users(engine, 400)
    probe = {"sql": "SELECT pg_sleep(0.03)", "limit": "10ms", "every": "20ms"}  # always over its limit
    write_spec(tmp_path, chunk_rows=1_000, batch_rows=100, pause="20ms", latency_probe=probe)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100, pause="20ms", latency_probe=probe)
    [chunk] = plan_backfill(engine, spec)
    started = time.monotonic()
    result = ChunkRunner(engine, spec).run(chunk.chunk_no)
    elapsed = time.monotonic() - started
    assert result.status == "done" and result.batches == 4

    row = sums(engine, spec.name)
    assert row.rest > 0 and row.latency > 0 and row.gate == row.window == row.pause == row.other == 0
    assert row.rest >= 0.02 * 3 - 0.001  # 20 ms after each of the first three batches at least (the fourth ends it)
    throttled = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).throttled_seconds
    assert abs(waited(row) - throttled) < 0.01  # the same sleeps as the checkpoint row's total
    assert waited(row) < elapsed  # plausibly: no more than the chunk took
    assert row.worst >= 0.03 and row.lim == 0.01  # the probe's readings, seconds, and its limit

    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    page = backfill_page(spec)
    chart = page.split("aria-label='throttle waits by reason")[1].split("</svg>")[0]
    assert "data-layer='rest between batches'" in chart and "data-layer='latency back-off'" in chart
    assert "data-layer='gate'" not in chart  # only reasons that waited are drawn
    latency = page.split("aria-label='latency probe")[1].split("</svg>")[0]
    assert ">limit<" in latency and ("<polyline" in latency or "<circle" in latency)
    assert "no data yet" not in latency


def test_a_gate_wait_is_recorded_as_gate_with_the_time_it_held(engine, tmp_path):
    import threading

    make_users(engine, 1_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE queue (depth int NOT NULL)"))
        conn.execute(text("INSERT INTO queue VALUES (500)"))
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100,
                    gates={"probe": {"sql": "SELECT depth FROM queue", "wait": 100, "critical": 1000, "label": "queue depth"}})
    [chunk] = plan_backfill(engine, spec)
    throttle = Throttle.for_spec(spec, engine=engine)
    throttle.gates.max_backoff = 0.5  # look again every half second while held
    runner = ChunkRunner(engine, spec, throttle=throttle)
    job = threading.Thread(target=runner.run, args=(chunk.chunk_no,), daemon=True)
    job.start()
    wait_until(lambda: "queue depth" in (CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).throttle_state or ""),
               what="the gate to hold the chunk")
    held_from = time.monotonic()
    wait_until(lambda: sums(engine, spec.name).gate >= 1.0, what="the gate's wait to be recorded while it holds")
    with engine.begin() as conn:
        conn.execute(text("UPDATE queue SET depth = 10"))
    job.join(60)
    held = time.monotonic() - held_from
    assert not job.is_alive()
    row = sums(engine, spec.name)
    assert 1.0 <= row.gate <= held + 1.5  # the sleeps it was held for (0.5 s each), recorded once a second
    assert row.window == row.pause == row.latency == 0
    done = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert done.status == "done" and abs(waited(row) - done.throttled_seconds) < 0.01


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_deferred_waits_count_from_when_the_chunk_was_held_until_it_runs_again(engine, tmp_path):
    make_users(engine, 300)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100,
                    window={"start": "01:00", "end": "05:00", "timezone": "UTC"})
    [chunk] = plan_backfill(engine, spec)
    clock = Clock(datetime(2026, 1, 10, 0, 30, tzinfo=UTC))
    assert run_chunk(engine, spec, chunk.chunk_no, clock=clock).kind == "defer"  # outside the window: deferred
    assert run_chunk(engine, spec, chunk.chunk_no, clock=clock).kind == "defer"  # woken early: still the same hold
    time.sleep(0.6)
    with engine.connect() as conn:  # while it waits, the chart shows it from when it was held up to now
        since = conn.execute(text("SELECT extract(epoch FROM throttle_since) FROM rowfill.chunks WHERE backfill = :n"),
                             {"n": spec.name}).scalar()
        found = waits.steps(conn, spec.name, 6 * 3600, 240, [(WaitReason.WINDOW, float(since))])
    assert found is not None and 0.5 <= sum(found.seconds[WaitReason.WINDOW]) <= 5.0
    time.sleep(0.6)

    ControlStore(engine).pause(spec.name, "peak")  # then an operator pauses it before the window opens
    clock.now = datetime(2026, 1, 10, 1, 0, tzinfo=UTC)
    assert run_chunk(engine, spec, chunk.chunk_no, clock=clock).kind == "defer"  # paused: held for another reason
    row = sums(engine, spec.name)  # the window's hold ended where the pause's began: recorded then
    assert 1.2 <= row.window <= 5.0 and row.pause == 0
    time.sleep(1.0)
    ControlStore(engine).resume(spec.name)
    outcome = run_chunk(engine, spec, chunk.chunk_no, clock=clock)
    assert outcome.kind == "done"
    row = sums(engine, spec.name)  # and the pause's when the chunk ran again
    assert 1.2 <= row.window <= 5.0 and 1.0 <= row.pause <= 3.0
    done = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert done.status == "done" and done.throttle_state is None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT throttle_since FROM rowfill.chunks WHERE backfill = :n"),
                            {"n": spec.name}).scalar() is None


def test_a_window_deferral_is_recorded_when_the_window_opens(engine, tmp_path):
    make_users(engine, 300)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100,
                    window={"start": "01:00", "end": "05:00", "timezone": "UTC"})
    [chunk] = plan_backfill(engine, spec)
    clock = Clock(datetime(2026, 1, 10, 0, 30, tzinfo=UTC))
    assert run_chunk(engine, spec, chunk.chunk_no, clock=clock).kind == "defer"
    held = time.monotonic()
    time.sleep(1.2)
    clock.now += timedelta(minutes=31)  # the triggerer wakes it when the window opens
    assert run_chunk(engine, spec, chunk.chunk_no, clock=clock).kind == "done"
    row = sums(engine, spec.name)
    assert 1.2 <= row.window <= time.monotonic() - held + 0.2 and row.pause == 0


def test_airflow_s_dag_toggle_counts_as_an_operator_pause(engine, tmp_path):
    make_users(engine, 500)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100)
    [chunk] = plan_backfill(engine, spec)
    asked = []

    def dag_paused():
        asked.append(1)
        return "the Airflow DAG rowfill_x is paused (its toggle); un-pause it to resume from the cursor" \
            if len(asked) == 3 else None

    assert run_chunk(engine, spec, chunk.chunk_no, should_stop=dag_paused).kind == "interrupted"
    time.sleep(1.0)
    assert run_chunk(engine, spec, chunk.chunk_no).kind == "done"
    row = sums(engine, spec.name)
    assert 1.0 <= row.pause <= 3.0 and row.window == 0


def test_the_least_privileged_role_s_grants_cover_the_wait_samples():
    from rowfill.store import grants

    printed = "\n".join(grants.grant_statements("app", "appdb"))
    assert "rowfill.wait_samples" in printed.split("SELECT, INSERT, UPDATE, DELETE ON")[1].split("\n")[0]


def test_chart_steps_spread_a_long_wait_back_over_the_time_it_covered(engine, tmp_path):
    make_users(engine, 100)
    spec = spec_for(tmp_path, chunk_rows=1_000)
    [chunk] = plan_backfill(engine, spec)
    tally = waits.WaitTally()
    tally.add(WaitReason.WINDOW, 3_600.0)  # an hour outside the window, recorded when it ended (now)
    tally.add(WaitReason.REST, 2.0)
    waits.record(engine, spec.name, chunk.chunk_no, tally)
    with engine.connect() as conn:
        found = waits.steps(conn, spec.name, 6 * 3600, 240)
    assert found is not None and found.count <= 241 and found.width % 5 == 0
    window = found.seconds[WaitReason.WINDOW]
    assert abs(sum(window) - 3_600.0) < 6.0  # all of it, clipped only by where the grid begins
    assert sum(1 for v in window if v > 0) >= 60  # spread over the hour, not one spike
    assert abs(sum(found.seconds[WaitReason.REST]) - 2.0) < 1e-6 and found.seconds[WaitReason.REST][-1] == 2.0
