"""Line charts as inline SVG, for the Status tab's last 15 minutes.

Drawn here rather than by a plotting component: nothing is fetched (no CDN, no script), it renders
the same on a phone, and a test reads its numbers from the page (`data-*` attributes).
"""

from __future__ import annotations

import html
from typing import Any

WIDTH, HEIGHT = 600, 120
COLORS = ("#6366f1", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444", "#a855f7", "#14b8a6", "#ec4899")
#: Series drawn per chart, the highest first (the rest are left out, and said so).
MAX_SERIES = len(COLORS)


def _nice(top: float) -> float:
    """The smallest of 1, 2, 5 × 10^n at or above `top` (at least 1): the chart's y maximum."""
    scale = 1.0
    while True:
        for step in (1.0, 2.0, 5.0):
            if step * scale >= top:
                return step * scale
        scale *= 10


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(elem_id: str, title: str, series: dict[str, list[tuple[float, float]]], start: float,
               end: float, unit: str = "") -> str:
    """A chart of `series` (name -> (time, value) points, oldest first) from `start` to `end` (the same
    clock), its y axis from 0 to a round number above the highest value."""
    ranked = sorted(series.items(), key=lambda kv: -max((v for _, v in kv[1]), default=0.0))
    shown = ranked[:MAX_SERIES]
    top = _nice(max((v for _, points in shown for _, v in points), default=0.0))
    span = max(end - start, 1e-9)
    lines, legend = [], []
    for (name, points), color in zip(shown, COLORS):
        if not points:
            continue
        coords = [((t - start) / span * WIDTH, HEIGHT - v / top * HEIGHT) for t, v in points]
        if len(coords) == 1:  # one sample: a short dash, so it shows
            coords.insert(0, (max(coords[0][0] - 4, 0.0), coords[0][1]))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        last = points[-1][1]
        esc = html.escape(name, quote=True)
        lines.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" '
                     f'vector-effect="non-scaling-stroke" data-series="{esc}" data-points="{len(points)}" '
                     f'data-last="{last:g}" data-max="{max(v for _, v in points):g}"/>')
        legend.append(f'<span class="ob-legend"><i style="background:{color}"></i>{esc} '
                      f'<b>{_number(last)}{html.escape(unit)}</b></span>')
    if len(ranked) > len(shown):
        legend.append(f'<span class="ob-legend">+{len(ranked) - len(shown)} more</span>')
    grid = "".join(f'<line x1="0" x2="{WIDTH}" y1="{y}" y2="{y}" class="ob-grid" '
                   'vector-effect="non-scaling-stroke"/>' for y in (0, HEIGHT / 2, HEIGHT))
    samples = max((len(points) for _, points in series.items()), default=0)
    return (f'<div class="ob-chart" id="{elem_id}" data-samples="{samples}">'
            f'<div class="ob-chart-head"><span class="ob-k">{html.escape(title)}</span>'
            f'<span class="ob-s">max {_number(top)}{html.escape(unit)}</span></div>'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
            f'aria-label="{html.escape(title, quote=True)}">{grid}{"".join(lines)}</svg>'
            f'<div class="ob-chart-axis"><span>−{_ago(span)}</span><span>now</span></div>'
            f'<div class="ob-chart-legend">{"".join(legend) or "<span class=ob-legend>no data yet</span>"}</div>'
            f'</div>')


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def history_charts(history: dict[str, Any], now: float) -> str:
    """The Status tab's two charts from `StatusViews.history()`: tokens/s per backend, and requests
    in flight and queued, over the history's window up to `now` (from the first sample, at least a
    minute, while the gateway is younger than the window)."""
    samples = history.get("samples") or []
    start = now - float(history.get("window_s") or 900)
    if samples:
        start = max(start, min(samples[0]["at"], now - 60))
    names: list[str] = []
    for sample in samples:
        names.extend(n for n in sample["tokens_per_s"] if n not in names)
    tokens = {name: [(s["at"], float(s["tokens_per_s"].get(name, 0.0))) for s in samples] for name in names}
    load = {"in flight": [(s["at"], float(s["in_flight"])) for s in samples],
            "queued": [(s["at"], float(s["queued"])) for s in samples]}
    period = history.get("period_s")
    note = (f'<p class="ob-note">The last 15 minutes, a sample every {period:g}s.</p>'
            if isinstance(period, (int, float)) else "")
    return (f'<div class="ob-charts" id="status-chart">'
            f'{line_chart("status-chart-tokens", "Tokens/s per backend", tokens, start, now)}'
            f'{line_chart("status-chart-load", "Requests in flight and queued", load, start, now)}'
            f'</div>{note}')
