"""A spec that cannot be used is refused with a message naming the file and the field, and
loading a folder of specs never lets one bad file hide the good ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rowfill.errors import SpecError, SpecErrors
from rowfill.spec import DEFAULT_SPECS_DIR, find_spec, load_spec, load_specs, specs_dir
from rowfill.sqlnames import TableName

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
    ("batch_rows > default chunk_rows", {"batch_rows": 200_000}, "batch_rows", "larger than chunk_rows (100000, the default)"),
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
    assert (spec.chunk_rows, spec.batch_rows, spec.pause, spec.lock_timeout) == (100_000, 1_000, 0.0, 2.0)
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


def test_without_rowfill_specs_dir_the_bundled_folder_is_used(monkeypatch):
    monkeypatch.delenv("ROWFILL_SPECS_DIR", raising=False)
    assert specs_dir() == DEFAULT_SPECS_DIR
    assert DEFAULT_SPECS_DIR == Path(__file__).resolve().parents[1] / "include" / "specs"


def test_find_spec_reports_a_broken_spec_by_its_own_errors(tmp_path):
    spec_file(tmp_path, "ok.yaml", name="ok")
    spec_file(tmp_path, "broken.yaml", name=DROP, pause="fast")
    with pytest.raises(SpecErrors) as caught:
        find_spec("broken", tmp_path)
    assert [e.field for e in caught.value.errors] == ["pause"]
    with pytest.raises(SpecErrors, match=r"no spec named 'ghost' \(known: ok\)"):
        find_spec("ghost", tmp_path)
