"""Python transforms against a real PostgreSQL: the loyalty points example equals the same rule
computed in one SQL query, application writes made during the run are never overwritten with
values computed from older data, and a transform that raises names the row and leaves the
checkpoint at the last good batch, so the fixed function continues from there."""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import text

from helpers import example_spec, module, spec_for
from rowfill.engine.database import engine_from_url
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import ChunkFailed, SpecError
from rowfill.examples.loyalty import REFERENCE_SQL
from rowfill.examples.seed import seed_loyalty
from rowfill.store.checkpoint import CheckpointStore

MISMATCHES = f"SELECT count(*) FROM public.users u JOIN ({REFERENCE_SQL}) r USING (id) WHERE u.loyalty_points IS DISTINCT FROM r.points"


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def run_all(engine, spec, **kw):
    return [ChunkRunner(engine, spec, **kw).run(c.chunk_no) for c in plan_backfill(engine, spec)]


def rows_state(engine, where: str = "TRUE") -> str:
    """Every row's content and row version: a row rewritten even with the same value changes it."""
    return scalar(engine, f"SELECT md5(string_agg(u.id || ':' || u.xmin || ':' || u::text, ',' ORDER BY u.id)) FROM users u WHERE {where}")


def loyalty_spec(tmp_path, **changes):
    return example_spec(tmp_path, "users_loyalty_points", **{"chunk_rows": 1_000, "batch_rows": 100, "pause": 0, **changes})



# -- the loyalty points example ---------------------------------------------------------------


def test_loyalty_points_equal_the_rule_computed_in_one_sql_query(engine, tmp_path):
    counts = seed_loyalty(engine, users=3_000)
    assert counts["orders"] > 4 * counts["users"]  # orders several times larger than users
    spec = loyalty_spec(tmp_path)
    results = run_all(engine, spec)
    assert sum(r.rows_written for r in results) == 3_000
    assert scalar(engine, MISMATCHES) == 0
    # the data reaches every part of the rule, so the comparison means something
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points = 0") > 100  # no paid orders
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points = 10000") > 10  # the cap
    assert scalar(engine, "SELECT count(DISTINCT loyalty_points) FROM users") > 300
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points % 5 <> 0") == 0  # rounded to 5
    assert run_all(engine, spec) == []  # nothing left


WHERES = {"fill the missing values": "loyalty_points IS NULL", "recompute everyone": None}


class Application(threading.Thread):
    """The live application: adds and changes orders and users, keeping loyalty_points right for each
    user it touches, in the same transaction. It aims at the users the backfill is about to batch."""

    def __init__(self, url: str, backfill: str, seed: int):
        super().__init__(daemon=True)
        self.engine = engine_from_url(url)
        self.backfill = backfill
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.writes = 0
        self.error = None

    def near_the_backfill(self, conn) -> int:
        cursor = conn.execute(text("SELECT coalesce(max((cursor #>> '{}')::bigint), 0) FROM rowfill.chunks "
                                   "WHERE backfill = :n AND status = 'running'"), {"n": self.backfill}).scalar()
        top = conn.execute(text("SELECT max(id) FROM users")).scalar()
        return min(top, cursor + self.rng.randint(1, 250))

    def run(self):
        try:
            while not self.stop.is_set():
                with self.engine.begin() as conn:
                    user = self.near_the_backfill(conn)
                    op = self.rng.random()
                    if op < 0.5:
                        conn.execute(text("INSERT INTO orders (id, user_id, amount, status, created_at) "
                                          "SELECT max(id) + 1, :u, :a, 'paid', now() FROM orders"),
                                     {"u": user, "a": Decimal(self.rng.randint(500, 90_000)) / 100})
                    elif op < 0.85:
                        conn.execute(text("UPDATE orders SET status = CASE status WHEN 'paid' THEN 'refunded' ELSE 'paid' END, "
                                          "amount = amount + 1.25 WHERE id = (SELECT min(id) FROM orders WHERE user_id = :u)"),
                                     {"u": user})
                    else:
                        user = conn.execute(text("INSERT INTO users (id, first_name, last_name) SELECT max(id) + 1, 'new', "
                                                 "'user' FROM users RETURNING id")).scalar()
                    conn.execute(text(f"UPDATE users SET loyalty_points = (SELECT r.points FROM ({REFERENCE_SQL}) r "
                                      "WHERE r.id = :u) WHERE id = :u"), {"u": user})
                self.writes += 1
                time.sleep(self.rng.uniform(0, 0.004))
        except Exception as exc:  # reported by the test
            self.error = exc
        finally:
            self.engine.dispose()


