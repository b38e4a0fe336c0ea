"""Per-transaction settings: the one place rowfill sets ``lock_timeout``, ``statement_timeout`` and friends.

Every setting goes through ``set_config(name, value, true)``, PostgreSQL's function form of
``SET LOCAL`` (PostgreSQL docs, 9.28.1 "Configuration Settings Functions"): it lasts until the
end of the current transaction (or savepoint, if that is rolled back), so a pooled connection goes
back to the pool unchanged, and unlike ``SET LOCAL`` it takes its value as a bound parameter.

Durations are seconds as floats everywhere in rowfill; they become whole milliseconds here
(``int(seconds * 1000)``, the unit of the timeout settings, PostgreSQL docs 20.11.2 "Statement
Behavior"). ``0`` means "no limit", as in PostgreSQL; ``None`` leaves a setting as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TypedDict

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

# The settings rowfill changes per transaction, in the order they are set. Timeouts are seconds.
TIMEOUTS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
OTHER = ("synchronous_commit", "enable_seqscan", "enable_sort", "enable_bitmapscan",
         "DateStyle", "IntervalStyle", "extra_float_digits")


class TextFormats(TypedDict):
    """The settings of ``TEXT_FORMATS`` by name (a TypedDict, so ``set_local(conn, **TEXT_FORMATS)`` type-checks)."""

    DateStyle: str
    IntervalStyle: str
    extra_float_digits: str


# How values become text, pinned on every rowfill session and again in every transaction that writes
# or reads back the undo log (its values are text): ISO dates (only the output part of DateStyle, so
# the user's day/month input order is kept; YYYY-MM-DD reads back the same under any order), intervals
# in PostgreSQL's own style (sql_standard output of mixed signs reads back differently under another
# style), and floats in their shortest exact form (any extra_float_digits > 0 since PostgreSQL 12; 0 or
# less rounds). PostgreSQL docs 20.11.2 "Locale and Formatting" and 8.5.5 "Interval Output". psycopg
# also reads dates and timestamps only in ISO style ("can't parse timestamptz with DateStyle 'SQL, DMY'").
TEXT_FORMATS = TextFormats(DateStyle="ISO", IntervalStyle="postgres", extra_float_digits="1")


def milliseconds(seconds: float) -> str:
    """``seconds`` (float) as a timeout setting's value: whole milliseconds, e.g. ``2.5`` -> ``"2500ms"``."""
    return f"{int(seconds * 1000)}ms"


@cache
def _statement(names: tuple[str, ...]) -> TextClause:
    # one statement per combination of settings: the text stays the same, so drivers can reuse its plan
    return text("SELECT " + ", ".join(f"set_config('{n}', :{n}, true)" for n in names))


def set_local(conn: Connection, *, lock_timeout: float | None = None, statement_timeout: float | None = None,
              idle_in_transaction_session_timeout: float | None = None, **others: str) -> None:
    """Set settings until the end of the current transaction, in one round trip.

    :param conn: a connection inside the transaction the settings are for.
    :param lock_timeout: seconds to wait for any one lock (0: no limit; None: unchanged).
    :param statement_timeout: seconds any one statement may run (0: no limit; None: unchanged).
    :param idle_in_transaction_session_timeout: seconds the session may sit idle in the open
        transaction before PostgreSQL ends it (0: no limit; None: unchanged).
    :param others: the non-timeout settings in ``OTHER`` with their values as PostgreSQL reads them
        (``synchronous_commit="off"``, ``enable_seqscan="off"``).
    :raises ValueError: a setting not in ``OTHER`` (a programming error: names are not user input).
    :raises sqlalchemy.exc.DBAPIError: as the database does (a connection lost, a value refused).
    """
    unknown = set(others) - set(OTHER)
    if unknown:
        raise ValueError(f"set_local: {sorted(unknown)} are not settings rowfill changes; add them to OTHER first")
    values = {name: milliseconds(seconds) for name, seconds in
              zip(TIMEOUTS, (lock_timeout, statement_timeout, idle_in_transaction_session_timeout)) if seconds is not None}
    values.update(others)
    if values:
        conn.execute(_statement(tuple(values)), values)


def pin_text_formats(conn: Connection) -> None:
    """Set ``TEXT_FORMATS`` until the end of ``conn``'s current transaction (one round trip).

    :raises sqlalchemy.exc.DBAPIError: as the database does.
    """
    set_local(conn, **TEXT_FORMATS)


def text_formats_for_session() -> str:
    """SQL that sets ``TEXT_FORMATS`` for the whole session (run once on each new connection)."""
    return "SELECT " + ", ".join(f"set_config('{n}', '{v}', false)" for n, v in TEXT_FORMATS.items())


@dataclass(frozen=True)
class Timeouts:
    """The timeouts of one kind of transaction, to apply at its start (seconds; None: unchanged)."""

    lock: float | None = None
    statement: float | None = None
    idle_in_transaction: float | None = None

    @classmethod
    def for_batch(cls, lock_timeout: float, statement_timeout: float) -> Timeouts:
        """A batch's: the spec's ``lock_timeout`` and ``statement_timeout`` (seconds), and
        ``idle_in_transaction_session_timeout`` of twice the statement timeout, at least 60 s: a runner
        that hangs mid-batch (paused VM, lost network) must not keep its chunk row locked for the retry
        that replaces it."""
        return cls(lock_timeout, statement_timeout, max(statement_timeout * 2, 60))

    def apply(self, conn: Connection) -> None:
        """Set these timeouts until the end of ``conn``'s current transaction (see ``set_local``)."""
        set_local(conn, lock_timeout=self.lock, statement_timeout=self.statement,
                  idle_in_transaction_session_timeout=self.idle_in_transaction)
