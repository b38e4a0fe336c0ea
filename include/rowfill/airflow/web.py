"""The backfills console behind the Airflow UI plugin: an overview of every backfill, a page per
backfill (chunk map, run history, charts, audit trail) and its actions (pause, resume, cancel,
knobs, retry failed chunks, dry-run plan), each confirmed and recorded.

A FastAPI app mounted in Airflow's API server (``rowfill.airflow.plugin``, an ``airflow.plugins`` entry point), shown inside the
Airflow UI through the plugin's ``external_views``: under Browse (the overview) and as a
"Backfill" tab on a backfill DAG's page and on its runs (``EXTERNAL_VIEWS``). Airflow gives plugin
apps no authentication of their own, so every route requires an Airflow user: the UI's ``_token``
cookie (which the browser sends to this same-origin page, so the embedded view just works when
signed in) or a bearer token. Only backfills whose DAG the user may read are listed; actions need
edit rights on the DAG (Airflow's auth manager decides). Bad specs are listed only to users who may
see DAGs and import errors, with paths relative to the specs folder.

Requests that change something (the actions' POSTs) must come from this site: their Origin (or
Referer) header must name the host they were sent to (``rowfill.airflow.sameorigin``), and their
body must be JSON, so another site's page cannot use a signed-in user's cookie to press a button.
Pages are Jinja2 templates (``templates/``) with autoescaping: every text from specs, errors,
users and the database is escaped; the charts are SVG text drawn by ``rowfill.console.svg``.

Every action, from here or from the ``rowfill`` command, is appended to ``rowfill.audit``
(``rowfill.store.audit``) and to Airflow's audit log (``rowfill.airflow.runs.audit_log``), and the
backfill's page shows the trail.

It stays fast with a thousand chunks and a month of runs: one aggregated query per backfill
(``rowfill.engine.status``), one query for the rate samples, one for the wait samples (waits by reason
and the latency probe's readings, ``rowfill.store.waits``), one for the runs, one for the trail
(``bench/console_speed.py`` measures it), and the overview refreshes only its table.
"""

from __future__ import annotations

import html
import importlib
import logging
import os
import threading
import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.engine import Engine

from rowfill.airflow import runs as airflow_runs
from rowfill.airflow.chunk_settings import max_map_length
from rowfill.airflow.connections import engine_for
from rowfill.airflow.rollback_dag import rollback_dag_id
from rowfill.airflow.sameorigin import same_origin
from rowfill.airflow.specs_folder import specs_folder
from rowfill.console import svg
from rowfill.console.states import TONE, ConsoleState, Tone, WaitReason, console_state, wait_reason
from rowfill.engine.control import BadKnob, ControlStore, parse_knob
from rowfill.engine.dryrun import dry_run
from rowfill.engine.rollback import control_backfill, rollback_in_progress
from rowfill.engine.status import BackfillStatus, statuses
from rowfill.engine.throttle import format_knob
from rowfill.errors import RowfillError, SpecError, SpecErrors
from rowfill.spec.durations import format_duration
from rowfill.spec.spec import load_specs
from rowfill.store import audit, rates, timeline, waits
from rowfill.store.states import BackfillState, ChunkState

log = logging.getLogger("rowfill.console")

REFRESH_SECONDS = 3  # the overview's table refresh
FAILURES_SHOWN = 50  # failed chunks listed with their error on a backfill's page
CHART_POINTS = 240  # time steps per chart: enough for a 640 px wide line, small for the page
RUNS_LISTED = 50  # newest runs in the table; the strip above it shows every run of the history
KNOBS_ON_PAGE = ("batch_rows", "pause", "pause_ratio")  # the knobs the page's form changes (issue 14)
ACTIONS = ("pause", "resume", "cancel", "set", "retry", "plan")
URL_PREFIX = "/rowfill"

# The plugin's external views: the overview under Browse, and a "Backfill" tab on a DAG's page and
# on a DAG run's page (Airflow 3 ``external_views``: destination dag / dag_run, ``{DAG_ID}`` and
# ``{RUN_ID}`` filled in by the UI; airflow/api_fastapi/core_api/datamodels/plugins.py). The tab of a
# DAG that is no rowfill backfill says so.
EXTERNAL_VIEWS = [
    {"name": "Backfills", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "rowfill", "category": "browse"},
    {"name": "Backfill", "href": f"{URL_PREFIX}/dags/{{DAG_ID}}", "destination": "dag", "url_route": "rowfill_backfill"},
    {"name": "Backfill", "href": f"{URL_PREFIX}/dags/{{DAG_ID}}?run_id={{RUN_ID}}", "destination": "dag_run",
     "url_route": "rowfill_backfill_run"},
]

_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=select_autoescape(["html"], default=True), trim_blocks=True, lstrip_blocks=True)

