"""The backfills console in a real Airflow 3 (scheduler, DAG processor, API server, triggerer as
separate processes), driven like a person in a real headless Chromium signed in through Airflow's
login page (issue 14):

overview (a failed backfill reads as failed, one never started does not look like an error) →
the backfill's page (chunk map, the run and who triggered it, charts) → pause → resume → retry
the failed chunk (cleared through Airflow's API; the run finishes and every row is written) →
cancel; each action confirmed in the browser, each in rowfill's audit table with the Airflow user
and the reason typed, in Airflow's audit log, and on the page; the DAG's "Backfill" tab shows the
same page inside the Airflow UI. Screenshots of each step go to ``$ROWFILL_TEST_ARTIFACTS``
(default ``test-artifacts/console`` in the checkout).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import urllib.error
from pathlib import Path

import pytest
from sqlalchemy import text

from browser import browser, sign_in  # noqa: F401 - browser is a fixture
from helpers import create_database, make_users, wait_until, write_spec
from rowfill.engine.control import ControlStore
from rowfill.engine.database import engine_from_url
from rowfill.store import audit
from rowfill_dev.devstack import PROJECT, AirflowStack
from rowfill_dev.localpg import free_port

pytestmark = pytest.mark.airflow

ARTIFACTS = Path(os.environ.get("ROWFILL_TEST_ARTIFACTS", PROJECT / "test-artifacts")) / "console"


@pytest.fixture(scope="module")
def target(pg_cluster):
    url = create_database(pg_cluster, "console_app")
    engine = engine_from_url(url)
    make_users(engine, 2_000, table="console_users")
    make_users(engine, 500, table="later_users")
    with engine.begin() as conn:  # chunk 2 fails at id 1500 until the trigger is dropped
        conn.execute(text("CREATE FUNCTION refuse_1500() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.id = 1500 THEN RAISE EXCEPTION 'no name for id 1500'; END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER refuse_1500 BEFORE UPDATE ON console_users FOR EACH ROW EXECUTE FUNCTION refuse_1500()"))
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module")
def stack(target):
    url, _ = target
    home = Path(tempfile.mkdtemp(prefix="rowfill-console-"))
    specs = home / "specs"
    specs.mkdir()
    write_spec(specs, name="console_fill", table="public.console_users", chunk_rows=1_000, batch_rows=100, retries=0,
               pool="rowfill_console", pause="20ms")  # a rest between batches: the wait chart has something to draw
    write_spec(specs, name="later_fill", table="public.later_users", chunk_rows=500, pool="rowfill_console")
    s = AirflowStack(home / "airflow", port=free_port(), target_url=url, specs_dir=specs,
                     extra_env={"AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2"})
    try:
        s.prepare()
        s.airflow("pools", "set", "rowfill_console", "2", "rowfill console test pool")
        s.start()
        for dag_id in ("rowfill_console_fill", "rowfill_later_fill"):
            s.wait_for_dag(dag_id)
        yield s
    finally:
        s.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in (home / "airflow" / "logs").glob("*.out"):  # the components' output, to read after a failure
            shutil.copy(log, ARTIFACTS / log.name)


def act(page, action: str, reason: str | None = None, **fields) -> None:
    """Fill in an action's form, press its button, accept the confirmation, wait for the page to reload."""
    form = page.locator(f"form.act[data-action={action}]")
    for name, value in fields.items():
        form.locator(f"input[name={name}]").fill(value)
    if reason:
        form.locator("input[name=reason]").fill(reason)
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    with page.expect_navigation():
        form.locator("button").click()
    assert dialogs, f"{action}: no confirmation asked"


