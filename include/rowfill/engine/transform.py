"""Python transforms: rows go to a function, its results come back in one set-based UPDATE per batch.

Per batch, inside the batch transaction (so the checkpoint still advances with the write):

1. **lock** the batch's rows that match ``where`` (``SELECT ... FOR NO KEY UPDATE``, in key order).
   From here until COMMIT no one else can change them, and an application write that touches one
   of them waits for the batch instead of being overwritten by a value computed from older data;
2. **read** what the function needs (``select`` over the table and ``joins``) in a *new* statement,
   so its snapshot is taken after the locks: everything committed before we held the rows is seen,
   including orders inserted by a transaction that had already updated the user (a single
   ``SELECT ... FOR UPDATE`` would re-read the locked row but compute joined values from the older
   snapshot);
3. **call** the function once with the whole batch;
4. **write** every result with one ``UPDATE ... FROM unnest(<typed arrays>)`` that re-checks
   ``where``: no per-row round trips.

With ``batch_form: columns`` step 3 hands the function the batch as columns (a dict of
equal-length lists, the key columns and the ``select`` names) and takes back the ``returns``
columns the same way: the rows read are transposed once (no dict per row), the returned lists
are bound as the write's arrays as they are. Steps 1, 2 and 4, the checkpoint in the same
transaction, undo and the blame of a row are the same for both forms.

``FOR NO KEY UPDATE`` is the lock the UPDATE itself takes; unlike ``FOR UPDATE`` it lets the
application insert rows that reference ours by foreign key (a new order for a locked user) while
the batch runs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from collections.abc import Callable
from uuid import UUID

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from rowfill.engine import readtypes
from rowfill.engine.undo import UndoLog
from rowfill.engine.writers import BatchBinds, BatchWriter, explain_text
from rowfill.errors import RowfillError, SpecError
from rowfill.spec.spec import Spec
from rowfill.sql import catalog as pg_catalog
from rowfill.sql import statements
from rowfill.sql.keys import Key, column_types, format_value
from rowfill.sql.session import pin_text_formats
from rowfill.sql.sqlnames import quote
from rowfill.sql.sqltext import spec_driver


class TransformError(RowfillError):
    """The transform (or sink) failed on a batch; the message names the row's key when one row is to blame."""


def load_callable(path: str, spec: Spec | None = None, field: str = "transform") -> Callable:
    """Import ``module.path:function``; errors say where the module must live to be found by Airflow.

    :param path: ``module.path:function``. :param spec: the spec, for its source file in errors.
    :param field: the field named in errors (``transform`` or ``sink``).
    :returns: the function.
    :raises SpecError: when the module fails to import or has no such callable, with where it must be installed.
    """
    module_name, _, attr = path.partition(":")
    source = spec.source if spec else path
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failing at import
        raise SpecError(
            source, field,
            f"cannot import {module_name!r} ({type(exc).__name__}: {exc}). The module must be importable on the "
            "Airflow DAG processor and on every worker: put it in the DAG bundle (dags/my_backfills/rules.py is "
            "my_backfills.rules), or in your own package installed into the image; outside Airflow (rowfill "
            "validate, rowfill run) add its folder to PYTHONPATH.",
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SpecError(source, field, f"{module_name} has no function {attr!r} (found: "
                        + ", ".join(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))[:300] + ")")
    return fn


def check_callable_spec(conn: Connection, spec: Spec, key: Key) -> None:
    """At run start: the function imports, and ``joins``/``select`` compile (EXPLAIN, never executed).

    :param conn: a connection. :param spec: a ``transform`` or ``sink`` spec. :param key: its key with types.
    :raises SpecError: field ``transform``/``sink`` when the function does not import, ``joins``/``select`` when
        the database rejects that SQL (binds set to NULL, nothing executed but EXPLAIN).
    """
    field = "transform" if spec.transform else "sink"
    path = spec.transform or spec.sink
    if path is None:
        raise ValueError(f"{spec.source}: check_callable_spec is for transform and sink specs; this one has neither")
    load_callable(path, spec, field)
    table = spec.table.sql
    probes = []
    if spec.joins:
        probes.append(("joins", statements.explain(statements.joins_probe(table))))
    if spec.select:
        probes.append(("select", statements.explain(statements.select_probe(table))))
    nulls = {name: None for name in BatchBinds(key).names}
    for name, template in probes:
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(spec_driver(spec, template, key), nulls)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise SpecError(spec.source, name, f"the database rejects this SQL: {first}") from exc


