"""The privileges rowfill's runtime role needs, as the GRANT statements ``rowfill db grants ROLE`` prints.

rowfill runs no DDL while it works (``rowfill.store.schema``), so the role that runs backfills
needs no CREATE on the database and owns nothing; an administrator migrates the schema once
(``rowfill db migrate``) and grants this. Each privilege and why (PostgreSQL docs, 5.8
"Privileges", and the GRANT reference page):

- CONNECT on the database: to log in at all (PUBLIC has it by default).
- TEMPORARY on the database: the temporary views of the spec checks (``rowfill.engine.schema_check``)
  and of lock-first batches (``rowfill.engine.lockfirst``) live in the session's own temporary schema
  and vanish with it. PUBLIC has it by default; a database that revoked it needs the grant.
- USAGE on schema ``rowfill``: to name its tables. SELECT on ``rowfill.alembic_version``: the
  read-only version check each plan makes. SELECT, INSERT, UPDATE, DELETE on rowfill's other tables:
  checkpoints, chunk claims and leases, rate samples, wait samples (``rowfill.wait_samples``: seconds
  waited by reason, written by every chunk, pruned by it), skipped keys and live controls are rows that
  rowfill writes, and reset/rollback delete. Foreign keys between them are checked as their owner,
  so no REFERENCES is needed.
  The undo log is one of these tables (``rowfill.undo_rows``), so ``undo: true`` needs nothing more;
  its ``seq`` is an identity column, whose sequence is used with the table's privileges (PostgreSQL
  docs, CREATE TABLE "GENERATED ... AS IDENTITY").
- SELECT, INSERT on ``rowfill.audit``: who paused, resumed, cancelled or changed knobs, appended by
  the command and the console; never UPDATE or DELETE (the table's triggers refuse them anyway).
- On each target table: USAGE on its schema, SELECT (keys, ``where``, verify) and UPDATE (the
  write; row locks ``FOR NO KEY UPDATE`` need UPDATE too, PostgreSQL docs, SELECT "The Locking Clause").
- Optionally ``pg_monitor``: gates that read other sessions' lag or transaction age
  (``rowfill.engine.probes``) see NULL without it.
"""

from __future__ import annotations

from rowfill.sql.sqlnames import TableName, quote
from rowfill.store.catalog import SCHEMA, own

# rowfill's tables the runtime role reads and writes (created by migrations 0001, 0002 and 0004)
TABLES = ("backfills", "chunks", "samples", "wait_samples", "leases", "skipped_rows", "controls", "undo_rows")
READ_ONLY = ("alembic_version",)  # read by the version check; written only by `rowfill db migrate`
APPEND_ONLY = ("audit",)  # the actions' trail: read and appended to, never changed (triggers refuse it)


def grant_statements(role: str, database: str, tables: list[TableName] | tuple[TableName, ...] = ()) -> list[str]:
    """The GRANT statements (with ``--`` comments) that let ``role`` run every rowfill command.

    :param role: the runtime role's name (quoted here). :param database: the target database's name.
    :param tables: the target tables, schema-qualified (``public.users``); an unqualified one is
        granted in schema ``public``.
    :returns: SQL lines to apply as the owner of rowfill's schema (or a superuser), in order.
    """
    r, d = quote(role), quote(database)
    lines = [
        f"-- rowfill's runtime role {role}: no CREATE on the database, owns nothing. `rowfill db migrate` runs as the owner.",
        f"GRANT CONNECT, TEMPORARY ON DATABASE {d} TO {r};  -- log in; temporary views of spec checks (PUBLIC has both by default)",
        f"GRANT USAGE ON SCHEMA {SCHEMA} TO {r};",
        f"GRANT SELECT ON {', '.join(own(t) for t in READ_ONLY)} TO {r};  -- the version check of each plan",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(own(t) for t in TABLES)} TO {r};  -- checkpoints, samples, controls, undo log",
        f"GRANT SELECT, INSERT ON {', '.join(own(t) for t in APPEND_ONLY)} TO {r};  -- the audit trail of pause, resume, knobs",
    ]
    schemas = []
    for table in tables:
        schema = table.schema or "public"
        if schema not in schemas:
            schemas.append(schema)
            lines.append(f"GRANT USAGE ON SCHEMA {quote(schema)} TO {r};")
        lines.append(f"GRANT SELECT, UPDATE ON {quote(schema)}.{quote(table.name)} TO {r};  -- read keys and where, write the batches")
    if not tables:
        lines.append(f"-- and per target table (rowfill db grants {role} --table SCHEMA.TABLE ...): "
                     f"GRANT USAGE ON SCHEMA <schema> TO {r}; GRANT SELECT, UPDATE ON <schema>.<table> TO {r};")
    lines.append(f"-- optional, for gates that read other sessions (replica_lag, long_transactions): GRANT pg_monitor TO {r};")
    return lines
