"""The lifecycle of rowfill's own schema in the target database: Alembic migrations, and the
read-only check every plan makes that the schema is the one this rowfill needs.

rowfill runs no DDL while it works: a role that may only read and write its tables (see
``rowfill.store.grants``) runs every backfill. The schema is created and changed by
``rowfill db migrate`` (``migrate`` here), once per release, by a role that may create it; a DBA
who applies DDL by hand gets it from ``rowfill db migrate --sql`` (``migration_sql``).

The migrations ship inside the package (``rowfill/store/migrations``) and run through Alembic's
Python API (Alembic docs, "API Details": ``alembic.command`` with a ``Config`` built in code), so no
``alembic.ini`` is needed. Alembic records the applied revision in ``rowfill.alembic_version``,
inside rowfill's schema, apart from Airflow's own ``alembic_version`` in its metadata database.

A migration that changes a table takes an ACCESS EXCLUSIVE lock on it (PostgreSQL docs, 13.3.1
"Table-Level Locks", ALTER TABLE), which would queue behind running batches and block every other
chunk while it waits. So each attempt waits at most ``LOCK_TIMEOUT`` seconds for a lock, then
rolls back and tries again after ``RETRY_WAIT`` seconds, ``ATTEMPTS`` times in all: live work is
never held up longer than one ``LOCK_TIMEOUT``.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from rowfill.errors import RowfillError
from rowfill.sql.session import milliseconds, set_local
from rowfill.store import grants
from rowfill.store.catalog import SCHEMA, own

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # env.py and versions/, shipped in the wheel
VERSION_TABLE = own("alembic_version")  # Alembic's version table, in rowfill's schema (migrations/env.py)
LOCK_TIMEOUT = 2.0  # seconds one attempt may wait for any lock before it gives way to live work
ATTEMPTS = 10  # attempts before `rowfill db migrate` gives up (each rolled back whole when it times out)
RETRY_WAIT = 3.0  # seconds between attempts: running batches commit and release their locks meanwhile
_LOCK_KEY = 0x726F7766  # "rowf": the advisory lock key of rowfill's schema changes (and, with a name, of planning)
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout (PostgreSQL docs, Appendix A "Error Codes")
_INSUFFICIENT_PRIVILEGE = "42501"

MIGRATE_ADVICE = "rowfill db migrate"

log = logging.getLogger("rowfill.schema")


class SchemaNotReady(RowfillError):
    """rowfill's schema is missing or older than this rowfill needs: nothing was written; migrate first."""


class MissingGrants(RowfillError):
    """The role lacks a privilege on rowfill's schema that every backfill needs: nothing was written; grant it."""


class MigrationFailed(RowfillError):
    """``rowfill db migrate`` could not apply the migrations (locks held too long, or privileges missing)."""


def _config(**attributes) -> Config:
    cfg = Config()  # no alembic.ini: everything Alembic reads is set here
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes.update(attributes)
    return cfg


@lru_cache(maxsize=1)
def required() -> str:
    """The revision this rowfill needs: the head of the migrations it ships (e.g. ``"0002"``).

    :returns: the revision id. Read once per process from the migration files (Alembic's ScriptDirectory).
    :raises RowfillError: no migration files (a broken install: the wheel ships them).
    """
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RowfillError(f"no rowfill migrations under {MIGRATIONS}; the install is incomplete, reinstall rowfill")
    return head


def _known() -> list[str]:
    return [s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()]


# whether the schema exists, whether this role may use it, whether the version table exists and this role
# may read it: one round trip that never raises (to_regnamespace/to_regclass answer NULL for what is missing,
# has_*_privilege by OID; PostgreSQL docs, 9.27 "System Information Functions")
_PROBE = text(f"SELECT n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'USAGE'), false), v.oid IS NOT NULL, "
              f"coalesce(has_table_privilege(v.oid, 'SELECT'), false) "
              f"FROM (SELECT to_regnamespace('{SCHEMA}') AS oid) n LEFT JOIN LATERAL "
              f"(SELECT CASE WHEN has_schema_privilege(n.oid, 'USAGE') THEN to_regclass('{VERSION_TABLE}') END AS oid) v ON true")
_VERSION = text(f"SELECT version_num FROM {VERSION_TABLE} LIMIT 1")