ENGINE_SECONDS = 300.0  # an engine (and its pooled connections) serves pages this long, then is rebuilt: a
# changed Airflow connection takes effect within five minutes, and a page does not pay a new connection (~5-20 ms)
ENGINES_KEPT = 8  # target databases with an engine kept at once (each pools up to 5 connections)
_ENGINES: dict[tuple[str, str | None], tuple[float, Engine]] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(connection: str) -> Engine:
    """The target database's engine for the console's requests, reused for ``ENGINE_SECONDS``.

    :param connection: the spec's Airflow connection id (``ROWFILL_DATABASE_URL`` wins, as in ``engine_for``).
    :raises: what ``engine_for`` raises for a connection that cannot be resolved.
    """
    key = (connection, os.environ.get("ROWFILL_DATABASE_URL"))
    now = time.monotonic()
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
        if found is None or now - found[0] > ENGINE_SECONDS:
            if found is not None:
                found[1].dispose()
            while len(_ENGINES) >= ENGINES_KEPT:  # the oldest goes: its idle connections are closed
                _ENGINES.pop(min(_ENGINES, key=lambda k: _ENGINES[k][0]))[1].dispose()
            found = _ENGINES[key] = (now, engine_for(connection))
    return found[1]


def _user_dep():
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def _readable(user, dag_ids: set[str]) -> set[str]:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET")


def _may_edit(user, dag_id: str) -> bool:
    """Whether ``user`` may change DAG ``dag_id`` (Airflow's PUT right: what pausing a DAG needs); True without a user (tests)."""
    if user is None:
        return True
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return get_auth_manager().is_authorized_dag(method="PUT", details=DagDetails(id=dag_id), user=user)


def _may_see_spec_errors(user) -> bool:
    """Whether ``user`` may see the list of bad specs: in Airflow's terms they are import errors of
    DAG files, so the same two rights Airflow asks before showing those (``GET /api/v2/importErrors``
    needs the import-errors view, the DAG list ``GET /api/v2/dags`` read access to DAGs)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagDetails

    manager = get_auth_manager()
    return (manager.is_authorized_view(access_view=AccessView.IMPORT_ERRORS, user=user)
            and manager.is_authorized_dag(method="GET", details=DagDetails(id=None), user=user))


# source -> ((mtime_ns, size), errors): building a spec's DAGs takes ~20 ms, the page refreshes every
# few seconds, and the result only changes when the file does.
_BUILD_CHECKS: dict[str, tuple[tuple[int, int], list[SpecError]]] = {}


def _buildable(specs: list) -> tuple[list, list[SpecError]]:
    """The specs whose DAGs Airflow will accept, and the errors of the others (``factory.spec_dags``,
    the same check ``dags/rowfill_spec_errors.py`` reports), remembered per version of each file."""
    # Imported here for Airflow's start-up cost: the DAG factory brings the task SDK (about 1.5 s on
    # the 2-core test machine); the plugin loads at every API-server start, this only on the first page.
    from rowfill.airflow.factory import spec_dags
    from rowfill.airflow.rollback_dag import clashes

    taken = {s.dag_id for s in specs}
    good, errors = [], []
    for spec in specs:
        try:
            stat = os.stat(spec.source)
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        cached = _BUILD_CHECKS.get(spec.source)
        if stamp is not None and cached is not None and cached[0] == stamp:
            found = cached[1]
        else:
            try:
                spec_dags(spec, taken)
                found = []
            except SpecErrors as exc:
                found = exc.errors
            if stamp is not None:
                _BUILD_CHECKS[spec.source] = (stamp, found)
        errors += found
        if not found:
            good.append(spec)
    return good, [*errors, *clashes(good)]


def _relative(text: str, root: Path) -> str:
    """``text`` without the server's absolute path of the specs folder: paths relative to it."""
    for prefix in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        text = text.replace(prefix + os.sep, "").replace(prefix, "the specs folder")
    return text


def _invalid(error: SpecError, root: Path) -> dict:
    """A bad spec as the page shows it: which file (relative to the specs folder), field and problem."""
    source = _relative(error.source, root)
    field = f"field '{error.field}': " if error.field else ""
    message = f"{source}: {field}{_relative(error.problem, root)}"
    return {"backfill": source, "state": "invalid spec", "console_state": "invalid spec", "tone": Tone.BAD,
            "field": error.field, "error": message, "why": message, "chunks": []}


def control_hook():
    """The live-control provider, if one is installed (``rowfill.engine.control.web_control``)."""
    try:
        module = importlib.import_module("rowfill.engine.control")
    except ImportError:
        return None
    return getattr(module, "web_control", None)


