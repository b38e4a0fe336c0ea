"""User SQL from specs: read with one tokenizer, composed so it cannot change rowfill's statements.

Every spec field that holds SQL (``where``, ``set``, ``sql``, ``select``, ``joins``, the gate
probe and the latency probe) is read here, at validation and again when statements are built:

- **One tokenizer**: sqlparse's lexer (``sqlparse.lexer.tokenize``). Only placeholder tokens
  (``:name``) are binds, and only the names rowfill documents (``:lo``/``:hi``, ``:first``/``:last``
  and their per-column forms); a colon inside a string literal, a quoted identifier, a
  dollar-quoted string or a comment, and a ``::`` cast, is never one.
- **Driver SQL**: statements with user text go to psycopg as written, ``conn.exec_driver_sql(sql,
  params)`` with a dict, ``%(name)s`` placeholders and every other ``%`` doubled; never through
  SQLAlchemy's ``text()``, whose ``:name`` regular expression reads ``'{"notify":true}'`` as a bind.
- **Composition**: an expression is refused unless it is one expression (balanced parentheses, no
  top-level ``;`` or comma); comments become one space each; the expression is always wrapped in
  parentheses (``SET c = (expr)``, ``WHERE <range> AND (where)``), so no comment, parenthesis or
  ``OR`` can reach the statement around it, whatever the line breaks.

Where sqlparse's reading of a text could differ from PostgreSQL's (a backslash before a quote in
a standard string, a comment start glued to an operator, an unterminated quote) the text is
refused instead of guessed at: what rowfill checked is what PostgreSQL runs. Strings are read as
PostgreSQL reads them with ``standard_conforming_strings = on``, the default since 9.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Mapping

from sqlparse import lexer
from sqlparse import tokens as T

from rowfill.errors import SpecError
from rowfill.sql.keys import Key
from rowfill.sql.sqlnames import quote, quoted_spans

# FROM-clause continuations (`joins`) must not end the FROM clause: a top-level one of these would
# replace or follow rowfill's own WHERE (the batch's key range) instead of joining rows.
_ENDS_FROM = {"WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR", "UNION",
              "INTERSECT", "EXCEPT", "RETURNING"}
# Top-level keywords that end a WHERE clause of a whole statement (`sql`); after ON CONFLICT a
# WHERE belongs to the conflict action, not to the rows the statement reads.
_ENDS_WHERE = _ENDS_FROM | {"ON", "DO"}
_IDENT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
BIND_ADVICE = ("rowfill binds :lo and :hi (a single integer key) and :first and :last (the batch's first and "
               "last key; :first_<column>/:first_<n> per column of a composite key) in `sql`, and the :first/:last "
               "forms in `select` and `joins`")


class SqlTextError(ValueError):
    """User SQL that rowfill will not compose into a statement, with what to write instead."""


@dataclass(frozen=True)
class Bind:
    """A documented bind name, where the user wrote ``:name``."""

    name: str


@dataclass(frozen=True)
class UserSql:
    """Checked user SQL: its text pieces (comments replaced by one space) and binds, in order.

    ``writes`` is ``("UPDATE"|"DELETE", table as written)`` when a whole statement's main verb
    changes rows of a named table (used by the ``sql`` mode's rowcount guard), else None.
    """

    pieces: tuple
    writes: tuple[str, str] | None = None

    @property
    def binds(self) -> frozenset[str]:
        """The bind names (``:name``) this piece of user SQL uses, as the one parser here reads them."""
        return frozenset(p.name for p in self.pieces if isinstance(p, Bind))

    @property
    def text(self) -> str:
        """The text PostgreSQL gets, with binds as ``:name`` (for messages and docs, not for running)."""
        return "".join(f":{p.name}" if isinstance(p, Bind) else p for p in self.pieces).strip()

    def driver(self, casts: Mapping[str, str | None] | None = None) -> str:
        """psycopg SQL: binds as ``%(name)s`` (``CAST(%(name)s AS <type>)`` when ``casts`` names a
        type for it), every other ``%`` doubled (psycopg turns ``%%`` back into ``%``)."""
        casts = casts or {}
        out = []
        for piece in self.pieces:
            if isinstance(piece, Bind):
                typ = casts.get(piece.name)
                # the type's name (format_type's spelling) may hold a '%': doubled like any other
                out.append(f"CAST(%({piece.name})s AS {typ.replace('%', '%%')})" if typ else f"%({piece.name})s")
            else:
                out.append(piece.replace("%", "%%"))
        return "".join(out).strip()

    def wrapped(self, casts: Mapping[str, str | None] | None = None) -> str:
        """``(expression)``; a bare ``DEFAULT`` (valid only as itself in SET) stays bare."""
        sql = self.driver(casts)
        return sql if sql.upper() == "DEFAULT" else f"({sql})"


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    ttype: object
    value: str
    pos: int  # character offset in the text
    depth: int  # parentheses/brackets open before this token


def _near(text: str, pos: int) -> str:
    snippet = text[max(pos - 12, 0):pos + 18].replace("\n", " ")
    return f"at character {pos + 1} (near {snippet!r})"


def _string_ends_where_sqlparse_says(value: str, escapes: bool, quote: str) -> bool:
    """Does PostgreSQL end this quoted token where sqlparse ended it? ``value`` includes the quotes."""
    inner = value[1:-1]
    if not escapes:
        return quote not in inner.replace(quote * 2, "")
    i = 0
    while i < len(inner):  # E'...': a backslash escapes the next character; '' is a quote
        if inner[i] == "\\":
            i += 2
        elif inner[i] == quote:
            if inner[i + 1:i + 2] != quote:
                return False
            i += 2
        else:
            i += 1
    return i == len(inner)


def _dollar_quote_ok(value: str) -> bool:
    tag = value[:value.index("$", 1) + 1]
    body = value[len(tag):-len(tag)] if len(value) >= 2 * len(tag) else None
    return body is not None and value.endswith(tag) and tag not in body


def _tokens(text: str) -> list[_Tok]:
    """sqlparse tokens with offsets and nesting depth; refuses what PostgreSQL could read differently."""
    if not isinstance(text, str):
        raise SqlTextError("expected SQL as text")
    out: list[_Tok] = []
    pos = 0
    stack: list[tuple[str, int]] = []
    previous = None
    for ttype, value in lexer.tokenize(text):
        tok = _Tok(ttype, value, pos, len(stack))
        if ttype in T.Error or ttype in T.Generic:
            raise SqlTextError(f"cannot be read as SQL {_near(text, pos)}: an unterminated quote, or a character "
                               "outside SQL? Put text inside '...' (write '' for a quote inside it)")
        if ttype in T.String.Single or ttype in T.String.Symbol:
            quote = value[0]
            escapes = quote == "'" and previous is not None and previous.ttype in T.Name and previous.value in ("E", "e")
            if not _string_ends_where_sqlparse_says(value, escapes, quote):
                raise SqlTextError(f"has a quoted text whose end is ambiguous {_near(text, pos)}: write a quote inside "
                                   f"{quote}...{quote} as {quote * 2}, not with a backslash (backslash escapes only "
                                   "work in E'...' strings)")
        elif ttype is T.Literal and value.startswith("$"):
            if not _dollar_quote_ok(value) or (previous is not None and previous.value[-1:] in _IDENT_CHARS
                                               and previous.ttype not in T.Whitespace):
                raise SqlTextError(f"has a dollar-quoted string that PostgreSQL could read differently {_near(text, pos)}; "
                                   "put a space before it and close it with the same $tag$")
        elif ttype not in T.Comment and ttype not in T.Whitespace:
            glued = (previous.value[-1:] + value[:1]) if previous is not None and previous.ttype not in T.Comment else ""
            if "--" in value or "/*" in value or glued in ("--", "/*"):
                raise SqlTextError(f"has a comment start glued to other characters {_near(text, pos)}; put a space "
                                   "before -- or /*")
            if ttype in T.Punctuation and value in ("(", "["):
                stack.append((value, pos))
            elif ttype in T.Punctuation and value in (")", "]"):
                if not stack or {"(": ")", "[": "]"}[stack[-1][0]] != value:
                    raise SqlTextError(f"has an unbalanced '{value}' {_near(text, pos)}: every parenthesis must close "
                                       "inside the field")
                stack.pop()
                tok = _Tok(ttype, value, pos, len(stack))
        out.append(tok)
        previous = tok
        pos += len(value)
    if stack:
        opened, at = stack[-1]
        raise SqlTextError(f"opens '{opened}' {_near(text, at)} and never closes it: every parenthesis must close "
                           "inside the field")
    return out


def _code(toks: list[_Tok]) -> list[_Tok]:
    return [t for t in toks if t.ttype not in T.Whitespace and t.ttype not in T.Comment]


def _word(tok: _Tok) -> str:
    """The first word of a keyword (sqlparse reads 'ORDER BY', 'LEFT JOIN' as one token), upper-cased."""
    if tok.ttype in T.Keyword or tok.ttype is T.Name:
        return tok.value.split()[0].upper() if tok.value.split() else ""
    return ""


def _pieces(toks: list[_Tok], text: str, allowed: Iterable[str], field: str) -> tuple:
    """Text pieces and Binds: comments become one space, ``:name`` placeholders documented binds.

    ``?`` stays text (the jsonb operator), and so does ``:2`` (a slice bound, ``arr[:2]``); any
    other placeholder form (``%s``, ``%(x)s``, ``$1``) would be a parameter rowfill never binds.
    Inside brackets, ``:name`` right after ``[`` or after an operand is an array slice's upper
    bound, as PostgreSQL reads it (``arr[lo :hi]``, ``arr[:hi]`` slice up to the column ``hi``;
    PostgreSQL docs, 8.15.3 "Accessing Arrays"): never a bind, which would slice at the batch's key.
    """
    allowed = set(allowed)
    pieces: list = []
    opened: list[str] = []  # '(', '[' (a subscript) and 'ARRAY[' open at this token
    previous = None  # the previous token that is neither whitespace nor comment
    for tok in toks:
        placeholder = tok.ttype in T.Name.Placeholder and tok.value != "?"
        colon = tok.value.startswith(":")
        slice_bound = placeholder and colon and bool(opened) and opened[-1] == "[" and previous is not None \
            and (previous.value in ("[", ")", "]") or _operand(previous))
        if tok.ttype in T.Punctuation and tok.value == "[":
            # a subscript follows an operand; ARRAY[...] and its nested [...] are constructors
            subscript = previous is not None and previous.value.upper() != "ARRAY" \
                and (previous.value in (")", "]") or _operand(previous))
            opened.append("[" if subscript else "ARRAY[")
        elif tok.ttype in T.Punctuation and tok.value == "(":
            opened.append("(")
        elif tok.ttype in T.Punctuation and tok.value in (")", "]") and opened:
            opened.pop()
        if tok.ttype not in T.Comment and tok.ttype not in T.Whitespace:
            previous = tok
        if tok.ttype in T.Comment:
            pieces.append(" ")
        elif slice_bound:
            pieces.append(tok.value)
        elif placeholder and colon and not tok.value[1:].isdigit():
            if tok.value[1:] not in allowed:
                raise SqlTextError(_bind_problem(tok.value[1:], allowed, field))
            pieces.append(Bind(tok.value[1:]))
        elif placeholder and not colon:
            raise SqlTextError(f"{tok.value!r} {_near(text, tok.pos)} is not a value rowfill binds; {BIND_ADVICE}")
        else:
            pieces.append(tok.value)
    merged: list = []
    for piece in pieces:  # adjacent text pieces as one string
        if merged and isinstance(piece, str) and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return tuple(merged)


def _operand(tok: _Tok) -> bool:
    """Does ``tok`` end an operand (a name, number, string, quoted name), after which a ':' can only be a slice's?"""
    if tok.ttype in T.Name.Placeholder:
        return False
    return (tok.ttype in T.Name and tok.ttype not in T.Keyword) or tok.ttype in T.Literal or tok.ttype in T.String


def _bind_problem(name: str, allowed: set[str], field: str) -> str:
    lower = name.lower()
    if allowed and lower in allowed:
        return f"':{name}' is not a value rowfill binds; bind names are lower case: write ':{lower}'"
    if allowed:
        here = "here: " + ", ".join(f":{n}" for n in sorted(allowed))
    else:
        here = f"none in `{field}`" + (" (it is also checked over the whole table by verify, outside any batch)"
                                      if field == "where" else "")
    return (f"':{name}' is not a value rowfill binds ({here}); {BIND_ADVICE}. If ':{name}' is meant as text it "
            "belongs inside a string literal, e.g. '{\"notify\":true}'; a cast is written ::type")


def _one_part(toks: list[_Tok], text: str, what: str) -> list[_Tok]:
    """Refuse a top-level ';' (one statement or expression) except trailing ones; return the tokens without them."""
    code = _code(toks)
    while code and code[-1].ttype in T.Punctuation and code[-1].value == ";":
        last = code.pop()
        toks = [t for t in toks if t.pos < last.pos]
    for tok in code:
        if tok.depth == 0 and tok.ttype in T.Punctuation and tok.value == ";":
            raise SqlTextError(f"expected {what}, without ';' inside (found one {_near(text, tok.pos)}); "
                               "a ';' inside a string literal is fine")
    if not code:
        raise SqlTextError(f"expected {what}, found only comments or nothing")
    return toks


def expression(text: str, *, binds: Iterable[str] = (), field: str = "where") -> UserSql:
    """One SQL expression (``set`` values, ``where``, ``select`` values), or SqlTextError.

    Refuses a top-level ';' or comma and unbalanced parentheses; the result is meant to be
    used wrapped in parentheses (``UserSql.wrapped``).

    :param text: the user's SQL. :param binds: the bind names allowed (``:lo``, ``:hi``...).
    :param field: the spec field, named in errors.
    :raises SqlTextError: for a top-level `;` or comma, or unbalanced parentheses, saying where.
    """
    toks = _tokens(text)
    toks = _one_part(toks, text, "one SQL expression")
    for tok in _code(toks):
        if tok.depth == 0 and tok.ttype in T.Punctuation and tok.value == ",":
            raise SqlTextError(f"expected one SQL expression, found a ',' outside parentheses {_near(text, tok.pos)}; "
                               "give each column its own entry")
    return UserSql(_pieces(toks, text, binds, field))


def from_continuation(text: str, *, binds: Iterable[str] = (), field: str = "joins") -> UserSql:
    """``joins``: SQL continuing the FROM clause (``LEFT JOIN ... ON ...``), or SqlTextError.

    Refuses, outside parentheses, anything that would end the FROM clause (WHERE, GROUP BY,
    ORDER BY, LIMIT, UNION, FOR UPDATE, ';', ...): rowfill's WHERE with the batch's key range
    comes right after it.

    :param text: the user's SQL. :param binds: the bind names allowed. :param field: the spec field.
    :raises SqlTextError: for SQL that ends the FROM clause outside parentheses.
    """
    toks = _tokens(text)
    toks = _one_part(toks, text, "joins continuing the FROM clause")
    for tok in _code(toks):
        if tok.depth == 0 and _word(tok) in _ENDS_FROM:
            raise SqlTextError(f"must only continue the FROM clause (JOIN ... ON ..., CROSS JOIN LATERAL (...) s), "
                               f"but has {tok.value.split()[0].upper()} outside parentheses {_near(text, tok.pos)}; "
                               "rowfill adds the WHERE with the batch's key range itself: put filters in the join's "
                               "ON or in `where`, or inside a parenthesised subquery")
    return UserSql(_pieces(toks, text, binds, field))


def statement(text: str, *, binds: Iterable[str] = (), field: str = "sql", batch: bool = True) -> UserSql:
    """One whole statement (``sql`` mode; with ``batch=False`` a gate or latency probe), or SqlTextError.

    Refuses more than one statement and, for a batch statement, an ``OR`` at the top level of the
    outermost statement's WHERE clause: ``WHERE id > :lo AND id <= :hi OR x`` selects rows outside
    the batch. Records what the statement's main verb writes (UPDATE/DELETE of a named table) for
    the rowcount guard.

    :param text: the user's SQL. :param binds: the bind names allowed. :param field: the spec field.
    :param batch: False for a gate or probe query (no WHERE check).
    :raises SqlTextError: for more than one statement, or a top-level OR in a batch statement's WHERE.
    """
    toks = _tokens(text)
    toks = _one_part(toks, text, "one SQL statement")
    code = _code(toks) if batch else []
    in_where = False
    cases = 0
    for tok in code:
        if tok.depth != 0:
            continue
        word = _word(tok) if tok.ttype in T.Keyword else ""
        if word == "CONFLICT":
            break
        if word == "CASE":
            cases += 1
        elif word == "END" and cases:
            cases -= 1
        elif cases:
            continue
        elif word == "WHERE":
            in_where = True
        elif word in _ENDS_WHERE:
            in_where = False
        elif word == "OR" and in_where:
            raise SqlTextError(
                f"has OR at the top level of its WHERE clause {_near(text, tok.pos)}: rows matching the other side "
                "of the OR are outside the batch's key range, so every batch would write them. Put the ORs in "
                "parentheses and AND them with the range, e.g. WHERE id > :lo AND id <= :hi AND (a OR b)")
    return UserSql(_pieces(toks, text, binds, field), _writes(_code(toks)))


def _writes(code: list[_Tok]) -> tuple[str, str] | None:
    """("UPDATE"|"DELETE", table as written) of the statement's main verb (after any WITH), else None."""
    top = [t for t in code if t.depth == 0]
    for i, tok in enumerate(top):
        if tok.ttype in T.Keyword.DML:
            verb = tok.value.upper()
            if verb not in ("UPDATE", "DELETE"):
                return None
            rest = top[i + 1:]
            if verb == "DELETE":
                if not rest or rest[0].value.upper() != "FROM":
                    return None
                rest = rest[1:]
            if rest and rest[0].value.upper() == "ONLY":
                rest = rest[1:]
            name = []
            for j, part in enumerate(rest[:5]):
                expect_name = j % 2 == 0
                if expect_name and (part.ttype in T.Name or part.ttype in T.String.Symbol or part.ttype in T.Keyword):
                    name.append(part.value)
                elif not expect_name and part.ttype in T.Punctuation and part.value == ".":
                    name.append(".")
                else:
                    break
            if name and name[-1] == ".":
                name.pop()
            return (verb, "".join(name)) if name else None
    return None


def probe(text: str, field: str = "sql") -> UserSql:
    """A gate probe or the latency probe: one statement without binds (an OR in its WHERE is its own business)."""
    return statement(text, binds=(), field=field, batch=False)


# -- rowfill's own SQL --------------------------------------------------------------------------


def driver(template: str, slots: Mapping[str, str] | None = None, binary: Iterable[str] = ()) -> str:
    """rowfill's own SQL as psycopg SQL, with checked user text put into its slots.

    ``template`` is SQL rowfill wrote (identifiers quoted, binds as ``:name``, no user text);
    ``@name`` marks where the driver SQL ``slots[name]`` (from ``UserSql.driver``/``wrapped``) goes.
    Binds become ``%(name)s`` (``%(name)b``, sent in binary, for names in ``binary``), every other
    ``%`` is doubled. Quoted names and literals are cut out first (``sqlnames.quoted_spans``, as
    PostgreSQL reads them) and never tokenized: a name may hold ``:x``, ``@x`` or a backslash
    before a quote, which sqlparse would read as a bind, a slot or an escape. Raises KeyError for
    a slot without text (a programming error).
    """
    slots = slots or {}
    binary = set(binary)
    out = []
    for quoted, piece in quoted_spans(template):
        if quoted:
            out.append(piece.replace("%", "%%"))
            continue
        for ttype, value in lexer.tokenize(piece):
            if ttype in T.Name.Placeholder and value.startswith(":"):
                out.append(f"%({value[1:]})b" if value[1:] in binary else f"%({value[1:]})s")
            elif ttype in T.Name and value.startswith("@"):
                out.append(slots[value[1:]])
            elif value.startswith("@"):  # sqlparse reads '@x' (one letter) as an operator: not a slot name
                raise ValueError(f"template slot names need two or more letters: {template!r}")
            else:
                out.append(value.replace("%", "%%"))
    return "".join(out)


# -- the SQL of a spec ---------------------------------------------------------------------------


def sql_binds(key_columns: tuple[str, ...]) -> dict[str, tuple[str, int | None]]:
    """Bind name -> ("first"|"last", key position or None) for the batch's first and last key.

    A single key has ``:first``/``:last``; a composite key one pair per column, by position
    (``:first_1``) and by name where the name is a plain lower-case word (``:first_tenant_id``).
    """
    if len(key_columns) <= 1:
        return {"first": ("first", None), "last": ("last", None)}
    key = Key(tuple(key_columns))
    return {name: (prefix, pos) for prefix in ("first", "last") for name, pos in key.bind_names(prefix).items()}


def field_binds(field: str, key_columns: tuple[str, ...]) -> frozenset[str]:
    """The bind names a field may use: `sql` gets the batch bounds, `select`/`joins` the first/last key."""
    if field == "sql":
        names = set(sql_binds(key_columns))
        if len(key_columns) <= 1:
            names |= {"lo", "hi"}
        return frozenset(names)
    if field in ("select", "joins"):
        return frozenset(sql_binds(key_columns))
    return frozenset()


@dataclass(frozen=True)
class SpecSql:
    """The SQL fields of one spec, checked and ready to compose."""

    where: UserSql | None
    set: dict  # column -> UserSql
    sql: UserSql | None
    select: dict  # name -> UserSql
    joins: UserSql | None

    @property
    def binds(self) -> frozenset[str]:
        """Every bind name the spec's SQL fields use together (``where``, ``sql``, ``joins``, ``set``, ``select``)."""
        parts = [self.where, self.sql, self.joins, *self.set.values(), *self.select.values()]
        return frozenset().union(*(p.binds for p in parts if p is not None))


def read_spec_sql(source: str, where=None, set=None, sql=None, select=None, joins=None,
                  key_columns: tuple[str, ...] = ()) -> tuple[SpecSql | None, list[SpecError]]:
    """Check every SQL field of a spec; returns the parsed fields, or the errors naming each field."""
    errors: list[SpecError] = []

    def read(field, parse, text, label=""):
        """Parse one SQL field with ``parse``; a SqlTextError becomes a SpecError on ``errors`` naming the field.

        :param field: the spec field (``where``, ``set``...). :param parse: ``expression``, ``statement`` or
            ``from_continuation``. :param text: the user's SQL. :param label: what prefixes the message (a column).
        :returns: the parsed SQL, or None when it did not parse.
        """
        try:
            return parse(text, binds=field_binds(field, key_columns), field=field)
        except SqlTextError as exc:
            errors.append(SpecError(source, field, f"{label}{exc}"))
            return None

    parsed = SpecSql(
        where=read("where", expression, where) if where else None,
        set={c: read("set", expression, e, f"column {c!r}: ") for c, e in (set or {}).items()},
        sql=read("sql", statement, sql) if sql else None,
        select={n: read("select", expression, e, f"{n!r}: ") for n, e in (select or {}).items()},
        joins=read("joins", from_continuation, joins) if joins else None,
    )
    return (None if errors else parsed), errors


def spec_sql(spec) -> SpecSql:
    """The spec's SQL fields, checked; SpecError naming the first bad field (specs are checked at
    load time, so this only fires for specs built in code).

    :param spec: the spec (or anything with its SQL fields).
    :returns: the parsed fields.
    :raises SpecError: the first bad field's error.
    """
    parsed, errors = read_spec_sql(spec.source, spec.where, spec.set, spec.sql, spec.select, spec.joins,
                                   tuple(spec.key_columns))
    if errors:
        raise errors[0]
    assert parsed is not None  # read_spec_sql returns the fields whenever it returns no error
    return parsed


def key_casts(key) -> dict[str, str]:
    """Bind name -> SQL type for the first/last binds of a key whose types are known."""
    if key is None or not key.types:
        return {}
    return {name: key.types[pos or 0] for name, (_, pos) in sql_binds(key.columns).items()}


def spec_slots(spec, key=None) -> dict[str, str]:
    """Driver SQL of the spec's fields for ``driver()`` templates.

    ``@where`` -> ``(where)`` (``TRUE`` without one), ``@sets`` -> ``"col" = (expr), ...``,
    ``@select`` -> ``(expr) AS "name", ...`` (key columns left out: the reader selects them
    itself), ``@joins`` -> the joins or nothing, ``@sql`` -> the statement. First/last binds are
    cast to the key's types when ``key`` has them.
    """
    parsed = spec_sql(spec)
    casts = key_casts(key)
    keys = set(spec.key_columns)

    def name(n: str) -> str:  # a quoted name as driver SQL: its % doubled like every other
        """A quoted identifier as driver SQL, ``%`` doubled like all driver SQL (psycopg's paramstyle)."""
        return quote(n).replace("%", "%%")

    return {
        "where": parsed.where.wrapped(casts) if parsed.where else "TRUE",
        "sets": ", ".join(f"{name(c)} = {e.wrapped(casts)}" for c, e in parsed.set.items()),
        "select": ", ".join(f"{e.wrapped(casts)} AS {name(n)}" for n, e in parsed.select.items() if n not in keys),
        "joins": parsed.joins.driver(casts) if parsed.joins else "",
        "sql": parsed.sql.driver(casts) if parsed.sql else "",
    }


def spec_driver(spec, template: str, key=None, binary: Iterable[str] = ()) -> str:
    """``driver(template)`` with the spec's fields in the ``@where``/``@sets``/``@select``/``@joins``/``@sql`` slots."""
    return driver(template, spec_slots(spec, key), binary)
