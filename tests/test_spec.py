"""A spec that cannot be used is refused with a message naming the file and the field, and
loading a folder of specs never lets one bad file hide the good ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rowfill.airflow.specs_folder import specs_folder
from rowfill.errors import SpecError, SpecErrors
from rowfill.spec.spec import FIELDS, find_spec, load_spec, load_specs, specs_dir
from rowfill.sql.sqlnames import TableName

GOOD = {
    "name": "users_full_name",
    "connection": "app_db",
    "table": "public.users",
    "key": "id",
    "where": "full_name IS NULL",
    "set": {"full_name": "first_name || ' ' || last_name"},
}
DROP = object()  # marks a field to leave out of the GOOD spec


def spec_file(directory: Path, filename: str = "spec.yaml", **changes) -> Path:
    """GOOD with ``changes`` applied (DROP removes a field), written as YAML."""
    data = {**GOOD, **changes}
    data = {k: v for k, v in data.items() if v is not DROP}
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def errors_of(path: Path) -> list[SpecError]:
    with pytest.raises(SpecErrors) as caught:
        load_spec(path)
    errors = caught.value.errors
    assert errors, "SpecErrors raised without any error in it"
    assert str(path) in str(caught.value)
    return errors


def the_error(path: Path, field: str | None) -> SpecError:
    errors = errors_of(path)
    matching = [e for e in errors if e.field == field]
    assert matching, f"no error for field {field!r}; got: {[str(e) for e in errors]}"
    return matching[0]


# (id, changes to GOOD, field the message must name, text the message must contain)
MALFORMED = [
    ("unknown field with suggestion", {"batch_row": 500}, "batch_row", "did you mean 'batch_rows'?"),
    ("unknown field without near match", {"colour": "red"}, "colour", "known fields are: name, description"),
    ("missing table", {"table": DROP}, "table", "is required"),
    ("missing key", {"key": DROP}, "key", "is required"),
    ("missing connection", {"connection": DROP}, "connection", "is required"),
    ("bad duration", {"pause": "fast"}, "pause", "'fast' is not a duration; write it like 100ms"),
    ("negative duration", {"pause": -1}, "pause", "cannot be negative"),
    ("nan duration", {"pause": float("nan")}, "pause", "is not a duration"),
    ("zero lock_timeout means wait forever", {"lock_timeout": 0}, "lock_timeout", "wait forever"),
    ("sub-ms statement_timeout rounds to 0", {"statement_timeout": "0.2ms"}, "statement_timeout", "below 1ms"),
    ("set and sql both", {"sql": "UPDATE users SET x = 1 WHERE id > :lo AND id <= :hi"}, "sql", "not both"),
    ("neither set nor sql", {"set": DROP}, "set", "is required unless 'sql' is given"),
    ("empty set", {"set": {}}, "set", "expected a mapping of column: SQL expression"),
    ("set expression not text", {"set": {"full_name": 5}}, "set", "expected an SQL expression as text"),
    ("SQL in the table", {"table": "users; DROP TABLE x"}, "table", "SQL is not allowed here"),
    ("SQL in the key", {"key": "id OR 1=1"}, "key", "SQL is not allowed here"),
    ("SQL in a set column", {"set": {"a = 1, b": "2"}}, "set", "'a = 1, b' is not a plain SQL identifier"),
    ("SQL in a quoted-looking table", {"table": '"users"; DROP TABLE x'}, "table", "SQL is not allowed here"),
    ("table with too many dots", {"table": "db.public.users"}, "table", "too many dots"),
    ("table with empty part", {"table": "public."}, "table", "expected an identifier"),
    ("identifier over 63 bytes", {"key": "k" * 64}, "key", "63-byte identifier limit"),
    ("key changed by set", {"set": {"ID": "id + 1"}}, "set", "cannot change the key column 'id'"),
    ("same set column twice after case folding", {"set": {"Full_Name": "1", "full_name": "2"}}, "set", "give each column once"),
    ("statement inside where", {"where": "true; DELETE FROM users"}, "where", "without ';' inside"),
    ("empty where", {"where": "  "}, "where", "non-empty SQL text"),
    ("sql missing :hi", {"set": DROP, "sql": "UPDATE users SET x = 1 WHERE id > :lo"}, "sql", "must use the key bounds :hi"),
    ("sql missing both bounds", {"set": DROP, "sql": "UPDATE users SET x = 1"}, "sql", "must use the key bounds :lo, :hi"),
    ("a cast is not a bound", {"set": DROP, "sql": "UPDATE users SET x = 1 WHERE id > :lo AND id <= 5::hi"}, "sql", ":hi"),
    ("batch_rows > chunk_rows", {"chunk_rows": 1000, "batch_rows": 5000}, "batch_rows", "larger than chunk_rows (1000)"),
    ("chunk_time below a second", {"chunk_time": "500ms"}, "chunk_time", "shorter than 1s"),
    ("chunk_rows < default batch_rows", {"chunk_rows": 500}, "chunk_rows", "batch_rows 1000 (the default) is larger"),
    ("chunk_rows zero", {"chunk_rows": 0}, "chunk_rows", "at least 1"),
    ("chunk_rows not a number", {"chunk_rows": "lots"}, "chunk_rows", "expected a whole number, got 'lots'"),
    ("batch_rows boolean", {"batch_rows": True}, "batch_rows", "expected a whole number"),
    ("negative retries", {"retries": -1}, "retries", "at least 0"),
    ("bad cron schedule", {"schedule": "every night"}, "schedule", "not a valid cron expression"),
    ("cron with too few fields", {"schedule": "0 2 * *"}, "schedule", "not a valid cron expression"),
    ("schedule not text", {"schedule": 5}, "schedule", "expected a cron expression"),
    ("name not usable as DAG id", {"name": "Users-Backfill"}, "name", "lower-case letters"),
    ("connection with spaces", {"connection": "app db"}, "connection", "expected an Airflow id"),
    ("tags not a list", {"tags": "nightly"}, "tags", "expected a list of strings"),
]


@pytest.mark.parametrize("changes, field, expected", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_spec_is_refused_naming_file_and_field(tmp_path, changes, field, expected):
    path = spec_file(tmp_path, **changes)
    error = the_error(path, field)
    assert expected in error.problem
    assert str(error).startswith(f"{path}: field '{field}': ")


# (id, file text, text the message must contain); these problems belong to the whole file, not a field
UNREADABLE = [
    ("a list, not a mapping", "- name: a\n- name: b\n", "expected a mapping of fields"),
    ("a bare string", "just some words\n", "expected a mapping of fields"),
    ("an empty file", "", "expected a mapping of fields"),
    ("invalid YAML syntax", "name: x\nconnection: app_db\ntable: users: oops\nkey: id\n", "is not valid YAML at line 3, column 13: mapping values are not allowed here"),
    ("unclosed bracket", "name: x\ntable: [users\n", "is not valid YAML at line"),
]


@pytest.mark.parametrize("content, expected", [u[1:] for u in UNREADABLE], ids=[u[0] for u in UNREADABLE])
def test_a_file_that_is_not_a_spec_mapping_is_refused_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    error = the_error(path, None)
    assert expected in error.problem
    assert str(error).startswith(f"{path}: ")


def test_a_missing_file_is_reported_not_raised_as_oserror(tmp_path):
    error = the_error(tmp_path / "nope.yaml", None)
    assert "cannot be read" in error.problem


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    path = spec_file(tmp_path, batch_row=5, key=DROP, pause="fast", table="users; DROP TABLE x", schedule="never")
    errors = errors_of(path)
    assert {e.field for e in errors} == {"batch_row", "key", "pause", "table", "schedule"}
    assert all(e.source == str(path) for e in errors)


def test_a_good_spec_loads_with_its_defaults(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    assert spec.name == "users_full_name"
    assert spec.dag_id == "rowfill_users_full_name"
    assert spec.table == TableName("public", "users")
    assert spec.key == "id"
    assert spec.set == {"full_name": "first_name || ' ' || last_name"}
    assert spec.mode == "set"
    assert spec.source == str(tmp_path / "spec.yaml")
    assert (spec.chunk_rows, spec.chunk_time, spec.batch_rows, spec.pause, spec.lock_timeout) == (None, 300.0, 1_000, 0.0, 2.0)
    # the default throttle: ~50 ms batches (sized from there), a rest of half a batch after each
    assert (spec.target_batch_time, spec.pause_ratio, spec.gates, spec.window) == (0.05, 0.5, {}, ())
    assert spec.pool_name == "rowfill_app_db"


def test_sql_mode_accepts_lo_and_hi_and_strips_a_trailing_semicolon(tmp_path):
    sql = "INSERT INTO users_v2 (id) SELECT id FROM users WHERE id > :lo AND id <= :hi::bigint ON CONFLICT DO NOTHING;"
    spec = load_spec(spec_file(tmp_path, set=DROP, sql=sql))
    assert spec.mode == "sql"
    assert spec.sql == sql.rstrip(";")
    assert spec.set == {}


@pytest.mark.parametrize(
    "written, schema, name",
    [
        ('"Users"', None, "Users"),
        ('public."My Table"', "public", "My Table"),
        ('"Sales"."Order ""Lines"""', "Sales", 'Order "Lines"'),
        ('"a.b"', None, "a.b"),
        ("Public.USERS", "public", "users"),
        ("users", None, "users"),
        ("app.users$2", "app", "users$2"),
    ],
)
def test_tables_are_read_the_way_postgresql_reads_them(tmp_path, written, schema, name):
    """Quoted names keep their case and spaces; plain names are case-folded; no schema stays unknown
    until planning resolves it with the connection's search_path (see test_resolve.py)."""
    spec = load_spec(spec_file(tmp_path, table=written))
    assert spec.table == TableName(schema, name)


