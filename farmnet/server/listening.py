"""Every listener of the server (AMP, web, manhole): one endpoint-string service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["Listener"]

log = Logger()


@implementer(IStreamServerEndpoint)
class Listener(StreamServerEndpointService):
    """Twisted's endpoint service, plus what every farmnet listener needs.

    The bound address goes to ``address_file`` (``tcp:HOST:PORT``; ``tls:`` for an
    ``ssl:`` listener, reached with a tls: client endpoint), so tools and tests find a
    ``tcp:0`` port. A failed listen is fatal: one log line, then the reactor stops; a
    server that cannot listen must not look alive. ``ready`` fires with the port (None
    after a failure). Stopping only stops accepting: the open connections are their
    owners' to close, client first (:mod:`farmnet.server.registry`).

    It is its own endpoint (:meth:`listen`), which is how the reporting gets in.
    """

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory,
                 address_file: Path | None = None, *, name: str = "") -> None:
        super().__init__(self, factory)
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
            tmp = self.address_file.with_suffix(".tmp")
            tmp.write_text(f"{kind}:{host.host}:{host.port}\n")
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
