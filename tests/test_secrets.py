"""No secret in the repository: nothing that grants access (JWT secret, API secret key, Fernet key,
a password) has a fixed value in any file the project ships, and the local stack makes its own,
at random, once per AIRFLOW_HOME, readable by its owner only. (docker-compose.yml's side, the
required variables and scripts/compose_secrets.py, is checked in test_compose.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rowfill_dev import stacksecrets
from rowfill_dev.devstack import AirflowStack

ROOT = Path(__file__).resolve().parents[1]

# Key names that hold a secret, matched at the end of a key (AIRFLOW__API_AUTH__JWT_SECRET,
# POSTGRES_PASSWORD, "password", secret_key=...). PASSWORDS_FILE or hide_password=False are not
# values of a secret: the first does not end with a name, the second is no literal.
SECRET_NAMES = ("JWT_SECRET", "SECRET_KEY", "FERNET_KEY", "PASSWORD", "PASSWD", "API_KEY", "SECRET", "TOKEN")

_KEY = r"(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)"
_QUOTED = r"(?P<q>[\"'])(?P<quoted>.*?)(?P=q)"
# KEY=value, KEY: value, "KEY": "value", KEY = "value"; in Python also `key: str = "value"`.
_ASSIGN = re.compile(_KEY + r"[\"']?\s*(?::(?!=)|=(?!=))\s*(?:" + _QUOTED + r"|(?P<bare>[^\s,;}\])#]+))")
_PY_DEFAULT = re.compile(_KEY + r"\s*:\s*[^=\n]+?\s*=(?!=)\s*" + _QUOTED)
# ${X:-default} is as fixed as its default; ${X}, ${X:?message} are references to X.
_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")


def _is_secret_key(key: str) -> bool:
    key = key.upper().replace("-", "_").rsplit(".", 1)[-1]
    return key.endswith(SECRET_NAMES)


def _literal(value: str) -> bool:
    """A fixed value, as opposed to a reference to one (``$X``, ``{x}``, ``<x>``) or nothing."""
    value = value.strip()
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", value) and _is_secret_key(value):
        return False  # the name of another secret
    return bool(value) and not value.startswith(("$", "{", "<", "%(")) and value.lower() not in ("none", "null", "~")


def fixed_secrets(path: str, text: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) of every secret-named key given a literal value in ``text``.

    In Python only quoted values count: ``password=password`` passes a variable, while a keyword
    default or a dict entry with a string literal fixes one. Elsewhere (env files, YAML, Dockerfile,
    Makefile, shell, Markdown) a bare word counts too. A value that is itself the name of a secret
    (``"AIRFLOW_JWT_SECRET": "AIRFLOW__API_AUTH__JWT_SECRET"``, mapping one name to another) is a
    reference, not a secret.
    """
    python = path.endswith(".py")
    return [(number, key, value) for number, line in enumerate(text.splitlines(), 1)
            for key, value in _assignments(_resolve_references(line), python) if _is_secret_key(key) and _literal(value)]


def _resolve_references(line: str) -> str:
    """Compose/shell ``${X:-default}`` -> its default (as fixed as any literal), other ``${...}`` -> ``$X``."""
    return _REFERENCE.sub(lambda m: m.group("arg") if m.group("op") == "-" and m.group("arg") else "$" + m.group("name"), line)


def _assignments(line: str, python: bool):
    """(key, value) pairs of a line, also those inside a quoted value (JSON in a YAML string)."""
    if python:
        yield from ((m.group("key"), m.group("quoted")) for m in _PY_DEFAULT.finditer(line))
    for m in _ASSIGN.finditer(line):
        if m.group("q"):
            yield m.group("key"), m.group("quoted")
            yield from _assignments(m.group("quoted"), python)
        elif not python:
            yield m.group("key"), m.group("bare")


def shipped_files() -> list[Path]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in done.stdout.decode().split("\0") if name]


def test_no_shipped_file_fixes_a_secret():
    """Every file git tracks (what a clone gets, what the image and compose are built from)."""
    files = shipped_files()
    assert any(f.name == "docker-compose.yml" for f in files) and any(f.name == "airflow.env" for f in files)
    problems = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary (or deleted but not yet committed): no key=value lines to read
        rel = path.relative_to(ROOT).as_posix()
        problems += [f"{rel}:{number}: {key} has the fixed value {value!r}" for number, key, value in fixed_secrets(rel, text)]
    assert not problems, ("secrets with a value in the repository (anyone with the file has them; generate them "
                          "per deployment instead, see rowfill_dev.stacksecrets):\n" + "\n".join(problems))