def test_the_fingerprint_holds_the_table_as_written_also_once_resolved(tmp_path):
    """A qualified table's fingerprint is what it always was; an unqualified one's is its name as
    written, and resolving it (app.orders on this connection) does not change what the backfill means."""
    import dataclasses
    import hashlib
    import json

    qualified = load_spec(spec_file(tmp_path, table="public.users"))
    meaning = {"table": "public.users", "key": "id", "where": "full_name IS NULL",
               "set": {"full_name": "first_name || ' ' || last_name"}, "sql": None}
    assert qualified.fingerprint == hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()[:16]
    unqualified = load_spec(spec_file(tmp_path, table="users"))
    assert unqualified.meaning["table"] == "users"
    resolved = dataclasses.replace(unqualified, table=unqualified.table.resolved("app", "users"))
    assert str(resolved.table) == "app.users" and resolved.table.sql == '"app"."users"'
    assert resolved.fingerprint == unqualified.fingerprint != qualified.fingerprint
    assert not resolved.table.written_qualified and qualified.table.written_qualified


def test_columns_are_read_the_way_postgresql_reads_them(tmp_path):
    spec = load_spec(spec_file(tmp_path, key="ID", set={"Full_Name": "1", '"Display Name"': "2"}))
    assert spec.key == "id"
    assert spec.set == {"full_name": "1", "Display Name": "2"}


