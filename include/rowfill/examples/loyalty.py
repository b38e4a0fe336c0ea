"""Loyalty points from a user's paid orders: the rule lives in Python, where product people can read it.

    tier multiplier on the amount spent   1.0 below 500, 1.25 from 500, 1.5 from 2000
    order bonus                           10 points per paid order, for at most 20 orders
    rounding                              to the nearest multiple of 5, halves up
    cap                                   10,000 points

Used by include/specs/users_loyalty_points.yaml: the spec's ``select`` hands each user's number
of paid orders and total spent in cents (aggregated from ``orders`` in a LATERAL join) to
``loyalty_points``, which returns one value per user. ``REFERENCE_SQL`` is the same rule in one
SQL query (``rowfill.sql.example_data``); the tests and bench/transform_speed.py compare the two.
"""

from __future__ import annotations

from rowfill.sql import example_data

# (threshold in cents, multiplier as numerator/denominator): money stays exact, in integers
TIERS = ((200_000, 3, 2), (50_000, 5, 4), (0, 1, 1))
POINTS_PER_ORDER = 10
MAX_BONUS_ORDERS = 20
STEP = 5
CAP = 10_000


def points_for(paid_orders: int, spent_cents: int) -> int:
    """The rule for one user, in exact integer arithmetic (no floats, no Decimal per row)."""
    for threshold, num, den in TIERS:  # noqa: B007 - highest tier first; the tier found is used after the loop
        if spent_cents >= threshold:
            break
    # raw points = spent_cents / 100 * num / den + 10 * min(orders, 20); in units of STEP that is p / q
    p = spent_cents * num + 100 * POINTS_PER_ORDER * min(paid_orders, MAX_BONUS_ORDERS) * den
    q = 100 * STEP * den
    steps = (2 * p + q) // (2 * q)  # p / q rounded to the nearest whole number, halves up
    return min(steps * STEP, CAP)


def loyalty_points(rows: list[dict]) -> list[int]:
    """The transform: one value for ``loyalty_points`` per row, in order."""
    return [points_for(r["paid_orders"], r["spent_cents"]) for r in rows]


def loyalty_points_columns(columns: dict[str, list]) -> dict[str, list]:
    """The same rule over the batch as columns (``batch_form: columns``).

    :param columns: ``{"id": [...], "paid_orders": [...], "spent_cents": [...]}``, equal-length lists in key order.
    :returns: ``{"loyalty_points": [...]}``, one value per user, in the same order.
    """
    return {"loyalty_points": list(map(points_for, columns["paid_orders"], columns["spent_cents"]))}


# The same rule in SQL (REFERENCE_SQL, id -> points), and the set-based UPDATEs doing the whole job
# (the baseline of bench/transform_speed.py): statements over the user's tables, built in rowfill.sql
# like every other one, and re-exported here beside the Python rule they are compared with.
REFERENCE_SQL = example_data.REFERENCE_SQL
SINGLE_UPDATE_SQL = example_data.SINGLE_UPDATE_SQL
SINGLE_UPDATE_ZERO_SQL = example_data.SINGLE_UPDATE_ZERO_SQL
