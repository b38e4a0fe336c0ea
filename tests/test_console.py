"""The backfills console (issue 14): one clear state per backfill that never makes normal life look
like an error; charts that are plain escaped SVG; every action, from the console or the command,
in an append-only audit trail (and Airflow's audit log) that the backfill's page shows.
(The walk through a real Airflow in a real Chromium is test_console_e2e.py.)"""

from __future__ import annotations

import getpass
import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from helpers import make_users, spec_for, write_spec
from rowfill.console import svg
from rowfill.console.states import TONE, ConsoleState, Tone, WaitReason, console_state, wait_reason
from rowfill.engine.control import ControlStore
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.ops.cli import main
from rowfill.store import audit


# -- one state per backfill ------------------------------------------------------------------------
@pytest.mark.parametrize("status, control, waits, expected", [
    ("not started", "running", [], ConsoleState.NOT_STARTED),
    ("planned", "running", [None], ConsoleState.PLANNED),
    ("running", "running", [None], ConsoleState.RUNNING),
    ("running", "running", ["waiting: replica_lag 12 s > 5 s"], ConsoleState.WAITING_GATE),
    ("running", "running", ["waiting: replica_lag 12 s > 5 s", None], ConsoleState.RUNNING),  # another chunk moves
    ("waiting", "running", ["outside the window (22:00-06:00 UTC); opens at 22:00"], ConsoleState.WAITING_WINDOW),
    ("waiting", "running", [None], ConsoleState.WAITING_PAUSE),
    ("waiting", "paused", ["paused with `rowfill pause`: peak"], ConsoleState.PAUSED),
    ("running", "paused", [None], ConsoleState.PAUSED),  # asked to pause, chunks stop at their next batch
    ("waiting", "cancelled", [None], ConsoleState.CANCELLED),
    ("failed", "running", [None], ConsoleState.FAILED),
    ("stale", "running", [None], ConsoleState.STALE),
    ("done", "paused", [], ConsoleState.DONE),  # a finished backfill is done, whatever its control row says
])
def test_each_backfill_has_one_state(status, control, waits, expected):
    assert console_state(status, control, waits) == expected


def test_rollbacks_have_their_own_states():
    assert console_state("not started", rolling_back=True) == ConsoleState.ROLLING_BACK
    assert console_state("not started", rolled_back=True) == ConsoleState.ROLLED_BACK


def test_only_failures_look_like_errors():
    bad = {s for s, tone in TONE.items() if tone == Tone.BAD}
    assert bad == {ConsoleState.FAILED, ConsoleState.STALE}
    assert TONE[ConsoleState.NOT_STARTED] == TONE[ConsoleState.PLANNED] == Tone.QUIET
    assert set(TONE) == set(ConsoleState)


def test_wait_reasons_come_from_the_recorded_throttle_state():
    assert wait_reason(None) is None
    assert wait_reason("paused with `rowfill pause`: peak") == WaitReason.PAUSE
    assert wait_reason("outside the window (22:00-06:00); opens at 22:00") == WaitReason.WINDOW
    assert wait_reason("waiting: active_backends 120 > 100") == WaitReason.GATE
    assert wait_reason("latency probe 40 ms > 20 ms") == WaitReason.LATENCY


# -- charts ----------------------------------------------------------------------------------------
def test_charts_are_svg_with_every_label_escaped():
    chart = svg.line_chart("<b>rate</b>", [svg.Series("a'b", [(0.0, 1.0), (60.0, 250.0), (120.0, None), (180.0, 3.0)])], "rows/s")
    assert chart.startswith("<svg") and chart.endswith("</svg>")
    assert "<b>" not in chart and "&lt;b&gt;rate&lt;/b&gt;" in chart and "a&#x27;b" in chart
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 1  # the gap splits the line
    assert ">500 rows/s<" in chart  # the axis is rounded up to a readable top
    assert "no data yet" in svg.line_chart("rate", [svg.Series("r", [])])
    stacked = svg.stacked_chart("<waits>", [0.0, 90.0, 180.0], [("gate", [1.0, 2.0, 0.0]), ("<window>", [0.0, 1.0, 4.0]),
                                                                ("pause", [0.0, 0.0, 0.0])], "s")
    assert stacked.count("<polygon") == 2 and "&lt;window&gt;" in stacked and "&lt;waits&gt;" in stacked
    assert "data-layer='pause'" not in stacked  # a reason that never waited is not drawn
    assert ">5 s<" in stacked  # the axis tops the stack (1 + 4), rounded up
    assert "none" in svg.stacked_chart("waits", [0.0], [("gate", [0.0])])


