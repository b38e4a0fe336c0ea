"""Example data for the specs in include/specs/: orders for the loyalty points, products for search.

Used by scripts/seed_examples.py, the tests and the benchmarks, so all of them build the same
shapes. Deterministic (generate_series arithmetic, no random()), so a reference computed in SQL
and a run of the Python transform can be compared row for row. The statements are
``rowfill.sql.example_data``'s; this module runs them.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from rowfill.sql import example_data
from rowfill.sql.sqlnames import TableName

# re-exported: bench/reindex_speed.py builds the index CONCURRENTLY from this text
SEARCH_INDEX = example_data.SEARCH_INDEX

_USERS = TableName("public", "users")
_ORDERS = TableName("public", "orders")
_PRODUCTS = TableName("public", "products")


def seed_loyalty(engine: Engine, users: int | None = None, per_user: int = 6) -> dict:
    """``orders`` for the users (created first when ``users`` is given or the table is missing).

    :param engine: the target database. :param users: how many users to create (None: keep the
        table if it exists, else 100,000). :param per_user: orders per user on average.
    :returns: ``{"users": n, "orders": m}`` as counted afterwards.
    :raises sqlalchemy.exc.DBAPIError: the database refused a statement (e.g. no right to create tables).
    """
    with engine.begin() as conn:
        exists = conn.execute(*example_data.users_exist()).scalar() is not None
        if users is not None or not exists:
            conn.exec_driver_sql(example_data.DROP_USERS_AND_ORDERS)
            conn.exec_driver_sql(example_data.USERS_DDL)
            conn.execute(*example_data.fill_users(users or 100_000))
        conn.exec_driver_sql(example_data.ORDERS_DDL)
        conn.execute(*example_data.fill_orders(per_user))
        conn.exec_driver_sql(example_data.ORDERS_INDEX)
        counts = conn.execute(*example_data.counts()).one()
    _analyze(engine, _USERS, _ORDERS)
    return {"users": counts[0], "orders": counts[1]}


def seed_products(engine: Engine, products: int = 100_000, index: bool = True) -> dict:
    """``products`` with ``search_vector`` NULL and (by default) its GIN index already there.

    :param engine: the target database. :param products: how many. :param index: create the GIN index too.
    :returns: ``{"products": n}``.
    :raises sqlalchemy.exc.DBAPIError: the database refused a statement.
    """
    with engine.begin() as conn:
        conn.exec_driver_sql(example_data.PRODUCTS_DDL)
        conn.execute(*example_data.fill_products(products))
        if index:
            conn.exec_driver_sql(SEARCH_INDEX)
    _analyze(engine, _PRODUCTS)
    return {"products": products}


def _analyze(engine: Engine, *tables: TableName) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.exec_driver_sql(example_data.vacuum_analyze(table))
