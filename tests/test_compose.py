"""docker-compose.yml and the Dockerfile, checked without Docker.

The compose stack cannot be started here, so these tests hold it to what the rest of the project
already knows: the services the README documents, the Airflow settings shared with ``make demo``
and the end-to-end tests (include/airflow.env, rowfill_dev.devstack), the paths it mounts, the pools
the specs need, and the Airflow version pinned in constraints.txt. Variables like
``${AIRFLOW_API_PORT:-8080}`` are read at their defaults, never from the environment; required
ones, ``${AIRFLOW_JWT_SECRET:?message}``, as the placeholder ``<AIRFLOW_JWT_SECRET>``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from rowfill.airflow.pools import pools_for
from rowfill.spec.spec import load_specs
from rowfill_dev import stacksecrets
from rowfill_dev.devstack import AirflowStack, read_env_file

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SHARED_ENV = "include/airflow.env"

# The services the README's Docker section documents (kept here too, as the README is written
# separately; test_readme_docker_section_names_real_services checks the README itself).
EXPECTED_SERVICES = [
    "postgres", "redis", "app-db", "airflow-init", "airflow-apiserver", "airflow-scheduler",
    "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
]
API_SERVER = "airflow-apiserver"
WORKER = "airflow-worker"
INIT = "airflow-init"

# What rowfill_dev.devstack sets that only makes sense for one deployment (paths, database, executor,
# ports, where the API is). Everything else it sets must be the same in compose.
DEPLOYMENT_SPECIFIC = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__API__PORT",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW_CONN_ROWFILL_AIRFLOW_API",  # same but for host and port: test_api_connection_...
    "AIRFLOW_CONN_APP_DB",
    "ROWFILL_SPECS_DIR",
    "AIRFLOW__ROWFILL__SPECS_FOLDER",  # the local stack's specs folder (compose uses ROWFILL_SPECS_DIR)
    # Secrets: made per deployment (rowfill_dev.stacksecrets), required from the environment by
    # compose; test_secrets_come_from_the_environment_and_match_the_local_ones checks them.
    *stacksecrets.AIRFLOW_SETTINGS.values(),
}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")
_SERVICE_NAME = re.compile(r"airflow-[a-z0-9]+(?:-[a-z0-9]+)*|app-db|redis|postgres|flower")


# -- helpers ------------------------------------------------------------------------------------
def interpolate(value):
    """Compose interpolation at the defaults: ``${X:-d}`` -> d, ``${X}`` -> '', ``$$`` -> ``$``,
    and a required ``${X:?message}`` -> ``<X>`` (the same placeholder wherever X is used)."""
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        return f"<{m.group(1)}>" if m.group(2) == "?" else (m.group(3) or "")

    return _VAR.sub(one, value)


def required_variables(value) -> set[str]:
    """Names of the ``${X:?message}`` (or ``${X?message}``) variables in a compose value."""
    return {m.group(1) for m in _VAR.finditer(value) if m.group(2) == "?"} if isinstance(value, str) else set()


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def env_files(service: dict) -> list[str]:
    return [entry["path"] if isinstance(entry, dict) else entry for entry in as_list(service.get("env_file"))]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(interpolate(value)) for key, value in env.items()}


def effective_env(service: dict) -> dict[str, str]:
    """What the container sees: env_file entries, then `environment:` over them (as Compose does)."""
    env: dict[str, str] = {}
    for path in env_files(service):
        env.update(read_env_file(ROOT / path))
    env.update(environment(service))
    return env


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of every volume; sources of bind mounts start with '.' or '/'."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found.append((interpolate(volume.get("source", "")), interpolate(volume["target"])))
        else:
            parts = interpolate(volume).split(":")
            found.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return found


def host_path(service: dict, container_path: str) -> Path | None:
    """The repository path a container path comes from, through the service's bind mounts."""
    best = None
    for source, target in mounts(service):
        if not source.startswith((".", "/")):
            continue
        try:
            rest = PurePosixPath(container_path).relative_to(target)
        except ValueError:
            continue
        if best is None or len(target) > len(best[1]):
            best = (source, target, rest)
    if best is None:
        return None
    return (ROOT / best[0] / best[2]).resolve()