@pytest.mark.parametrize(
    "written, seconds",
    [("100ms", 0.1), ("2s", 2.0), ("1.5m", 90.0), ("5min", 300.0), ("1h", 3600.0), (3, 3.0), (0.25, 0.25), ("0", 0.0)],
)
def test_durations_are_read_as_people_write_them(tmp_path, written, seconds):
    assert load_spec(spec_file(tmp_path, pause=written)).pause == pytest.approx(seconds)


@pytest.mark.parametrize("schedule", ["0 2 * * *", "*/15 * * * *", "@daily", None])
def test_cron_schedules_presets_and_null_are_accepted(tmp_path, schedule):
    assert load_spec(spec_file(tmp_path, schedule=schedule)).schedule == schedule


def test_name_defaults_to_the_file_stem(tmp_path):
    spec = load_spec(spec_file(tmp_path, "orders_backfill.yaml", name=DROP))
    assert spec.name == "orders_backfill"
    assert spec.dag_id == "rowfill_orders_backfill"


def test_a_file_stem_that_cannot_be_a_name_asks_for_one(tmp_path):
    path = spec_file(tmp_path, "Orders Backfill.yaml", name=DROP)
    error = the_error(path, "name")
    assert "'Orders Backfill' cannot stand in" in error.problem


def test_meaning_changes_the_fingerprint_but_tuning_does_not(tmp_path):
    base = load_spec(spec_file(tmp_path)).fingerprint
    tuned = load_spec(spec_file(tmp_path, chunk_rows=5000, batch_rows=50, pause="1s", lock_timeout="5s")).fingerprint
    rewhere = load_spec(spec_file(tmp_path, where="full_name = ''")).fingerprint
    reset = load_spec(spec_file(tmp_path, set={"full_name": "last_name"})).fingerprint
    assert tuned == base
    assert len({base, rewhere, reset}) == 3


