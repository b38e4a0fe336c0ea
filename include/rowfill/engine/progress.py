"""Progress lines people can read at a glance: "120,000 of ~200,000 rows, 41,000 rows/s, ETA 2 s"."""

from __future__ import annotations

from rowfill.spec.durations import format_duration


def eta_seconds(done: int, total: int, rate: float) -> float | None:
    if rate <= 0 or total <= done:
        return 0.0 if total <= done else None
    return (total - done) / rate


def progress_line(label: str, done: int, total: int, rate: float) -> str:
    eta = eta_seconds(done, total, rate)
    eta_text = "ETA unknown" if eta is None else f"ETA {format_duration(eta)}"
    return f"{label}: {done:,} of ~{total:,} rows, {rate:,.0f} rows/s, {eta_text}"
