"""Backfill specs: YAML files validated into a ``Spec`` with errors that name the file and the field.

Loading and validation live here and nowhere else; building DAGs is ``factory``'s job. Checks
that need the database (does the table exist, can an index walk the key) happen in ``schema_check``
when a run starts, because DAG parsing must not depend on the target database being up. Files are
read by ``specyaml`` (duplicate keys refused, times stay text); fields holding SQL are read by
``sqltext`` (the one parser of user SQL).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rowfill.errors import SpecError, SpecErrors
from rowfill.spec import specyaml
from rowfill.spec.alert_targets import AlertTarget, parse_alerts
from rowfill.spec.bounds import FIELDS as BOUNDS
from rowfill.spec.bounds import check_field
from rowfill.spec.durations import parse_duration
from rowfill.spec.gates import GateSpec, LatencySpec, parse_gates, parse_latency
from rowfill.spec.windows import Window, parse_windows
from rowfill.sql.keys import Key
from rowfill.sql.sqlnames import BadIdentifier, TableName, parse_identifier, quote
from rowfill.sql.sqltext import read_spec_sql

SPECS_ENV = "ROWFILL_SPECS_DIR"  # the specs folder; Airflow's [rowfill] specs_folder is read by rowfill.airflow.specs_folder
DEFAULT_RECONNECT_FOR = 180.0  # seconds: a restart, a failover or a minor upgrade is over well within 3 minutes
_NAME = re.compile(r"[a-z][a-z0-9_]{0,199}")
_CONN_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_CALLABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
MODES = ("set", "sql", "transform", "sink")
Mode = Literal["set", "sql", "transform", "sink"]  # how a backfill writes (``Spec.mode``)
Planning = Literal["auto", "exact", "estimated"]  # how chunk boundaries are found (rowfill.engine.estimate)
# how a transform gets its batch and returns results (rowfill.engine.transform): a list of dicts,
# one per row (the default), or a dict of equal-length columns
BatchForm = Literal["rows", "columns"]
BATCH_FORMS = ("rows", "columns")
_CRON_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually", "@continuous"}


@dataclass(frozen=True)
class Spec:
    """One validated backfill. Field names match the YAML keys users write."""

    name: str
    source: str
    connection: str
    table: TableName
    key: str  # the key column; for a composite key its label, "(tenant_id, id)"
    where: str | None = None
    set: dict[str, str] = field(default_factory=dict)
    sql: str | None = None
    description: str = ""
    # None: a chunk is sized to run about ``chunk_time`` (rowfill.engine.chunk_sizing); a number wins
    chunk_rows: int | None = None
    # How long a chunk should run. 5 minutes: an Airflow chunk task costs ~1-3 s to start
    # (bench/airflow_speed.py: queue, task process, first batch), so under 1% of the chunk; a backfill
    # waiting for a pool slot this one holds waits at most that long; and a chunk that stops part-way
    # loses nothing (it resumes from its checkpoint), so longer chunks cost nothing on failure.
    chunk_time: float = 300.0
    batch_rows: int = 1_000  # the fixed size, or where adaptive sizing starts
    pause: float = 0.0
    max_parallel_chunks: int = 2
    schedule: str | None = None
    pool: str | None = None
    lock_timeout: float = 2.0
    statement_timeout: float = 30.0
    retries: int = 3
    retry_delay: float = 30.0
    max_retry_delay: float = 600.0
    batch_retries: int = 5
    # how long to keep reconnecting after a lost connection (a restart, a failover) before failing;
    # see rowfill.engine.reconnect
    reconnect_for: float = DEFAULT_RECONNECT_FOR
    progress_every: float = 10.0
    tags: tuple[str, ...] = ()
    planning: Planning = "auto"
    # observability (see rowfill.airflow.notifiers, rowfill.airflow.stall, rowfill.airflow.alerts)
    alerts: tuple[AlertTarget, ...] = ()  # one per notifier
    stall_after: float | None = None
    stall_repeat_after: float | None = None
    expected_duration: float | None = None
    # throttle, windows (see engine/throttle.py, engine/probes.py, spec/gates.py, spec/windows.py)
    # Defaults chosen with bench/live_traffic.py: batches short enough that a live transaction
    # waiting on one of their row locks waits 50 ms at most, and a rest half as long after each.
    pause_ratio: float = 0.5
    target_batch_time: float | None = 0.05
    min_batch_rows: int | None = None
    max_batch_rows: int | None = None
    gates: dict[str, GateSpec] = field(default_factory=dict)  # gate name (gates.KINDS) -> its thresholds
    latency_probe: LatencySpec | None = None
    window: tuple[Window, ...] = ()  # their union is when chunks may write; () = any time
    key_columns: tuple[str, ...] = ()  # every key column, in walking order (filled from `key` if not given)
    transform: str | None = None  # "module.path:function" computing `returns` columns from `select`
    select: dict[str, str] = field(default_factory=dict)  # name -> SQL expression handed to transform/sink
    joins: str | None = None  # FROM-clause continuation for `select` (e.g. LEFT JOIN LATERAL ...)
    returns: tuple[str, ...] = ()  # columns the transform writes back
    batch_form: BatchForm = "rows"  # with transform: rows (list of dicts) or columns (dict of equal-length lists)
    sink: str | None = None  # "module.path:function" receiving each batch instead of a database write
    undo: bool = False  # record previous values so `rowfill rollback` can restore them
    # how long a chunk keeps coming back to rows other sessions hold before it fails (rowfill.engine.rowlocks)
    locked_rows_wait: float = 600.0

    def __post_init__(self):
        if not self.key_columns:
            object.__setattr__(self, "key_columns", (self.key,))

    @property
    def dag_id(self) -> str:
        """The backfill DAG's id, ``rowfill_<name>``; also the prefix of its rollback DAG's."""
        return f"rowfill_{self.name}"

    @property
    def pool_name(self) -> str:
        """The Airflow pool its chunks run in: ``pool``, or one per connection, ``rowfill_<connection>``,
        so backfills on one database share its slots (``rowfill.airflow.pools``)."""
        return self.pool or f"rowfill_{self.connection}"

    @property
    def stall_again_after(self) -> float | None:
        """When a stall that is still going on is reported a second time (default 4 x stall_after)."""
        if self.stall_after is None:
            return None
        return self.stall_repeat_after or 4 * self.stall_after

    @property
    def mode(self) -> Mode:
        """How it writes: ``transform`` or ``sink`` (a Python function), ``sql`` (a statement), else ``set``."""
        if self.transform:
            return "transform"
        if self.sink:
            return "sink"
        return "sql" if self.sql else "set"

    @property
    def meaning(self) -> dict:
        """What the backfill *means*; tuning fields may change between runs, these may not.

        Fields added after the first release only appear when used, so the fingerprint of an
        older spec (and the plans stored under it) stays the same. The table is the name as the
        spec wrote it, also once resolved (an unqualified ``orders`` stays ``orders``; see
        ``rowfill.engine.resolve`` for plans stored when it was read as ``public.orders``).
        """
        meaning = {
            "table": self.table.meaning,  # as written: "orders" stays "orders" once resolved
            "key": self.key if len(self.key_columns) == 1 else list(self.key_columns),
            "where": self.where,
            "set": self.set,
            "sql": self.sql,
        }
        for name in ("transform", "select", "joins", "returns", "sink", "undo"):
            value = getattr(self, name)
            if value:
                meaning[name] = list(value) if isinstance(value, tuple) else value
        if self.batch_form != "rows":  # the same function over columns is another call: only when used
            meaning["batch_form"] = self.batch_form
        return meaning

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over ``meaning``; a stored plan is only resumed under the same fingerprint."""
        return hashlib.sha256(json.dumps(self.meaning, sort_keys=True).encode()).hexdigest()[:16]