# -- folders of specs --------------------------------------------------------------------------


def test_one_bad_spec_never_hides_the_good_ones(tmp_path):
    good_a = spec_file(tmp_path, "a_good.yaml", name="a_good")
    good_c = spec_file(tmp_path, "c_good.yml", name="c_good")
    missing_key = spec_file(tmp_path, "b_missing_key.yaml", name="b_missing_key", key=DROP)
    (tmp_path / "d_not_yaml.yaml").write_text("name: d\ntable: [users\n")
    (tmp_path / "notes.txt").write_text("not a spec")

    specs, errors = load_specs(tmp_path)

    assert [s.name for s in specs] == ["a_good", "c_good"]
    assert [s.source for s in specs] == [str(good_a), str(good_c)]
    assert {(e.source, e.field) for e in errors} == {(str(missing_key), "key"), (str(tmp_path / "d_not_yaml.yaml"), None)}


def test_duplicate_names_in_a_folder_keep_the_first_and_report_the_second(tmp_path):
    first = spec_file(tmp_path, "a.yaml", name="same")
    second = spec_file(tmp_path, "b.yaml", name="same")
    specs, errors = load_specs(tmp_path)
    assert [s.source for s in specs] == [str(first)]
    assert len(errors) == 1
    assert errors[0].source == str(second) and errors[0].field == "name"
    assert f"'same' is already used by {first}" in str(errors[0])


def test_a_duplicate_from_the_file_stem_is_caught_too(tmp_path):
    spec_file(tmp_path, "orders.yaml", name=DROP)
    spec_file(tmp_path, "z_other.yaml", name="orders")
    specs, errors = load_specs(tmp_path)
    assert [s.name for s in specs] == ["orders"]
    assert [e.field for e in errors] == ["name"]


def test_a_missing_specs_folder_says_how_to_point_at_one(tmp_path):
    specs, errors = load_specs(tmp_path / "nowhere")
    assert specs == []
    assert len(errors) == 1 and "ROWFILL_SPECS_DIR" in str(errors[0])


def test_rowfill_specs_dir_is_honoured(tmp_path, monkeypatch):
    spec_file(tmp_path, "mine.yaml", name="mine")
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path))
    assert specs_dir() == tmp_path
    specs, errors = load_specs()
    assert [s.name for s in specs] == ["mine"] and errors == []
    assert find_spec("mine").source == str(tmp_path / "mine.yaml")


def test_without_a_configured_folder_specs_are_never_looked_for_in_the_installed_package(monkeypatch, tmp_path):
    monkeypatch.delenv("ROWFILL_SPECS_DIR", raising=False)
    monkeypatch.delenv("AIRFLOW__ROWFILL__SPECS_FOLDER", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path / "dags"))
    assert specs_dir() is None  # this layer reads no Airflow config; rowfill.airflow.specs_folder does
    specs, [error] = load_specs()
    assert specs == [] and "rowfill init DAGS_FOLDER" in str(error) and "AIRFLOW__ROWFILL__SPECS_FOLDER" in str(error)
    assert specs_folder() == (tmp_path / "dags" / "rowfill").resolve()  # the rowfill/ folder of the DAG folder
    assert specs_folder(tmp_path / "bundle" / "rowfill_dags.py") == (tmp_path / "bundle" / "rowfill").resolve()
    monkeypatch.setenv("AIRFLOW__ROWFILL__SPECS_FOLDER", str(tmp_path / "configured"))
    assert specs_folder(tmp_path / "bundle" / "rowfill_dags.py") == (tmp_path / "configured").resolve()
    monkeypatch.setenv("ROWFILL_SPECS_DIR", str(tmp_path / "env"))
    assert specs_folder() == (tmp_path / "env").resolve()  # kept from the first releases, and first


def test_find_spec_reports_a_broken_spec_by_its_own_errors(tmp_path):
    spec_file(tmp_path, "ok.yaml", name="ok")
    spec_file(tmp_path, "broken.yaml", name=DROP, pause="fast")
    with pytest.raises(SpecErrors) as caught:
        find_spec("broken", tmp_path)
    assert [e.field for e in caught.value.errors] == ["pause"]
    with pytest.raises(SpecErrors, match=r"no spec named 'ghost' \(known: ok\)"):
        find_spec("ghost", tmp_path)


