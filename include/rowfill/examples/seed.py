"""Example data for the specs in include/specs/: orders for the loyalty points, products for search.

Used by scripts/seed_examples.py, the tests and the benchmarks, so all of them build the same
shapes. Deterministic (generate_series arithmetic, no random()), so a reference computed in SQL
and a run of the Python transform can be compared row for row.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

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


def seed_loyalty(engine: Engine, users: int | None = None, per_user: int = 6) -> dict:
    """``orders`` for the users (created first when ``users`` is given or the table is missing)."""
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT to_regclass('public.users')")).scalar() is not None
        if users is not None or not exists:
            conn.exec_driver_sql("DROP TABLE IF EXISTS public.orders; DROP TABLE IF EXISTS public.users CASCADE")
            conn.exec_driver_sql(USERS_DDL)
            conn.execute(text(USERS_FILL), {"n": users or 100_000})
        conn.exec_driver_sql(ORDERS_DDL)
        conn.execute(text(ORDERS_FILL), {"per_user": per_user})
        conn.exec_driver_sql("CREATE INDEX orders_user_id_idx ON public.orders (user_id)")
        counts = conn.execute(text("SELECT (SELECT count(*) FROM public.users), (SELECT count(*) FROM public.orders)")).one()
    _analyze(engine, "public.users", "public.orders")
    return {"users": counts[0], "orders": counts[1]}


def seed_products(engine: Engine, products: int = 100_000, index: bool = True) -> dict:
    """``products`` with ``search_vector`` NULL and (by default) its GIN index already there."""
    with engine.begin() as conn:
        conn.exec_driver_sql(PRODUCTS_DDL)
        conn.execute(text(PRODUCTS_FILL), {"n": products})
        if index:
            conn.exec_driver_sql(SEARCH_INDEX)
    _analyze(engine, "public.products")
    return {"products": products}


def _analyze(engine: Engine, *tables: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