# field -> (kind, required). The kind selects a checker below.
FIELDS: dict[str, tuple[str, bool]] = {
    "name": ("name", False),
    "description": ("text", False),
    "connection": ("conn_id", True),
    "table": ("table", True),
    "key": ("key", True),
    "where": ("sql_text", False),
    "set": ("set", False),
    "sql": ("sql_text", False),
    "chunk_rows": ("positive_int", False),
    "chunk_time": ("duration", False),
    "batch_rows": ("positive_int", False),
    "pause": ("duration", False),
    "max_parallel_chunks": ("positive_int", False),
    "schedule": ("schedule", False),
    "pool": ("pool", False),
    "lock_timeout": ("timeout", False),
    "statement_timeout": ("timeout", False),
    "retries": ("count", False),
    "retry_delay": ("duration", False),
    "max_retry_delay": ("duration", False),
    "batch_retries": ("count", False),
    "reconnect_for": ("duration", False),
    "progress_every": ("duration", False),
    "tags": ("tags", False),
    "planning": ("planning", False),
    "alerts": ("alerts", False),
    "stall_after": ("duration", False),
    "stall_repeat_after": ("duration", False),
    "expected_duration": ("duration", False),
    "pause_ratio": ("ratio", False),
    "target_batch_time": ("optional_duration", False),
    "min_batch_rows": ("positive_int", False),
    "max_batch_rows": ("positive_int", False),
    "gates": ("gates", False),
    "latency_probe": ("latency_probe", False),
    "window": ("window", False),
    "transform": ("callable", False),
    "select": ("select", False),
    "joins": ("sql_text", False),
    "returns": ("columns", False),
    "batch_form": ("batch_form", False),
    "sink": ("callable", False),
    "undo": ("bool", False),
    "locked_rows_wait": ("duration", False),
}


