"""The progress page's content, from a real checkpoint store: what a chunk map and a failure look
like, that text from the database can never become markup, and where pause/resume would appear.
(Authentication, the browser and the numbers with 1,000 chunks are in test_observe_e2e.py.)"""

from __future__ import annotations

import re

from sqlalchemy import text

from helpers import make_users, spec_for, write_spec
from rowfill.plan import plan_backfill
from rowfill.runner import ChunkRunner
from rowfill.web import collect, render_fragment, render_page


def test_the_page_shows_progress_chunk_map_and_an_escaped_error_with_its_task_link(engine, db_url, tmp_path, monkeypatch):
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
    page = render_page([entry], ui_base="/airflow")
    assert "1,000 of ~3,000 rows" in page and "(33.3%)" in page
    cells = re.findall(r"<(?:a|i) class='c (\w)'", render_fragment([entry]))
    assert cells == ["d", "f", "p"]
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    link = "/airflow/dags/rowfill_users_full_name/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/chunk/mapped/1"
    assert f"<a class='ti' href='{link}' target='_top'>" in page
    # live control is installed (rowfill.control): a failed backfill still offers pause
    assert "data-action='pause'" in render_fragment([entry])


def test_pause_and_resume_buttons_appear_only_with_a_control_provider():
    entry = {"backfill": "b", "dag_id": "rowfill_b", "state": "running", "rows_estimated": 10, "rows_seen": 5,
             "share": 0.5, "chunks": [], "control": {"available": True, "state": "paused"}}
    html = render_fragment([entry])
    assert "<button class='ctl' data-dag='rowfill_b' data-action='resume'>resume</button>" in html
    entry["control"]["state"] = "running"
    assert "data-action='pause'>pause</button>" in render_fragment([entry])