# -- what the pages show -----------------------------------------------------------------------
_RUN_OUTCOME = {"success": "good", "failed": "bad", "running": "active", "queued": "quiet"}  # svg.run_strip colours
_RUN_TONE = {"success": Tone.GOOD, "failed": Tone.BAD, "running": Tone.ACTIVE, "queued": Tone.QUIET}


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else "—"


def _run_view(run: airflow_runs.Run, rollback: bool = False) -> dict:
    """A run as the pages show it: times in UTC, a tone for its outcome, who triggered it."""
    seconds = run.seconds
    return {"dag_id": run.dag_id, "run_id": run.run_id, "state": run.state, "tone": _RUN_TONE.get(run.state, Tone.QUIET),
            "start_text": _when(run.start), "end_text": _when(run.end) if run.end else ("—" if run.start is None else "running"),
            "duration": format_duration(seconds) if seconds is not None else "—", "kind": "rollback" if rollback else "backfill",
            "triggered_by": run.triggered_by or ("schedule" if run.run_type == "scheduled" else run.run_type),
            "start": run.start, "end": run.end, "rows": "—"}


def _latest_runs(specs) -> dict[str, airflow_runs.Run]:
    """The newest run of each backfill DAG and rollback DAG; {} when Airflow's database cannot be read."""
    ids = [s.dag_id for s in specs] + [rollback_dag_id(s) for s in specs]
    if not ids:
        return {}
    try:
        return airflow_runs.latest(ids)
    except Exception as exc:  # noqa: BLE001 - the overview shows the checkpoint store without run history
        log.warning("no run history from Airflow's metadata database: %s", str(exc).splitlines()[0])
        return {}


def _eta(b: dict) -> str:
    if b["console_state"] in (ConsoleState.DONE, ConsoleState.ROLLED_BACK):
        return "finished"
    if b["console_state"] in (ConsoleState.NOT_STARTED, ConsoleState.PLANNED):
        return "—"
    if b["console_state"] in (ConsoleState.FAILED, ConsoleState.STALE):
        return "none until it runs again"
    eta = b.get("eta_seconds")
    return "unknown" if eta is None else format_duration(eta)


def _waits(s: BackfillStatus) -> list[str | None]:
    """Why its chunks wait: running chunks' throttle states while some run, else the unfinished chunks'."""
    if s.state == BackfillState.RUNNING:
        return [c.throttle.get("throttle_state") for c in s.chunks if c.status == ChunkState.RUNNING]
    return [c.throttle.get("throttle_state") for c in s.chunks if c.status in (ChunkState.PENDING, ChunkState.FAILED)]


_WHY = {ConsoleState.NOT_STARTED: "never planned on its database; its first run plans it",
        ConsoleState.PLANNED: "planned; no batch has run yet",
        ConsoleState.WAITING_PAUSE: "between runs: nothing runs now and nothing is wrong"}


class _ChunkView:
    """A chunk's status read like its dict (``c["status"]``, ``c.get("run_id")``) without copying it:
    a page of 1,000 chunks copied each one into a dict for nothing (a third of its time on the bench)."""

    __slots__ = ("_chunk",)

    def __init__(self, chunk):
        self._chunk = chunk

    def __getitem__(self, name: str):
        return getattr(self._chunk, name)

    def get(self, name: str, default=None):
        """The field, or ``default`` when the chunk has no such field."""
        return getattr(self._chunk, name, default)


def _entry(spec, s: BackfillStatus, control: str, latest: dict, rolling_back: bool, views: bool = False) -> dict:
    """One backfill as plain data for the pages and ``/api/progress``: ``rowfill status``'s fields
    plus the console's state, its tone, why it waits and the last run."""
    # a shallow copy: dataclasses.asdict deep-copies every chunk (~0.8 ms each; a page of 1,000 chunks)
    d = {f.name: getattr(s, f.name) for f in fields(s)}
    d["chunks"] = [_ChunkView(c) for c in s.chunks] if views else [dict(c.__dict__) for c in s.chunks]
    d.update(share=round(s.share, 4), chunks_total=len(s.chunks))
    d.update(dag_id=spec.dag_id, table=str(spec.table), key=spec.key, control_state=control, page=True)
    for c in d["chunks"] if not views else ():
        c.pop("worker", None)
        c.pop("updated_at", None)
    forward, back = latest.get(spec.dag_id), latest.get(rollback_dag_id(spec))
    rolled_back = back is not None and back.state == "success" and (forward is None or (back.start or datetime.min.replace(
        tzinfo=UTC)) >= (forward.start or datetime.min.replace(tzinfo=UTC)))
    waits = _waits(s)
    state = console_state(s.state, control, waits, rolling_back=rolling_back, rolled_back=rolled_back)
    held = next((w for w in waits if w and wait_reason(w) is not None), None)
    d.update(console_state=state, tone=TONE[state],
             why=d.get("last_error") if state == ConsoleState.FAILED else (held or _WHY.get(state)))
    newest = back if rolled_back or rolling_back else forward
    d["last_run"] = _run_view(newest, newest is back) if newest else None
    d["eta_text"] = _eta(d)
    return d


