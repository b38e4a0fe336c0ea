"""A throwaway local PostgreSQL cluster for the demo, the tests and the benchmark.

Nothing here is used by a real deployment; it exists so ``make demo`` and ``make test`` work on
a fresh machine without touching any database the user already runs. PostgreSQL refuses to run
as root, so when we are root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def _bindir() -> Path:
    for candidate in [os.environ.get("ROWFILL_PG_BINDIR"), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql or set ROWFILL_PG_BINDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    def __init__(self, datadir: str | os.PathLike, port: int | None = None, settings: dict[str, str] | None = None):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.settings = {"fsync": "off", "full_page_writes": "off", "max_connections": "200", **(settings or {})}
        self.bindir = _bindir()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, **kw)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return done

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self._as:
            _let_postgres_through(self.datadir)
            shutil.chown(self.datadir, "postgres", "postgres")
            os.chmod(self.datadir, 0o700)
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C")

    def start(self, timeout: float = 30) -> "LocalPostgres":
        self.init()
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.datadir}"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.datadir / "server.log"),
                  "-o", " ".join(opts), "-w", "-t", str(int(timeout)), "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
                           capture_output=True, text=True)

    def start_replica(self, datadir: str | os.PathLike, settings: dict[str, str] | None = None,
                      timeout: float = 60) -> "LocalPostgres":
        """A streaming replica of this (running) cluster: ``pg_basebackup -R`` into ``datadir``, then start it.

        Needs nothing beyond initdb's defaults on PostgreSQL 10+: ``wal_level=replica``,
        ``max_wal_senders=10`` and ``trust`` replication entries for 127.0.0.1 in pg_hba.conf.
        ``wal_receiver_status_interval=1s`` makes the primary's ``pg_stat_replication`` lag current
        within a second, instead of ten.
        """
        replica_dir = Path(datadir).resolve()
        replica_dir.mkdir(parents=True, exist_ok=True)
        if self._as:
            _let_postgres_through(replica_dir)
            shutil.chown(replica_dir, "postgres", "postgres")
        os.chmod(replica_dir, 0o700)
        self._run(str(self.bindir / "pg_basebackup"), "-D", str(replica_dir), "-R", "-X", "stream", "-c", "fast",
                  "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", timeout=timeout)
        for leftover in ("postmaster.pid", "server.log"):  # copied from the primary's data directory
            (replica_dir / leftover).unlink(missing_ok=True)
        replica = LocalPostgres(replica_dir, settings={"wal_receiver_status_interval": "1s", "hot_standby": "on",
                                                       **self.settings, **(settings or {})})
        return replica.start(timeout)

    def running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on port {self.port} did not come up")
            time.sleep(0.1)


def _let_postgres_through(datadir: Path) -> None:
    """The server runs as ``postgres``; give others search (x) permission on our parent folders."""
    for parent in datadir.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    except OSError:
        return False
    return "c.utf8" in out or "c.utf-8" in out


def main(argv: list[str] | None = None) -> int:
    """``python -m rowfill_dev.localpg start|stop DIR [PORT]`` for the Makefile's demo."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("start", "stop"):
        print("usage: python -m rowfill_dev.localpg start|stop DATADIR [PORT]", file=sys.stderr)
        return 2
    port = int(args[2]) if len(args) > 2 else None
    pg = LocalPostgres(args[1], port=port)
    if args[0] == "start":
        pg.start()
        print(pg.url)
    else:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
