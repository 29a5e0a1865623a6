"""What every farmnet AMP peer has in common."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.protocols import amp


class FarmAMP(amp.AMP):
    """AMP with Nagle's algorithm off.

    farmnet's boxes are small and answered at once (a finish, then the held heartbeat
    answered with the next order); with Nagle on, each small write behind an unacknowledged
    one waits for the peer's delayed ACK (~40 ms), which made every task hand-over cost
    two of them.

    It also knows when its connection is gone (`when_lost`), so a peer that closes first
    can wait for the close to complete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = False
        self._lost_waiters: list[defer.Deferred[None]] = []

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.lost = True
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_lost(self) -> defer.Deferred[None]:
        if self.lost:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def connectionMade(self) -> None:
        super().connectionMade()
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