_COLUMN_REF = re.compile(r'(?:(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)\.)?(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)')


def driver_fetch(conn: Connection, sql: str, params: dict, setup=None) -> tuple[list[str], list[tuple]]:
    """Run a driver-SQL query on the connection's own psycopg cursor (same transaction); errors as SQLAlchemy's.

    Rows fetched straight from the driver cursor skip SQLAlchemy's row processing, and large arrays
    go several times faster in binary (``%(name)b``) than as text array literals: together the
    difference between a Python transform at a quarter and at half the speed of a single UPDATE.
    ``setup(cursor)`` may set the cursor's loaders first (``rowfill.engine.readtypes``).
    """
    names, rows, _ = _driver_execute(conn, sql, params, fetch=True, setup=setup)
    return names, rows


def _driver_execute(conn: Connection, sql: str, params: dict, fetch: bool, setup=None):
    import psycopg

    raw = conn.connection.driver_connection
    if raw is None:  # SQLAlchemy's pooled connection lost its driver connection (invalidated)
        raise RowfillError("the database connection was invalidated (SQLAlchemy holds no driver connection for it); "
                           "run the chunk again")
    try:
        with raw.cursor() as cur:
            if setup is not None:
                setup(cur)
            cur.execute(sql, params)
            if fetch:
                return [d.name for d in cur.description], cur.fetchall(), cur.rowcount
            return None, None, cur.rowcount
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error) from exc


class RowReader:
    """Reads a batch's rows as dicts: the key columns plus ``select`` (every column if ``select`` is empty).

    With ``lock=True`` the read itself takes the row locks. That is only done when the rows read
    come from the table alone (no ``joins``, ``select`` only names columns): then a row re-read
    after waiting for a lock is read whole in its newest version. Anything computed from other
    tables needs the separate lock statement first (see the module docstring).
    """

    def __init__(self, spec: Spec, key: Key, lock: bool = False, json_null: bool = False):
        self.spec = spec
        self.key = key
        self.lock = lock
        self.json_null = json_null  # read JSON null as Jsonb(None) (transforms write it back as such)
        # arrays over user-defined types (rowfill.engine.readtypes), read at the first batch
        self._arrays: list[tuple[int, int]] | None = None
        t = spec.table.sql
        self.qkey = key.qualified(t)
        if spec.select:
            keys = [f"{r} AS {quote(c)}" for r, c in zip(self.qkey.refs(), key.columns)]
            picked = ["@select"] if any(name not in key.columns for name in spec.select) else []
            self.columns_sql = ", ".join(keys + picked)
        else:
            self.columns_sql = f"{t}.*"  # every column of the table, the key columns among them
        self.binds = BatchBinds(key)  # :first/:last in joins or select: the batch's first and last key
        self._stmts: dict = {}

    @staticmethod
    def reads_only_the_table(spec: Spec) -> bool:
        """Whether the read needs nothing but the table's own columns (no ``joins``, plain column
        ``select``s), so one statement can lock and read.
        """
        return not spec.joins and all(_COLUMN_REF.fullmatch(e) for e in spec.select.values())

    def _read(self, has_lo: bool) -> str:
        """Driver SQL of the read (user ``select``/``joins``/``where`` composed by rowfill.sql.sqltext)."""
        if has_lo not in self._stmts:
            spec = self.spec
            self._stmts[has_lo] = spec_driver(spec, statements.read_rows(
                self.columns_sql, spec.table.sql, self.qkey, has_lo, bool(spec.where), self.lock), self.key)
        return self._stmts[has_lo]

    def params(self, lo, hi, first) -> dict:
        """Bind values of the read: the batch's range (``lo``/``hi``) and ``:first``/``:last`` (``first``, ``hi``)."""
        return {**self.key.range_params(lo, hi), **self.binds.params(first, hi)}

    def read(self, conn: Connection, lo, hi, first=None) -> list[dict]:
        """The batch's rows as dicts (column -> Python value, types as ``rowfill.engine.readtypes`` reads them).
        Raises TransformError if ``joins`` gave one key more than one row.
        """
        names, data = self.fetch(conn, lo, hi, first)
        rows = [dict(zip(names, r)) for r in data]
        if self.spec.joins:
            self._check_unique(rows)
        return rows

    def fetch(self, conn: Connection, lo, hi, first=None) -> tuple[list[str], list[tuple]]:
        """Run the batch's read: (column names, one tuple per row in key order), values as
        ``rowfill.engine.readtypes`` reads them. :param lo: exclusive lower key (None: from the start).
        :param hi: inclusive upper key. :param first: the batch's first key (for ``:first``).
        :raises DBAPIError: what the database raises (lock and statement timeouts, data errors).
        """
        if self._arrays is None:
            self._arrays = readtypes.user_array_types(conn)
        arrays = self._arrays
        return driver_fetch(conn, self._read(lo is not None), self.params(lo, hi, first),
                            lambda cur: readtypes.configure(cur, arrays, json_null=self.json_null))

    def read_columns(self, conn: Connection, lo, hi, first=None) -> dict[str, list]:
        """The batch's rows as columns: column -> list of values in key order (types as ``read`` gives them).

        The driver's row tuples are transposed once, at C speed; no dict per row is built.
        :returns: a dict of equal-length lists ({} when the batch has no rows).
        :raises TransformError: if ``joins`` gave one key more than one row.
        """
        names, data = self.fetch(conn, lo, hi, first)
        if not data:
            return {}
        columns = dict(zip(names, map(list, zip(*data))))
        if self.spec.joins:
            keys = [columns[c] for c in self.key.columns]
            if len(set(zip(*keys))) != len(data):
                self._check_unique([dict(zip(self.key.columns, k)) for k in zip(*keys)])
        return columns

    def _check_unique(self, rows: list[dict]) -> None:
        cols = self.key.columns
        seen = set()
        for row in rows:
            k = tuple(row[c] for c in cols)
            if k in seen:
                raise TransformError(
                    f"`joins` gave more than one row for {self.key.label} {format_value(list(k) if len(k) > 1 else k[0])}; "
                    "each row of the table must get at most one row (aggregate in a LEFT JOIN LATERAL (...) ON true)")
            seen.add(k)

    def explain(self, conn: Connection, lo, hi, first=None) -> str:
        """EXPLAIN text of the batch's read; nothing runs."""
        return explain_text(conn, self._read(lo is not None), self.params(lo, hi, first))


