"""Does a ``set`` write read anything besides the row it writes? If so, the batch locks its rows first.

One ``UPDATE ... SET points = (SELECT sum(amount) FROM orders ...)`` reads ``orders`` with the
snapshot the statement started with. When it then waits for a row lock held by an application
transaction that inserted an order *and* touched the user, PostgreSQL re-checks the locked row
(EvalPlanQual) but computes the subquery from the old snapshot: the order is missed and a stale
sum is written (PostgreSQL docs, 13.2.1 "Read Committed Isolation Level"). Locking the batch's
rows in one statement and writing in a second one fixes that: the second statement's snapshot
is taken after every lock was granted, so it sees every transaction that committed before.

The extra statement costs a second pass over the batch's key range, so it is only taken when
needed. Which relations and functions the expressions use is PostgreSQL's own answer: a
temporary view over ``SELECT <set expressions>, (<where>) FROM <table>`` is created inside a
savepoint, the dependencies of its rewrite rule are read from ``pg_depend`` (as ``DROP ... CASCADE``
would find them), and the savepoint is rolled back. Lock first when they include any relation
other than the table, or any function (directly or behind an operator, ``pg_operator.oprcode``)
that is not IMMUTABLE: a STABLE or VOLATILE function may read tables. When the probe itself
fails (no TEMP privilege, say), lock first: it is never wrong, only slower.
"""

from __future__ import annotations

import itertools
import os

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql import statements
from rowfill.sql.sqlnames import quote
from rowfill.sql.sqltext import driver, spec_sql

_probe_no = itertools.count(1)

def probe_expressions(spec: Spec) -> list[str]:
    """The spec's expressions a ``set`` write evaluates, as driver SQL composed by ``rowfill.sql.sqltext``:
    every ``set`` value and ``where``, each checked as one expression and wrapped in parentheses."""
    parsed = spec_sql(spec)
    return [e.wrapped() for e in [*parsed.set.values(), *([parsed.where] if parsed.where else [])]]


def lock_first_reason(conn: Connection, spec: Spec) -> str | None:
    """Why a ``set`` batch must lock its rows before writing them, or None when the single UPDATE is right.

    ``conn`` is inside the batch transaction; the probe runs in a savepoint that is always
    rolled back, so it leaves nothing behind (not even its locks). Returns what the expressions
    do, e.g. ``"read public.orders"`` or ``"call the VOLATILE function word_count(text)"``.
    """
    exprs = probe_expressions(spec)
    view = f"rowfill_probe_{os.getpid()}_{next(_probe_no)}"
    # rowfill's template with the checked expressions in its slots: driver SQL (an empty dict makes
    # psycopg un-double %%), user text never pasted, no line break relied on
    slots = {f"expr{i}": expr for i, expr in enumerate(exprs, 1)}
    create = driver(statements.probe_view(quote(view), len(exprs), spec.table.sql), slots)
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(create, {})
        reasons = pg_catalog.view_dependencies(conn, f"pg_temp.{view}", spec.table.sql)
    except DBAPIError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
        return f"could not be checked for what they read ({first})"
    finally:
        savepoint.rollback()
    return "; ".join(reasons) or None
