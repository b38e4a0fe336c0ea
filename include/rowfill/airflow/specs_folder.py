"""Where an installed rowfill finds its specs and writes its pools file: Airflow's configuration, the DAG bundle.

rowfill is installed as a wheel next to Airflow, so nothing it reads may resolve relative to the
package (that is site-packages). The specs folder is, first match wins:

1. ``$ROWFILL_SPECS_DIR`` (kept from the first releases; docker-compose sets it);
2. Airflow's ``[rowfill] specs_folder`` (``AIRFLOW__ROWFILL__SPECS_FOLDER`` or ``airflow.cfg``);
3. a ``rowfill/`` folder inside the DAG bundle, next to the DAG file that builds the DAGs, so specs
   are versioned and deployed with the DAGs (``rowfill init`` creates it); where no DAG file is at
   hand (the ``rowfill`` command, the progress page in the API server), inside ``[core] dags_folder``.

The pools file (``rowfill pools --write``, ``airflow pools import``) is ``pools.json`` in that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk.configuration import conf

from rowfill.spec.spec import SPECS_ENV

SECTION = "rowfill"  # Airflow config section: [rowfill] specs_folder = /path
OPTION = "specs_folder"
SUBFOLDER = "rowfill"  # the default specs folder's name inside the DAG bundle
POOLS_FILE_NAME = "pools.json"  # next to the specs: `airflow pools import <specs folder>/pools.json`


def _config(section: str, option: str) -> str | None:
    """One Airflow config value (env ``AIRFLOW__SECTION__OPTION`` first, then ``airflow.cfg``), or None,
    read through Airflow's own ``conf`` (Airflow docs, "Setting Configuration Options")."""
    value = conf.get(section, option, fallback=None)
    return value or None


def specs_folder(dag_file: str | os.PathLike | None = None) -> Path:
    """The folder of ``*.yaml`` specs (see the module docstring for the order).

    :param dag_file: the DAG file building rowfill's DAGs (its ``__file__``); the default folder is
        ``rowfill/`` beside it. None: ``rowfill/`` inside Airflow's ``[core] dags_folder``.
    :returns: the folder, absolute (``~`` expanded); it may not exist (``load_specs`` says so, naming
        the settings above).
    """
    configured = os.environ.get(SPECS_ENV) or _config(SECTION, OPTION)
    if configured:
        return Path(configured).expanduser().resolve()
    if dag_file is not None:
        return Path(dag_file).resolve().parent / SUBFOLDER
    return Path(_config("core", "dags_folder") or "~/airflow/dags").expanduser().resolve() / SUBFOLDER


def pools_file(folder: str | os.PathLike | None = None) -> Path:
    """The pools file of a specs folder: ``<specs folder>/pools.json``.

    :param folder: the specs folder (default ``specs_folder()``).
    """
    return Path(folder or specs_folder()) / POOLS_FILE_NAME