def key_value(row: dict, key: Key):
    """The key of ``row`` (a dict by column): its value, or a list of values for a composite key."""
    values = [row[c] for c in key.columns]
    return values[0] if len(values) == 1 else values


def describe_key(row: dict, key: Key) -> str:
    """The key of ``row`` for messages, e.g. ``id 42`` or ``(tenant_id, id) ["7", "42"]``."""
    v = key_value(row, key)
    return f"{key.label} {format_value([str(x) for x in v] if isinstance(v, list) else str(v))}"


def call_with_blame(fn: Callable, rows: list[dict], key: Key, what: str):
    """Call ``fn(rows)``; if it raises, find the first row that makes it raise on its own and name its key.

    Transforms are meant to be pure functions of their rows, so calling them again row by row
    (only on this failure path, inside a batch that is rolled back anyway) is safe.
    """
    try:
        return fn(rows)
    except Exception as exc:
        for row in rows:
            try:
                fn([row])
            except Exception as single:  # noqa: BLE001 - this is the row to blame
                raise TransformError(
                    f"{what} raised {type(single).__name__}: {single} at {describe_key(row, key)}"
                ) from single
        first, last = describe_key(rows[0], key), describe_key(rows[-1], key).split(" ", 1)[1]
        raise TransformError(
            f"{what} raised {type(exc).__name__}: {exc} for the batch {first}..{last} "
            "(no single row of it raises on its own)"
        ) from exc


def row_of(columns: Mapping, i: int) -> dict:
    """Row ``i`` of a columnar batch as a dict (column -> value), for messages and blame."""
    return {name: values[i] for name, values in columns.items()}


def call_columns_with_blame(fn: Callable, columns: dict[str, list], n: int, key: Key, what: str):
    """Call ``fn(columns)``; if it raises, find the first row that makes it raise on its own and name its key.

    As ``call_with_blame`` for ``batch_form: columns``: the function is called again with
    one-row columns (each list cut to one element), only on this failure path, in a batch that is
    rolled back anyway.

    :param columns: the batch, column -> list of ``n`` values. :param n: rows in the batch.
    :param key: the key, for messages. :param what: ``transform <module:function>``, for messages.
    :returns: what ``fn`` returned.
    :raises TransformError: naming the first row that raises on its own, or the batch's key range.
    """
    try:
        return fn(columns)
    except Exception as exc:
        for i in range(n):
            try:
                fn({name: values[i:i + 1] for name, values in columns.items()})
            except Exception as single:  # noqa: BLE001 - this is the row to blame
                raise TransformError(
                    f"{what} raised {type(single).__name__}: {single} at {describe_key(row_of(columns, i), key)}"
                ) from single
        first = describe_key(row_of(columns, 0), key)
        last = describe_key(row_of(columns, n - 1), key).split(" ", 1)[1]
        raise TransformError(
            f"{what} raised {type(exc).__name__}: {exc} for the batch {first}..{last} "
            "(no single row of it raises on its own)"
        ) from exc