def _column_names(value, expected: str, twice: str) -> tuple:
    """One column or a list of them, as parsed identifiers; a name given twice is a mistake worth naming."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(expected)
    names = tuple(parse_identifier(v) for v in value)
    if len(set(names)) != len(names):
        raise ValueError(twice)
    return names


def _yaml_read(value: Any) -> str:
    """Why an unquoted value is not text: what YAML read it as (``0`` a number, ``2024-01-01`` a date)."""
    if value is None or isinstance(value, (dict, list)) or (isinstance(value, str)):
        return ""
    return (f"; YAML read it as the {type(value).__name__} {value!r}: quote the SQL, e.g. \"0\", \"true\" or "
            "\"DATE '2024-01-01'\"")


def _check(kind: str, value: Any, field: str = "") -> Any:
    """Convert one field's YAML value, or raise ValueError with advice (and the field's upper bound, ``rowfill.spec.bounds``)."""
    bound = BOUNDS.get(field)
    if kind == "name":
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ValueError("expected lower-case letters, digits and _, starting with a letter (it becomes the DAG id rowfill_<name>)")
        return value
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError("expected text")
        return value
    if kind in ("conn_id", "pool"):
        if not isinstance(value, str) or not _CONN_ID.fullmatch(value):
            raise ValueError("expected an Airflow id: letters, digits, _, . and -")
        return value
    if kind == "table":
        return TableName.parse(value)
    if kind == "key":
        return _column_names(value, "expected a column name (key: id) or a list of them for a composite key "
                                    "(key: [tenant_id, id])", "a key column is listed twice")
    if kind == "columns":
        return _column_names(value, "expected a list of column names, e.g. [loyalty_points]", "a column is listed twice")
    if kind == "callable":
        if not isinstance(value, str) or not _CALLABLE.fullmatch(value.strip()):
            raise ValueError("expected \"module.path:function\", e.g. rowfill.examples.loyalty:loyalty_points")
        return value.strip()
    if kind == "select":
        return _check_select(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if kind == "sql_text":  # read as SQL (rowfill.sql.sqltext) once the key, and so the bind names, are known
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a non-empty SQL text")
        return value.strip().rstrip(";").strip()
    if kind == "set":
        if not isinstance(value, dict) or not value:
            raise ValueError("expected a mapping of column: SQL expression, e.g. full_name: \"first_name || ' ' || last_name\"")
        out = {}
        for col, expr in value.items():
            name = parse_identifier(col) if isinstance(col, str) else parse_identifier("")
            if not isinstance(expr, str) or not expr.strip():
                raise ValueError(f"column {col!r}: expected an SQL expression as text{_yaml_read(expr)}")
            if name in out:
                raise ValueError(f"column {col!r} is the column {name!r} again (plain names are case-folded); give each column once")
            out[name] = expr.strip()
        return out
    if kind in ("positive_int", "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if kind == "positive_int" and value < 1:
            raise ValueError("expected a number of at least 1")
        if value < 0:
            raise ValueError("expected a number of at least 0")
        return value
    if kind == "duration":
        return parse_duration(value, bound)
    if kind == "timeout":
        seconds = parse_duration(value, bound)
        if seconds < 0.001:
            # PostgreSQL reads 0 (and the runner's whole milliseconds round sub-ms values to 0) as "no timeout"
            raise ValueError(f"{value!r} is below 1ms; PostgreSQL would read it as 0, which means wait forever")
        return seconds  # upper bounds: rowfill.spec.bounds
    if kind == "schedule":
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("expected a cron expression such as \"0 2 * * *\", a preset such as @daily, or null")
        if value in _CRON_PRESETS:
            return value
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression; e.g. \"0 2 * * *\" starts at 02:00 every day")
        return value
    if kind == "batch_form":
        if value not in BATCH_FORMS:
            raise ValueError("expected rows (the function gets a list of dicts, one per row, and returns one result "
                             "per row) or columns (it gets a dict of equal-length column lists and returns the "
                             "`returns` columns the same way)")
        return value
    if kind == "planning":
        if value not in ("auto", "exact", "estimated"):
            raise ValueError("expected auto (exact below 20M rows, estimated above), exact (walk the key index) or estimated (sample)")
        return value
    if kind == "alerts":
        return parse_alerts(value)
    if kind == "ratio":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ValueError(f"expected a number from 0 up, e.g. 0.5 sleeps half as long as the last batch took; got {value!r}")
        return float(value)
    if kind == "optional_duration":
        if value is None or value == "off" or value is False:  # unquoted off is YAML 1.1's false
            return None
        if value is True:
            raise ValueError("on/yes/true (read by YAML as true) is not a duration: write a duration such as 50ms, "
                             "or off for fixed-size batches")
        seconds = parse_duration(value, bound)
        if seconds <= 0:
            raise ValueError("expected a duration above 0, e.g. 500ms, or null for fixed-size batches")
        return seconds
    if kind == "gates":
        return parse_gates(value)
    if kind == "latency_probe":
        return parse_latency(value)
    if kind == "window":
        if value is None or value == "off" or value is False:  # unquoted off is YAML 1.1's false
            return ()
        if value is True:
            raise ValueError("on/yes/true (read by YAML as true) is not a window: give {start: \"01:00\", end: \"06:00\", "
                             "timezone: Europe/Berlin} or a list of them, or off (the default: chunks may write at any time)")
        return parse_windows(value)
    if kind == "tags":
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    raise AssertionError(kind)


def _check_select(value: Any) -> dict[str, str]:
    """``select:`` as a list of columns or a mapping of name: SQL expression -> {name: SQL}."""
    out: dict[str, str] = {}
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        for col in value:
            name = parse_identifier(col)
            if name in out:
                raise ValueError(f"column {col!r} is listed twice")
            out[name] = quote(name)
        return out
    if isinstance(value, dict) and value:
        for col, expr in value.items():
            name = parse_identifier(col) if isinstance(col, str) else parse_identifier("")
            if not isinstance(expr, str) or not expr.strip():
                raise ValueError(f"{col!r}: expected an SQL expression as text{_yaml_read(expr)}")
            if name in out:
                raise ValueError(f"{col!r} is the name {name!r} again; give each name once")
            out[name] = expr.strip()
        return out
    raise ValueError("expected a list of columns ([first_name, last_name]) or a mapping of name: SQL expression")


def _check_modes(data: dict, values: dict, source: str) -> list[SpecError]:
    """Exactly one way to write, and the fields that go with it."""
    errors = []
    given = [m for m in MODES if m in data]
    if len(given) > 1:
        if given == ["set", "sql"]:
            errors.append(SpecError(source, "sql", "give either 'set' (column: expression, applied with UPDATE) or 'sql' (a statement using :lo and :hi), not both"))
        else:
            errors.append(SpecError(source, given[1], f"give only one of {', '.join(MODES)}; this spec has {' and '.join(given)}"))
    elif not given:
        errors.append(SpecError(source, "set", "is required unless 'sql' is given (or 'transform' or 'sink'): say what to write"))
    mode = given[0] if len(given) == 1 else None
    if "returns" in data and mode != "transform":
        errors.append(SpecError(source, "returns", "only goes with 'transform' (the columns the function returns)"))
    if "batch_form" in data and mode != "transform":
        errors.append(SpecError(source, "batch_form", "only goes with 'transform' (how the function gets the batch)"))
    if mode == "transform" and "returns" not in data:
        errors.append(SpecError(source, "returns", "is required with 'transform': list the columns the function returns, e.g. returns: [loyalty_points]"))
    for name in ("select", "joins"):
        if name in data and mode not in ("transform", "sink"):
            errors.append(SpecError(source, name, "only goes with 'transform' or 'sink' (what the function receives)"))
    if "joins" in data and "select" not in data:
        errors.append(SpecError(source, "joins", "needs 'select' to say which joined values the function receives"))
    if values.get("undo") and mode in ("sql", "sink"):
        why = ("rowfill cannot know which rows and columns an arbitrary statement changes" if mode == "sql"
               else "a sink writes outside the database, where rowfill cannot restore anything")
        errors.append(SpecError(source, "undo", f"works with 'set' and 'transform' only: {why}"))
    return errors


def _check_sql_binds(found: frozenset[str], key_columns: tuple[str, ...], source: str) -> list[SpecError]:
    """`sql` must use the batch's bounds (``found``: the binds its tokens use), or every batch writes the same rows."""
    if len(key_columns) == 1:
        if {"lo", "hi"} <= found or {"first", "last"} <= found:
            return []
        unused = ", ".join(f":{b}" for b in ("lo", "hi") if b not in found)
        return [SpecError(source, "sql", f"must use the key bounds {unused} (rows with lo < key <= hi), e.g. WHERE id > :lo AND id <= :hi; "
                                         "or :first and :last (the batch's first and last key), e.g. WHERE id BETWEEN :first AND :last")]
    binds = found
    key = Key(key_columns)
    missing: list[str] = []
    for prefix in ("first", "last"):
        names = key.bind_names(prefix)
        for i, col in enumerate(key_columns):
            if not any(pos == i and name in binds for name, pos in names.items()):
                missing.append(f":{prefix}_{col}" if f"{prefix}_{col}" in names else f":{prefix}_{i + 1}")
    if not missing:
        return []
    firsts = ", ".join(f":first_{c}" if f"first_{c}" in key.bind_names("first") else f":first_{i}" for i, c in enumerate(key_columns, 1))
    lasts = firsts.replace(":first_", ":last_")
    return [SpecError(source, "sql", f"with a composite key, must use each key column's batch bounds; missing {', '.join(missing)}, "
                                     f"e.g. WHERE ({', '.join(key_columns)}) BETWEEN ({firsts}) AND ({lasts})")]


