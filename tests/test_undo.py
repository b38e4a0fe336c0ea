"""Undo and rollback against a real PostgreSQL: a backfill with ``undo: true`` and its rollback leave
the table exactly as it was (same hash), also when a worker is killed in the middle of either;
rows the application changed since the backfill are left alone; without ``undo`` the refusal says
what to do instead; and the rollback runs as its own DAG."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import text

from helpers import example_spec, make_users, spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.rollback import finish_rollback, plan_rollback
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.undo import NoUndo, RestoreWriter, rollback_spec
from rowfill.errors import ChunkFailed, RowfillError
from rowfill.examples.seed import seed_loyalty
from rowfill.ops import cli
from rowfill.store.checkpoint import CheckpointStore


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def content(engine, table: str = "users") -> str:
    """A hash of every row's content, in key order: equal means byte-for-byte the same values."""
    return scalar(engine, f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {table} t")


def backfill(engine, spec):
    return [ChunkRunner(engine, spec).run(c.chunk_no) for c in plan_backfill(engine, spec)]


def rollback(engine, spec):
    rb = rollback_spec(spec)
    for c in plan_rollback(engine, spec):
        ChunkRunner(engine, rb, writer=RestoreWriter(rb, spec)).run(c.chunk_no)
    return finish_rollback(engine, spec)


def users_spec(tmp_path, **fields):
    # full_name only where missing; points + 7 is not idempotent, so a batch applied twice would show
    return spec_for(tmp_path, **{"set": {"full_name": "first_name || ' ' || last_name", "points": "points + 7"},
                                 "undo": True, "chunk_rows": 1_000, "batch_rows": 100, **fields})


def test_a_backfill_and_its_rollback_leave_the_table_as_it_was(engine, tmp_path):
    make_users(engine, 3_500)
    with engine.begin() as conn:  # some rows need no work; the rollback must not touch them either
        conn.execute(text("UPDATE users SET full_name = 'kept ' || id, points = id % 13 WHERE id % 5 = 0"))
    before = content(engine)
    spec = users_spec(tmp_path)
    results = backfill(engine, spec)
    assert sum(r.rows_written for r in results) == 2_800
    assert content(engine) != before
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'users_full_name'") == 2_800
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'users_full_name' AND "
                          "(old ->> 'full_name' IS NOT NULL OR CAST(old ->> 'points' AS int) <> 0 "
                          "OR CAST(new ->> 'points' AS int) <> 7)") == 0

    result = rollback(engine, spec)
    assert (result.restored, result.left_alone) == (2_800, 0)
    assert content(engine) == before
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'users_full_name'") == 0


def test_the_loyalty_transform_rolls_back_too(engine, tmp_path):
    seed_loyalty(engine, users=2_500)
    before = content(engine)
    spec = example_spec(tmp_path, "users_loyalty_points", chunk_rows=1_000, batch_rows=150, pause=0)
    assert spec.undo
    backfill(engine, spec)
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NULL") == 0
    assert rollback(engine, spec).restored == 2_500
    assert content(engine) == before


def test_any_key_rolls_back(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (tenant_id integer NOT NULL, id uuid NOT NULL, label text NOT NULL, "
                          "done text, PRIMARY KEY (tenant_id, id))"))
        conn.execute(text("INSERT INTO items SELECT g % 3, md5('i' || g)::uuid, 'item ' || g, NULL FROM generate_series(1, 1500) g"))
    before = scalar(engine, "SELECT md5(string_agg(t::text, ',' ORDER BY t.tenant_id, t.id)) FROM items t")
    spec = spec_for(tmp_path, name="items_done", table="items", key=["tenant_id", "id"], where="done IS NULL",
                    set={"done": "upper(label)"}, undo=True, chunk_rows=400, batch_rows=70)
    backfill(engine, spec)
    assert rollback(engine, spec).restored == 1_500
    assert scalar(engine, "SELECT md5(string_agg(t::text, ',' ORDER BY t.tenant_id, t.id)) FROM items t") == before


