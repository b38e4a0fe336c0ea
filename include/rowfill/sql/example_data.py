"""Statements over the example tables (``public.users``, ``orders``, ``products``) that the specs in
include/specs/, the demo, the tests and the benchmarks use: their DDL and deterministic seed data
(``rowfill.examples.seed`` runs them), and the loyalty rule in SQL (``rowfill.examples.loyalty``
re-exports it, to compare with the Python rule).

They are statements over the user's tables, so they are built here like every other one; the
example modules only run them. Seed data is generate_series arithmetic, no random(), so a
reference computed in SQL and a run of the Python transform can be compared row for row. The
multi-statement DDL texts are for ``exec_driver_sql`` (no parameters); the fills take bound values.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.sql.elements import TextClause

from rowfill.sql.sqlnames import TableName

Statement = tuple[TextClause, dict]

# -- the tables and their seed data -----------------------------------------------------------

USERS_DDL = """
CREATE TABLE IF NOT EXISTS public.users (
    id          bigint PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    full_name   text,
    points      integer NOT NULL DEFAULT 0
)
"""

USERS_FILL = """
INSERT INTO public.users (id, first_name, last_name, email)
SELECT g, 'first' || g, 'last' || g, 'user' || g || '@example.com' FROM generate_series(1, :n) g
"""

ORDERS_DDL = """
DROP TABLE IF EXISTS public.orders;
ALTER TABLE public.users ADD COLUMN IF NOT EXISTS loyalty_points integer;
UPDATE public.users SET loyalty_points = NULL WHERE loyalty_points IS NOT NULL;
CREATE TABLE public.orders (
    id         bigint PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES public.users (id),
    amount     numeric(10, 2) NOT NULL,
    status     text NOT NULL CHECK (status IN ('paid', 'refunded', 'pending')),
    created_at timestamptz NOT NULL
);
"""

# About `per_user` orders per user on average, unevenly: every 7th user has none, a few have
# many (so every tier and the order-bonus cap are reached); amounts 5.00 .. 404.99.
ORDERS_FILL = """
INSERT INTO public.orders (id, user_id, amount, status, created_at)
SELECT row_number() OVER (), u.id,
       5 + ((u.id * 7919 + k * 104729) % 40000) / 100.0,
       CASE WHEN (u.id + k) % 10 = 0 THEN 'refunded' WHEN (u.id + k) % 20 = 1 THEN 'pending' ELSE 'paid' END,
       timestamptz '2021-01-01' + ((u.id * 31 + k * 17) % 100000) * interval '5 minutes'
FROM public.users u
CROSS JOIN LATERAL generate_series(1, CASE WHEN u.id % 7 = 0 THEN 0
                                           WHEN u.id % 97 = 0 THEN :per_user * 8
                                           ELSE 1 + (u.id * 13) % (2 * :per_user - 1) END) AS k
"""

PRODUCTS_DDL = """
DROP TABLE IF EXISTS public.products;
CREATE TABLE public.products (
    id            bigint PRIMARY KEY,
    name          text NOT NULL,
    category      text NOT NULL,
    description   text NOT NULL,
    price         numeric(10, 2) NOT NULL,
    search_vector tsvector
);
"""

PRODUCTS_FILL = """
INSERT INTO public.products (id, name, category, description, price)
SELECT g,
       (ARRAY['Solid','Light','Quiet','Rugged','Compact','Classic','Smart','Folding'])[1 + g % 8] || ' ' ||
       (ARRAY['kettle','lamp','chair','backpack','speaker','tent','bicycle','blender','monitor','jacket'])[1 + (g / 8) % 10] ||
       ' ' || g,
       (ARRAY['kitchen','outdoor','office','audio','sports','home'])[1 + g % 6],
       'A ' || (ARRAY['durable','handmade','recycled','award-winning','lightweight'])[1 + g % 5] || ' ' ||
       (ARRAY['kettle','lamp','chair','backpack','speaker','tent','bicycle','blender','monitor','jacket'])[1 + (g / 8) % 10] ||
       ' for ' || (ARRAY['travel','families','professionals','students','camping','everyday use'])[1 + (g / 3) % 6] ||
       ', shipped in ' || (ARRAY['recycled cardboard','a gift box','plain packaging'])[1 + g % 3] || '.',
       5 + (g * 37 % 50000) / 100.0