def _probe(conn: Connection) -> bool:
    """Whether the version table is there to read; raises MissingGrants when it is but this role may not read it."""
    exists, usage, has_table, readable = conn.execute(_PROBE).one()
    if exists and not usage:
        raise MissingGrants(_grants_advice(conn, f"USAGE on schema {SCHEMA}"))
    if has_table and not readable:
        raise MissingGrants(_grants_advice(conn, f"SELECT on {VERSION_TABLE}"))
    return has_table


def current(conn: Connection) -> str | None:
    """The revision rowfill's schema is at on this database, or None when it was never migrated.

    Read only, two round trips (one when there is no schema).

    :param conn: any connection to the target database. :returns: the revision id, or None.
    :raises MissingGrants: the schema exists but this role may not use it, or not read the version table.
    """
    return conn.execute(_VERSION).scalar() if _probe(conn) else None


def _grants_advice(conn: Connection, what: str) -> str:
    role = conn.execute(text("SELECT current_user")).scalar()
    return (f"role {role!r} lacks {what}, which every backfill needs. Have the schema's owner apply what "
            f"`rowfill db grants {role}` prints (README, \"rowfill's schema: migrations and grants\"); nothing was written")


@dataclass(frozen=True)
class SchemaVersion:
    """What ``rowfill db check`` reports: the revision found on the database and the one needed."""

    current: str | None  # None: never migrated (no rowfill schema, or one made before migrations)
    required: str

    @property
    def ready(self) -> bool:
        """Whether this rowfill can run on the schema as it is."""
        return self.current == self.required

    @property
    def newer(self) -> bool:
        """The database was migrated by a newer rowfill (a revision this one does not ship)."""
        return self.current is not None and self.current not in _known()

    def line(self) -> str:
        """One line for ``rowfill db check``: current vs. required, and what to do."""
        if self.ready:
            return f"rowfill schema: at {self.current}, as this rowfill requires; nothing to do"
        if self.current is None:
            return f"rowfill schema: not migrated (this rowfill requires {self.required}); run `{MIGRATE_ADVICE}`"
        if self.newer:
            return (f"rowfill schema: at {self.current}, newer than this rowfill knows ({self.required}); "
                    "upgrade rowfill on this machine")
        return f"rowfill schema: at {self.current}, behind {self.required}; run `{MIGRATE_ADVICE}`"


def version(conn: Connection) -> SchemaVersion:
    """The schema's version on ``conn``'s database against the one this rowfill requires (read only)."""
    return SchemaVersion(current(conn), required())


def check(conn: Connection, source: str | None = None, database: str | None = None) -> None:
    """The one read-only check a plan makes (and commands that would otherwise fail obscurely): the
    schema's revision and this role's privileges on rowfill's tables, in two round trips.

    :param conn: a connection to the target database.
    :param source: the spec file the command came from, named in the error (None: no spec).
    :param database: how to name the database in the error (a URL without password), or None.
    :raises SchemaNotReady: the schema is missing, behind, or newer than this rowfill; the message
        names ``rowfill db migrate`` (with the spec, when there is one). Nothing was written.
    :raises MissingGrants: the role may not read and write rowfill's tables (it names what to grant).
    """
    try:
        if _probe(conn):  # the version and the privileges on rowfill's tables in one more round trip
            revision, _role, usage, missing = conn.execute(_VERSION_AND_GRANTS, _GRANT_PARAMS).one()
        else:
            revision, _role, usage, missing = None, None, True, {}
    except MissingGrants as exc:
        raise MissingGrants(_where(source, database) + str(exc)) from None
    found = SchemaVersion(revision, required())
    if found.ready:
        if usage and not missing:
            return
        what = f"USAGE on schema {SCHEMA}" if not usage else "; ".join(
            f"{', '.join(p)} on {own(t)}" for t, p in sorted(missing.items()))
        raise MissingGrants(_where(source, database) + _grants_advice(conn, what))
    name = f" (spec {source})" if source else ""
    if found.newer:
        raise SchemaNotReady(_where(source, database) + f"rowfill's schema is at revision {found.current}, newer than "
                             f"this rowfill ({found.required}) knows; upgrade rowfill where this runs")
    state = "does not exist yet" if found.current is None else f"is at revision {found.current}, behind {found.required}"
    raise SchemaNotReady(
        _where(source, database) + f"rowfill's schema {state}. rowfill changes no tables while it works: apply its "
        f"migrations first with `{MIGRATE_ADVICE}`{name} as a role that may create them (or have a DBA apply the "
        f"output of `{MIGRATE_ADVICE} --sql`); nothing was written")


