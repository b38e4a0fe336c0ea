"""Honest outcomes (issue 9, kind 4): `rowfill run` ends with the same verify as the DAG and exits
non-zero when it fails, printing the rows that still match; verify's count of rows still matching
`where` is kept on the backfill's row, and the summary, `rowfill status` and the run's last line
show it beside the rows written, so "written" never passes for "done"."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from helpers import create_database, make_users, module, spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.report import backfill_summary
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.verify import VerificationFailed, verify_backfill
from rowfill.ops.cli import main
from legacy_schema import create_legacy_schema
from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore
from rowfill_dev.schema import migrate_database


def cli(db_url, spec, *args) -> int:
    return main(["--db", db_url, "--specs-dir", str(spec.source.rsplit("/", 1)[0]), *args])


def rows(engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def people(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (id int PRIMARY KEY, first_name text, last_name text, full_name text)"))
        conn.execute(text("INSERT INTO people VALUES (1, 'Ada', 'Byron', NULL), (2, 'Plato', NULL, NULL), "
                          "(3, 'Alan', 'Kay', NULL), (4, 'Zeno', NULL, NULL), (5, 'Grace', 'Hopper', NULL)"))


def test_rowfill_run_verifies_and_exits_non_zero_naming_the_rows_that_still_match(engine, db_url, tmp_path, capsys):
    people(engine)
    spec = spec_for(tmp_path, name="people_full_name", table="public.people", chunk_rows=3, batch_rows=2)
    assert cli(db_url, spec, "run", "people_full_name") == 1
    out, err = capsys.readouterr()
    assert "verify failed" in err and "2 rows" in err and "id 2, 4" in err  # the rows that still match, by key
    last = out.strip().splitlines()[-1]
    assert last.startswith("people_full_name: 5 of ~5 rows walked, 5 written (verify: 2 rows still match `where`)")
    assert last.endswith("verify FAILED (see above)")
    # every row was written once; the two whose new value is NULL still match, as verify says
    assert rows(engine, "SELECT id, full_name FROM people ORDER BY id") == [
        (1, "Ada Byron"), (2, None), (3, "Alan Kay"), (4, None), (5, "Grace Hopper")]
    chunks = CheckpointStore(engine).chunks(spec.name)
    assert [(c.status, c.rows_written) for c in chunks] == [("done", 3), ("done", 2)]
    summary = backfill_summary(engine, spec.name).to_dict()
    assert summary["rows_still_matching"] == 2 and summary["verified_at"]

    # fixed by hand, the next run has nothing to write and verifies
    with engine.begin() as conn:
        conn.execute(text("UPDATE people SET full_name = first_name WHERE full_name IS NULL"))
    assert cli(db_url, spec, "run", "people_full_name") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "(verify: 0 rows still match `where`)" in last and last.endswith("verified: no row matches `where` any more")
    assert backfill_summary(engine, spec.name).rows_still_matching == 0


def test_a_run_that_verifies_exits_zero_and_shows_both_counts(engine, db_url, tmp_path, capsys):
    make_users(engine, 1_200)
    spec = spec_for(tmp_path, chunk_rows=500, batch_rows=100)
    assert cli(db_url, spec, "run", "users_full_name") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("users_full_name: 1,200 of ~1,200 rows walked, 1,200 written (verify: 0 rows still match "
                           "`where`), 3/3 chunks done")
    assert last.endswith("verified: no row matches `where` any more")
    assert rows(engine, "SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM first_name || ' ' || last_name") == [(0,)]


def test_a_failed_chunk_makes_rowfill_run_exit_non_zero(engine, db_url, tmp_path, capsys):
    make_users(engine, 1_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.id = 700 THEN RAISE EXCEPTION 'no full name for id 700'; END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER boom BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION boom()"))
    spec = spec_for(tmp_path, chunk_rows=500, batch_rows=100)
    assert cli(db_url, spec, "run", "users_full_name") == 1
    out, err = capsys.readouterr()
    assert "no full name for id 700" in err
    assert out.strip().splitlines()[-1].endswith("FAILED: chunk 2/2 (id 501..1000) failed (see above)")
    assert rows(engine, "SELECT count(*), max(id) FROM users WHERE full_name IS NOT NULL") == [(600, 600)]



FULL_NAME = """
def full_name(rows):
    return [{"full_name": None if r["last_name"] is None else r["first_name"] + " " + r["last_name"]} for r in rows]