def parse_spec(data: Any, source: str) -> Spec:
    """Validate one spec's YAML data, reporting every problem at once.

    :param data: the file's YAML data (``specyaml.load``); a mapping of field -> value.
    :param source: the file name, for the messages and ``Spec.source``.
    :return: the validated spec; durations in seconds (floats), SQL read by ``rowfill.sql.sqltext``.
    :raises SpecErrors: every problem found, each naming ``source`` and the field.
    """
    if not isinstance(data, dict):
        raise SpecErrors([SpecError(source, None, "expected a mapping of fields (name:, table:, key:, ...) at the top level")])
    errors: list[SpecError] = []
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            hint = difflib.get_close_matches(str(key), FIELDS, n=1)
            advice = f"did you mean '{hint[0]}'?" if hint else "known fields are: " + ", ".join(FIELDS)
            errors.append(SpecError(source, str(key), f"unknown field; {advice}"))
            continue
        try:
            values[key] = check_field(key, _check(FIELDS[key][0], value, key), value)
        except (ValueError, BadIdentifier) as exc:
            errors.append(SpecError(source, key, str(exc)))
    for key, (_, required) in FIELDS.items():
        if required and key not in data:
            errors.append(SpecError(source, key, "is required"))
    errors.extend(_check_modes(data, values, source))
    key_columns = values.pop("key", None)
    if key_columns:
        values["key_columns"] = key_columns
        values["key"] = key_columns[0] if len(key_columns) == 1 else "(" + ", ".join(key_columns) + ")"
    parsed, sql_errors = read_spec_sql(source, values.get("where"), values.get("set"), values.get("sql"),
                                       values.get("select"), values.get("joins"), tuple(key_columns or ()))
    errors.extend(sql_errors)
    if parsed is not None and parsed.sql is not None and key_columns:
        errors.extend(_check_sql_binds(parsed.sql.binds, key_columns, source))
    for field_name, written in (("set", values.get("set", {})), ("returns", values.get("returns", ()))):
        for col in key_columns or ():
            if col in written:
                errors.append(SpecError(source, field_name, f"cannot change the key column {col!r}: chunks and checkpoints walk it"))
    if "chunk_rows" in values and ("batch_rows" in values or "batch_rows" not in data):
        # compare what the run will use: a batch_rows left out takes its default; without chunk_rows
        # the chunk is sized by chunk_time (rowfill.engine.chunk_sizing)
        chunk_rows = values["chunk_rows"]
        batch_rows = values.get("batch_rows", Spec.batch_rows)
        if batch_rows > chunk_rows:
            blame = "batch_rows" if "batch_rows" in data else "chunk_rows"
            batch_text = f"{batch_rows}" if "batch_rows" in data else f"{batch_rows} (the default)"
            errors.append(SpecError(source, blame, f"batch_rows {batch_text} is larger than chunk_rows ({chunk_rows}); a batch lives inside a chunk"))
    if "chunk_time" in values and values["chunk_time"] < 1.0:
        errors.append(SpecError(source, "chunk_time", f"{data.get('chunk_time')!r} is shorter than 1s; a chunk task takes "
                                                      "about a second to start, so a chunk should run for longer"))
    for key in ("stall_after", "expected_duration"):
        if values.get(key) == 0:
            errors.append(SpecError(source, key, "must be longer than 0; leave it out to turn this alert off"))
    if "stall_repeat_after" in values:
        if "stall_after" not in data:
            errors.append(SpecError(source, "stall_repeat_after", "needs stall_after: the first stall alert comes first"))
        elif values.get("stall_after") and values["stall_repeat_after"] <= values["stall_after"]:
            errors.append(SpecError(source, "stall_repeat_after", "must be longer than stall_after: it is the second, later "
                                    "alert for the same stall (default 4 x stall_after)"))
    _check_batch_bounds(values, data, source, errors)
    if "name" not in values and "name" not in data:
        stem = Path(source).stem
        try:
            values["name"] = _check("name", stem)
        except ValueError as exc:
            errors.append(SpecError(source, "name", f"not given, and the file name {stem!r} cannot stand in: {exc}"))
    if errors:
        raise SpecErrors(errors)
    return Spec(source=source, **values)


