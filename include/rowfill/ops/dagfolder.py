"""``rowfill init DAGS_FOLDER``: the files an existing Airflow needs to run rowfill's backfills.

The wheel holds no DAG file (Airflow reads DAGs from its DAG bundle, not from site-packages), so
``init`` writes two one-line DAG files into the user's DAG folder, and a ``rowfill/`` specs folder
beside them (the default ``[rowfill] specs_folder``, see ``rowfill.airflow.specs_folder``), with a
README holding an example spec when it has none. Nothing that exists is overwritten without ``--force``:
a changed DAG file stops ``init`` with the list of such files, a README of the user's own is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rowfill.airflow.specs_folder import SUBFOLDER
from rowfill.errors import RowfillError

# The one-line DAG files. Airflow's safe-mode discovery reads a file only when it mentions both
# "airflow" and "dag" (Airflow docs, "[core] dag_discovery_safe_mode"): both lines do.
DAG_FILE = "rowfill_dags.py"
DAG_LINE = "from rowfill.airflow.factory import dags_here; dags_here(globals())  # rowfill: one Airflow DAG per valid spec\n"
ERRORS_FILE = "rowfill_spec_errors.py"
ERRORS_LINE = ("from rowfill.airflow.factory import spec_errors_here; spec_errors_here(globals())  "
               "# rowfill: bad specs, as this Airflow DAG file's import error\n")

SPECS_README = """\
# rowfill specs

Each `*.yaml` file in this folder is one backfill; rowfill turns it into the Airflow DAG
`rowfill_<name>` (`rowfill_dags.py` next to this folder). Specs that do not validate show as the
import error of `rowfill_spec_errors.py`, naming the file and the field, and never stop the others.

This folder travels with your DAGs (same bundle, same review, same deploy). To keep specs elsewhere,
set Airflow's `[rowfill] specs_folder` (`AIRFLOW__ROWFILL__SPECS_FOLDER`).

An example (save it as `users_full_name.yaml`; `app_db` is an Airflow connection to the database):

```yaml
name: users_full_name
description: Fill users.full_name from first_name and last_name
connection: app_db
table: public.users
key: id
where: full_name IS NULL
set:
  full_name: "first_name || ' ' || last_name"
chunk_rows: 100000
batch_rows: 1000
max_parallel_chunks: 2
alerts:
  - smtp: {to: [oncall@example.com], connection: smtp_default}
```

Then create its Airflow pool: `rowfill pools --write` writes `pools.json` here;
`airflow pools import pools.json` loads it.

Python transforms and sinks (`transform: my_backfills.loyalty:points`) live in your own installed
package or in the DAG bundle (Airflow puts the bundle's folder on the import path of the DAG
processor and of every worker), never inside rowfill.
"""


class InitRefused(RowfillError):
    """``rowfill init`` would overwrite files that differ from what it writes; the message lists them."""


@dataclass(frozen=True)
class Written:
    """What ``init`` did to one file: ``created``, ``unchanged``, ``kept`` (the user's own README) or ``overwritten``."""

    path: Path
    action: str


SPECS_README_NAME = "README.md"  # in the specs folder; once there, it is the user's (kept unless --force)


def planned_files(dags_folder: Path) -> dict[Path, str]:
    """Every file ``init`` writes, with its content.

    :param dags_folder: the Airflow DAG folder (``[core] dags_folder``, or a DAG bundle's root).
    :returns: path -> text: the two DAG files and the specs folder's README.
    """
    return {
        dags_folder / DAG_FILE: DAG_LINE,
        dags_folder / ERRORS_FILE: ERRORS_LINE,
        dags_folder / SUBFOLDER / SPECS_README_NAME: SPECS_README,
    }


def init_dag_folder(dags_folder: str | os.PathLike, force: bool = False) -> list[Written]:
    """Write the one-line DAG files and the ``rowfill/`` specs folder into ``dags_folder``.

    :param dags_folder: the DAG folder; created when missing.
    :param force: overwrite files whose content differs (an old or edited DAG file, the specs folder's README).
    :returns: one ``Written`` per file, in ``planned_files`` order.
    :raises InitRefused: without ``force``, when a DAG file exists with other content; nothing is written then.
    :raises OSError: the folder cannot be written (permissions): the operating system's own message.
    """
    root = Path(dags_folder).expanduser().resolve()
    files = planned_files(root)
    differing = [p for p, text in files.items() if p.exists() and p.read_text(encoding="utf-8") != text
                 and p.name != SPECS_README_NAME]
    if differing and not force:
        raise InitRefused(
            "not overwriting " + ", ".join(str(p) for p in differing)
            + ": they differ from what `rowfill init` writes. Move them away, or run `rowfill init --force "
            f"{root}` to replace them.")
    done = []
    for path, text in files.items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            done.append(Written(path, "unchanged"))
            continue
        if path.exists() and not force:  # only the README gets here (see ``differing``): the user's now
            done.append(Written(path, "kept"))
            continue
        action = "overwritten" if path.exists() else "created"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        done.append(Written(path, action))
    return done
