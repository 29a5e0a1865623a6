"""Failed render secrets and passwords back off per address, and the log stays short:
the throttle alone on a Clock, then a real server and web site on 127.0.0.1 guessed at
as fast as a client can."""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from farmnet import errors
from farmnet.config import AuthConfig, SchedulingConfig
from farmnet.model.farm import Farm
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.outputs import OutputStore
from farmnet.server.throttle import LoginThrottle
from farmnet.web.testing import serve, write_users_file

PASSWORD = "correct horse battery"


class Lines:
    """The log lines of farmnet.server.throttle while a test runs."""

    def __init__(self, case: Any) -> None:
        self.events: list[dict[str, Any]] = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        case.addCleanup(globalLogPublisher.removeObserver, observer)

    def __len__(self) -> int:
        return sum(1 for e in self.events if e.get("log_namespace") == "farmnet.server.throttle")


class ThrottleTests(SynchronousTestCase):
    def test_refusals_grow_and_end(self) -> None:
        clock = Clock()
        throttle = LoginThrottle(clock, free_failures=2, max_delay=8.0)
        for _ in range(2):
            throttle.check("10.0.0.1")
            throttle.failed("10.0.0.1", "render 'r'", "wrong secret")
        throttle.check("10.0.0.1")  # two free failures: still checked
        waits = []
        for _ in range(6):
            throttle.failed("10.0.0.1", "render 'r'", "wrong secret")
            self.assertRaises(errors.PermissionDenied, throttle.check, "10.0.0.1")
            throttle.check("10.0.0.2")  # other addresses are not touched
            start = clock.seconds()
            while True:
                clock.advance(0.5)
                try:
                    throttle.check("10.0.0.1")
                except errors.PermissionDenied:
                    continue
                break
            waits.append(clock.seconds() - start)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0])  # doubling, up to max_delay
        clock.advance(throttle.forget_after + 1)
        throttle.failed("10.0.0.1", "render 'r'", "wrong secret")
        throttle.check("10.0.0.1")  # forgotten after a quiet time: free failures again
        throttle.stop()

    def test_memory_and_log_lines_bounded(self) -> None:
        lines = Lines(self)
        clock = Clock()
        throttle = LoginThrottle(clock, max_addresses=100, log_interval=60.0)
        for second in range(600):  # ten minutes of 100 failures a second from 1,000 addresses
            for i in range(100):
                address = f"10.0.{(second * 100 + i) % 1000 // 250}.{(second * 100 + i) % 250}"
                try:
                    throttle.check(address)
                    throttle.failed(address, "tool 'x'", "wrong password")
                except errors.PermissionDenied:
                    pass
            clock.advance(1.0)
            self.assertLessEqual(len(throttle), 100)
        self.assertLessEqual(len(lines), 2 * 10 + 1)  # the first line, then a summary a minute
        self.assertGreaterEqual(len(lines), 10)
        throttle.stop()


class Hello(FarmAMP):
    pass


class RealServerTests(TestCase):
    """A FarmServer and the web site on 127.0.0.1 sharing one throttle on a Clock: every
    attempt is answered at once, and the test says when time passes."""

    timeout = 60

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-backoff-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        users = write_users_file(self.base / "users", {"anna": PASSWORD})
        self.farm = Farm(reactor, SchedulingConfig())
        self.addCleanup(self.farm.stop)
        self.outputs = OutputStore(self.base / "output")
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, free_failures=5, max_delay=60.0)
        self.server = FarmServer(reactor, self.farm, self.outputs, throttle=self.throttle,
                                 auth=AuthConfig(render_secret="s3cret", users_file=str(users)))
        port = reactor.listenTCP(0, ServerFactory(self.server), interface="127.0.0.1")

        async def stop() -> None:
            await port.stopListening()
            await self.server.shutdown()

        self.addCleanup(stop)
        self.port = port.getHost().port
        self.site = await serve(reactor, self.farm, None, self.outputs, users_file=str(users),
                                throttle=self.throttle)
        self.addCleanup(self.site.stop)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.lines = Lines(self)

    async def hello(self, **fields: Any) -> str:
        """One Hello on a new connection: "ok", or the refusal's message."""
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Hello())
        try:
            await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, **fields)
            return "ok"
        except errors.PermissionDenied as e:
            return e.message
        finally:
            proto.transport.loseConnection()

    async def test_guesses_back_off_and_the_right_secret_works_after(self) -> None:
        answers = [await self.hello(kind="render", user="r1", secret=f"guess{i}") for i in range(100)]
        judged = sum(1 for a in answers if a == "wrong or missing render secret")
        refused = sum(1 for a in answers if a.startswith("too many failed logins from 127.0.0.1"))
        # In a window where no time passes: the free failures and one more are checked.
        self.assertEqual((judged, refused), (6, 94))
        self.assertTrue(answers[-1].endswith("try again in 1 s"), answers[-1])
        # Refused unchecked: the right secret waits too, and counts no failure.
        self.assertNotEqual(await self.hello(kind="render", user="r1", secret="s3cret"), "ok")
        self.clock.advance(1.0)
        self.assertEqual(await self.hello(kind="render", user="r1", secret="s3cret"), "ok")
        self.assertEqual(await self.hello(kind="render", user="r1", secret="guess"),
                         "wrong or missing render secret")  # the 7th failure: refused 2 s
        self.clock.advance(1.0)
        self.assertTrue((await self.hello(kind="tool", user="anna", password=PASSWORD)).startswith(
            "too many failed logins"))  # passwords share the address's backoff
        self.clock.advance(1.0)
        self.assertEqual(await self.hello(kind="tool", user="anna", password=PASSWORD), "ok")

        # The web site's logins are the same address's: HTTP Basic wrong, then refused.
        self.clock.advance(10.0)
        wrong = base64.b64encode(b"anna:wrong").decode()
        codes = []
        for _ in range(3):
            response = await treq.get(self.site.url + "/api/whoami", pool=self.pool,
                                      headers={b"authorization": [f"Basic {wrong}".encode()]})
            codes.append((response.code, (await response.json())["error"]["message"]))
        self.assertEqual(codes[0], (401, "unknown user or wrong password"))
        self.assertTrue(codes[1][1].startswith("too many failed logins from 127.0.0.1"), codes)

        # 100 failures and refusals: one line as it happened, the rest summed up at the end.
        self.assertEqual(len(self.lines), 1)
        self.clock.advance(self.throttle.log_interval)
        self.assertEqual(len(self.lines), 2)
        summary = [e for e in self.lines.events if "more failed or refused" in e.get("log_format", "")]
        self.assertGreaterEqual(summary[0]["total"], 100)