def test_rows_the_application_changed_after_the_backfill_are_left_alone(engine, tmp_path):
    make_users(engine, 1_000)
    spec = users_spec(tmp_path)
    backfill(engine, spec)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET full_name = 'changed by the app' WHERE id IN (3, 500, 999)"))
        conn.execute(text("UPDATE users SET points = 100 WHERE id = 42"))
    result = rollback(engine, spec)
    assert (result.restored, result.left_alone) == (996, 4)
    assert "4 left alone because the application changed them" in result.line()
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name = 'changed by the app'") == 3
    assert scalar(engine, "SELECT points FROM users WHERE id = 42") == 100
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL AND points = 0") == 996


def test_a_rollback_stops_a_chunk_of_the_backfill_that_is_still_running(engine, tmp_path):
    make_users(engine, 2_000)
    before = content(engine)
    spec = users_spec(tmp_path, chunk_rows=2_000, pause="20ms")
    [chunk] = plan_backfill(engine, spec)
    outcome = {}

    def run():
        try:
            outcome["result"] = ChunkRunner(engine, spec).run(chunk.chunk_no)
        except ChunkFailed as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    while scalar(engine, "SELECT rows_seen FROM rowfill.chunks WHERE backfill = :n", n=spec.name) < 300:
        time.sleep(0.01)
    result = rollback(engine, spec)
    worker.join(30)
    assert "it was reset or rolled back while this chunk ran" in str(outcome.get("error"))
    changed = CheckpointStore(engine).chunks(rollback_spec(spec).name)  # gone: the rollback finished
    assert changed == [] and result.restored >= 300
    assert content(engine) == before


def test_the_backfill_waits_for_an_unfinished_rollback_and_can_run_again_after_it(engine, tmp_path):
    make_users(engine, 2_000)
    before = content(engine)
    spec = users_spec(tmp_path)
    backfill(engine, spec)
    after_backfill = content(engine)
    rb = rollback_spec(spec)
    first = plan_rollback(engine, spec)
    ChunkRunner(engine, rb, writer=RestoreWriter(rb, spec)).run(first[0].chunk_no)  # one of two chunks

    with pytest.raises(RowfillError) as caught:
        plan_backfill(engine, spec)
    assert "a rollback of 'users_full_name' is in progress (1 of 2 chunks done)" in str(caught.value)
    ChunkRunner(engine, rb, writer=RestoreWriter(rb, spec)).run(first[1].chunk_no)
    assert finish_rollback(engine, spec).restored == 2_000
    assert content(engine) == before

    backfill(engine, spec)  # the rollback forgot the backfill's progress: it runs again from the start
    assert content(engine) == after_backfill
    rollback(engine, spec)
    assert content(engine) == before


def test_without_undo_there_is_no_rollback_and_the_message_says_what_to_do(engine, db_url, tmp_path, capsys):
    make_users(engine, 100)
    spec = spec_for(tmp_path)
    backfill(engine, spec)
    with pytest.raises(NoUndo) as caught:
        plan_rollback(engine, spec)
    message = str(caught.value)
    assert "has no undo log" in message and "`undo: true`" in message
    assert "backup or a point-in-time recovery" in message and "second spec that sets them back" in message
    assert cli.main(["--specs-dir", str(tmp_path), "--db", db_url, "rollback", spec.name, "--yes"]) == 1
    assert "cannot restore them" in capsys.readouterr().err


def test_the_rollback_command_asks_before_it_changes_anything(engine, db_url, tmp_path, capsys):
    make_users(engine, 300)
    spec = users_spec(tmp_path)
    backfill(engine, spec)
    after = content(engine)
    assert cli.main(["--specs-dir", str(tmp_path), "--db", db_url, "rollback", spec.name]) == 2
    assert "Add --yes" in capsys.readouterr().out
    assert content(engine) == after
    assert cli.main(["--specs-dir", str(tmp_path), "--db", db_url, "rollback", spec.name, "--yes"]) == 0
    assert "300 rows restored" in capsys.readouterr().out
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL AND points = 0") == 300


# -- crashes ----------------------------------------------------------------------------------