@pytest.mark.parametrize("path, template, value", [
    # what the repository shipped before issue 10, each of which let anyone in (the value is put
    # in when the test runs, so that this file does not fix a secret itself)
    ("include/airflow.env", "AIRFLOW__API_AUTH__JWT_SECRET={}", "rowfill-dev-jwt-secret-change-me"),
    ("docker-compose.yml", "    AIRFLOW__API__SECRET_KEY: ${{AIRFLOW_API_SECRET_KEY:-{}}}", "rowfill-dev-secret-key-change-me"),
    ("docker-compose.yml", "      POSTGRES_PASSWORD: {}", "app"),
    ("docker-compose.yml", """    AIRFLOW_CONN_X: '{{"conn_type": "http", "login": "admin", "password": "{}"}}'""", "admin"),
    ("include/rowfill/devstack.py", '                 user: str = "admin", password: str = "{}",', "admin"),
    ("scripts/x.sh", "export AIRFLOW__CORE__FERNET_KEY='{}'", "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8hIQ=="),
    ("README.md", "AIRFLOW_ADMIN_PASSWORD={}", "hunter2"),
])
def test_the_scan_finds_a_fixed_secret(path, template, value):
    [(number, _key, found)] = fixed_secrets(path, "\n" + template.format(value) + "\n")
    assert (number, found) == (2, value)


@pytest.mark.parametrize("path, line", [
    ("docker-compose.yml", "    AIRFLOW__API_AUTH__JWT_SECRET: ${AIRFLOW_JWT_SECRET:?run python3 scripts/compose_secrets.py}"),
    ("docker-compose.yml", "    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE: /opt/airflow/auth/passwords.json"),
    ("include/rowfill/devstack.py", '        data=json.dumps({"username": self.user, "password": self.password}).encode(),'),
    ("include/rowfill/db.py", "        where = engine.url.render_as_string(hide_password=True)"),
    ("include/rowfill/devstack.py", "                 user: str = \"admin\", password: str | None = None,"),
    ("README.md", "- `AIRFLOW_ADMIN_PASSWORD`: the UI's admin password"),
])
def test_the_scan_lets_references_and_other_keys_pass(path, line):
    assert fixed_secrets(path, line) == []


def test_the_local_stack_makes_its_secrets_once_per_airflow_home(tmp_path):
    first = AirflowStack(tmp_path / "one")
    again = AirflowStack(tmp_path / "one")
    other = AirflowStack(tmp_path / "two")

    secrets_file = tmp_path / "one" / stacksecrets.LOCAL_FILE
    assert secrets_file.stat().st_mode & 0o777 == 0o600, "the secrets file must be readable by its owner only"
    kept = stacksecrets.read_secrets(secrets_file)
    for name, setting in stacksecrets.AIRFLOW_SETTINGS.items():
        assert first.env[setting] == kept[name] == again.env[setting], f"{setting} changed for the same AIRFLOW_HOME"
        assert other.env[setting] != first.env[setting], f"two AIRFLOW_HOMEs share {setting}"
        assert len(first.env[setting]) >= 40, f"{setting} is too short to be random: {first.env[setting]!r}"
    assert first.password == again.password == kept["AIRFLOW_ADMIN_PASSWORD"] != other.password
    assert first.password != "admin" and len(first.password) >= 20
    from cryptography.fernet import Fernet  # installed with Airflow; the key must be one Airflow accepts

    assert Fernet(first.env["AIRFLOW__CORE__FERNET_KEY"]).decrypt(Fernet(first.env["AIRFLOW__CORE__FERNET_KEY"]).encrypt(b"x")) == b"x"


def test_the_local_passwords_file_is_private_and_holds_the_generated_password(tmp_path):
    stack = AirflowStack(tmp_path / "airflow")
    stack.home.mkdir(parents=True, exist_ok=True)
    (stack.home / "passwords.json").write_text('{"admin": "admin"}')  # an older, world-readable one
    (stack.home / "passwords.json").chmod(0o644)
    stack.airflow = lambda *args, **kw: None  # no migration or pools: only the files prepare() writes
    stack.prepare()
    assert (stack.home / "passwords.json").read_text() == '{"admin": "%s"}' % stack.password
    assert (stack.home / "passwords.json").stat().st_mode & 0o777 == 0o600
