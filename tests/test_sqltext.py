"""User SQL against a real PostgreSQL: it reaches the database as written, and it never escapes the batch.

Kind 7: colons inside string literals (JSON, times, regexes), dollar quotes, quoted identifiers,
comments and ``::`` casts are never binds, in every field that holds SQL (``set``, ``where``,
``sql``, ``select``, ``joins``, gate and latency probes) and in every statement built from them
(batches, dry run, verify, undo, rollback).

Kind 11: however a field is written (trailing comments, block comments, unbalanced parentheses, a
top-level OR, a top-level comma), each batch touches only its own key range: triggers count the
rows every UPDATE statement touched and how often each row was written, and the tests assert
both, together with the final values.
"""

from __future__ import annotations

import importlib
import sys

import pytest
from sqlalchemy import text

from helpers import spec_for
from rowfill.engine.dryrun import dry_run
from rowfill.engine.plan import plan_backfill
from rowfill.engine.probes import GateKeeper, LatencyProbe
from rowfill.engine.rollback import finish_rollback, plan_rollback
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.undo import RestoreWriter, rollback_spec
from rowfill.engine.verify import verify_backfill
from rowfill.errors import ChunkFailed, SpecError, SpecErrors
from rowfill.spec.gates import parse_gates, parse_latency
from rowfill.store.checkpoint import CheckpointStore

N = 1_000
BATCH = 100


def scalar(engine, sql: str):
    """The test's own checks hold JSON with colons too: sent to psycopg as written, not through text()."""
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql.replace("%", "%%"), {}).scalar()


