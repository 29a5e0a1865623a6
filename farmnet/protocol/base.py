"""What every farmnet AMP peer has in common."""

from __future__ import annotations

from twisted.protocols import amp


class FarmAMP(amp.AMP):
    """AMP with Nagle's algorithm off.

    farmnet's boxes are small and answered at once (a finish, then the held heartbeat
    answered with the next order); with Nagle on, each small write behind an unacknowledged
    one waits for the peer's delayed ACK (~40 ms), which made every task hand-over cost
    two of them."""

    def connectionMade(self) -> None:
        super().connectionMade()
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
