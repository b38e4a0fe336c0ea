"""Off-peak windows: the hours of the day a backfill may write, in the timezone its users live in.

A window is a daily ``start``..``end`` wall-clock span in a timezone; ``end`` before ``start``
spans midnight. Several windows may be given; their union is when a chunk may run. Everything
takes ``now`` as an argument (or a ``clock`` callable), so tests can drive time instead of waiting
for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, UTC
from typing import Any
from collections.abc import Callable, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current instant, timezone-aware in UTC: the default ``Clock``."""
    return datetime.now(UTC)


def _parse_time(value, what: str) -> time:
    # rowfill.spec.specyaml reads an unquoted 22:30 as text (YAML 1.1 would read the base-60 number 1350)
    if not isinstance(value, str) or not (m := _TIME.fullmatch(value.strip())):
        raise ValueError(f"{what} {value!r} is not a time of day; write it like \"01:00\" or \"22:30:00\" (24-hour clock)")
    return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True)
class Window:
    """A daily wall-clock span, ``start`` to ``end`` (exclusive) in ``timezone`` (an IANA name, checked
    when parsed); ``end`` at or before ``start`` spans midnight."""

    start: time
    end: time
    timezone: str = "UTC"

    @property
    def tz(self) -> ZoneInfo:
        """The window's timezone from the system's IANA database (``zoneinfo``); DST is applied per day."""
        return ZoneInfo(self.timezone)

    def __str__(self) -> str:
        def fmt(t: time) -> str:
            """``01:00``, or ``01:00:30`` when the seconds matter."""
            return t.strftime("%H:%M:%S" if t.second else "%H:%M")
        return f"{fmt(self.start)}-{fmt(self.end)} {self.timezone}"

    def spans(self, around: datetime) -> Iterable[tuple[datetime, datetime]]:
        """The (open, close) instants of this window on the local days around ``around``."""
        local_day = around.astimezone(self.tz).date()
        for offset in (-1, 0, 1, 2):
            day = local_day + timedelta(days=offset)
            opens = _at(day, self.start, self.tz)
            closes = _at(day + timedelta(days=1) if self.end <= self.start else day, self.end, self.tz)
            yield opens, closes


def _at(day: date, t: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, t, tzinfo=tz).astimezone(UTC)


def parse_windows(value: Any) -> tuple[Window, ...]:
    """The ``window`` field.

    :param value: ``{start: "01:00", end: "06:00", timezone: Europe/Berlin}`` or a list of them;
        times as 24-hour text, timezone optional (UTC).
    :return: the windows, in the order given.
    :raises ValueError: with advice, naming the window by its position when there are several.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a window {start: \"01:00\", end: \"06:00\", timezone: \"Europe/Berlin\"} or a list of them")
    out = []
    for i, item in enumerate(items):
        where = f"window {i + 1}: " if len(items) > 1 else ""
        if not isinstance(item, dict):
            raise ValueError(f"{where}expected a mapping like {{start: \"01:00\", end: \"06:00\", timezone: \"Europe/Berlin\"}}")
        unknown = set(item) - {"start", "end", "timezone"}
        if unknown:
            raise ValueError(f"{where}unknown key(s) {', '.join(sorted(map(str, unknown)))}; a window has start, end and timezone")
        if "start" not in item or "end" not in item:
            raise ValueError(f"{where}needs both start and end, e.g. {{start: \"01:00\", end: \"06:00\"}}")
        tz = item.get("timezone", "UTC")
        try:
            if not isinstance(tz, str):
                raise ZoneInfoNotFoundError(tz)
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{where}timezone {tz!r} is not an IANA timezone name such as \"Europe/Berlin\" or \"UTC\"") from None
        start, end = _parse_time(item["start"], f"{where}start"), _parse_time(item["end"], f"{where}end")
        if start == end:
            raise ValueError(f"{where}start and end are both {start}; leave out `window` to run at any time")
        out.append(Window(start, end, tz))
    return tuple(out)


class Windows:
    """The union of a spec's windows. No windows means always open."""

    def __init__(self, windows: Iterable[Window] = ()):
        self.windows = tuple(windows)

    def __bool__(self) -> bool:
        return bool(self.windows)

    def __str__(self) -> str:
        return ", ".join(map(str, self.windows)) or "any time"

    def is_open(self, now: datetime) -> bool:
        """Whether a chunk may write at ``now`` (timezone-aware); always, without windows."""
        if not self.windows:
            return True
        return any(o <= now < c for w in self.windows for o, c in w.spans(now))

    def next_open(self, now: datetime) -> datetime:
        """``now`` if open, else the next instant a window opens."""
        if self.is_open(now):
            return now
        return min(o for w in self.windows for o, _ in w.spans(now) if o > now)

    def closes_at(self, now: datetime) -> datetime | None:
        """When the open period containing ``now`` ends (windows that touch or overlap count as one)."""
        if not self.windows:
            return None
        end = now
        for _ in range(16):  # chained windows; each step moves to a later close
            spans = [c for w in self.windows for o, c in w.spans(end) if o <= end < c]
            if not spans:
                return end if end > now else None
            end = max(spans)
        return end