def _unavailable(spec, exc) -> dict:
    message = str(exc).splitlines()[0]
    return {"backfill": spec.name, "dag_id": spec.dag_id, "table": str(spec.table), "state": "unavailable",
            "console_state": "unavailable", "tone": Tone.BAD, "error": message, "why": message, "chunks": [],
            "page": True, "eta_text": "—", "last_run": None}


def _visible_specs(user):
    """(specs the user may read that Airflow accepts, bad specs' errors they may see, the specs folder)."""
    root = specs_folder()
    specs, errors = load_specs(root)
    specs, build_errors = _buildable(specs)
    errors += build_errors
    if user is not None:
        allowed = _readable(user, {s.dag_id for s in specs})
        specs = [s for s in specs if s.dag_id in allowed]
        if errors and not _may_see_spec_errors(user):
            errors = []
    return specs, errors, root


def _gather(engine, group: list, latest: dict, views: bool = False) -> list[dict]:
    """The entries of the backfills of one database: one status query each, one for the control rows."""
    control = control_hook()
    found = statuses(engine, [s.name for s in group])
    states = control.states(engine, group) if control is not None else {}
    out = []
    for spec in group:
        progress = rollback_in_progress(engine, spec.name) if found[spec.name].state == BackfillState.NOT_STARTED else None
        entry = _entry(spec, found[spec.name], states.get(spec.name, "running"), latest, progress is not None, views)
        if control is not None:
            entry["control"] = {"available": True, "state": states[spec.name]}
        out.append(entry)
    return out


def collect(user=None) -> list[dict]:
    """Every backfill the user may see, as plain data; one query per backfill, one engine per database.

    Bad specs come last, as entries of state "invalid spec", for users who may see them
    (``_may_see_spec_errors``; all of them when ``user`` is None, as for the tests).
    """
    specs, errors, root = _visible_specs(user)
    latest = _latest_runs(specs)
    out: list[dict] = []
    by_conn: dict[str, list] = {}
    for spec in specs:
        by_conn.setdefault(spec.connection, []).append(spec)
    for connection, group in by_conn.items():
        try:
            engine = _engine(connection)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not blank the page
            out += [_unavailable(s, exc) for s in group]
            continue
        try:
            out += _gather(engine, group, latest)
        except Exception as exc:  # noqa: BLE001
            out += [_unavailable(s, exc) for s in group]
    out.sort(key=lambda e: e["backfill"])
    out += [_invalid(e, root) for e in errors]
    return out


# -- the chunk map -------------------------------------------------------------------------------
_STATE_CLASS = {"done": "d", "running": "r", "pending": "p", "failed": "f", "stale": "s"}


def _ti_href(ui_base: str, dag_id: str, c: dict) -> str | None:
    if c.get("run_id") is None or c.get("map_index") is None:
        return None
    return f"{ui_base}/dags/{quote(dag_id, safe='')}/runs/{quote(c['run_id'], safe='')}/tasks/chunk/mapped/{c['map_index']}"


def _range(b: dict, c: dict) -> str:
    lo, hi = c["lo"], c["hi"]
    if lo is None:  # the lowest chunk: from the start of the key space
        return f"{b.get('key', 'key')} start..{hi}"
    if isinstance(lo, int) and isinstance(hi, int):
        return f"{b.get('key', 'key')} {lo + 1}..{hi}"
    return f"{b.get('key', 'key')} ({lo}, {hi}]"


def _problem(c: dict) -> str:
    """What the page says about a failed or stale chunk: its error, or why it is stale."""
    if c["status"] == "stale":
        age = c.get("lease_age")
        heard = f"last heard {format_duration(age)} ago" if age is not None else "not heard from"
        return (f"stale: marked running, but its runner's lease ran out ({heard}): its process is gone. The next "
                "attempt (an Airflow retry, a cleared task or `rowfill run`) takes it over from its checkpoint.")
    return (c.get("last_error") or "no error recorded").splitlines()[0]


