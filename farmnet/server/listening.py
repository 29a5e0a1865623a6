"""Every listener of the server (AMP, web, manhole): one endpoint-string service, and the
client-first close that every one of its connections follows.

The side of a TCP connection that closes first keeps its socket in TIME-WAIT; a server
port that closes first piles them up. So no listener's connection is ever closed by the
server with a FIN: when the server is done with one (an HTTP response sent with
``Connection: close``, an SSH disconnect, an idle timeout, a shutdown) the connection's
:class:`ClientFirstConnection` waits until what was written has left, gives the peer
``close_wait`` seconds to close, and then resets it (SO_LINGER 0 and abort: an RST, no
TIME-WAIT). A connection the server has to end at once (a limit, a malformed box) is
reset at once. The AMP server asks its peers to close in its own words on top of this
(:mod:`farmnet.server.registry`); the other listeners are asked through ``ask``.

Each listener has its own budget of open connections (:class:`ConnectionBudget`): in
all, and per peer address. A connection past a budget is reset as it arrives, so one
listener (the web site under a slowloris) cannot take the open files another (AMP) needs.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPullProducer,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from farmnet.protocol.endpoints import socket_of

__all__ = ["ClientFirstConnection", "ClientFirstFactory", "ConnectionBudget", "Listener", "reset_connection"]

log = Logger()

#: Longest wait for what the server wrote to leave before the peer's close_wait starts
#: (a peer that does not read is reset after it).
DRAIN_WAIT = 30.0
#: Seconds between two log lines about refused connections of one listener.
REFUSED_LOG_INTERVAL = 10.0


def reset_connection(transport: Any) -> None:
    """Close now with an RST (SO_LINGER 0): the server's socket skips TIME-WAIT."""
    sock = socket_of(transport)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already gone
    transport.abortConnection()


def peer_host(address: Any) -> str:
    """The peer's address as the budgets count it ("unix" for a unix socket)."""
    return str(getattr(address, "host", None) or "unix")


@attrs.frozen
class ConnectionBudget:
    """How one listener's connections are closed, and how many it may have open."""

    #: Seconds a peer has to close first, once the server is done with its connection.
    close_wait: float = 2.0
    #: Open connections at once (0: no limit but the process's open files).
    max_connections: int = 0
    #: Open connections at once from one peer address (0: no limit).
    max_per_address: int = 0
    #: Asks a connection's protocol to end (at shutdown); by default the server is done
    #: with it (:meth:`ClientFirstConnection.loseConnection`).
    ask: Callable[[IProtocol, ClientFirstConnection], None] | None = None


@implementer(IPullProducer)
class _DrainWatch:
    """A pull producer that produces nothing: the transport asks it for more once its
    buffer is empty, which is what :meth:`ClientFirstConnection.loseConnection` waits for.
    (Not the connection itself: its protocol may call the transport's own
    ``pauseProducing``/``resumeProducing`` through it.)"""

    def __init__(self, conn: ClientFirstConnection) -> None:
        self.conn = conn
        self.asked = 0

    def resumeProducing(self) -> None:
        self.asked += 1
        if self.asked > 1:  # the first call comes from registerProducer itself
            self.conn._close_wait()

    def stopProducing(self) -> None:
        self.conn._drain = None


