"""The spec fields of Python transforms, sinks, undo and composite keys: what is accepted, and
what is refused with a message naming the file, the field and what to write instead."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from rowfill.errors import SpecErrors
from rowfill.spec.spec import load_spec

BASE = {"name": "job", "connection": "app_db", "table": "public.users", "key": "id"}
TRANSFORM = {"transform": "rowfill.examples.loyalty:loyalty_points", "returns": ["loyalty_points"],
             "select": {"paid_orders": "s.paid_orders"}, "joins": "CROSS JOIN LATERAL (SELECT 1 AS paid_orders) s"}


def write(tmp_path: Path, **fields) -> Path:
    data = {k: v for k, v in {**BASE, **fields}.items() if v is not None}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(tmp_path: Path, field: str, expected: str, **fields) -> None:
    path = write(tmp_path, **fields)
    with pytest.raises(SpecErrors) as caught:
        load_spec(path)
    matching = [e for e in caught.value.errors if e.field == field]
    assert matching, f"no error for {field!r}: {caught.value}"
    assert expected in matching[0].problem, matching[0].problem
    assert str(path) in str(matching[0])


def test_a_transform_spec_is_read_with_its_select_joins_and_returns(tmp_path):
    spec = load_spec(write(tmp_path, where="loyalty_points IS NULL", undo=True, **TRANSFORM))
    assert spec.mode == "transform"
    assert spec.returns == ("loyalty_points",)
    assert spec.select == {"paid_orders": "s.paid_orders"}
    assert spec.undo is True
    assert spec.key_columns == ("id",) and spec.key == "id"


def test_select_as_a_list_names_columns_quoted(tmp_path):
    spec = load_spec(write(tmp_path, sink="rowfill.examples.search_export:to_jsonl", select=["name", '"Price"']))
    assert spec.mode == "sink"
    assert spec.select == {"name": '"name"', "Price": '"Price"'}


def test_a_composite_key_is_a_list_of_columns(tmp_path):
    spec = load_spec(write(tmp_path, key=["tenant_id", '"Id"'], set={"x": "1"}))
    assert spec.key_columns == ("tenant_id", "Id")
    assert spec.key == "(tenant_id, Id)"


def test_composite_sql_mode_names_every_bound_it_misses(tmp_path):
    refused(tmp_path, "sql", "missing :last_id", key=["tenant_id", "id"],
            sql="UPDATE t SET x = 1 WHERE (tenant_id, id) >= (:first_tenant_id, :first_id) AND tenant_id <= :last_1")
    ok = load_spec(write(tmp_path, key=["tenant_id", "id"],
                         sql="UPDATE t SET x = 1 WHERE (tenant_id, id) BETWEEN (:first_1, :first_id) AND (:last_tenant_id, :last_2)"))
    assert ok.mode == "sql"


def test_single_key_sql_mode_takes_first_and_last_instead_of_lo_and_hi(tmp_path):
    spec = load_spec(write(tmp_path, sql="UPDATE t SET x = 1 WHERE id BETWEEN :first AND :last"))
    assert spec.mode == "sql"
    refused(tmp_path, "sql", ":first and :last", sql="UPDATE t SET x = 1 WHERE id >= :first")


REFUSED = [
    ("two ways to write", {"set": {"x": "1"}, **TRANSFORM}, "transform", "give only one of set, sql, transform, sink"),
    ("transform without returns", {**TRANSFORM, "returns": None}, "returns", "is required with 'transform'"),
    ("returns without transform", {"set": {"x": "1"}, "returns": ["x"]}, "returns", "only goes with 'transform'"),
    ("select with set", {"set": {"x": "1"}, "select": ["a"]}, "select", "only goes with 'transform' or 'sink'"),
    ("joins without select", {**TRANSFORM, "select": None}, "joins", "needs 'select'"),
    ("not a callable path", {**TRANSFORM, "transform": "loyalty.points()"}, "transform", '"module.path:function"'),
    ("undo with sql", {"sql": "UPDATE t SET x = 1 WHERE id > :lo AND id <= :hi", "undo": True}, "undo",
     "cannot know which rows and columns"),
    ("undo with a sink", {"sink": "m:f", "undo": True}, "undo", "outside the database"),
    ("undo not a bool", {"set": {"x": "1"}, "undo": "yes"}, "undo", "expected true or false"),
    ("transform writes the key", {**TRANSFORM, "returns": ["id"]}, "returns", "cannot change the key column 'id'"),
    ("composite key written by set", {"key": ["tenant_id", "id"], "set": {"tenant_id": "1"}}, "set",
     "cannot change the key column 'tenant_id'"),
    ("key listed twice", {"key": ["id", "id"], "set": {"x": "1"}}, "key", "listed twice"),
    ("key not a name", {"key": {"a": 1}, "set": {"x": "1"}}, "key", "key: [tenant_id, id]"),
    ("nothing to write", {}, "set", "or 'transform' or 'sink'"),
]


@pytest.mark.parametrize("fields, field, expected", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_bad_mode_fields_are_refused_naming_the_field(tmp_path, fields, field, expected):
    refused(tmp_path, field, expected, **fields)


def test_older_specs_keep_their_fingerprint_so_stored_plans_stay_valid(tmp_path):
    """Fields added for transforms, sinks and undo only enter the fingerprint when used."""
    spec = load_spec(write(tmp_path, where="full_name IS NULL", set={"full_name": "first_name"}))
    before_these_fields = {"table": "public.users", "key": "id", "where": "full_name IS NULL",
                           "set": {"full_name": "first_name"}, "sql": None}
    expected = hashlib.sha256(json.dumps(before_these_fields, sort_keys=True).encode()).hexdigest()[:16]
    assert spec.fingerprint == expected
    assert load_spec(write(tmp_path, where="full_name IS NULL", set={"full_name": "first_name"}, undo=True)).fingerprint != expected
