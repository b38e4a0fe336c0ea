"""Least privilege (issue 12): a role that owns nothing and may not create anything runs every
rowfill command, with exactly the grants `rowfill db grants ROLE --table ...` prints (the README's
list). rowfill's schema is migrated once by the database's owner; at run time nothing is created.
Without the grants, the error says what to grant, and nothing is written."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from helpers import make_users, spec_for
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.ops.cli import main

ROWS = 3_000


def as_role(db_url: str, role: str) -> str:
    return make_url(db_url).set(username=role).render_as_string(hide_password=False)


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def create_role(engine) -> str:
    """A login role with nothing of its own (one per test database: roles are cluster-wide): PUBLIC's
    defaults only, and no CREATE anywhere. Returns its name."""
    role = "app_" + engine.url.database[:40]
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'))
        conn.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))  # PostgreSQL < 15 grants it to everyone
    return role


def apply_printed_grants(engine, db_url, role: str, capsys, *tables: str) -> list[str]:
    """Run `rowfill db grants` and apply what it prints, as the owner (each statement, comments skipped)."""
    assert main(["db", "grants", role, "--db", db_url, *(a for t in tables for a in ("--table", t))]) == 0
    printed = capsys.readouterr().out
    statements = [line.split("--")[0].strip() for line in printed.splitlines() if line.startswith("GRANT")]
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    return statements


def cli(url: str, spec, *args) -> int:
    return main(["--db", url, "--specs-dir", str(spec.source.rsplit("/", 1)[0]), *args])


def test_a_role_with_only_the_printed_grants_runs_every_command_and_creates_nothing(engine, db_url, tmp_path, capsys):
    make_users(engine, ROWS)
    role = create_role(engine)
    printed = apply_printed_grants(engine, db_url, role, capsys, "public.users")
    assert not any("CREATE" in g.split(" ON ")[0] for g in printed)  # never CREATE, on anything
    url = as_role(db_url, role)
    role_engine = engine_from_url(url)
    assert scalar(role_engine, "SELECT has_database_privilege(current_database(), 'CREATE')") is False
    spec = spec_for(tmp_path, undo=True, chunk_rows=1_000, batch_rows=100,
                    set={"full_name": "first_name || ' ' || last_name", "points": "points + 7"})
    before = scalar(engine, "SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u")

    # dry run, then a plan and one chunk through the engine, as the Airflow tasks run them
    assert cli(url, spec, "plan", spec.name) == 0
    assert "dry run: nothing was changed" in capsys.readouterr().out
    chunks = plan_backfill(role_engine, spec)
    assert len(chunks) == 3
    assert run_chunk(role_engine, spec, chunks[0].chunk_no).kind == "done"
    assert scalar(engine, "SELECT count(*) FROM users WHERE points = 7") == 1_000

    # pause, status, resume, then the rest with `rowfill run` (plan, chunks, verify)
    assert cli(url, spec, "pause", spec.name, "--reason", "least privilege") == 0
    assert cli(url, spec, "status", spec.name) == 0
    assert "paused" in capsys.readouterr().out
    assert cli(url, spec, "resume", spec.name) == 0
    assert cli(url, spec, "run", spec.name) == 0
    assert "verified: no row matches `where` any more" in capsys.readouterr().out
    assert scalar(engine, "SELECT count(*) FROM users WHERE points = 7 AND full_name IS NOT NULL") == ROWS

    # and the rollback restores every row exactly
    assert cli(url, spec, "rollback", spec.name, "--yes") == 0
    assert f"{ROWS:,} rows restored" in capsys.readouterr().out
    assert scalar(engine, "SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u") == before

    role_engine.dispose()  # temporary views of the spec checks go with the sessions
    owned = scalar(engine, "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) "
                           "+ (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid AND nspname NOT LIKE 'pg_%temp%') "
                           "FROM pg_roles r WHERE rolname = :r", r=role)
    assert owned == 0


@pytest.mark.parametrize("missing", ["rowfill's tables", "the target table"])
def test_without_the_grants_the_error_says_what_to_grant_and_nothing_is_written(engine, db_url, tmp_path, capsys, missing):
    make_users(engine, 500)
    role = create_role(engine)
    if missing == "the target table":  # rowfill's grants, none on public.users
        apply_printed_grants(engine, db_url, role, capsys)
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100)
    assert cli(as_role(db_url, role), spec, "run", spec.name) == 1
    err = capsys.readouterr().err
    assert f"rowfill db grants {role}" in err and "Traceback" not in err
    if missing == "the target table":  # refused at planning, with the GRANT to apply
        assert "lacks SELECT and UPDATE on public.users" in err
        assert f"rowfill db grants {role} --table public.users" in err
    assert scalar(engine, "SELECT count(*) FROM users WHERE full_name IS NOT NULL") == 0
    assert scalar(engine, "SELECT count(*) FROM rowfill.backfills") == 0


def test_a_role_that_may_not_append_to_the_audit_trail_still_pauses_and_is_told_what_to_grant(engine, db_url, tmp_path,
                                                                                               capsys):
    make_users(engine, 100)
    role = create_role(engine)
    apply_printed_grants(engine, db_url, role, capsys, "public.users")
    with engine.begin() as conn:
        conn.execute(text(f'REVOKE INSERT ON rowfill.audit FROM "{role}"'))
    spec = spec_for(tmp_path, undo=False)
    url = as_role(db_url, role)
    assert cli(url, spec, "pause", spec.name, "--reason", "no audit grant") == 0  # the action is what matters
    assert "GRANT SELECT, INSERT ON rowfill.audit" in capsys.readouterr().err
    assert scalar(engine, "SELECT state FROM rowfill.controls WHERE backfill = :b", b=spec.name) == "paused"
    assert scalar(engine, "SELECT count(*) FROM rowfill.audit") == 0


def test_the_role_with_the_printed_grants_records_and_prunes_wait_samples(engine, db_url, tmp_path, capsys):
    from datetime import UTC, datetime

    from rowfill.store import waits

    make_users(engine, 300)
    role = create_role(engine)
    printed = apply_printed_grants(engine, db_url, role, capsys, "public.users")
    assert any("rowfill.wait_samples" in g and "INSERT, UPDATE, DELETE" in g for g in printed)
    role_engine = engine_from_url(as_role(db_url, role))
    spec = spec_for(tmp_path, chunk_rows=1_000, batch_rows=100, pause="5ms",
                    window={"start": "01:00", "end": "05:00", "timezone": "UTC"})
    [chunk] = plan_backfill(role_engine, spec)
    assert run_chunk(role_engine, spec, chunk.chunk_no, clock=lambda: datetime(2026, 1, 10, 0, 0, tzinfo=UTC)).kind == "defer"
    assert run_chunk(role_engine, spec, chunk.chunk_no, clock=lambda: datetime(2026, 1, 10, 2, 0, tzinfo=UTC)).kind == "done"
    with role_engine.connect() as conn:
        row = conn.execute(text("SELECT sum(rest_seconds), sum(window_seconds) FROM rowfill.wait_samples "
                                "WHERE backfill = :n"), {"n": spec.name}).one()
    assert row[0] >= 0.01 and row[1] > 0  # the rests, and the deferral recorded when it ran again
    with engine.begin() as conn:  # a day-old bucket, for the role's pruning to delete
        conn.execute(text("INSERT INTO rowfill.wait_samples (backfill, chunk_no, bucket, rest_seconds) "
                          "VALUES (:n, :c, now() - interval '1 day', 1)"), {"n": spec.name, "c": chunk.chunk_no})
    tally = waits.WaitTally()
    tally.add(waits.WaitReason.REST, 0.5)
    waits.record(role_engine, spec.name, chunk.chunk_no, tally, prune=True)
    assert scalar(engine, "SELECT count(*) FROM rowfill.wait_samples WHERE bucket < now() - interval '1 hour'") == 0
    role_engine.dispose()
