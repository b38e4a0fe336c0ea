"""Columnar transforms (``batch_form: columns``) against a real PostgreSQL: the function gets the
batch as a dict of equal-length column lists and returns the ``returns`` columns the same way;
the table ends exactly as with the per-row form (the names and loyalty examples in both forms
against the same rule in SQL), a returned column of the wrong length fails the batch naming the
spec file and the field ``returns`` with nothing written, and a row that makes the function (or
the write) fail is named by its key. Every column type: tests/test_types.py runs for both forms."""

from __future__ import annotations


import pytest
from sqlalchemy import text

from helpers import example_spec, module, spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import ChunkFailed, SpecErrors
from rowfill.examples.loyalty import REFERENCE_SQL
from rowfill.examples.seed import seed_loyalty
from rowfill.store.checkpoint import CheckpointStore

MISMATCHES = f"SELECT count(*) FROM public.users u JOIN ({REFERENCE_SQL}) r USING (id) WHERE u.loyalty_points IS DISTINCT FROM r.points"
FORMS = {"rows": "rowfill.examples.loyalty:loyalty_points", "columns": "rowfill.examples.loyalty:loyalty_points_columns"}


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def run_all(engine, spec):
    return [ChunkRunner(engine, spec).run(c.chunk_no) for c in plan_backfill(engine, spec)]


def loyalty_spec(tmp_path, form: str = "columns", **changes):
    return example_spec(tmp_path, "users_loyalty_points", **{
        "chunk_rows": 1_000, "batch_rows": 100, "pause": 0, "transform": FORMS[form],
        "batch_form": form if form == "columns" else None, **changes})



@pytest.mark.parametrize("form", ["rows", "columns"])
def test_loyalty_points_in_both_forms_equal_the_rule_computed_in_one_sql_query(engine, tmp_path, form):
    seed_loyalty(engine, users=2_500)
    with engine.begin() as conn:  # the application filled a few itself: `where` leaves them alone
        conn.execute(text("UPDATE users SET loyalty_points = -1 WHERE id % 500 = 0"))
    spec = loyalty_spec(tmp_path, form)
    results = run_all(engine, spec)
    assert sum(r.rows_written for r in results) == 2_495
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points = -1") == 5
    assert scalar(engine, MISMATCHES + " AND u.id % 500 <> 0") == 0
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NULL") == 0


@pytest.mark.parametrize("form", ["rows", "columns"])
def test_names_in_both_forms_fill_full_name_from_first_and_last(engine, tmp_path, form):
    seed_loyalty(engine, users=1_000)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET full_name = 'kept' WHERE id = 7"))
    fn = "full_name_columns" if form == "columns" else "full_name"
    spec = spec_for(tmp_path, name="names", table="public.users", where="full_name IS NULL", set=None,
                    transform=f"rowfill.examples.names:{fn}", select=["first_name", "last_name"], returns=["full_name"],
                    chunk_rows=400, batch_rows=64, **({"batch_form": "columns"} if form == "columns" else {}))
    results = run_all(engine, spec)
    assert sum(r.rows_written for r in results) == 999
    assert scalar(engine, "SELECT count(*) FROM users WHERE id <> 7 AND full_name IS DISTINCT FROM first_name || ' ' || last_name") == 0
    assert scalar(engine, "SELECT full_name FROM users WHERE id = 7") == "kept"


def test_batch_form_is_checked_and_only_goes_with_a_transform(tmp_path):
    with pytest.raises(SpecErrors) as caught:
        loyalty_spec(tmp_path, batch_form="arrays")
    [error] = caught.value.errors
    assert error.field == "batch_form" and "expected rows" in error.problem
    assert "users_loyalty_points.yaml" in str(error)
    with pytest.raises(SpecErrors) as caught:
        spec_for(tmp_path, name="names", table="public.users", set={"full_name": "first_name"}, batch_form="columns")
    [error] = caught.value.errors
    assert error.field == "batch_form" and "only goes with 'transform'" in error.problem


@pytest.mark.parametrize("body, expected", [
    ("return {'loyalty_points': columns['paid_orders'][:-1]}", "returned 99 values for column 'loyalty_points' for a batch of 100 rows (id 1..100)"),
    ("return [0] * (len(columns['id']) + 1)", "returned 101 values for column 'loyalty_points' for a batch of 100 rows"),
    ("return {'points': columns['paid_orders']}", "missing ['loyalty_points']"),
    ("return 5", "returned int for column 'loyalty_points'"),
], ids=["short column", "long column", "missing column", "not a column"])
def test_a_returned_column_of_the_wrong_length_fails_naming_the_field_and_writes_nothing(engine, tmp_path, monkeypatch, body, expected):
    seed_loyalty(engine, users=300)
    name = module(tmp_path, monkeypatch, "wrong_columns", f"def loyalty_points(columns):\n    {body}\n")
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    message = str(caught.value)
    assert expected in message
    assert "users_loyalty_points.yaml: field 'returns'" in message and "Nothing of the batch was written" in message
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NOT NULL") == 0


RULE = """
from rowfill.examples.loyalty import points_for

def loyalty_points(columns):
    out = []
    for i, orders, cents in zip(columns["id"], columns["paid_orders"], columns["spent_cents"]):
        {check}
        out.append(points_for(orders, cents))
    return {{"loyalty_points": out}}
"""


def test_a_columnar_transform_that_raises_names_the_row_and_keeps_the_checkpoint(engine, tmp_path, monkeypatch):
    seed_loyalty(engine, users=1_500)
    name = module(tmp_path, monkeypatch, "points_columns",
                  RULE.format(check='if i == 1234: raise ValueError("no tier for user " + str(i))'))
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    message = str(caught.value)
    assert "raised ValueError: no tier for user 1234 at id 1234" in message
    row = CheckpointStore(engine).chunk(spec.name, 2)
    assert (row.status, row.cursor, row.rows_written) == ("failed", 1200, 200)
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NULL AND id <= 1200") == 0
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NOT NULL AND id > 1200") == 0

    module(tmp_path, monkeypatch, name, RULE.format(check="pass"))  # the fix; the chunk continues from its checkpoint
    run_all(engine, spec)
    assert scalar(engine, MISMATCHES) == 0


def test_a_value_the_column_refuses_is_blamed_on_its_row_and_returned_column(engine, tmp_path, monkeypatch):
    seed_loyalty(engine, users=300)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE users ADD CONSTRAINT points_cap CHECK (loyalty_points <= 10000)"))
    name = module(tmp_path, monkeypatch, "over_cap",
                  "from rowfill.examples.loyalty import loyalty_points_columns\n"
                  "def loyalty_points(columns):\n"
                  "    out = loyalty_points_columns(columns)['loyalty_points']\n"
                  "    return {'loyalty_points': [10**6 if i == 142 else p for i, p in zip(columns['id'], out)]}\n")
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    assert "returns.loyalty_points fails at id 142" in str(caught.value) and "points_cap" in str(caught.value)
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NOT NULL") == 100  # the first batch
    assert scalar(engine, MISMATCHES + " AND u.id <= 100") == 0


def test_joins_that_give_a_row_twice_are_refused_in_the_columnar_form_too(engine, tmp_path):
    seed_loyalty(engine, users=300)
    spec = loyalty_spec(tmp_path, joins="JOIN public.orders o ON o.user_id = users.id",
                        select={"paid_orders": "1", "spent_cents": "CAST(o.amount * 100 AS bigint)"})
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    assert "`joins` gave more than one row for id 1;" in str(caught.value)