# -- the audit trail ---------------------------------------------------------------------------------
def test_the_audit_trail_is_append_only(engine):
    entry = audit.record(engine, "b", "ana", audit.Source.CONSOLE, "pause", {"state": "paused"}, "  peak  ")
    assert entry.reason == "peak"
    for statement in ("UPDATE rowfill.audit SET actor = 'mallory'", "DELETE FROM rowfill.audit", "TRUNCATE rowfill.audit"):
        with pytest.raises(DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with engine.connect() as conn:
        [kept] = audit.latest(conn, "b")
    assert (kept.actor, kept.action, kept.details, kept.reason) == ("ana", "pause", {"state": "paused"}, "peak")


def test_without_the_migration_recording_says_what_to_run(engine):
    with engine.begin() as conn:  # a schema one migration behind: before the audit table (r0003)
        conn.execute(text("DROP TABLE rowfill.audit"))
        conn.execute(text("UPDATE rowfill.alembic_version SET version_num = '0002'"))
    with pytest.raises(audit.AuditUnavailable, match="rowfill db migrate"):
        audit.record(engine, "b", "ana", audit.Source.CLI, "pause")


def cli(db_url, folder, *args) -> int:
    return main(["--db", db_url, "--specs-dir", str(folder), *args])


def test_command_actions_are_recorded_with_the_os_user(engine, db_url, tmp_path, capsys):
    make_users(engine, 100)
    write_spec(tmp_path)
    assert cli(db_url, tmp_path, "pause", "users_full_name", "--reason", "checkout peak") == 0
    assert cli(db_url, tmp_path, "set", "users_full_name", "batch_rows=500", "pause=50ms") == 0
    assert cli(db_url, tmp_path, "resume", "users_full_name") == 0
    assert cli(db_url, tmp_path, "cancel", "users_full_name", "--reason", "wrong column") == 0
    assert cli(db_url, tmp_path, "set", "users_full_name") == 0  # only shows the knobs: nothing to record
    with engine.connect() as conn:
        trail = list(reversed(audit.latest(conn, "users_full_name")))
    assert [(e.action, e.source, e.actor, e.reason) for e in trail] == [
        ("pause", "cli", getpass.getuser(), "checkout peak"), ("set", "cli", getpass.getuser(), None),
        ("resume", "cli", getpass.getuser(), None), ("cancel", "cli", getpass.getuser(), "wrong column")]
    assert trail[1].details == {"knobs": {"batch_rows": "500", "pause": "50 ms"}}
    assert trail[3].details == {"state": "cancelled"}
    assert ControlStore(engine).get("users_full_name").state == "cancelled"


def test_a_command_action_still_happens_without_the_audit_table_and_says_so(engine, db_url, tmp_path, capsys):
    make_users(engine, 100)
    with engine.begin() as conn:  # a schema one migration behind: before the audit table (r0003)
        conn.execute(text("DROP TABLE rowfill.audit"))
        conn.execute(text("UPDATE rowfill.alembic_version SET version_num = '0002'"))
    write_spec(tmp_path)
    assert cli(db_url, tmp_path, "pause", "users_full_name") == 0
    assert ControlStore(engine).get("users_full_name").state == "paused"
    assert "no audit table" in capsys.readouterr().err


# -- console actions through the app, as Airflow's API server mounts it -----------------------------


@pytest.fixture
def console(engine, db_url, tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    make_users(engine, 3_000)
    write_spec(folder, chunk_rows=1_000, name="fill_b")
    spec = spec_for(folder, chunk_rows=1_000, name="fill_b")
    plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(1)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(folder))
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    return spec


def client_for(token):
    from fastapi.testclient import TestClient

    from rowfill.airflow.web import create_app

    return TestClient(create_app(), cookies={"_token": token} if token else None)


SAME_SITE = {"Origin": "http://testserver"}


def _airflow_log(event: str) -> list:
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [(r.owner, r.dag_id, json.loads(r.extra)) for r in session.scalars(select(Log).where(Log.event == event))]


def test_console_actions_change_the_backfill_and_land_in_both_audit_logs(console, engine, airflow_auth):
    admin = client_for(airflow_auth("admin", "ana"))
    base = "/api/backfills/fill_b/"
    answer = admin.post(base + "pause", json={"reason": "checkout <peak>"}, headers=SAME_SITE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "paused" and ControlStore(engine).get("fill_b").state == "paused"
    assert admin.post(base + "set", json={"batch_rows": "250", "pause_ratio": "0.5"}, headers=SAME_SITE).status_code == 200
    refused = admin.post(base + "set", json={"batch_rows": "-3"}, headers=SAME_SITE)
    assert refused.status_code == 400 and "batch_rows" in refused.json()["detail"]
    assert admin.post(base + "resume", json={}, headers=SAME_SITE).status_code == 200
    nothing = admin.post(base + "retry", json={}, headers=SAME_SITE)
    assert nothing.status_code == 409 and "no failed chunk" in nothing.json()["detail"]
    plan = admin.post(base + "plan", json={"reason": "before the big run"}, headers=SAME_SITE)
    assert plan.status_code == 200 and "dry run" in plan.json()["plan"]

    with engine.connect() as conn:
        trail = list(reversed(audit.latest(conn, "fill_b")))
    assert [(e.action, e.actor, e.source, e.reason) for e in trail] == [
        ("pause", "ana", "console", "checkout <peak>"), ("set", "ana", "console", None),
        ("resume", "ana", "console", None), ("plan", "ana", "console", "before the big run")]
    assert trail[1].details == {"knobs": {"batch_rows": "250", "pause_ratio": "0.5"}}
    assert ControlStore(engine).get("fill_b").knobs == {"batch_rows": 250, "pause_ratio": 0.5}
    assert [e for e in _airflow_log("rowfill.pause") if e[1] == "rowfill_fill_b"] == [("ana", "rowfill_fill_b", {"backfill": "fill_b", "reason": "checkout <peak>",
                                                                           "state": "paused"})]

    page = admin.get("/backfills/fill_b")
    assert page.status_code == 200
    assert "checkout <peak>" not in page.text  # what a person typed stays text
    assert page.text.count("<tr class='audit'") == 4 and "checkout &lt;peak&gt;" in page.text
    assert "data-knob='batch_rows'>batch_rows=250" in page.text
    tab = admin.get("/dags/rowfill_fill_b")  # the DAG page's Backfill tab: the same page
    assert tab.status_code == 200 and tab.text.count("<tr class='audit'") == 4


def test_readers_see_the_page_without_actions_and_cannot_act(console, engine, airflow_auth):
    viewer = client_for(airflow_auth("viewer"))
    page = viewer.get("/backfills/fill_b")
    assert page.status_code == 200 and "data-action='pause'" not in page.text
    refused = viewer.post("/api/backfills/fill_b/pause", json={}, headers=SAME_SITE)
    assert refused.status_code == 403
    nobody = client_for(airflow_auth(None))
    assert nobody.get("/backfills/fill_b").status_code == 404  # may read no DAG: no such backfill for them
    assert client_for(None).get("/backfills/fill_b").status_code == 401
    assert ControlStore(engine).get("fill_b").state == "running"
    with engine.connect() as conn:
        assert audit.latest(conn, "fill_b") == []


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {}])
def test_a_cross_site_action_is_refused_and_recorded_nowhere(console, engine, airflow_auth, headers):
    admin = client_for(airflow_auth("admin"))
    for action in ("pause", "cancel", "set"):
        answer = admin.post(f"/api/backfills/fill_b/{action}", json={"batch_rows": "1"}, headers=headers)
        assert answer.status_code == 403 and "cross-site" in answer.json()["detail"]
    form = admin.post("/api/backfills/fill_b/pause", data={"reason": "x"}, headers=SAME_SITE)
    assert form.status_code == 415  # an HTML form of any site cannot send JSON
    assert ControlStore(engine).get("fill_b").state == "running"
    with engine.connect() as conn:
        assert audit.latest(conn, "fill_b") == []


