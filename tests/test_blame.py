"""Errors name the row and the field (issue 9, kind 6): a batch that fails with a data error is
narrowed to the row, and the chunk's error names its key value and the spec field (`set.<column>`,
`sql`, `returns.<column>`, `where`), in the CLI output, the checkpoint (status, task log) and the
chunk-failure alert. Nothing of the failing batch is written; the batches before it stay."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from helpers import spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import ChunkFailed
from rowfill.ops.cli import main
from rowfill.store.checkpoint import CheckpointStore

# Every row is fine except the bad one, which breaks exactly one column's write.
# kind -> (column set, its expression, the bad row's data, SQLSTATE)
KINDS = {
    "division by zero": ("unit", "total / qty", "qty = 0", "22012"),
    "bad cast": ("unit", "CAST(raw AS int)", "raw = 'n/a'", "22P02"),
    "check violation": ("unit", "sign", "sign = -1", "23514"),
    "unique violation": ("code", "coalesce(tag, 'c' || {key_text})", "tag = {first_code}", "23505"),
    "foreign key violation": ("parent_id", "pref", "pref = 99", "23503"),
    "not-null violation": ("must", "maybe", "maybe = NULL", "23502"),
    "value too long": ("label", "word", "word = 'much too long'", "22001"),
}
KEYS = {
    "single": dict(key="id", columns="id int", bad="id = 137", bad_text="id 137", key_text="id",
                   first_code="'c5'", batch_one="id <= 100",
                   rows="SELECT g FROM generate_series(1, 300) g",
                   sql_range="id > :lo AND id <= :hi"),
    "composite": dict(key=["tenant", "id"], columns="tenant int, id int", bad="(tenant, id) = (2, 37)",
                      bad_text="(tenant, id) (2, 37)", key_text="tenant || '-' || id", first_code="'c1-5'",
                      batch_one="tenant = 1",
                      rows="SELECT t, g FROM generate_series(1, 3) t, generate_series(1, 100) g",
                      sql_range="(tenant, id) BETWEEN (:first_tenant, :first_id) AND (:last_tenant, :last_id)"),
}


def make_items(engine, keys: dict, bad_data: str) -> None:
    pk = "id" if keys["key"] == "id" else "tenant, id"
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE parents (id int PRIMARY KEY)"))
        conn.execute(text("INSERT INTO parents SELECT generate_series(1, 10)"))
        conn.execute(text(
            f"CREATE TABLE items ({keys['columns']}, total int NOT NULL DEFAULT 30, qty int NOT NULL DEFAULT 3, "
            "raw text NOT NULL DEFAULT '7', sign int NOT NULL DEFAULT 1, tag text, pref int NOT NULL DEFAULT 1, "
            "maybe text DEFAULT 'here', word text NOT NULL DEFAULT 'short', "
            "unit int CHECK (unit >= 0), code text UNIQUE, parent_id int REFERENCES parents, must text NOT NULL DEFAULT '', "
            f"label varchar(8), doubled int, PRIMARY KEY ({pk}))"))
        cols = "id" if keys["key"] == "id" else "tenant, id"
        conn.execute(text(f"INSERT INTO items ({cols}) {keys['rows']}"))
        conn.execute(text(f"UPDATE items SET {bad_data.format(**keys)} WHERE {keys['bad']}"))


def items_spec(tmp_path, keys: dict, kind: str, mode: str, **fields):
    column, expression, _, _ = KINDS[kind]
    expression = expression.format(**keys)
    if mode == "set":  # a column that is always fine comes first: the blame must pick the right one
        what = {"set": {"doubled": "total * 2", column: expression}}
    else:
        what = {"set": None, "sql": f"UPDATE items SET doubled = total * 2, {column} = {expression} "
                                    f"WHERE {keys['sql_range']} AND doubled IS NULL"}
    return spec_for(tmp_path, name="items_fill", table="public.items", key=keys["key"], where="doubled IS NULL",
                    chunk_rows=300, batch_rows=100, **what, **fields)


def written(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM items WHERE doubled IS NOT NULL")).scalar()


def run_failing(engine, spec) -> str:
    [chunk] = plan_backfill(engine, spec)
    with pytest.raises(ChunkFailed) as failed:
        ChunkRunner(engine, spec).run(chunk.chunk_no)
    return str(failed.value)


@pytest.mark.parametrize("keys", KEYS)
@pytest.mark.parametrize("mode", ["set", "sql"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_data_error_names_the_row_and_the_field_and_writes_nothing_of_its_batch(engine, tmp_path, kind, mode, keys):
    k = KEYS[keys]
    column, _, bad_data, sqlstate = KINDS[kind]
    make_items(engine, k, bad_data)
    spec = items_spec(tmp_path, k, kind, mode)
    message = run_failing(engine, spec)
    field = f"set.{column}" if mode == "set" else "sql"
    assert f"{field} fails at {k['bad_text']}: " in message, message
    assert f"(SQLSTATE {sqlstate})" in message
    assert "Nothing of the batch" in message
    # the first batch (100 rows) committed; nothing of the failing batch, nor after it
    assert written(engine) == 100
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM items WHERE doubled IS NOT NULL AND NOT ({k['batch_one']})")).scalar() == 0
    row = CheckpointStore(engine).chunks(spec.name)[0]
    assert row.status == "failed" and f"{field} fails at {k['bad_text']}" in row.last_error
    assert row.rows_written == 100


def test_two_rows_of_one_batch_that_clash_blame_the_second(engine, tmp_path):
    make_items(engine, KEYS["single"], "tag = 'same'")
    with engine.begin() as conn:
        conn.execute(text("UPDATE items SET tag = 'same' WHERE id = 120"))
    spec = spec_for(tmp_path, name="items_fill", table="public.items", where="doubled IS NULL", chunk_rows=300,
                    batch_rows=100, set={"doubled": "total * 2", "code": "coalesce(tag, 'c' || id)"})
    message = run_failing(engine, spec)
    assert "set.code fails at id 137: duplicate key value violates unique constraint" in message
    assert "Key (code)=(same) already exists" in message
    assert written(engine) == 100


def test_a_where_that_fails_on_a_row_is_named(engine, tmp_path):
    make_items(engine, KEYS["single"], "qty = 0")
    spec = spec_for(tmp_path, name="items_fill", table="public.items", where="doubled IS NULL AND 10 / qty > 0",
                    chunk_rows=300, batch_rows=100, set={"doubled": "total * 2"})
    assert "where fails at id 137: division by zero" in run_failing(engine, spec)
    assert written(engine) == 100


def test_a_transform_result_that_does_not_fit_names_the_returns_column(engine, tmp_path, monkeypatch):
    make_items(engine, KEYS["single"], "word = 'much too long'")
    (tmp_path / "items_rule.py").write_text(
        "def fill(rows):\n    return [{'doubled': r['total'] * 2, 'label': r['word']} for r in rows]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("items_rule", None)
    importlib.invalidate_caches()
    spec = spec_for(tmp_path, name="items_fill", table="public.items", where="doubled IS NULL", chunk_rows=300,
                    batch_rows=100, set=None, transform="items_rule:fill", select=["total", "word"],
                    returns=["doubled", "label"])
    message = run_failing(engine, spec)
    assert "returns.label fails at id 137: value too long for type character varying(8)" in message
    assert written(engine) == 100


def test_the_cli_status_and_the_alert_name_the_row_and_the_field(engine, db_url, tmp_path, monkeypatch, capsys):
    """What the field case does: `rowfill run` prints it; `rowfill status` and the chunk-failure alert
    (built from the task's exception, as Airflow hands it over) carry the same words."""
    from rowfill.airflow import alerts

    make_items(engine, KEYS["single"], "qty = 0")
    spec = items_spec(tmp_path, KEYS["single"], "division by zero", "set", retries=0)
    args = ["--db", db_url, "--specs-dir", str(tmp_path)]
    assert main([*args, "run", "items_fill"]) == 1
    err = capsys.readouterr().err
    assert "set.unit fails at id 137: division by zero" in err
    assert main([*args, "status", "--chunks"]) == 0
    assert "set.unit fails at id 137: division by zero" in capsys.readouterr().out

    monkeypatch.setenv("ROWFILL_DATABASE_URL", db_url)
    try:  # the task: the same runner, raising the same ChunkFailed into Airflow's log and callbacks
        ChunkRunner(engine, spec).run(1)
    except ChunkFailed as exc:
        error = exc
    context = {"ti": SimpleNamespace(map_index=0, try_number=1, run_id="manual__1"), "run_id": "manual__1",
               "task": SimpleNamespace(chunk={"chunk_no": 1, "label": "chunk 1/1 (id 1..300)"}), "exception": error}
    alert = alerts.chunk_failed_alert(spec, context)
    assert "set.unit fails at id 137: division by zero" in alert.text
    assert "Nothing of the batch (id 101..200) was written" in alert.text
    assert written(engine) == 100
