"""`rowfill init DAGS_FOLDER`: the one-line DAG files and the specs folder an installed rowfill needs,
never overwriting a file someone changed without --force; this checkout's dags/ holds the same lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from rowfill.ops.cli import main
from rowfill.ops.dagfolder import DAG_LINE, ERRORS_LINE, InitRefused, init_dag_folder

ROOT = Path(__file__).resolve().parents[1]


def test_init_writes_two_one_line_dag_files_and_the_specs_folder_once(tmp_path, capsys):
    dags = tmp_path / "dags"
    assert main(["init", str(dags)]) == 0
    assert (dags / "rowfill_dags.py").read_text() == DAG_LINE and (dags / "rowfill_spec_errors.py").read_text() == ERRORS_LINE
    assert len(DAG_LINE.splitlines()) == len(ERRORS_LINE.splitlines()) == 1
    for line in (DAG_LINE, ERRORS_LINE):  # Airflow's safe-mode discovery reads only files naming both
        assert "airflow" in line.lower() and "dag" in line.lower()
    readme = (dags / "rowfill" / "README.md").read_text()
    assert "name: users_full_name" in readme and "[rowfill] specs_folder" in readme
    assert "created" in capsys.readouterr().out
    assert [w.action for w in init_dag_folder(dags)] == ["unchanged"] * 3


def test_a_changed_dag_file_is_not_overwritten_without_force_and_a_users_readme_is_kept(tmp_path, capsys):
    dags = tmp_path / "dags"
    init_dag_folder(dags)
    (dags / "rowfill_dags.py").write_text("# my own\n")
    (dags / "rowfill" / "README.md").write_text("# our team's notes\n")
    (dags / "rowfill_spec_errors.py").unlink()
    with pytest.raises(InitRefused, match=r"not overwriting .*rowfill_dags.py.*rowfill init --force"):
        init_dag_folder(dags)
    assert not (dags / "rowfill_spec_errors.py").exists()  # refused: nothing written at all
    assert main(["init", str(dags)]) == 1 and "rowfill: not overwriting" in capsys.readouterr().err
    actions = [w.action for w in init_dag_folder(dags, force=True)]
    assert actions == ["overwritten", "created", "overwritten"]
    assert (dags / "rowfill_dags.py").read_text() == DAG_LINE


def test_a_readme_of_the_users_own_is_kept_when_the_dag_files_are_fine(tmp_path):
    dags = tmp_path / "dags"
    init_dag_folder(dags)
    (dags / "rowfill" / "README.md").write_text("# our team's notes\n")
    assert [w.action for w in init_dag_folder(dags)] == ["unchanged", "unchanged", "kept"]
    assert (dags / "rowfill" / "README.md").read_text() == "# our team's notes\n"


def test_this_checkouts_dag_files_are_the_ones_init_writes():
    assert (ROOT / "dags" / "rowfill_dags.py").read_text() == DAG_LINE
    assert (ROOT / "dags" / "rowfill_spec_errors.py").read_text() == ERRORS_LINE
    assert not list((ROOT / "plugins").glob("*.py"))  # the plugin is an entry point, not a file here
