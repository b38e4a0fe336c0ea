"""Alerts reach people through the notifiers a spec names, with what they need to act: which
backfill, which chunk (key range), how far it got, the error and which task to clear. Real SMTP and
HTTP receivers on loopback record what arrived. (The same alerts through a real scheduler, DAG
processor and triggerer are in test_observe_e2e.py.)"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for, write_spec
from receivers import SmtpReceiver, WebhookReceiver
from airflow.sdk import BaseNotifier

from rowfill.airflow import alerts

# Credentials made up per run: a fixed one in a tracked file is what tests/test_secrets.py refuses.
TOKEN = secrets.token_hex(8)
from rowfill.airflow.notifiers import Alert, deliver
from rowfill.airflow.stall import StallTracker, StallTrigger
from rowfill.engine.plan import plan_backfill
from rowfill.errors import SpecErrors
from rowfill.spec.alert_targets import parse_alerts
from rowfill.spec.spec import load_spec
from rowfill.store.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smtp(monkeypatch):
    with SmtpReceiver() as server:
        monkeypatch.setenv("AIRFLOW_CONN_ROWFILL_SMTP", server.connection())
        yield server


def http_connection(url: str, **extra) -> str:
    """An Airflow HTTP connection (``AIRFLOW_CONN_*`` JSON) whose host is the webhook URL and whose extra are headers."""
    return json.dumps({"conn_type": "http", "host": url, "extra": extra})


@pytest.fixture
def hook(monkeypatch):
    """A real HTTP receiver, reached through the Airflow connection ``rowfill_hook`` (its token in the connection)."""
    with WebhookReceiver() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_ROWFILL_HOOK", http_connection(receiver.url, **{"X-Token": TOKEN}))
        yield receiver


def alert_fields(smtp, hook):
    return {"alerts": [{"smtp": {"to": ["oncall@example.com"], "connection": "rowfill_smtp"}},
                       {"webhook": {"connection": "rowfill_hook", "endpoint": "/rowfill"}}]}


def test_alerts_field_names_notifiers_and_refuses_what_cannot_work(tmp_path):
    targets = parse_alerts([{"smtp": {"to": "a@example.com"}}, {"webhook": {"connection": "hook", "events": ["stalled"]}}])
    assert [(t.kind, t.events) for t in targets] == [("smtp", targets[0].events), ("webhook", ("stalled",))]
    assert targets[0].options["to"] == ["a@example.com"]
    cases = {
        "slack": ([{"slack": {"channel": "#x"}}], "needs the Slack provider"),
        "pager": ([{"pager": {}}], "unknown notifier 'pager'"),
        "no connection": ([{"webhook": {}}], "option 'connection' is required"),
        "bad class": ([{"notifier": {"class": "not a class"}}], "'class' must name an Airflow notifier class"),
        "bad event": ([{"smtp": {"to": "a@b.c", "events": ["late"]}}], "events must be a list of"),
        "not a list": ({"smtp": {"to": "a@b.c"}}, "expected a list of notifiers"),
    }
    for name, (value, message) in cases.items():
        path = write_spec(tmp_path, name="x_" + name.replace(" ", "_"), alerts=value)
        with pytest.raises(SpecErrors) as err:
            load_spec(path)
        assert "field 'alerts': " in str(err.value) and message in str(err.value), name
    bad = write_spec(tmp_path, name="stall_bad", stall_after="10m", stall_repeat_after="5m")
    with pytest.raises(SpecErrors, match="stall_repeat_after.*must be longer than stall_after"):
        load_spec(bad)


@pytest.mark.parametrize("entry, says", [
    ({"webhook": {"url": "https://hooks.example.com/T0/B0/abc"}},
     "'url' is not accepted: a webhook's URL and headers carry its token, and the spec lives in git. Put them in an "
     "Airflow HTTP connection"),
    ({"webhook": {"connection": "hook", "headers": {"X-Token": TOKEN}}}, "airflow connections add rowfill_webhook --conn-type http"),
    ({"webhook": {"connection": "hook", "endpoint": "/hook?token=abc"}}, "option 'endpoint' holds a URL with a credential"),
    ({"smtp": {"to": "a@b.c", "password": TOKEN}}, "'password' would write a credential into the spec"),
    ({"slack": {"token": "xoxb-1"}}, "keep it in the Slack connection"),
    ({"notifier": {"class": "pkg.mod:Pager", "args": {"routing_key": "abc", "api_key": TOKEN}}}, "'api_key' would write a credential"),
    ({"notifier": {"class": "pkg.mod:Pager", "args": {"endpoint": "https://bot:pw@pager.example.com/x"}}},
     "option 'endpoint' holds a URL with a credential in it"),
])
def test_a_credential_written_in_the_spec_is_refused_with_the_connection_to_create(tmp_path, entry, says):
    path = write_spec(tmp_path, name="leaky", alerts=[{"smtp": {"to": "a@b.c"}}, entry])
    with pytest.raises(SpecErrors) as err:
        load_spec(path)
    [error] = err.value.errors
    assert error.source == str(path) and error.field == "alerts"
    assert "entry 2 (" in str(error) and says in str(error)


def test_a_failing_chunk_and_its_run_alert_by_email_and_webhook(tmp_path, db_url, engine, airflow_db, monkeypatch, smtp, hook):
    from airflow.dag_processing.dagbag import DagBag

    make_users(engine, 3_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.id = 1600 THEN RAISE EXCEPTION 'bad row 1600'; END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER boom BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION boom()"))
    write_spec(tmp_path, chunk_rows=1_000, batch_rows=200, retries=0, **alert_fields(smtp, hook))
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags["rowfill_users_full_name"]

    run = dag.test()

    assert run.state == "failed"
    [chunk_alert] = hook.of("chunk_failed")
    assert chunk_alert["backfill"] == "users_full_name" and chunk_alert["run_id"] == run.run_id
    assert chunk_alert["chunk"]["chunk_no"] == 2 and chunk_alert["chunk"]["label"] == "chunk 2/3 (id 1001..2000)"
    assert chunk_alert["chunk"]["rows_seen"] == 400 and chunk_alert["chunk"]["map_index"] == 1
    text_ = chunk_alert["text"]
    for needed in ("chunk 2/3 (id 1001..2000) failed after its last retry", "committed up to id 1400",
                   "400 of ~1,000 rows walked (40% of the chunk)", "bad row 1600",
                   "airflow tasks clear rowfill_users_full_name -t '^chunk$' --only-failed --downstream -y",
                   '"task_ids": [["chunk", 1]]'):
        assert needed in text_, needed
    assert hook.received[0]["headers"]["X-Token"] == TOKEN

    subjects = smtp.mailbox.subjects()
    assert "[rowfill] users_full_name: chunk 2/3 (id 1001..2000) failed" in subjects
    mail = smtp.mailbox.messages[subjects.index("[rowfill] users_full_name: chunk 2/3 (id 1001..2000) failed")]
    assert mail["To"] == "oncall@example.com" and mail["From"] == "rowfill@example.com"
    assert "bad row 1600" in smtp.mailbox.bodies()[0] and "id 1400" in smtp.mailbox.bodies()[0]

    [run_alert] = hook.of("run_failed")
    assert [c["chunk_no"] for c in run_alert["failed_chunks"]] == [2]
    assert "chunk 2 (id 1001..2000): committed up to id 1400" in run_alert["text"]
    assert "2,400 of ~3,000 rows walked (80.0%)" in run_alert["text"]
    assert "[rowfill] users_full_name: run failed" in smtp.mailbox.subjects()


def test_a_successful_run_says_so(tmp_path, db_url, engine, airflow_db, monkeypatch, hook):
    from airflow.dag_processing.dagbag import DagBag

    make_users(engine, 1_000)
    write_spec(tmp_path, alerts=[{"webhook": {"connection": "rowfill_hook", "events": ["run_succeeded", "run_failed"]}}])
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", db_url)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags["rowfill_users_full_name"]
    assert dag.test().state == "success"
    [ok] = hook.of("run_succeeded")
    assert hook.events() == ["run_succeeded"]
    assert "succeeded: 1,000 of ~1,000 rows walked (100.0%), 1,000 written, 1/1 chunks done" in ok["text"]


def test_one_broken_target_does_not_stop_the_others(hook, caplog, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_HOOK", http_connection("http://127.0.0.1:9/nothing-listens"))
    spec_targets = parse_alerts([{"webhook": {"connection": "dead_hook", "timeout": "2s"}},
                                 {"webhook": {"connection": "no_such_connection"}},
                                 {"webhook": {"connection": "rowfill_hook"}}])
    failed = deliver(spec_targets, Alert("stalled", "b", "s", "text"))
    assert failed == ["webhook dead_hook", "webhook no_such_connection"]
    assert hook.events() == ["stalled"]
    assert "could not send the stalled alert of b to webhook dead_hook" in caplog.text
    assert "no_such_connection" in caplog.text and "isn't defined" in caplog.text


class CountingNotifier(BaseNotifier):
    """A notifier class a spec names (``notifier: {class: test_alerts:CountingNotifier}``); its args are templates."""

    template_fields = ("message", "channel")
    sent: list = []

    def __init__(self, message: str, channel: str = "#x"):
        super().__init__()
        self.message, self.channel = message, channel

    def notify(self, context):
        CountingNotifier.sent.append((self.channel, self.message))


def test_a_notifier_class_named_in_the_spec_gets_the_alert_through_its_templated_args():
    CountingNotifier.sent.clear()
    targets = parse_alerts([{"notifier": {"class": "test_alerts:CountingNotifier",
                                          "args": {"message": "{{ rowfill.subject }} / {{ rowfill.event }}", "channel": "#ops"}}},
                            {"notifier": {"class": "json:dumps"}}])
    failed = deliver(targets, Alert("stalled", "b", "backfill b stalled", "text"))
    assert CountingNotifier.sent == [("#ops", "backfill b stalled / stalled")]
    assert failed == ["notifier json:dumps"]  # not a notifier: logged, never raised


def test_the_stall_watchdog_alerts_once_again_later_and_when_it_moves(tmp_path):
    t = StallTracker(stall_after=10, again_after=40, now=0)
    readings = [(0, (5, 0)), (5, (5, 0)), (9, (5, 0)), (10, (5, 0)), (20, (5, 0)), (39, (5, 0)), (40, (5, 0)),
                (100, (5, 0)), (101, (6, 0)), (105, (7, 0)), (116, (7, 0))]
    events = [(now, due) for now, sig in readings if (due := t.observe(sig, now))]
    # first reading starts the clock; stalled at 10 s after the last change, still at 40 s, never a third time
    assert events == [(10, ("stalled", 10)), (40, ("still_stalled", 40)), (101, ("progressing_again", 101)),
                      (116, ("stalled", 11))]


def test_a_stall_that_ends_with_the_last_chunk_still_gets_its_all_clear(tmp_path, db_url, engine, monkeypatch, hook):
    """The chunk that was stuck moves and finishes between two polls of the watchdog: the on-call who
    was told "stalled" still hears that it moved, before the watchdog ends (real trigger, real database)."""
    make_users(engine, 500)
    path = write_spec(tmp_path, chunk_rows=1_000, stall_after="1s", stall_repeat_after="1m",
                      alerts=[{"webhook": {"connection": "rowfill_hook"}}])
    spec = load_spec(path)
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    plan_backfill(engine, spec)
    CheckpointStore(engine).start(spec.name, 1, "worker-a", "manual__stuck")

    async def watch():
        trigger = StallTrigger(str(path), spec.dag_id, "manual__stuck", poll=0.2)
        return [event.payload async for event in trigger.run()]

    async def scenario():
        watching = asyncio.ensure_future(watch())
        for _ in range(150):
            if hook.of("stalled"):
                break
            await asyncio.sleep(0.1)
        assert hook.events() == ["stalled"]
        with engine.begin() as conn:  # the last batches and the chunk's end land within one poll
            conn.execute(text("UPDATE rowfill.chunks SET batches = batches + 5, status = 'done' WHERE backfill = :n"),
                         {"n": spec.name})
        return await asyncio.wait_for(watching, timeout=30)

    [finished] = asyncio.run(scenario())
    assert finished == {"status": "finished", "alerts": ["stalled", "progressing_again"]}
    assert hook.events() == ["stalled", "progressing_again"]
    [clear] = hook.of("progressing_again")
    assert clear["run_id"] == "manual__stuck"


def test_deadline_callback_sends_the_overdue_alert(tmp_path, db_url, engine, monkeypatch, hook):
    make_users(engine, 1_000)
    path = write_spec(tmp_path, expected_duration="30m", alerts=[{"webhook": {"connection": "rowfill_hook"}}])
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    context = {"dag_run": {"dag_run_id": "manual__x", "dag_id": "rowfill_users_full_name"}, "deadline": {}}
    asyncio.run(alerts.run_overdue(context=context, spec_source=str(path)))
    [late] = hook.of("overdue")
    assert late["run_id"] == "manual__x"
    assert "still not finished after its expected duration of 30 min" in late["text"]
    assert late["progress"] is not None and late["progress"]["state"] == "not started"


def test_overdue_alert_still_goes_out_when_the_spec_lost_its_expected_duration(tmp_path, db_url, engine, monkeypatch, hook):
    # The deadline is set when the run is queued; the callback reads the spec file when it fires.
    # Someone may have removed expected_duration in between: the heads-up must still arrive.
    make_users(engine, 1_000)
    path = write_spec(tmp_path, alerts=[{"webhook": {"connection": "rowfill_hook"}}])
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    context = {"dag_run": {"dag_run_id": "manual__y", "dag_id": "rowfill_users_full_name"}, "deadline": {}}
    asyncio.run(alerts.run_overdue(context=context, spec_source=str(path)))
    [late] = hook.of("overdue")
    assert late["run_id"] == "manual__y"
    assert "still not finished after its expected duration (since removed from the spec)" in late["text"]


def test_deadline_alert_is_attached_only_when_an_expected_duration_is_given(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    write_spec(tmp_path, name="timed", expected_duration="2h")
    write_spec(tmp_path, name="untimed")
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)
    timed, untimed = bag.dags["rowfill_timed"], bag.dags["rowfill_untimed"]
    [deadline] = timed.deadline
    assert deadline.interval.total_seconds() == 7200
    assert deadline.callback.path == "rowfill.airflow.alerts.run_overdue"
    assert deadline.callback.kwargs == {"spec_source": str((tmp_path / "timed.yaml").resolve())}
    assert not untimed.deadline
    assert "watchdog" not in untimed.task_ids


def test_stall_after_adds_a_watchdog_beside_the_chunks(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    write_spec(tmp_path, stall_after="15m")
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags["rowfill_users_full_name"]
    watchdog = dag.get_task("watchdog")
    assert watchdog.upstream_task_ids == {"plan"} and not watchdog.downstream_task_ids
    assert watchdog.pool == "default_pool" != dag.get_task("chunk").pool
    assert spec_for(tmp_path, stall_after="15m").stall_again_after == 3600


def test_a_chunk_lost_with_its_worker_is_found_by_run_and_map_index(tmp_path, db_url, engine, monkeypatch, hook):
    """When Airflow loses the worker, the DAG processor runs the failure callback with the bare mapped
    task (no chunk attached): the checkpoint's run id and map index still name the chunk."""
    from types import SimpleNamespace

    from rowfill.airflow.observers import remember_task_instance
    from rowfill.engine.plan import plan_backfill

    make_users(engine, 2_000)
    spec = spec_for(tmp_path, chunk_rows=1_000, alerts=[{"webhook": {"connection": "rowfill_hook"}}])
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    plan_backfill(engine, spec)
    remember_task_instance(engine, spec.name, 2, 1)
    CheckpointStore(engine).start(spec.name, 2, "worker-that-vanished", "scheduled__1")

    context = {"ti": SimpleNamespace(map_index=1, try_number=4, run_id="scheduled__1"), "run_id": "scheduled__1",
               "task": SimpleNamespace(), "exception": "Task was lost (heartbeat timeout)"}
    alerts.on_chunk_failure(spec)(context)

    [sent] = hook.of("chunk_failed")
    assert sent["chunk"]["chunk_no"] == 2 and sent["chunk"]["label"] == "chunk 2/2 (id 1001..2000)"
    assert "nothing committed yet: 0 of ~1,000 rows walked" in sent["text"]
    assert "Task was lost (heartbeat timeout)" in sent["text"] and '"task_ids": [["chunk", 1]]' in sent["text"]
