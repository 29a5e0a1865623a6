"""The farm's event log: what monitors long-poll for.

Every event gets the next sequence number. Only the most recent ``keep`` events are
kept; a monitor that asks for older ones is told to reload (``reset``). Waiters are
plain callables so this stays free of Deferreds; the AMP layer adapts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class EventLog:
    def __init__(self, keep: int = 100_000) -> None:
        self.last = 0
        self._events: deque[Event] = deque(maxlen=keep)
        self._waiters: list[Callable[[], None]] = []

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
