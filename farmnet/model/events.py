"""What changed in the farm: one class per kind of change, published once on one bus.

The farm publishes; the store, the monitors' event log, the statistics recorder, the
system job and the AMP server subscribe to the kinds they need and are called with the
event object (dispatch by type, never on strings). Events carry the live model objects:
a subscriber reads what it needs at once and must not change them, nor the event. The
events of every start and finish (marked HOT) are not frozen: a frozen class's ``__init__``
sets each field through ``object.__setattr__``, twice the cost of the whole event.

To add an event: define it here, publish it where the farm changes, and subscribe where
it matters (doc/architecture.md, "Adding an event").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from farmnet.model.data import Block, Job, Render, Task, TaskRun, TaskState, User

E = TypeVar("E")


@attrs.define(slots=True)  # HOT: not frozen
class TaskStateChanged:
    """A task went from ``old`` to ``task.state``; ``old`` is None for a task just added."""

    task: Task
    old: TaskState | None


@attrs.frozen(slots=True)
class TaskProgressed:
    """A running task reported a new progress percentage (shown, not stored at once)."""

    task: Task


@attrs.define(slots=True)  # HOT: not frozen
class RunEnded:
    """A run of a task ended (finished, failed, killed by a limit): one statistics row."""

    run: TaskRun


@attrs.frozen(slots=True)
class TasksRestarted:
    """Tasks of ``block`` were made ready again by a user's restart."""

    block: Block


@attrs.frozen(slots=True)
class ErrorHostsReset:
    """``tasks`` of ``block`` forgot the renders they failed on (reset error hosts): the
    block and these tasks no longer avoid them."""

    block: Block
    tasks: tuple[Task, ...]


@attrs.frozen(slots=True)
class TasksRenumbered:
    """``block`` lost some of its tasks; the rest were numbered again from 0."""

    block: Block


@attrs.frozen(slots=True)
class JobSubmitted:
    job: Job


@attrs.frozen(slots=True)
class JobChanged:
    """A job's settings, flags, counters or state changed."""

    job: Job


@attrs.frozen(slots=True)
class JobDeleted:
    job: Job


@attrs.frozen(slots=True)
class UserChanged:
    """A user was created (by their first job) or an admin changed their settings."""

    user: User


@attrs.frozen(slots=True)
class UserDeleted:
    user: User


@attrs.frozen(slots=True)
class RenderRegistered:
    """A render connected and registered (first time or again)."""

    render: Render


@attrs.frozen(slots=True)
class RenderChanged:
    """A render's flags or settings changed (an action, waking, sleeping)."""

    render: Render


@attrs.frozen(slots=True)
class RenderLost:
    """A render went offline; ``zombie``: it went silent past zombie_time."""

    render: Render
    zombie: bool


@attrs.frozen(slots=True)
class RenderSick:
    """A render made errors in a row from sick_errors_count different jobs."""

    render: Render


@attrs.frozen(slots=True)
class RenderDeleted:
    render: Render


@attrs.define(slots=True)  # HOT: not frozen
class OrdersQueued:
    """The farm has orders for ``render``: its held heartbeat can be answered."""

    render: Render


@attrs.frozen(slots=True)
class PoolChanged:
    """A pool was created, its settings changed, or renders moved in or out of it."""

    pool: Any  # farmnet.model.pools.Pool


@attrs.frozen(slots=True)
class PoolDeleted:
    pool: Any


@attrs.frozen(slots=True)
class BranchChanged:
    """A branch was created (by a job or an admin), its settings changed, or jobs moved."""

    branch: Any  # farmnet.model.pools.Branch


@attrs.frozen(slots=True)
class BranchDeleted:
    branch: Any


#: Every render event: subscribers that keep renders (the store, monitors) take them all.
RENDER_EVENTS = (RenderRegistered, RenderChanged, RenderLost, RenderSick)
RenderEvent = RenderRegistered | RenderChanged | RenderLost | RenderSick


class Bus:
    """One channel for every change. Handlers run synchronously, in subscription order,
    when the change is published; a handler that raises does not stop the others."""

    def __init__(self, on_error: Callable[[Any, BaseException], None] | None = None) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}
        self._on_error = on_error

    def subscribe(self, kinds: type[E] | tuple[type[E], ...],
                  handler: Callable[[E], None]) -> Callable[[], None]:
        """Call ``handler(event)`` for every event of ``kinds``; returns the unsubscribe."""
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        for kind in kinds:
            self._handlers.setdefault(kind, []).append(handler)

        def unsubscribe() -> None:
            for kind in kinds:
                handlers = self._handlers.get(kind, [])
                if handler in handlers:
                    handlers.remove(handler)

        return unsubscribe

    def subscribe_all(self, handlers: Mapping[Any, Callable[[Any], None]]) -> Callable[[], None]:
        """``subscribe`` each ``{kinds: handler}``; returns one unsubscribe for them all
        (calling it again does nothing)."""
        cancels = [self.subscribe(kinds, handler) for kinds, handler in handlers.items()]

        def unsubscribe() -> None:
            for cancel in cancels:
                cancel()

        return unsubscribe

    def subscribers(self, kind: type) -> list[Callable[[Any], None]]:
        return list(self._handlers.get(kind, ()))

    def publish(self, event: object) -> None:
        handlers = self._handlers.get(type(event))
        if not handlers:
            return
        for handler in tuple(handlers):  # a handler may (un)subscribe
            try:
                handler(event)
            except Exception as e:
                if self._on_error is None:
                    raise
                self._on_error(event, e)