@pytest.mark.parametrize("where", list(WHERES.values()), ids=list(WHERES))
def test_application_writes_during_the_run_are_never_overwritten_with_stale_values(engine, db_url, tmp_path, monkeypatch, where):
    seed_loyalty(engine, users=4_000)
    # a slower rule widens the window between reading a batch and writing it
    slow = module(tmp_path, monkeypatch, "slow_loyalty",
                  "import time\nfrom rowfill.examples.loyalty import loyalty_points as rule\n"
                  "def loyalty_points(rows):\n    time.sleep(0.03)\n    return rule(rows)\n")
    spec = loyalty_spec(tmp_path, transform=f"{slow}:loyalty_points", where=where, batch_rows=50)
    app = Application(db_url, spec.name, seed=len(where or ""))
    chunks = plan_backfill(engine, spec)
    app.start()
    try:
        results = [ChunkRunner(engine, spec).run(c.chunk_no) for c in chunks]
    finally:
        app.stop.set()
        app.join(30)
    assert app.error is None, app.error
    assert sum(r.batches for r in results) >= 80 and app.writes >= 80, (app.writes, results)
    assert scalar(engine, MISMATCHES) == 0


# -- failures ---------------------------------------------------------------------------------

RULE = """
from rowfill.examples.loyalty import points_for

def loyalty_points(rows):
    out = []
    for r in rows:
        {check}
        out.append(points_for(r["paid_orders"], r["spent_cents"]))
    return out
"""


def test_a_transform_that_raises_names_the_row_and_the_fixed_function_continues_from_the_checkpoint(engine, tmp_path, monkeypatch):
    seed_loyalty(engine, users=3_000)
    name = module(tmp_path, monkeypatch, "points_rule",
                  RULE.format(check='if r["id"] == 1234: raise ValueError("no tier for user " + str(r["id"]))'))
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    first, second, third = plan_backfill(engine, spec)
    ChunkRunner(engine, spec).run(first.chunk_no)
    with pytest.raises(ChunkFailed) as caught:
        ChunkRunner(engine, spec, label=second.label).run(second.chunk_no)
    message = str(caught.value)
    assert "raised ValueError: no tier for user 1234 at id 1234" in message
    assert "chunk 2/3 (id 1001..2000)" in message and "resumes from the checkpoint" in message

    row = CheckpointStore(engine).chunk(spec.name, second.chunk_no)
    assert (row.status, row.cursor, row.rows_written, row.batches) == ("failed", 1200, 200, 2)
    assert "id 1234" in row.last_error
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NULL AND id <= 1200") == 0
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NOT NULL AND id > 1200") == 0
    done_before = rows_state(engine, "id <= 1200")

    # the fix is deployed (a new worker process imports the new code) and the chunk is cleared
    module(tmp_path, monkeypatch, name, RULE.format(check="pass"))
    again = plan_backfill(engine, spec)
    assert [c.chunk_no for c in again] == [2, 3]
    resumed = [ChunkRunner(engine, spec).run(c.chunk_no) for c in again]
    assert (resumed[0].rows_seen, resumed[0].batches) == (800, 8)  # from the cursor, not from the chunk start
    assert CheckpointStore(engine).chunk(spec.name, 2).attempts == 2
    assert rows_state(engine, "id <= 1200") == done_before  # rows done before the failure were not written again
    assert scalar(engine, MISMATCHES) == 0


def test_a_batch_that_fails_only_as_a_whole_names_its_key_range(engine, tmp_path, monkeypatch):
    seed_loyalty(engine, users=500)
    name = module(tmp_path, monkeypatch, "batch_rule",
                  "def loyalty_points(rows):\n    if len(rows) > 1:\n        raise RuntimeError('quota exceeded')\n"
                  "    return [0]\n")
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    assert "raised RuntimeError: quota exceeded for the batch id 1..100 (no single row of it raises on its own)" in str(caught.value)


