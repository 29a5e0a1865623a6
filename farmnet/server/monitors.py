"""The monitors' event log: the farm's events as the plain records that monitors
long-poll for (`PollEvents`, the web site's ``/events``).

It subscribes to the farm's bus and turns each event into a record with a ``kind``
(the wire's names: task, progress, job, job_deleted, user, user_deleted, render,
render_zombie, render_deleted). Every record gets the next sequence number. Only the
most recent ``keep`` are kept; a monitor that asks for older ones is told to reload
(``reset``). Waiters are plain callables so this stays free of Deferreds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from farmnet.model import events as ev
from farmnet.model.farm import Farm

Event = dict[str, Any]


class EventLog:
    def __init__(self, farm: Farm | None = None, keep: int = 100_000) -> None:
        self.last = 0
        self._events: deque[Event] = deque(maxlen=keep)
        self._waiters: list[Callable[[], None]] = []
        self._unsubscribe: Callable[[], None] = lambda: None
        if farm is not None:
            self.follow(farm)

    def follow(self, farm: Farm) -> None:
        """Record what ``farm`` publishes from now on (one farm at a time)."""
        emit, bus = self.emit, farm.bus

        def task(e: ev.TaskStateChanged) -> None:
            t = e.task
            emit("task", job_id=t.block.job.id, block=t.block.number, task=t.number,
                 state=t.state.value, host=t.host, errors_count=t.errors_count)

        def progress(e: ev.TaskProgressed) -> None:
            t = e.task
            emit("progress", job_id=t.block.job.id, block=t.block.number, task=t.number,
                 progress=t.progress)

        def render_lost(e: ev.RenderLost) -> None:
            if e.zombie:
                emit("render_zombie", name=e.render.name)
            emit("render", render=e.render.to_dict())

        self._unsubscribe = bus.subscribe_all({
            ev.TaskStateChanged: task,
            ev.TaskProgressed: progress,
            (ev.JobSubmitted, ev.JobChanged): lambda e: emit("job", job=farm.job_dict(e.job)),
            ev.JobDeleted: lambda e: emit("job_deleted", job_id=e.job.id),
            ev.UserChanged: lambda e: emit("user", user=e.user.to_dict()),
            ev.UserDeleted: lambda e: emit("user_deleted", name=e.user.name),
            (ev.RenderRegistered, ev.RenderChanged, ev.RenderSick):
                lambda e: emit("render", render=e.render.to_dict()),
            ev.RenderLost: render_lost,
            ev.RenderDeleted: lambda e: emit("render_deleted", name=e.render.name),
        })

    def close(self) -> None:
        """Stop following the farm."""
        self._unsubscribe()

    def emit(self, kind: str, **data: Any) -> None:
        self.last += 1
        self._events.append({"seq": self.last, "kind": kind, **data})
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

    def wait(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` once at the next event; returns a function that cancels it."""
        self._waiters.append(wake)

        def cancel() -> None:
            if wake in self._waiters:
                self._waiters.remove(wake)

        return cancel