# -- SQL fields: read with one tokenizer (rowfill.sql.sqltext) -------------------------------------------

# (id, changes to GOOD, field, text the problem must contain): refused before any database is asked
SQL_REFUSED = [
    (":true outside a string literal", {"set": {"settings": "settings || :true"}}, "set", "':true' is not a value rowfill binds"),
    ("a bind in where", {"where": "id >= :first"}, "where", "':first' is not a value rowfill binds (none in `where`"),
    ("a bind in set", {"set": {"full_name": ":lo"}}, "set", "column 'full_name': ':lo' is not a value rowfill binds"),
    ("an upper-case bind", {"set": DROP, "sql": "UPDATE users SET x = 1 WHERE id > :LO AND id <= :hi"}, "sql",
     "bind names are lower case: write ':lo'"),
    ("a psycopg placeholder", {"where": "id = %(x)s"}, "where", "'%(x)s' at character 6 (near 'id = %(x)s') is not a value rowfill binds"),
    ("a positional parameter", {"where": "id = $1"}, "where", "is not a value rowfill binds"),
    (":lo with a composite key", {"key": ["tenant_id", "id"], "set": DROP,
                                  "sql": "UPDATE t SET x = 1 WHERE (tenant_id, id) > (:lo, :hi)"}, "sql", "':lo' is not a value rowfill binds"),
    ("bounds only inside comments", {"set": DROP, "sql": "UPDATE users SET x = 1 -- WHERE id > :lo AND id <= :hi"}, "sql",
     "must use the key bounds :lo, :hi"),
    ("bounds only inside a literal", {"set": DROP, "sql": "UPDATE users SET x = ':lo :hi'"}, "sql", "must use the key bounds :lo, :hi"),
    ("an unterminated literal", {"where": "full_name = 'x"}, "where", "cannot be read as SQL"),
    ("a backslash before a quote", {"where": "full_name = 'C:\\' OR true OR full_name = ''"}, "where",
     "whose end is ambiguous"),
    ("a backslash ending an E string", {"where": "full_name = E'x\\'"}, "where", "whose end is ambiguous"),
    ("a dollar quote glued to a name", {"where": "x$$ ) OR ( $$ = 'a'"}, "where", "unbalanced ')'"),
    ("only a comment", {"where": "-- nothing yet"}, "where", "found only comments or nothing"),
    ("a statement in a gate probe", {"gates": {"probe": {"sql": "SELECT 1; DELETE FROM jobs", "wait": 1}}}, "gates",
     "probe.sql: expected one SQL statement, without ';' inside"),
    ("a bind in the latency probe", {"latency_probe": {"sql": "SELECT * FROM users WHERE id = :id", "limit": "20ms"}},
     "latency_probe", "sql: ':id' is not a value rowfill binds"),
    ("OR after the range in sql", {"set": DROP, "sql": "DELETE FROM users WHERE id BETWEEN :first AND :last OR x IS NULL"}, "sql",
     "OR at the top level of its WHERE clause"),
    ("a top-level comma in a select value", {"set": DROP, "sink": "m:f", "select": {"a": "x, y"}}, "select", "'a': expected one SQL expression"),
    ("joins with LIMIT", {"set": DROP, "sink": "m:f", "select": ["x"], "joins": "JOIN o ON o.id = users.id LIMIT 1"}, "joins",
     "has LIMIT outside parentheses"),
]


@pytest.mark.parametrize("changes, field, expected", [r[1:] for r in SQL_REFUSED], ids=[r[0] for r in SQL_REFUSED])
def test_sql_that_would_not_reach_postgresql_as_written_is_refused_naming_the_field(tmp_path, changes, field, expected):
    error = the_error(spec_file(tmp_path, **changes), field)
    assert expected in error.problem


