"""Charts as SVG, drawn here in Python (no library, no script in the browser).

:func:`time_bars` draws stacked bars over time (task runs per hour by service, errors per
day by user, ...), :func:`hbars` horizontal bars per group (run times, errors, render
utilisation). The pictures are twisted.web.template tags, so keys coming from the
database are escaped like everything else. Each data bar is a ``<rect class="bar">``
with a ``<title>`` (the browser's tooltip) and ``data-key``, so tests and people can read
the figures back.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from twisted.web.template import Tag

from farmnet.web.layout import attributes

__all__ = ["PALETTE", "duration", "hbars", "nice_ticks", "number", "percent", "time_bars"]

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#2f4b7c", "#a05195", "#665191")
OTHER = "#9a9a9a"
FONT = MappingProxyType({"font_family": "sans-serif", "font_size": "11"})
#: Seconds in one bucket of each interval (a month drawn as 30 days).
INTERVAL_SECONDS = MappingProxyType({"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400,
                                     "month": 30 * 86400})
#: Most series drawn; the rest are summed as "other".
MAX_SERIES = 10
TICK_STEPS = (60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400,
              14 * 86400, 30 * 86400, 91 * 86400, 365 * 86400)


def svg(name: str, *children: Any, **values: Any) -> Tag:
    """An SVG element (twisted.web.template's ``tags`` has HTML's names only); attribute
    names as :func:`~farmnet.web.layout.attributes` takes them (``text_anchor``)."""
    return Tag(name)(*children, **attributes(**values))


def duration(seconds: float | None) -> str:
    """``3725`` → ``1h 2m``; ``12.5`` → ``12.5 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def number(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


DURATION_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600,
                  12 * 3600, 86400, 2 * 86400, 7 * 86400)


