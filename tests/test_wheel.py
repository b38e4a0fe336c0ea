"""The distribution, tried as a platform team would: ``python -m build`` makes a wheel and an sdist; the
wheel holds the rowfill package and nothing of the checkout's development tooling; installed into a
fresh venv outside the checkout it registers its UI plugin through the ``airflow.plugins`` entry
point, ``rowfill init`` writes the one-line DAG files into a temporary DAG folder, and
``airflow dags test`` runs a real backfill from that folder against a throwaway PostgreSQL.

The fresh venv sees the checkout venv's dependencies through a ``.pth`` file (Airflow and its
providers are large; installing them again from the index would take minutes and prove nothing about
rowfill); rowfill itself comes only from the wheel (``pip install --no-deps --no-index``), and the
checkout's ``include/`` is not on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import create_database, make_users, write_spec
from rowfill.engine.database import engine_from_url
from rowfill.ops.dagfolder import DAG_LINE, ERRORS_LINE

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[1]


def run(args, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT])
    return out


def test_build_makes_a_wheel_of_the_rowfill_package_only_and_an_sdist(dist):
    [wheel], [sdist] = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    import rowfill

    assert wheel.name == f"rowfill-{rowfill.__version__}-py3-none-any.whl"  # one version source
    names = zipfile.ZipFile(wheel).namelist()
    assert "rowfill/airflow/factory.py" in names and "rowfill/airflow/plugin.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"rowfill", f"rowfill-{rowfill.__version__}.dist-info"}, tops  # no rowfill_dev, tests, specs, dags
    meta = zipfile.ZipFile(wheel).read(f"rowfill-{rowfill.__version__}.dist-info/METADATA").decode()
    entry_points = zipfile.ZipFile(wheel).read(f"rowfill-{rowfill.__version__}.dist-info/entry_points.txt").decode()
    assert "[airflow.plugins]\nrowfill = rowfill.airflow.plugin:RowfillPlugin" in entry_points
    runtime = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any(tool in line for line in runtime for tool in ("pytest", "playwright", "aiosmtpd", "import-linter",
                                                                 "build", "statsd")), runtime
    assert "Requires-Python: <3.12,>=3.11" in meta and "Framework :: Apache Airflow" in meta
    assert sdist.name == f"rowfill-{rowfill.__version__}.tar.gz"


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A venv outside the checkout with the wheel installed (no deps) and the checkout venv's
    site-packages visible for the dependencies."""
    home = tmp_path_factory.mktemp("clean")
    assert ROOT not in home.parents
    venv = home / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    [wheel] = list(dist.glob("*.whl"))
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps",
         "--no-index", wheel])
    return venv


def clean_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "ROWFILL", "PYTHON")) and k not in ("VIRTUAL_ENV",)}
    env.update({
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        **extra,
    })
    return env


def test_the_installed_wheel_runs_a_backfill_from_a_temporary_dag_folder(venv, pg_cluster, tmp_path):
    url = create_database(pg_cluster, "wheel_e2e", migrated=False)  # migrated below by the wheel's own command
    engine = engine_from_url(url)
    make_users(engine, 3_000)
    make_users(engine, 500, table="users2")
    env = clean_env(tmp_path, AIRFLOW_CONN_APP_DB=url)
    python, rowfill = venv / "bin" / "python", venv / "bin" / "rowfill"

    where = run([python, "-c", "import rowfill, importlib.util; print(rowfill.__file__); "
                 "print(importlib.util.find_spec('rowfill_dev'))"], env=env, cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "None"  # the wheel's copy; no dev tooling

    dags = tmp_path / "dags"
    run([rowfill, "init", dags], env=env, cwd=tmp_path)
    assert (dags / "rowfill_dags.py").read_text() == DAG_LINE and (dags / "rowfill_spec_errors.py").read_text() == ERRORS_LINE
    assert len(DAG_LINE.splitlines()) == 1 and (dags / "rowfill" / "README.md").exists()
    write_spec(dags / "rowfill", name="wheel_fill", schedule=None, chunk_rows=1_000, batch_rows=250, pause=0)
    # a transform that lives in the DAG bundle, not in rowfill: Airflow puts the bundle on the import path
    (dags / "bundle_rules.py").write_text("def shout(rows):\n    return [r['first_name'].upper() for r in rows]\n")
    write_spec(dags / "rowfill", name="bundle_fill", table="public.users2", schedule=None, set=None,
               transform="bundle_rules:shout", select={"first_name": "first_name"}, returns=["full_name"])
    validated = run([rowfill, "validate"], env={**env, "PYTHONPATH": str(dags)}, cwd=tmp_path).stdout
    assert "ok    wheel_fill" in validated and "ok    bundle_fill" in validated  # found through [core] dags_folder

    run([python, "-m", "airflow", "db", "migrate"], env=env, cwd=tmp_path)
    # rowfill's schema, once, as the platform team would: the migrations ship inside the wheel
    migrated = run([rowfill, "db", "migrate", "--conn", "app_db"], env=env, cwd=tmp_path).stdout
    assert "migrated from nothing to" in migrated
    plugins = json.loads(run([python, "-m", "airflow", "plugins", "--output", "json"], env=env, cwd=tmp_path).stdout)
    [plugin] = [p for p in plugins if p["name"] == "rowfill"]  # the plugins folder is empty: only the entry point
    assert plugin["source"].startswith("rowfill==") and "group='airflow.plugins'" in plugin["source"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/rowfill"]
    for dag_id in ("rowfill_wheel_fill", "rowfill_bundle_fill"):
        run([python, "-m", "airflow", "dags", "test", dag_id], env=env, cwd=tmp_path)  # exit 0: the run succeeded

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name IS NULL")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name = first_name || ' ' || last_name")).scalar() == 3_000
        # every chunk done once
        assert conn.execute(text("SELECT count(*), sum(rows_written) FROM rowfill.chunks WHERE backfill = 'wheel_fill' "
                                 "AND status = 'done'")).one() == (3, 3_000)
        assert conn.execute(text("SELECT count(*) FROM users2 WHERE full_name = upper(first_name)")).scalar() == 500
    engine.dispose()
