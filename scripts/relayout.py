"""Issue 11, phase A: move the flat modules of ``include/rowfill`` into their layers, and rewrite
every reference to them (imports, ``python -m``, classpaths, docs) across the repository.

Re-runnable: a module already moved is left where it is, and text already rewritten does not
match again. After merging a branch that still uses the flat names, run it again; a flat module
it does not know yet is reported, so it can be given a layer in ``MOVES`` below.

Some modules were split along the layers by hand (``SPLITS``): imports of those names are
rewritten per name, e.g. ``from rowfill.gates import GateKeeper, parse_gates`` becomes one import
from ``rowfill.engine.probes`` and one from ``rowfill.spec.gates``.

Logger names (``logging.getLogger("rowfill.runner")``) are kept: log output stays the same.

Usage: ``python scripts/relayout.py [--dry-run]`` from the repository root.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "rowfill"

# flat module -> where it lives now (dotted, from the include/ folder)
MOVES: dict[str, str] = {
    # sql: text of SQL, identifiers, keys; no connections made, no Airflow
    "sqlnames": "rowfill.sql.sqlnames",
    "sqltext": "rowfill.sql.sqltext",
    "keys": "rowfill.sql.keys",
    # spec: loading, validation, value types
    "spec": "rowfill.spec.spec",
    "specyaml": "rowfill.spec.specyaml",
    "bounds": "rowfill.spec.bounds",
    "durations": "rowfill.spec.durations",
    "windows": "rowfill.spec.windows",
    # store: rowfill's own schema
    "checkpoint": "rowfill.store.checkpoint",
    "rates": "rowfill.store.rates",
    # engine: planning, running, writing, pacing, verifying, reporting
    "db": "rowfill.engine.database",
    "gates": "rowfill.engine.probes",
    "plan": "rowfill.engine.plan",
    "estimate": "rowfill.engine.estimate",
    "resolve": "rowfill.engine.resolve",
    "schema_check": "rowfill.engine.schema_check",
    "sqltarget": "rowfill.engine.sqltarget",
    "sweep": "rowfill.engine.sweep",
    "runner": "rowfill.engine.runner",
    "chunk_task": "rowfill.engine.chunk_task",
    "throttle": "rowfill.engine.throttle",
    "control": "rowfill.engine.control",
    "writers": "rowfill.engine.writers",
    "transform": "rowfill.engine.transform",
    "sinks": "rowfill.engine.sinks",
    "undo": "rowfill.engine.undo",
    "lockfirst": "rowfill.engine.lockfirst",
    "blame": "rowfill.engine.blame",
    "verify": "rowfill.engine.verify",
    "dryrun": "rowfill.engine.dryrun",
    "status": "rowfill.engine.status",
    "report": "rowfill.engine.report",
    "progress": "rowfill.engine.progress",
    "disconnects": "rowfill.engine.disconnects",
    "reconnect": "rowfill.engine.reconnect",
    "lease": "rowfill.engine.lease",
    "readtypes": "rowfill.engine.readtypes",
    "rowlocks": "rowfill.engine.rowlocks",
    # airflow: the only layer importing Airflow
    "factory": "rowfill.airflow.factory",
    "rollback_dag": "rowfill.airflow.rollback_dag",
    "operators": "rowfill.airflow.operators",
    "task_control": "rowfill.airflow.task_control",
    "triggers": "rowfill.airflow.triggers",
    "stall": "rowfill.airflow.stall",
    "alerts": "rowfill.airflow.alerts",
    "notifiers": "rowfill.airflow.notifiers",
    "metrics": "rowfill.airflow.metrics",
    "observers": "rowfill.airflow.observers",
    "pools": "rowfill.airflow.pools",
    "runparams": "rowfill.airflow.runparams",
    "web": "rowfill.airflow.web",
    "sameorigin": "rowfill.airflow.sameorigin",
    # ops: the rowfill command
    "cli": "rowfill.ops.cli",
    "statusview": "rowfill.ops.statusview",
    # development tooling, not shipped
    "localpg": "rowfill_dev.localpg",
    "devstack": "rowfill_dev.devstack",
    "stacksecrets": "rowfill_dev.stacksecrets",
}
STAYS = {"__init__", "errors"}  # at the package root: every layer may import errors

# (flat module, name) -> the module the name went to when its flat module was split
SPLITS: dict[tuple[str, str], str] = {
    **{("gates", n): "rowfill.spec.gates" for n in
       ("KINDS", "GateSpec", "LatencySpec", "threshold", "parse_gates", "parse_latency")},
    **{("notifiers", n): "rowfill.spec.alert_targets" for n in
       ("EVENTS", "KINDS", "AlertTarget", "parse_alerts")},
    **{("db", n): "rowfill.airflow.connections" for n in ("engine_from_airflow", "engine_for")},
    ("operators", "target_engine"): "rowfill.airflow.connections",
    ("writers", "writer_for"): "rowfill.engine.modes",
    **{("undo", n): "rowfill.engine.rollback" for n in
       ("plan_rollback", "rollback_target", "finish_rollback", "RollbackResult", "RollbackIncomplete")},
    ("factory", "spec_timedelta"): "rowfill.airflow.chunk_settings",
    ("factory", "mapped_chunk_settings"): "rowfill.airflow.chunk_settings",
    ("plan", "max_map_length"): "rowfill.airflow.chunk_settings",
    ("reconnect", "DEFAULT_RECONNECT_FOR"): "rowfill.spec.spec",  # the spec field's default
}

LAYER_DOCS = {
    "sql": "SQL as text: identifiers (sqlnames), the one reader of user SQL (sqltext), key SQL (keys).\n\n"
           "Makes no connection and imports no other layer of rowfill and no Airflow.",
    "spec": "The spec: loading and validating YAML, and the value types of its fields.\n\n"
            "Imports only ``rowfill.sql`` (to read SQL fields); no database access, no Airflow.",
    "store": "rowfill's own schema in the target database: checkpoints, chunks, rate samples.\n\n"
             "Imports ``rowfill.spec`` and ``rowfill.sql``; never Airflow.",
    "engine": "Planning, running, writing, pacing, verifying and reporting a backfill.\n\n"
              "Imports ``rowfill.store``, ``rowfill.spec`` and ``rowfill.sql``; never Airflow.",
    "airflow": "The Airflow side: DAG factory, operators, triggers, callbacks and notifiers, pools, the UI plugin.\n\n"
               "The only layer that imports Airflow.",
    "ops": "The ``rowfill`` command and its terminal views.",
}

TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".env", ".txt", ".cfg", ".ini", ".sh", ""}
SKIP = {"scripts/relayout.py"}

_LOGGER = re.compile(r"""getLogger\(\s*(["'])rowfill[\w.]*\1""")
_FROM = re.compile(r"^(?P<indent>[ \t]*)from rowfill\.(?P<mod>\w+) import (?P<names>\([^)]*\)|[^\n#]*?)"
                   r"(?P<tail>[ \t]*(?:#[^\n]*)?)$", re.MULTILINE)
_FROM_PACKAGE = re.compile(r"^(?P<indent>[ \t]*)from rowfill import (?P<names>[^\n#()]*?)(?P<tail>[ \t]*(?:#[^\n]*)?)$",
                           re.MULTILINE)


def _new(old: str, name: str | None = None) -> str:
    return SPLITS.get((old, name), MOVES[old]) if name else MOVES[old]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.strip("()").replace("\n", " ").split(",") if n.strip()]


def rewrite_from(m: re.Match) -> str:
    mod = m["mod"]
    if mod not in MOVES:
        return m[0]
    groups: dict[str, list[str]] = {}
    package = f"rowfill.{mod}"  # a flat module whose name is now a layer: rowfill.spec
    for name in _names(m["names"]):
        bare = name.split(" as ")[0].strip()
        if any(v == f"{package}.{bare}" for v in [*MOVES.values(), *SPLITS.values()]):
            groups.setdefault(package, []).append(name)  # already the layer's module: from rowfill.spec import gates
        else:
            groups.setdefault(_new(mod, bare), []).append(name)
    lines = []
    for target, names in groups.items():
        line = f"{m['indent']}from {target} import {', '.join(names)}"
        if len(line) > 120 and len(names) > 1:
            inner = ",\n".join(f"{m['indent']}    {n}" for n in names)
            line = f"{m['indent']}from {target} import (\n{inner},\n{m['indent']})"
        lines.append(line + m["tail"])
    return "\n".join(lines)


def rewrite_from_package(m: re.Match) -> str:
    names = _names(m["names"])
    if not any(n.split(" as ")[0].strip() in MOVES for n in names):
        return m[0]
    groups: dict[str, list[str]] = {}
    for name in names:
        bare = name.split(" as ")[0].strip()
        package = MOVES[bare].rsplit(".", 1)[0] if bare in MOVES else "rowfill"
        groups.setdefault(package, []).append(name)
    return "\n".join(f"{m['indent']}from {p} import {', '.join(n)}{m['tail']}" for p, n in groups.items())


def _dotted(text: str) -> str:
    """``rowfill.<flat>`` anywhere else (``import rowfill.plan``, ``-m rowfill.cli``, classpaths, docs)."""
    spec_modules = "|".join(sorted({v.split(".")[2] for v in [*MOVES.values(), *SPLITS.values()]
                                    if v.startswith("rowfill.spec.")}))
    pattern = re.compile(r"(?<![\w.])rowfill\.(?P<mod>" + "|".join(sorted(MOVES, key=len, reverse=True)) +
                         r")(?![\w])(?! import )(?P<attr>\.\w+)?")

    def repl(m: re.Match) -> str:
        mod, attr = m["mod"], m["attr"]
        if mod == "spec" and attr and re.fullmatch(r"\.(" + spec_modules + ")", attr):
            return m[0]  # already rowfill.spec.<module>
        if mod == "spec" and not attr and m.string[m.end():m.end() + 1] in ('"', "'", ""):
            return m[0]  # "rowfill.spec" in a string of its own: the layer (pyproject's contracts)
        name = attr[1:] if attr else None
        return _new(mod, name) + (attr or "")

    protected = []

    def protect(m: re.Match) -> str:
        protected.append(m[0])
        return f"\x00{len(protected) - 1}\x00"

    text = _LOGGER.sub(protect, text)
    text = pattern.sub(repl, text)
    return re.sub(r"\x00(\d+)\x00", lambda m: protected[int(m[1])], text)


_ONE_IMPORT = re.compile(r"^(?P<indent>[ \t]*)(?:from rowfill[\w.]* import [^()\n]*|import rowfill[\w.]*)[ \t]*(?:#.*)?$")


def _merged(run: list[str]) -> list[str]:
    """One line per module: ``from m import a`` and ``from m import a, b`` (a merge brings both) become
    ``from m import a, b``, names in isort's order (constants, classes, functions); other lines as they are."""
    heads: dict[str, list[str]] = {}
    for line in run:
        m = re.match(r"^(\s*from \S+ import )([^#]*?)\s*$", line)
        key = m[1] if m and " as " not in m[2] else line
        heads.setdefault(key, []).append(line)
    out = []
    for head, lines in heads.items():
        if len(lines) == 1 or head not in [re.match(r"^(\s*from \S+ import )", x)[1] for x in lines[:1]]:
            out.append(lines[0])
            continue
        names: list[str] = []
        for line in lines:
            names += [n.strip() for n in line[len(head):].split(",") if n.strip() and n.strip() not in names]
        out.append(head + ", ".join(sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))))
    return out


