"""The listener every server endpoint uses: address file, loud failure, listening late; the
client-first close and connection budgets every one of its connections has."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from farmnet.server.listening import ConnectionBudget, Listener


class Reactor:
    """Records what would stop the reactor."""

    def __init__(self) -> None:
        self.later: list[Any] = []
        self.stop = object()

    def callWhenRunning(self, f: Any, *args: Any) -> None:
        self.later.append(f)


class ListenerTests(TestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-listening-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.factory = Factory.forProtocol(Protocol)

    async def test_bound_address_written(self) -> None:
        listener = Listener(reactor, "tcp:0:interface=127.0.0.1", self.factory, self.base / "amp.address")
        listener.privilegedStartService()  # twistd, as root: not yet
        self.assertFalse(listener.ready.called)
        listener.startService()
        self.addCleanup(listener.stopService)
        port = await listener.ready
        self.assertIs(listener.port, port)
        self.assertEqual((self.base / "amp.address").read_text(), f"tcp:127.0.0.1:{port.getHost().port}\n")

    async def test_failure_is_one_line_and_stops_the_reactor(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        fake = Reactor()
        listener = Listener(fake, "nonsense:1", self.factory, self.base / "amp.address")
        listener.startService()
        self.assertIsNone(await listener.ready)
        self.assertEqual(fake.later, [fake.stop])
        [event] = [e for e in events if "cannot listen" in e.get("log_format", "")]
        self.assertEqual((event["endpoint"], event["why"]),
                         ("nonsense:1", "Unknown endpoint type: 'nonsense'"))
        self.assertNotIn("log_failure", event)  # an expected failure: no traceback
        self.assertFalse((self.base / "amp.address").exists())
        await listener.stopService()


class Talker(Protocol):
    """Says ``greeting`` and, if ``done``, is done with the connection at once (the server's
    close); otherwise waits to be asked."""

    greeting = b""
    done = False

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)
        if self.done:
            self.transport.loseConnection()


class Client(Protocol):
    """A client that reads everything and closes only when told to."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[str] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        how = "reset" if reason.check(error.ConnectionLost) else "closed"
        self.lost.callback(how)


class ClientFirstTests(TestCase):
    """The client-first close and the connection budgets of every listener, on real sockets."""

    timeout = 30

    async def listen(self, factory: Factory, **budget: Any) -> Listener:
        listener = Listener(reactor, "tcp:0:interface=127.0.0.1", factory,
                            budget=ConnectionBudget(close_wait=budget.pop("close_wait", 0.3), **budget))
        listener.startService()
        self.addCleanup(listener.stopService)
        await listener.ready
        return listener

    async def connect(self, listener: Listener, source: str = "127.0.0.1") -> Client:
        assert listener.port is not None
        port = listener.port.getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
        client = await connectProtocol(endpoint, Client())
        self.addCleanup(lambda: client.transport.loseConnection())
        return client

    async def test_server_done_waits_for_the_client_then_resets(self) -> None:
        """The server's loseConnection sends no FIN: what it wrote arrives whole (1 MiB), a
        client that closes within close_wait ends it; one that does not is reset."""
        factory = Factory.forProtocol(Talker)
        factory.protocol = type("Big", (Talker,), {"greeting": b"x" * (1 << 20), "done": True})
        listener = await self.listen(factory)
        polite = await self.connect(listener)
        await task.deferLater(reactor, 0.1)
        polite.transport.loseConnection()
        self.assertEqual(await polite.lost, "closed")
        self.assertEqual(len(polite.data), 1 << 20)
        stubborn = await self.connect(listener)
        started = reactor.seconds()
        self.assertEqual(await stubborn.lost, "reset")
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        self.assertEqual(len(stubborn.data), 1 << 20)
        self.assertEqual(listener.connections.resets, 1)

    async def test_budgets_in_all_and_per_address(self) -> None:
        listener = await self.listen(Factory.forProtocol(Talker), max_connections=3, max_per_address=2)
        first = [await self.connect(listener, "127.0.0.2") for _ in range(3)]
        self.assertEqual(await first[2].lost, "reset")  # a third from 127.0.0.2
        others = [await self.connect(listener, "127.0.0.3") for _ in range(2)]
        self.assertEqual(await others[1].lost, "reset")  # a fourth in all
        await task.deferLater(reactor, 0.1)
        self.assertFalse(first[0].lost.called or first[1].lost.called or others[0].lost.called)
        self.assertEqual((listener.connections.refused, len(listener.connections.protocols)), (2, 3))
        first[0].transport.loseConnection()
        await first[0].lost
        again = await self.connect(listener, "127.0.0.4")  # room again
        await task.deferLater(reactor, 0.1)
        self.assertFalse(again.lost.called)

    async def test_close_connections_asks_then_resets(self) -> None:
        asked: list[Any] = []

        def ask(proto: Any, conn: Any) -> None:
            asked.append(proto)
            conn.write(b"bye")
            conn.loseConnection()

        listener = await self.listen(Factory.forProtocol(Talker), ask=ask)
        polite, stubborn = await self.connect(listener), await self.connect(listener)
        await task.deferLater(reactor, 0.1)
        closing = defer.ensureDeferred(listener.close_connections())
        await task.deferLater(reactor, 0.1)
        polite.transport.loseConnection()
        self.assertEqual(await polite.lost, "closed")
        self.assertEqual(await stubborn.lost, "reset")
        await closing
        self.assertEqual((len(asked), stubborn.data, polite.data), (2, b"bye", b"bye"))
        late = await self.connect(listener)  # still listening, but no longer accepting
        self.assertEqual(await late.lost, "reset")
