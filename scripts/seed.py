"""Create the demo tables the example specs work on: users (N rows) and users_v2 (empty).

    python scripts/seed.py postgresql://postgres@127.0.0.1:5432/app --users 1000000

Idempotent: drops and recreates both tables, and forgets the example backfills' checkpoints. Keys have gaps (every 10th id is missing) so the
planner's keyset walk is exercised the way real, deleted-from tables do.
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import text

from rowfill.engine.database import engine_from_url
from rowfill.store.checkpoint import CheckpointStore

DEMO_BACKFILLS = ("users_full_name", "users_copy_v2")

DDL = """
DROP TABLE IF EXISTS public.users_v2;
DROP TABLE IF EXISTS public.users;
CREATE TABLE public.users (
    id          bigint PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    full_name   text,
    points      integer NOT NULL DEFAULT 0
);
CREATE TABLE public.users_v2 (
    id           bigint PRIMARY KEY,
    display_name text NOT NULL,
    email_domain text NOT NULL,
    created_at   timestamptz NOT NULL
);
"""

FILL = """
INSERT INTO public.users (id, first_name, last_name, email, created_at)
SELECT g + g / 9,
       (ARRAY['Ada','Alan','Grace','Edsger','Barbara','Donald','Margaret','Ken','Frances','Linus'])[1 + g % 10],
       (ARRAY['Lovelace','Turing','Hopper','Dijkstra','Liskov','Knuth','Hamilton','Thompson','Allen','Torvalds'])[1 + (g / 10) % 10],
       'user' || g || '@' || (ARRAY['Example.com','example.org','Mail.test'])[1 + g % 3],
       timestamptz '2020-01-01' + (g || ' minutes')::interval
FROM generate_series(1, :n) AS g
"""


def seed(url: str, users: int) -> None:
    engine = engine_from_url(url)
    t0 = time.monotonic()
    with engine.begin() as conn:
        conn.exec_driver_sql(DDL)
        conn.execute(text(FILL), {"n": users})
    store = CheckpointStore(engine)
    for backfill in DEMO_BACKFILLS:  # new tables: the demo backfills' old progress means nothing now
        store.reset(backfill)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE public.users")
    engine.dispose()
    print(f"seeded {users:,} users (full_name NULL) and an empty users_v2 in {time.monotonic() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="target database URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    seed(args.url, args.users)


if __name__ == "__main__":
    main()
