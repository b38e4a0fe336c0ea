"""Off-peak windows: parsing, midnight and DST, and a chunk that meets a closing window stops at a
batch boundary, waits, and resumes from its cursor with no row missed or written twice."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import BatchObserver
from rowfill.errors import SpecErrors
from rowfill.spec.windows import Windows, parse_windows
from rowfill.store.checkpoint import CheckpointStore

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


def at(s: str, tz=UTC) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=tz)


def test_a_window_inside_one_day():
    w = Windows(parse_windows({"start": "01:00", "end": "06:00", "timezone": "Europe/Berlin"}))
    assert not w.is_open(at("2026-01-10 00:59:59", BERLIN))
    assert w.is_open(at("2026-01-10 01:00:00", BERLIN))
    assert w.is_open(at("2026-01-10 05:59:59", BERLIN))
    assert not w.is_open(at("2026-01-10 06:00:00", BERLIN))
    assert w.next_open(at("2026-01-10 07:00", BERLIN)) == at("2026-01-11 01:00", BERLIN)
    assert w.next_open(at("2026-01-10 00:30", BERLIN)) == at("2026-01-10 01:00", BERLIN)
    assert w.closes_at(at("2026-01-10 02:00", BERLIN)) == at("2026-01-10 06:00", BERLIN)
    # Berlin is UTC+1 in January: the window is 00:00-05:00 UTC
    assert w.is_open(at("2026-01-10 00:00:00")) and not w.is_open(at("2026-01-09 23:59:59"))


def test_a_window_spanning_midnight():
    w = Windows(parse_windows({"start": "22:00", "end": "02:00"}))
    assert w.is_open(at("2026-03-01 23:30")) and w.is_open(at("2026-03-02 01:59:59"))
    assert not w.is_open(at("2026-03-02 02:00")) and not w.is_open(at("2026-03-02 12:00"))
    assert w.closes_at(at("2026-03-01 23:00")) == at("2026-03-02 02:00")
    assert w.next_open(at("2026-03-02 12:00")) == at("2026-03-02 22:00")


def test_several_windows_and_touching_windows_count_as_one():
    w = Windows(parse_windows([{"start": "01:00", "end": "03:00"}, {"start": "03:00", "end": "04:00"},
                               {"start": "12:00", "end": "12:30"}]))
    assert w.closes_at(at("2026-03-02 01:30")) == at("2026-03-02 04:00")
    assert w.next_open(at("2026-03-02 05:00")) == at("2026-03-02 12:00")
    assert w.next_open(at("2026-03-02 13:00")) == at("2026-03-03 01:00")


def test_daylight_saving_day_keeps_local_hours():
    w = Windows(parse_windows({"start": "01:00", "end": "06:00", "timezone": "Europe/Berlin"}))
    # 2026-03-29: Berlin moves from UTC+1 to UTC+2 at 02:00 local; the window is 01:00+01 .. 06:00+02
    assert w.closes_at(at("2026-03-29 01:30", BERLIN)) == at("2026-03-29 04:00")
    assert w.next_open(at("2026-03-29 12:00")) == at("2026-03-29 23:00")  # 01:00 CEST = 23:00 UTC


def test_no_window_means_always_open():
    w = Windows(())
    assert w.is_open(at("2026-01-01 12:00")) and w.closes_at(at("2026-01-01 12:00")) is None


@pytest.mark.parametrize("window, message", [
    ({"start": "25:00", "end": "06:00"}, "is not a time of day"),
    ({"start": "01:00", "end": "01:00"}, "leave out `window`"),
    ({"start": "01:00"}, "needs both start and end"),
    ({"start": "01:00", "end": "02:00", "timezone": "Mars/Olympus"}, "not an IANA timezone"),
    ({"start": "01:00", "end": "02:00", "tz": "UTC"}, "unknown key"),
    ([], "expected a window"),
])
def test_bad_windows_are_spec_errors_naming_the_field(tmp_path, window, message):
    with pytest.raises(SpecErrors) as caught:
        spec_for(tmp_path, window=window)
    assert "field 'window'" in str(caught.value) and message in str(caught.value)


def test_unquoted_yaml_times_are_read_as_times(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("connection: app_db\ntable: users\nkey: id\nset: {x: '1'}\nwindow: {start: 01:30, end: 06:00}\n")
    from rowfill.spec.spec import load_spec

    [w] = load_spec(path).window
    assert (w.start.hour, w.start.minute, w.end.hour) == (1, 30, 6)


class ManualClock:
    """Time the test controls: each committed batch moves it forward a minute."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Advance(BatchObserver):
    def __init__(self, clock: ManualClock, step: timedelta):
        self.clock, self.step, self.batches = clock, step, 0

    def batch_done(self, **kw):
        self.batches += 1
        self.clock.now += self.step


def test_a_closing_window_stops_the_chunk_which_resumes_when_it_opens_again(engine, tmp_path):
    make_users(engine, 1_000)
    # not idempotent: a batch applied twice would show as points 20
    spec = spec_for(tmp_path, name="add_points", where=None, set={"points": "points + 10"}, chunk_rows=1_000,
                    batch_rows=50, window={"start": "01:00", "end": "01:05", "timezone": "Europe/Berlin"})
    [chunk] = plan_backfill(engine, spec)
    clock = ManualClock(at("2026-01-10 00:58", BERLIN))
    advance = Advance(clock, timedelta(minutes=1))

    before = run_chunk(engine, spec, chunk.chunk_no, clock=clock, observers=[advance])
    assert before.kind == "defer" and before.until == at("2026-01-10 01:00", BERLIN)
    assert "outside the window (01:00-01:05 Europe/Berlin)" in before.reason
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert row.cursor is None and row.status == "pending" and "outside the window" in row.throttle_state

    clock.now = before.until + timedelta(seconds=30)  # the triggerer wakes it when the window opens
    first = run_chunk(engine, spec, chunk.chunk_no, clock=clock, observers=[advance])
    assert first.kind == "defer" and first.until == at("2026-01-11 01:00", BERLIN)
    assert first.result.status == "stopped" and first.result.batches == 5  # 01:00:30 + 5 batches = 01:05:30
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.cursor, row.rows_written) == ("pending", 250, 250)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE points = 10")).scalar() == 250

    clock.now = first.until
    second = run_chunk(engine, spec, chunk.chunk_no, clock=clock, observers=[advance])
    assert second.kind == "defer" and second.result.batches == 5  # the next night's window: 5 more batches
    assert second.result.cursor == 500
    clock.now = second.until
    while (outcome := run_chunk(engine, spec, chunk.chunk_no, clock=clock, observers=[advance])).kind == "defer":
        clock.now = outcome.until
    assert outcome.kind == "done" and outcome.result.status == "done"

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE points <> 10")).scalar() == 0
    row = CheckpointStore(engine).chunk(spec.name, chunk.chunk_no)
    assert (row.status, row.rows_written, row.rows_seen, row.batches) == ("done", 1_000, 1_000, 20)
    assert row.attempts == 1  # stopping at window closes is not starting over
    assert row.throttle_state is None
