"""The progress page behind the Airflow UI plugin: every backfill's progress bar, rate, ETA, state and
chunk map, with each failed chunk's error and a link to its task instance (where "Clear" is).

A FastAPI app mounted in Airflow's API server (``rowfill.airflow.plugin``, an ``airflow.plugins`` entry point), shown inside the
Airflow UI through the plugin's ``external_views`` entry. Airflow gives plugin apps no
authentication of their own, so every route requires an Airflow user: the UI's ``_token`` cookie
(which the browser sends to this same-origin page, so the embedded view just works when signed
in) or a bearer token. Only backfills whose DAG the user may read are listed; bad specs (those
that do not load and those whose DAG Airflow would reject, the ones ``dags/rowfill_spec_errors.py``
reports) are listed only to users who may see DAGs and import errors, with paths relative to the
specs folder.

Requests that change something (the pause/resume buttons' POSTs) must come from this site: their
Origin (or Referer) header must name the host they were sent to (``rowfill.airflow.sameorigin``), so
another site's page cannot use a signed-in user's cookie to press the buttons.

It stays fast with hundreds of chunks: one aggregated query per backfill (``rowfill.engine.status``), a
compact chunk map, and the page refreshes only its table by fetching ``fragment`` every few
seconds instead of reloading itself.

Pause/resume buttons appear only when a live-control provider is installed: a module
``rowfill.engine.control`` with an object ``web_control`` offering ``state(engine, spec) -> str | None``,
``states(engine, specs) -> {name: state}`` (one query for the page),
``pause(engine, spec, user)`` and ``resume(engine, spec, user)``. This page builds no control of
its own.
"""

from __future__ import annotations

import html
import importlib
import os
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from rowfill.airflow.connections import engine_for
from rowfill.airflow.sameorigin import same_origin
from rowfill.airflow.specs_folder import specs_folder
from rowfill.engine.status import BackfillStatus, statuses
from rowfill.errors import SpecError, SpecErrors
from rowfill.spec.durations import format_duration
from rowfill.spec.spec import load_specs

REFRESH_SECONDS = 3


def _user_dep():
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def _readable(user, dag_ids: set[str]) -> set[str]:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET")


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
    return {"backfill": source, "state": "invalid spec", "field": error.field,
            "error": f"{source}: {field}{_relative(error.problem, root)}", "chunks": []}


def control_hook():
    """The live-control provider, if one is installed (see the module docstring)."""
    try:
        module = importlib.import_module("rowfill.engine.control")
    except ImportError:
        return None
    return getattr(module, "web_control", None)


def collect(user=None) -> list[dict]:
    """Every backfill the user may see, as plain data; one query per backfill, one engine per database.

    Bad specs come last, as entries of state "invalid spec", for users who may see them
    (``_may_see_spec_errors``; all of them when ``user`` is None, as for the tests).
    """
    root = specs_folder()
    specs, errors = load_specs(root)
    specs, build_errors = _buildable(specs)
    errors += build_errors
    if user is not None:
        allowed = _readable(user, {s.dag_id for s in specs})
        specs = [s for s in specs if s.dag_id in allowed]
        if errors and not _may_see_spec_errors(user):
            errors = []
    control = control_hook()
    out: list[dict] = []
    by_conn: dict[str, list] = {}
    for spec in specs:
        by_conn.setdefault(spec.connection, []).append(spec)
    for connection, group in by_conn.items():
        try:
            engine = engine_for(connection)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not blank the page
            out += [_unavailable(s, exc) for s in group]
            continue
        try:
            found = statuses(engine, [s.name for s in group])
            states = control.states(engine, group) if control is not None else {}
            for spec in group:
                entry = _entry(spec, found[spec.name])
                if control is not None:
                    entry["control"] = {"available": True, "state": states[spec.name]}
                out.append(entry)
        except Exception as exc:  # noqa: BLE001
            out += [_unavailable(s, exc) for s in group]
        finally:
            engine.dispose()
    out.sort(key=lambda e: e["backfill"])
    out += [_invalid(e, root) for e in errors]
    return out


