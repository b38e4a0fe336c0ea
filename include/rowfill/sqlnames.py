"""SQL identifiers from specs: accepted only in the two shapes PostgreSQL itself allows, always quoted.

Specs name tables and columns; those names end up inside SQL text (identifiers cannot be bound
parameters), so anything that is not a plain or a double-quoted identifier is refused before it
gets near the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUOTED = re.compile(r'"((?:[^"]|"")+)"')
_MAX_LEN = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate longer names


class BadIdentifier(ValueError):
    pass


def parse_identifier(text: str) -> str:
    """Return the real (case-folded or unquoted) name, the way PostgreSQL would read ``text``."""
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
    parts, buf, quoted = [], [], False
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


@dataclass(frozen=True)
class TableName:
    """A table as a spec names it: ``schema`` is None when the spec leaves it to the search_path.

    An unqualified name is resolved in the database, with the connection's search_path, when a
    backfill is planned (``rowfill.resolve``); the resolved name is schema-qualified and keeps in
    ``written`` how the spec wrote it, because a backfill's meaning (its fingerprint) is the spec's
    text, not where the search_path happened to point.
    """

    schema: str | None
    name: str
    written: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> "TableName":
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
        return self.schema is not None

    @property
    def written_qualified(self) -> bool:
        """Did the spec write a schema? (A resolved name remembers that its text had none.)"""
        return self.schema is not None and (self.written is None or self.written == str(self))

    @property
    def meaning(self) -> str:
        """The name as the spec wrote it (``orders`` or ``app.orders``), resolved or not."""
        return self.written if self.written is not None else str(self)

    def resolved(self, schema: str, name: str) -> "TableName":
        """The schema-qualified name this one resolved to, remembering how it was written."""
        return TableName(schema, name, self.meaning)

    @property
    def sql(self) -> str:
        """Quoted for SQL text; unqualified names are looked up in the search_path (only before resolution)."""
        return f"{quote(self.schema)}.{quote(self.name)}" if self.schema is not None else quote(self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema is not None else self.name
