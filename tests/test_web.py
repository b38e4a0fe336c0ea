"""The progress page's content, from a real checkpoint store: what a chunk map and a failure look
like, that text from the database can never become markup, and where pause/resume would appear.
(Authentication, the browser and the numbers with 1,000 chunks are in test_observe_e2e.py.)"""

from __future__ import annotations

import re

from sqlalchemy import text

from helpers import make_users, spec_for, write_spec
from rowfill.airflow.web import backfill_page, collect, render_page
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner


def test_the_pages_show_progress_chunk_map_and_an_escaped_error_with_its_task_link(engine, db_url, tmp_path, monkeypatch):
    make_users(engine, 3_000)
    write_spec(tmp_path, chunk_rows=1_000)
    spec = spec_for(tmp_path, chunk_rows=1_000)
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(1)
    with engine.begin() as conn:
        conn.execute(text("UPDATE rowfill.chunks SET status = 'failed', run_id = 'manual__2026-01-01T00:00:00+00:00', "
                          "map_index = 1, last_error = '<script>alert(1)</script> \"quoted\"' WHERE chunk_no = 2"))

    [entry] = collect()
    assert entry["state"] == "failed" and entry["rows_seen"] == 1_000 and entry["rows_estimated"] == 3_000
    assert entry["console_state"] == "failed" and entry["tone"] == "bad"
    overview = render_page([entry], ui_base="/airflow")
    assert "1,000 of ~3,000" in overview and "<script>alert(1)" not in overview
    assert "href='/rowfill/backfills/users_full_name'" in overview

    page = backfill_page(spec, ui_base="/airflow")
    assert "1,000 of ~3,000 rows" in page and "(33.3%)" in page
    cells = re.findall(r"<(?:a|i) class='c (\w)'", page.split("<div class='map'>")[1].split("</div>")[0])
    assert cells == ["d", "f", "p"]
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    link = "/airflow/dags/rowfill_users_full_name/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/chunk/mapped/1"
    assert f"<a class='ti' href='{link}' target='_top'>" in page
    # the actions are there (a failed backfill may still be paused), and the charts are inline SVG
    assert "data-action='pause'" in page and "data-action='retry'" in page
    assert page.count("<svg class='chart'") == 3 and "rows per second" in page


# -- bad specs, who sees them, and cross-site POSTs (issue 10) ----------------------------------
# The app as Airflow's API server mounts it, with Airflow's real simple auth manager and real
# signed tokens (admin, viewer, and a user with no role, who may read nothing).


import pytest  # noqa: E402

from rowfill.airflow.sameorigin import same_origin  # noqa: E402
from rowfill.engine.control import ControlStore  # noqa: E402




@pytest.fixture
def specs(engine, db_url, tmp_path, monkeypatch):
    """A good backfill with progress in the checkpoint store, next to two bad specs: one not UTF-8,
    one whose DAG cannot be built (a retry_delay beyond what a timedelta holds)."""
    folder = tmp_path / "specs"
    folder.mkdir()
    make_users(engine, 3_000)
    write_spec(folder, chunk_rows=1_000)
    plan_backfill(engine, spec_for(folder, chunk_rows=1_000))
    ChunkRunner(engine, spec_for(folder, chunk_rows=1_000)).run(1)
    (folder / "latin.yaml").write_bytes("name: latin\nconnection: app_db\ntable: users\nkey: id\n"
                                        "set: {full_name: \"'Zoë'\"}\n".encode("latin-1"))
    write_spec(folder, name="huge", retry_delay="99999999999h")
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(folder))
    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    return folder


def client_for(token: str | None):
    from fastapi.testclient import TestClient

    from rowfill.airflow.web import create_app

    return TestClient(create_app(), cookies={"_token": token} if token else None)


def test_bad_specs_show_on_the_page_next_to_good_ones_with_paths_relative_to_the_specs_folder(specs, airflow_auth):
    client = client_for(airflow_auth("admin"))
    page, fragment, progress = client.get("/"), client.get("/fragment"), client.get("/api/progress")

    assert (page.status_code, fragment.status_code, progress.status_code) == (200, 200, 200)
    entries = {e["backfill"]: e for e in progress.json()}
    assert entries["users_full_name"]["rows_seen"] == 1_000 and entries["users_full_name"]["rows_estimated"] == 3_000
    assert entries["latin.yaml"]["state"] == "invalid spec"
    assert entries["latin.yaml"]["error"] == "latin.yaml: is not UTF-8 text (byte 0xeb at line 5); save it as UTF-8"
    assert entries["huge.yaml"]["state"] == "invalid spec" and entries["huge.yaml"]["field"] == "retry_delay"
    assert entries["huge.yaml"]["error"].startswith("huge.yaml: field 'retry_delay': ")
    assert "1,000 of ~3,000 rows" in page.text
    assert "latin.yaml: is not UTF-8" in page.text and "huge.yaml: field &#39;retry_delay&#39;" in page.text
    for body in (page.text, fragment.text, progress.text):
        assert str(specs) not in body and str(specs.resolve()) not in body, "an absolute server path is on the page"


