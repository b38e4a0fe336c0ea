"""Charts for the backfills console as inline SVG text, drawn on the server.

Why SVG on the server: the page is served by a plugin inside Airflow's API server and must load
nothing from the internet (issue 14); a few hundred points need no charting library, and an SVG
string is one more piece of escaped text in the page (no script, nothing to fetch). Every text
that reaches the SVG goes through ``html.escape`` (SVG is XML: the same five characters matter).

Shapes: a series is a list of ``(t, value)`` pairs, ``t`` in seconds since the epoch (float),
``value`` a float or None (a gap). Sizes are in CSS pixels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH = 640  # px: fits beside nothing, under the chunk map, on a laptop screen
HEIGHT = 170  # px
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 14, 24  # px of margin for the axis labels
TICKS = 4  # horizontal grid lines: enough to read a value, few enough not to clutter
PALETTE = ("#1565c0", "#ef8f00", "#6a1b9a", "#2e7d32", "#c62828", "#757575")  # the map's colours, one per series


@dataclass(frozen=True)
class Series:
    """One line of a chart: its legend label, points ``[(t seconds since epoch, value or None)]``,
    and whether it is a limit (drawn dashed, e.g. the latency probe's limit)."""

    label: str
    points: Sequence[tuple[float, float | None]]  # Sequence: a list of (t, float) pairs is one too
    dashed: bool = False


def _nice(top: float) -> float:
    """The axis maximum: ``top`` rounded up to 1, 2 or 5 times a power of ten (0 -> 1)."""
    if top <= 0 or not math.isfinite(top):
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 5, 10):
        if top <= step * power:
            return step * power
    return 10 * power


