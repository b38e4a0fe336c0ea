"""Riding out a database restart: retry what a lost connection interrupted, with backoff, for ``reconnect_for``.

A PostgreSQL restart (a minor-version upgrade, a failover, ``pg_terminate_backend``) ends every
session; for a second or a few minutes new connections are refused or told "the database system
is starting up". Whatever rowfill was doing then is retried here, as a whole, once the server
answers again:

- a batch: the server rolled back the transaction the connection was in, so nothing of it is
  written, and the retried batch reads its chunk's cursor again: it continues after the last
  committed batch (if the commit itself got through before the connection broke, the cursor
  moved with it), so every row is still written exactly once;
- planning, verify, control and bookkeeping reads and writes: each is one or a few short
  transactions that are safe to run again.

Which errors count is ``rowfill.engine.disconnects.is_connection_error``. SQLAlchemy does the
reconnecting itself: a disconnect invalidates the pool's connections and ``pool_pre_ping``
replaces stale ones at checkout (see ``rowfill.engine.database``); this module only decides when to try again
and when to give up. Waits are capped exponential with full jitter (AWS Architecture Blog,
"Exponential Backoff And Jitter", 2015), computed by tenacity (``wait_random_exponential``), so
the runners of many chunks do not all reconnect in the same instant. Giving up: once
``reconnect_for`` seconds have passed since the first failure of this outage (not since the call
began: a long verify that loses its connection at the end still gets the whole time).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, TypeVar
from collections.abc import Callable

from tenacity import Retrying, retry_if_exception, wait_random_exponential

from rowfill.engine.disconnects import describe, is_connection_error
from rowfill.errors import RowfillError
from rowfill.spec.durations import format_duration

log = logging.getLogger("rowfill.reconnect")

BACKOFF_FIRST = 0.25  # seconds: the first wait is at most this (a sub-second restart costs well under a second)
BACKOFF_CAP = 5.0  # seconds: no wait is longer, so a server that is back is found within 5 s

T = TypeVar("T")


class TaskLog(Protocol):
    """What this module logs through: a ``logging.Logger``, or the task log an Airflow operator has
    (``self.log``, structlog-based, ``airflow.sdk._shared.logging.types.Logger``: the same methods
    with %-style arguments). Positional-only, as the two name the message differently."""

    def debug(self, msg: Any, /, *args: Any) -> Any:
        """Log at DEBUG, %-style."""
        ...

    def info(self, msg: Any, /, *args: Any) -> Any:
        """Log at INFO, %-style."""
        ...

    def warning(self, msg: Any, /, *args: Any) -> Any:
        """Log at WARNING, %-style."""
        ...


class DatabaseUnreachable(RowfillError):
    """The database stayed unreachable for longer than the spec's ``reconnect_for``."""


class _Outage:
    """One run of connection failures: when it began, and what the log has said about it."""

    def __init__(self, reconnect_for: float, what: str, logger: TaskLog, clock: Callable[[], float],
                 note: str = ""):
        self.reconnect_for, self.what, self.log, self.clock, self.note = reconnect_for, what, logger, clock, note
        self.began: float | None = None
        self.waits = 0

    def stop(self, retry_state) -> bool:
        """tenacity's stop condition: True once the outage has lasted ``reconnect_for`` seconds.

        The first call starts the outage clock (``began``, seconds on ``clock``).
        :param retry_state: tenacity's ``RetryCallState`` (unused: the outage is timed on our clock).
        :returns: True to give up and let the last error through.
        """
        now = self.clock()
        if self.began is None:
            self.began = now
        return now - self.began >= self.reconnect_for

    def wait(self, retry_state) -> float:
        """tenacity's wait: the jittered back-off, never past the end of ``reconnect_for``.

        :param retry_state: tenacity's ``RetryCallState``, whose attempt number drives the back-off.
        :returns: seconds to sleep, at most ``BACKOFF_CAP`` (5.0) and at least 0.0.
        """
        left = self.reconnect_for - (self.clock() - (self.began or self.clock()))
        return max(min(_JITTER(retry_state), left), 0.0)

    def before_sleep(self, retry_state) -> None:
        """Log the outage once as a warning at its first retry, then at debug, so a restart is one line.

        :param retry_state: tenacity's ``RetryCallState``; its outcome holds the connection error.
        """
        exc = retry_state.outcome.exception()
        self.waits += 1
        if self.waits == 1:
            self.log.warning("lost the database connection while %s: %s; %sreconnecting for up to %s (reconnect_for)",
                             self.what, describe(exc), f"{self.note}; " if self.note else "",
                             format_duration(self.reconnect_for))
        else:
            self.log.debug("still no database while %s: %s", self.what, describe(exc))

    def over(self) -> None:
        """Log that the database is back and how long it was away; nothing when it never went away."""
        if self.began is not None:
            self.log.info("database back after %s (lost while %s); continuing", format_duration(self.clock() - self.began),
                          self.what)

    @property
    def lasted(self) -> float:
        """Seconds since the first failure of this outage (0.0 when none happened), on ``clock``."""
        return 0.0 if self.began is None else self.clock() - self.began


_JITTER = wait_random_exponential(multiplier=BACKOFF_FIRST, max=BACKOFF_CAP)


def retry_connection(fn: Callable[[], T], *, reconnect_for: float, what: str, logger: TaskLog | None = None,
                     sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                     note: str = "") -> T:
    """``fn()``, called again after each connection-class error until ``reconnect_for`` seconds of outage.

    ``what`` completes "lost the database connection while ..." in the log, ``note`` says what
    happens to the work that was interrupted. Any other error
    passes through at once; the last connection error is raised as it is once the time is up
    (see ``call`` for the error people read).
    """
    outage = _Outage(reconnect_for, what, logger or log, clock, note)
    retrying = Retrying(retry=retry_if_exception(is_connection_error), stop=outage.stop, wait=outage.wait,
                        before_sleep=outage.before_sleep, sleep=sleep, reraise=True)
    result = retrying(fn)
    outage.over()
    return result


def gave_up(spec, what: str, exc: BaseException) -> DatabaseUnreachable:
    """The one error people read when the database stayed away: field, duration, cause and what to do."""
    return DatabaseUnreachable(
        f"{spec.source}: field 'reconnect_for': the database of connection {spec.connection!r} stayed unreachable "
        f"while {what} for longer than reconnect_for ({format_duration(spec.reconnect_for)}): {describe(exc)}. "
        "Once the server is back, run again (nothing committed is lost); raise `reconnect_for` in the spec to ride "
        "out longer outages.")


def call(fn: Callable[[], T], spec, what: str, logger: TaskLog | None = None,
         sleep: Callable[[float], None] = time.sleep, note: str = "") -> T:
    """``retry_connection`` for the spec's ``reconnect_for``; a DatabaseUnreachable naming the field when it runs out.

    :param fn: the database work, safe to run again (it committed nothing when it failed).
    :param spec: the spec, for ``reconnect_for`` (seconds) and the error's field.
    :param what: what was being done, for the log and the error. :param note: extra for the first warning.
    :returns: ``fn()``'s result.
    :raises DatabaseUnreachable: when connection errors last longer than ``reconnect_for``; any other error as is.
    """
    try:
        return retry_connection(fn, reconnect_for=spec.reconnect_for, what=what, logger=logger, sleep=sleep, note=note)
    except Exception as exc:
        if is_connection_error(exc):
            raise gave_up(spec, what, exc) from exc
        raise
