"""Durations as people write them in YAML: ``100ms``, ``2s``, ``1.5m``, ``1h`` or a bare number of seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_YEAR = 366 * 24 * 3600.0
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*")


def parse_duration(value, bound=None) -> float:
    """Seconds as a float; raises ValueError with the accepted forms.

    ``bound``: the field's ``rowfill.spec.bounds.Bound``; a value above it is refused with the bound and
    why. Without one, anything beyond a year is refused (sleeps, timedeltas and PostgreSQL's timeouts
    all overflow somewhere above that).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 100ms, 2s, 5m or 1h, got {'on/yes/true' if value else 'off/no/false'} "
                         "(YAML reads these words unquoted as true and false)")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration; write it like 100ms, 2s, 5m or 1h")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _at_most(float(value), value, bound)
    if isinstance(value, str) and (m := _PATTERN.fullmatch(value)):
        return _at_most(float(m.group(1)) * _UNITS[m.group(2) or "s"], value, bound)
    raise ValueError(f"{value!r} is not a duration; write it like 100ms, 2s, 5m or 1h")


def _at_most(seconds: float, written, bound) -> float:
    if bound is not None:
        bound.check(seconds, written)
    # beyond a year a duration is a typing mistake, and sleeps, timedelta and PostgreSQL's timeouts overflow
    if seconds > _YEAR:
        raise ValueError(f"{written!r} is longer than a year; write it like 100ms, 2s, 5m or 1h")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form for logs: 850 ms, 12 s, 4 min 10 s, 2 h 5 min."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