@pytest.mark.parametrize("body, expected", [
    ("return [{'loyalty_points': 1, 'loyalty_point': 2} for r in rows]", "expected exactly the `returns` columns"),
    ("return [1] * (len(rows) - 1)", "returned 99 results for 100 rows"),
    ("return [{'points': 1} for r in rows]", "missing ['loyalty_points']"),
], ids=["extra column", "too few results", "missing column"])
def test_results_that_do_not_fit_the_returns_columns_fail_the_batch_with_advice(engine, tmp_path, monkeypatch, body, expected):
    seed_loyalty(engine, users=300)
    name = module(tmp_path, monkeypatch, "wrong_shape", f"def loyalty_points(rows):\n    {body}\n")
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    assert expected in str(caught.value)
    assert scalar(engine, "SELECT count(*) FROM users WHERE loyalty_points IS NOT NULL") == 0


def test_joins_that_give_a_row_twice_are_refused_naming_the_key(engine, tmp_path):
    seed_loyalty(engine, users=300)
    spec = loyalty_spec(tmp_path, joins="JOIN public.orders o ON o.user_id = users.id",
                        select={"paid_orders": "1", "spent_cents": "CAST(o.amount * 100 AS bigint)"})
    with pytest.raises(ChunkFailed) as caught:
        run_all(engine, spec)
    assert "`joins` gave more than one row for id 1;" in str(caught.value)
    assert "LEFT JOIN LATERAL" in str(caught.value)


def test_a_transform_that_cannot_be_imported_says_where_modules_must_live(engine, tmp_path):
    seed_loyalty(engine, users=10)
    spec = loyalty_spec(tmp_path, transform="no_such_package.rules:points")
    with pytest.raises(SpecError) as caught:
        plan_backfill(engine, spec)
    assert caught.value.field == "transform"
    assert "cannot import 'no_such_package.rules'" in caught.value.problem
    assert "in the DAG bundle" in caught.value.problem and "PYTHONPATH" in caught.value.problem
    assert CheckpointStore(engine).backfill_names() == []


def test_a_rule_returning_ints_for_some_rows_and_decimals_for_others_is_written(engine, tmp_path, monkeypatch):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (tenant_id integer NOT NULL, id uuid NOT NULL, balance numeric(12, 2) NOT NULL, "
                          "fee numeric(12, 2), note text, PRIMARY KEY (tenant_id, id))"))
        conn.execute(text("INSERT INTO accounts SELECT g % 3, md5('a' || g)::uuid, g * 1.5, NULL, NULL FROM generate_series(1, 700) g"))
    name = module(tmp_path, monkeypatch, "fees",
                  "from decimal import Decimal\n"
                  "def fee(rows):\n"
                  "    return [{'fee': 0 if r['balance'] < 100 else r['balance'] * Decimal('0.01'),\n"
                  "             'note': None if r['tenant_id'] == 0 else f\"tenant {r['tenant_id']}\"} for r in rows]\n")
    spec = spec_for(tmp_path, name="account_fees", table="accounts", key=["tenant_id", "id"], where="fee IS NULL",
                    set=None, transform=f"{name}:fee", select=["balance"], returns=["fee", "note"], chunk_rows=300, batch_rows=40)
    results = run_all(engine, spec)
    assert sum(r.rows_written for r in results) == 700
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE fee IS DISTINCT FROM "
                          "CASE WHEN balance < 100 THEN 0 ELSE round(balance * 0.01, 2) END") == 0
    assert scalar(engine, "SELECT count(*) FROM accounts WHERE note IS DISTINCT FROM "
                          "CASE WHEN tenant_id = 0 THEN NULL ELSE 'tenant ' || tenant_id END") == 0


def test_returning_none_leaves_a_row_alone(engine, tmp_path, monkeypatch):
    seed_loyalty(engine, users=400)
    name = module(tmp_path, monkeypatch, "odd_only",
                  "from rowfill.examples.loyalty import points_for\n"
                  "def loyalty_points(rows):\n"
                  "    return [points_for(r['paid_orders'], r['spent_cents']) if r['id'] % 2 else None for r in rows]\n")
    untouched = rows_state(engine, "id % 2 = 0")
    spec = loyalty_spec(tmp_path, transform=f"{name}:loyalty_points")
    results = run_all(engine, spec)
    assert sum(r.rows_written for r in results) == 200 and sum(r.rows_seen for r in results) == 400
    assert rows_state(engine, "id % 2 = 0") == untouched
    assert scalar(engine, MISMATCHES + " AND u.id % 2 = 1") == 0
