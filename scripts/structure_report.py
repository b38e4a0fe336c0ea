"""Measure the package's structure, the numbers issue 11 asks for before and after a redesign.

Static (from the source, with :mod:`ast`):

- modules in the package, and import cycles between them (strongly connected components of the
  module import graph, counting imports at any depth, inside functions too);
- imports inside functions (the usual way a cycle is kept alive);
- modules that build SQL (a string literal, or a whole f-string, that starts a statement or a
  clause with an upper-case keyword followed by more text: ``SELECT ...``, ``UPDATE ...``,
  ``INSERT``, ``DELETE``, ``WITH``, ``CREATE``, ``ALTER``, ``COMMENT ON``, ``SET LOCAL``...; a
  sentence ending in ``.`` or ``:`` is a message, not a statement), split into statements over
  rowfill's own schema (they name ``{SCHEMA}`` or ``rowfill.``, or take rowfill's advisory locks)
  and the rest (the user's tables and PostgreSQL's catalogs); and the modules that build them in
  the wrong room: the rest outside ``rowfill.sql``, own-schema statements outside ``rowfill.store``;
- public functions and methods without a docstring, and those that raise without saying so.

Dynamic (``--trace``, needs the PostgreSQL 15 server binaries): the rowfill modules whose code
runs during one batch of a plain ``set`` backfill on a throwaway cluster (median over batches).

Usage: ``.venv/bin/python scripts/structure_report.py [--trace] [--json]``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "rowfill"

# rowfill writes SQL keywords in upper case; a keyword must be followed by a space or "(" (a bare
# word such as "UPDATE" is a label, "select" a spec field's name, "with" English)
_SQL_START = re.compile(
    r"^\s*\(?\s*(SELECT|UPDATE|INSERT|DELETE|WITH|CREATE|ALTER|DROP|COMMENT ON|TRUNCATE|LOCK|EXPLAIN|"
    r"ANALYZE|VACUUM|GRANT|REVOKE|SET LOCAL|SHOW)(?=[\s(])")
# rowfill's own schema, by name, and its advisory locks (they order rowfill's own planning and control)
_OWN_SCHEMA = re.compile(r"\{SCHEMA\}|\browfill\.|pg_advisory", re.IGNORECASE)
SQL_ROOM = "rowfill.sql"  # where statements over the user's tables and the catalogs are built
STORE_ROOM = "rowfill.store"  # where statements over rowfill's own schema are built


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(current: str, node: ast.ImportFrom, is_package: bool) -> list[str]:
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph(mods: dict[str, ast.Module]) -> tuple[dict[str, set[str]], int]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    inside_functions = 0
    for name, tree in mods.items():
        is_package = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(name, node, is_package)
            else:
                continue
            hit = {t for t in targets if t in mods and t != name}
            if hit and id(node) in nested:
                inside_functions += 1
            graph[name] |= hit
    return graph, inside_functions


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def _in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def sql_builders(mods: dict[str, ast.Module]) -> tuple[set[str], set[str]]:
    """(modules building statements over the user's tables or the catalogs, modules building own-schema ones)."""
    user, own = set(), set()
    for name, tree in mods.items():
        # the literal parts of an f-string are judged with the whole f-string, not on their own
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            pieces = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
                pieces = [node.value]
            elif isinstance(node, ast.JoinedStr):
                pieces = ["".join(v.value if isinstance(v, ast.Constant) else "{SCHEMA}" if
                                  ast.unparse(v.value) == "SCHEMA" else "{x}" for v in node.values)]
            for piece in pieces:
                if _SQL_START.match(piece) and not piece.strip().endswith((".", ":")):
                    (own if _OWN_SCHEMA.search(piece) else user).add(name)
    return user, own


def docstrings(mods: dict[str, ast.Module]) -> tuple[int, int, int, int]:
    """(public functions, without a docstring, raising, raising and saying so)."""
    public = missing = raising = documented = 0
    for tree in mods.values():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            public += 1
            doc = ast.get_docstring(node)
            if not doc:
                missing += 1
            if any(isinstance(n, ast.Raise) for n in ast.walk(node)):
                raising += 1
                if doc and re.search(r"\braise[sd]?\b|\bRaises\b", doc, re.IGNORECASE):
                    documented += 1
    return public, missing, raising, documented


def trace_one_batch(batches: int = 10) -> int:
    """Median count of rowfill modules whose code runs during one batch of a plain ``set`` with the default pacing."""
    sys.path.insert(0, str(PACKAGE.parent))
    import yaml
    from sqlalchemy import text

    from rowfill.engine.database import engine_from_url
    from rowfill.engine.plan import plan_backfill
    from rowfill.engine.runner import ChunkRunner
    from rowfill.spec.spec import load_spec
    from rowfill_dev.localpg import LocalPostgres
    from rowfill_dev.schema import migrate_database

    tmp = Path(tempfile.mkdtemp(prefix="rowfill-structure-"))
    pg = LocalPostgres(tmp / "data").start()
    try:
        engine = engine_from_url(pg.url)
        migrate_database(engine)  # rowfill's schema, as `rowfill db migrate` makes it
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE users (id bigint PRIMARY KEY, points integer NOT NULL DEFAULT 0)"))
            conn.execute(text("INSERT INTO users (id) SELECT g FROM generate_series(1, :n) g"), {"n": batches * 100})
        spec_path = tmp / "trace.yaml"
        spec_path.write_text(yaml.safe_dump({
            "name": "trace", "connection": "app_db", "table": "public.users", "key": "id",
            "set": {"points": "points + 1"}, "chunk_rows": batches * 100, "batch_rows": 100}))
        spec = load_spec(spec_path)
        chunks = plan_backfill(engine, spec)
        counts: list[int] = []
        crossed: set[str] = set()
        seen: set[str] = set()

        def profile(frame, event, _arg):
            # one batch = from one `_batch_with_retries` call to the next: the write, the bookkeeping,
            # the observers, the throttle's after/before-batch work and the stop checks
            if event != "call":
                return
            module = frame.f_globals.get("__name__", "")
            if frame.f_code.co_name == "_batch_with_retries" and module == "rowfill.engine.runner":
                if seen:
                    counts.append(len(seen))
                    crossed.clear()
                    crossed.update(seen)
                seen.clear()
            if module.startswith("rowfill"):
                seen.add(module)

        runner = ChunkRunner(engine, spec)
        sys.setprofile(profile)
        try:
            for chunk in chunks:
                runner.run(chunk.chunk_no)
        finally:
            sys.setprofile(None)
        engine.dispose()
        print("modules of the last batch:", ", ".join(sorted(crossed)), file=sys.stderr)
        return int(statistics.median(counts)) if counts else 0
    finally:
        pg.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)  # the throwaway cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="store_true", help="also count modules one batch crosses (starts a cluster)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    mods = modules()
    graph, inside = import_graph(mods)
    found = cycles(graph)
    user_sql, own_sql = sql_builders(mods)
    user_outside = sorted(m for m in user_sql if not _in_room(m, SQL_ROOM))
    own_outside = sorted(m for m in own_sql if not _in_room(m, STORE_ROOM))
    public, missing, raising, documented = docstrings(mods)
    report = {
        "modules": len(mods),
        "import_cycles": len(found),
        "modules_in_cycles": sum(len(c) for c in found),
        "imports_inside_functions": inside,
        "modules_building_user_sql": len(user_sql),
        "modules_building_own_schema_sql": len(own_sql),
        "modules_building_user_sql_outside_sql": len(user_outside),
        "modules_building_own_schema_sql_outside_store": len(own_outside),
        "public_functions": public,
        "public_functions_without_docstring": missing,
        "public_functions_raising": raising,
        "raising_and_documenting_it": documented,
    }
    if args.trace:
        report["modules_one_batch_crosses"] = trace_one_batch()
    if args.json:
        print(json.dumps(report | {"cycles": found, "user_sql_outside_sql": user_outside,
                                   "own_schema_sql_outside_store": own_outside}, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:46} {value}")
        for c in found:
            print("  cycle:", " <-> ".join(c))
        for m in user_outside:
            print("  user/catalog SQL outside sql/:", m)
        for m in own_outside:
            print("  own-schema SQL outside store/:", m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