def _number(value: float) -> str:
    """An axis label: 1,200 / 3.5k / 2.1M; small values keep a decimal."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1_000:.0f}k"
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2g}"


def _clock(t: float, span: float) -> str:
    """A time label: hours and minutes within two days, else month and day (UTC, as Airflow's API)."""
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%H:%M") if span <= 2 * 86_400 else moment.strftime("%b %d")


def _head(title: str, width: int, height: int) -> str:
    """The opening ``<svg>`` of a chart with its title (also its accessible name), escaped."""
    e = html.escape
    return (f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{e(title)}'><title>{e(title)}</title>"
            f"<text x='4' y='11' font-size='11' font-weight='bold'>{e(title)}</text>")


def _axes(top: float, unit: str, y: Callable[[float], float], t0: float, t1: float, width: int, height: int) -> str:
    """A time chart's frame: ``TICKS`` grid lines from 0 to ``top`` (pixel of a value: ``y``), the
    top label with ``unit``, and the first and last time (seconds since the epoch) below."""
    e = html.escape
    span = max(t1 - t0, 1.0)
    parts = []
    for i in range(TICKS + 1):
        value = top * i / TICKS
        yy = y(value)
        parts.append(f"<line x1='{_LEFT}' x2='{width - _RIGHT}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#e4e4e4'/>"
                     f"<text x='{_LEFT - 4}' y='{yy + 4:.1f}' text-anchor='end' font-size='10' fill='#555'>"
                     f"{e(_number(value))}{e(' ' + unit) if i == TICKS and unit else ''}</text>")
    parts.append(f"<text x='{_LEFT}' y='{height - 6}' font-size='10' fill='#555'>{e(_clock(t0, span))}</text>"
                 f"<text x='{width - _RIGHT}' y='{height - 6}' text-anchor='end' font-size='10' fill='#555'>"
                 f"{e(_clock(t1, span))} UTC</text>")
    return "".join(parts)


def line_chart(title: str, series: list[Series], unit: str = "", *, width: int = WIDTH, height: int = HEIGHT) -> str:
    """A time series chart as an ``<svg>`` element: one polyline per series (gaps break the line),
    a value axis from 0 with ``TICKS`` grid lines, the first and last time, and a legend.

    :param title: the chart's heading, inside the SVG (also its accessible name).
    :param series: the lines; points need not be sorted, None values are gaps.
    :param unit: appended to the axis' top label (``rows/s``, ``ms``).
    :returns: SVG text, every label escaped. With no point at all: an SVG that says "no data yet".
    """
    e = html.escape
    pts = [(t, v) for s in series for t, v in s.points if v is not None]
    head = _head(title, width, height)
    if not pts:
        return head + f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#777' font-size='12'>no data yet</text></svg>"
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    span = max(t1 - t0, 1.0)
    top = _nice(max(v for _, v in pts))
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def x(t: float) -> float:
        """The horizontal pixel of time ``t`` (seconds since the epoch)."""
        return _LEFT + (t - t0) / span * plot_w

    def y(v: float) -> float:
        """The vertical pixel of value ``v`` (clipped at the axis' top)."""
        return _TOP + plot_h - min(v / top, 1.0) * plot_h

    parts = [head, _axes(top, unit, y, t0, t1, width, height)]
    legend_x = _LEFT + 90
    for n, s in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        dash = " stroke-dasharray='5 3'" if s.dashed else ""
        runs: list[list[str]] = []  # the unbroken stretches, each a list of "x,y" texts
        run: list[str] = []
        for t, v in sorted(s.points, key=lambda p: p[0]):
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{x(t):.1f},{y(v):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                parts.append(f"<circle cx='{cx}' cy='{cy}' r='2' fill='{colour}'/>")
            else:
                parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5'{dash} points='{' '.join(r)}'/>")
        parts.append(f"<rect x='{legend_x}' y='{height - 14}' width='10' height='3' fill='{colour}'/>"
                     f"<text x='{legend_x + 14}' y='{height - 10}' font-size='10'>{e(s.label)}</text>")
        legend_x += 24 + 7 * len(s.label)
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(title: str, times: Sequence[float], layers: list[tuple[str, Sequence[float]]], unit: str = "", *,
                  width: int = WIDTH, height: int = HEIGHT) -> str:
    """Layers stacked over time as filled areas (e.g. seconds waited per reason): one ``<polygon>``
    per layer that has any value above 0, the total's axis from 0 with ``TICKS`` grid lines, the first
    and last time, and a legend of the layers drawn.

    :param times: the steps' times, seconds since the epoch, ascending.
    :param layers: ``(label, values)`` bottom first, one value (>= 0) per time.
    :param unit: appended to the axis' top label (``s``).
    :returns: SVG text, every label escaped; an SVG that says "none" when every value is 0 or there are no times.
    """
    e = html.escape
    drawn = [(label, values) for label, values in layers if any(v > 0 for v in values)]
    head = _head(title, width, height)
    if not times or not drawn:
        return head + f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#777' font-size='12'>none</text></svg>"
    n = len(times)
    t0, t1 = times[0], times[-1]
    span = max(t1 - t0, 1.0)
    tops = [sum(values[i] for _, values in drawn) for i in range(n)]
    top = _nice(max(tops))
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    xs = [_LEFT + (t - t0) / span * plot_w for t in times]

    def y(v: float) -> float:
        """The vertical pixel of value ``v`` (clipped at the axis' top)."""
        return _TOP + plot_h - min(v / top, 1.0) * plot_h

    parts = [head, _axes(top, unit, y, t0, t1, width, height)]
    below = [0.0] * n
    legend_x = _LEFT + 90
    for k, (label, values) in enumerate(drawn):
        colour = PALETTE[k % len(PALETTE)]
        above = [below[i] + values[i] for i in range(n)]
        if n == 1:  # one step: a bar as wide as a few pixels
            edge = [f"{xs[0] - 3:.1f},{y(above[0]):.1f}", f"{xs[0] + 3:.1f},{y(above[0]):.1f}",
                    f"{xs[0] + 3:.1f},{y(below[0]):.1f}", f"{xs[0] - 3:.1f},{y(below[0]):.1f}"]
        else:
            edge = [f"{xs[i]:.1f},{y(above[i]):.1f}" for i in range(n)] + \
                   [f"{xs[i]:.1f},{y(below[i]):.1f}" for i in reversed(range(n))]
        parts.append(f"<polygon data-layer='{e(label)}' fill='{colour}' fill-opacity='0.75' stroke='{colour}' "
                     f"stroke-width='0.5' points='{' '.join(edge)}'/>")
        parts.append(f"<rect x='{legend_x}' y='{height - 14}' width='10' height='3' fill='{colour}'/>"
                     f"<text x='{legend_x + 14}' y='{height - 10}' font-size='10'>{e(label)}</text>")
        legend_x += 24 + 7 * len(label)
        below = above
    parts.append("</svg>")
    return "".join(parts)


OUTCOME_COLOURS = {"good": "#2e7d32", "bad": "#c62828", "active": "#1565c0", "quiet": "#9e9e9e", "other": "#9e9e9e"}


def run_strip(title: str, runs: list[tuple[float, str]], since: float, *, width: int = WIDTH) -> str:
    """A month of runs at a glance: one tick per run on a time line, coloured by outcome.

    :param runs: ``(start, outcome)``: start in seconds since the epoch, outcome one of
        ``OUTCOME_COLOURS`` (good, bad, active, quiet, other).
    :param since: where the time line starts (seconds since the epoch); it ends now, or at the newest run.
    :returns: SVG text; the title and the outcome counts as its legend, escaped.
    """
    e = html.escape
    height = 46
    end = max([since + 1.0, *(t for t, _ in runs)])
    plot_w = width - _LEFT - _RIGHT
    parts = [f"<svg class='chart strip' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img' aria-label='{e(title)}'><title>{e(title)}</title>"
             f"<text x='4' y='11' font-size='11' font-weight='bold'>{e(title)}</text>"
             f"<line x1='{_LEFT}' x2='{width - _RIGHT}' y1='30' y2='30' stroke='#e4e4e4'/>"]
    for t, outcome in runs:
        x = _LEFT + (t - since) / (end - since) * plot_w
        parts.append(f"<rect x='{x:.1f}' y='18' width='2' height='14' fill='{OUTCOME_COLOURS.get(outcome, '#9e9e9e')}'/>")
    parts.append(f"<text x='{_LEFT}' y='{height - 2}' font-size='10' fill='#555'>{e(_clock(since, end - since))}</text>"
                 f"<text x='{width - _RIGHT}' y='{height - 2}' text-anchor='end' font-size='10' fill='#555'>now</text>")
    parts.append("</svg>")
    return "".join(parts)
