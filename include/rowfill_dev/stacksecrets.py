"""The secrets an Airflow deployment needs, made at random once and kept in one file (mode 0600).

Nothing that grants access has a fixed value in the repository: a secret shipped in a file is the
same for everyone who starts from that file, so anyone could sign an admin token with it (issue 10).
Instead each deployment makes its own, once, and keeps them:

- the local stack (``rowfill_dev.devstack``: ``make demo``, the end-to-end tests) in
  ``$AIRFLOW_HOME/rowfill-secrets.env``;
- docker-compose.yml reads them from ``.env`` next to it, which ``python3 scripts/compose_secrets.py``
  writes (it refuses to start without them).

Both files are ``KEY=value`` lines, the format Compose reads. Values already there are kept, never
made again: a new Fernet key would make the connection passwords stored with the old one
unreadable, and a new database password would not match the one in an existing data volume.

Standard library only, so ``scripts/compose_secrets.py`` runs with any Python 3.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path


def _token() -> str:
    # 32 random bytes (256 bits), URL-safe characters only: they need no quoting in a URL
    # (database passwords sit in connection URLs), in JSON, in YAML or in a .env file.
    return secrets.token_urlsafe(32)


def _jwt_secret() -> str:
    # Airflow signs its tokens with HS512 when jwt_secret is set ([api_auth] jwt_algorithm); an HMAC
    # key should be at least as long as the hash, 64 bytes (RFC 7518 section 3.2).
    return secrets.token_urlsafe(64)


def _fernet_key() -> str:
    # Airflow's [core] fernet_key: 32 random bytes, URL-safe base64 (what cryptography's
    # Fernet.generate_key() returns; https://github.com/fernet/spec/blob/master/Spec.md).
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _password() -> str:
    return secrets.token_urlsafe(16)  # 128 bits; typed or pasted by a person at the login form


#: Every secret, by the variable name docker-compose.yml reads, and how a fresh one is made.
GENERATORS = {
    "AIRFLOW_JWT_SECRET": _jwt_secret,  # [api_auth] jwt_secret: signs the tokens of every UI and API user
    "AIRFLOW_API_SECRET_KEY": _token,  # [api] secret_key: signs sessions and log-fetch tokens
    "AIRFLOW_FERNET_KEY": _fernet_key,  # [core] fernet_key: encrypts connection passwords in the metadata DB
    "AIRFLOW_ADMIN_PASSWORD": _password,  # the `admin` user of the simple auth manager
    "AIRFLOW_DB_PASSWORD": _token,  # the metadata database (compose's `postgres`)
    "APP_DB_PASSWORD": _token,  # the target database (compose's `app-db`)
}

#: The Airflow setting each secret becomes (the admin password goes into the passwords file and
#: the ``rowfill_airflow_api`` connection instead; the database ones into connection URLs).
AIRFLOW_SETTINGS = {
    "AIRFLOW_JWT_SECRET": "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY": "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW_FERNET_KEY": "AIRFLOW__CORE__FERNET_KEY",
}

#: What the local stack needs: its metadata DB is SQLite and its target database is given to it.
LOCAL = ("AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD")
#: What docker-compose.yml requires.
COMPOSE = tuple(GENERATORS)

LOCAL_FILE = "rowfill-secrets.env"


def read_secrets(path: str | os.PathLike) -> dict[str, str]:
    """``KEY=value`` lines of ``path`` (blank lines and ``#`` comments skipped); {} if it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def ensure_secrets(path: str | os.PathLike, names=LOCAL) -> dict[str, str]:
    """The secrets ``names`` (keys of ``GENERATORS``) kept in ``path``, making only the missing ones.

    A new file is created with mode 0600 (never readable by other users, not even for an instant);
    missing names are appended to an existing one, whose other lines (e.g. ``AIRFLOW_API_PORT=8081``
    in a Compose ``.env``) stay as they are, and its mode is set to 0600. A name with an empty value
    counts as missing. Returns ``{name: value}`` for ``names``.

    Raises KeyError for a name ``GENERATORS`` does not know, OSError if ``path`` cannot be written.
    """
    path = Path(path)
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise KeyError(f"no generator for {unknown}; known: {sorted(GENERATORS)}")
    kept = read_secrets(path)
    missing = [n for n in names if not kept.get(n)]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = {n: GENERATORS[n]() for n in missing}
        lines = "".join(f"{n}={v}\n" for n, v in fresh.items())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                out.write("\n")
            if not kept:
                out.write("# Random secrets made by rowfill_dev.stacksecrets; keep this file private (mode 0600).\n")
            out.write(lines)
        kept.update(fresh)
    os.chmod(path, 0o600)
    return {n: kept[n] for n in names}