def as_list(values) -> list | None:
    """A returned column as a list of Python values: lists as they are; tuples, NumPy arrays (``tolist``),
    Arrow arrays (``to_pylist``), Polars series (``to_list``) and other iterables converted (None if not iterable)."""
    if isinstance(values, list):
        return values
    for method in ("tolist", "to_pylist", "to_list"):
        convert = getattr(values, method, None)
        if callable(convert):
            return convert()
    if isinstance(values, (str, bytes, Mapping)):
        return None
    try:
        return list(values)
    except TypeError:
        return None


def transport_kinds(conn: Connection, table_sql: str) -> dict[str, tuple[str, str]]:
    """column -> (how its values travel to the write, the column's type without its modifier).

    The first is ``array``, ``json``, ``jsonb`` or ``""`` (as they are), read from the column's
    type or the base type of a domain over it, so a domain over ``text[]`` or ``jsonb`` travels
    like its base type. The second (``pg_catalog.varchar``, not ``character varying(8)``) is what
    the values are cast to before the UPDATE assigns them: an explicit cast to ``varchar(8)``
    would silently cut a longer value to 8 characters, where the assignment refuses it
    (PostgreSQL docs, 8.3 "Character Types"; the same holds for ``char(n)`` and ``bit(n)``).
    """
    rows = pg_catalog.column_kinds(conn, table_sql)
    return {name: (kind, bare) for name, kind, bare in rows}


def array_literal(value, column: str) -> str:
    """One row's array value as PostgreSQL's array literal (``{a,"b c",NULL}``), by psycopg's own text dumper.

    Any length, nested lists for multi-dimensional arrays, None elements; the literal is cast
    to the column's type in the write, so PostgreSQL checks it (e.g. a ragged 2-D array fails there).

    :param value: a list (or tuple) of elements. :param column: the column, named in errors.
    :returns: the array literal text.
    :raises TransformError: when the value is not a list or psycopg cannot dump it (e.g. an empty inner list).
    """
    from psycopg.adapt import PyFormat, Transformer

    if not isinstance(value, (list, tuple)):
        raise TransformError(f"the values for column {column!r} (an array column) must be lists; got {type(value).__name__} {value!r:.60}")
    value = list(value)
    try:
        dumped = Transformer().get_dumper(value, PyFormat.TEXT).dump(value)
        if dumped is None:  # psycopg's dumpers give None only for a NULL, which a list is not
            raise ValueError("psycopg dumped the list as NULL")
        return bytes(dumped).decode()
    except Exception as exc:  # psycopg: e.g. "lists cannot contain empty lists"
        raise TransformError(f"a value for column {column!r} cannot be sent as an array: {exc} ({value!r:.80})") from exc


