"""The progress page behind the Airflow UI plugin: every backfill's progress bar, rate, ETA and chunk map.

A FastAPI app mounted in Airflow's API server (``plugins/rowfill_plugin.py``). Airflow gives
plugin apps no authentication of their own, so every route requires an authenticated Airflow
user (the UI's session cookie or a bearer token). One aggregated query per backfill keeps the
page fast with hundreds of chunks.
"""

from __future__ import annotations

import html

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from rowfill.checkpoint import CheckpointStore
from rowfill.db import engine_for
from rowfill.keys import chunk_label
from rowfill.report import summarize
from rowfill.spec import load_specs


def _auth():
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return [Depends(requires_authenticated())]


def collect_progress() -> list[dict]:
    specs, errors = load_specs()
    out = []
    engines = {}
    try:
        for spec in specs:
            entry = {"backfill": spec.name, "dag_id": spec.dag_id, "table": str(spec.table), "state": "not started", "chunks": []}
            try:
                engine = engines.get(spec.connection) or engines.setdefault(spec.connection, engine_for(spec.connection))
                store = CheckpointStore(engine)
                if spec.name in store.backfill_names():
                    chunks = store.chunks(spec.name)
                    s = summarize(spec.name, chunks)
                    running = sum(c.status == "running" for c in chunks)
                    state = ("done" if chunks and s.chunks_done == s.chunks else
                             "failed" if s.chunks_failed else "running" if running else "waiting")
                    entry.update(s.to_dict(), state=state, chunks_running=running, chunks=[
                        {"chunk_no": c.chunk_no, "status": c.status, "lo": c.lo, "hi": c.hi, "rows_seen": c.rows_seen,
                         "label": chunk_label(spec.key, c.chunk_no, len(chunks), c.lo, c.hi, c.first_key),
                         "est_rows": c.est_rows, "last_error": c.last_error, "run_id": c.run_id} for c in chunks])
            except Exception as exc:  # noqa: BLE001 - one unreachable database must not blank the page
                entry.update(state="unavailable", error=str(exc).splitlines()[0])
            out.append(entry)
    finally:
        for engine in engines.values():
            engine.dispose()
    for error in errors:
        out.append({"backfill": error.source, "state": "invalid spec", "error": str(error), "chunks": []})
    return out


_COLORS = {"done": "#2e7d32", "running": "#1565c0", "pending": "#bdbdbd", "failed": "#c62828"}


def render(progress: list[dict]) -> str:
    rows = []
    for b in progress:
        total, seen = b.get("rows_estimated") or 0, b.get("rows_seen") or 0
        share = (seen / total) if total else (1.0 if b["state"] == "done" else 0.0)
        eta = b.get("eta_seconds")
        cells = "".join(
            f'<a class="c" title="{html.escape(c["label"])}: {c["status"]}'
            f'{html.escape(" - " + c["last_error"]) if c["last_error"] else ""}" style="background:{_COLORS[c["status"]]}" '
            f'href="../dags/{b["dag_id"]}/runs/{html.escape(c["run_id"] or "")}/tasks/chunk/mapped/{c["chunk_no"] - 1}" target="_top"></a>'
            for c in b["chunks"])
        rows.append(
            f'<tr><td><b>{html.escape(b["backfill"])}</b><br><small>{html.escape(b.get("table", ""))}</small></td>'
            f'<td>{html.escape(b["state"])}</td>'
            f'<td><div class="bar"><div style="width:{share:.1%}"></div></div>{seen:,} of ~{total:,} rows ({share:.1%})</td>'
            f'<td>{b.get("rows_per_second", 0):,.0f} rows/s</td><td>{"" if not eta else f"{eta / 60:.1f} min"}</td>'
            f'<td>{cells}{html.escape(b.get("error", ""))}</td></tr>')
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>rowfill backfills</title>"
        "<meta http-equiv='refresh' content='5'>"
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}"
        "td,th{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}"
        ".bar{background:#eee;width:220px;height:12px;border-radius:6px;overflow:hidden}"
        ".bar div{background:#1565c0;height:100%}.c{display:inline-block;width:10px;height:10px;margin:1px}</style>"
        "</head><body><h2>rowfill backfills</h2><table><tr><th>backfill</th><th>state</th><th>progress</th>"
        "<th>rate</th><th>ETA</th><th>chunks</th></tr>" + "".join(rows) + "</table></body></html>")


def create_app() -> FastAPI:
    app = FastAPI(title="rowfill", description="Progress of rowfill backfills")

    @app.get("/api/progress", dependencies=_auth())
    def progress() -> list[dict]:
        return collect_progress()

    @app.get("/", response_class=HTMLResponse, dependencies=_auth())
    def page() -> str:
        return render(collect_progress())

    return app
