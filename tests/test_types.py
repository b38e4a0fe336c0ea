"""Every column type through transforms (issue 9, kind 9): what a transform returns is what the
table holds afterwards, for every type family a column can have: arrays of any length (ragged,
empty, NULL), json/jsonb, numeric, date/timestamp/timestamptz/interval, enums, domains, uuid,
bytea, and NULLs. One test per family; each reads the stored values back and compares them with
what the function returned. The transform functions live in this module (importable as
``test_types``, as a worker imports a transform) and return ``VALUES[id]``.

Every test runs for both batch forms (``batch_form: rows`` and ``columns``): the columnar
function returns the same values as columns, and the table must end the same. The one
difference: with columns there is no "leave this row alone" result, a None writes NULL."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from uuid import UUID

import pytest
from sqlalchemy import text

from helpers import spec_for
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import ChunkFailed
from rowfill.store.checkpoint import CheckpointStore

VALUES: dict[int, object] = {}  # id -> what the transform returns for that row
FORM = {"batch_form": "rows", "returns": [], "json_value": False}  # the form under test, set per test


@pytest.fixture(autouse=True, params=["rows", "columns"])
def batch_form(request):
    """Every test of this module runs once per batch form."""
    FORM["batch_form"] = request.param
    yield request.param


def fill(rows):
    return [VALUES[r["id"]] for r in rows]


def fill_columns(columns):
    """``fill`` over columns: the same per-row results, as ``{column: [value per row]}``.

    A per-row result that is a dict of the ``returns`` columns gives each column its value; a
    bare value is the one column's value (also a dict, for one json column); None is NULL.
    """
    results = [VALUES[i] for i in columns["id"]]
    returns = FORM["returns"]
    if len(returns) == 1 and (FORM["json_value"] or not any(isinstance(r, Mapping) for r in results)):
        return results
    return {c: [None if r is None else r[c] for r in results] for c in returns}


def form_fields() -> dict:
    """The spec fields of the form under test."""
    return {} if FORM["batch_form"] == "rows" else {"batch_form": "columns"}


def round_trip(engine, tmp_path, columns: str, values: dict, returns: list[str], **fields):
    """A table ``t`` (id + ``columns``), one row per key of ``values``; the transform writes ``values``."""
    VALUES.clear()
    VALUES.update(values)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE t (id int PRIMARY KEY, {columns})"))
        conn.execute(text("INSERT INTO t (id) SELECT unnest(CAST(:ids AS int[]))"), {"ids": sorted(values)})
    FORM["returns"] = returns
    FORM["json_value"] = len(returns) == 1 and bool(re.search(rf"\b{returns[0]} jsonb?\b", columns))
    columnar = FORM["batch_form"] == "columns"
    spec = spec_for(tmp_path, name="types", table="public.t", where=None, set=None,
                    transform="test_types:fill_columns" if columnar else "test_types:fill",
                    select=["id"], returns=returns, chunk_rows=100, batch_rows=3, **form_fields(), **fields)
    for chunk in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(chunk.chunk_no)
    return spec


def stored(engine, sql: str) -> dict:
    with engine.connect() as conn:
        return {r[0]: (r[1] if len(r) == 2 else tuple(r[1:])) for r in conn.execute(text(sql))}


@pytest.mark.parametrize("undo", [False, True])
def test_arrays_of_any_length_ragged_empty_null_and_nested(engine, tmp_path, undo):
    tags = {1: ["a", "b", "c"], 2: [], 3: None, 4: ["solo"], 5: ['with "quotes"', "a,b", "{braces}", "back\\slash", " "],
            6: [None, "x", None], 7: ["ünïcødé", "NULL"], 8: [], 9: ["a"] * 40}
    nums = {1: [[1, 2], [3, 4]], 2: [], 3: None, 4: [7], 5: [None], 6: [[None, 1]], 7: [-2147483648], 8: [1, 2, 3], 9: []}
    values = {k: {"tags": tags[k], "nums": nums[k], "codes": [f"c{k}"] * (k % 3)} for k in tags}
    round_trip(engine, tmp_path, "tags text[], nums int[], codes varchar(4)[]", values, ["tags", "nums", "codes"], undo=undo)
    got = stored(engine, "SELECT id, tags, nums, codes FROM t")
    assert got == {k: (tags[k], nums[k], [f"c{k}"] * (k % 3)) for k in tags}
    # an empty array is stored as an empty array, not NULL; NULL stays NULL
    assert stored(engine, "SELECT id, tags IS NULL, cardinality(tags) FROM t WHERE id IN (2, 3)") == {2: (False, 0), 3: (True, None)}
    if undo:
        assert stored(engine, "SELECT CAST(key ->> 'id' AS int), CAST(new ->> 'tags' AS text[]) FROM rowfill.undo_rows "
                              "WHERE backfill = 'types'") == tags


def test_an_array_element_too_long_for_its_column_fails_naming_the_row_and_column(engine, tmp_path):
    values = {k: {"codes": ["ok"], "tags": ["t"]} for k in range(1, 10)}
    values[5] = {"codes": ["ok", "far too long"], "tags": ["t"]}  # varchar(4)[]: refused, never cut to "far "
    with pytest.raises(ChunkFailed) as failed:
        round_trip(engine, tmp_path, "tags text[], codes varchar(4)[]", values, ["tags", "codes"])
    assert "returns.codes fails at id 5: value too long for type character varying(4)" in str(failed.value)
    assert stored(engine, "SELECT id, codes FROM t WHERE codes IS NOT NULL") == {1: ["ok"], 2: ["ok"], 3: ["ok"]}


def test_json_and_jsonb_values_of_every_shape(engine, tmp_path):
    docs = {1: {"a": 1, "b": [1, None, "x"], "c": {"d": True}}, 2: [1, 2, 3], 3: "text", 4: 12.5, 5: None,
            6: {}, 7: [], 8: {"quote": "he said \"hi\"", "ü": "ñ"}, 9: False}
    # a single jsonb column: the function's dict is the value itself (and None leaves the row alone);
    # psycopg's Jsonb(None) is JSON null
    from psycopg.types.json import Jsonb

    spec = round_trip(engine, tmp_path, "doc jsonb", {**docs, 10: {"doc": None}, 11: Jsonb(None)}, ["doc"])
    got = stored(engine, "SELECT id, CAST(doc AS text) FROM t")
    assert {k: None if v is None else json.loads(v) for k, v in got.items()} == {**docs, 10: {"doc": None}, 11: None}
    assert stored(engine, "SELECT id, doc IS NULL FROM t WHERE id IN (5, 11)") == {5: True, 11: False}
    # None leaves row 5 alone per row; as a column value it writes NULL (the same final data here)
    written = 10 if FORM["batch_form"] == "rows" else 11
    assert sum(c.rows_written for c in CheckpointStore(engine).chunks(spec.name)) == written


def test_json_and_jsonb_side_by_side_with_sql_null_and_json_null(engine, tmp_path):
    values = {1: {"j": {"k": [1, 2]}, "jb": {"k": {"n": None}}}, 2: {"j": None, "jb": None},
              3: {"j": [], "jb": "s"}, 4: {"j": 0, "jb": [{"deep": [{"er": 1}]}]}}
    round_trip(engine, tmp_path, "j json, jb jsonb", values, ["j", "jb"])
    got = stored(engine, "SELECT id, CAST(j AS text), CAST(jb AS text) FROM t")
    assert {k: tuple(None if v is None else json.loads(v) for v in pair) for k, pair in got.items()} == {
        k: (v["j"], v["jb"]) for k, v in values.items()}


def test_numeric_values_keep_their_exact_digits(engine, tmp_path):
    amounts = {1: Decimal("12345678901234567890.123456789"), 2: 3, 3: Decimal("-0.000000001"), 4: None, 5: 2.5,
               6: Decimal("0"), 7: 10**30, 8: Decimal("1E-20")}
    values = {k: {"amount": v, "price": None if v is None else Decimal("19.999")} for k, v in amounts.items()}
    round_trip(engine, tmp_path, "amount numeric, price numeric(10,2)", values, ["amount", "price"])
    got = stored(engine, "SELECT id, amount, price FROM t")
    assert {k: v[0] for k, v in got.items()} == {k: None if v is None else Decimal(str(v)) for k, v in amounts.items()}
    assert {v[1] for k, v in got.items() if k != 4} == {Decimal("20.00")}  # the column's scale, as an UPDATE rounds


def test_dates_timestamps_timestamptz_and_intervals(engine, tmp_path):
    berlin = dt.timezone(dt.timedelta(hours=2))
    values = {
        1: {"d": dt.date(2024, 2, 29), "ts": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
            "tz": dt.datetime(2024, 6, 1, 12, 0, tzinfo=berlin), "iv": dt.timedelta(days=400, seconds=3661, microseconds=5)},
        2: {"d": dt.date(1, 1, 1), "ts": dt.datetime(1, 1, 1), "tz": dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
            "iv": dt.timedelta(0)},
        3: {"d": dt.date(9999, 12, 31), "ts": dt.datetime(9999, 12, 31, 23, 59, 59),
            "tz": dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), "iv": -dt.timedelta(hours=5)},
        4: {"d": None, "ts": None, "tz": None, "iv": None},
    }
    round_trip(engine, tmp_path, "d date, ts timestamp, tz timestamptz, iv interval", values, ["d", "ts", "tz", "iv"])
    got = stored(engine, "SELECT id, d, ts, tz, iv FROM t")
    assert got == {k: (v["d"], v["ts"], v["tz"], v["iv"]) for k, v in values.items()}  # tz: the same instant
    assert stored(engine, "SELECT id, tz = '2024-06-01 10:00:00+00' FROM t WHERE id = 1") == {1: True}


def test_enums(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(text("CREATE TYPE mood AS ENUM ('happy', 'sad', 'in between')"))
    moods = {1: "happy", 2: "sad", 3: "in between", 4: None, 5: "happy"}
    round_trip(engine, tmp_path, "mood mood, moods mood[]", {k: {"mood": v, "moods": [v, "sad"]} for k, v in moods.items()},
               ["mood", "moods"])
    assert stored(engine, "SELECT id, CAST(mood AS text), CAST(moods AS text[]) FROM t") == {
        k: (v, [v, "sad"]) for k, v in moods.items()}


def test_an_enum_label_that_does_not_exist_fails_naming_the_row(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(text("CREATE TYPE mood AS ENUM ('happy', 'sad')"))
    with pytest.raises(ChunkFailed) as failed:
        round_trip(engine, tmp_path, "mood mood", {1: "happy", 2: "sad", 3: "sad", 4: "grumpy", 5: "happy"}, ["mood"])
    assert "returns.mood fails at id 4: invalid input value for enum mood: \"grumpy\"" in str(failed.value)
    assert stored(engine, "SELECT id, CAST(mood AS text) FROM t WHERE mood IS NOT NULL") == {1: "happy", 2: "sad", 3: "sad"}


def test_domains_are_written_and_their_checks_hold(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(text("CREATE DOMAIN percent AS numeric(5,2) CHECK (VALUE BETWEEN 0 AND 100)"))
        conn.execute(text("CREATE DOMAIN tag_list AS text[] CHECK (cardinality(VALUE) < 4)"))
        conn.execute(text("CREATE DOMAIN settings AS jsonb"))
    values = {1: {"pct": Decimal("12.5"), "tags": ["a", "b"], "conf": {"x": 1}},
              2: {"pct": 100, "tags": [], "conf": [1]},
              3: {"pct": None, "tags": None, "conf": None}}
    round_trip(engine, tmp_path, "pct percent, tags tag_list, conf settings", values, ["pct", "tags", "conf"])
    got = stored(engine, "SELECT id, pct, tags, CAST(conf AS text) FROM t")
    assert got == {1: (Decimal("12.50"), ["a", "b"], '{"x": 1}'), 2: (Decimal("100.00"), [], "[1]"), 3: (None, None, None)}

    with engine.begin() as conn:
        conn.execute(text("DROP TABLE t"))
        conn.execute(text("DELETE FROM rowfill.backfills"))
    with pytest.raises(ChunkFailed) as failed:
        round_trip(engine, tmp_path, "pct percent", {1: Decimal(5), 2: Decimal(50), 3: Decimal("100.01")}, ["pct"])
    assert "returns.pct fails at id 3: value for domain percent violates check constraint" in str(failed.value)


def test_uuids(engine, tmp_path):
    ids = {1: UUID(int=0), 2: UUID("3f2a9c1e-0000-4000-8000-00000000abcd"), 3: None, 4: UUID(int=2**128 - 1)}
    round_trip(engine, tmp_path, "u uuid, us uuid[]", {k: {"u": v, "us": [v, v]} for k, v in ids.items()}, ["u", "us"])
    assert stored(engine, "SELECT id, u, us FROM t") == {k: (v, [v, v]) for k, v in ids.items()}


def test_bytea(engine, tmp_path):
    blobs = {1: bytes(range(256)), 2: b"", 3: None, 4: b"\x00\\x00'\"", 5: b"\xff" * 10_000}
    round_trip(engine, tmp_path, "b bytea", {k: {"b": v} for k, v in blobs.items()}, ["b"])
    assert stored(engine, "SELECT id, b FROM t") == blobs


def test_nulls_of_every_type_and_rows_left_alone(engine, tmp_path):
    """A dict with None writes NULL; a bare None (with one column) leaves the row as it was."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TYPE mood AS ENUM ('happy')"))
    columns = ("a text[], j jsonb, n numeric, d date, tz timestamptz, iv interval, m mood, u uuid, b bytea, "
               "i int, s text")
    names = ["a", "j", "n", "d", "tz", "iv", "m", "u", "b", "i", "s"]
    full = {"a": ["x"], "j": {"k": 1}, "n": Decimal("1.5"), "d": dt.date(2024, 1, 1),
            "tz": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "iv": dt.timedelta(seconds=1), "m": "happy",
            "u": UUID(int=7), "b": b"\x01", "i": 1, "s": "x"}
    values = {1: full, 2: {c: None for c in names}, 3: {**full, "s": None, "j": None}}
    round_trip(engine, tmp_path, columns, values, names)
    got = stored(engine, f"SELECT id, {', '.join(names)} FROM t")
    assert got[2] == tuple([None] * len(names))
    assert got[1] == tuple(full[c] for c in names)
    assert got[3] == tuple(None if c in ("s", "j") else full[c] for c in names)