def ports(service: dict) -> list[tuple[str | None, str]]:
    """(published host port or None, container port) of every `ports:` entry."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.append((str(entry.get("published")) if entry.get("published") else None, str(entry["target"])))
        else:
            parts = str(interpolate(entry)).split(":")
            found.append((parts[-2] if len(parts) > 1 else None, parts[-1].split("/")[0]))
    return found


def _all_strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_strings(item)
    elif isinstance(value, str):
        yield value


def heredocs(service: dict) -> list[str]:
    """The ``<<'PY'`` ... ``PY`` blocks of a service's shell command, as the shell hands them on."""
    text = interpolate("\n".join(str(part) for part in as_list(service.get("command"))))
    return re.findall(r"<<'PY'\n(.*?)\n\s*PY\n", text, re.S)


def command_text(service: dict) -> str:
    return interpolate(" ".join(str(part) for part in as_list(service.get("command"))))


def readme_docker_names(text: str) -> set[str]:
    """Backticked compose-service-like names in the README's Docker section(s).

    A section runs from a heading containing "Docker" to the next heading of the same or a higher
    level; fenced code blocks are neither headings nor scanned. Inside `code spans`, words that look
    like service names (airflow-*, app-db, redis, postgres, flower) are collected; `--scale
    airflow-worker=3` counts as airflow-worker.
    """
    names: set[str] = set()
    level = None
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = re.match(r"\s{0,3}(#{1,6})\s+(.*)", line)
        if heading:
            depth = len(heading.group(1))
            if level is not None and depth <= level:
                level = None
            if level is None and "docker" in heading.group(2).lower():
                level = depth
            continue
        if level is None:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            for word in span.split():
                word = word.split("=")[0].strip(".,;()[]'\"")
                if _SERVICE_NAME.fullmatch(word):
                    names.add(word)
    return names


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE.is_file(), "docker-compose.yml is missing"
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "docker-compose.yml has no services"
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def airflow_services(compose, services) -> dict:
    """The services built from the x-airflow-common anchor (same image)."""
    common = compose.get("x-airflow-common")
    assert isinstance(common, dict), "x-airflow-common (the shared Airflow service definition) is missing"
    found = {name: svc for name, svc in services.items() if svc.get("image") == common.get("image")}
    missing = {name for name in EXPECTED_SERVICES if name.startswith("airflow-")} - set(found)
    assert not missing, f"not built on x-airflow-common: {sorted(missing)}"
    return found


@pytest.fixture
def devstack(tmp_path, monkeypatch) -> AirflowStack:
    """The local stack (make demo, end-to-end tests), configured but not started."""
    import os

    for key in list(os.environ):
        if key.startswith(("AIRFLOW", "ROWFILL_")):
            monkeypatch.delenv(key)
    return AirflowStack(tmp_path / "airflow", target_url="postgresql://u:p@127.0.0.1:5432/app",
                        specs_dir=ROOT / "include" / "specs")


@pytest.fixture
def devstack_env(devstack) -> dict[str, str]:
    """What the local runs (make demo, end-to-end tests) give Airflow, without starting anything."""
    return {k: v for k, v in devstack.env.items() if k.startswith(("AIRFLOW", "ROWFILL_"))}