# (id, changes to GOOD): what the README allows, accepted as written
SQL_ACCEPTED = [
    ("a semicolon inside a literal", {"where": "full_name IS DISTINCT FROM 'a;b'"}),
    ("a trailing semicolon and comment", {"set": DROP, "sql": "UPDATE users SET x = 1 WHERE id > :lo AND id <= :hi; -- done"}),
    ("colons in JSON, times and casts", {"where": "NOT settings @> '{\"notify\":true}'::jsonb AND at <> '08:00'::time"}),
    ("a top-level OR in where", {"where": "full_name IS NULL OR full_name = ''"}),
    ("OR inside parentheses and CASE in sql", {"set": DROP, "sql": "UPDATE users SET x = CASE WHEN a OR b THEN 1 END "
                                                                    "WHERE id > :lo AND id <= :hi AND (a OR b) AND x IS DISTINCT FROM 1"}),
    ("OR in ON CONFLICT after the WHERE", {"set": DROP, "sql": "INSERT INTO v SELECT id FROM users WHERE id > :lo AND id <= :hi "
                                                                "ON CONFLICT (id) DO UPDATE SET x = 1 WHERE v.a OR v.b"}),
    ("composite bounds by name and position", {"key": ["tenant_id", "id"], "set": DROP,
                                               "sql": "DELETE FROM t WHERE (tenant_id, id) BETWEEN (:first_tenant_id, :first_2) "
                                                      "AND (:last_1, :last_id)"}),
    ("a semicolon in a probe literal", {"gates": {"probe": {"sql": "SELECT count(*) FROM jobs WHERE note <> 'a;b';", "wait": 1}}}),
    ("OR in a probe", {"gates": {"probe": {"sql": "SELECT count(*) FROM jobs WHERE state = 'queued' OR state = 'retry'",
                                           "wait": 1}}}),
    ("the jsonb ? operator", {"where": "NOT (settings ? 'notify')"}),
    ("array slices", {"set": {"full_name": "array_to_string(parts[:2], ' ') || array_to_string(parts[a:b], ' ')"}}),
]


@pytest.mark.parametrize("changes", [a[1] for a in SQL_ACCEPTED], ids=[a[0] for a in SQL_ACCEPTED])
def test_sql_the_readme_allows_is_accepted_as_written(tmp_path, changes):
    spec = load_spec(spec_file(tmp_path, **changes))
    for field in ("where", "sql"):
        if field in changes:
            assert getattr(spec, field) == changes[field].strip().rstrip(";").strip()


# -- YAML's own readings ------------------------------------------------------------------------------


def yaml_spec(tmp_path: Path, extra: str, base: str | None = None) -> Path:
    """A spec written as YAML text (not dumped), so plain words reach the reader unquoted."""
    base = base if base is not None else (
        "name: users_full_name\nconnection: app_db\ntable: public.users\nkey: id\nwhere: full_name IS NULL\n"
        "set:\n  full_name: \"first_name || ' ' || last_name\"\n")
    path = tmp_path / "spec.yaml"
    path.write_text(base + extra)
    return path


@pytest.mark.parametrize("word", ["off", "Off", "OFF", "no", "false", "null", '"off"'])
def test_target_batch_time_off_works_unquoted(tmp_path, word):
    assert load_spec(yaml_spec(tmp_path, f"target_batch_time: {word}\n")).target_batch_time is None


@pytest.mark.parametrize("word", ["on", "yes", "true"])
def test_target_batch_time_on_says_what_to_write(tmp_path, word):
    error = the_error(yaml_spec(tmp_path, f"target_batch_time: {word}\n"), "target_batch_time")
    assert "write a duration such as 50ms, or off for fixed-size batches" in error.problem


def test_a_boolean_where_a_duration_is_needed_says_yaml_read_it_as_one(tmp_path):
    error = the_error(yaml_spec(tmp_path, "pause: off\n"), "pause")
    assert "got off/no/false (YAML reads these words unquoted as true and false)" in error.problem


# (YAML line as the README writes it, field, value read)
README_SPELLINGS = [
    ("target_batch_time: 200ms", "target_batch_time", 0.2),
    ("target_batch_time: off", "target_batch_time", None),
    ("pause: 100ms", "pause", 0.1),
    ("pause: 2s", "pause", 2.0),
    ("pause: 1m", "pause", 60.0),
    ("pause: 0", "pause", 0.0),
    ("stall_after: 15m", "stall_after", 900.0),
    ("expected_duration: 2h", "expected_duration", 7200.0),
    ("undo: true", "undo", True),
    ("schedule: null", "schedule", None),
    ('schedule: "0 2 * * *"', "schedule", "0 2 * * *"),
    ("window: off", "window", ()),
    ("window: no", "window", ()),
    ("target_batch_time: no", "target_batch_time", None),
    ("undo: yes", "undo", True),
    # YAML 1.1 reads leading zeros as octal (4096, 8); rowfill reads them as people and YAML 1.2 do
    ("chunk_rows: 010000", "chunk_rows", 10000),
    ("pause: 010", "pause", 10.0),
    ("batch_rows: 1_000", "batch_rows", 1000),
]