def test_a_single_column_none_leaves_the_row_alone(engine, tmp_path, batch_form):
    """Per row, a bare None leaves the row alone; in a returned column, None is the value NULL."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, tags text[])"))
        conn.execute(text("INSERT INTO t VALUES (1, NULL), (2, '{kept}'), (3, NULL)"))
    VALUES.clear()
    VALUES.update({1: ["new"], 2: None, 3: []})
    FORM.update(returns=["tags"], json_value=False)
    spec = spec_for(tmp_path, name="types", table="public.t", where=None, set=None,
                    transform="test_types:fill_columns" if batch_form == "columns" else "test_types:fill",
                    select=["id"], returns=["tags"], chunk_rows=100, batch_rows=2, **form_fields())
    [chunk] = plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(chunk.chunk_no)
    if batch_form == "rows":
        assert stored(engine, "SELECT id, tags FROM t") == {1: ["new"], 2: ["kept"], 3: []}
        assert CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).rows_written == 2
    else:
        assert stored(engine, "SELECT id, tags FROM t") == {1: ["new"], 2: None, 3: []}
        assert CheckpointStore(engine).chunk(spec.name, chunk.chunk_no).rows_written == 3


# -- values read for a transform are the column's values, exactly ------------------------------------

SEEN: list[dict] = []  # the rows copy_columns was given


def copy_columns(rows):
    """Passes every selected column through to ``<column>_copy``: a copy must be exact."""
    SEEN.extend(rows)
    return [{f"{k}_copy": v for k, v in r.items() if k != "id"} for r in rows]


def copy_columns_columns(columns):
    """``copy_columns`` over columns (``batch_form: columns``)."""
    n = len(columns["id"])
    SEEN.extend({k: v[i] for k, v in columns.items()} for i in range(n))
    return {f"{k}_copy": v for k, v in columns.items() if k != "id"}


def copy_through(engine, tmp_path, columns: list[tuple[str, str]], rows: str, **fields):
    """Table ``t`` with each (column, type) and its ``_copy``; ``rows``: INSERT ... SELECT text; a transform copies."""
    SEEN.clear()
    ddl = ", ".join(f"{c} {typ}, {c}_copy {typ}" for c, typ in columns)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE t (id int PRIMARY KEY, {ddl})"))
        conn.execute(text(f"INSERT INTO t (id, {', '.join(c for c, _ in columns)}) {rows}"))
    names = [c for c, _ in columns]
    function = "copy_columns_columns" if FORM["batch_form"] == "columns" else "copy_columns"
    spec = spec_for(tmp_path, name="copies", table="public.t", where=None, set=None, transform=f"test_types:{function}",
                    select=names, returns=[f"{c}_copy" for c in names], chunk_rows=100, batch_rows=2,
                    **form_fields(), **fields)
    for chunk in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(chunk.chunk_no)


def test_json_null_and_sql_null_stay_apart_when_a_transform_passes_them_through(engine, tmp_path):
    copy_through(engine, tmp_path, [("j", "jsonb"), ("js", "json")],
                 "VALUES (1, 'null', 'null'), (2, NULL, NULL), (3, '{\"a\": null}', '[null]'), (4, '0', '\"\"')")
    assert stored(engine, "SELECT id, j_copy IS NULL, j_copy, js_copy IS NULL, CAST(js_copy AS text) FROM t") == {
        1: (False, None, False, "null"), 2: (True, None, True, None), 3: (False, {"a": None}, False, "[null]"),
        4: (False, 0, False, '""')}


def test_arrays_of_enums_and_domains_over_them_are_read_as_lists_and_copied(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(text("CREATE TYPE mood AS ENUM ('sad', 'ok', 'très bien')"))
        conn.execute(text("CREATE DOMAIN moods AS mood[] CHECK (cardinality(VALUE) <= 3)"))
    copy_through(engine, tmp_path, [("m", "mood[]"), ("d", "moods"), ("m2", "mood[]")],
                 "VALUES (1, '{sad,NULL}', '{ok}', '{{sad,ok},{ok,sad}}'), (2, '{}', '{}', NULL), "
                 "(3, NULL, NULL, '{}'), (4, '{\"très bien\"}', '{sad,sad,sad}', '{{ok}}')")
    assert {r["id"]: r["m"] for r in SEEN} == {1: ["sad", None], 2: [], 3: None, 4: ["très bien"]}
    assert stored(engine, "SELECT id, count(*) FILTER (WHERE m_copy IS DISTINCT FROM m OR d_copy IS DISTINCT FROM d "
                          "OR m2_copy IS DISTINCT FROM m2) FROM t GROUP BY id") == {1: 0, 2: 0, 3: 0, 4: 0}


def test_an_interval_with_months_is_refused_not_read_as_30_days(engine, tmp_path):
    """A timedelta has no months: psycopg reads '1 mon' as 30 days, and a copy would write '30 days'."""
    with pytest.raises(ChunkFailed) as failed:
        copy_through(engine, tmp_path, [("iv", "interval")],
                     "VALUES (1, '2 days 03:00'), (2, '-1 days +00:00:00.000001'), (3, '1 year 2 mons'), (4, '1 mon')")
    assert "the interval '1 year 2 mons' has a month part" in str(failed.value)
    assert "as text" in str(failed.value)
    # the batch before it is copied exactly; nothing of the refused batch is written
    assert stored(engine, "SELECT id, iv_copy IS NOT DISTINCT FROM iv AND iv_copy IS NOT NULL FROM t") == {
        1: True, 2: True, 3: False, 4: False}


def test_a_transform_may_return_any_bytes_like_value_for_bytea(engine, tmp_path):
    blobs = {1: b"\x00b", 2: bytearray(b"\xffa"), 3: memoryview(b"mv"), 4: None}
    round_trip(engine, tmp_path, "b bytea", {k: {"b": v} for k, v in blobs.items()}, ["b"])
    assert stored(engine, "SELECT id, b FROM t") == {1: b"\x00b", 2: b"\xffa", 3: b"mv", 4: None}
