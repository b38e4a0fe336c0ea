"""Upper bounds of every duration and count a spec (or a live knob) may give, and why each is where it is.

Every number in a spec ends up somewhere that has a limit of its own: a PostgreSQL setting (an
``int`` of milliseconds), an Airflow task argument (a ``timedelta``, an ``int`` column), a Python
sleep. A value beyond that limit used to pass ``rowfill validate`` and fail later, far from the
spec, as a raw traceback (``lock_timeout: 9999999h`` at plan) or as every DAG disappearing
(``retry_delay`` beyond ``timedelta``). So each field has one bound here, at or below what every
consumer accepts, checked when the spec is read (``rowfill validate``, DAG building, every run)
and when a knob is set. The README's spec field reference lists the same bounds ("Upper bounds").

Durations are seconds (floats), counts whole numbers. A bound is inclusive: the bound itself is
accepted, anything above is refused with a message that names the bound and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

PG_INT_MAX = 2**31 - 1  # PostgreSQL's integer, and the range of its int settings (milliseconds for timeouts)
MAX_BACKENDS = 2**18 - 1  # 262143: PostgreSQL refuses max_connections above this (src/include/postmaster/postmaster.h)
HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True)
class Bound:
    """The largest value a field accepts (inclusive), how people read it, and why it is there."""

    limit: float
    shown: str  # as a spec would write it: "24h", "2147483647ms", "1000"
    why: str

    def check(self, value: float, written=None) -> float:
        """``value`` if it is within the bound.

        :param value: seconds (a float) or a count, already converted.
        :param written: what the spec wrote, for the message (default ``value``).
        :raises ValueError: naming the bound and the reason, when ``value`` is above it.
        """
        if value > self.limit:
            raise ValueError(f"{written if written is not None else value!r} is above the upper bound of {self.shown}: "
                             f"{self.why}")
        return value


_PG_MS = Bound(PG_INT_MAX / 1000, "2147483647ms (about 24.8 days)",
               "PostgreSQL's largest timeout: an int of milliseconds")
_RETRY = Bound(DAY, "24h", "Airflow waits at most [core] max_task_retry_delay, 24h by default, between task retries")
_ROWS = Bound(PG_INT_MAX, "2147483647", "PostgreSQL's integer")

# Spec fields (top level) -> bound. Durations in seconds.
FIELDS: dict[str, Bound] = {
    "chunk_rows": _ROWS,
    "chunk_time": Bound(DAY, "24h", "a chunk holds a worker and a pool slot for this long; beyond a day other backfills "
                                    "sharing the pool wait too long, and Airflow's UI shows no chunk finishing"),
    "batch_rows": _ROWS,
    "min_batch_rows": _ROWS,
    "max_batch_rows": _ROWS,
    "max_parallel_chunks": Bound(1024, "1024", "a run maps at most Airflow's [core] max_map_length chunks, 1024 by "
                                               "default, so more could never run at once"),
    "retries": Bound(1000, "1000", "Airflow retries of a chunk task; more hides a problem that needs a person"),
    "batch_retries": Bound(1000, "1000", "each retry of a batch waits up to 30s; 1000 of them is over 8 hours"),
    "pause": Bound(DAY, "24h", "a rest after every batch; to hold a backfill longer, `rowfill pause` it or give a window"),
    "lock_timeout": _PG_MS,
    "locked_rows_wait": Bound(DAY, "24h", "a chunk waiting on rows another session holds keeps its worker slot; a row "
                                          "locked for a day is a stuck session to end, not contention to wait out"),
    "statement_timeout": Bound((PG_INT_MAX // 2) / 1000, "1073741823ms (about 12.4 days)",
                               "each batch also gets an idle-in-transaction timeout of twice it, and PostgreSQL's "
                               "largest timeout is 2147483647ms"),
    "retry_delay": _RETRY,
    "max_retry_delay": _RETRY,
    "reconnect_for": Bound(DAY, "24h", "a database away for longer than a day needs a person, not a runner that waits; "
                                       "the chunk resumes from its checkpoint when run again"),
    "progress_every": Bound(DAY, "24h", "the cadence of the progress line in the task log"),
    "target_batch_time": Bound(HOUR, "1h", "a batch holds its row locks this long; beyond an hour it is no throttle"),
    "stall_after": Bound(7 * DAY, "168h (7 days)", "no progress for a week is a stall long past reporting"),
    "stall_repeat_after": Bound(28 * DAY, "672h (28 days)", "4 x the largest stall_after"),
    "expected_duration": Bound(366 * DAY, "8784h (366 days)", "a run expected to take longer is a typing mistake"),
}

# Values inside nested fields, named as their errors name them.
LATENCY_LIMIT = Bound(60.0, "1min", "a live point query slower than a minute is an outage, not a latency to throttle "
                                    "by; the probe's own statement_timeout is 20 x the limit")
LATENCY_EVERY = Bound(60.0, "1min", "a latency probe is only useful if it runs at least once a minute")
GATE_SECONDS = Bound(7 * DAY, "168h (7 days)", "replica lag or a transaction that old is an outage, not a throttle")
GATE_COUNT = Bound(MAX_BACKENDS, str(MAX_BACKENDS), "PostgreSQL's largest max_connections: there cannot be more sessions")
PROBE_NUMBER = Bound(2.0**53, "9007199254740992 (2^53)", "the largest whole number a float8 holds exactly")
WEBHOOK_TIMEOUT = Bound(300.0, "5min", "an alert must not hold the task or triggerer that sends it")


def check_field(field: str, value, written=None):
    """A spec field's converted ``value`` (seconds or a count), checked against its bound; None passes.

    ``written`` is what the spec wrote, for the message. Raises ValueError with the bound and why.
    """
    bound = FIELDS.get(field)
    if bound is None or value is None:
        return value
    return bound.check(value, written)