def test_rows_of_each_run_and_the_chart_steps_come_from_the_rate_samples(engine, tmp_path):
    from rowfill.store import timeline
    from rowfill.store.rates import record_batch

    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=1_000)
    plan_backfill(engine, spec)
    for chunk_no, rows in ((1, 300), (2, 200), (1, 100)):
        record_batch(engine, spec.name, chunk_no, rows, 0.01)
    with engine.connect() as conn:
        now = conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar()
        now = float(now)
        assert timeline.rows_in(conn, spec.name, [(now - 60, now + 1), (now + 10, now + 20), (now - 90_000, now)],
                                keep=3_600) == [600, 0, None]  # the last run began before the samples kept
        steps, width = timeline.steps(conn, spec.name, since=3_600, points=240)
    assert sum(s.rows for s in steps) == 600 and sum(s.batches for s in steps) == 3 and width == 5.0


def test_with_a_latency_probe_the_page_charts_its_recorded_readings_against_its_limit(engine, db_url, tmp_path,
                                                                                        monkeypatch):
    from rowfill.airflow.web import backfill_page
    from rowfill.store import waits

    make_users(engine, 1_000)
    probe = {"sql": "SELECT * FROM users WHERE id = 42", "limit": "20ms"}
    write_spec(tmp_path, chunk_rows=1_000, latency_probe=probe)
    spec = spec_for(tmp_path, chunk_rows=1_000, latency_probe=probe)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(1)
    with engine.begin() as conn:  # and readings of the minute before, one per 5-second bucket, as chunks record them
        conn.execute(text("INSERT INTO rowfill.wait_samples (backfill, chunk_no, bucket, latency_worst, latency_limit) "
                          "SELECT :n, 1, to_timestamp(floor(extract(epoch FROM now()) / 5) * 5) - make_interval(secs => g), "
                          "0.001 * g / 5, 0.02 FROM generate_series(60, 120, 5) g"), {"n": spec.name})
    with engine.connect() as conn:
        found = waits.steps(conn, spec.name, 3600, 240)
    assert found is not None and max(w for w in found.worst if w is not None) == 0.024  # seconds, the worst of a step
    assert {lim for lim in found.limit if lim is not None} == {0.02}
    page = backfill_page(spec)  # a line of readings, and the limit dashed beside it
    chart = page.split("aria-label='latency probe")[1].split("</svg>")[0]
    assert chart.count("<polyline") >= 1 and "stroke-dasharray" in chart and ">limit<" in chart
    assert page.count("<svg class='chart'") == 4


def test_hours_of_samples_come_back_as_at_most_the_points_a_chart_draws(engine, tmp_path):
    from rowfill.store import timeline

    make_users(engine, 1_000)
    spec = spec_for(tmp_path, chunk_rows=1_000)
    plan_backfill(engine, spec)
    with engine.begin() as conn:  # two hours of 5-second buckets, 10 rows in 1 batch each
        conn.execute(text("INSERT INTO rowfill.samples (backfill, chunk_no, bucket, rows_seen, batches, work_started, last_commit) "
                          "SELECT :n, 1, to_timestamp(floor(extract(epoch FROM now()) / 5) * 5) - make_interval(secs => 5 * g), "
                          "10, 1, now(), now() FROM generate_series(0, 1439) g"), {"n": spec.name})
    with engine.connect() as conn:
        steps, width = timeline.steps(conn, spec.name, since=6 * 3600, points=24)
    assert len(steps) <= 24 and width % 5 == 0 and width >= 7_195 / 24
    assert sum(s.rows for s in steps) == 14_400 and sum(s.batches for s in steps) == 1_440