def chunk_map(b: dict, ui_base: str = "") -> tuple[Markup, list[dict]]:
    """The chunk map as escaped HTML (one small square per chunk, linked to its task instance) and
    the failed or stale chunks as plain data for the list under it.

    Built in Python rather than a template loop: a thousand cells in a few milliseconds.
    """
    e = html.escape
    cells, failures = [], []
    for c in b["chunks"]:
        href = _ti_href(ui_base, b["dag_id"], c)
        title = f"chunk {c['chunk_no']} {_range(b, c)}: {c['status']}, {c['rows_seen']:,} of ~{c['est_rows']:,}"
        attrs = f"class='c {_STATE_CLASS.get(c['status'], 'p')}' title='{e(title)}' data-chunk='{c['chunk_no']}'"
        cells.append(f"<a {attrs} href='{e(href)}' target='_top'></a>" if href else f"<i {attrs}></i>")
        if c["status"] in ("failed", "stale"):
            failures.append({"kind": "stale" if c["status"] == "stale" else "failed", "chunk_no": c["chunk_no"],
                             "range": _range(b, c), "href": href, "problem": _problem(c),
                             "summary": f"{c['rows_seen']:,} of ~{c['est_rows']:,} rows, {c['attempts']} attempt(s)."})
    return Markup("".join(cells)), failures


# -- charts --------------------------------------------------------------------------------------
WAIT_LABELS = {WaitReason.REST: "rest between batches", WaitReason.LATENCY: "latency back-off",
               WaitReason.GATE: "gate", WaitReason.WINDOW: "window", WaitReason.PAUSE: "operator pause",
               WaitReason.OTHER: "other"}  # the chart's legend, in the order the layers stack


def _holds(b: dict) -> list[tuple[WaitReason, float]]:
    """The holds going on now of chunks deferred for a window or a pause: (reason, since, seconds since
    the epoch) from their ``throttle_since`` (``rowfill.store.waits``), for the wait chart's last steps."""
    found = []
    for c in b["chunks"]:
        throttle = c.get("throttle") or {}
        since = throttle.get("throttle_since")
        if since is None or c["status"] == "done":
            continue
        reason = wait_reason(throttle.get("throttle_state"))
        if reason in waits.DEFERRED:
            found.append((reason, datetime.fromisoformat(since).timestamp()))
    return found


def _charts(conn, spec, b: dict) -> list[Markup]:
    """The backfill's charts over the kept samples (``rates.KEEP_SECONDS``): rows/s and batch size, throttle
    waits by reason (seconds waited per 5-second bucket, all chunks stacked; from ``rowfill.wait_samples``),
    and, when the spec has a latency probe, the probe's worst reading against its limit from the same samples."""
    steps, step = timeline.steps(conn, spec.name, float(rates.KEEP_SECONDS), CHART_POINTS, float(rates.BUCKET_SECONDS))
    rate = [(s.t, s.rows / step) for s in steps]
    size = [(s.t, s.rows / s.batches if s.batches else None) for s in steps]
    charts = [svg.line_chart("rows per second", [svg.Series("rows/s", rate)]),
              svg.line_chart("batch size (rows per batch)", [svg.Series("rows per batch", size)])]
    found = waits.steps(conn, spec.name, float(rates.KEEP_SECONDS), CHART_POINTS, _holds(b), float(rates.BUCKET_SECONDS))
    title = f"throttle waits by reason (seconds waited per {rates.BUCKET_SECONDS} s, all chunks)"
    if found is None:
        charts.append(svg.stacked_chart(title, [], []))
    else:
        per_bucket = rates.BUCKET_SECONDS / found.width  # a step's seconds -> seconds per bucket
        charts.append(svg.stacked_chart(title, found.times(), [
            (label, [v * per_bucket for v in found.seconds[reason]]) for reason, label in WAIT_LABELS.items()], "s"))
    probe = getattr(spec, "latency_probe", None)
    if probe is not None:
        worst, limit = [], []
        for t, w, lim in zip(found.times(), found.worst, found.limit) if found is not None else ():
            worst.append((t, None if w is None else w * 1000))
            limit.append((t, None if w is None else (lim if lim is not None else probe.limit) * 1000))
        charts.append(svg.line_chart("latency probe (ms, worst per step) vs its limit",
                                     [svg.Series("latency ms", worst), svg.Series("limit", limit, dashed=True)]))
    return [Markup(c) for c in charts]


# -- the backfill's page -------------------------------------------------------------------------
def _find(user, name: str | None = None, dag_id: str | None = None):
    """The spec of backfill ``name`` (or of DAG ``dag_id``, a backfill's or its rollback's) the user may read.

    :raises HTTPException: 404 for no such backfill (or one the user may not read: the same answer).
    """
    specs, _, _ = _visible_specs(user)
    for spec in specs:
        if spec.name == name or (dag_id is not None and dag_id in (spec.dag_id, rollback_dag_id(spec))):
            return spec
    raise HTTPException(404, f"no backfill {'for DAG ' + dag_id if dag_id else name!r} that you may see")