def finished(stack, dag_id: str, run_id: str, timeout: float = 400) -> str:
    """The run's final state; a slow answer of the API server on the shared 2-core machine is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = stack.run_state(dag_id, run_id)
        except (TimeoutError, urllib.error.URLError, OSError):
            state = None
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise TimeoutError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f} s")


def trail(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [(e.action, e.actor, e.source, e.reason) for e in reversed(audit.latest(conn, "console_fill"))]


def test_overview_backfill_page_pause_resume_retry_cancel_in_a_real_browser(stack, target, browser):
    _, engine = target
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run_id = stack.trigger("rowfill_console_fill")
    assert finished(stack, "rowfill_console_fill", run_id) == "failed"

    context, page = sign_in(browser, stack, viewport=(1280, 900))
    try:
        # overview: one state per backfill; never started is not an error, the failure is
        page.goto(f"{stack.base}/rowfill/")
        failed = page.locator("tr[data-backfill=console_fill]")
        later = page.locator("tr[data-backfill=later_fill]")
        assert failed.get_attribute("data-state") == "failed" and failed.locator("td").nth(1).locator(".st.tone-bad").count() == 1
        assert later.get_attribute("data-state") == "not started" and later.locator(".tone-bad").count() == 0
        assert later.locator("td").nth(1).locator(".st.tone-quiet").count() == 1
        assert "1,400 of ~2,000 rows" in failed.locator(".rows").inner_text()
        assert failed.locator("td").nth(7).inner_text() == "failed"  # the last run's outcome
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

        # the backfill's page: chunk map, the failed chunk, the run and who triggered it, charts
        failed.locator("a.open").click()
        page.wait_for_url(re.compile(r".*/rowfill/backfills/console_fill$"))
        assert page.locator("#state").inner_text() == "failed"
        assert [c.get_attribute("class") for c in page.locator(".map .c").all()] == ["c d", "c f"]
        assert "no name for id 1500" in page.locator("li.failed-chunk").inner_text()
        run = page.locator(f"#runs tr[data-run='{run_id}']")
        assert run.locator("td").nth(6).inner_text() == "failed" and run.locator("td").nth(7).inner_text() == "admin"
        assert run.locator("td").nth(5).inner_text() == "1,400"  # rows walked in this run, from the rate samples
        assert page.locator("#charts svg.chart").count() == 3
        # the rests the chunks recorded in rowfill.wait_samples, drawn as a layer of the waits chart
        assert page.locator("#charts svg.chart polygon[data-layer='rest between batches']").count() == 1
        page.screenshot(path=str(ARTIFACTS / "backfill_failed.png"), full_page=True)

        act(page, "pause", "checkout <peak>")
        assert page.locator("#control").inner_text() == "paused" and page.locator("#state").inner_text() == "paused"
        assert ControlStore(engine).get("console_fill").state == "paused"
        act(page, "resume")
        assert page.locator("#control").inner_text() == "running" and page.locator("#state").inner_text() == "failed"

        # the data problem is fixed; retry clears the failed chunk's task instance through Airflow's API
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_1500 ON console_users"))
        act(page, "retry", "trigger fixed")
        assert "cleared chunk task(s) [2]" in page.locator("#result").inner_text()
        assert finished(stack, "rowfill_console_fill", run_id) == "success"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM console_users WHERE full_name IS NULL")).scalar() == 0
        def says_done() -> bool:
            page.reload()
            return page.locator("#state").inner_text() == "done"

        wait_until(says_done, timeout=60, every=2, what="the page says done")
        assert [c.get_attribute("class") for c in page.locator(".map .c").all()] == ["c d", "c d"]

        act(page, "cancel", "wrong time")
        assert page.locator("#control").inner_text() == "cancelled"
        assert page.locator("#state").inner_text() == "done"  # finished work stays done
        page.screenshot(path=str(ARTIFACTS / "backfill_done.png"), full_page=True)

        assert trail(engine) == [("pause", "admin", "console", "checkout <peak>"), ("resume", "admin", "console", None),
                                 ("retry", "admin", "console", "trigger fixed"), ("cancel", "admin", "console", "wrong time")]
        shown = [(r.get_attribute("data-action"), r.get_attribute("data-actor")) for r in page.locator("#audit tr.audit").all()]
        assert shown == [("cancel", "admin"), ("retry", "admin"), ("resume", "admin"), ("pause", "admin")]
        assert "checkout <peak>" in page.locator("#audit").inner_text()  # shown as text, not markup

        # Airflow's audit log has them too (Browse → Audit Log)
        events = stack.api("GET", "/eventLogs?dag_id=rowfill_console_fill&limit=100")["event_logs"]
        ours = sorted(e["event"] for e in events if e["event"].startswith("rowfill."))
        assert ours == ["rowfill.cancel", "rowfill.pause", "rowfill.resume", "rowfill.retry"]
        assert {e["owner"] for e in events if e["event"].startswith("rowfill.")} == {"admin"}

        # the DAG's "Backfill" tab, inside the Airflow UI
        page.goto(f"{stack.base}/dags/rowfill_console_fill/plugin/rowfill_backfill")
        frame = page.frame_locator("iframe")
        frame.locator("#name").wait_for()
        assert frame.locator("#name").get_attribute("data-backfill") == "console_fill"
        page.screenshot(path=str(ARTIFACTS / "dag_tab.png"))
    finally:
        context.close()