def execute(engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(sql.replace("%", "%%"), {})


def run_all(engine, spec):
    return [ChunkRunner(engine, spec).run(c.chunk_no) for c in plan_backfill(engine, spec)]


def make_accounts(engine, n: int = N) -> None:
    """``accounts`` with a column whose quoted name holds a colon, and triggers that count writes:
    ``writes`` per row, and one ``batch_log`` row (rows, lowest id, highest id) per UPDATE statement."""
    with engine.begin() as conn:
        conn.execute(text(
            'CREATE TABLE accounts (id bigint PRIMARY KEY, settings jsonb NOT NULL DEFAULT \'{}\', note text, '
            'n int NOT NULL DEFAULT 5, "col:x" int NOT NULL DEFAULT 7, points int NOT NULL DEFAULT 0, '
            'writes int NOT NULL DEFAULT 0)'))
        conn.execute(text("INSERT INTO accounts (id) SELECT generate_series(1, :n)"), {"n": n})
        conn.execute(text("CREATE TABLE batch_log (rows bigint, lo bigint, hi bigint)"))
        conn.execute(text(
            "CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER count_writes BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION count_writes()"))
        conn.execute(text(
            "CREATE FUNCTION log_batch() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO batch_log SELECT count(*), min(id), max(id) FROM touched HAVING count(*) > 0; "
            "RETURN NULL; END $$"))
        conn.execute(text("CREATE TRIGGER log_batch AFTER UPDATE ON accounts REFERENCING NEW TABLE AS touched "
                          "FOR EACH STATEMENT EXECUTE FUNCTION log_batch()"))
        conn.execute(text("ANALYZE accounts"))


def accounts_spec(tmp_path, **fields):
    fields.setdefault("where", None)
    return spec_for(tmp_path, name="accounts_job", table="public.accounts", chunk_rows=500, batch_rows=BATCH, **fields)


def assert_every_batch_stayed_in_its_range(engine, written_once: str = "TRUE") -> None:
    """Keys are 1..N, so a batch of BATCH keys spans fewer than BATCH ids; rows matching
    ``written_once`` were written exactly once, the others never."""
    escaped = scalar(engine, f"SELECT count(*) FROM batch_log WHERE rows > {BATCH} OR hi - lo >= {BATCH}")
    assert escaped == 0, "UPDATE statements beyond one batch's keys: " + repr(
        scalar(engine, "SELECT string_agg(rows || ' rows ' || lo || '..' || hi, ', ') FROM batch_log"))
    assert scalar(engine, f"SELECT count(*) FROM accounts WHERE writes <> CASE WHEN {written_once} THEN 1 ELSE 0 END") == 0


def refused(tmp_path, field: str, expected: str, **fields) -> SpecError:
    with pytest.raises(SpecErrors) as caught:
        accounts_spec(tmp_path, **fields)
    matching = [e for e in caught.value.errors if e.field == field]
    assert matching, f"no error for {field!r}: {caught.value}"
    assert expected in matching[0].problem, matching[0].problem
    return matching[0]


# -- kind 7: user SQL reaches PostgreSQL as written -----------------------------------------------

# (id, set, where, SQL true for every row afterwards)
AS_WRITTEN = [
    ("json with :true in a literal",
     {"settings": "settings || '{\"notify\":true,\"digest\":\"weekly 08:00\"}'::jsonb"},
     "NOT settings @> '{\"notify\":true}'::jsonb",
     "settings = '{\"notify\":true,\"digest\":\"weekly 08:00\"}'"),
    ("a time literal and casts", {"note": "to_char('08:30'::time + CAST(n AS int) * interval '1 minute', 'HH24:MI')"},
     "note IS NULL", "note = '08:35'"),
    ("a regex with colons", {"note": r"CASE WHEN '12:34' ~ '^\d{2}:\d{2}$' THEN 'match:' || id ELSE 'no' END"},
     None, "note = 'match:' || id"),
    ("dollar quotes", {"note": "$$a:b$$ || $tag$ :c $tag$"}, "note IS NULL", "note = 'a:b :c '"),
    ("a quoted identifier with a colon", {"note": "\"col:x\"::text || ':' || n"}, None, "note = '7:5'"),
    ("comments naming binds", {"n": "n + 1 -- :lo was here", "points": "/* :hi */ n * 2"}, "n = 5",
     "n = 6 AND points = 10"),
    ("percent signs", {"note": "format('%s%%', id % 7)"}, "coalesce(note, '') NOT LIKE '%!%' ESCAPE '!'",
     "note = (id % 7) || '%'"),
    ("the jsonb ? operator", {"settings": "settings || '{\"seen\":1}'"}, "NOT (settings ? 'seen')", "settings ? 'seen'"),
    ("a semicolon in a literal", {"note": "'a;b'"}, "note IS DISTINCT FROM 'a;b'", "note = 'a;b'"),
    ("an E string with an escaped quote", {"note": "E'it\\'s :x ' || n"}, "note IS NULL", "note = 'it''s :x 5'"),
    ("named arguments := and =>", {"note": "make_interval(days := n)::text || make_interval(hours => n)::text"}, None,
     "note = '5 days05:00:00'"),
    ("array slices", {"note": "(ARRAY[n, 2, 3])[2:3]::text || (ARRAY[1, 2, 3])[:n - 4]::text"}, None,
     "note = '{2,3}{1}'"),
]


@pytest.mark.parametrize("set_, where, check", [a[1:] for a in AS_WRITTEN], ids=[a[0] for a in AS_WRITTEN])
def test_set_and_where_reach_postgresql_as_written(engine, tmp_path, set_, where, check):
    make_accounts(engine)
    spec = accounts_spec(tmp_path, set=set_, where=where)
    results = run_all(engine, spec)
    assert sum(r.rows_written for r in results) == N
    assert scalar(engine, f"SELECT count(*) FROM accounts WHERE NOT ({check})") == 0
    assert_every_batch_stayed_in_its_range(engine)
    assert verify_backfill(engine, spec).remaining in (0, None)  # verify composes `where` the same way
    run_all(engine, spec)  # a rerun changes nothing
    assert scalar(engine, "SELECT max(writes) FROM accounts") == 1


def test_sql_mode_reaches_postgresql_as_written(engine, tmp_path):
    make_accounts(engine)
    sql = ("UPDATE public.accounts SET settings = settings || '{\"batch\":\"x:y\"}'::jsonb, -- :first is not used\n"
           "note = $$id:$$ || id::text || ' <= ' || CAST(:hi AS text) /* :last */\n"
           "WHERE id > :lo AND id <= :hi::bigint AND note IS NULL;")
    spec = accounts_spec(tmp_path, set=None, sql=sql)
    assert sum(r.rows_written for r in run_all(engine, spec)) == N
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE settings->>'batch' IS DISTINCT FROM 'x:y'") == 0
    assert scalar(engine, "SELECT note FROM accounts WHERE id = 150") == "id:150 <= 200"
    assert_every_batch_stayed_in_its_range(engine)


@pytest.mark.parametrize("slice_", ["arr[lo :hi]", "arr[:hi]", "(arr)[lo :hi]", "arr[\"lo\" :hi]"])
def test_a_slice_bound_named_like_a_bind_is_the_column_not_the_batch_key(engine, tmp_path, slice_):
    """``arr[lo :hi]`` slices at the columns lo and hi, as PostgreSQL reads it; binding the batch's
    :hi there would store a different slice for every batch."""
    execute(engine, "CREATE TABLE t (id int PRIMARY KEY, lo int NOT NULL, hi int NOT NULL, arr int[] NOT NULL, part int[])")
    execute(engine, "INSERT INTO t SELECT g, 1, 2, ARRAY[g, g + 1, g + 2], NULL FROM generate_series(1, 300) g")
    spec = spec_for(tmp_path, name="slices", table="public.t", where="part IS NULL", set=None, chunk_rows=300,
                    batch_rows=BATCH, sql=f"UPDATE t SET part = {slice_} WHERE id > :lo AND id <= :hi AND part IS NULL")
    assert sum(r.rows_written for r in run_all(engine, spec)) == 300
    assert scalar(engine, "SELECT count(*) FROM t WHERE part IS DISTINCT FROM ARRAY[id, id + 1]") == 0


def test_select_and_joins_of_a_transform_reach_postgresql_as_written(engine, tmp_path, monkeypatch):
    make_accounts(engine)
    (tmp_path / "colon_rule.py").write_text(
        "def label(rows):\n    return [r['label'] + '|' + r['digest'] + '|' + str(r['span']) for r in rows]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("colon_rule", None)
    importlib.invalidate_caches()
    spec = accounts_spec(
        tmp_path, set=None, transform="colon_rule:label", returns=["note"], where="note IS NULL",
        select={"label": "'k:' || accounts.id::text -- :x in a comment", "digest": "s.j->>'at'", "span": "s.span"},
        joins="CROSS JOIN LATERAL (SELECT '{\"at\":\"08:00\"}'::jsonb AS j, "
              "CAST(:last AS bigint) - CAST(:first AS bigint) AS span) s /* trailing */")
    assert sum(r.rows_written for r in run_all(engine, spec)) == N
    assert scalar(engine, "SELECT note FROM accounts WHERE id = 150") == "k:150|08:00|99"
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE note NOT LIKE 'k:' || id || '|08:00|99'") == 0
    assert_every_batch_stayed_in_its_range(engine)


def test_a_sink_gets_select_values_as_written(engine, tmp_path, monkeypatch):
    make_accounts(engine, 300)
    (tmp_path / "colon_sink.py").write_text("SENT = []\n\ndef send(batch):\n    SENT.extend(batch.rows)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("colon_sink", None)
    importlib.invalidate_caches()
    spec = accounts_spec(tmp_path, set=None, sink="colon_sink:send",
                         select={"at": "'08:00'::time", "flag": "'{\"notify\":true}'::jsonb->'notify'"},
                         where="id % 3 = 0")
    run_all(engine, spec)
    sent = importlib.import_module("colon_sink").SENT
    assert [r["id"] for r in sent] == list(range(3, 301, 3))
    assert {(str(r["at"]), r["flag"]) for r in sent} == {("08:00:00", True)}


def test_undo_and_rollback_with_colons_in_set_and_where(engine, tmp_path):
    make_accounts(engine)
    before = scalar(engine, "SELECT md5(string_agg(a.id || ':' || a.settings::text || ':' || coalesce(a.note, '-'), ',' "
                            "ORDER BY a.id)) FROM accounts a")
    spec = accounts_spec(tmp_path, undo=True, where="NOT settings ? 'at'",
                         set={"settings": "settings || '{\"at\":true}'", "note": "'t:' || id"})
    assert sum(r.rows_written for r in run_all(engine, spec)) == N
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'accounts_job' "
                          "AND CAST(new ->> 'settings' AS jsonb) ->> 'at' = 'true' "
                          "AND new ->> 'note' = 't:' || (key ->> 'id') AND old ->> 'note' IS NULL") == N
    rb = rollback_spec(spec)
    for c in plan_rollback(engine, spec):
        ChunkRunner(engine, rb, writer=RestoreWriter(rb, spec)).run(c.chunk_no)
    assert finish_rollback(engine, spec).restored == N
    assert scalar(engine, "SELECT md5(string_agg(a.id || ':' || a.settings::text || ':' || coalesce(a.note, '-'), ',' "
                          "ORDER BY a.id)) FROM accounts a") == before


def test_dry_run_counts_rows_with_a_colon_in_where(engine, tmp_path):
    make_accounts(engine)
    execute(engine, "UPDATE accounts SET settings = '{\"notify\":true}' WHERE id > 600")
    spec = accounts_spec(tmp_path, where="NOT settings @> '{\"notify\":true}'",
                         set={"settings": "settings || '{\"notify\":true}'"})
    report = dry_run(engine, spec)
    assert (report.rows_to_change, report.rows_to_change_estimated) == (600, False)
    assert report.sample_written == BATCH
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE settings @> '{\"notify\":true}'") == 400  # rolled back


def test_verify_reports_rows_that_still_match_a_where_with_colons(engine, tmp_path):
    make_accounts(engine)
    spec = accounts_spec(tmp_path, where="note IS DISTINCT FROM 'at :noon'", set={"note": "'at :noon'"})
    run_all(engine, spec)
    execute(engine, "UPDATE accounts SET note = 'at :nine' WHERE id IN (7, 8)")
    with pytest.raises(Exception, match=r"2 rows .* still match") as caught:
        verify_backfill(engine, spec)
    assert "id 7, 8" in str(caught.value)


def test_gate_and_latency_probes_reach_postgresql_as_written(engine, tmp_path):
    make_accounts(engine, 50)
    execute(engine, "UPDATE accounts SET settings = '{\"notify\":true}', note = '50%:done' WHERE id <= 12")
    gates = parse_gates({"probe": {"sql": "SELECT count(*) FROM accounts WHERE settings @> '{\"notify\":true}' "
                                          "AND note LIKE '%\\%:%' -- :x", "wait": 100}})
    (reading,) = GateKeeper(engine, gates, "public.accounts").measure()
    assert reading.value == 12
    probe = LatencyProbe(engine, parse_latency({"sql": "SELECT *, '{\"a\":true}'::jsonb FROM accounts WHERE id = 42",
                                                "limit": "1s"}))
    with engine.connect() as conn:
        assert probe.measure_once(conn) > 0


# -- kind 11: user expressions never escape the batch ----------------------------------------------

# (id, set, where, rows written once)
STAYS_IN_BATCH = [
    ("a trailing -- comment in set", {"points": "points + 10 -- loyalty bonus"}, None, "TRUE"),
    ("a trailing -- comment in where", {"points": "points + 10"}, "id % 2 = 0 -- even ids only", "id % 2 = 0"),
    ("a /* */ comment in set", {"points": "points /* bonus */ + 10"}, None, "TRUE"),
    ("a multi-line block comment", {"points": "points + 10 /* a\nlonger\nnote */"}, "id % 3 = 0 /* x */", "id % 3 = 0"),
    ("a comment before a line break", {"points": "points --\n + 10"}, None, "TRUE"),
    ("a top-level OR in where", {"points": "points + 10"}, "id % 5 = 0 OR n = 6", "id % 5 = 0"),
    ("a subquery in set", {"points": "(SELECT count(*) FROM accounts a2 WHERE a2.id <= 10) + points"}, None, "TRUE"),
    ("DEFAULT in set", {"note": "DEFAULT", "points": "10"}, None, "TRUE"),
]


@pytest.mark.parametrize("set_, where, once", [s[1:] for s in STAYS_IN_BATCH], ids=[s[0] for s in STAYS_IN_BATCH])
def test_each_batch_of_a_set_spec_touches_only_its_key_range(engine, tmp_path, set_, where, once):
    make_accounts(engine)
    results = run_all(engine, accounts_spec(tmp_path, set=set_, where=where))
    expected = scalar(engine, f"SELECT count(*) FROM accounts WHERE {once}")
    assert sum(r.rows_written for r in results) == expected
    assert scalar(engine, f"SELECT count(*) FROM accounts WHERE points <> CASE WHEN {once} THEN 10 ELSE 0 END") == 0
    assert_every_batch_stayed_in_its_range(engine, once)


def test_a_trailing_comment_in_sql_mode_stays_in_the_batch(engine, tmp_path):
    make_accounts(engine)
    spec = accounts_spec(tmp_path, set=None,
                         sql="UPDATE accounts SET points = points + 10 WHERE id > :lo AND id <= :hi -- bonus")
    assert sum(r.rows_written for r in run_all(engine, spec)) == N
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE points <> 10") == 0
    assert_every_batch_stayed_in_its_range(engine)


def test_a_transform_with_comments_in_select_and_joins_stays_in_the_batch(engine, tmp_path, monkeypatch):
    make_accounts(engine)
    (tmp_path / "bonus_rule.py").write_text("def bonus(rows):\n    return [r['p'] + r['extra'] for r in rows]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bonus_rule", None)
    importlib.invalidate_caches()
    spec = accounts_spec(tmp_path, set=None, transform="bonus_rule:bonus", returns=["points"],
                         select={"p": "points -- current", "extra": "s.extra /* joined */"},
                         joins="CROSS JOIN LATERAL (SELECT 10 AS extra) s -- one row per account")
    assert sum(r.rows_written for r in run_all(engine, spec)) == N
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE points <> 10") == 0
    assert_every_batch_stayed_in_its_range(engine)


def test_sql_whose_where_lets_other_rows_through_fails_the_batch_and_writes_nothing(engine, tmp_path):
    """The OR is inside parentheses, so validation cannot see it; the rowcount guard does."""
    make_accounts(engine)
    spec = accounts_spec(tmp_path, set=None,
                         sql="UPDATE accounts SET points = points + 10 WHERE id > :lo AND (id <= :hi OR n = 5)")
    chunks = plan_backfill(engine, spec)
    with pytest.raises(ChunkFailed, match=r"field 'sql': the statement updated 1,000 rows of accounts, but this batch "
                                          r"\(id 1\.\.100\) holds only 100 keys"):
        ChunkRunner(engine, spec).run(chunks[0].chunk_no)
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE points <> 0 OR writes <> 0") == 0
    assert CheckpointStore(engine).chunks(spec.name)[0].cursor is None


def test_sql_writing_another_table_is_not_held_to_the_walked_tables_keys(engine, tmp_path):
    """A copy into another table may write more rows than the batch walked (here two per key)."""
    make_accounts(engine, 300)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE copies (id bigint, k int, PRIMARY KEY (id, k))"))
    spec = accounts_spec(tmp_path, set=None, sql="INSERT INTO copies SELECT a.id, k FROM accounts a, "
                                                 "generate_series(1, 2) k WHERE a.id > :lo AND a.id <= :hi")
    assert sum(r.rows_written for r in run_all(engine, spec)) == 600
    assert scalar(engine, "SELECT count(DISTINCT id) FROM copies") == 300


def test_set_text_that_only_the_database_can_refuse_is_refused_at_plan_naming_the_field(engine, tmp_path):
    make_accounts(engine)
    spec = accounts_spec(tmp_path, set={"points": "points + 10 WHERE true"})
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "set"
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE writes <> 0") == 0


# (id, field, text the problem names, spec fields): refused by validation, before any database
REFUSED = [
    ("unbalanced ( in set", "set", "never closes", {"set": {"points": "points + (10"}}),
    ("unbalanced ) in set", "set", "unbalanced ')'", {"set": {"points": "points + 10) WHERE (true"}}),
    ("top-level comma in set", "set", "found a ','", {"set": {"points": "points + 10, n = 6"}}),
    ("unbalanced ( in where", "where", "never closes", {"set": {"points": "1"}, "where": "(points = 0"}),
    ("unbalanced ) in where", "where", "unbalanced ')'", {"set": {"points": "1"}, "where": "points = 0) OR (true"}),
    ("a second statement in where", "where", "without ';' inside", {"set": {"points": "1"}, "where": "true; DELETE FROM t"}),
    ("top-level OR in sql", "sql", "OR at the top level of its WHERE clause",
     {"sql": "UPDATE accounts SET points = points + 10 WHERE id > :lo AND id <= :hi OR points < 0"}),
    ("two statements in sql", "sql", "without ';' inside",
     {"sql": "UPDATE accounts SET points = 1 WHERE id > :lo AND id <= :hi; UPDATE accounts SET points = 2"}),
    ("top-level comma in select", "select", "found a ','",
     {"sink": "m:f", "select": {"p": "points, n"}}),
    ("joins ending the FROM clause", "joins", "has WHERE outside parentheses",
     {"sink": "m:f", "select": {"p": "points"}, "joins": "CROSS JOIN (SELECT 1) s WHERE true OR true"}),
    ("joins with ORDER BY", "joins", "has ORDER outside parentheses",
     {"sink": "m:f", "select": {"p": "points"}, "joins": "CROSS JOIN (SELECT 1) s ORDER BY 1"}),
    ("a comment start glued to an operator", "set", "comment start glued", {"set": {"points": "points +-- 10\n 1"}}),
]


@pytest.mark.parametrize("field, expected, fields", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_text_that_could_escape_the_batch_is_refused_at_validate(tmp_path, field, expected, fields):
    if "set" not in fields:
        fields = {"set": None, **fields}
    refused(tmp_path, field, expected, **fields)


# tricks against a composer: quotes PostgreSQL and a tokenizer could end in different places,
# comment starts, stray parentheses, dollar quotes with another tag's case, line breaks
_PREFIXES = ["v", "true", "v = 0", "'a'", "E'a\\'", "'a\\'", "$$x$$", "x$$", "U&'a\\'", "$a$x$A$"]
_TRICKS = ["", "--", "/*", "*/", ")", "(", "'", "$$", "\n", "''", "\\", '"', "-- x\n", "+--", "/**/"]
_PAYLOADS = [" OR true", ") OR (true", " + 1", " OR id > 0"]


def test_no_text_rowfill_accepts_escapes_its_parentheses(engine):
    """Thousands of tricky texts: every one rowfill accepts, composed as a batch composes it, changes
    only rows inside the statement's range, or fails as a whole."""
    from itertools import product

    from rowfill.sql.sqltext import SqlTextError, driver, expression, from_continuation

    templates = {
        "set": "UPDATE tt SET v = @expr WHERE id BETWEEN 1 AND 10 RETURNING id",
        "where": "UPDATE tt SET v = 1 WHERE id BETWEEN 1 AND 10 AND @expr RETURNING id",
        "joins": "SELECT tt.id FROM tt @expr WHERE tt.id BETWEEN 1 AND 10",
    }
    ran, outside = {k: 0 for k in templates}, []
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE tt (id int PRIMARY KEY, v int DEFAULT 0)", {})
        conn.exec_driver_sql("INSERT INTO tt (id) SELECT generate_series(1, 20)", {})
        for prefix, trick, payload, after in product(_PREFIXES, _TRICKS, _PAYLOADS, ["", ")", "--", "'", "$$", "*/"]):
            text_ = prefix + trick + payload + after
            for field, template in templates.items():
                try:
                    if field == "joins":
                        slot = from_continuation(f"CROSS JOIN (SELECT {text_}) q").driver()
                    else:
                        slot = expression(text_, field=field).wrapped()
                except SqlTextError:
                    continue
                savepoint = conn.begin_nested()
                try:
                    ids = [row[0] for row in conn.exec_driver_sql(driver(template, {"expr": slot}), {})]
                    ran[field] += 1
                    outside += [(field, text_, i) for i in ids if i > 10]
                except Exception:  # noqa: BLE001 - PostgreSQL refusing the text is fine: nothing changed
                    pass
                finally:
                    savepoint.rollback()
        conn.rollback()
    assert outside == []
    assert min(ran.values()) > 30, ran  # many of the texts did run, so the check checked something