def _check_batch_bounds(values: dict, data: dict, source: str, errors: list[SpecError]) -> None:
    """min_batch_rows <= batch_rows <= max_batch_rows, comparing what the run will use."""
    batch = values.get("batch_rows", Spec.batch_rows)
    low, high = values.get("min_batch_rows"), values.get("max_batch_rows")
    if low is not None and low > batch:
        errors.append(SpecError(source, "min_batch_rows", f"{low} is above batch_rows ({batch}); batch_rows is where adaptive sizing starts"))
    if high is not None and high < batch:
        errors.append(SpecError(source, "max_batch_rows", f"{high} is below batch_rows ({batch}); batch_rows is where adaptive sizing starts"))
    if low is not None and high is not None and low > high:
        errors.append(SpecError(source, "max_batch_rows", f"{high} is below min_batch_rows ({low})"))


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate one spec file.

    :param path: a ``.yaml`` file, UTF-8 text.
    :return: the validated spec.
    :raises SpecErrors: naming the file (and the field where there is one) when it cannot be read, is
        not UTF-8, is not valid YAML, gives a key twice, or fails validation (``parse_spec``).
    """
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecErrors([SpecError(source, None, f"cannot be read: {exc.strerror}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # one such file must not stop the others from loading
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecErrors([SpecError(source, None, f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); "
                                                  "save it as UTF-8")]) from None
    try:
        data = specyaml.load(text)
    except specyaml.DuplicateKey as exc:
        field_name = str(exc.path[0]) if exc.path else str(exc.key)
        raise SpecErrors([SpecError(source, field_name, str(exc))]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecErrors([SpecError(source, None, f"is not valid YAML{at}: {problem}")]) from exc
    except RecursionError:
        raise SpecErrors([SpecError(source, None, "is nested too deeply to be a spec")]) from None
    try:
        return parse_spec(data, source)
    except RecursionError:  # e.g. a self-referencing YAML alias where a value is expected
        raise SpecErrors([SpecError(source, None, "holds a value that refers to itself (a YAML alias loop)")]) from None


def specs_dir() -> Path | None:
    """The specs folder named by ``$ROWFILL_SPECS_DIR``, or None.

    Only the environment: this layer does not read Airflow's config. Callers above it resolve the
    folder with ``rowfill.airflow.specs_folder`` (which adds ``[rowfill] specs_folder`` and the
    ``rowfill/`` folder of the DAG bundle) and pass it in; nothing resolves into the installed package.
    """
    value = os.environ.get(SPECS_ENV)
    return Path(value) if value else None


_NO_FOLDER = ("specs folder does not exist; create it with `rowfill init DAGS_FOLDER` (a rowfill/ folder inside the DAG "
              "bundle), or point Airflow's [rowfill] specs_folder (AIRFLOW__ROWFILL__SPECS_FOLDER) or ROWFILL_SPECS_DIR "
              "at the folder holding your *.yaml specs")


def load_specs(directory: str | os.PathLike | None = None) -> tuple[list[Spec], list[SpecError]]:
    """All specs in a directory: the good ones, and the errors of the bad ones (never one hiding the other).

    :param directory: the specs folder (default ``specs_dir()``, i.e. ``$ROWFILL_SPECS_DIR``).
    :returns: (the good specs, sorted by file name; the errors of the bad ones, or one error naming the
        folder and the settings that choose it when it does not exist). Never raises for a spec.
    """
    directory = Path(directory) if directory else specs_dir()
    specs: list[Spec] = []
    errors: list[SpecError] = []
    if directory is None or not directory.is_dir():
        return [], [SpecError(str(directory or "(no specs folder)"), None, _NO_FOLDER)]
    seen: dict[str, str] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            spec = load_spec(path)
        except SpecErrors as exc:
            errors.extend(exc.errors)
            continue
        if spec.name in seen:
            errors.append(SpecError(str(path), "name", f"{spec.name!r} is already used by {seen[spec.name]}; names must be unique"))
            continue
        seen[spec.name] = str(path)
        specs.append(spec)
    return specs, errors


def find_spec(name: str, directory: str | os.PathLike | None = None) -> Spec:
    """The spec called ``name`` in ``directory`` (default ``specs_dir()``).

    :raises SpecErrors: the spec file's own errors when it is broken; otherwise "no spec named ..."
        with the names that exist.
    """
    specs, errors = load_specs(directory)
    for spec in specs:
        if spec.name == name:
            return spec
    broken = [e for e in errors if Path(e.source).stem == name]
    if broken:
        raise SpecErrors(broken)
    known = ", ".join(s.name for s in specs) or "none"
    raise SpecErrors([SpecError(str(directory or specs_dir()), None, f"no spec named {name!r} (known: {known})")])