def _unavailable(spec, exc) -> dict:
    return {"backfill": spec.name, "dag_id": spec.dag_id, "table": str(spec.table), "state": "unavailable",
            "error": str(exc).splitlines()[0], "chunks": []}


def _entry(spec, s: BackfillStatus) -> dict:
    d = s.to_dict()
    d.update(dag_id=spec.dag_id, table=str(spec.table), key=spec.key)
    for c in d["chunks"]:
        c.pop("worker", None)
        c.pop("updated_at", None)
    return d


# -- HTML ---------------------------------------------------------------------------------------
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


def _eta(b: dict) -> str:
    if b["state"] == "done":
        return "finished"
    if b["state"] == "stale":
        return "none (no chunk runs)"
    eta = b.get("eta_seconds")
    return "unknown" if eta is None else format_duration(eta)


def _problem(c: dict) -> str:
    """What the page says about a failed or stale chunk: its error, or why it is stale."""
    if c["status"] == "stale":
        age = c.get("lease_age")
        heard = f"last heard {format_duration(age)} ago" if age is not None else "not heard from"
        return (f"stale: marked running, but its runner's lease ran out ({heard}): its process is gone. The next "
                "attempt (an Airflow retry, a cleared task or `rowfill run`) takes it over from its checkpoint.")
    return (c.get("last_error") or "no error recorded").splitlines()[0]


def render_fragment(progress: list[dict], ui_base: str = "") -> str:
    """The HTML of the progress table (refreshed in place by the page), every value escaped.

    :param progress: ``collect()``'s entries.
    :param ui_base: the Airflow UI's address prefix, for links to DAGs and task instances ("" = relative).
    """
    e = html.escape
    if not progress:
        return "<p id='empty'>No backfills you may see. Specs live in include/specs/ (or $ROWFILL_SPECS_DIR).</p>"
    parts = []
    for b in progress:
        name, state = b["backfill"], b["state"]
        if state in ("invalid spec", "unavailable", "not started"):
            parts.append(f"<section class='bf' data-backfill='{e(name)}'><h3>{e(name)} <span class='st'>{e(state)}</span></h3>"
                         f"<p class='err'>{e(b.get('error', '') or 'no plan in the checkpoint store yet')}</p></section>")
            continue
        total, seen, share = b.get("rows_estimated", 0), b.get("rows_seen", 0), b.get("share", 0.0)
        cells, failed = [], []
        for c in b["chunks"]:
            href = _ti_href(ui_base, b["dag_id"], c)
            title = f"chunk {c['chunk_no']} {_range(b, c)}: {c['status']}, {c['rows_seen']:,} of ~{c['est_rows']:,}"
            attrs = f"class='c {_STATE_CLASS.get(c['status'], 'p')}' title='{e(title)}'"
            cells.append(f"<a {attrs} href='{e(href)}' target='_top'></a>" if href else f"<i {attrs}></i>")
            if c["status"] in ("failed", "stale"):
                failed.append((c, href))
        failed_html = "".join(
            f"<li class='{'stale' if c['status'] == 'stale' else 'failed'}-chunk' data-chunk='{c['chunk_no']}'>"
            f"<b>chunk {c['chunk_no']} ({e(_range(b, c))})</b>: "
            f"{c['rows_seen']:,} of ~{c['est_rows']:,} rows, {c['attempts']} attempt(s). "
            f"<code>{e(_problem(c))}</code> "
            + (f"<a class='ti' href='{e(href)}' target='_top'>open task instance to clear it</a>" if href else "")
            + "</li>" for c, href in failed[:50])
        if len(failed) > 50:
            failed_html += f"<li>… and {len(failed) - 50} more failed or stale chunks</li>"
        throttle = "".join(f"<span class='tag'>{e(k)}: {e(str(v))}</span>" for k, v in (b.get("throttle") or {}).items())
        control = b.get("control") or {}
        buttons = ""
        if control.get("available"):
            cstate = control.get("state") or ""
            action = "resume" if cstate == "paused" else "pause"
            buttons = (f"<span class='tag'>{e(cstate)}</span><button class='ctl' data-dag='{e(b['dag_id'])}' "
                       f"data-action='{action}'>{action}</button>")
        parts.append(
            f"<section class='bf' data-backfill='{e(name)}' data-state='{e(state)}'>"
            f"<h3>{e(name)} <span class='st st-{e(state)}'>{e(state)}</span> <small>{e(b.get('table', ''))}</small> {buttons}</h3>"
            f"<div class='bar'><div style='width:{share:.1%}'></div></div>"
            f"<p class='nums'><span class='rows'>{seen:,} of ~{total:,} rows</span> ({share:.1%}) · "
            f"<span class='rate'>{b.get('rows_per_second', 0):,.0f} rows/s</span> · ETA <span class='eta'>{_eta(b)}</span> · "
            f"chunks {b.get('chunks_done', 0)}/{b.get('chunks_total', 0)} done, {b.get('chunks_running', 0)} running, "
            + (f"{b['chunks_stale']} stale, " if b.get("chunks_stale") else "")
            + f"{b.get('chunks_pending', 0)} waiting, {b.get('chunks_failed', 0)} failed {throttle}</p>"
            f"<div class='map'>{''.join(cells)}</div>"
            + (f"<ul class='failures'>{failed_html}</ul>" if failed_html else "")
            + "</section>")
    return "".join(parts)


_PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>rowfill backfills</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}h2{margin:0 0 .6em}
.bf{border-bottom:1px solid #ddd;padding:.6em 0}.bf h3{margin:.2em 0;font-size:1.05em}
.st{font-size:.8em;padding:1px 6px;border-radius:8px;background:#eee}.st-running{background:#dbe9fb}
.st-failed{background:#f9d6d5}.st-done{background:#d8f0da}
.bar{background:#eee;width:100%;max-width:640px;height:14px;border-radius:7px;overflow:hidden}
.bar div{background:#1565c0;height:100%}.nums{margin:.3em 0;font-size:.92em}
.map{line-height:0;max-width:980px}.c{display:inline-block;width:9px;height:9px;margin:0 1px 1px 0}
.d{background:#2e7d32}.r{background:#1565c0}.p{background:#c8c8c8}.f{background:#c62828}.s{background:#ef8f00}
.st-stale{background:#fde3b8}
.tag{font-size:.8em;background:#f3f3f3;padding:1px 5px;margin-left:4px;border-radius:4px}
.failures{font-size:.9em}.err{color:#b00}code{white-space:pre-wrap}
.legend .c{vertical-align:middle}.legend{font-size:.85em;color:#555}
</style></head><body>
<h2>rowfill backfills</h2>
<p class='legend'><i class='c d'></i> done <i class='c r'></i> running <i class='c p'></i> waiting
<i class='c f'></i> failed <i class='c s'></i> stale (runner gone) · a chunk opens its task instance in Airflow · updated <span id='updated'>now</span></p>
<div id='backfills'>__FRAGMENT__</div>
<script>
const every = __REFRESH__ * 1000;
async function refresh() {
  try {
    const r = await fetch('fragment', {credentials: 'same-origin', cache: 'no-store'});
    if (r.ok) { document.getElementById('backfills').innerHTML = await r.text();
                document.getElementById('updated').textContent = new Date().toLocaleTimeString(); }
    else if (r.status === 401 || r.status === 403) { document.getElementById('updated').textContent = 'signed out'; }
  } catch (e) {}
  setTimeout(refresh, every);
}
setTimeout(refresh, every);
// Inside the Airflow UI this page is an iframe sandboxed without top navigation, so a plain
// target=_top link would do nothing. The UI is a same-origin single-page app: push the task
// instance's route onto its history and let its router follow, as its own links do.
function openInAirflow(url) {
  try {
    if (window.top !== window && window.top.location.origin === location.origin) {
      window.top.history.pushState({}, '', url);
      window.top.dispatchEvent(new PopStateEvent('popstate', {state: {}}));
      return true;
    }
  } catch (e) {}
  return false;
}
document.addEventListener('click', async (ev) => {
  const a = ev.target.closest('a[target=_top]');
  if (a && !ev.ctrlKey && !ev.metaKey && !ev.shiftKey && openInAirflow(a.getAttribute('href'))) { ev.preventDefault(); return; }
  const b = ev.target.closest('button.ctl'); if (!b) return;
  b.disabled = true;
  await fetch('api/dags/' + encodeURIComponent(b.dataset.dag) + '/' + b.dataset.action,
              {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/json'}, body: '{}'});
  refresh();
});
</script></body></html>"""


def render_page(progress: list[dict], ui_base: str = "") -> str:
    """The whole page: ``render_fragment`` inside a shell that reloads it every ``REFRESH_SECONDS`` seconds."""
    return _PAGE.replace("__REFRESH__", str(REFRESH_SECONDS)).replace("__FRAGMENT__", render_fragment(progress, ui_base))


def _ui_base(request: Request) -> str:
    """Where the Airflow UI lives, seen from this app: its mount point minus our own prefix."""
    root = request.scope.get("root_path", "") or ""
    return root[: -len("/rowfill")] if root.endswith("/rowfill") else root.rsplit("/", 1)[0]


# -- the app ------------------------------------------------------------------------------------
def refuse_cross_site(request: Request) -> None:
    """Every route's first check: a request that would change something and was not sent from this
    site gets 403 before anything else runs (``rowfill.airflow.sameorigin.same_origin``).

    :raises HTTPException: 403, naming why the request looks cross-site.
    """
    allowed, why = same_origin(request.method, request.headers)
    if not allowed:
        raise HTTPException(403, f"cross-site request refused: {why}")


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts under ``/rowfill`` of Airflow's API server (Airflow docs,
    "Plugins": ``fastapi_apps``); users are Airflow's own, through its auth manager.

    Routes: ``GET /api/progress`` (JSON), ``GET /fragment`` and ``GET /`` (HTML), and
    ``POST /api/dags/{dag_id}/{pause|resume}``, which raises HTTPException 404 (no live control,
    unknown action or DAG), 415 (not JSON) or 403 (the user may not edit the DAG).
    """
    app = FastAPI(title="rowfill", description="Progress of rowfill backfills", dependencies=[Depends(refuse_cross_site)])
    user_dep = _user_dep()

    @app.get("/api/progress")
    def progress(user=user_dep) -> list[dict]:
        """Every backfill the user may see, as JSON (``collect``)."""
        return collect(user)

    @app.get("/fragment", response_class=HTMLResponse)
    def fragment(request: Request, user=user_dep) -> str:
        """The progress table alone, for the page's refresh."""
        return render_fragment(collect(user), _ui_base(request))

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user=user_dep) -> str:
        """The progress page."""
        return render_page(collect(user), _ui_base(request))

    @app.post("/api/dags/{dag_id}/{action}")
    def control(dag_id: str, action: str, request: Request, user=user_dep) -> dict:
        """Pause or resume a backfill for a user allowed to edit its DAG; raises HTTPException 404, 415 or 403."""
        hook = control_hook()
        if hook is None or action not in ("pause", "resume"):
            raise HTTPException(404, "live control is not installed" if hook is None else f"unknown action {action!r}")
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            raise HTTPException(415, "send application/json")  # no cross-site form posts
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

        if not get_auth_manager().is_authorized_dag(method="PUT", details=DagDetails(id=dag_id), user=user):
            raise HTTPException(403, f"you may not change {dag_id}")
        specs, _ = load_specs(specs_folder())
        spec = next((s for s in specs if s.dag_id == dag_id), None)
        if spec is None:
            raise HTTPException(404, f"no backfill with DAG {dag_id}")
        engine = engine_for(spec.connection)
        try:
            getattr(hook, action)(engine, spec, user.get_name())
            return {"backfill": spec.name, "state": hook.state(engine, spec)}
        finally:
            engine.dispose()

    return app
