"""Hostile and unlucky names: every write mode, undo and its rollback, dry run, verify and status on a
schema, a table and key and written columns whose names hold an apostrophe, a double quote, ``;``,
``--``, a space (and a colon, ``%`` and a backslash), next to a canary table. Every name reaches
PostgreSQL quoted and every value bound, so the data ends right and the canary stays; the same for
tables named like PostgreSQL keywords and in mixed case."""

from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import text

from helpers import module
from rowfill.engine.plan import plan_backfill
from rowfill.engine.rollback import finish_rollback, plan_rollback, rollback_target
from rowfill.engine.runner import ChunkRunner
from rowfill.engine.undo import RestoreWriter, rollback_spec
from rowfill.engine.verify import verify_backfill
from rowfill.ops import cli
from rowfill.spec.spec import load_spec
from rowfill.sql.sqlnames import quote

ROWS = 1_250
CANARY_ROWS = 7

# Each name would end a statement, start a comment or close a string literal if it were pasted into
# SQL unquoted, or quoted the wrong way. The undo log's COMMENT ON TABLE once ran a second statement
# from a table name like TABLE's.
HOSTILE = {
    "schema": "app's \"data\"; -- s",
    "table": "it's \"t\"; DROP TABLE public.canary; -- x",
    "key": "i'd \"k\"; -- k",
    "source": "sr'c \"s\"; --",
    "written": "va'l \"v\"; -- :v",
}
# Colons (SQLAlchemy's text() reads " :name" as a bind), percent signs (psycopg's placeholders) and a
# backslash before a quote (escapes in some tokenizers, not in a PostgreSQL identifier); the key's
# type is a domain whose name has them too (rowfill casts every bound key value to it).
ODD = {
    "schema": "pct 100% :s",
    "table": "odd :lo %(hi)s \\",
    "key": "k :hi 5%",
    "source": "src %s",
    "written": "w \\\" :x",
    "key_type": "d%o :m",
}
KEYWORDS = {"schema": "select", "table": "order", "key": "user", "source": "from", "written": "where"}
MIXED = {"schema": "MixedCase", "table": "Orders", "key": "ID", "source": "Amount", "written": "Total"}

NAMESETS = [pytest.param(HOSTILE, id="hostile"), pytest.param(ODD, id="colon-percent-backslash"),
            pytest.param(KEYWORDS, id="keywords"), pytest.param(MIXED, id="mixed-case")]


def user_quote(name: str) -> str:
    """How a person writes the name in the spec's SQL: double-quoted; with a backslash, in PostgreSQL's
    Unicode-escape form (U&"..." UESCAPE '!'), because rowfill refuses a backslash before a quote in
    user SQL (a tokenizer could read it as an escape; PostgreSQL does not)."""
    if "\\" not in name:
        return quote(name)
    return 'U&' + quote(name.replace("!", "!!").replace("\\", "!005c")) + " UESCAPE '!'"


class Names:
    """The names of one test: ``*_sql`` as rowfill's tests write them, the plain ones as user SQL in specs does."""

    def __init__(self, names: dict):
        self.n = names
        self.table_sql = f"{quote(names['schema'])}.{quote(names['table'])}"
        self.key_sql, self.src_sql, self.val_sql = (quote(names[k]) for k in ("key", "source", "written"))
        self.table = f"{user_quote(names['schema'])}.{user_quote(names['table'])}"
        self.key, self.src, self.val = (user_quote(names[k]) for k in ("key", "source", "written"))

    @property
    def table_spec(self) -> str:
        """The table as a spec's `table` field writes it: schema.table, both double-quoted."""
        return self.table_sql


def run(conn, sql: str):
    """The test's own SQL, run as written (``%`` doubled for the driver; no parameters)."""
    return conn.exec_driver_sql(sql.replace("%", "%%"), {})


def scalar(engine, sql: str):
    with engine.connect() as conn:
        return run(conn, sql).scalar()


def setup_tables(engine, nm: Names) -> None:
    """The hostile table (key 1..ROWS, source = key, written NULL) and a canary with known content."""
    with engine.begin() as conn:
        run(conn, f"CREATE SCHEMA {quote(nm.n['schema'])}")
        key_type = "bigint"
        if "key_type" in nm.n:
            key_type = f"{quote(nm.n['schema'])}.{quote(nm.n['key_type'])}"
            run(conn, f"CREATE DOMAIN {key_type} AS bigint")
        run(conn, f"CREATE TABLE {nm.table_sql} ({nm.key_sql} {key_type} PRIMARY KEY, {nm.src_sql} integer NOT NULL, "
                  f"{nm.val_sql} integer)")
        run(conn, f"INSERT INTO {nm.table_sql} SELECT g, g FROM generate_series(1, {ROWS}) g")
        run(conn, "CREATE TABLE public.canary (id int PRIMARY KEY, note text NOT NULL)")
        run(conn, f"INSERT INTO public.canary SELECT g, 'canary ' || g FROM generate_series(1, {CANARY_ROWS}) g")


