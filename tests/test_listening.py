"""The listener every server endpoint uses: address file, loud failure, listening late."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from farmnet.server.listening import Listener


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