def test_bad_specs_show_only_to_users_who_may_see_dags(specs, airflow_auth):
    viewer = client_for(airflow_auth("viewer")).get("/api/progress")
    assert viewer.status_code == 200
    assert {e["backfill"] for e in viewer.json()} == {"users_full_name", "latin.yaml", "huge.yaml"}

    nobody = client_for(airflow_auth(None))  # signed in, but may read no DAG and no import error
    for path in ("/", "/fragment", "/api/progress"):
        answer = nobody.get(path)
        assert answer.status_code == 200
        assert "latin.yaml" not in answer.text and "huge.yaml" not in answer.text and "users_full_name" not in answer.text
    assert nobody.get("/api/progress").json() == []
    assert client_for(None).get("/api/progress").status_code == 401  # signed out: nothing at all


@pytest.mark.parametrize("headers, why", [
    ({"Origin": "https://evil.example"}, "another site"),
    ({"Origin": "http://testserver.evil.example"}, "another site"),
    ({"Origin": "http://testserver:8081"}, "another site"),  # same host name, another port: another site
    ({"Origin": "null"}, "names no site"),  # a sandboxed frame or a file:// page
    ({"Referer": "https://evil.example/attack.html"}, "another site"),
    ({}, "no Origin or Referer"),
])
def test_a_cross_site_post_is_refused_and_changes_nothing(specs, engine, airflow_auth, headers, why):
    client = client_for(airflow_auth("admin"))  # the victim is signed in: the browser sends the cookie
    answer = client.post("/api/dags/rowfill_users_full_name/pause", json={}, headers=headers)

    assert answer.status_code == 403, answer.text
    assert why in answer.json()["detail"]
    assert ControlStore(engine).get("users_full_name").state == "running"


def test_a_same_site_post_pauses_and_resumes(specs, engine, airflow_auth):
    client = client_for(airflow_auth("admin"))
    paused = client.post("/api/dags/rowfill_users_full_name/pause", json={}, headers={"Origin": "http://testserver"})
    assert paused.status_code == 200, paused.text
    assert ControlStore(engine).get("users_full_name").state == "paused"
    # a page of this site that sends a Referer but no Origin (older browsers) is this site too
    resumed = client.post("/api/dags/rowfill_users_full_name/resume", json={},
                          headers={"Referer": "http://testserver/rowfill/"})
    assert resumed.status_code == 200, resumed.text
    assert ControlStore(engine).get("users_full_name").state == "running"
    # a script with a bearer token sends neither header: no browser, no forged cookie
    scripted = client_for(None).post("/api/dags/rowfill_users_full_name/pause", json={},
                                     headers={"Authorization": f"Bearer {airflow_auth('admin')}"})
    assert scripted.status_code == 200, scripted.text
    assert ControlStore(engine).get("users_full_name").state == "paused"


@pytest.mark.parametrize("headers, allowed", [
    ({"host": "airflow.example:8080", "origin": "http://airflow.example:8080"}, True),
    ({"host": "airflow.example", "origin": "https://airflow.example"}, True),  # TLS proxy: Host without a port
    ({"host": "AIRFLOW.example:8080", "origin": "http://airflow.EXAMPLE:8080"}, True),  # host names ignore case
    ({"host": "10.0.0.5:8080", "x-forwarded-host": "airflow.example", "origin": "https://airflow.example"}, True),
    ({"host": "airflow.example:8080", "origin": "http://airflow.example:9090"}, False),
    ({"host": "airflow.example", "origin": "http://airflow.example:9090"}, False),
    ({"host": "airflow.example", "origin": "https://airflow.example.evil.example"}, False),
    ({"host": "airflow.example", "referer": "file:///tmp/attack.html"}, False),
    ({"host": "airflow.example", "origin": "http://[::1"}, False),  # not a URL at all
])
def test_same_origin_compares_the_origin_with_the_host_the_request_went_to(headers, allowed):
    assert same_origin("POST", headers)[0] is allowed
    assert same_origin("GET", headers) == (True, "")  # reading changes nothing
