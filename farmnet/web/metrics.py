"""``/metrics`` for Prometheus: the farm read at scrape time.

:class:`FarmCollector` is a prometheus_client custom collector: nothing is counted on the
farm's hot path, every figure is read from the farm when Prometheus scrapes. Each site
has its own :class:`~prometheus_client.CollectorRegistry` (no process-wide registry, so
two farms in one process, as in tests, do not mix).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.server.monitors import EventLog
from farmnet.web.routing import Call, Reply

__all__ = ["FarmCollector", "RENDER_STATES", "make_registry", "metrics_handler"]

#: A render's state for counting: the first of these that applies.
RENDER_STATES = ("offline", "sick", "paused", "NIMBY", "nimby", "busy", "idle")


def render_state(render: Any) -> str:
    if not render.online:
        return "offline"
    for flag in ("sick", "paused", "NIMBY", "nimby"):
        if getattr(render, flag):
            return flag
    return "busy" if render.tasks else "idle"


class FarmCollector:
    """Gauges of renders, tasks, jobs and users by state; counters of assignments and events;
    connections and web clients when the site knows them."""

    def __init__(self, farm: Farm, events: EventLog,
                 extra: Callable[[], dict[str, tuple[str, float]]] | None = None,
                 statistics: Callable[[], bool | None] | None = None,
                 connections: Callable[[], dict[str, int] | None] | None = None) -> None:
        self.farm = farm
        self.events = events
        #: AMP connections by kind (render, tool, monitor, ...), when the server tells.
        self.connections = connections
        #: Gauge name → (help, value), e.g. AMP connections and SSE clients.
        self.extra = extra
        self.statistics = statistics

    def describe(self) -> list[Metric]:
        return []  # not described ahead: figures come at scrape time

    def collect(self) -> Iterator[Metric]:
        farm = self.farm
        renders = GaugeMetricFamily("farmnet_renders", "Renders by state (the most telling one).",
                                    labels=["state"])
        by_state = Counter(render_state(r) for r in farm.renders.values())
        for state in RENDER_STATES:
            renders.add_metric([state], by_state[state])
        yield renders

        capacity = GaugeMetricFamily("farmnet_render_capacity", "Capacity units of online renders.",
                                     labels=["use"])
        online = [r for r in farm.renders.values() if r.online]
        capacity.add_metric(["total"], sum(r.capacity for r in online))
        capacity.add_metric(["used"], sum(r.capacity_used for r in online))
        yield capacity

        yield from self._resources(online)

        tasks = GaugeMetricFamily("farmnet_tasks", "Tasks by state.", labels=["state"])
        counts: Counter[TaskState] = Counter()
        for job in farm.jobs.values():
            counts.update(job.counts)
        for state in TaskState:
            tasks.add_metric([state.value], counts[state])
        yield tasks

        jobs = GaugeMetricFamily("farmnet_jobs", "Jobs by state (as listings show it).", labels=["state"])
        job_states = Counter(farm.scheduler.display_state(job) for job in farm.jobs.values())
        for state in TaskState:
            jobs.add_metric([state.value], job_states[state])
        yield jobs

        yield GaugeMetricFamily("farmnet_users", "Users the farm knows.", value=len(farm.users))
        running = GaugeMetricFamily("farmnet_user_running_tasks", "Running tasks per user.", labels=["user"])
        for user in farm.users.values():
            running.add_metric([user.name], user.running)
        yield running

        yield CounterMetricFamily("farmnet_task_assignments", "Tasks handed to renders by the scheduler.",
                                  value=farm.assignments)
        yield CounterMetricFamily("farmnet_events", "Events in the farm's event log.", value=self.events.last)
        if self.extra is not None:
            for name, (help_text, value) in self.extra().items():
                yield GaugeMetricFamily(name, help_text, value=value)
        counts = self.connections() if self.connections is not None else None
        if counts is not None:
            conns = GaugeMetricFamily("farmnet_connections", "Open AMP connections by kind.", labels=["kind"])
            for kind, n in sorted(counts.items()):
                conns.add_metric([kind], n)
            yield conns
        if self.statistics is not None:
            up = self.statistics()
            if up is not None:
                yield GaugeMetricFamily("farmnet_statistics_up",
                                        "1 when statistics are being written to PostgreSQL.", value=int(up))


    @staticmethod
    def _resources(renders: list[Any]) -> Iterator[Metric]:
        """What online renders reported of their machines (with their heartbeats)."""
        gauges = {key: GaugeMetricFamily(name, text, labels=["render"]) for key, name, text in (
            ("cpu_percent", "farmnet_render_cpu_percent", "CPU use of the render's machine, in percent."),
            ("mem_used_mb", "farmnet_render_memory_used_mb", "Memory in use on the render's machine, in MB."),
            ("mem_total_mb", "farmnet_render_memory_total_mb", "Memory of the render's machine, in MB."),
        )}
        for render in renders:
            resources = getattr(render, "resources", None) or {}
            for key, gauge in gauges.items():
                value = resources.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    gauge.add_metric([render.name], value)
        yield from gauges.values()


def make_registry(collector: FarmCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def metrics_handler(registry: CollectorRegistry) -> Callable[[Call], Any]:
    async def handler(call: Call) -> Reply:
        return Reply(generate_latest(registry), 200, CONTENT_TYPE_LATEST)

    return handler
