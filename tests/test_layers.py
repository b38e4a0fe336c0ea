"""The package's layers hold: each imports only the layers below it, only ``rowfill.airflow`` (and
the command above it) imports Airflow, no modules import each other in a circle, and every module
lives in a layer (README "Layout").

The layer contracts are import-linter's (``[tool.importlinter]`` in pyproject.toml), run here so
a violation fails the suite; the cycles are the strongly connected components of the import
graph, found by ``scripts/structure_report.py`` (imports at any depth, inside functions too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "rowfill"
LAYERS = ("ops", "airflow", "engine", "console", "store", "spec", "sql")  # engine | console: independent
AT_THE_ROOT = {"__init__.py", "errors.py"}  # errors: every layer may raise rowfill's errors
SHIPPED_BESIDE = {"examples"}  # example transforms and sinks the example specs name

sys.path.insert(0, str(ROOT / "scripts"))
import structure_report  # noqa: E402


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        "an import crosses the package's layers (README \"Layout\": a layer imports only the layers below "
        "it; only rowfill.airflow imports Airflow). Move the code to the layer it belongs to, or pass the "
        f"value in from above:\n{done.stdout}{done.stderr}")
    assert "Contracts: 2 kept, 0 broken." in done.stdout, done.stdout


def test_no_modules_import_each_other_in_a_circle():
    graph, _ = structure_report.import_graph(structure_report.modules())
    limit = sys.getrecursionlimit()
    try:
        found = structure_report.cycles(graph)
    finally:  # cycles() raises the limit for its recursion; other tests rely on the default (deep YAML)
        sys.setrecursionlimit(limit)
    assert found == [], "import cycles (each a group of modules that reach each other): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_every_module_lives_in_a_layer():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in AT_THE_ROOT)
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert flat == [], f"modules outside the layers: {flat}; move each into one of {', '.join(LAYERS)}"
    assert set(folders) == set(LAYERS) | SHIPPED_BESIDE, folders


def _imports_inside_functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] == "rowfill":
                    yield path, inner.lineno, lines


def test_imports_of_rowfill_inside_functions_say_why():
    """An import inside a function usually hides a cycle; the few kept for start-up cost say so above them."""
    unexplained = []
    for path, lineno, lines in _imports_inside_functions():
        above = lines[lineno - 2].strip() if lineno >= 2 else ""
        while not above.startswith("#") and above.startswith("from rowfill") and lineno > 2:
            lineno -= 1  # a block of imports shares one comment
            above = lines[lineno - 2].strip()
        if not above.startswith("#"):
            unexplained.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert unexplained == [], ("imports of rowfill inside functions without a comment saying why (move them to the "
                               "top of the module, or say which start-up cost they save): " + ", ".join(unexplained))