def sort_imports(text: str) -> str:
    """Runs of one-line rowfill imports at one indentation, sorted by module (isort's order)."""
    lines = text.split("\n")
    out: list[str] = []
    run: list[str] = []
    indent = None
    for line in [*lines, None]:
        m = _ONE_IMPORT.match(line) if line is not None else None
        if m and (indent is None or m["indent"] == indent):
            run.append(line)
            indent = m["indent"]
            continue
        out.extend(sorted(_merged(run), key=lambda s: s.strip().replace("import rowfill", "from rowfill")))
        run, indent = [], None
        if m:
            run, indent = [line], m["indent"]
        elif line is not None:
            out.append(line)
    return "\n".join(out)


def rewrite(text: str) -> str:
    new = _FROM.sub(rewrite_from, text)
    new = _FROM_PACKAGE.sub(rewrite_from_package, new)
    new = _dotted(new)
    return sort_imports(new) if new != text else text


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def move(dry_run: bool) -> list[str]:
    problems = []
    for old, new in MOVES.items():
        src = PACKAGE / f"{old}.py"
        dst = ROOT / "include" / (new.replace(".", "/") + ".py")
        if not src.exists():
            continue
        if dst.exists():
            problems.append(f"both {src.relative_to(ROOT)} and {dst.relative_to(ROOT)} exist: merge them by hand")
            continue
        print(f"git mv {src.relative_to(ROOT)} {dst.relative_to(ROOT)}")
        if not dry_run:
            dst.parent.mkdir(parents=True, exist_ok=True)
            git("mv", str(src.relative_to(ROOT)), str(dst.relative_to(ROOT)))
    for layer, doc in LAYER_DOCS.items():
        init = PACKAGE / layer / "__init__.py"
        if not init.exists() and not dry_run:
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(f'"""{doc}\n"""\n')
            git("add", str(init.relative_to(ROOT)))
    for flat in sorted(PACKAGE.glob("*.py")):
        if flat.stem not in STAYS and flat.stem not in MOVES:
            problems.append(f"{flat.relative_to(ROOT)} has no layer yet: add it to MOVES in scripts/relayout.py")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    args = parser.parse_args()
    problems = move(args.dry_run)
    for rel in git("ls-files").splitlines():
        path = ROOT / rel
        if rel in SKIP or rel.startswith("notes/") or path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            before = path.read_text()
        except UnicodeDecodeError:
            continue
        after = rewrite(before)
        if after != before:
            print(f"rewrote {rel}")
            if not args.dry_run:
                path.write_text(after)
    for problem in problems:
        print("problem:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