# -- the services -------------------------------------------------------------------------------
def test_compose_defines_the_documented_services(services):
    missing = [name for name in EXPECTED_SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_readme_docker_section_names_real_services(services):
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md yet")
    names = readme_docker_names(readme.read_text())
    if not names:
        pytest.skip("README.md has no Docker section naming compose services")
    unknown = sorted(names - set(services))
    assert not unknown, f"README.md's Docker section names services docker-compose.yml lacks: {unknown}"


def test_readme_parser():
    text = "\n".join([
        "# rowfill", "`airflow-nothere` outside the section is ignored",
        "## Running with Docker", "Start `airflow-apiserver` and `app-db`; scale with",
        "`docker compose up --scale airflow-worker=3`. Not services: `postgres:15`, `apache-airflow-providers-postgres`.",
        "```bash", "# a comment, not a heading", "docker compose logs `airflow-fenced`", "```",
        "### Workers", "`redis` is the broker.",
        "## Tests", "`airflow-after` is outside again",
    ])
    assert readme_docker_names(text) == {"airflow-apiserver", "app-db", "airflow-worker", "redis"}


def test_named_volumes_are_declared_and_dependencies_exist(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for source, _ in mounts(svc):
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
        depends = svc.get("depends_on") or {}
        for dep, cond in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            condition = (cond or {}).get("condition")
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert dep == INIT, f"{name} waits for {dep} to complete, but only {INIT} is a one-shot"


def test_long_running_airflow_services_wait_for_init_and_have_healthchecks(airflow_services):
    for name, svc in airflow_services.items():
        if name == INIT:
            continue
        assert svc.get("healthcheck"), f"{name} has no healthcheck"
        assert (svc.get("depends_on") or {}).get(INIT, {}).get("condition") == "service_completed_successfully", \
            f"{name} must wait for {INIT} to complete (migrations, pools)"


# -- shared settings ----------------------------------------------------------------------------
def test_airflow_services_use_shared_env_file_and_celery(airflow_services):
    for name, svc in airflow_services.items():
        assert SHARED_ENV in env_files(svc), f"{name} does not load {SHARED_ENV} (env_file)"
        assert effective_env(svc).get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", f"{name} is not on CeleryExecutor"


def test_environment_does_not_redefine_shared_settings(airflow_services):
    shared = read_env_file(ROOT / SHARED_ENV)
    for name, svc in airflow_services.items():
        again = {k: v for k, v in environment(svc).items() if k in shared}
        assert not again, (
            f"{name} sets {sorted(again)} in `environment:`, which {SHARED_ENV} already sets "
            f"(compose: {again}, {SHARED_ENV}: { {k: shared[k] for k in again} }); change them in {SHARED_ENV} only")


def test_local_runs_and_compose_agree_on_deployment_independent_settings(airflow_services, devstack_env):
    shared = read_env_file(ROOT / SHARED_ENV)
    assert shared, f"{SHARED_ENV} is empty"
    for key, value in shared.items():
        assert devstack_env.get(key) == value, f"rowfill_dev.devstack gives {key}={devstack_env.get(key)!r}, {SHARED_ENV} {value!r}"
    independent = {k: v for k, v in devstack_env.items() if k not in DEPLOYMENT_SPECIFIC}
    assert set(shared) <= set(independent)
    for name, svc in airflow_services.items():
        env = effective_env(svc)
        differ = {k: (v, env.get(k)) for k, v in independent.items() if env.get(k) != v}
        assert not differ, (
            f"{name} differs from the local runs (rowfill_dev.devstack) on {differ} (local, compose); "
            f"put settings both need in {SHARED_ENV}")


def test_execution_api_points_at_the_api_server(services, airflow_services):
    assert command_text(services[API_SERVER]).split()[:1] == ["api-server"]
    container_ports = {container for _, container in ports(services[API_SERVER])}
    for name, svc in airflow_services.items():
        url = effective_env(svc).get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL")
        assert url, f"{name}: AIRFLOW__CORE__EXECUTION_API_SERVER_URL is not set"
        parts = urlsplit(url)
        assert parts.hostname == API_SERVER, f"{name}: execution API {url} is not the {API_SERVER} service"
        assert str(parts.port) in container_ports, \
            f"{name}: execution API port {parts.port} is not the port {API_SERVER} listens on ({container_ports})"
        assert parts.path.rstrip("/") == "/execution", f"{name}: execution API path is {parts.path!r}"


def test_base_url_is_the_published_api_port(services, airflow_services):
    published = {host for host, container in ports(services[API_SERVER]) if container == "8080"}
    for name, svc in airflow_services.items():
        base = urlsplit(effective_env(svc)["AIRFLOW__API__BASE_URL"])
        assert str(base.port) in published, f"{name}: AIRFLOW__API__BASE_URL port {base.port} is not published ({published})"


def test_metadata_db_and_broker_are_the_compose_services(services, airflow_services):
    for name, svc in airflow_services.items():
        env = effective_env(svc)
        for key, service, scheme in [
            ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgres", "postgresql+psycopg"),
            ("AIRFLOW__CELERY__RESULT_BACKEND", "postgres", "db+postgresql"),
            ("AIRFLOW__CELERY__BROKER_URL", "redis", "redis"),
        ]:
            parts = urlsplit(env.get(key, ""))
            assert parts.scheme == scheme and parts.hostname == service, f"{name}: {key}={env.get(key)!r}"
        db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        pg = environment(services["postgres"])
        assert (db.username, db.password, db.path.lstrip("/")) == (
            pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]), f"{name}: metadata DB credentials"


def test_app_db_connection_is_the_app_db_service(services, airflow_services):
    app = environment(services["app-db"])
    assert ("5433", "5432") in ports(services["app-db"]), "app-db should be published on host port 5433"
    for name, svc in airflow_services.items():
        url = urlsplit(effective_env(svc).get("AIRFLOW_CONN_APP_DB", ""))
        assert url.scheme in ("postgres", "postgresql") and url.hostname == "app-db" and url.port == 5432, \
            f"{name}: AIRFLOW_CONN_APP_DB must point at app-db:5432"
        assert (url.username, url.password, url.path.lstrip("/")) == (
            app["POSTGRES_USER"], app["POSTGRES_PASSWORD"], app["POSTGRES_DB"]), f"{name}: app_db credentials"
    connections = {s.connection for s in load_specs(ROOT / "include" / "specs")[0]}
    assert connections == {"app_db"}, f"specs use connections {connections}; compose only defines app_db"


def test_api_connection_reaches_the_api_server_with_the_admin_password(services, airflow_services, devstack,
                                                                      devstack_env, tmp_path):
    local = json.loads(devstack_env["AIRFLOW_CONN_ROWFILL_AIRFLOW_API"])
    assert local["password"] == devstack.password == \
        stacksecrets.read_secrets(devstack.secrets_file)["AIRFLOW_ADMIN_PASSWORD"], "local: not the generated password"
    container_ports = {container for _, container in ports(services[API_SERVER])}
    for name, svc in airflow_services.items():
        env = effective_env(svc)
        conn = json.loads(env["AIRFLOW_CONN_ROWFILL_AIRFLOW_API"])
        assert conn["host"] == API_SERVER and str(conn["port"]) in container_ports, f"{name}: {conn}"
        same = ("conn_type", "schema", "login")
        assert {k: conn.get(k) for k in same} == {k: local.get(k) for k in same}, f"{name}: {conn} vs local {local}"
        assert conn["password"] == "<AIRFLOW_ADMIN_PASSWORD>", f"{name}: the admin password must come from AIRFLOW_ADMIN_PASSWORD"
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"), f"{name}: no passwords file"
    # airflow-init writes that login/password into the passwords file the API server reads, which
    # lives on a volume both mount: run the script it runs for that, as it would run in the container.
    pw_file = effective_env(services[INIT])["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    scripts = [block for block in heredocs(services[INIT]) if "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in block]
    assert len(scripts) == 1, f"{INIT} has no (single) script writing the passwords file"
    env = {**effective_env(services[INIT]), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "pw.json")}
    env["AIRFLOW_CONN_ROWFILL_AIRFLOW_API"] = env["AIRFLOW_CONN_ROWFILL_AIRFLOW_API"].replace(
        "<AIRFLOW_ADMIN_PASSWORD>", "s3cret-from-env")
    done = subprocess.run([sys.executable, "-"], input=scripts[0], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "pw.json").read_text()) == {local["login"]: "s3cret-from-env"}
    assert (tmp_path / "pw.json").stat().st_mode & 0o777 == 0o600, "the passwords file must be readable by its owner only"
    pw_dir = str(PurePosixPath(pw_file).parent)
    shared = {src for src, dst in mounts(services[INIT]) if dst == pw_dir} & \
             {src for src, dst in mounts(services[API_SERVER]) if dst == pw_dir}
    assert shared, f"{INIT} and {API_SERVER} do not share a volume at {pw_dir}"


