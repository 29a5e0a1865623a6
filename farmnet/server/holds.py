"""Timers for held answers: every render's heartbeat (and every monitor's poll) is held for
the same number of seconds, so the holds end in the order they began.

A reactor `callLater` per held heartbeat keeps tens of thousands of `DelayedCall` in the
reactor's heap, each push and pop a dozen Python comparisons, and most are cancelled
(the render got orders) and left in the heap until they come up. `HoldTimer` keeps its
holds in a FIFO queue instead, with one reactor timer for the oldest: starting a hold
is an append, cancelling one clears its callable, and the timer answers what is due
(in one reactor turn, a batch: the holds that began together).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Hold", "HoldTimer"]


class Hold:
    """One hold; `cancel` it when answered early."""

    __slots__ = ("due", "_call", "_timer")

    def __init__(self, timer: HoldTimer, due: float, call: Callable[[], None]) -> None:
        self.due = due
        self._call: Callable[[], None] | None = call
        self._timer = timer

    def active(self) -> bool:
        return self._call is not None

    def cancel(self) -> None:
        if self._call is not None:
            self._call = None
            self._timer._cancelled()


class HoldTimer:
    """Calls each hold's callable ``seconds`` after it began, unless cancelled."""

    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self._holds: deque[Hold] = deque()
        #: Holds neither over nor cancelled: at 0 the reactor timer goes too.
        self.active = 0
        self._timer: IDelayedCall | None = None

    def start(self, call: Callable[[], None]) -> Hold:
        hold = Hold(self, self.clock.seconds() + self.seconds, call)
        self._holds.append(hold)
        self.active += 1
        if self._timer is None:
            self._timer = self.clock.callLater(self.seconds, self._due)
        return hold

    def _cancelled(self) -> None:
        self.active -= 1
        if not self.active:  # nothing left to time: no timer left in the reactor
            self._holds.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _due(self) -> None:
        self._timer = None
        holds, now = self._holds, self.clock.seconds()
        while holds and holds[0].due <= now:
            hold = holds.popleft()
            call, hold._call = hold._call, None
            if call is not None:
                self.active -= 1
                call()
        while holds and holds[0]._call is None:  # cancelled: no timer for them
            holds.popleft()
        if holds and self._timer is None:
            self._timer = self.clock.callLater(max(0.0, holds[0].due - now), self._due)