FROM generate_series(1, :n) g
"""

SEARCH_INDEX = "CREATE INDEX products_search_vector_idx ON public.products USING gin (search_vector)"

# ``orders`` and ``users`` dropped together: the loyalty seed starts over when it creates users
DROP_USERS_AND_ORDERS = "DROP TABLE IF EXISTS public.orders; DROP TABLE IF EXISTS public.users CASCADE"
ORDERS_INDEX = "CREATE INDEX orders_user_id_idx ON public.orders (user_id)"

_USERS_EXIST = text("SELECT to_regclass('public.users')")
_COUNTS = text("SELECT (SELECT count(*) FROM public.users), (SELECT count(*) FROM public.orders)")


def users_exist() -> Statement:
    """One row: the OID of ``public.users``, NULL when it does not exist (``to_regclass``). :returns: ``(statement, params)``."""
    return _USERS_EXIST, {}


def fill_users(n: int) -> Statement:
    """Insert users ``1..n`` with first, last name and email (``public.users`` must be empty of those ids).

    :param n: how many users. :returns: ``(statement, params)``.
    """
    return text(USERS_FILL), {"n": n}


def fill_orders(per_user: int) -> Statement:
    """Insert about ``per_user`` orders per user, unevenly (see ``ORDERS_FILL``).

    :param per_user: the average number of orders per user (1 or more). :returns: ``(statement, params)``.
    """
    return text(ORDERS_FILL), {"per_user": per_user}


def fill_products(n: int) -> Statement:
    """Insert products ``1..n`` with ``search_vector`` NULL. :param n: how many. :returns: ``(statement, params)``."""
    return text(PRODUCTS_FILL), {"n": n}


def counts() -> Statement:
    """One row: (users, orders) counted. :returns: ``(statement, params)``."""
    return _COUNTS, {}


def vacuum_analyze(table: TableName) -> str:
    """``VACUUM ANALYZE`` of ``table`` (run outside a transaction: PostgreSQL docs, "VACUUM"), so the
    planner has statistics of freshly seeded tables. :param table: schema-qualified. :returns: the statement."""
    return f"VACUUM ANALYZE {table.sql}"


# -- the loyalty rule in SQL -------------------------------------------------------------------

# The same rule in SQL, for every user: id -> points. numeric round() rounds halves away from
# zero, which for these non-negative amounts is Python's ROUND_HALF_UP.
REFERENCE_SQL = """
SELECT u.id,
       CAST(LEAST(10000, round((s.spent * CASE WHEN s.spent >= 2000 THEN 1.5 WHEN s.spent >= 500 THEN 1.25 ELSE 1 END
                                + 10 * LEAST(s.paid_orders, 20)) / 5) * 5) AS integer) AS points
FROM public.users u
CROSS JOIN LATERAL (
    SELECT count(*) AS paid_orders, coalesce(sum(o.amount), 0) AS spent
    FROM public.orders o WHERE o.user_id = u.id AND o.status = 'paid'
) s
"""

# One set-based UPDATE doing the whole job: the baseline of bench/transform_speed.py.
SINGLE_UPDATE_SQL = """
UPDATE public.users u SET loyalty_points = r.points
FROM (
    SELECT a.user_id AS id,
           CAST(LEAST(10000, round((a.spent * CASE WHEN a.spent >= 2000 THEN 1.5 WHEN a.spent >= 500 THEN 1.25 ELSE 1 END
                                    + 10 * LEAST(a.paid_orders, 20)) / 5) * 5) AS integer) AS points
    FROM (SELECT user_id, count(*) AS paid_orders, sum(amount) AS spent
          FROM public.orders WHERE status = 'paid' GROUP BY user_id) a
) r
WHERE u.id = r.id AND u.loyalty_points IS NULL
"""

# users without a paid order get 0; the single UPDATE above leaves them to this one
SINGLE_UPDATE_ZERO_SQL = "UPDATE public.users SET loyalty_points = 0 WHERE loyalty_points IS NULL"
