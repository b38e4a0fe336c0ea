"""rowfill's schema lifecycle (issue 12): installs made before migrations are adopted with their
checkpoints and undo logs intact, a half-done backfill resumes and writes every row exactly once,
`rowfill db migrate --sql` gives a DBA the same schema, `rowfill db check` says when the schema is
behind, a plan on a schema that is missing or behind is refused with an error naming `rowfill db
migrate` and the spec, and a migration gives way to running work instead of blocking it."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import text

from helpers import create_database, make_users, spec_for
from legacy_schema import create_legacy_schema, create_legacy_undo_table
from rowfill.engine.chunk_task import run_chunk
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.rollback import finish_rollback, plan_rollback, rollback_target
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.undo import RestoreWriter, rollback_spec
from rowfill.ops.cli import main
from rowfill.store import schema
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.localpg import free_port
from rowfill_dev.schema import migrate_database

ROWS = 3_000


@pytest.fixture
def legacy(pg_cluster, request):
    """A database with no migration applied: the test creates rowfill's schema the old way."""
    engine = engine_from_url(create_database(pg_cluster, "legacy_" + request.node.name[-40:].lower().replace("[", "_")
                                             .replace("]", ""), migrated=False))
    yield engine
    engine.dispose()


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def points_spec(tmp_path, **fields):
    # points + 7 is not idempotent: a row written twice would hold 14
    return spec_for(tmp_path, name="add_points", where=None, set={"points": "points + 7"}, chunk_rows=1_000,
                    batch_rows=100, **fields)


