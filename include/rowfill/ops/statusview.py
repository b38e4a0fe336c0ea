"""``rowfill status`` in a terminal: one progress bar per backfill (and per chunk), rate, ETA, state,
throttle state when the throttle records one, and the last error. Also its ``--json`` form."""

from __future__ import annotations

import json
from collections.abc import Iterable

from rowfill.engine.report import still_text
from rowfill.engine.status import BackfillStatus
from rowfill.spec.spec import Spec
from rowfill.spec.durations import format_duration

_MARK = {"done": "done", "running": "run ", "pending": "wait", "failed": "FAIL", "stale": "STALE"}


def progress_bar(share: float, width: int = 30) -> str:
    """``[#######.......]  45.0%``: ``share`` (0..1, clamped) over ``width`` characters."""
    share = max(0.0, min(share, 1.0))
    filled = int(round(share * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%}"


def _eta(seconds: float | None, state: str) -> str:
    if state == "done":
        return "finished"
    if state == "stale":  # nothing runs: no time to finish can be told
        return "no ETA"
    if seconds is None:
        return "ETA unknown"
    return f"ETA {format_duration(seconds)}"


def _throttle(values: dict) -> str:
    return ", ".join(f"{k.removeprefix('throttle_').replace('_', ' ') or k}: {v}" for k, v in values.items())


def _stale_text(chunks) -> str:
    """Chunks marked running whose runner is gone: who held them, and what happens next."""
    held = "; ".join(f"chunk {c.chunk_no} by {c.worker or 'an unknown worker'}, last heard "
                     f"{format_duration(c.lease_age) if c.lease_age is not None else '?'} ago" for c in chunks[:5])
    more = f" and {len(chunks) - 5} more" if len(chunks) > 5 else ""
    return (f"{held}{more}: the runner's lease ran out (its process is gone); the next attempt (an Airflow retry, "
            "a cleared task or `rowfill run`) takes it over from its checkpoint")


def render_backfill(spec: Spec, s: BackfillStatus, show_chunks: bool = False, width: int = 30) -> list[str]:
    """The terminal lines of one backfill: bar, rows, rate, ETA, state; chunk counts; stale chunks,
    throttle state and last error when there are any; with ``show_chunks`` one line per chunk.

    :param width: characters of the backfill's progress bar (chunk bars are 20).
    """
    if s.state == "not started":
        return [f"{spec.name:24} not started (no plan in the checkpoint store yet)"]
    lines = [
        f"{spec.name:24} {progress_bar(s.share, width)}  {s.rows_seen:,} of ~{s.rows_estimated:,} rows  "
        f"{s.rows_per_second:,.0f} rows/s  {_eta(s.eta_seconds, s.state)}  {s.state}",
        f"{'':24} chunks: {s.chunks_done}/{len(s.chunks)} done, {s.chunks_running} running, "
        + (f"{s.chunks_stale} stale, " if s.chunks_stale else "")
        + f"{s.chunks_pending} waiting, {s.chunks_failed} failed; {s.rows_written:,} rows written"
        f"{still_text(s.rows_still_matching)}"
        + (f"; {s.rows_skipped:,} rows held by other sessions still to write" if s.rows_skipped else ""),
    ]
    if s.chunks_stale:
        stale = [c for c in s.chunks if c.status == "stale"]
        lines.append(f"{'':24} stale: {_stale_text(stale)}")
    if s.throttle:
        lines.append(f"{'':24} throttle: {_throttle(s.throttle)}")
    if s.last_error:
        chunk = next((c for c in s.chunks if c.chunk_no == s.last_error_chunk), None)
        where = f"chunk {chunk.chunk_no} ({chunk.range_text(spec.key)})" if chunk else "a chunk"
        lines.append(f"{'':24} last error, {where}: {s.last_error.splitlines()[0][:300]}")
    if show_chunks:
        for c in s.chunks:
            share = 1.0 if c.status == "done" else (min(c.rows_seen / c.est_rows, 1.0) if c.est_rows else 0.0)
            line = (f"    chunk {c.chunk_no:>4} {_MARK.get(c.status, c.status)} {progress_bar(share, 20)} "
                    f"{c.rows_seen:>12,} of ~{c.est_rows:<12,} {c.range_text(spec.key)}")
            if c.status == "running":
                line += f"  {c.rows_per_second:,.0f} rows/s, {_eta(c.eta_seconds, c.status)}"
                if c.throttle:
                    line += f"  [{_throttle(c.throttle)}]"
            if c.status == "stale":
                line += f"  stale: {_stale_text([c])}"
            if c.status == "failed" and c.last_error:
                line += f"  error: {c.last_error.splitlines()[0][:200]}"
            lines.append(line)
    return lines


def render_json(pairs: Iterable[tuple[Spec, BackfillStatus]], show_chunks: bool) -> str:
    """``rowfill status --json``: a list of ``BackfillStatus.to_dict`` with the DAG id and table added.

    :param pairs: (spec, status) per backfill, in the order to print.
    :param show_chunks: include each chunk's entry.
    """
    out = []
    for spec, s in pairs:
        d = s.to_dict(chunks=show_chunks)
        d["dag_id"] = spec.dag_id
        d["table"] = str(spec.table)
        out.append(d)
    return json.dumps(out, indent=2, default=str)