# The version, and per table of rowfill's schema the privileges this role lacks, in one round trip
# (has_table_privilege answers "any of" for a list, so each privilege is asked on its own; PostgreSQL docs,
# 9.27 "Access Privilege Inquiry Functions").
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
_VERSION_AND_GRANTS = text(
    f"SELECT (SELECT version_num FROM {VERSION_TABLE} LIMIT 1), current_user, has_schema_privilege(:s, 'USAGE'), "
    "(SELECT coalesce(jsonb_object_agg(t, m), '{}') FROM (SELECT t, array_agg(p ORDER BY p) m "
    " FROM unnest(CAST(:tables AS text[])) t, unnest(CAST(:privileges AS text[])) p "
    " WHERE NOT coalesce(has_table_privilege(to_regclass(:s || '.' || t), p), true) GROUP BY t) x)")
_GRANT_PARAMS = {"s": SCHEMA, "tables": list(grants.TABLES), "privileges": list(_PRIVILEGES)}


def _where(source: str | None, database: str | None) -> str:
    return "".join(f"{p}: " for p in (source, database) if p)


def migrate(engine: Engine, *, lock_timeout: float = LOCK_TIMEOUT, attempts: int = ATTEMPTS,
            retry_wait: float = RETRY_WAIT) -> tuple[str | None, str]:
    """Apply every migration not applied yet, in one transaction per attempt.

    Each attempt takes rowfill's advisory lock (two migrations at once take turns) and waits at
    most ``lock_timeout`` for any lock; one that times out rolls back whole (PostgreSQL's DDL is
    transactional) and is tried again after ``retry_wait``.

    :param engine: the target database, as a role that may create rowfill's schema or owns it.
    :param lock_timeout: seconds (float) any one lock may be waited for per attempt.
    :param attempts: attempts in all. :param retry_wait: seconds (float) between attempts.
    :returns: (the revision before, the revision after; None before = never migrated).
    :raises MigrationFailed: every attempt timed out on a lock, or the role lacks a privilege
        (the message says which); nothing was changed.
    """
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                set_local(conn, lock_timeout=lock_timeout)
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
                before = current(conn)
                if before == required():
                    return before, before
                if conn.execute(text("SELECT to_regnamespace(:s) IS NULL"), {"s": SCHEMA}).scalar():
                    conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))  # only when missing: IF NOT EXISTS still needs CREATE
                command.upgrade(_config(connection=conn), "head")
                return before, required()
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code == _INSUFFICIENT_PRIVILEGE:
                raise MigrationFailed(
                    f"{_db(engine)}: this role may not change rowfill's schema ({str(exc.orig).splitlines()[0]}). Run "
                    f"`{MIGRATE_ADVICE}` as the schema's owner or a role with CREATE on the database, or have a DBA "
                    f"apply `{MIGRATE_ADVICE} --sql`; nothing was changed") from None
            if code != _LOCK_NOT_AVAILABLE:
                raise
            log.info("migrate: attempt %d of %d waited %s for a lock held by running work; rolled back, "
                     "trying again in %.0f s", attempt, attempts, milliseconds(lock_timeout), retry_wait)
            if attempt < attempts:
                time.sleep(retry_wait)
    raise MigrationFailed(f"{_db(engine)}: rowfill's tables stayed locked by running work through {attempts} attempts "
                          f"of {lock_timeout:g} s each; nothing was changed. Run `{MIGRATE_ADVICE}` again when fewer "
                          "chunks run (pause them with `rowfill pause NAME`)")


def _db(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def migration_sql(*, since: str | None = None, lock_timeout: float = LOCK_TIMEOUT) -> str:
    """The DDL of the migrations, as SQL text a DBA can review and apply with psql (Alembic's offline mode).

    :param since: the revision the database is at (None: from an empty or pre-migration database).
    :param lock_timeout: seconds (float), set at the top of the script's transaction.
    :returns: the SQL script, one transaction, ending with the version table's update.
    """
    out = io.StringIO()
    cfg = _config(lock_timeout_ms=int(lock_timeout * 1000))
    cfg.output_buffer = out
    command.upgrade(cfg, f"{since}:head" if since else "head", sql=True)
    return out.getvalue()