def nice_ticks(top: float, count: int = 5, *, integer: bool = False, durations: bool = False) -> list[float]:
    """0 and round steps (1, 2, 2.5, 5 × 10^n; whole numbers with ``integer``; seconds,
    minutes and hours with ``durations``) up to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    if durations and raw <= DURATION_STEPS[-1]:
        step = float(next(s for s in DURATION_STEPS if s >= raw))
    else:
        power = 10 ** math.floor(math.log10(raw))
        step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
        if integer:
            step = max(1.0, float(math.ceil(step)))
    ticks = [0.0]
    while ticks[-1] < top - 1e-9:
        ticks.append(ticks[-1] + step)
    return ticks


def _svg(width: int, height: int, title: str, *body: Any, kind: str) -> Tag:
    heading = svg("text", title, x="8", y="15", fill="#222", font_weight="600", class_="chart-title")
    return svg("svg", svg("title", title), heading, *body, xmlns="http://www.w3.org/2000/svg",
               width=str(width),
              height=str(height), viewBox=f"0 0 {width} {height}", role="img", aria_label=title,
              class_=f"chart chart-{kind}", **FONT)


def _empty(width: int, height: int, title: str, message: str, kind: str) -> Tag:
    return _svg(width, height, title,
                svg("rect", x="0.5", y="0.5", width=str(width - 1), height=str(height - 1), fill="#fafafa",
                   stroke="#ddd"),
                svg("text", message, x=str(width // 2), y=str(height // 2), text_anchor="middle", fill="#777",
                   class_="empty"),
                kind=kind)


def _colours(keys: Sequence[str]) -> dict[str, str]:
    return {k: (OTHER if k == "other" else PALETTE[i % len(PALETTE)]) for i, k in enumerate(keys)}


def _legend(x: int, y: int, colours: Mapping[str, str]) -> Tag:
    items = []
    for i, (key, colour) in enumerate(colours.items()):
        label = key if len(key) <= 22 else key[:21] + "…"
        items.append(svg("g",
                        svg("rect", x=str(x), y=str(y + i * 16), width="10", height="10", fill=colour),
                        svg("text", label, x=str(x + 14), y=str(y + i * 16 + 9), fill="#333"),
                        class_="legend-item", data_key=key))
    return svg("g", items, class_="legend")


def _time_label(t: float, step: float) -> str:
    if step >= 28 * 86400:
        return time.strftime("%Y-%m", time.localtime(t))
    if step >= 86400:
        return time.strftime("%m-%d", time.localtime(t))
    return time.strftime("%H:%M", time.localtime(t))


def _time_ticks(x0: float, x1: float, most: int = 10) -> tuple[list[float], float]:
    span = max(x1 - x0, 1.0)
    step = next((s for s in TICK_STEPS if span / s <= most), TICK_STEPS[-1])
    offset = time.localtime(x0).tm_gmtoff if step < 7 * 86400 else 0
    first = math.ceil((x0 + offset) / step) * step - offset
    ticks = []
    t = first
    while t <= x1:
        ticks.append(t)
        t += step
    return ticks, step


def time_bars(rows: Sequence[Mapping[str, Any]], interval: str, *, value: str = "runs",
              title: str, since: float | None = None, until: float | None = None,
              fmt: Callable[[float], str] = number, width: int = 880, height: int = 280) -> Tag:
    """Stacked bars: one per bucket, a segment per key. ``rows`` are
    ``{"bucket": epoch, "key": str, value: number}`` (as ``tasks_per_interval`` gives)."""
    step = INTERVAL_SECONDS[interval]
    totals: dict[str, float] = defaultdict(float)
    cells: dict[float, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        amount = float(row.get(value) or 0)
        if row.get("bucket") is None or amount <= 0:
            continue
        key = "(none)" if row.get("key") in (None, "") else str(row["key"])
        totals[key] += amount
        cells[float(row["bucket"])][key] += amount
    if not cells:
        return _empty(width, height, title, "nothing in this period", "time")
    keys = sorted(totals, key=lambda k: (-totals[k], k))
    if len(keys) > MAX_SERIES:
        kept = set(keys[:MAX_SERIES - 1])
        for bucket in cells.values():
            other = sum(v for k, v in bucket.items() if k not in kept)
            for k in [k for k in bucket if k not in kept]:
                del bucket[k]
            if other:
                bucket["other"] = other
        keys = [*keys[:MAX_SERIES - 1], "other"]
    colours = _colours(keys)
    buckets = sorted(cells)
    x0 = min(buckets[0], since) if since is not None else buckets[0]
    x1 = max(buckets[-1] + step, until) if until is not None else buckets[-1] + step
    left, right, top, bottom = 64, 180, 30, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(sum(b.values()) for b in cells.values())
    yticks = nice_ticks(peak, integer=fmt is number, durations=fmt is duration)
    ymax = yticks[-1]

    def x(t: float) -> float:
        return left + (t - x0) / (x1 - x0) * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / ymax * plot_h

    grid = [svg("g",
               svg("line", x1=str(left), x2=str(left + plot_w), y1=f"{y(v):.1f}", y2=f"{y(v):.1f}",
                  stroke="#e3e3e3"),
               svg("text", fmt(v), x=str(left - 6), y=f"{y(v) + 4:.1f}", text_anchor="end", fill="#555"))
            for v in yticks]
    ticks, tick_step = _time_ticks(x0, x1)
    xlabels = [svg("text", _time_label(t, tick_step), x=f"{x(t):.1f}", y=str(top + plot_h + 16),
                  text_anchor="middle", fill="#555") for t in ticks]
    bar_w = max(1.0, step / (x1 - x0) * plot_w * 0.85)
    bars = []
    for bucket in buckets:
        base = 0.0
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(bucket))
        for key in keys:
            amount = cells[bucket].get(key, 0.0)
            if amount <= 0:
                continue
            y_top, y_bottom = y(base + amount), y(base)
            bars.append(svg("rect", svg("title", f"{key}, {when}: {fmt(amount)}"), class_="bar",
                           x=f"{x(bucket):.1f}", y=f"{y_top:.1f}", width=f"{bar_w:.1f}",
                           height=f"{max(0.5, y_bottom - y_top):.1f}", fill=colours[key], data_key=key,
                           data_value=f"{amount:g}", data_bucket=f"{bucket:.0f}"))
            base += amount
    axis = svg("line", x1=str(left), x2=str(left + plot_w), y1=str(top + plot_h), y2=str(top + plot_h),
              stroke="#888")
    return _svg(width, height, title, svg("g", grid, class_="grid"), svg("g", bars, class_="bars"), axis,
                svg("g", xlabels, class_="x-axis"), _legend(left + plot_w + 16, top, colours), kind="time")


def hbars(rows: Sequence[Mapping[str, Any]], *, label: str, series: Sequence[tuple[str, str]], title: str,
          fmt: Callable[[float], str] = number, top: float | None = None, width: int = 880) -> Tag:
    """Horizontal bars, one group per row: ``series`` are (field, name) pairs drawn as bars
    side by side. ``top`` fixes the scale's end (1.0 for ratios)."""
    keys = [name for _, name in series]
    colours = _colours(keys)
    rows = [r for r in rows if any(r.get(f) is not None for f, _ in series)]
    row_h = 6 + 12 * len(series)
    height = 46 + max(1, len(rows)) * row_h + 24
    if not rows:
        return _empty(width, 80, title, "nothing in this period", "hbars")
    peak = max(float(r.get(f) or 0) for r in rows for f, _ in series)
    ticks = nice_ticks(top if top is not None else peak, durations=fmt is duration)
    xmax = ticks[-1]
    left, right, top_margin = 170, 150, 30
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + v / xmax * plot_w

    grid = [svg("g",
               svg("line", x1=f"{x(v):.1f}", x2=f"{x(v):.1f}", y1=str(top_margin),
                  y2=str(height - 20), stroke="#e3e3e3"),
               svg("text", fmt(v), x=f"{x(v):.1f}", y=str(height - 6), text_anchor="middle", fill="#555"))
            for v in ticks]
    groups = []
    for i, row in enumerate(rows):
        y0 = top_margin + i * row_h
        name = "(none)" if row.get(label) in (None, "") else str(row[label])
        shown = name if len(name) <= 26 else "…" + name[-25:]
        parts = [svg("text", shown, x=str(left - 6), y=f"{y0 + row_h / 2 + 4:.1f}", text_anchor="end",
                    fill="#333", class_="label")]
        for j, (field, series_name) in enumerate(series):
            amount = row.get(field)
            if amount is None:
                continue
            amount = float(amount)
            parts.append(svg("rect", svg("title", f"{name}, {series_name}: {fmt(amount)}"), class_="bar",
                            x=str(left), y=f"{y0 + 3 + j * 12:.1f}",
                            width=f"{max(0.5, x(amount) - left):.1f}",
                            height="10", fill=colours[series_name], data_key=name, data_series=series_name,
                            data_value=f"{amount:g}"))
        groups.append(svg("g", parts, class_="row"))
    legend = _legend(left + plot_w + 16, top_margin, colours) if len(series) > 1 else ""
    return _svg(width, height, title, svg("g", grid, class_="grid"), svg("g", groups, class_="bars"), legend,
                kind="hbars")


def percent(value: float) -> str:
    return f"{value * 100:.0f}%"