@pytest.mark.parametrize("line, field, value", README_SPELLINGS, ids=[s[0] for s in README_SPELLINGS])
def test_every_spelling_the_readme_documents_is_read_as_documented(tmp_path, line, field, value):
    assert getattr(load_spec(yaml_spec(tmp_path, line + "\n")), field) == value


@pytest.mark.parametrize("start, end, shown", [("01:00", "06:00", "01:00-06:00"), ("22:30", "23:30", "22:30-23:30"),
                                               ("1:00:30", "23:59:59", "01:00:30-23:59:59"), ('"22:30"', '"06:00"', "22:30-06:00")])
def test_window_times_work_unquoted(tmp_path, start, end, shown):
    """YAML 1.1 reads an unquoted 22:30 as the base-60 number 1350; rowfill reads it as the time it is."""
    (window,) = load_spec(yaml_spec(tmp_path, f"window: {{start: {start}, end: {end}, timezone: Europe/Berlin}}\n")).window
    assert str(window) == f"{shown} Europe/Berlin"


def test_every_yaml_example_in_the_readme_is_a_valid_spec(tmp_path):
    import importlib.util
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 8
    for block in blocks:
        example = yaml.safe_load(block)
        if "alerts" in example and importlib.util.find_spec("airflow.providers.slack") is None:
            example["alerts"] = [a for a in example["alerts"] if "slack" not in a]  # refused with advice then (tested elsewhere)
        data = {**GOOD, **example}
        if any(mode in example for mode in ("sql", "transform", "sink")):
            data.pop("set")
        if "transform" in example:
            data.setdefault("returns", ["loyalty_points"])
        path = tmp_path / "example.yaml"
        path.write_text(block if set(example) >= {"name", "connection", "table", "key"} else yaml.safe_dump(data))
        load_spec(path)  # raises SpecErrors naming the field if the README shows something rowfill refuses


def test_a_key_given_twice_is_an_error_naming_the_key_and_lines(tmp_path):
    error = the_error(yaml_spec(tmp_path, "batch_rows: 100\npause: 1s\nbatch_rows: 5000\n"), "batch_rows")
    assert "batch_rows is given twice, at lines 8 and 10" in error.problem


def test_a_column_given_twice_in_set_is_an_error_naming_set(tmp_path):
    base = "name: a\nconnection: app_db\ntable: public.users\nkey: id\nset:\n  points: points + 10\n  points: points + 20\n"
    error = the_error(yaml_spec(tmp_path, "", base), "set")
    assert "set.points is given twice, at lines 6 and 7" in error.problem


def test_a_key_given_twice_in_a_nested_flow_mapping_is_an_error(tmp_path):
    error = the_error(yaml_spec(tmp_path, "gates:\n  replica_lag: {wait: 10s, critical: 5min, wait: 1s}\n"), "gates")
    assert "gates.replica_lag.wait is given twice" in error.problem


@pytest.mark.parametrize("line, field, says", [
    ("batch_rows: 1e3", "batch_rows", "expected a whole number, got '1e3'"),
    ("chunk_rows: 0o17", "chunk_rows", "expected a whole number, got '0o17'"),
    ("batch_rows: 1000.0", "batch_rows", "expected a whole number, got 1000.0"),
    ("retries: yes", "retries", "expected a whole number, got True"),
    ("statement_timeout: ~", "statement_timeout", "None is not a duration"),
    ("statement_timeout: off", "statement_timeout", "got off/no/false"),
    ("pause: on", "pause", "got on/yes/true"),
])
def test_yaml_readings_that_are_not_what_the_field_takes_are_refused_naming_it(tmp_path, line, field, says):
    assert says in the_error(yaml_spec(tmp_path, line + "\n"), field).problem


