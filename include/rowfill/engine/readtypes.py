"""What a transform or a sink receives for a column's value: exactly what the column holds, or a refusal.

psycopg's default loaders lose three things a transform that writes a value back (a copy, a
rule that passes a column through) would then write wrong, silently:

- **intervals with months**: ``interval '1 mon'`` becomes ``timedelta(days=30)`` (a timedelta has
  no months; psycopg docs, "Adapting basic Python types", date/time types), so a copy writes
  ``30 days``, a different interval (``date '2024-02-01' + interval '1 mon'`` is March 1st, ``+ 30
  days`` March 2nd). Such a value fails the read with a ``TransformError`` saying how to select
  it instead (as text, or its parts);
- **JSON ``null`` and SQL NULL** (transforms only): both would be ``None``, and ``None`` is written
  as SQL NULL. A JSON ``null`` is read as ``Jsonb(None)`` (``Json(None)`` for ``json``), which is
  also how a transform writes one (README, "Python transforms"), so a value passed through
  keeps its kind. Sinks get ``None`` for both: outside the database both are a JSON null;
- **arrays of user-defined types** (enums, composites) would arrive as one string, ``'{sad,NULL}'``;
  they are read as lists (of strings), like every other array.

Registered per cursor on its own adapters (psycopg docs, "Data adaptation configuration"), so
no other statement of the connection changes.
"""

from __future__ import annotations

from psycopg.types.datetime import IntervalLoader
from psycopg.types.json import Json, JsonbLoader, JsonLoader, Jsonb
from sqlalchemy.engine import Connection

from rowfill.errors import RowfillError
from rowfill.sql import catalog as pg_catalog

# pg_type OIDs below this are built in (PostgreSQL's FirstNormalObjectId); psycopg knows their arrays
_FIRST_USER_OID = 16384


class MonthsInInterval(RowfillError):
    """An interval with a month part read for a transform or sink (no timedelta holds it exactly)."""


class ExactIntervalLoader(IntervalLoader):
    """psycopg's interval loader, refusing intervals with months or years instead of reading a month as 30 days."""

    def load(self, data):
        """The interval as a timedelta; raises MonthsInInterval (with the ways round it) if it has a month or year part."""
        raw = bytes(data)
        if b"mon" in raw or b"year" in raw:  # IntervalStyle postgres, which psycopg's loader requires anyway
            value = raw.decode()
            raise MonthsInInterval(
                f"the interval {value!r} has a month part, which a Python timedelta cannot hold (psycopg would read a "
                "month as 30 days: a transform would write back another interval, a sink send one). Select it in a form that "
                "keeps it: as text (select: {name: \"col::text\"}, written back as text), or as its parts "
                "(extract(month from col), extract(day from col), ...)")
        return super().load(data)


class _NullKeepingJsonb(JsonbLoader):
    def load(self, data):
        """psycopg's jsonb loader, but a JSON ``null`` value comes back as ``Jsonb(None)``, not Python None.

        Why: None means SQL NULL to a transform; a jsonb ``'null'`` is a value and must be written back as one.
        :param data: the value's bytes from the driver.
        :returns: the decoded value, or ``Jsonb(None)`` for JSON null.
        """
        value = super().load(data)
        return Jsonb(None) if value is None else value


class _NullKeepingJson(JsonLoader):
    def load(self, data):
        """psycopg's json loader, but a JSON ``null`` value comes back as ``Json(None)``, not Python None.

        :param data: the value's bytes from the driver.
        :returns: the decoded value, or ``Json(None)`` for JSON null, so it is not taken for SQL NULL.
        """
        value = super().load(data)
        return Json(None) if value is None else value


def user_array_types(conn: Connection) -> list[tuple[int, int]]:
    """(element OID, array OID) of every array type over a user-defined type (enum, composite, range, ...)."""
    return pg_catalog.user_array_types(conn, _FIRST_USER_OID)


def configure(cursor, arrays: list[tuple[int, int]], *, json_null: bool) -> None:
    """Set ``cursor``'s loaders as the module docstring says; ``json_null``: read JSON null as Json(None)/Jsonb(None)."""
    from psycopg.types import TypeInfo
    from psycopg.types.array import register_array

    adapters = cursor.adapters
    adapters.register_loader("interval", ExactIntervalLoader)
    if json_null:
        adapters.register_loader("jsonb", _NullKeepingJsonb)
        adapters.register_loader("json", _NullKeepingJson)
    for elem, array in arrays:
        if adapters.types.get(array) is None:
            register_array(TypeInfo(f"rowfill_elem_{elem}", elem, array), adapters)
