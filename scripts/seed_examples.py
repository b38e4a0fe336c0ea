"""Create the tables of the example specs beyond users: orders (loyalty points) and products (search).

    python scripts/seed_examples.py postgresql://postgres@127.0.0.1:5432/app --loyalty --products
    python scripts/seed_examples.py URL --loyalty --users 200000   # also (re)creates users

--loyalty adds users.loyalty_points (NULL) and an orders table ~6x larger than users (creating
users first when it does not exist or --users is given); --products creates products with
search_vector NULL and its GIN index (--no-index to leave the index for later; see the README,
"Search re-index"). Idempotent: both drop and recreate their tables.
"""

from __future__ import annotations

import argparse
import time

from rowfill.engine.database import engine_from_url
from rowfill.examples.seed import seed_loyalty, seed_products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="target database URL")
    parser.add_argument("--loyalty", action="store_true", help="orders + users.loyalty_points")
    parser.add_argument("--users", type=int, help="(re)create users with this many rows first")
    parser.add_argument("--orders-per-user", type=int, default=6)
    parser.add_argument("--products", type=int, nargs="?", const=100_000, help="products (default 100,000)")
    parser.add_argument("--no-index", action="store_true", help="products without the GIN index on search_vector")
    args = parser.parse_args()
    if not args.loyalty and not args.products:
        parser.error("say what to seed: --loyalty and/or --products")
    engine = engine_from_url(args.url)
    try:
        if args.loyalty:
            t0 = time.monotonic()
            counts = seed_loyalty(engine, users=args.users, per_user=args.orders_per_user)
            print(f"seeded {counts['orders']:,} orders for {counts['users']:,} users (loyalty_points NULL) "
                  f"in {time.monotonic() - t0:.1f} s")
        if args.products:
            t0 = time.monotonic()
            seed_products(engine, args.products, index=not args.no_index)
            print(f"seeded {args.products:,} products (search_vector NULL, GIN index "
                  f"{'not created' if args.no_index else 'in place'}) in {time.monotonic() - t0:.1f} s")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
