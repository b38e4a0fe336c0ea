"""Seeing and hearing a backfill through a real Airflow 3 (scheduler + LocalExecutor, DAG processor,
API server, triggerer as separate processes):

- a failed chunk and its failed run alert by e-mail (real SMTP server) and webhook (real HTTP server);
- the progress page, in a real headless chromium signed in through Airflow's login page, shows a
  running backfill and updates it, inside the Airflow UI too, and links a failed chunk to the task
  instance page where it can be cleared; nobody signed out sees any of it;
- with a thousand chunks the page stays one query per backfill and small (numbers printed);
- a stalled backfill alerts once, again later, and when it moves again (watchdog in the triggerer);
- a run longer than its expected duration alerts through an Airflow Deadline Alert;
- metrics arrive at a StatsD listener from the real task processes.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text

from browser import browser, sign_in  # noqa: F401 - browser is a fixture
from helpers import create_database, make_users, wait_until, write_spec
from receivers import SmtpReceiver, StatsdReceiver, WebhookReceiver
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.status import statuses
from rowfill.spec.spec import load_spec
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.devstack import AirflowStack
from rowfill_dev.localpg import free_port

pytestmark = pytest.mark.airflow



@pytest.fixture(scope="module")
def receivers():
    with SmtpReceiver() as smtp, WebhookReceiver() as hook, StatsdReceiver() as statsd:
        yield smtp, hook, statsd


@pytest.fixture(scope="module")
def target(pg_cluster):
    url = create_database(pg_cluster, "observe_app")
    engine = engine_from_url(url)
    make_users(engine, 2_000, table="fail_users")
    make_users(engine, 36_000, table="slow_users")
    make_users(engine, 3_000, table="stall_users")
    make_users(engine, 20_000, table="wide_users")
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION fail_at_1500() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.id = 1500 THEN RAISE EXCEPTION 'no name for id 1500'; END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER fail_at_1500 BEFORE UPDATE ON fail_users FOR EACH ROW EXECUTE FUNCTION fail_at_1500()"))
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module")
def stack(target, receivers):
    url, engine = target
    smtp, hook, statsd = receivers
    home = Path(tempfile.mkdtemp(prefix="rowfill-observe-"))
    specs = home / "specs"
    specs.mkdir()
    common = {"alerts": [{"smtp": {"to": ["oncall@example.com"], "connection": "rowfill_smtp"}},
                         {"webhook": {"connection": "rowfill_hook", "endpoint": "/alerts"}}]}
    write_spec(specs, name="fail_fill", table="public.fail_users", chunk_rows=1_000, batch_rows=100, retries=0,
               pool="rowfill_fail", **common)
    write_spec(specs, name="slow_fill", table="public.slow_users", chunk_rows=6_000, batch_rows=200, pause="300ms",
               max_parallel_chunks=2, expected_duration="5s", pool="rowfill_slow", **common)
    write_spec(specs, name="stall_fill", table="public.stall_users", chunk_rows=3_000, batch_rows=100, pause="50ms",
               stall_after="4s", stall_repeat_after="12s", lock_timeout="5m", statement_timeout="10m",
               pool="rowfill_stall", **common)
    write_spec(specs, name="wide_map", table="public.wide_users", chunk_rows=20, batch_rows=20, pool="rowfill_wide")
    s = AirflowStack(home / "airflow", port=free_port(), target_url=url, specs_dir=specs, extra_env={
        "AIRFLOW_CONN_ROWFILL_SMTP": smtp.connection(),
        "AIRFLOW_CONN_ROWFILL_HOOK": json.dumps({"conn_type": "http", "host": hook.url}),  # the webhook's URL stays in Airflow
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    })
    try:
        s.prepare()
        for pool in ("rowfill_fail", "rowfill_slow", "rowfill_stall", "rowfill_wide"):
            s.airflow("pools", "set", pool, "2", "rowfill test pool")
        s.start()
        for dag_id in ("rowfill_fail_fill", "rowfill_slow_fill", "rowfill_stall_fill", "rowfill_wide_map"):
            s.wait_for_dag(dag_id)
        s.specs = specs
        yield s
    finally:
        s.stop()


def get(stack, path: str, token: str | None = None, cookie: str | None = None, gzip_ok: bool = False):
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    if gzip_ok:
        headers["Accept-Encoding"] = "gzip"
    req = urllib.request.Request(f"{stack.base}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
        encoding = resp.headers.get("Content-Encoding")
    return (gzip.decompress(raw) if encoding == "gzip" else raw), len(raw), encoding


def test_a_failed_chunk_and_its_run_alert_by_email_and_webhook(stack, receivers):
    smtp, hook, _ = receivers
    run_id = stack.trigger("rowfill_fail_fill")
    assert stack.wait_for_run("rowfill_fail_fill", run_id, timeout=400) == "failed"

    chunk_alert = wait_until(lambda: [a for a in hook.of("chunk_failed") if a["backfill"] == "fail_fill"],
                             timeout=60, what="chunk_failed webhook")[0]
    assert chunk_alert["run_id"] == run_id
    assert chunk_alert["chunk"]["label"] == "chunk 2/2 (id 1001..2000)" and chunk_alert["chunk"]["map_index"] == 1
    for needed in ("failed after its last retry", "committed up to id 1400", "400 of ~1,000 rows walked",
                   "no name for id 1500", "--only-failed --downstream", '"task_ids": [["chunk", 1]]'):
        assert needed in chunk_alert["text"], needed
    # the link in the alert opens this task instance in the Airflow UI
    assert chunk_alert["ti_url"] == (f"{stack.base}/dags/rowfill_fail_fill/runs/{urllib.parse.quote(run_id, safe='')}"
                                     "/tasks/chunk/mapped/1")
    run_alert = wait_until(lambda: [a for a in hook.of("run_failed") if a["backfill"] == "fail_fill"],
                           timeout=120, what="run_failed webhook (DAG processor callback)")[0]
    assert [c["chunk_no"] for c in run_alert["failed_chunks"]] == [2]
    assert "chunk 2 (id 1001..2000): committed up to id 1400" in run_alert["text"]

    subjects = wait_until(lambda: {s for s in smtp.mailbox.subjects() if "fail_fill" in s} >= {
        "[rowfill] fail_fill: chunk 2/2 (id 1001..2000) failed", "[rowfill] fail_fill: run failed"} and smtp.mailbox.subjects(),
        timeout=60, what="both e-mails")
    mail = smtp.mailbox.messages[subjects.index("[rowfill] fail_fill: chunk 2/2 (id 1001..2000) failed")]
    assert mail["X-Envelope-To"] == "oncall@example.com"
    body = mail.get_body(preferencelist=("html",)).get_content()
    assert "no name for id 1500" in body and "airflow tasks clear rowfill_fail_fill" in body
    assert not hook.of("run_succeeded") or all(a["backfill"] != "fail_fill" for a in hook.of("run_succeeded"))


def _progress(stack, token) -> dict:
    body, _, _ = get(stack, "/rowfill/api/progress", token=token)
    return {b["backfill"]: b for b in json.loads(body)}


def test_nobody_signed_out_sees_the_page_or_its_data(stack):
    for path in ("/rowfill/", "/rowfill/api/progress", "/rowfill/fragment"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(stack, path)
        assert refused.value.code == 401
        assert b"slow_fill" not in refused.value.read()
        with pytest.raises(urllib.error.HTTPError) as forged:
            get(stack, path, cookie="not-a-token")
        assert forged.value.code in (401, 403)
    # the UI's cookie alone is enough: that is what the page embedded in the Airflow UI gets
    body, _, _ = get(stack, "/rowfill/api/progress", cookie=stack.token())
    assert "wide_map" in {b["backfill"] for b in json.loads(body)}


def test_the_page_shows_a_running_backfill_and_updates_it_in_a_real_browser(stack, target, browser, receivers, tmp_path):
    _, engine = target
    _, hook, statsd = receivers
    context, page = sign_in(browser, stack)
    try:
        run_id = stack.trigger("rowfill_slow_fill")
        wait_until(lambda: statuses(engine, ["slow_fill"])["slow_fill"].rows_seen >= 400, timeout=300,
                   what="slow_fill making progress")
        page.goto(f"{stack.base}/rowfill/")
        section = page.locator("tr[data-backfill=slow_fill]")
        first = section.locator(".rows").inner_text()
        assert re.fullmatch(r"[\d,]+ of ~36,000 rows", first.strip()), first
        page.screenshot(path=str(tmp_path / "page.png"))
        # the overview refreshes its own numbers (no reload): the row count moves while we watch
        page.wait_for_function(
            "(first) => { const e = document.querySelector('tr[data-backfill=slow_fill] .rows');"
            " return e && e.textContent.trim() !== first.trim(); }", arg=first, timeout=90_000)
        later = section.locator(".rows").inner_text()
        assert int(later.split()[0].replace(",", "")) > int(first.split()[0].replace(",", ""))
        assert section.get_attribute("data-state") in ("running", "waiting for a pause", "done")

        # the backfill's page: its chunk map, and the rate while it runs
        page.goto(f"{stack.base}/rowfill/backfills/slow_fill")
        assert page.locator(".map .c").count() == 6
        assert "rows/s" in page.locator(".rate").inner_text()

        # the failed chunk of the earlier test: its error, and a link that opens its task instance
        page.goto(f"{stack.base}/rowfill/backfills/fail_fill")
        failed = page.locator("li.failed-chunk")
        assert failed.count() == 1 and "no name for id 1500" in failed.inner_text()
        href = failed.locator("a.ti").get_attribute("href")
        assert re.fullmatch(r"/dags/rowfill_fail_fill/runs/[^/]+/tasks/chunk/mapped/1", href), href

        # inside the Airflow UI: the navigation entry opens the overview in an iframe, signed in by cookie
        page.goto(f"{stack.base}/plugin/rowfill")
        frame = page.frame_locator("iframe")
        frame.locator("tr[data-backfill=slow_fill] .rows").wait_for()
        assert "of ~36,000 rows" in frame.locator("tr[data-backfill=slow_fill] .rows").inner_text()
        frame.locator("tr[data-backfill=fail_fill] a.open").click()
        frame.locator("li.failed-chunk a.ti").click()
        page.wait_for_url(re.compile(r".*/dags/rowfill_fail_fill/runs/.+/tasks/chunk/mapped/1$"))
        page.get_by_text("chunk 2/2 (id 1001..2000)").first.wait_for()
        page.screenshot(path=str(tmp_path / "task_instance.png"))
    finally:
        context.close()

    assert stack.wait_for_run("rowfill_slow_fill", run_id, timeout=600) == "success"
    # expected_duration 5s: the scheduler saw the deadline pass, the triggerer sent the alert
    late = wait_until(lambda: [a for a in hook.of("overdue") if a["backfill"] == "slow_fill"], timeout=120,
                      what="overdue alert")[0]
    assert late["run_id"] == run_id and "expected duration of 5.0 s" in late["text"]
    # metrics from the real task processes
    rows = wait_until(lambda: sum(statsd.values("airflow.rowfill.slow_fill.rows_processed", "c")) == 36_000,
                      timeout=60, what="all rows counted in StatsD")
    assert rows
    assert len(statsd.values("airflow.rowfill.slow_fill.batch_duration", "ms")) == 180
    waits = statsd.values("airflow.rowfill.slow_fill.throttle_wait", "ms")
    assert len(waits) == 174 and min(waits) >= 290  # the 300 ms pause between batches of each chunk


def test_the_page_stays_small_and_fast_with_a_thousand_chunks(stack, target):
    url, engine = target
    spec = load_spec(stack.specs / "wide_map.yaml")
    assert len(plan_backfill(engine, spec)) == 1_000
    with engine.begin() as conn:  # some history, so the map has every colour
        conn.execute(text("UPDATE rowfill.chunks SET status = 'done', rows_seen = est_rows, batches = 1 "
                          "WHERE backfill = 'wide_map' AND chunk_no <= 400"))
        conn.execute(text("UPDATE rowfill.chunks SET status = 'failed', last_error = 'boom ' || chunk_no, run_id = 'r', "
                          "map_index = chunk_no - 1 WHERE backfill = 'wide_map' AND chunk_no BETWEEN 401 AND 410"))
        conn.execute(text("SELECT pg_stat_reset()"))
    token = stack.token()
    get(stack, "/rowfill/api/progress", token=token)  # warm up
    with engine.connect() as conn:
        before = conn.execute(text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")).scalar()
    timings = {}
    for path in ("/rowfill/api/progress", "/rowfill/", "/rowfill/fragment", "/rowfill/backfills/wide_map"):
        t0 = time.monotonic()
        body, wire, encoding = get(stack, path, token=token, gzip_ok=True)
        timings[path] = (time.monotonic() - t0, len(body), wire, encoding)
    print("\npage with 1,000 chunks (+ 3 small backfills):")
    for path, (seconds, size, wire, encoding) in timings.items():
        print(f"  {path:24} {seconds * 1000:7.0f} ms  {size / 1024:7.1f} KiB ({wire / 1024:.1f} KiB on the wire, {encoding})")
    data = {b["backfill"]: b for b in json.loads(get(stack, "/rowfill/api/progress", token=token)[0])}
    wide = data["wide_map"]
    assert len(wide["chunks"]) == 1_000 and wide["chunks_done"] == 400 and wide["chunks_failed"] == 10
    page, _, _ = get(stack, "/rowfill/backfills/wide_map", token=token)
    wide_html = page.split(b"<div class='map'>")[1].split(b"</div>")[0]
    assert wide_html.count(b"class='c ") == 1_000 and page.count(b"class='failed-chunk'") == 10
    for _path, (seconds, size, wire, _) in timings.items():
        assert seconds < 20  # generous: a shared 2-core machine; the numbers above are the measurement
        assert size < 600 * 1024 and wire < 200 * 1024
    with engine.connect() as conn:  # database work of the 3 requests + this query: a handful of transactions
        after = conn.execute(text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")).scalar()
    # other tests' DAG runs and the stall watchdog share this database; one query per chunk would be >= 3,000
    assert after - before < 400, after - before


def test_a_stalled_backfill_alerts_once_again_later_and_when_it_moves(stack, target, receivers):
    _, engine = target
    _, hook, _ = receivers
    blocker = engine_from_url(str(engine.url.render_as_string(hide_password=False)))
    conn = blocker.connect()
    txn = conn.begin()
    conn.execute(text("SELECT * FROM stall_users WHERE id = 1500 FOR UPDATE"))  # a live transaction holding a row
    released = False
    try:
        run_id = stack.trigger("rowfill_stall_fill")
        stalled = wait_until(lambda: [a for a in hook.of("stalled") if a["backfill"] == "stall_fill"], timeout=300,
                             what="stalled alert")[0]
        assert stalled["run_id"] == run_id and stalled["stalled_seconds"] >= 4
        assert "no checkpoint progress for" in stalled["text"] and "chunk 1 (id start..3000)" in stalled["text"]
        again = wait_until(lambda: [a for a in hook.of("still_stalled") if a["backfill"] == "stall_fill"], timeout=120,
                           what="still_stalled alert")[0]
        assert again["stalled_seconds"] >= 12
        time.sleep(8)  # no third alert for the same stall
        assert len([a for a in hook.received if a["json"]["backfill"] == "stall_fill"
                    and a["json"]["event"] in ("stalled", "still_stalled")]) == 2
        txn.rollback()
        released = True
        try:
            wait_until(lambda: [a for a in hook.of("progressing_again") if a["backfill"] == "stall_fill"], timeout=120,
                       what="progressing_again note")
        except TimeoutError as exc:  # show what the watchdog and the chunk saw
            logs = {t: stack.task_log("rowfill_stall_fill", run_id, t, map_index=0 if t == "chunk" else -1)
                    for t in ("watchdog", "chunk")}
            raise AssertionError(f"{exc}; received {hook.events()}; logs: {logs}") from exc
        assert stack.wait_for_run("rowfill_stall_fill", run_id, timeout=300) == "success"
    finally:
        if not released:
            txn.rollback()
        conn.close()
        blocker.dispose()
    wait_until(lambda: [a for a in hook.of("run_succeeded") if a["backfill"] == "stall_fill"], timeout=120,
               what="run_succeeded (DAG processor callback)")
    states = {t["task_id"]: t["state"] for t in stack.task_instances("rowfill_stall_fill", run_id)}
    assert states["watchdog"] == "success"
    assert "stall alerts sent in this run: ['stalled', 'still_stalled', 'progressing_again']" in stack.task_log(
        "rowfill_stall_fill", run_id, "watchdog")
    assert [r["json"]["event"] for r in hook.received if r["json"]["backfill"] == "stall_fill"] == [
        "stalled", "still_stalled", "progressing_again", "run_succeeded"]
    assert CheckpointStore(engine).chunk("stall_fill", 1).status == "done"
