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
pool: a pool is recorded at once, then at most once per `POOL_RECORD_INTERVAL` (the last
of the changes meanwhile), so that thousands of renders registering cost a few records,
not a record of thousands of names per render (quadratic in time and in the log's memory).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from farmnet import messages as m
from farmnet.convert import unstructure
from farmnet.model import events as ev
from farmnet.model.farm import Farm
from farmnet.model.pools import Pool
from farmnet.model.views import render_record, user_record

Event = m.Event

#: Seconds between two records of one pool (changes meanwhile make one record at the end).
POOL_RECORD_INTERVAL = 1.0


class EventLog:
    def __init__(self, farm: Farm | None = None, keep: int = 100_000) -> None:
        self.last = 0
        self._events: deque[Event] = deque(maxlen=keep)
        self._waiters: list[Callable[[], None]] = []
        self._unsubscribe: Callable[[], None] = lambda: None
        #: Pools recorded lately, by path: when, and the timer of the record that ends the
        #: interval when the pool changed again meanwhile (a single change leaves no timer).
        self._quiet_pools: dict[str, tuple[float, Any]] = {}
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
            quiet = self._quiet_pools.get(p.path)
            if quiet is None:  # not recorded lately: at once, and quiet for an interval
                add(m.PoolEvent(self.last + 1, farm.trees.pool_record(p)))
                self._quiet_pools[p.path] = (farm.clock.seconds(), None)
            elif farm.clock.seconds() - quiet[0] >= POOL_RECORD_INTERVAL:
                del self._quiet_pools[p.path]
                if quiet[1] is not None and quiet[1].active():
                    quiet[1].cancel()
                pool(p)
            elif quiet[1] is None:  # changed again: recorded when the interval is over
                call = farm.clock.callLater(quiet[0] + POOL_RECORD_INTERVAL - farm.clock.seconds(),
                                            quiet_over, p.path)
                self._quiet_pools[p.path] = (quiet[0], call)

        def quiet_over(path: str) -> None:
            del self._quiet_pools[path]
            changed = farm.trees.pools.get(path)
            if changed is not None:  # not deleted since
                pool(changed)

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
        quiet, self._quiet_pools = self._quiet_pools, {}
        for _, call in quiet.values():
            if call is not None and call.active():
                call.cancel()

    def add(self, event: Event) -> None:
        """Keep ``event``, whose ``seq`` is ``last + 1``, and wake the waiters."""
        self.last = event.seq
        self._events.append(event)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for wake in waiters:
                wake()

    def since(self, after: int, limit: int = 10_000) -> tuple[list[Event], bool]:
        """Events after ``after`` (at most ``limit``), and whether some were forgotten."""
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
        self._waiters.append(wake)

        def cancel() -> None:
            if wake in self._waiters:
                self._waiters.remove(wake)

        return cancel


def events_json(events: list[Event]) -> list[dict[str, Any]]:
    """Events as JSON-ready data (the web's long-poll and stream), by the one converter."""
    return unstructure(events, list[Event])
