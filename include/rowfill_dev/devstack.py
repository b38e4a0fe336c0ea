"""A local Airflow 3 stack for ``make demo`` and the end-to-end tests: real scheduler, DAG processor,
API server and triggerer as separate processes, each in its own process group.

Stopping kills whole process groups, because Airflow components leave children (task runners,
gunicorn/uvicorn workers) that outlive their parent. Settings shared with docker-compose come from
``include/airflow.env``; only what must differ locally (paths, SQLite, port, executor) is added here.

Secrets (JWT secret, API secret key, Fernet key, the admin password) are made at random once per
``AIRFLOW_HOME`` and kept there (``rowfill_dev.stacksecrets``): nothing that grants access to the stack
is written in the repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from rowfill_dev import stacksecrets

PROJECT = Path(__file__).resolve().parents[2]
SHARED_ENV = PROJECT / "include" / "airflow.env"
COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")


def read_env_file(path: Path = SHARED_ENV) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


class AirflowStack:
    def __init__(self, home: str | os.PathLike, *, port: int = 8080, target_url: str | None = None,
                 specs_dir: str | os.PathLike | None = None, extra_env: dict[str, str] | None = None,
                 user: str = "admin", password: str | None = None,
                 metadata_url: str | None = None, broker_url: str | None = None):
        """LocalExecutor on SQLite by default; give ``metadata_url`` (PostgreSQL) and ``broker_url``
        (Redis) for a CeleryExecutor deployment whose workers ``start_workers`` starts.

        ``password`` is the admin user's; by default the one made at random for this ``home``
        (kept in ``home/rowfill-secrets.env``, mode 0600, with the JWT secret, the API secret key and
        the Fernet key, so a restarted stack on the same home keeps its tokens and connections valid).
        """
        self.home = Path(home).resolve()
        self.port = port
        self.secrets_file = self.home / stacksecrets.LOCAL_FILE
        made = stacksecrets.ensure_secrets(self.secrets_file, stacksecrets.LOCAL)
        self.user, self.password = user, password or made["AIRFLOW_ADMIN_PASSWORD"]
        self.base = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, **read_env_file()}
        bindir = str(Path(sys.executable).parent)
        self.env.update({
            "PATH": f"{bindir}:{self.env.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if broker_url else "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url or f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW_CONN_ROWFILL_AIRFLOW_API": json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": user,
                 "password": self.password}),
            **{setting: made[name] for name, setting in stacksecrets.AIRFLOW_SETTINGS.items()},
        })
        if broker_url:
            self.env["AIRFLOW__CELERY__BROKER_URL"] = broker_url
            self.env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + metadata_url.replace("+psycopg", "")
        if target_url:
            self.env["AIRFLOW_CONN_APP_DB"] = target_url
        if specs_dir:
            self.env["ROWFILL_SPECS_DIR"] = str(specs_dir)
        else:  # the repository's example specs (an installed rowfill reads dags/rowfill/ by default)
            self.env.setdefault("AIRFLOW__ROWFILL__SPECS_FOLDER", str(PROJECT / "include" / "specs"))
        self.env.update(extra_env or {})
        self.env.pop("ROWFILL_DATABASE_URL", None)  # tasks must use the Airflow connection

    # -- lifecycle --------------------------------------------------------------------------
    def airflow(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed: {done.stderr[-3000:] or done.stdout[-3000:]}")
        return done

    def prepare(self, pools_file: Path | None = PROJECT / "include" / "pools.json") -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        _write_private(self.home / "passwords.json", json.dumps({self.user: self.password}))
        self.airflow("db", "migrate")
        if pools_file:
            self.airflow("pools", "import", str(pools_file))

    def start(self, components=COMPONENTS) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in components:
            out = open(logs / f"{name}.out", "ab")
            args = ["airflow", name] + (["--port", str(self.port)] if name == "api-server" else [])
            self.procs[name] = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        self.wait_for_api()

    def start_workers(self, names: list[str], concurrency: int = 2) -> None:
        """Celery workers as separate processes; each records its name on the chunks it runs."""
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in names:
            out = open(logs / f"worker-{name}.out", "ab")
            env = {**self.env, "ROWFILL_WORKER_NAME": name}
            self.procs[f"worker-{name}"] = subprocess.Popen(
                ["airflow", "celery", "worker", "--concurrency", str(concurrency), "--celery-hostname", f"{name}@%h",
                 "--without-mingle", "--without-gossip"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, component: str) -> None:
        """SIGKILL a component's whole process group: a machine dying, as far as Airflow can tell."""
        import psutil

        proc = self.procs.pop(component)
        # Task processes may run in sessions of their own: kill every descendant, then the group.
        victims = psutil.Process(proc.pid).children(recursive=True)
        _kill_group(proc.pid, signal.SIGKILL)
        for child in victims:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every component and everything it started (task processes may sit in sessions of their own)."""
        import psutil

        descendants = []
        for proc in self.procs.values():
            try:
                descendants += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            _kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_group(proc.pid, signal.SIGKILL)
        for child in descendants:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.procs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- REST API ---------------------------------------------------------------------------
    def wait_for_api(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited with {proc.returncode}; see {self.home}/logs/{name}.out")
            try:
                with urllib.request.urlopen(f"{self.base}/api/v2/monitor/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        raise TimeoutError(f"Airflow API server did not answer on {self.base} within {timeout:.0f} s")

    def token(self) -> str:
        req = urllib.request.Request(f"{self.base}/auth/token", method="POST",
                                     data=json.dumps({"username": self.user, "password": self.password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["access_token"]

    def api(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(f"{self.base}/api/v2{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path} -> {exc.code}: {exc.read().decode()[:2000]}") from exc
        return json.loads(raw) if raw else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.api("GET", f"/dags/{dag_id}/details")  # details need the serialized DAG, as triggering does
            except RuntimeError:
                time.sleep(2)
        errors = self.api("GET", "/importErrors")
        raise TimeoutError(f"DAG {dag_id} did not appear within {timeout:.0f} s; import errors: {errors}")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        rid = urllib.parse.quote(run_id, safe="")
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{rid}/taskInstances?limit=1000")["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600, on_poll=None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if on_poll:
                on_poll(state)
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f} s")

    def clear_failed(self, dag_id: str, run_id: str, task_ids: list) -> list:
        body = {"dry_run": False, "dag_run_id": run_id, "task_ids": task_ids, "only_failed": True,
                "include_downstream": True, "reset_dag_runs": True}
        return self.api("POST", f"/dags/{dag_id}/clearTaskInstances", body)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """A task's log as text (best effort), so a failed end-to-end check can show what the task saw."""
        rid = urllib.parse.quote(run_id, safe="")
        try:
            log = self.api("GET", f"/dags/{dag_id}/dagRuns/{rid}/taskInstances/{task_id}/logs/{try_number}"
                                  f"?full_content=true&map_index={map_index}")
        except RuntimeError as exc:
            return f"(no log for {task_id}: {exc})"
        content = log.get("content") if isinstance(log, dict) else log
        if isinstance(content, list):
            return "\n".join(str(line.get("event", line)) if isinstance(line, dict) else str(line) for line in content)
        return str(content)

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1):
        rid = urllib.parse.quote(run_id, safe="")
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{rid}/taskInstances/{task_id}/xcomEntries/return_value?map_index={map_index}")
        return entry["value"]


def _write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by this user only (0600), also when it already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
    os.chmod(path, 0o600)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