class ClientFirstConnection(ProtocolWrapper):
    """One connection of a listener, as its protocol's transport: ``loseConnection``
    never sends a FIN; ``abortConnection`` resets."""

    factory: ClientFirstFactory

    def __init__(self, factory: ClientFirstFactory, wrapped: IProtocol) -> None:
        super().__init__(factory, wrapped)
        self.host = ""
        #: Who ended it: "peer" (closed first), "reset" (close_wait over, or aborted).
        self.ended_by = ""
        self._timer: IDelayedCall | None = None
        self._drain: _DrainWatch | None = None

    def loseConnection(self) -> None:
        """The server is done: once the written data has left, the peer has close_wait
        seconds to close, then the connection is reset."""
        if self.disconnecting or self.transport is None:
            return
        self.disconnecting = 1
        self._timer = self.factory.reactor.callLater(DRAIN_WAIT, self._reset)
        start_writing = getattr(self.transport, "startWriting", None)
        if start_writing is None:  # not a file descriptor's transport: no buffer to wait for
            self._close_wait()
            return
        self._drain = _DrainWatch(self)
        try:
            # Under TLS the pull producer is asked from a cooperator, not on an empty buffer:
            # the close_wait then starts at once.
            self.transport.registerProducer(self._drain, False)
        except RuntimeError:  # the protocol's own producer is still there: do not wait for it
            self._drain = None
            self._close_wait()
            return
        start_writing()  # its next write event finds the buffer empty, or empties it

    def _close_wait(self) -> None:
        """What was written has left: the close_wait starts."""
        if self._drain is not None:
            self._drain = None
            self.transport.unregisterProducer()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.reactor.callLater(self.factory.budget.close_wait, self._reset)

    def abortConnection(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._timer = None
        if self.transport is None or self.ended_by:
            return
        self.ended_by = "reset"
        self.factory.resets += 1
        reset_connection(self.transport)

    def connectionLost(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.ended_by:
            self.ended_by = "peer"
        super().connectionLost(reason)

    def when_lost(self) -> defer.Deferred[None]:
        return self.factory.when_lost(self)


class _Refused(Protocol):
    """A connection past a budget: reset as it arrives (a plain close would be a FIN)."""

    def makeConnection(self, transport: Any) -> None:
        reset_connection(transport)


class ClientFirstFactory(WrappingFactory):
    """A listener's factory wrapped: its connections close client first and count
    against the listener's :class:`ConnectionBudget`."""

    protocol = ClientFirstConnection

    def __init__(self, wrapped: IProtocolFactory, reactor: Any, budget: ConnectionBudget,
                 name: str = "") -> None:
        super().__init__(wrapped)
        self.reactor = reactor
        self.budget = budget
        self.name = name or type(wrapped).__name__
        self.per_address: Counter[str] = Counter()
        self.accepting = True
        self.refused = 0
        self.resets = 0
        self._refused_logged = 0
        self._refused_log_at = float("-inf")
        self._lost: dict[ClientFirstConnection, list[defer.Deferred[None]]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        host = peer_host(addr)
        limit, per_address = self.budget.max_connections, self.budget.max_per_address
        why = ""
        if not self.accepting:
            why = "shutting down"
        elif limit and len(self.protocols) >= limit:
            why = f"{limit} connections open (max_connections)"
        elif per_address and self.per_address[host] >= per_address:
            why = f"{per_address} connections open from {host} (per address)"
        if why:
            self._refuse(host, why)
            return _Refused()
        built = super().buildProtocol(addr)
        built.host = host
        return built

    def _refuse(self, host: str, why: str) -> None:
        """Counted; logged once per REFUSED_LOG_INTERVAL (a flood is not a flood of lines)."""
        self.refused += 1
        now = self.reactor.seconds()
        if now - self._refused_log_at >= REFUSED_LOG_INTERVAL:
            log.warn("{listener}: refused {count} connection(s), last from {peer}: {reason}",
                     listener=self.name, count=self.refused - self._refused_logged, peer=host, reason=why)
            self._refused_logged, self._refused_log_at = self.refused, now

    def registerProtocol(self, p: ClientFirstConnection) -> None:
        super().registerProtocol(p)
        self.per_address[p.host] += 1

    def unregisterProtocol(self, p: ClientFirstConnection) -> None:
        super().unregisterProtocol(p)
        self.per_address[p.host] -= 1
        if self.per_address[p.host] <= 0:
            del self.per_address[p.host]
        for waiter in self._lost.pop(p, []):
            waiter.callback(None)

    def when_lost(self, p: ClientFirstConnection) -> defer.Deferred[None]:
        if p not in self.protocols:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._lost.setdefault(p, []).append(waiter)
        return waiter

    async def close_all(self) -> None:
        """Ask every connection to end (``budget.ask``), then wait until all are gone:
        each closes first or is reset, close_wait after it is asked."""
        self.accepting = False
        ask = self.budget.ask
        gone = []
        for p in list(self.protocols):
            gone.append(p.when_lost())
            try:
                if ask is not None and p.wrappedProtocol is not None:
                    ask(p.wrappedProtocol, p)
                else:
                    p.loseConnection()
            except Exception:
                log.failure("{listener}: asking a connection to close failed", listener=self.name)
                p.abortConnection()
        if gone:
            await defer.DeferredList(gone, consumeErrors=True)


@implementer(IStreamServerEndpoint)
class Listener(StreamServerEndpointService):
    """Twisted's endpoint service, plus what every farmnet listener needs.

    The bound address goes to ``address_file`` (``tcp:HOST:PORT``; ``tls:`` for an
    ``ssl:`` listener, reached with a tls: client endpoint), so tools and tests find a
    ``tcp:0`` port. A failed listen is fatal: one log line, then the reactor stops; a
    server that cannot listen must not look alive. ``ready`` fires with the port (None
    after a failure). Stopping only stops accepting: the open connections are their
    owners' to close (:meth:`close_connections`, or the AMP server's registry), client
    first either way: the factory is wrapped in a :class:`ClientFirstFactory` with ``budget``.

    It is its own endpoint (:meth:`listen`), which is how the reporting gets in.
    """

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory,
                 address_file: Path | None = None, *, name: str = "",
                 budget: ConnectionBudget | None = None) -> None:
        self.connections = ClientFirstFactory(factory, reactor, budget or ConnectionBudget(),
                                              name=name or description)
        super().__init__(self, self.connections)
        self.reactor = reactor
        self.description = description
        self.address_file = address_file
        self.port: IListeningPort | None = None
        self.ready: defer.Deferred[IListeningPort | None] = defer.Deferred()
        if name:
            self.setName(name)

    def privilegedStartService(self) -> None:
        """Not yet: twistd calls this as root, before the store's directory exists."""

    def startService(self) -> None:
        super().startService()
        # Listen now, as the server's user, after the services before this one (the store).
        StreamServerEndpointService.privilegedStartService(self)

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort | None]:
        d = defer.maybeDeferred(serverFromString, self.reactor, self.description)
        d.addCallback(lambda endpoint: endpoint.listen(factory))
        return d.addCallback(self._listening).addErrback(self._failed)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        host = port.getHost()
        if self.address_file is not None:
            kind = "tls" if self.description.lower().startswith("ssl:") else "tcp"
            self.address_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.address_file.with_suffix(".tmp")
            if hasattr(host, "port"):
                tmp.write_text(f"{kind}:{host.host}:{host.port}\n")
            else:  # a unix socket
                tmp.write_text(f"unix:{host.name.decode() if isinstance(host.name, bytes) else host.name}\n")
            tmp.replace(self.address_file)
        log.info("listening on {endpoint} ({host})", endpoint=self.description, host=str(host))
        self.ready.callback(port)
        return port

    def _failed(self, failure: Failure) -> None:
        # Expected (a port in use, no permission): one line, no traceback.
        log.critical("cannot listen on {endpoint}: {why}", endpoint=self.description,
                     why=failure.getErrorMessage())
        self.reactor.callWhenRunning(self.reactor.stop)
        if not self.ready.called:
            self.ready.callback(None)

    def stopService(self) -> defer.Deferred[None]:
        self.port = None
        return super().stopService()

    async def close_connections(self) -> None:
        """Stop accepting; every open connection closes first or is reset (close_wait)."""
        await self.connections.close_all()