_SCALARS = (str, int, float, Decimal, bool, UUID, date, datetime, time)
def array_param(values: list, sql_type: str, column: str, kind: str = ""):
    """A list psycopg can send as one typed array: homogeneous lists as they are, mixed ones normalised.

    psycopg refuses lists of mixed Python types (e.g. int and Decimal for a numeric column, as a
    rule returning ``0`` for some rows and ``Decimal('12.5')`` for others would give). Numbers
    become Decimal; other scalars become their text, which the ``CAST(... AS type[])`` reads back.
    ``kind`` is the column's ``transport_kinds`` entry: array values become one literal per row.

    :param values: one value per row. :param sql_type: the column's SQL type.
    :param column: the column, named in errors. :param kind: the column's transport kind (``array``, ``json``...).
    :returns: the list (or, for plain ints, an array literal text) to bind.
    :raises TransformError: when the values mix types that cannot share one array.
    """
    if kind == "array":
        return [None if v is None else array_literal(v, column) for v in values]
    base = kind or sql_type.lower()
    if base in ("json", "jsonb"):
        from psycopg.types.json import Json, Jsonb

        wrap = Jsonb if base == "jsonb" else Json
        return [None if v is None else (v if isinstance(v, (Json, Jsonb)) else wrap(v)) for v in values]
    kinds = set(map(type, values))
    if kinds == {int}:
        # an array literal built in C: psycopg dumps int lists one element at a time in Python,
        # several times slower, and integer keys are in every batch
        return "{" + ",".join(map(str, values)) + "}"
    kinds.discard(type(None))
    if len(kinds) <= 1:
        return values
    if kinds <= {bytes, bytearray, memoryview}:  # one bytea array, whichever bytes-like each row returned
        return [None if v is None else bytes(v) for v in values]
    if kinds <= {int, float, Decimal}:
        return [None if v is None else Decimal(str(v)) for v in values]
    if all(issubclass(k, _SCALARS) for k in kinds):
        return [None if v is None else str(v) for v in values]
    raise TransformError(f"the values for column {column!r} mix types that cannot share one array: "
                         + ", ".join(sorted(k.__name__ for k in kinds)))