def _run_rows(conn, spec, runs: list[dict]) -> None:
    """Fill in each backfill run's rows from the rate samples while they are kept (``rates.KEEP_SECONDS``), one query."""
    started = [r for r in runs if r["start"] is not None and r["kind"] == "backfill"]
    now = datetime.now(UTC)
    found = timeline.rows_in(conn, spec.name, [(r["start"].timestamp(), (r["end"] or now).timestamp()) for r in started],
                             keep=float(rates.KEEP_SECONDS))
    for r, rows in zip(started, found):
        if rows is not None:
            r["rows"] = f"{rows:,}"


def backfill_page(spec, user=None, ui_base: str = "", root: str = URL_PREFIX) -> str:
    """The HTML of one backfill's page: state, numbers, actions, chunk map, charts, runs, audit trail.

    :param spec: the backfill. :param user: the Airflow user (None: tests, allowed everything).
    :param ui_base: the Airflow UI's address prefix for links. :param root: this app's prefix.
    :raises RowfillError / sqlalchemy errors: the target database cannot be read (the route says so).
    """
    runs, runs_error = [], None
    try:
        for run in airflow_runs.history([spec.dag_id, rollback_dag_id(spec)]):
            runs.append(_run_view(run, run.dag_id != spec.dag_id))
    except Exception as exc:  # noqa: BLE001 - show the checkpoint store without Airflow's history
        runs_error = str(exc).splitlines()[0]
    latest: dict[str, airflow_runs.Run] = {}  # DAG id -> its latest run
    for r in runs:
        latest.setdefault(r["dag_id"], airflow_runs.Run(r["dag_id"], r["run_id"], r["state"], r["start"], r["end"], "", None))
    engine = _engine(spec.connection)
    [b] = _gather(engine, [spec], latest, views=True)
    control = ControlStore(engine).get(spec.name)
    with engine.connect() as conn:
        charts = _charts(conn, spec, b)
        _run_rows(conn, spec, runs)
        trail = audit.latest(conn, spec.name)
        trail_ok = audit.available(conn)
    strip = Markup(svg.run_strip(f"runs of the last {airflow_runs.HISTORY_DAYS} days",
                                 [(r["start"].timestamp(), _RUN_OUTCOME.get(r["state"], "other"))
                                  for r in runs if r["start"] is not None],
                                 datetime.now(UTC).timestamp() - airflow_runs.HISTORY_DAYS * 86_400.0))
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    cells, failures = chunk_map(b, ui_base)
    knobs = [(k, format_knob(k, v)) for k, v in sorted((control.knobs or {}).items())]
    entries = [{**e.__dict__, "details_text": ", ".join(f"{k}={v}" for k, v in e.details.items())} for e in trail]
    return _TEMPLATES.get_template("backfill.html").render(
        b=b, root=root, ui_base=ui_base, chunk_map=cells, failures=failures[:FAILURES_SHOWN],
        more_failures=max(len(failures) - FAILURES_SHOWN, 0), charts=charts, runs=runs[:RUNS_LISTED], runs_total=len(runs), run_counts=sorted(counts.items()),
        run_strip=strip, runs_error=runs_error,
        audit=entries, audit_available=trail_ok, knobs=knobs, can_act=_may_edit(user, spec.dag_id),
        history_days=airflow_runs.HISTORY_DAYS, samples_kept=format_duration(rates.KEEP_SECONDS))


def render_fragment(progress: list[dict], ui_base: str = "", root: str = URL_PREFIX) -> str:
    """The HTML of the overview table (refreshed in place by the page), every value escaped.

    :param progress: ``collect()``'s entries. :param ui_base: the Airflow UI's prefix. :param root: this app's prefix.
    """
    return _TEMPLATES.get_template("overview_table.html").render(rows=progress, root=root, ui_base=ui_base)


def render_page(progress: list[dict], ui_base: str = "", root: str = URL_PREFIX) -> str:
    """The overview: ``render_fragment`` inside a page that refreshes it every ``REFRESH_SECONDS`` seconds."""
    return _TEMPLATES.get_template("overview.html").render(rows=progress, root=root, ui_base=ui_base,
                                                           refresh=REFRESH_SECONDS)


def _ui_base(request: Request) -> str:
    """Where the Airflow UI lives, seen from this app: its mount point minus our own prefix."""
    root = request.scope.get("root_path", "") or ""
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else root.rsplit("/", 1)[0]


def _root(request: Request) -> str:
    """This app's own prefix as the browser sees it (``/rowfill`` under the API server)."""
    return request.scope.get("root_path", "") or ""