def half_done_the_old_way(engine, spec) -> None:
    """What a rowfill before migrations left of a backfill stopped half way: chunk 1 done, chunk 2 at
    key 1500 (its rows written in the same transactions as the cursor), chunk 3 not started."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rowfill.backfills (name, fingerprint, spec, planned_at) "
                          "VALUES (:n, :f, CAST(:s AS jsonb), now())"),
                     {"n": spec.name, "f": spec.fingerprint, "s": json.dumps(spec.meaning)})
        conn.execute(text("INSERT INTO rowfill.chunks (backfill, chunk_no, lo, hi, est_rows, cursor, rows_seen, "
                          "rows_written, batches, status, attempts) VALUES "
                          "(:n, 1, 'null', '1000', 1000, '1000', 1000, 1000, 10, 'done', 1), "
                          "(:n, 2, '1000', '2000', 1000, '1500', 500, 500, 5, 'failed', 1), "
                          "(:n, 3, '2000', '3000', 1000, NULL, 0, 0, 0, 'pending', 0)"), {"n": spec.name})
        conn.execute(text("UPDATE users SET points = points + 7 WHERE id <= 1500"))


@pytest.mark.parametrize("release", ["first release", "last release before migrations"])
def test_an_old_install_is_adopted_and_the_half_done_backfill_resumes_writing_each_row_once(legacy, tmp_path, release):
    make_users(legacy, ROWS)
    create_legacy_schema(legacy, first_release=release == "first release")
    spec = points_spec(tmp_path)
    half_done_the_old_way(legacy, spec)

    with pytest.raises(schema.SchemaNotReady, match=r"rowfill db migrate.*add_points\.yaml|add_points\.yaml.*rowfill db migrate"):
        plan_backfill(legacy, spec)  # refused before anything is written
    assert scalar(legacy, "SELECT count(*) FROM users WHERE points = 7") == 1_500

    migrate_database(legacy)
    store = CheckpointStore(legacy)
    before = {c.chunk_no: (c.status, c.cursor, c.rows_written) for c in store.chunks(spec.name)}
    assert before == {1: ("done", 1000, 1000), 2: ("failed", 1500, 500), 3: ("pending", None, 0)}  # checkpoints intact

    chunks = plan_backfill(legacy, spec)
    assert [c.chunk_no for c in chunks] == [2, 3]
    assert all(run_chunk(legacy, spec, c.chunk_no).kind == "done" for c in chunks)
    assert scalar(legacy, "SELECT count(*) FROM users WHERE points = 7") == ROWS  # every row exactly once
    assert sum(c.rows_written for c in store.chunks(spec.name)) == ROWS


def test_an_undo_log_written_before_migrations_is_moved_and_rolls_back_exactly(legacy, tmp_path):
    make_users(legacy, ROWS)
    with legacy.begin() as conn:  # some rows had values already: the rollback must put those back, not NULL
        conn.execute(text("UPDATE users SET full_name = 'kept ' || id, points = id % 13 WHERE id % 5 = 0"))
    original = scalar(legacy, "SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u")
    create_legacy_schema(legacy)
    spec = spec_for(tmp_path, undo=True, where=None, set={"full_name": "first_name || ' ' || last_name",
                                                          "points": "points + 7"})
    undo = create_legacy_undo_table(legacy, spec.name, "public.users", "id bigint NOT NULL",
                                    {"full_name": "text", "points": "integer"})
    with legacy.begin() as conn:  # what the old backfill wrote, with its undo records, all done
        conn.execute(text(f"INSERT INTO {undo} SELECT id, full_name, points, first_name || ' ' || last_name, points + 7 "
                          "FROM users"))
        conn.execute(text("UPDATE users SET full_name = first_name || ' ' || last_name, points = points + 7"))
        conn.execute(text("INSERT INTO rowfill.backfills (name, fingerprint, spec) VALUES (:n, :f, CAST(:s AS jsonb))"),
                     {"n": spec.name, "f": spec.fingerprint, "s": json.dumps(spec.meaning)})
        conn.execute(text("INSERT INTO rowfill.chunks (backfill, chunk_no, lo, hi, est_rows, cursor, status) "
                          "VALUES (:n, 1, 'null', '3000', 3000, '3000', 'done')"), {"n": spec.name})

    migrate_database(legacy)
    assert scalar(legacy, f"SELECT to_regclass('{undo}')") is None  # moved, and the old table dropped
    assert scalar(legacy, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = :n", n=spec.name) == ROWS

    rb = rollback_spec(spec)
    for chunk in plan_rollback(legacy, spec):
        ChunkRunner(legacy, rb, writer=RestoreWriter(rb, rollback_target(legacy, spec))).run(chunk.chunk_no)
    result = finish_rollback(legacy, spec)
    assert (result.restored, result.left_alone) == (ROWS, 0)
    assert scalar(legacy, "SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u") == original


def test_the_printed_sql_builds_the_same_schema_and_check_reports_the_version(legacy, db_url, tmp_path, capsys):
    url = legacy.url.render_as_string(hide_password=False)
    create_legacy_schema(legacy)  # an old install with an undo log, adopted by the DBA's script too
    undo = create_legacy_undo_table(legacy, "old_undo", "public.t", "id bigint NOT NULL", {"v": "numeric"})
    with legacy.begin() as conn:
        conn.execute(text(f"INSERT INTO {undo} VALUES (1, 1.50, 2), (2, NULL, 3)"))
    assert main(["db", "check", "--db", url]) == 1
    assert "not migrated" in capsys.readouterr().out
    assert main(["db", "migrate", "--sql"]) == 0
    script = capsys.readouterr().out
    assert "CREATE TABLE IF NOT EXISTS rowfill.chunks" in script and "lock_timeout" in script
    raw = legacy.raw_connection()  # as a DBA would apply it with psql: the text as printed, no parameters
    try:
        raw.driver_connection.execute(script)
        raw.driver_connection.commit()
    finally:
        raw.close()
    assert scalar(legacy, "SELECT jsonb_agg(old ORDER BY seq) FROM rowfill.undo_rows WHERE backfill = 'old_undo'") \
        == [{"v": "1.50"}, {"v": None}]
    assert main(["db", "check", "--db", url]) == 0
    assert f"at {schema.required()}, as this rowfill requires" in capsys.readouterr().out
    columns = "SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' ORDER BY table_name, column_name) " \
              "FROM information_schema.columns WHERE table_schema = 'rowfill'"
    migrated = engine_from_url(db_url)  # the same schema as `rowfill db migrate` builds
    assert scalar(legacy, columns) == scalar(migrated, columns)
    migrated.dispose()

    # a database behind (at revision 0001, without the tables of 0002): the check says so (exit 1), and a
    # plan is refused naming the command and the spec
    with legacy.begin() as conn:
        conn.execute(text("DROP SCHEMA rowfill CASCADE"))
        conn.execute(text("CREATE SCHEMA rowfill"))
        command.upgrade(schema._config(connection=conn), "0001")
    assert main(["db", "check", "--db", url]) == 1
    assert "behind" in capsys.readouterr().out
    make_users(legacy, 100)
    spec = points_spec(tmp_path)
    with pytest.raises(schema.SchemaNotReady) as refused:
        plan_backfill(legacy, spec)
    assert "rowfill db migrate" in str(refused.value) and spec.source in str(refused.value)
    assert main(["db", "migrate", "--db", url]) == 0
    assert "migrated from 0001 to" in capsys.readouterr().out
    assert len(plan_backfill(legacy, spec)) == 1


def test_a_migration_gives_way_to_running_work_and_changes_nothing_until_it_can(legacy):
    create_legacy_schema(legacy)
    with legacy.begin() as conn:
        conn.execute(text("INSERT INTO rowfill.backfills (name, fingerprint, spec) VALUES ('b', 'x', '{}')"))
        conn.execute(text("INSERT INTO rowfill.chunks (backfill, chunk_no, lo, hi, est_rows) VALUES ('b', 1, 'null', '9', 9)"))
    batch = legacy.connect()  # a running batch: it holds its chunk row locked until it commits
    batch.execute(text("SELECT 1 FROM rowfill.chunks WHERE backfill = 'b' FOR UPDATE"))
    try:
        with pytest.raises(schema.MigrationFailed, match="stayed locked by running work"):
            schema.migrate(legacy, lock_timeout=0.2, attempts=2, retry_wait=0.1)
        with legacy.connect() as conn:
            assert schema.current(conn) is None  # rolled back whole: nothing half-applied
    finally:
        batch.commit()
        batch.close()
    assert schema.migrate(legacy, lock_timeout=0.2, attempts=2, retry_wait=0.1) == (None, schema.required())


def test_migrate_and_check_without_a_database_say_what_to_give_and_an_unreachable_one_is_named(capsys):
    assert main(["db", "migrate"]) == 1
    assert "which database? Give --db URL" in capsys.readouterr().err
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/app"
    assert main(["db", "check", "--db", url]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the target database" in err and "Traceback" not in err


def test_the_wait_samples_migration_goes_up_and_down_keeping_every_checkpoint(engine, tmp_path, capsys):
    from rowfill.store import waits

    make_users(engine, 300)
    spec = points_spec(tmp_path, pause="5ms")
    [chunk] = plan_backfill(engine, spec)
    assert run_chunk(engine, spec, chunk.chunk_no).kind == "done"  # rests of 5 ms between its 3 batches
    assert scalar(engine, "SELECT sum(rest_seconds) FROM rowfill.wait_samples WHERE backfill = :n", n=spec.name) >= 0.01
    url = engine.url.render_as_string(hide_password=False)

    with engine.begin() as conn:  # a rolled-back release: down to 0003
        command.downgrade(schema._config(connection=conn), "0003")
    assert scalar(engine, "SELECT to_regclass('rowfill.wait_samples')") is None
    assert scalar(engine, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'rowfill' "
                          "AND column_name = 'throttle_since'") == 0
    assert scalar(engine, "SELECT status || ' ' || rows_written FROM rowfill.chunks WHERE backfill = :n",
                  n=spec.name) == "done 300"  # the checkpoint is untouched
    assert main(["db", "check", "--db", url]) == 1
    assert "at 0003, behind 0004" in capsys.readouterr().out
    assert main(["db", "migrate", "--sql"]) == 0
    script = capsys.readouterr().out
    assert "CREATE TABLE IF NOT EXISTS rowfill.wait_samples" in script and "throttle_since" in script

    assert main(["db", "migrate", "--db", url]) == 0
    assert "migrated from 0003 to 0004" in capsys.readouterr().out
    tally = waits.WaitTally()
    tally.add(waits.WaitReason.GATE, 1.5)
    waits.record(engine, spec.name, chunk.chunk_no, tally)
    waits.record(engine, spec.name, chunk.chunk_no, tally)  # the same bucket (or the next): summed, never a conflict
    assert scalar(engine, "SELECT sum(gate_seconds) FROM rowfill.wait_samples WHERE backfill = :n", n=spec.name) == 3.0
    with engine.begin() as conn:  # and the samples go with their chunks
        conn.execute(text("DELETE FROM rowfill.backfills WHERE name = :n"), {"n": spec.name})
    assert scalar(engine, "SELECT count(*) FROM rowfill.wait_samples") == 0
