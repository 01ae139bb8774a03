"""Inline SVG charts rendered on the server (no script, no build step): a VM's backup size and duration over
time, and a job's phase timeline. Every text is escaped; numbers are formatted here.

Usage::

    svg = history_chart(jobs)          # jobs: dashboard.queries.JobLine, oldest first
    svg = phase_timeline(job)          # job: jobs.model.Job with its phases
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from controller.dashboard.queries import JobLine
from controller.jobs.model import Job, parse_time

WIDTH = 760
LEFT = 90  # room for the axis labels
COLORS = {"completed": "#3b7dd8", "failed": "#d83b3b", "cancelled": "#999999"}
PHASE_COLORS = {"freeze": "#e0a030", "snapshot": "#8e5bd8", "thaw": "#e0a030", "copy": "#3b7dd8", "commit": "#2e9e5b"}


def human_bytes(n: float | None) -> str:
    """Bytes as B / KiB / MiB / GiB / TiB text ('-' for None)."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def human_seconds(s: float | None) -> str:
    """Seconds as 850 ms / 12.3 s / 4.5 min text ('-' for None)."""
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _panel(title: str, values: Sequence[float | None], states: Sequence[str], top: int, text: str) -> list[str]:
    """One bar panel (100 px high) at y=top: a bar per job, the axis maximum labelled."""
    out = [f'<text x="4" y="{top + 12}" class="t">{escape(title)}</text>']
    biggest = max((v for v in values if v is not None), default=0.0) or 1.0
    label = human_bytes(biggest) if text == "bytes" else human_seconds(biggest)
    out.append(f'<text x="4" y="{top + 30}" class="a">max {escape(label)}</text>')
    out.append(f'<line x1="{LEFT}" y1="{top + 100}" x2="{WIDTH}" y2="{top + 100}" class="ax"/>')
    step = (WIDTH - LEFT) / max(len(values), 1)
    for i, (v, st) in enumerate(zip(values, states, strict=True)):
        if v is None:
            continue
        h = max(1.0, 96 * v / biggest)
        x = LEFT + i * step + step * 0.15
        shown = human_bytes(v) if text == "bytes" else human_seconds(v)
        out.append(
            f'<rect x="{x:.1f}" y="{top + 100 - h:.1f}" width="{max(step * 0.7, 1):.1f}" height="{h:.1f}" '
            f'fill="{COLORS.get(st, "#999999")}"><title>{escape(st)}: {escape(shown)}</title></rect>'
        )
    return out


def history_chart(jobs: Sequence[JobLine]) -> str:
    """Backup size (bytes copied) and duration per backup job, oldest left; failed jobs in red."""
    if not jobs:
        return '<p class="muted">no backup jobs yet</p>'
    states = [j.state for j in jobs]
    parts = [
        f'<svg class="chart" role="img" aria-label="backup size and duration" viewBox="0 0 {WIDTH} 250" '
        f'width="{WIDTH}" height="250" xmlns="http://www.w3.org/2000/svg">'
    ]
    parts += _panel("size (copied)", [float(j.bytes_total) for j in jobs], states, 0, "bytes")
    parts += _panel("duration", [j.duration_s for j in jobs], states, 115, "seconds")
    first, last = jobs[0].created_at[:16].replace("T", " "), jobs[-1].created_at[:16].replace("T", " ")
    parts.append(f'<text x="{LEFT}" y="245" class="a">{escape(first)}</text>')
    parts.append(f'<text x="{WIDTH}" y="245" class="a" text-anchor="end">{escape(last)} UTC</text>')
    parts.append("</svg>")
    return "".join(parts)


def phase_timeline(job: Job) -> str:
    """One row per phase: a bar from its start to its end on the job's time axis, with its duration."""
    start = parse_time(job.started_at) or parse_time(job.created_at)
    if not job.phases or start is None:
        return '<p class="muted">no phases recorded</p>'
    spans = []
    for p in job.phases:
        p0 = parse_time(p.started_at) or start
        p1 = parse_time(p.ended_at)
        off = (p0 - start).total_seconds()
        dur = p.duration_s if p.duration_s is not None else ((p1 - p0).total_seconds() if p1 else 0.0)
        spans.append((p.name, p.state, max(off, 0.0), max(dur, 0.0)))
    total = max((o + d for _, _, o, d in spans), default=0.0) or 1.0
    row = 24
    height = row * len(spans) + 30
    parts = [
        f'<svg class="chart" role="img" aria-label="phase timeline" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    scale = (WIDTH - LEFT - 80) / total
    for i, (name, state, off, dur) in enumerate(spans):
        y = i * row + 4
        color = "#d83b3b" if state == "failed" else PHASE_COLORS.get(name, "#7a8a99")
        x, w = LEFT + off * scale, max(dur * scale, 1.5)
        parts.append(f'<text x="4" y="{y + 15}" class="t">{escape(name)}</text>')
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 8}" fill="{color}">'
            f"<title>{escape(name)} ({escape(state)}): {escape(human_seconds(dur))} at +{off:.3f} s</title></rect>"
        )
        parts.append(f'<text x="{x + w + 4:.1f}" y="{y + 13}" class="a">{escape(human_seconds(dur))}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{height - 22}" x2="{WIDTH - 80}" y2="{height - 22}" class="ax"/>')
    parts.append(f'<text x="{LEFT}" y="{height - 6}" class="a">0 s</text>')
    parts.append(
        f'<text x="{WIDTH - 80}" y="{height - 6}" class="a" text-anchor="end">{escape(human_seconds(total))}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