# -- actions -------------------------------------------------------------------------------------
def _token(request: Request) -> str | None:
    """The caller's Airflow token: the bearer token, else the UI's ``_token`` cookie."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get("_token")


def _retry(request: Request, engine, spec) -> dict:
    """Clear every failed chunk's task instance through Airflow's API, grouped by run.

    :returns: details for the audit trail (chunks and runs cleared). :raises HTTPException: 409 with
        nothing to retry, 502 when Airflow refuses (its answer in the message).
    """
    [s] = statuses(engine, [spec.name]).values()
    failed = [c for c in s.chunks if c.status == ChunkState.FAILED]
    if not failed:
        raise HTTPException(409, f"{spec.name} has no failed chunk to retry")
    unknown = [c.chunk_no for c in failed if c.run_id is None or c.map_index is None]
    by_run: dict[str, list] = {}
    for c in failed:
        if c.run_id is not None and c.map_index is not None:
            by_run.setdefault(c.run_id, []).append(c)
    if not by_run:
        raise HTTPException(409, f"failed chunks {unknown} of {spec.name} ran outside Airflow (no task instance): "
                                 f"run them again with `rowfill run {spec.name}`")
    token = _token(request)
    base = f"{request.url.scheme}://{request.url.netloc}"
    cleared = []
    for run_id, chunks in by_run.items():
        try:
            airflow_runs.clear_chunks(base, token or "", spec.dag_id, run_id, [c.map_index for c in chunks])
        except airflow_runs.ClearRefused as exc:
            raise HTTPException(502, str(exc)) from None
        cleared += [c.chunk_no for c in chunks]
    return {"chunks": cleared, "runs": sorted(by_run), **({"not_in_airflow": unknown} if unknown else {})}


def _knobs(body: dict) -> dict:
    """The page's knob fields, validated like ``rowfill set`` (``parse_knob``). :raises HTTPException: 400."""
    knobs = {}
    for name in KNOBS_ON_PAGE:
        raw = body.get(name)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            knobs[name] = parse_knob(name, str(raw))
        except BadKnob as exc:
            raise HTTPException(400, str(exc)) from None
    if not knobs:
        raise HTTPException(400, f"no knob given: fill in one of {', '.join(KNOBS_ON_PAGE)}")
    return knobs


def act(request: Request, spec, action: str, body: dict, user_name: str) -> dict:
    """Do one console action on ``spec`` and record it in the audit trail and Airflow's audit log.

    :param action: one of ``ACTIONS``. :param body: the JSON body (``reason``, knob fields).
    :returns: ``{"backfill", "action", "message", "state"}`` (and ``plan`` for a dry run).
    :raises HTTPException: 400 (bad knob), 409 (nothing to retry), 502 (Airflow refused the clear).
    """
    reason = str(body.get("reason") or "").strip() or None
    engine = _engine(spec.connection)
    store = ControlStore(engine)
    details: dict = {}
    answer: dict = {}
    if action in ("pause", "resume", "cancel"):
        note = f"from the Airflow console by {user_name}" + (f": {reason}" if reason else "")
        control, rollback = control_backfill(engine, store, spec.name, action, note)
        details["state"] = control.state
        message = f"{spec.name}: {control.state}"
        if rollback is not None:  # its rollback in progress is paused/resumed/cancelled with it
            details["rollback"] = rollback[0].state
            message += f"; its rollback {rollback[0].state} too"
    elif action == "set":
        knobs = _knobs(body)
        control = store.set_knobs(spec.name, knobs)
        details["knobs"] = {k: format_knob(k, v) for k, v in knobs.items()}
        message = f"{spec.name}: live knobs " + ", ".join(f"{k}={v}" for k, v in details["knobs"].items())
    elif action == "retry":
        details = _retry(request, engine, spec)
        message = f"{spec.name}: cleared chunk task(s) {details['chunks']} in Airflow; they run again from their checkpoints"
    else:  # plan
        report = dry_run(engine, spec, limit=max_map_length())
        answer["plan"] = report.render()
        details.update(chunks=len(report.chunks), rows_to_walk=report.rows_to_walk)
        message = f"{spec.name}: dry run done, nothing was changed"
    warning = _record(engine, spec, user_name, action, details, reason)
    if warning:
        message += f" (warning: {warning})"
    return {"backfill": spec.name, "action": action, "message": message, "state": store_state(spec), **answer}


def store_state(spec) -> str:
    """The backfill's control state after an action (``running``, ``paused`` or ``cancelled``)."""
    return ControlStore(_engine(spec.connection)).get(spec.name).state


def _record(engine, spec, user_name: str, action: str, details: dict, reason: str | None) -> str | None:
    """Append the action to ``rowfill.audit`` and Airflow's audit log; what could not be recorded, in words."""
    problems = []
    try:
        audit.record(engine, spec.name, user_name, audit.Source.CONSOLE, action, details, reason)
    except RowfillError as exc:
        problems.append(str(exc))
    try:
        airflow_runs.audit_log(action, user_name, spec.dag_id, {"backfill": spec.name, "reason": reason, **details})
    except Exception as exc:  # noqa: BLE001 - the action is done; say that Airflow's log missed it
        problems.append(f"not in Airflow's audit log: {str(exc).splitlines()[0]}")
    for problem in problems:
        log.warning("%s", problem)
    return "; ".join(problems) or None


