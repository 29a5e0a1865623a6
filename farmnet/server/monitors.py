"""The monitors' event log: the farm's events as the records (`farmnet.messages.Event`)
that monitors long-poll for (`PollEvents`, the web site's ``/events``).

It subscribes to the farm's bus and turns each event into a record with a ``kind`` (the
wire's names: task, progress, job, job_deleted, user, user_deleted, render, render_zombie,
render_deleted, pool, pool_deleted, branch, branch_deleted), a snapshot taken then. Every
record gets the next sequence number. Only the most recent ``keep`` are kept; a monitor
that asks for older ones is told to reload (``reset``). Waiters are plain callables so
this stays free of Deferreds. The one converter turns records into JSON at the edges
(`Typed`, the web's `events_json`).

A pool's record lists every render in it, and each render placed in a pool changes the
pool: a pool of `POOL_COALESCE_RENDERS` or more is recorded at once, then at most once per
`POOL_RECORD_INTERVAL`, so that
thousands of renders registering cost a few records, not a record of thousands of names
per render (quadratic in time and in the log's memory). A change within the interval is
recorded (as the pool is then) with the first event, read or wait after the interval:
a monitor sees it by its next poll at the latest, and no timer is left behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from farmnet import messages as m
from farmnet.convert import unstructure
from farmnet.model import events as ev
from farmnet.model.farm import Farm
from farmnet.model.pools import Pool
from farmnet.model.views import render_record, user_record

Event = m.Event

#: Seconds between two records of one big pool (changes meanwhile make one record after).
POOL_RECORD_INTERVAL = 1.0
#: Renders from which a pool is big: smaller ones are recorded at every change.
POOL_COALESCE_RENDERS = 100


class EventLog:
    def __init__(self, farm: Farm | None = None, keep: int = 100_000) -> None:
        self.last = 0
        self._events: deque[Event] = deque(maxlen=keep)
        self._waiters: list[Callable[[], None]] = []
        self._unsubscribe: Callable[[], None] = lambda: None
        #: When each pool was last recorded, and the pools changed since, not recorded yet.
        self._pools_recorded: dict[str, float] = {}
        self._pools_changed: dict[str, Pool] = {}
        self._flush_pools: Callable[[], None] = lambda: None
        if farm is not None:
            self.follow(farm)

    def follow(self, farm: Farm) -> None:
        """Record what ``farm`` publishes from now on (one farm at a time)."""

        def add(event: Event) -> None:
            self.add(event)  # looked up at each event: a test may stop the log's events

        def task(e: ev.TaskStateChanged) -> None:
            t = e.task
            b = t.block
            add(m.TaskEvent(self.last + 1, b.job.id, b.number, t.number, t.state.value, t.host,
                            t.errors_count))

        def progress(e: ev.TaskProgressed) -> None:
            t = e.task
            add(m.ProgressEvent(self.last + 1, t.block.job.id, t.block.number, t.number, t.progress))

        def render(e: Any) -> None:
            add(m.RenderEvent(self.last + 1, render_record(e.render)))

        def pool(p: Pool) -> None:
            now = farm.clock.seconds()
            recorded = self._pools_recorded.get(p.path)
            if (recorded is not None and now - recorded < POOL_RECORD_INTERVAL
                    and len(p.renders) >= POOL_COALESCE_RENDERS):
                self._pools_changed[p.path] = p  # recorded once the interval is over
                return
            self._pools_changed.pop(p.path, None)
            self._pools_recorded[p.path] = now
            add(m.PoolEvent(self.last + 1, farm.trees.pool_record(p)))

        def flush_pools() -> None:
            now = farm.clock.seconds()
            for path, changed in list(self._pools_changed.items()):
                if now - self._pools_recorded[path] >= POOL_RECORD_INTERVAL:
                    del self._pools_changed[path]
                    if farm.trees.pools.get(path) is changed:  # not deleted since
                        pool(changed)

        self._flush_pools = flush_pools

        def render_lost(e: ev.RenderLost) -> None:
            if e.zombie:
                add(m.RenderZombieEvent(self.last + 1, e.render.name))
            render(e)

        self._unsubscribe = farm.bus.subscribe_all({
            ev.TaskStateChanged: task,
            ev.TaskProgressed: progress,
            (ev.JobSubmitted, ev.JobChanged):
                lambda e: add(m.JobEvent(self.last + 1, farm.job_record(e.job))),
            ev.JobDeleted: lambda e: add(m.JobDeletedEvent(self.last + 1, e.job.id)),
            ev.UserChanged: lambda e: add(m.UserEvent(self.last + 1, user_record(e.user))),
            ev.UserDeleted: lambda e: add(m.UserDeletedEvent(self.last + 1, e.user.name)),
            (ev.RenderRegistered, ev.RenderChanged, ev.RenderSick): render,
            ev.RenderLost: render_lost,
            ev.RenderDeleted: lambda e: add(m.RenderDeletedEvent(self.last + 1, e.render.name)),
            ev.PoolChanged: lambda e: pool(e.pool),
            ev.PoolDeleted: lambda e: add(m.PoolDeletedEvent(self.last + 1, e.pool.path)),
            ev.BranchChanged: lambda e: add(m.BranchEvent(self.last + 1, farm.trees.branch_record(e.branch))),
            ev.BranchDeleted: lambda e: add(m.BranchDeletedEvent(self.last + 1, e.branch.path)),
        })

    def close(self) -> None:
        """Stop following the farm."""
        self._unsubscribe()

    def add(self, event: Event) -> None:
        """Keep ``event``, whose ``seq`` is ``last + 1``, and wake the waiters."""
        if self._pools_changed and not isinstance(event, m.PoolEvent):
            before = self.last
            self._flush_pools()
            if self.last != before:  # pool records came first
                event = attrs.evolve(event, seq=self.last + 1)
        self.last = event.seq
        self._events.append(event)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for wake in waiters:
                wake()

    def since(self, after: int, limit: int = 10_000) -> tuple[list[Event], bool]:
        """Events after ``after`` (at most ``limit``), and whether some were forgotten."""
        if self._pools_changed:
            self._flush_pools()
        if after >= self.last:
            return [], False
        first = self.last - len(self._events) + 1
        if after + 1 < first:
            return [], True
        start = after + 1 - first
        return [self._events[i] for i in range(start, min(start + limit, len(self._events)))], False

    def recent(self, most: int) -> Iterator[Event]:
        """The last ``most`` events kept, newest first."""
        events = self._events
        for i in range(len(events) - 1, max(-1, len(events) - 1 - most), -1):
            yield events[i]

    def wait(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` once at the next event; returns a function that cancels it."""
        if self._pools_changed:
            self._flush_pools()
        self._waiters.append(wake)

        def cancel() -> None:
            if wake in self._waiters:
                self._waiters.remove(wake)

        return cancel


def events_json(events: list[Event]) -> list[dict[str, Any]]:
    """Events as JSON-ready data (the web's long-poll and stream), by the one converter."""
    return unstructure(events, list[Event])