CHILD = """
import sys
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.rollback import finish_rollback, plan_rollback
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.undo import RestoreWriter, rollback_spec
from rowfill.spec.spec import load_spec

url, spec_path, what = sys.argv[1:4]
engine = engine_from_url(url)
spec = load_spec(spec_path)
if what == "backfill":
    for chunk in plan_backfill(engine, spec, limit=100):
        ChunkRunner(engine, spec).run(chunk.chunk_no)
else:
    rb = rollback_spec(spec)
    for chunk in plan_rollback(engine, spec, limit=100):
        ChunkRunner(engine, rb, writer=RestoreWriter(rb, spec)).run(chunk.chunk_no)
    print(finish_rollback(engine, spec).line())
"""


def progress(engine, name: str) -> int:
    if scalar(engine, "SELECT to_regclass('rowfill.chunks')") is None:
        return 0
    return scalar(engine, "SELECT coalesce(sum(rows_seen), 0) FROM rowfill.chunks WHERE backfill = :n", n=name)


def kill_midway(engine, db_url, spec, what: str, name: str, kills: int, log) -> None:
    """Start the worker ``kills`` times and SIGKILL it at a random moment after it committed batches."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for _ in range(kills):
        before = progress(engine, name)
        child = subprocess.Popen([sys.executable, "-c", CHILD, db_url, spec.source, what], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while progress(engine, name) <= before:
            assert child.poll() is None, f"{what} worker exited early ({child.returncode})"
            assert time.monotonic() < deadline, f"{what} worker made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        assert child.poll() is None, f"the {what} finished before it could be killed; make it longer"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL


def finish(db_url, spec, what: str, log) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, db_url, spec.source, what], stdout=log, stderr=log)
    assert done.returncode == 0


def test_a_crash_in_the_middle_of_the_backfill_then_rollback_restores_everything(engine, db_url, tmp_path):
    make_users(engine, 12_000)
    before = content(engine)
    spec = users_spec(tmp_path, chunk_rows=4_000, batch_rows=20)
    with open(tmp_path / "child.log", "ab") as log:
        kill_midway(engine, db_url, spec, "backfill", spec.name, kills=3, log=log)
        changed = scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NOT NULL")
        assert 0 < changed < 12_000
        # every changed row has its undo record and no other row has one: they commit together
        assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'users_full_name'") == changed
        assert scalar(engine, "SELECT count(*) FROM users u JOIN rowfill.undo_rows r ON CAST(r.key ->> 'id' AS bigint) = u.id "
                              "WHERE r.backfill = 'users_full_name' AND (u.full_name IS NULL OR u.points <> 7)") == 0
        finish(db_url, spec, "rollback", log)  # roll back straight from the crashed state
    assert content(engine) == before


def test_a_crash_in_the_middle_of_the_rollback_resumes_and_restores_everything(engine, db_url, tmp_path):
    make_users(engine, 12_000)
    before = content(engine)
    spec = users_spec(tmp_path, chunk_rows=4_000, batch_rows=20)
    with open(tmp_path / "child.log", "ab") as log:
        kill_midway(engine, db_url, spec, "backfill", spec.name, kills=2, log=log)
        finish(db_url, spec, "backfill", log)  # the backfill resumes and completes
        assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL OR points <> 7") == 0
        kill_midway(engine, db_url, spec, "rollback", f"{spec.name}.rollback", kills=3, log=log)
        assert 0 < progress(engine, f"{spec.name}.rollback") < 12_000
        finish(db_url, spec, "rollback", log)
    assert content(engine) == before
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'users_full_name'") == 0


# -- the rollback DAG -------------------------------------------------------------------------


def test_the_rollback_dag_is_manual_and_restores_through_airflow(tmp_path, db_url, engine, airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from test_dags import ROOT

    make_users(engine, 3_000)
    before = content(engine)
    users_spec(tmp_path, chunk_rows=1_000, batch_rows=200)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)
    assert bag.import_errors == {}
    forward, back = bag.dags["rowfill_users_full_name"], bag.dags["rowfill_users_full_name_rollback"]
    assert type(back.timetable).__name__ == "NullTimetable"  # manual only: schedule None
    assert [t.task_id for t in back.topological_sort()] == ["plan_rollback", "restore", "finish"]
    assert back.get_task("restore").pool == "rowfill_app_db"

    assert forward.test().state == "success"
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NULL") == 0
    run = back.test()
    assert run.state == "success"
    assert content(engine) == before
    assert CheckpointStore(engine).backfill_names() == []  # the backfill starts over next time


def test_records_of_an_earlier_version_are_never_mixed_with_the_new_ones(engine, tmp_path):
    """The shared undo log keeps one shape per backfill: after a reset, a spec that changes other
    columns is refused until the earlier records are rolled back or deleted (the rollback would
    restore the wrong columns otherwise)."""
    make_users(engine, 300)
    backfill(engine, users_spec(tmp_path, chunk_rows=300))
    CheckpointStore(engine).reset("users_full_name")
    changed = users_spec(tmp_path, chunk_rows=300, set={"points": "points + 1"}, where=None)
    with pytest.raises(RowfillError, match=r"field 'undo'.*earlier version.*DELETE FROM \"rowfill\".\"undo_rows\""):
        plan_backfill(engine, changed)
    assert scalar(engine, "SELECT count(*) FROM users WHERE points = 8") == 0  # nothing written
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM rowfill.undo_rows WHERE backfill = 'users_full_name'"))
    backfill(engine, changed)
    assert scalar(engine, "SELECT count(*) FROM users WHERE points = 8") == 300


def session_engine(db_url: str, **settings: str):
    """An engine whose sessions start with ``settings`` (libpq ``options``), as a role's or a host's defaults would."""
    from urllib.parse import quote as urlquote
    from rowfill.engine.database import engine_from_url
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return engine_from_url(f"{db_url}?options={urlquote(options)}")


def test_a_rollback_restores_exactly_under_other_date_interval_and_float_settings(db_url, tmp_path):
    # recorded values are text: a rollback run from a session with another DateStyle (day-month vs
    # month-day), IntervalStyle or extra_float_digits must still read them back as the same values
    recording = session_engine(db_url, DateStyle="SQL,DMY", IntervalStyle="sql_standard", extra_float_digits="0")
    restoring = session_engine(db_url, DateStyle="SQL,MDY", IntervalStyle="iso_8601", extra_float_digits="1")
    try:
        with recording.begin() as conn:
            conn.execute(text(
                "CREATE TABLE events (id int PRIMARY KEY, day date, at timestamp, at_tz timestamptz, took interval, "
                "ratio float8, small float4, done boolean)"))
            conn.execute(text(
                "INSERT INTO events SELECT g, date '2020-01-02' + g, timestamp '2020-03-04 05:06:07.123456' + g * interval '1 h', "
                "timestamptz '2020-03-04 05:06:07.5+02' + g * interval '1 min', interval '1 mon 2 days 03:04:05.6' * g, "
                "0.1 + g / 3.0, (1.0 / 3 + g)::float4, false FROM generate_series(1, 400) g"))
        before = content(recording, "events")
        spec = spec_for(tmp_path, table="events", where="NOT done", undo=True, chunk_rows=150, batch_rows=40,
                        set={"day": "day + 40", "at": "at + interval '3 days'", "at_tz": "at_tz - interval '5 h'",
                             "took": "took * 2", "ratio": "ratio * 7", "small": "small * 3", "done": "true"})
        backfill(recording, spec)
        assert content(recording, "events") != before
        result = rollback(restoring, spec)
        assert (result.restored, result.left_alone) == (400, 0)
        assert content(recording, "events") == before
        with restoring.connect() as conn:  # and compared as values, not only as one session's text
            assert conn.execute(text("SELECT count(*) FROM events WHERE day <> date '2020-01-02' + id "
                                     "OR ratio <> 0.1 + id / 3.0 OR small <> (1.0 / 3 + id)::float4 "
                                     "OR took <> interval '1 mon 2 days 03:04:05.6' * id OR done")).scalar() == 0
    finally:
        recording.dispose()
        restoring.dispose()
