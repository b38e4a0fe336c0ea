"""Progress lines people can read at a glance: "120,000 of ~200,000 rows, 41,000 rows/s, ETA 2 s"."""

from __future__ import annotations

from rowfill.spec.durations import format_duration


def eta_seconds(done: int, total: int, rate: float) -> float | None:
    """Seconds left at the current rate: 0.0 when ``done`` reached ``total``, None when ``rate`` is not above 0.

    :param done: rows walked so far.
    :param total: rows expected (the planner's estimate).
    :param rate: rows per second.
    """
    if rate <= 0 or total <= done:
        return 0.0 if total <= done else None
    return (total - done) / rate


def progress_line(label: str, done: int, total: int, rate: float) -> str:
    """The task log's progress line: ``<label>: 120,000 of ~200,000 rows, 41,000 rows/s, ETA 2.0 s``.

    :param done: rows walked; :param total: rows expected; :param rate: rows per second.
    """
    eta = eta_seconds(done, total, rate)
    eta_text = "ETA unknown" if eta is None else f"ETA {format_duration(eta)}"
    return f"{label}: {done:,} of ~{total:,} rows, {rate:,.0f} rows/s, {eta_text}"
