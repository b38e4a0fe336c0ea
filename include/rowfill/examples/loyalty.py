"""Loyalty points from a user's paid orders: the rule lives in Python, where product people can read it.

    tier multiplier on the amount spent   1.0 below 500, 1.25 from 500, 1.5 from 2000
    order bonus                           10 points per paid order, for at most 20 orders
    rounding                              to the nearest multiple of 5, halves up
    cap                                   10,000 points

Used by include/specs/users_loyalty_points.yaml: the spec's ``select`` hands each user's number
of paid orders and total spent in cents (aggregated from ``orders`` in a LATERAL join) to
``loyalty_points``, which returns one value per user. ``REFERENCE_SQL`` is the same rule in one
SQL query; the tests and bench/transform_speed.py compare the two.
"""

from __future__ import annotations

# (threshold in cents, multiplier as numerator/denominator): money stays exact, in integers
TIERS = ((200_000, 3, 2), (50_000, 5, 4), (0, 1, 1))
POINTS_PER_ORDER = 10
MAX_BONUS_ORDERS = 20
STEP = 5
CAP = 10_000


def points_for(paid_orders: int, spent_cents: int) -> int:
    """The rule for one user, in exact integer arithmetic (no floats, no Decimal per row)."""
    for threshold, num, den in TIERS:  # highest tier first
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