"""


@pytest.mark.parametrize("mode", ["set", "set with undo", "transform", "transform with undo"])
def test_rows_still_matching_where_are_counted_by_verify_and_shown(engine, db_url, tmp_path, monkeypatch, capsys, mode):
    make_users(engine, 1_000)
    with engine.begin() as conn:  # every 7th user has no last name: the new full name is NULL and still matches
        conn.execute(text("ALTER TABLE users ALTER COLUMN last_name DROP NOT NULL"))
        conn.execute(text("UPDATE users SET last_name = NULL WHERE id % 7 = 0"))
    fields = {"undo": True} if "undo" in mode else {}
    if mode.startswith("transform"):
        name = module(tmp_path, monkeypatch, "outcome_names", FULL_NAME)
        fields.update(set=None, transform=f"{name}:full_name", select=["first_name", "last_name"], returns=["full_name"])
    spec = spec_for(tmp_path, chunk_rows=400, batch_rows=64, **fields)
    for chunk in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(chunk.chunk_no)
    assert backfill_summary(engine, spec.name).rows_still_matching is None  # not verified yet: nothing claimed
    with pytest.raises(VerificationFailed, match="142 rows"):
        verify_backfill(engine, spec)
    chunks = CheckpointStore(engine).chunks(spec.name)
    assert [c.rows_written for c in chunks] == [400, 400, 200]
    assert rows(engine, "SELECT count(*) FROM users WHERE full_name IS NULL") == [(142,)]
    assert rows(engine, "SELECT count(*) FROM users WHERE full_name <> first_name || ' ' || last_name") == [(0,)]
    if spec.undo:  # every written row is in the undo log, the still-matching ones too
        assert rows(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'users_full_name'") == [(1_000,)]

    assert cli(db_url, spec, "status") == 0
    assert "1,000 rows written (verify: 142 rows still match `where`)" in capsys.readouterr().out
    assert cli(db_url, spec, "status", "--json") == 0
    [data] = json.loads(capsys.readouterr().out)
    assert data["rows_still_matching"] == 142 and data["verified_at"]
    assert "(verify: 142 rows still match `where`)" in backfill_summary(engine, spec.name).line()

    # fixed by hand, the next verify finds none and says so everywhere
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET full_name = first_name WHERE full_name IS NULL"))
    assert verify_backfill(engine, spec).remaining == 0
    assert backfill_summary(engine, spec.name).rows_still_matching == 0


def test_sql_mode_shows_what_verify_found(engine, db_url, tmp_path, capsys):
    make_users(engine, 300)
    spec = spec_for(tmp_path, set=None, chunk_rows=300,
                    sql="UPDATE users SET full_name = first_name WHERE id > :lo AND id <= :hi AND full_name IS NULL")
    assert cli(db_url, spec, "run", "users_full_name") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "300 written (verify: 0 rows still match `where`)" in last
    assert last.endswith("verified: no row matches `where` any more")
    assert rows(engine, "SELECT count(*) FROM users WHERE full_name = first_name") == [(300,)]


def test_existing_checkpoint_tables_get_the_outcome_columns(pg_cluster):
    engine = engine_from_url(create_database(pg_cluster, "legacy_outcomes", migrated=False))
    create_legacy_schema(engine, first_release=True)  # the tables as the first release created them
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rowfill.backfills (name, fingerprint, spec) VALUES ('old', 'x', '{}')"))
        conn.execute(text("INSERT INTO rowfill.chunks (backfill, chunk_no, lo, hi, est_rows, rows_written) "
                          "VALUES ('old', 1, '0', '10', 10, 10)"))
    migrate_database(engine)
    [row] = CheckpointStore(engine).chunks("old")
    assert (row.rows_written, row.batch_rows_worked) == (10, None)
    assert CheckpointStore(engine).verified("old") == (None, None)
    assert rows(engine, "SELECT to_regclass('rowfill.skipped_rows') IS NOT NULL") == [(True,)]
    engine.dispose()