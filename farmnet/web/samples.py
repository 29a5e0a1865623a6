"""Renders' resources over time, for their pages: heartbeats carry resources but are not
events, so the site samples what the renders last reported every ``interval`` seconds and
keeps the last ``keep`` samples of each (a render's page draws them as lines).

Sampling is one pass over the renders (not their tasks) per interval. It runs from
:meth:`ResourceSamples.start` (the server starts it with the site; a test site starts it
at the first render page) until :meth:`stop` (the site's close).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import task
from twisted.web.template import Tag

from farmnet.web.charts import svg

__all__ = ["ResourceSamples", "Sample"]


@attrs.frozen
class Sample:
    time: float
    #: Percent of the CPUs busy, of the memory used; None when not reported.
    cpu: float | None
    memory: float | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class ResourceSamples:
    def __init__(self, reactor: Any, farm: Any, interval: float = 10.0, keep: int = 360) -> None:
        self.reactor = reactor
        self.farm = farm
        self.keep = keep
        self.samples: dict[str, deque[Sample]] = {}
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = reactor
        self.interval = interval

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        now = self.reactor.seconds()
        for render in self.farm.renders.values():
            if not render.online:
                continue
            res = render.resources
            total = _number(res.get("mem_total_mb")) or render.memory_mb or 0
            used = _number(res.get("mem_used_mb"))
            memory = used * 100 / total if used is not None and total else None
            found = self.samples.get(render.name)
            if found is None:
                found = self.samples[render.name] = deque(maxlen=self.keep)
            found.append(Sample(now, _number(res.get("cpu_percent")), memory))
        for name in set(self.samples) - set(self.farm.renders_by_name):
            del self.samples[name]

    def chart(self, name: str, width: int = 600, height: int = 120) -> Tag | None:
        """CPU and memory percent of ``name`` over the kept samples, as SVG lines."""
        found: Sequence[Sample] = self.samples.get(name, ())
        if len(found) < 2:
            return None
        t0, t1 = found[0].time, found[-1].time
        span = max(t1 - t0, 1e-9)

        def line(values: list[tuple[float, float | None]], colour: str, label: str) -> Tag:
            points = " ".join(
                f"{(t - t0) / span * (width - 10) + 5:.1f},{height - 15 - v / 100 * (height - 25):.1f}"
                for t, v in values if v is not None)
            return svg("polyline", svg("title", label), points=points, fill="none", stroke=colour,
                       stroke_width="1.5", class_="series", data_key=label)

        return svg("svg", svg("rect", x="0", y="0", width=str(width), height=str(height), fill="#fff"),
                   line([(s.time, s.cpu) for s in found], "#3fa34d", "CPU %"),
                   line([(s.time, s.memory) for s in found], "#4e79a7", "memory %"),
                   svg("text", f"CPU (green), memory (blue), last {len(found)} samples", x="5",
                       y=str(height - 2), font_size="11", font_family="sans-serif"),
                   width=str(width), height=str(height), viewBox=f"0 0 {width} {height}",
                   class_="chart", role="img")