def canary_intact(engine) -> bool:
    return scalar(engine, "SELECT string_agg(note, ',' ORDER BY id) FROM public.canary") == ",".join(
        f"canary {i}" for i in range(1, CANARY_ROWS + 1))


def written(engine, nm: Names) -> dict:
    """How many rows hold each kind of value in the written column: NULL, the expected value, anything else."""
    with engine.connect() as conn:
        v, src = nm.val_sql, nm.src_sql
        row = run(conn, f"SELECT count(*) FILTER (WHERE {v} IS NULL), count(*) FILTER (WHERE {v} = {src} * 2), "
                        f"count(*) FILTER (WHERE {v} IS NOT NULL AND {v} <> {src} * 2), count(*) FROM {nm.table_sql}").one()
    return {"null": row[0], "right": row[1], "wrong": row[2], "rows": row[3]}


def write_spec(tmp_path, nm: Names, name: str, **fields):
    data = {"name": name, "connection": "app_db", "table": nm.table_spec, "key": quote(nm.n["key"]),
            "chunk_rows": 500, "batch_rows": 100, "pause": 0, "target_batch_time": "off", "pause_ratio": 0, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return load_spec(path)


def set_fields(nm: Names) -> dict:
    return {"where": f"{nm.val} IS NULL", "set": {quote(nm.n["written"]): f"{nm.src} * 2"}}


def rowfill(db_url, tmp_path, *args) -> int:
    return cli.main(["--specs-dir", str(tmp_path), "--db", db_url, *args])



@pytest.fixture(params=NAMESETS)
def nm(request, engine):
    names = Names(request.param)
    setup_tables(engine, names)
    return names


def test_set_mode_plan_run_verify_and_status(nm, engine, db_url, tmp_path, capsys):
    spec = write_spec(tmp_path, nm, "hostile_set", **set_fields(nm))
    assert rowfill(db_url, tmp_path, "plan", spec.name) == 0  # dry run: nothing written
    assert "dry run: nothing was changed" in capsys.readouterr().out
    assert written(engine, nm)["null"] == ROWS

    assert rowfill(db_url, tmp_path, "run", spec.name) == 0
    assert written(engine, nm) == {"null": 0, "right": ROWS, "wrong": 0, "rows": ROWS}
    assert verify_backfill(engine, spec).remaining == 0
    capsys.readouterr()

    assert rowfill(db_url, tmp_path, "status", spec.name, "--chunks") == 0
    out = capsys.readouterr().out
    assert "chunks: 3/3 done, 0 running, 0 waiting, 0 failed; 1,250 rows written" in out
    assert f"{nm.n['key']} 1001..1250" in out and "table:" not in out  # the table has not changed since planning
    assert rowfill(db_url, tmp_path, "status", spec.name, "--json") == 0
    status = json.loads(capsys.readouterr().out)[0]
    assert status["rows_written"] == ROWS and "table_problem" not in status
    assert canary_intact(engine)


def test_sql_mode(nm, engine, db_url, tmp_path, capsys):
    # :lo/:hi are for integer keys; a domain over bigint is walked like any other type, with :first/:last
    rng = f"{nm.key} BETWEEN :first AND :last" if "key_type" in nm.n else f"{nm.key} > :lo AND {nm.key} <= :hi"
    sql = f"UPDATE {nm.table} SET {nm.val} = {nm.src} * 2 WHERE {rng} AND {nm.val} IS NULL"
    spec = write_spec(tmp_path, nm, "hostile_sql", sql=sql)
    assert rowfill(db_url, tmp_path, "plan", spec.name) == 0
    assert written(engine, nm)["null"] == ROWS
    assert rowfill(db_url, tmp_path, "run", spec.name) == 0
    assert written(engine, nm) == {"null": 0, "right": ROWS, "wrong": 0, "rows": ROWS}
    assert verify_backfill(engine, spec).chunks == 3
    assert canary_intact(engine)


TRANSFORM = """
def double(rows):
    return [{{{val!r}: r[{src!r}] * 2}} for r in rows]
"""


def test_transform_mode(nm, engine, db_url, tmp_path, monkeypatch, capsys):
    name = module(tmp_path, monkeypatch, "hostile_rules", TRANSFORM.format(val=nm.n["written"], src=nm.n["source"]))
    spec = write_spec(tmp_path, nm, "hostile_transform", where=f"{nm.val} IS NULL", transform=f"{name}:double",
                      select=[quote(nm.n["source"])], returns=[quote(nm.n["written"])])
    assert rowfill(db_url, tmp_path, "plan", spec.name) == 0
    assert written(engine, nm)["null"] == ROWS
    assert rowfill(db_url, tmp_path, "run", spec.name) == 0
    assert written(engine, nm) == {"null": 0, "right": ROWS, "wrong": 0, "rows": ROWS}
    assert verify_backfill(engine, spec).remaining == 0
    assert canary_intact(engine)


SINK = """
import json
def send(batch):
    with open({log!r}, "a") as out:
        out.write(json.dumps([[r[{key!r}], r[{src!r}]] for r in batch.rows]) + "\\n")
"""


def test_sink_mode(nm, engine, db_url, tmp_path, monkeypatch, capsys):
    log = tmp_path / "sent.jsonl"
    name = module(tmp_path, monkeypatch, "hostile_sink", SINK.format(log=str(log), key=nm.n["key"], src=nm.n["source"]))
    spec = write_spec(tmp_path, nm, "hostile_sink_spec", sink=f"{name}:send", select=[quote(nm.n["source"])],
                      where=f"{nm.src} % 5 <> 0")
    assert rowfill(db_url, tmp_path, "plan", spec.name) == 0
    assert not log.exists()  # a dry run sends nothing
    assert rowfill(db_url, tmp_path, "run", spec.name) == 0
    sent = [pair for line in log.read_text().splitlines() for pair in json.loads(line)]
    assert sorted(sent) == [[k, k] for k in range(1, ROWS + 1) if k % 5]
    assert written(engine, nm)["null"] == ROWS  # a sink writes nothing back
    assert canary_intact(engine)


def test_undo_and_both_rollback_paths(nm, engine, db_url, tmp_path, capsys):
    with engine.begin() as conn:  # some rows hold a value already: the rollback must put it back, not NULL
        run(conn, f"UPDATE {nm.table_sql} SET {nm.val_sql} = -{nm.key_sql} WHERE {nm.key_sql} % 10 = 0")
    before = scalar(engine, f"SELECT md5(string_agg(t::text, ',' ORDER BY {nm.key_sql})) FROM {nm.table_sql} t")
    spec = write_spec(tmp_path, nm, "hostile_undo", set={quote(nm.n["written"]): f"{nm.src} * 2"},
                      where=f"{nm.val} IS NULL OR {nm.val} < 0", undo=True)
    assert rowfill(db_url, tmp_path, "plan", spec.name) == 0  # a dry run creates no undo log either
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows") == 0

    # the `rowfill rollback` path
    assert rowfill(db_url, tmp_path, "run", spec.name) == 0
    assert written(engine, nm) == {"null": 0, "right": ROWS, "wrong": 0, "rows": ROWS}
    # the hostile column names are recorded as they are, as the keys of the undo records
    assert scalar(engine, "SELECT count(*) FROM rowfill.undo_rows WHERE backfill = 'hostile_undo'") == ROWS
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT new FROM rowfill.undo_rows WHERE backfill = 'hostile_undo' LIMIT 1")).scalar()
    assert set(recorded) == {nm.n["written"]}
    assert rowfill(db_url, tmp_path, "rollback", spec.name, "--yes") == 0
    assert f"{ROWS:,} rows restored" in capsys.readouterr().out
    assert scalar(engine, f"SELECT md5(string_agg(t::text, ',' ORDER BY {nm.key_sql})) FROM {nm.table_sql} t") == before
    assert canary_intact(engine)

    # again, through the rollback's own planning and the RestoreWriter, as the rollback DAG runs it
    for chunk in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(chunk.chunk_no)
    assert written(engine, nm)["right"] == ROWS
    rb = rollback_spec(spec)
    chunks = plan_rollback(engine, spec)
    forward = rollback_target(engine, spec)
    for chunk in chunks:
        ChunkRunner(engine, rb, writer=RestoreWriter(rb, forward)).run(chunk.chunk_no)
    assert finish_rollback(engine, spec).restored == ROWS
    assert scalar(engine, f"SELECT md5(string_agg(t::text, ',' ORDER BY {nm.key_sql})) FROM {nm.table_sql} t") == before
    assert canary_intact(engine)


def test_an_undo_transform_and_its_rollback(nm, engine, db_url, tmp_path, monkeypatch, capsys):
    name = module(tmp_path, monkeypatch, "hostile_undo_rules", TRANSFORM.format(val=nm.n["written"], src=nm.n["source"]))
    spec = write_spec(tmp_path, nm, "hostile_undo_t", where=f"{nm.val} IS NULL", transform=f"{name}:double",
                      select=[quote(nm.n["source"])], returns=[quote(nm.n["written"])], undo=True)
    assert rowfill(db_url, tmp_path, "run", spec.name) == 0
    assert written(engine, nm) == {"null": 0, "right": ROWS, "wrong": 0, "rows": ROWS}
    assert rowfill(db_url, tmp_path, "rollback", spec.name, "--yes") == 0
    assert written(engine, nm)["null"] == ROWS
    assert canary_intact(engine)
