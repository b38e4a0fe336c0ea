"""SQL identifiers from specs: accepted only in the two shapes PostgreSQL itself allows, always quoted.

Specs name tables and columns; those names end up inside SQL text (identifiers cannot be bound
parameters), so anything that is not a plain or a double-quoted identifier is refused before it
gets near the database. Every name rowfill puts into SQL goes through ``quote`` (``TableName.sql``
for tables); every value is a bound parameter, or, where PostgreSQL takes no parameters
(``COMMENT ON ... IS '...'``), quoted by the driver (``literal``).

A quoted name may hold anything but a NUL byte: quotes, ``;``, ``--``, ``:name`` (which
SQLAlchemy's ``text()`` would take for a bind), ``%`` (psycopg's placeholders) and a backslash
before a quote (which sqlparse reads as an escape; PostgreSQL does not). So rowfill's own SQL
is never scanned for binds inside its quoted parts: ``clause`` builds a ``text()`` clause with
the colons of quoted parts escaped, and ``rowfill.sql.sqltext.driver`` keeps quoted parts away from
the tokenizer (both through ``quoted_spans``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import TextClause, text

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUOTED = re.compile(r'"((?:[^"]|"")+)"')
_MAX_LEN = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate longer names


class BadIdentifier(ValueError):
    pass


def parse_identifier(text: str) -> str:
    """Return the real (case-folded or unquoted) name, the way PostgreSQL would read ``text``.

    :param text: an identifier as written in a spec (``users`` or ``"Users"``).
    :returns: the name as PostgreSQL stores it (unquoted names folded to lower case; PostgreSQL docs, 4.1.1
        "Identifiers and Key Words").
    :raises BadIdentifier: for anything else (SQL is not allowed here), or a name over the 63-byte limit.
    """
    if not isinstance(text, str) or not text:
        raise BadIdentifier("expected an identifier such as users or \"Users\"")
    if _PLAIN.fullmatch(text):
        name = text.lower()
    elif m := _QUOTED.fullmatch(text):
        name = m.group(1).replace('""', '"')
    else:
        raise BadIdentifier(
            f"{text!r} is not a plain SQL identifier (letters, digits, _ and $, not starting with a digit) "
            'nor a double-quoted one ("Like This"); SQL is not allowed here'
        )
    if len(name.encode()) > _MAX_LEN:
        raise BadIdentifier(f"{text!r} is longer than PostgreSQL's {_MAX_LEN}-byte identifier limit")
    return name


def split_dotted(text: str) -> list[str]:
    """Split ``schema.table`` on dots that are outside double quotes."""
    parts: list[str] = []
    buf: list[str] = []  # the characters of the part being read
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "." and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def quote(name: str) -> str:
    """Quote a real name for SQL text; doubling quotes makes any name safe."""
    return '"' + name.replace('"', '""') + '"'


# A double-quoted identifier or a single-quoted string literal, read as PostgreSQL reads them with
# standard_conforming_strings on (its default since 9.1): a doubled quote is a quote, a backslash is
# just a character. rowfill's own SQL has no E'' strings, dollar quotes or comments.
_QUOTED_PART = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'')


def quoted_spans(sql: str) -> list[tuple[bool, str]]:
    """rowfill's own SQL cut into (quoted, text) pieces, left to right, the way PostgreSQL's lexer cuts it.

    A quoted piece is a whole ``"identifier"`` or ``'literal'``: an apostrophe inside a quoted
    name does not start a literal, nor a double quote inside a literal a name. Joining the
    pieces gives ``sql`` back.
    """
    out, at = [], 0
    for m in _QUOTED_PART.finditer(sql):
        if m.start() > at:
            out.append((False, sql[at:m.start()]))
        out.append((True, m.group()))
        at = m.end()
    if at < len(sql):
        out.append((False, sql[at:]))
    return out


def clause(sql: str) -> TextClause:
    """rowfill's own SQL (names quoted, values as ``:name`` binds) as a SQLAlchemy ``text()`` clause.

    ``text()`` takes every ``:name`` after a non-word character for a bind, inside quotes too: a
    column named ``k :hi`` would be bound. Colons inside quoted parts are escaped (``\\:``, which
    ``text()`` turns back into ``:``), so only rowfill's own binds are binds.
    """
    return text("".join(piece.replace(":", "\\:") if quoted else piece for quoted, piece in quoted_spans(sql)))


def literal(conn, value: str) -> str:
    """``value`` as an SQL string literal, quoted by the driver (psycopg's ``sql.Literal``) for the
    encoding and settings of ``conn`` (a SQLAlchemy connection). Only for the places PostgreSQL takes
    no bound parameter, such as ``COMMENT ON ... IS '...'``; everywhere else values are bound.
    """
    from psycopg import sql

    return sql.Literal(value).as_string(conn.connection.driver_connection)


@dataclass(frozen=True)
class TableName:
    """A table as a spec names it: ``schema`` is None when the spec leaves it to the search_path.

    An unqualified name is resolved in the database, with the connection's search_path, when a
    backfill is planned (``rowfill.engine.resolve``); the resolved name is schema-qualified and keeps in
    ``written`` how the spec wrote it, because a backfill's meaning (its fingerprint) is the spec's
    text, not where the search_path happened to point.
    """

    schema: str | None
    name: str
    written: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> TableName:
        """A table name as a spec writes it (``users``, ``public.users``, ``"My Table"``), read the way
        PostgreSQL reads it. Raises BadIdentifier (advice included) for anything else, e.g. three dotted parts.
        """
        if not isinstance(text, str):
            raise BadIdentifier("expected a table name such as public.users")
        parts = split_dotted(text)
        if len(parts) == 1:
            return cls(None, parse_identifier(parts[0]))
        if len(parts) == 2:
            return cls(parse_identifier(parts[0]), parse_identifier(parts[1]))
        raise BadIdentifier(f"{text!r} has too many dots; expected table or schema.table")

    @property
    def qualified(self) -> bool:
        """Whether the name carries its schema (an unqualified one is resolved with ``search_path``)."""
        return self.schema is not None

    @property
    def written_qualified(self) -> bool:
        """Did the spec write a schema? (A resolved name remembers that its text had none.)"""
        return self.schema is not None and (self.written is None or self.written == str(self))

    @property
    def meaning(self) -> str:
        """The name as the spec wrote it (``orders`` or ``app.orders``), resolved or not."""
        return self.written if self.written is not None else str(self)

    def resolved(self, schema: str, name: str) -> TableName:
        """The schema-qualified name this one resolved to, remembering how it was written."""
        return TableName(schema, name, self.meaning)

    @property
    def sql(self) -> str:
        """Quoted for SQL text; unqualified names are looked up in the search_path (only before resolution)."""
        return f"{quote(self.schema)}.{quote(self.name)}" if self.schema is not None else quote(self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema is not None else self.name
