"""The package passes its linter and its type checker, so `make test` fails on a lint error or a type
error as it does on a broken promise (issue 12).

Both run as the development install has them (the ``dev`` extra of pyproject.toml, pinned in
constraints.txt), from the project root with this interpreter, and read their settings from
pyproject.toml: ``[tool.ruff]`` for ruff, ``[tool.mypy]`` (the package, include/rowfill) for mypy.
mypy keeps its incremental cache where it always does, ``.mypy_cache`` in the project root (ignored by
git and by the image build), so after the first run (about 30 s) it checks only what changed, in
about a second; a cache never hides an error (mypy re-checks every file whose source, dependencies
or settings changed).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["include/rowfill", "dags"]  # the package and the DAG file Airflow loads
TIMEOUT = 600  # seconds: a first mypy run with no cache reads Airflow's and SQLAlchemy's types (about 30 s here)


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in {sys.executable}; it comes with the dev extra "
                    "(`make install`, or pip install -c constraints.txt -e '.[dev]')")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def test_ruff_finds_nothing_in_the_package_and_the_dags():
    _tool("ruff")
    done = _run("ruff", "check", "--no-cache", *LINTED)
    assert done.returncode == 0, f"ruff check {' '.join(LINTED)} found problems:\n{done.stdout}{done.stderr}"


def test_mypy_finds_no_type_error_in_the_package():
    _tool("mypy")
    done = _run("mypy")
    assert done.returncode == 0, f"mypy (the [tool.mypy] settings of pyproject.toml) found problems:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout, done.stdout
