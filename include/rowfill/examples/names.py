"""The simplest transform: users.full_name from first and last name, in Python.

The same job as include/specs/users_full_name.yaml does in SQL; bench/transform_speed.py runs
both to measure what the Python path costs against one set-based UPDATE.
"""

from __future__ import annotations


def full_name(rows: list[dict]) -> list[str]:
    """The transform: ``first_name last_name`` for each row.

    :param rows: the batch's rows, dicts with ``first_name`` and ``last_name``.
    :returns: one full name per row, in row order.
    """
    return [f"{r['first_name']} {r['last_name']}" for r in rows]


def full_name_columns(columns: dict[str, list]) -> dict[str, list]:
    """The same rule over the batch as columns (``batch_form: columns``): no dict per row in or out.

    :param columns: ``{"id": [...], "first_name": [...], "last_name": [...]}``, equal-length lists in key order.
    :returns: ``{"full_name": [...]}``, one value per row, in the same order.
    """
    return {"full_name": [f"{first} {last}" for first, last in zip(columns["first_name"], columns["last_name"])]}