# -- the app ------------------------------------------------------------------------------------
def refuse_cross_site(request: Request) -> None:
    """Every route's first check: a request that would change something and was not sent from this
    site gets 403 before anything else runs (``rowfill.airflow.sameorigin.same_origin``).

    :raises HTTPException: 403, naming why the request looks cross-site.
    """
    allowed, why = same_origin(request.method, request.headers)
    if not allowed:
        raise HTTPException(403, f"cross-site request refused: {why}")


def _json_only(request: Request) -> None:
    """:raises HTTPException: 415 for a body that is not JSON (an HTML form of another site cannot send JSON)."""
    if request.headers.get("content-type", "").split(";")[0] != "application/json":
        raise HTTPException(415, "send application/json")


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts under ``/rowfill`` of Airflow's API server (Airflow docs,
    "Plugins": ``fastapi_apps``); users are Airflow's own, through its auth manager.

    Routes: ``GET /`` (overview), ``GET /fragment`` (its table), ``GET /api/progress`` (JSON),
    ``GET /backfills/{name}`` (a backfill's page), ``GET /dags/{dag_id}`` (the same, for the DAG's
    "Backfill" tab), ``POST /api/backfills/{name}/{action}`` (``ACTIONS``) and, as before,
    ``POST /api/dags/{dag_id}/{pause|resume}``. POSTs raise HTTPException 404 (unknown action or
    backfill), 415 (not JSON), 403 (cross-site, or the user may not edit the DAG), 400/409/502 (``act``).
    """
    app = FastAPI(title="rowfill", description="The backfills console", dependencies=[Depends(refuse_cross_site)])
    user_dep = _user_dep()

    @app.get("/api/progress")
    def progress(user=user_dep) -> list[dict]:
        """Every backfill the user may see, as JSON (``collect``)."""
        return collect(user)

    @app.get("/fragment", response_class=HTMLResponse)
    def fragment(request: Request, user=user_dep) -> str:
        """The overview's table alone, for the page's refresh."""
        return render_fragment(collect(user), _ui_base(request), _root(request))

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user=user_dep) -> str:
        """The overview."""
        return render_page(collect(user), _ui_base(request), _root(request))

    @app.get("/backfills/{name}", response_class=HTMLResponse)
    def backfill(name: str, request: Request, user=user_dep) -> str:
        """One backfill's page; 404 for a backfill the user may not read or that does not exist."""
        return backfill_page(_find(user, name=name), user, _ui_base(request), _root(request))

    @app.get("/dags/{dag_id}", response_class=HTMLResponse)
    def dag_tab(dag_id: str, request: Request, user=user_dep) -> str:
        """The DAG page's "Backfill" tab: the page of the backfill whose DAG (or rollback DAG) this is."""
        try:
            spec = _find(user, dag_id=dag_id)
        except HTTPException:
            return _TEMPLATES.from_string("{% extends 'base.html' %}{% block body %}<p class='note'>DAG {{ d }} is not a "
                                          "rowfill backfill you may see.</p>{% endblock %}").render(d=dag_id)
        return backfill_page(spec, user, _ui_base(request), _root(request))

    def _act(request: Request, user, spec, action: str, body: dict) -> dict:
        _json_only(request)
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}; actions are {', '.join(ACTIONS)}")
        if not _may_edit(user, spec.dag_id):
            raise HTTPException(403, f"you may not change {spec.dag_id}")
        return act(request, spec, action, body if isinstance(body, dict) else {}, user.get_name() if user else "test")

    @app.post("/api/backfills/{name}/{action}", dependencies=[Depends(_json_only)])
    def backfill_action(name: str, action: str, request: Request, body: dict = Body(default_factory=dict),
                        user=user_dep) -> dict:
        """One action on a backfill (pause, resume, cancel, set, retry, plan), recorded in the audit trail."""
        _json_only(request)
        return _act(request, user, _find(user, name=name), action, body)

    @app.post("/api/dags/{dag_id}/{action}", dependencies=[Depends(_json_only)])
    def control(dag_id: str, action: str, request: Request, user=user_dep) -> dict:
        """Pause or resume by DAG id (the earlier page's buttons and scripts); recorded like the console's actions.

        :raises HTTPException: 415 (not JSON), 404 (unknown action or DAG), 403 (no edit rights on the DAG).
        """
        _json_only(request)
        if action not in ("pause", "resume"):
            raise HTTPException(404, f"unknown action {action!r}")
        if not _may_edit(user, dag_id):
            raise HTTPException(403, f"you may not change {dag_id}")
        spec = _find(user, dag_id=dag_id)
        return _act(request, user, spec, action, {})

    return app