class TransformWriter(BatchWriter):
    """``transform:`` mode."""

    skips_locked = True

    @property
    def single_statement(self) -> bool:
        """True: a batch's first statement takes every row lock the batch needs (the read itself, or the
        lock statement before a read of other tables), before anything is computed or written.

        So the runner's fast path (``rowfill.engine.rowlocks``) fits: the batch runs under the short
        lock wait, and a row another session holds fails that first statement within it; the batch
        rolls back and runs again at once on the slow path (SKIP LOCKED). Without contention this
        saves the slow path's extra lock-and-count statement per batch (bench/transform_speed.py
        ``--phases``: ~7 ms of a 10,000-row batch of the names job, ~8 % of its time).
        """
        return True

    def build(self, conn):
        """Load the transform, choose one statement (lock and read) or two (lock, then read), and the
        result columns' types.
        """
        spec = self.spec
        self.fn = load_callable(spec.transform, spec, "transform")
        self.columnar = spec.batch_form == "columns"
        # one statement locks and reads when the rows come from the table alone; else lock, then read
        self.lock_first = not RowReader.reads_only_the_table(spec)
        self.reader = RowReader(spec, self.key, lock=not self.lock_first, json_null=True)
        types = {name: typ for name, (typ, _) in column_types(conn, spec.table.sql).items()}
        self.out_columns = list(spec.returns)
        self.out_types = [types[c] for c in self.out_columns]
        kinds = transport_kinds(conn, spec.table.sql)
        self.out_kinds = [kinds[c][0] for c in self.out_columns]
        self.out_casts = [kinds[c][1] for c in self.out_columns]  # no typmod: the assignment checks lengths
        self.qkey = self.key.qualified(spec.table.sql)
        self.undo = None
        if spec.undo:
            self.undo = UndoLog.for_spec(spec, self.key, self.out_columns, self.out_types)

    def _write_template(self, has_lo: bool) -> str:
        """The write as a ``driver()`` template: rowfill's own SQL with ``@where``. With an undo log
        it returns the rows written (a count); without, the UPDATE's row count says it."""
        t, key = self.spec.table.sql, self.key
        kn = [quote(f"__rowfill_k{i}") for i in range(1, len(key.columns) + 1)]
        vn = [quote(f"__rowfill_v{i}") for i in range(1, len(self.out_columns) + 1)]
        arrays = [f"CAST(:k{i} AS {typ}[])" for i, typ in enumerate(key.types, 1)]
        # an array column travels as one array literal per row (text), cast back per row:
        # PostgreSQL has no arrays of arrays, and rows' arrays differ in length
        arrays += [f"CAST(:v{i} AS {'text' if kind == 'array' else typ}[])"
                   for i, (typ, kind) in enumerate(zip(self.out_casts, self.out_kinds), 1)]
        source = f"unnest({', '.join(arrays)}) AS v({', '.join(kn + vn)})"
        vrow = f"v.{kn[0]}" if len(kn) == 1 else "(" + ", ".join(f"v.{n}" for n in kn) + ")"
        sets = ", ".join(f"{quote(c)} = CAST(v.{n} AS {typ})" if kind == "array" else f"{quote(c)} = v.{n}"
                         for c, n, typ, kind in zip(self.out_columns, vn, self.out_casts, self.out_kinds))
        match = f"{self.qkey.row()} = {vrow} AND {self.qkey.range_text(has_lo, True)}{self.where_sql()}"
        if self.undo is None:
            return statements.update_from_values(t, sets, source, match)
        rng_where = key.range_text(has_lo, True) + self.where_sql()
        return self.undo.recording_update(t, sets, source, match, rng_where, vrow, self.qkey)

    def _driver_write(self, has_lo: bool, binary: bool = True) -> str:
        """Driver SQL of the write; with ``binary`` the key and result arrays are sent in binary (faster)."""
        arrays = tuple(f"k{i}" for i in range(1, len(self.key.columns) + 1)) + \
            tuple(f"v{i}" for i in range(1, len(self.out_columns) + 1))
        return self.statement(("write", has_lo, binary),
                              lambda: self.driver(self._write_template(has_lo), arrays if binary else ()))

    def encode(self, columns: list[list]) -> dict:
        """The write's parameters: one typed array per key column and per returned column."""
        n = len(self.key.columns)
        names = [*self.key.columns, *self.out_columns]
        types = [*self.key.types, *self.out_types]
        kinds = ["" for _ in self.key.columns] + list(self.out_kinds)
        return {(f"k{i + 1}" if i < n else f"v{i - n + 1}"): array_param(col, typ, name, kind)
                for i, (col, typ, name, kind) in enumerate(zip(columns, types, names, kinds))}

    def results(self, rows: list[dict]) -> tuple[list[list], int]:
        """Columns for the write: key columns, then returned columns, of every row the function did not skip.

        :param rows: the batch's rows (dicts with the key columns and the selected columns).
        :returns: (columns: key columns then returned columns, each a list, number of rows kept).
        :raises TransformError: when the function returns another number of results than rows, a dict without
            exactly the ``returns`` columns, or a non-dict with several ``returns`` columns.
        """
        out = call_with_blame(self.fn, rows, self.key, f"transform {self.spec.transform}")
        out = list(out) if not isinstance(out, list) else out
        if len(out) != len(rows):
            raise TransformError(f"transform {self.spec.transform} returned {len(out)} results for {len(rows)} rows "
                                 f"({describe_key(rows[0], self.key)}..); return one result per row, None to leave a row alone")
        cols, single = self.out_columns, len(self.out_columns) == 1
        # one json/jsonb column: a dict is the value itself (README: "a value when returns has one column")
        dict_is_value = single and self.out_kinds[0] in ("json", "jsonb")
        kinds = set(map(type, out))
        if single and type(None) not in kinds and (dict_is_value or not any(issubclass(k, Mapping) for k in kinds)):
            # the common case, one value per row for one column: no per-row checks needed
            return [[row[c] for row in rows] for c in self.key.columns] + [out], len(rows)
        wanted = set(cols)
        keys: list[list] = [[] for _ in self.key.columns]
        values: list[list] = [[] for _ in cols]
        kept = 0
        for row, result in zip(rows, out):
            if result is None:
                continue
            if isinstance(result, Mapping) and not dict_is_value:
                if result.keys() != wanted:
                    missing, extra = wanted - result.keys(), result.keys() - wanted
                    raise TransformError(
                        f"transform {self.spec.transform} returned {sorted(result)} at {describe_key(row, self.key)}; "
                        f"expected exactly the `returns` columns {cols}"
                        + (f" (missing {sorted(missing)})" if missing else "") + (f" (unexpected {sorted(extra)})" if extra else ""))
                for i, c in enumerate(cols):
                    values[i].append(result[c])
            elif single:
                values[0].append(result)
            else:
                raise TransformError(f"transform {self.spec.transform} returned {type(result).__name__} at "
                                     f"{describe_key(row, self.key)}; with several `returns` columns return a dict per row")
            for i, c in enumerate(self.key.columns):
                keys[i].append(row[c])
            kept += 1
        return keys + values, kept

    def column_results(self, columns: dict[str, list]) -> list[list]:
        """Columns for the write from a columnar transform: key columns, then the returned columns.

        :param columns: the batch as columns (the key columns and the ``select`` names), equal-length lists.
        :returns: key columns then returned columns, each a list with one value per row (None writes NULL).
        :raises TransformError: when the function raises (naming the row, ``call_columns_with_blame``), returns
            other columns than ``returns``, a column that is not a sequence, or one whose length is not the batch's;
            the message names the spec file and the field ``returns``.
        """
        keys = [columns[c] for c in self.key.columns]
        n = len(keys[0])
        what = f"transform {self.spec.transform}"
        out = call_columns_with_blame(self.fn, columns, n, self.key, what)
        cols = self.out_columns
        where = f"{self.spec.source}: field 'returns': {what}"
        if isinstance(out, Mapping):
            if out.keys() != set(cols):
                missing, extra = set(cols) - out.keys(), out.keys() - set(cols)
                raise TransformError(
                    f"{where} returned the columns {sorted(out)}; with batch_form: columns return a dict of exactly "
                    f"the `returns` columns {list(cols)}" + (f" (missing {sorted(missing)})" if missing else "")
                    + (f" (unexpected {sorted(extra)})" if extra else "") + ". Nothing of the batch was written")
            values = [out[c] for c in cols]
        elif len(cols) == 1:
            values = [out]
        else:
            raise TransformError(f"{where} returned {type(out).__name__}; with several `returns` columns and "
                                 f"batch_form: columns return a dict of columns {{column: list}}. Nothing of the batch was written")
        lists = []
        span = f"{describe_key(row_of(columns, 0), self.key)}..{describe_key(row_of(columns, n - 1), self.key).split(' ', 1)[1]}"
        for c, v in zip(cols, values):
            column = as_list(v)
            if column is None:
                raise TransformError(f"{where} returned {type(v).__name__} for column {c!r}; with batch_form: columns "
                                     f"each returned column is a list of one value per row. Nothing of the batch was written")
            if len(column) != n:
                raise TransformError(f"{where} returned {len(column)} values for column {c!r} for a batch of {n} rows "
                                     f"({span}); return one value per row in every column (None writes NULL). "
                                     "Nothing of the batch was written")
            lists.append(column)
        return keys + lists

    def apply(self, conn: Connection, lo, hi) -> int:
        """Read the batch, call the transform, write its results; returns the rows written.
        Raises TransformError naming the row when the transform raises (``call_with_blame``).
        """
        self.prepare(conn)
        has_lo = lo is not None
        bounds = self.key.range_params(lo, hi)
        if self.lock_first:
            self.lock_rows(conn, lo, hi)
        if self.columnar:
            batch = self.reader.read_columns(conn, lo, hi, self.batch_first)
            if not batch:
                return 0
            return self.write(conn, has_lo, {**self.encode(self.column_results(batch)), **bounds})
        rows = self.reader.read(conn, lo, hi, self.batch_first)
        if not rows:
            return 0
        columns, kept = self.results(rows)
        if not kept:
            return 0
        return self.write(conn, has_lo, {**self.encode(columns), **bounds})

    def write(self, conn: Connection, has_lo: bool, params: dict) -> int:
        """Run the batch's write (``UPDATE ... FROM unnest(...)``, recording undo when the spec has it).

        :param conn: the batch's connection. :param has_lo: whether the batch has a lower bound.
        :param params: ``encode()``'s arrays and the batch's bounds.
        :returns: the rows written.
        :raises DBAPIError: what the database raises (a data error is blamed on its row by the runner).
        """
        if self.undo is None:
            return _driver_execute(conn, self._driver_write(has_lo), params, fetch=False)[2]
        pin_text_formats(conn)  # the recorded values are text: see rowfill.sql.session.TEXT_FORMATS
        _, [(written,)] = driver_fetch(conn, self._driver_write(has_lo), params)
        return written

    def explain(self, conn, lo, hi):
        """``[(step, EXPLAIN text)]`` of the lock, the read and (if the batch has rows) the write;
        the transform is called on the batch's rows so the write is EXPLAINed with real values; nothing is written.
        """
        self.prepare(conn)
        bounds = self.key.range_params(lo, hi)
        out = [("lock", explain_text(conn, self._lock(lo is not None), bounds))] if self.lock_first else []
        out.append(("read" if self.lock_first else "lock and read", self.reader.explain(conn, lo, hi, self.batch_first)))
        if self.columnar:
            batch = self.reader.read_columns(conn, lo, hi, self.batch_first)
            columns, kept = (self.column_results(batch), 1) if batch else (None, 0)
        else:
            rows = self.reader.read(conn, lo, hi, self.batch_first)
            columns, kept = self.results(rows) if rows else (None, 0)
        if kept:
            out.append(("write", explain_text(conn, self._driver_write(lo is not None, binary=False),
                                              {**self.encode(columns), **bounds})))
        return out