@pytest.mark.parametrize("value, read", [("0", "the int 0"), ("2024-01-01", "the date"), ("yes", "the bool True")])
def test_an_unquoted_set_value_yaml_reads_as_no_text_says_what_yaml_read(tmp_path, value, read):
    base = f"name: a\nconnection: app_db\ntable: public.users\nkey: id\nset:\n  points: {value}\n"
    error = the_error(yaml_spec(tmp_path, "", base), "set")
    assert f"column 'points': expected an SQL expression as text; YAML read it as {read}" in error.problem
    assert "quote the SQL" in error.problem


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    base = ("name: a\nconnection: app_db\ntable: public.users\nkey: id\nset: {full_name: first_name}\n"
            "gates:\n  replica_lag: &lag {wait: 10s, critical: 5min}\n  long_transaction: {<<: *lag, wait: 1min}\n")
    spec = load_spec(yaml_spec(tmp_path, "", base))
    assert (spec.gates["long_transaction"].wait, spec.gates["long_transaction"].critical) == (60.0, 300.0)


# -- no spec content ends in a traceback ----------------------------------------------------------------

JUNK = [None, True, False, 0, -1, 10**40, 1e300, float("inf"), float("nan"), "", "off", "22:30", "'", "(", "/*", ":x",
        "%s", "a, b", [], [1], [[["x"]]], ["a", {"b": [None]}], {}, {"a": 1}, {"a": {"b": [1, {"c": []}]}}, {None: None},
        {"sql": [1], "wait": {"x": 1}}, [{"start": [], "end": {}}], [{"smtp": {"to": [[1]]}}], "é" * 300]


@pytest.mark.parametrize("field", list(FIELDS))
def test_any_value_of_any_field_gives_a_field_error_not_a_traceback(tmp_path, field):
    for junk in JUNK:
        path = spec_file(tmp_path, **{field: junk})
        try:
            load_spec(path)
        except SpecErrors as exc:
            assert all(e.source == str(path) for e in exc.errors)


@pytest.mark.parametrize("content, expected", [
    (b"name: caf\xe9\n", "is not UTF-8 text (byte 0xe9 at line 1); save it as UTF-8"),
    (b"a: " + b"[" * 3000, "nested too deeply"),
    (b"set: &s {full_name: *s}\n", "field 'set'"),
    (b"name: x\n\x00", "is not valid YAML"),
    (b"? [a, b]\n: 1\n", "is not valid YAML"),
], ids=["not utf-8", "deep nesting", "alias loop", "nul byte", "unhashable key"])
def test_unreadable_files_are_refused_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "junk.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecErrors, match=re.escape(expected)):
        load_spec(path)


@pytest.mark.parametrize("changes, field, expected", [
    ({"chunk_rows": 10**40}, "chunk_rows", "is above the upper bound of 2147483647: PostgreSQL's integer"),
    ({"pause": 10**40}, "pause", "is above the upper bound of 24h"),
    ({"stall_after": "100000h"}, "stall_after", "'100000h' is above the upper bound of 168h (7 days)"),
    ({"lock_timeout": 30 * 86400}, "lock_timeout", "is above the upper bound of 2147483647ms (about 24.8 days): "
                                                   "PostgreSQL's largest timeout"),
    ({"gates": {"replica_lag": {"wait": 1e300}}}, "gates", "replica_lag.wait: 1e+300 is above the upper bound of 168h"),
], ids=["rows", "pause", "stall_after", "lock_timeout", "gate threshold"])
def test_huge_numbers_are_field_errors(tmp_path, changes, field, expected):
    assert expected in the_error(spec_file(tmp_path, **changes), field).problem


def test_rowfill_validate_prints_field_errors_for_junk_and_no_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bytes.yaml").write_bytes(b"\xff\xfe\x00junk")
    (tmp_path / "deep.yaml").write_text("where: " + "[" * 3000)
    spec_file(tmp_path, "lists.yaml", name="lists", where=["a", "b"], set={"x": ["y"]}, table=[1])
    spec_file(tmp_path, "sql.yaml", name="sqlx", where="x = '{\"a\":true}' OR :true")
    rowfill = Path(sys.executable).parent / "rowfill"
    out = subprocess.run([str(rowfill), "--specs-dir", str(tmp_path), "validate"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert f"error {tmp_path / 'sql.yaml'}: field 'where': ':true'" in out.stdout
    assert f"error {tmp_path / 'lists.yaml'}: field 'where'" in out.stdout
    assert f"error {tmp_path / 'bytes.yaml'}: is not UTF-8 text" in out.stdout