def test_secrets_come_from_the_environment_and_match_the_local_ones(compose, services, airflow_services, devstack):
    """No secret has a value in the compose file: each is a required variable (``${X:?...}``, so
    Compose refuses to start without it), the one scripts/compose_secrets.py writes into .env, and
    the local stack sets the same Airflow settings from its own generated secrets."""
    local = stacksecrets.read_secrets(devstack.secrets_file)
    assert set(local) >= set(stacksecrets.LOCAL)
    for name, svc in airflow_services.items():
        raw = {**compose["x-airflow-common"]["environment"], **(svc.get("environment") or {})}
        for variable, setting in stacksecrets.AIRFLOW_SETTINGS.items():
            assert required_variables(raw.get(setting)) == {variable}, \
                f"{name}: {setting} must be exactly ${{{variable}:?...}} (required, no default), not {raw.get(setting)!r}"
            assert raw[setting].startswith("${") and raw[setting].endswith("}"), f"{name}: {setting}={raw[setting]!r}"
            assert devstack.env[setting] == local[variable], f"local stack: {setting} is not its generated {variable}"
    for db, user_url_key, variable in [("postgres", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_DB_PASSWORD"),
                                       ("app-db", "AIRFLOW_CONN_APP_DB", "APP_DB_PASSWORD")]:
        assert required_variables(services[db]["environment"]["POSTGRES_PASSWORD"]) == {variable}, \
            f"{db}: POSTGRES_PASSWORD must be ${{{variable}:?...}}"
        url = compose["x-airflow-common"]["environment"][user_url_key]
        assert variable in required_variables(url), f"{user_url_key} does not take its password from {variable}"
    required = set().union(*(required_variables(v) for v in _all_strings(compose)))
    assert required == set(stacksecrets.COMPOSE), \
        f"compose requires {sorted(required)}; scripts/compose_secrets.py writes {sorted(stacksecrets.COMPOSE)}"


def test_compose_secrets_script_writes_a_private_env_file_once(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("AIRFLOW_API_PORT=8081\nAIRFLOW_FERNET_KEY=kept-as-it-was\n")
    script = [sys.executable, str(ROOT / "scripts" / "compose_secrets.py"), "--env-file", str(env_file)]
    done = subprocess.run(script, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    first = stacksecrets.read_secrets(env_file)
    assert first["AIRFLOW_API_PORT"] == "8081" and first["AIRFLOW_FERNET_KEY"] == "kept-as-it-was"
    assert set(stacksecrets.COMPOSE) <= set(first) and all(first[n] for n in stacksecrets.COMPOSE)
    assert len({first[n] for n in stacksecrets.COMPOSE}) == len(stacksecrets.COMPOSE), "every secret is its own"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert first["AIRFLOW_JWT_SECRET"] not in done.stdout, "the script must not print secrets"
    subprocess.run(script, check=True, capture_output=True, timeout=60)
    assert stacksecrets.read_secrets(env_file) == first, "a second run must change nothing"


# -- mounts, pools, seeding ---------------------------------------------------------------------
def test_bind_mount_sources_exist(services):
    for name, svc in services.items():
        for source, target in mounts(svc):
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve()
                assert path.exists(), (
                    f"{name} mounts {source} -> {target}, which does not exist in the repository "
                    f"(an empty directory needs a tracked file, e.g. {source}/.gitkeep, to exist in a fresh clone)")


def test_container_paths_come_from_the_repository(airflow_services):
    for name, svc in airflow_services.items():
        env = effective_env(svc)
        for key, repo_path in [("AIRFLOW__CORE__DAGS_FOLDER", "dags"), ("AIRFLOW__CORE__PLUGINS_FOLDER", "plugins"),
                               ("ROWFILL_SPECS_DIR", "include/specs")]:
            assert host_path(svc, env[key]) == (ROOT / repo_path).resolve(), \
                f"{name}: {key}={env[key]} is not the mounted ./{repo_path}"


def test_pools_import_covers_every_spec(services):
    init = services[INIT]
    match = re.search(r"airflow pools import\s+(\S+)", command_text(init))
    assert match, f"{INIT} does not run `airflow pools import`"
    source = host_path(init, match.group(1).strip("'\""))
    assert source == (ROOT / "include" / "pools.json").resolve(), f"{INIT} imports {match.group(1)}, not include/pools.json"
    assert source.is_file()
    pools = json.loads(source.read_text())
    specs, _ = load_specs(ROOT / "include" / "specs")
    assert specs, "include/specs has no valid spec"
    needed = pools_for(specs)
    assert set(needed) <= set(pools), f"include/pools.json lacks pools {sorted(set(needed) - set(pools))}"
    for spec in specs:
        assert pools[spec.pool_name]["slots"] >= spec.max_parallel_chunks, \
            f"pool {spec.pool_name} has {pools[spec.pool_name]['slots']} slots, {spec.name} runs {spec.max_parallel_chunks} chunks at once"


def test_init_migrates_and_seeds_app_db_once(services):
    init = services[INIT]
    text = command_text(init)
    assert "airflow db migrate" in text
    seed = re.search(r"python\s+(\S*seed\.py)", text)
    assert seed and host_path(init, seed.group(1)) == (ROOT / "scripts" / "seed.py").resolve(), \
        f"{INIT} does not run scripts/seed.py"
    assert "ROWFILL_SEED_USERS" in text
    assert environment(init).get("ROWFILL_SEED_USERS") == "1000000"
    assert (init.get("depends_on") or {}).get("app-db", {}).get("condition") == "service_healthy"


def test_worker_can_scale(services):
    worker = services[WORKER]
    assert command_text(worker).split()[:2] == ["celery", "worker"]
    for key in ("container_name", "hostname", "ports"):
        assert not worker.get(key), f"{WORKER} sets {key}, so `docker compose up --scale {WORKER}=N` cannot work"
    replicas = interpolate((worker.get("deploy") or {}).get("replicas", 1))
    assert int(replicas) >= 1


def test_docker_compose_config_accepts_the_file():
    """`docker compose config` when the Compose CLI is installed (no engine needed)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose CLI not installed")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- the image ----------------------------------------------------------------------------------
def _dockerfile() -> list[str]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    lines = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_extends_the_pinned_airflow_image(compose):
    lines = _dockerfile()
    args = dict(re.match(r"ARG\s+(\w+)=(\S+)", line).groups() for line in lines if re.match(r"ARG\s+\w+=", line))
    base = next(line.split()[1] for line in lines if line.upper().startswith("FROM "))
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    python = re.search(r">=(\d+\.\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]).group(1)
    assert base == f"apache/airflow:{pinned}-python{python}", f"Dockerfile FROM {base}; constraints.txt pins {pinned}"
    build = compose["x-airflow-common"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")).resolve() == DOCKERFILE
    if isinstance(build, dict):
        for key, value in (build.get("args") or {}).items():
            if key in args:
                assert interpolate(value) == args[key], f"compose build arg {key} default differs from the Dockerfile's"
    assert compose["x-airflow-common"].get("image"), "x-airflow-common needs an image name for the built image"


def test_dockerfile_installs_rowfill_with_the_constraints():
    lines = _dockerfile()
    pip = [line for line in lines if line.startswith("RUN") and "pip install" in line]
    assert pip, "Dockerfile does not pip install rowfill"
    assert any(re.search(r"(-c|--constraint)\s+\S*constraints\.txt", line) for line in pip), "pip install without -c constraints.txt"
    users = [line.split()[1] for line in lines[:lines.index(pip[0])] if line.startswith("USER ")]
    assert users and users[-1] in ("airflow", "50000"), "install as the image's airflow user, not root"
    copied = []
    for line in lines:
        if line.startswith(("COPY ", "ADD ")):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            copied += words[:-1]
    copied = {c.rstrip("/") for c in copied}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    for needed in ("pyproject.toml", "constraints.txt", "include", readme):
        assert needed is None or needed in copied, f"Dockerfile does not COPY {needed}, which `pip install .` needs"
    for source in copied - {readme}:  # the readme is pyproject's to require
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git"} <= ignored, ".dockerignore must keep .venv and .git out of the build context"
    assert not ignored & copied, f".dockerignore excludes files the Dockerfile copies: {ignored & copied}"
