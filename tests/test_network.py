"""The server's network edge on 127.0.0.1: the connection registry, liveness, the
client-first close, graceful shutdown, authentication, TLS and per-connection limits,
and malformed input generated with hypothesis."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutput
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from farmnet import errors
from farmnet.app import render_service
from farmnet.client import ServerUnreachable, connect
from farmnet.config import AuthConfig, ConnectionsConfig, LimitsConfig, RenderConfig, SchedulingConfig
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.protocol.endpoints import socket_of
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.outputs import OutputStore
from farmnet.server.passwords import hash_password
from farmnet.server.registry import CloseState, Connection, Registry, is_local
from farmnet.testing import twistd_argv

RENDER = {"capacity": 1100, "max_tasks": 0, "services": [], "services_disabled": [],
          "platform": "test", "cpus": 1, "memory_mb": 1, "running": []}
SS = shutil.which("ss") or "/usr/bin/ss"


# --- helpers ---------------------------------------------------------------------------


class Peer(FarmAMP):
    """A raw AMP peer. It answers the server's `Close` and closes first, unless
    ``obeys`` is false (then Close is an unknown command to it and it stays)."""

    def __init__(self, obeys: bool = True) -> None:
        super().__init__()
        self.obeys = obeys
        self.close_reasons: list[str | None] = []
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.reason: Any = None  # the Failure the connection ended with
        self.ended_at = 0.0

    def locateResponder(self, name: bytes) -> Any:
        if name == c.Close.commandName and not self.obeys:
            return None
        return super().locateResponder(name)

    @c.Close.responder
    def close_requested(self, reason: str | None = None) -> dict[str, Any]:
        self.close_reasons.append(reason)
        reactor.callLater(0, self.transport.loseConnection)
        return {}

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.ended_at = reactor.seconds()
        self.reason = reason
        self.gone.callback(None)

    async def close(self) -> None:
        if not self.gone.called:
            self.transport.loseConnection()
            await self.gone


async def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, interval)


async def time_wait_sockets(port: int, side: str = "sport") -> set[tuple[str, str]]:
    """TIME-WAIT sockets whose local (``sport``) or peer (``dport``) port is ``port``,
    as ``ss -tan state time-wait '( sport = :PORT )'`` lists them."""
    out = await getProcessOutput(SS, ["-tan", "state", "time-wait", f"( {side} = :{port} )"],
                                 env=dict(os.environ))
    found = set()
    for line in out.decode().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4:
            found.add((fields[2], fields[3]))
    return found


class NetworkCase(TestCase):
    """A FarmServer in this reactor on 127.0.0.1, with short hold and close times."""

    timeout = 60
    options: dict[str, Any] = {}

    def listen_description(self) -> str:
        return "tcp:0:interface=127.0.0.1"

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-net-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = Farm(reactor, SchedulingConfig(admins=("root",)))
        self.addCleanup(self.farm.stop)
        self.outputs = OutputStore(Path(self.base) / "output")
        options = {"heartbeat_hold": 0.5, "event_hold": 0.5, "close_wait": 0.5, **self.options}
        sections = {name: cls(**{k: options.pop(k) for k in attrs.fields_dict(cls) if k in options})
                    for name, cls in (("connections", ConnectionsConfig), ("auth", AuthConfig))}
        self.server = FarmServer(reactor, self.farm, self.outputs, **sections, **options)
        self.listening = await serverFromString(reactor, self.listen_description()).listen(
            ServerFactory(self.server))
        self.addCleanup(self._stop_server)
        self.port = self.listening.getHost().port
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.time_wait_before = await time_wait_sockets(self.port)

    async def _stop_server(self) -> None:
        await self.listening.stopListening()
        await self.server.shutdown()  # anything a test left open: asked, then reset
        self.outputs.close_all()

    async def new_time_wait(self) -> set[tuple[str, str]]:
        """Server-side TIME-WAIT sockets that appeared during the test."""
        return await time_wait_sockets(self.port) - self.time_wait_before

    async def peer(self, kind: str | None = "tool", user: str = "anna", obeys: bool = True,
                   **hello: Any) -> Peer:
        proto = await connectProtocol(clientFromString(reactor, self.endpoint), Peer(obeys))
        self.addCleanup(proto.close)
        if kind is not None:
            await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind=kind, user=user, **hello)
        return proto

    async def render(self, name: str, obeys: bool = True) -> tuple[Peer, int]:
        proto = await self.peer("render", name, obeys)
        answer = await proto.callRemote(c.RegisterRender, name=name, **RENDER)
        return proto, answer["render_id"]

    def connection(self, proto: Peer) -> Connection:
        """The server's registry entry of a peer's connection (by its address)."""
        port = proto.transport.getHost().port
        for conn in self.server.registry:
            if conn.port == port:
                return conn
        raise AssertionError(f"no connection from port {port}")

    def log_lines(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.logged if text in str(e.get("log_format", ""))]


# --- the registry ----------------------------------------------------------------------


class RegistryTests(NetworkCase):
    async def test_kinds_and_identities(self) -> None:
        tool = await self.peer("tool", "anna")
        monitor = await self.peer("monitor", "bob")
        render, render_id = await self.render("r1")
        await self.peer(None)
        counts = self.server.registry.counts()
        self.assertEqual(counts, {"render": 1, "monitor": 1, "tool": 1, "hello": 1})
        self.assertEqual((self.connection(tool).kind, self.connection(tool).identity), ("tool", "anna"))
        self.assertEqual(self.connection(monitor).identity, "bob")
        conn = self.connection(render)
        self.assertIs(self.server.registry.render_connection(render_id), conn)
        self.assertEqual((conn.kind, conn.identity, conn.render.name), ("render", "r1", "r1"))
        self.assertTrue(conn.local)

    async def test_half_open_render_connection_replaced(self) -> None:
        """A render reconnects while its old connection looks alive but nobody answers
        there: the new one takes over at once; the old one is asked to close (its held
        heartbeat answered with a close order), then reset after close_wait. The render
        stays online throughout, its running task too."""
        old, render_id = await self.render("r1", obeys=False)
        held = old.callRemote(c.Heartbeat, render_id=render_id, running=[])
        await deferLater(reactor, 0.05)
        old_conn = self.connection(old)
        self.assertIsNotNone(old_conn.held_heartbeat)

        new, new_id = await self.render("r1")
        self.assertEqual(new_id, render_id)
        registry = self.server.registry
        self.assertIs(registry.render_connection(render_id), self.connection(new))
        self.assertIs(old_conn.state, CloseState.CLOSING)
        self.assertIsNone(old_conn.render)
        answer = await held  # the peer reads it but does not close: half-open, as seen here
        self.assertEqual([o.order for o in answer["orders"]], ["close"])
        await old.gone
        reason = old.reason
        self.assertTrue(reason.check(error.ConnectionLost), reason)  # an RST, after close_wait
        self.assertEqual(old_conn.ended_by, "reset")
        self.assertTrue(self.farm.render(render_id).online)
        beat = await new.callRemote(c.Heartbeat, render_id=render_id, running=[])
        self.assertEqual(beat, {"orders": []})
        self.assertEqual(await self.new_time_wait(), set())

    async def test_replaced_connection_of_a_live_render_closes_first(self) -> None:
        old, render_id = await self.render("r1")
        held = old.callRemote(c.Heartbeat, render_id=render_id, running=[])
        await deferLater(reactor, 0.05)
        old_conn = self.connection(old)
        await self.render("r1")
        answer = await held
        self.assertEqual(answer["orders"][0].order, "close")
        old.transport.loseConnection()  # what a render does with a close order
        await old_conn.when_closed()
        self.assertEqual(old_conn.ended_by, "peer")
        self.assertTrue(self.farm.render(render_id).online)


class CloseLifecycleTests(SynchronousTestCase):
    """The registry's close state machine on a fake clock."""

    class FakePeer:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str]] = []
            self.aborted = 0
            self.transport = self

        def ask_to_close(self, order: str, reason: str) -> None:
            self.asked.append((order, reason))

        def getHandle(self) -> None:
            return None

        def abortConnection(self) -> None:
            self.aborted += 1

    def test_states(self) -> None:
        conn = Connection(1, None, "127.0.0.1", 1, 0.0)  # type: ignore[arg-type]
        conn.move(CloseState.CLOSING)
        self.assertRaises(ValueError, conn.move, CloseState.OPEN)
        conn.move(CloseState.CLOSED)
        self.assertRaises(ValueError, conn.move, CloseState.CLOSING)

    def test_asked_then_reset_after_close_wait(self) -> None:
        clock = Clock()
        registry = Registry(clock, close_wait=2.0)
        peer = self.FakePeer()
        conn = registry.add(peer, IPv4Address("TCP", "127.0.0.1", 4000))
        assert conn is not None
        closed = registry.close(conn, "testing", order="reconnect")
        self.assertEqual((conn.state, peer.asked), (CloseState.CLOSING, [("reconnect", "testing")]))
        registry.close(conn, "again")  # once asked, asked
        self.assertEqual(len(peer.asked), 1)
        clock.advance(1.9)
        self.assertEqual(peer.aborted, 0)
        clock.advance(0.2)
        self.assertEqual((peer.aborted, conn.ended_by, conn.state), (1, "reset", CloseState.CLOSED))
        self.assertFalse(closed.called)
        registry.removed(conn)  # the transport's connectionLost
        self.assertTrue(closed.called)
        self.assertEqual(len(registry), 0)

    def test_peer_closing_first_cancels_the_reset(self) -> None:
        clock = Clock()
        registry = Registry(clock, close_wait=2.0)
        peer = self.FakePeer()
        conn = registry.add(peer, IPv4Address("TCP", "127.0.0.1", 4000))
        assert conn is not None
        registry.close(conn, "testing")
        registry.removed(conn)
        clock.advance(5)
        self.assertEqual((peer.aborted, conn.ended_by), (0, "peer"))
        self.assertEqual(clock.getDelayedCalls(), [])  # the sweeper stopped with the last one

    def test_idle_sweep(self) -> None:
        clock = Clock()
        registry = Registry(clock, idle_timeout=10.0, close_wait=1.0)
        busy, idle = self.FakePeer(), self.FakePeer()
        busy_conn = registry.add(busy, IPv4Address("TCP", "127.0.0.1", 4000))
        registry.add(idle, IPv4Address("TCP", "127.0.0.1", 4001))
        assert busy_conn is not None
        busy_conn.pending = 1  # a held PollEvents
        clock.pump([1.0] * 11)
        self.assertEqual(idle.asked, [("close", "idle for 10 s")])
        self.assertEqual(busy.asked, [])


# --- liveness --------------------------------------------------------------------------


class ZombieTests(NetworkCase):
    options = {"heartbeat_hold": 0.2, "zombie_time": 0.6, "close_wait": 0.3}

    async def test_silent_render_is_a_zombie(self) -> None:
        silent, silent_id = await self.render("silent")
        alive, alive_id = await self.render("alive")
        beating = True

        async def beat() -> None:
            while beating:
                await alive.callRemote(c.Heartbeat, render_id=alive_id, running=[])

        loop = defer.ensureDeferred(beat())
        await silent.callRemote(c.Heartbeat, render_id=silent_id, running=[])  # held, then answered
        answered = reactor.seconds()
        render = self.farm.render(silent_id)
        await until(lambda: not render.online, 5, "the silent render to go offline")
        silent_for = reactor.seconds() - answered
        self.assertGreaterEqual(silent_for, 0.6)
        self.assertLess(silent_for, 0.6 + 1.0)  # one sweep (zombie_time / 4) of slack, and some
        kinds = [e.kind for e in self.server.events.since(0)[0]]
        self.assertIn("render_zombie", kinds)
        self.assertEqual(self.server.registry.zombies, 1)
        await silent.gone  # nothing held to answer: reset after close_wait
        reason = silent.reason
        self.assertTrue(reason.check(error.ConnectionLost), reason)
        self.assertTrue(self.farm.render(alive_id).online)
        beating = False
        await loop
        self.assertEqual(await self.new_time_wait(), set())

    async def test_a_held_heartbeat_is_not_silence(self) -> None:
        """While its heartbeat is held the render waits on the server: never a zombie,
        however long the hold (here 5 s against zombie_time 0.6 s)."""
        self.server.heartbeat_hold = 5.0
        render, render_id = await self.render("waiting")
        held = render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        held.addErrback(lambda _: None)  # fails when the render closes below
        await deferLater(reactor, 1.5)
        self.assertTrue(self.farm.render(render_id).online)
        self.assertFalse(held.called)
        await render.close()


class IdleTests(NetworkCase):
    options = {"idle_timeout": 0.5, "event_hold": 10.0, "close_wait": 1.0}

    async def test_idle_tool_dropped_client_first(self) -> None:
        client = await connect(reactor, self.endpoint, "anna", timeout=5)
        self.addCleanup(client.aclose)
        conn = next(iter(self.server.registry))
        monitor = await self.peer("monitor", "bob")
        last = (await monitor.callRemote(c.PollEvents, after=-1))["last"]
        poll = monitor.callRemote(c.PollEvents, after=last)  # held: not idle
        poll.addErrback(lambda _: None)  # fails when the monitor closes at cleanup
        await until(lambda: client._proto.lost, 5, "the idle tool to be closed")
        self.assertEqual(client._proto.close_reason, "idle for 0.5 s")
        await until(lambda: conn.ended_by, 5, "the server to see the connection end")
        self.assertEqual(conn.ended_by, "peer")  # it closed first, when asked
        # The tool's next call connects again (it was only idle) and is answered.
        self.assertEqual(await client.jobs(), [])
        self.assertIsNot(client._proto, None)
        self.assertFalse(client._proto.lost)
        self.assertFalse(monitor.gone.called)
        self.assertFalse(poll.called)
        await client.aclose()
        self.assertEqual(await self.new_time_wait(), set())
        self.assertTrue(await time_wait_sockets(self.port, "dport"))  # the client's side has it

    async def test_idle_tool_without_reconnect_is_told(self) -> None:
        client = await connect(reactor, self.endpoint, "anna", timeout=5, reconnect=0)
        self.addCleanup(client.aclose)
        await until(lambda: client._proto.lost, 5, "the idle tool to be closed")
        with self.assertRaises(ServerUnreachable) as caught:
            await client.jobs()
        self.assertIn("closed the connection: idle", str(caught.exception))


# --- the client-first close ------------------------------------------------------------


class CloseTests(NetworkCase):
    async def test_client_closes_first_when_asked(self) -> None:
        tool = await self.peer("tool")
        conn = self.connection(tool)
        local_port = tool.transport.getHost().port
        asked = reactor.seconds()
        await self.server.registry.close(conn, "testing")
        self.assertEqual(tool.close_reasons, ["testing"])
        await tool.gone
        reason = tool.reason
        self.assertTrue(reason.check(error.ConnectionDone), reason)  # a clean close, ours
        self.assertLess(tool.ended_at - asked, 0.5)  # well before close_wait
        self.assertEqual(conn.ended_by, "peer")
        self.assertIs(conn.state, CloseState.CLOSED)
        self.assertEqual(await self.new_time_wait(), set())
        client_side = await time_wait_sockets(self.port, "dport")
        self.assertIn(f"127.0.0.1:{local_port}", {local for local, _ in client_side})

    async def test_peer_ignoring_the_request_is_reset_after_close_wait(self) -> None:
        tool = await self.peer("tool", obeys=False)
        conn = self.connection(tool)
        asked = reactor.seconds()
        d = self.server.registry.close(conn, "testing")
        await tool.gone
        reason = tool.reason
        await d
        self.assertTrue(reason.check(error.ConnectionLost), reason)  # ECONNRESET: an RST
        self.assertGreaterEqual(tool.ended_at - asked, 0.5)
        self.assertEqual(conn.ended_by, "reset")
        self.assertEqual(await self.new_time_wait(), set())

    async def test_no_time_wait_after_200_short_tool_connections(self) -> None:
        async def one(i: int) -> None:
            client = await connect(reactor, self.endpoint, f"user{i}", timeout=10)
            self.assertEqual(await client.jobs(), [])
            await client.aclose()

        for batch in range(10):
            await defer.gatherResults([defer.ensureDeferred(one(batch * 20 + i)) for i in range(20)])
        await until(lambda: not self.server.connections, 5, "the server side of each to go")
        self.assertEqual(self.server.registry.opened, 200)
        self.assertEqual(await self.new_time_wait(), set())
        self.assertGreaterEqual(len(await time_wait_sockets(self.port, "dport")), 200)


class RenderServiceTests(NetworkCase):
    """The real render service: it closes first when asked, reconnects with backoff, and
    closes first when it stops."""

    options = {"heartbeat_hold": 0.5, "close_wait": 3.0}

    async def test_render_closes_first_reconnects_and_closes_first_on_stop(self) -> None:
        state = tempfile.mkdtemp(prefix="farmnet-render-")
        self.addCleanup(shutil.rmtree, state, True)
        config = RenderConfig(server=self.endpoint, name="r1", state_dir=state, reconnect_max_delay=1.0)
        service = render_service(reactor, config)
        service.startService()
        stopped = []

        async def stop() -> None:
            if not stopped:
                await service.stopService()

        self.addCleanup(stop)
        registry = self.server.registry
        first = await until(lambda: registry.render_connection(1), 10, "the render to register")
        await until(lambda: first.held_heartbeat is not None, 5, "its heartbeat to be held")
        asked = reactor.seconds()
        await self.server.eject(first.id, "testing")
        self.assertEqual(first.ended_by, "peer")  # it closed first
        self.assertLess(reactor.seconds() - asked, 1.0)
        second = await until(lambda: registry.render_connection(1), 10, "the render to come back")
        self.assertIsNot(second, first)
        self.assertTrue(self.farm.render(1).online)
        await service.stopService()
        stopped.append(True)
        await second.when_closed()
        self.assertEqual(second.ended_by, "peer")
        self.assertEqual(await self.new_time_wait(), set())


class ShutdownTests(NetworkCase):
    options = {"event_hold": 10.0, "heartbeat_hold": 10.0, "close_wait": 2.0}

    async def test_shutdown_answers_held_calls_and_asks_everyone(self) -> None:
        render, render_id = await self.render("r1")
        heartbeat = render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        monitor = await self.peer("monitor", "bob")
        last = (await monitor.callRemote(c.PollEvents, after=-1))["last"]
        poll = monitor.callRemote(c.PollEvents, after=last)
        tool = await connect(reactor, self.endpoint, "anna", timeout=5)
        await deferLater(reactor, 0.05)
        conns = list(self.server.registry)
        started = reactor.seconds()
        shutdown = defer.ensureDeferred(self.server.shutdown())

        answer = await heartbeat
        self.assertEqual([o.order for o in answer["orders"]], ["reconnect"])
        render.transport.loseConnection()  # a render closes, then reconnects with backoff
        polled = await poll
        self.assertEqual((polled["close"], polled["events"], polled["last"]), (True, [], last))
        monitor.transport.loseConnection()
        await shutdown
        self.assertLess(reactor.seconds() - started, 1.0)  # everyone closed, no close_wait
        self.assertEqual([conn.ended_by for conn in conns], ["peer"] * 3)
        self.assertTrue(tool._proto.lost)
        self.assertEqual(self.server.connections, {})
        self.assertTrue(self.farm.render(render_id).online)  # stopping is not losing renders
        late = await connectProtocol(clientFromString(reactor, self.endpoint), Peer())
        with self.assertRaises(error.ConnectionClosed):
            await late.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="tool", user="x")
        self.assertEqual(await self.new_time_wait(), set())


# --- authentication --------------------------------------------------------------------


class RenderSecretTests(NetworkCase):
    options = {"render_secret": "s3cret"}

    async def test_wrong_or_missing_secret_refused(self) -> None:
        proto = await self.peer(None)
        for secret in ("wrong", None):
            with self.assertRaises(errors.PermissionDenied):
                await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render",
                                       user="r1", secret=secret)
        with self.assertRaises(errors.NotAuthenticated):
            await proto.callRemote(c.RegisterRender, name="r1", **RENDER)
        # The first failure is logged as it happens, the next ones summed up (tests/test_throttle.py).
        self.assertEqual(len(self.log_lines("refused {who} from {address}")), 1)

    async def test_right_secret_accepted(self) -> None:
        proto = await self.peer("render", "r1", secret="s3cret")
        answer = await proto.callRemote(c.RegisterRender, name="r1", **RENDER)
        self.assertTrue(self.farm.render(answer["render_id"]).online)

    async def test_three_failures_close_the_connection(self) -> None:
        proto = await self.peer(None)
        for _ in range(3):
            with self.assertRaises(errors.PermissionDenied):
                await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render",
                                       user="r1", secret="guess")
        await proto.gone

    async def test_no_guesses_while_closing(self) -> None:
        """A peer that does not close when asked gets no more checked guesses in close_wait."""
        proto = await self.peer(None, obeys=False)
        messages = []
        for secret in ("guess1", "guess2", "guess3", "s3cret"):
            with self.assertRaises(errors.PermissionDenied) as refused:
                await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render",
                                       user="r1", secret=secret)
            messages.append(refused.exception.message)
        self.assertEqual(messages[3], "3 failed logins: this connection is closing")
        await proto.gone


class UsersFileTests(NetworkCase):
    def setUp(self) -> Any:
        self.users = os.path.join(tempfile.mkdtemp(prefix="farmnet-users-"), "users")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.users), True)
        Path(self.users).write_text(f"anna:{hash_password('right horse')}\n")
        self.options = {"users_file": self.users}
        return super().setUp()

    async def test_password_required(self) -> None:
        client = await connect(reactor, self.endpoint, "anna", password="right horse", timeout=10)
        self.addCleanup(client.aclose)
        self.assertEqual(await client.jobs(), [])
        for user, password in (("anna", "wrong"), ("anna", None), ("nobody", "right horse")):
            with self.assertRaises(errors.PermissionDenied):
                await connect(reactor, self.endpoint, user, password=password, timeout=10)

    async def test_only_admins_submit_for_other_users(self) -> None:
        """With passwords, a job's user_name other than the login's is an admin's right."""
        client = await connect(reactor, self.endpoint, "anna", password="right horse", timeout=10)
        self.addCleanup(client.aclose)
        job = {"job": {"name": "j", "user_name": "bob", "blocks": [{"name": "b", "command": "true"}]}}
        with self.assertRaises(errors.PermissionDenied) as refused:
            await client.submit(job)
        self.assertIn("may not submit jobs as 'bob'", refused.exception.message)
        job["job"]["user_name"] = "anna"
        job_id, _ = await client.submit(job)
        self.assertEqual(self.farm.jobs[job_id].user_name, "anna")

    async def test_renders_need_no_password(self) -> None:
        proto = await self.peer("render", "r1")
        await proto.callRemote(c.RegisterRender, name="r1", **RENDER)


class AccessTests(NetworkCase):
    async def test_renders_cannot_use_tool_commands(self) -> None:
        proto = await self.peer("render", "root")
        with self.assertRaises(errors.NotAuthenticated):
            await proto.callRemote(c.ListJobs)
        with self.assertRaises(errors.NotAuthenticated):
            await proto.callRemote(c.JobAction, job_ids=[1], action="delete")

    async def test_without_users_file_tools_only_from_this_host(self) -> None:
        remote = Connection(1, None, "192.0.2.7", 5000, 0.0, local=False)  # type: ignore[arg-type]
        with self.assertRaises(errors.PermissionDenied):
            await self.server.authenticate(remote, "tool", "anna", None, None)
        await self.server.authenticate(remote, "render", "r1", None, None)  # no render_secret set
        local = Connection(2, None, "127.0.0.1", 5000, 0.0, local=True)  # type: ignore[arg-type]
        await self.server.authenticate(local, "monitor", "anna", None, None)

    def test_is_local(self) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        self.assertTrue(is_local(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertTrue(is_local(IPv4Address("TCP", "127.3.2.1", 1)))
        self.assertTrue(is_local(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(is_local(UNIXAddress(b"/run/farmnet.sock")))
        self.assertFalse(is_local(IPv4Address("TCP", "10.0.0.1", 1)))


# --- TLS -------------------------------------------------------------------------------


def _write_key(path: Path, key: Any) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(directory: Path, name: str) -> tuple[Any, x509.Certificate, Path]:
    """A self-signed CA: (key, certificate, path of the certificate PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(directory: Path, ca_key: Any, ca_cert: x509.Certificate,
                     names: tuple[str, ...] = ("localhost",),
                     addresses: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """A server certificate for ``names`` and ``addresses`` (default: localhost and
    127.0.0.1) signed by the CA: (key, cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farmnet server")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in names]
                + [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_path, cert_path = directory / "server.key", directory / "server.pem"
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TLSTests(NetworkCase):
    def listen_description(self) -> str:
        self.certs = Path(tempfile.mkdtemp(prefix="farmnet-tls-"))
        self.addCleanup(shutil.rmtree, self.certs, True)
        ca_key, ca_cert, self.ca = make_ca(self.certs, "farm-ca")
        (self.certs / "roots").mkdir()
        shutil.copy(self.ca, self.certs / "roots" / "farm-ca.pem")
        _, _, self.other_ca = make_ca(self.certs, "other-ca")
        key, cert = make_server_cert(self.certs, ca_key, ca_cert)
        return f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"

    async def test_client_verifies_the_server_with_the_ca(self) -> None:
        client = await connect(reactor, self.endpoint, "anna", ca=str(self.ca), timeout=10)
        self.addCleanup(client.aclose)
        self.assertEqual(await client.jobs(), [])
        conn = next(iter(self.server.registry))
        self.assertIsNotNone(socket_of(conn.peer.transport))  # keepalive, linger: under TLS too
        self.assertEqual(conn.kind, "tool")

    async def test_tls_endpoint_string_with_trust_roots(self) -> None:
        endpoint = f"tls:127.0.0.1:{self.port}:trustRoots={self.certs / 'roots'}"
        client = await connect(reactor, endpoint, "anna", timeout=10)
        self.addCleanup(client.aclose)
        self.assertEqual(await client.jobs(), [])
        localhost = await connect(reactor, f"tls:localhost:{self.port}", "anna", ca=str(self.ca),
                                  timeout=10)
        self.addCleanup(localhost.aclose)
        self.assertEqual(await localhost.renders(), [])

    async def test_wrong_ca_fails(self) -> None:
        with self.assertRaises(ServerUnreachable) as caught:
            await connect(reactor, self.endpoint, "anna", ca=str(self.other_ca), timeout=10)
        self.assertIn("TLS", str(caught.exception))
        await until(lambda: not self.server.connections, 5, "the refused connection to go")

    async def test_plain_client_gets_nothing(self) -> None:
        proto = await connectProtocol(clientFromString(reactor, self.endpoint), Peer())
        self.addCleanup(proto.close)
        hello = proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="tool", user="anna")
        hello.addTimeout(1.0, reactor)
        with self.assertRaises((defer.TimeoutError, error.ConnectionClosed)):
            await hello


# --- limits ----------------------------------------------------------------------------


class ConnectionLimitTests(NetworkCase):
    options = {"limits": LimitsConfig(max_connections_per_address=3)}

    async def test_too_many_from_one_address(self) -> None:
        first = [await self.peer("tool", f"u{i}") for i in range(3)]
        extra = await self.peer(None)
        await extra.gone
        reason = extra.reason
        self.assertTrue(reason.check(error.ConnectionLost), reason)  # reset at once
        self.assertEqual(self.server.registry.refused, 1)
        [line] = self.log_lines("refused connection")
        self.assertEqual(line["reason"], "more than 3 connections from 127.0.0.1")
        for proto in first:
            self.assertEqual(await proto.callRemote(c.ListJobs), {"jobs": []})
        await first[0].close()
        await until(lambda: len(self.server.connections) == 2, 5, "the server to see it go")
        again = await self.peer("tool", "u3")
        self.assertEqual(await again.callRemote(c.ListJobs), {"jobs": []})
        self.assertEqual(await self.new_time_wait(), set())


class BoxLimitTests(NetworkCase):
    options = {"limits": LimitsConfig(max_box_bytes=1 << 20, max_boxes_per_second=20)}

    async def test_oversized_box_closes_that_connection_only(self) -> None:
        other = await self.peer("tool", "bob")
        big = await self.peer("tool", "anna")
        with self.assertRaises(error.ConnectionClosed):
            await big.callRemote(c.SubmitJob, spec={"job": {"name": "x" * (2 << 20)}})
        [line] = self.log_lines("closing {peer}")
        self.assertIn("max_box_bytes", line["reason"])
        self.assertEqual((line["kind"], line["peer"].split()[0]), ("tool", "tool"))
        self.assertEqual(await other.callRemote(c.ListJobs), {"jobs": []})
        self.assertEqual(self.server.registry.limited, 1)

    async def test_box_flood_closes_it(self) -> None:
        other = await self.peer("tool", "bob")
        flood = await self.peer("tool", "anna")
        results = await defer.DeferredList([flood.callRemote(c.ListJobs) for _ in range(300)],
                                           consumeErrors=True)
        answered = sum(1 for ok, _ in results if ok)
        self.assertLessEqual(answered, 41)  # the bucket: 2 s of 20 boxes, and the Hello's refill
        self.assertTrue(all(f.check(error.ConnectionClosed) for ok, f in results if not ok))
        await flood.gone
        [line] = self.log_lines("closing {peer}")
        self.assertEqual(line["reason"], "more than 20 boxes per second")
        self.assertEqual(await other.callRemote(c.ListJobs), {"jobs": []})


class BackPressureTests(NetworkCase):
    """The transport's producer API on the server's side of a real connection."""

    options = {"limits": LimitsConfig(max_unsent_bytes=1 << 20)}

    async def test_paused_connection_is_not_served_until_resumed(self) -> None:
        tool = await self.peer("tool", "anna")
        server_side = self.connection(tool).peer
        server_side.pauseProducing()  # as the transport does when the peer stops reading
        answer = tool.callRemote(c.ListJobs)
        await deferLater(reactor, 0.2)
        self.assertFalse(answer.called)  # read from the socket only once resumed
        server_side.resumeProducing()
        self.assertEqual(await answer, {"jobs": []})

    async def test_answers_past_max_unsent_bytes_reset_the_peer(self) -> None:
        """Answers still coming out after the pause are counted; past max_unsent_bytes the
        peer, which does not read, is reset instead of queued for."""
        other = await self.peer("tool", "bob")
        tool = await self.peer("tool", "anna")
        conn = self.connection(tool)
        conn.peer.pauseProducing()
        for n in range(20):
            conn.peer.sendBox(amp.AmpBox({b"_answer": b"%d" % n, b"data": b"x" * 60000}))
        await tool.gone
        self.assertEqual(conn.ended_by, "limit")
        [line] = self.log_lines("closing {peer}")
        self.assertIn("max_unsent_bytes", line["reason"])
        self.assertEqual(await other.callRemote(c.ListJobs), {"jobs": []})


class PartialBoxTests(NetworkCase):
    """Unfinished boxes: a small cap before Hello, one budget across connections."""

    options = {"limits": LimitsConfig(max_hello_bytes=4096, max_partial_bytes=1 << 20)}

    async def test_before_hello_a_box_may_not_pass_max_hello_bytes(self) -> None:
        anonymous = await self.peer(None)
        anonymous.transport.write(raw_box([(b"k", b"x" * 5000)])[:-2])  # no end: unfinished
        await anonymous.gone
        [line] = self.log_lines("closing {peer}")
        self.assertIn("max_hello_bytes", line["reason"])
        tool = await self.peer("tool", "anna")  # after Hello, the same box is fine
        tool.transport.write(raw_box([(b"k", b"x" * 5000)])[:-2])
        await deferLater(reactor, 0.2)
        self.assertFalse(tool.gone.called)
        self.assertEqual(self.server.registry.partial_bytes, 5000 + 1 + 100)  # a key counts 100 more
        tool.transport.write(b"\x00\x00")  # the box ends (an unknown kind of box: closed)
        await tool.gone
        await until(lambda: self.server.registry.partial_bytes == 0, 5, "the budget to be empty")

    async def test_all_connections_share_max_partial_bytes(self) -> None:
        peers = [await self.peer("tool", f"u{n}") for n in range(3)]
        chunk = raw_box([(b"k%d" % i, b"x" * 60000) for i in range(7)])[:-2]  # 420 kB, unfinished
        for peer in peers:
            peer.transport.write(chunk)
            await deferLater(reactor, 0.1)
        await peers[2].gone  # the third passes 1 MiB in all
        self.assertFalse(peers[0].gone.called or peers[1].gone.called)
        self.assertEqual(self.server.registry.partial_bytes, 2 * 7 * (60000 + 102))
        peers[0].transport.loseConnection()
        await until(lambda: self.server.registry.partial_bytes == 7 * (60000 + 102), 5,
                    "the closed connection's unfinished box to leave the budget")


class RenderTrafficTests(NetworkCase):
    """Default limits: a render's normal traffic (heartbeats, a backlog of output chunks
    after a reconnect) is never throttled."""

    async def test_render_backlog_flush_is_not_throttled(self) -> None:
        render, render_id = await self.render("r1")
        spec, _ = parse_job({"job": {"name": "j", "blocks": [
            {"name": "b", "command": "true", "frame_last": 1}]}}, 10)
        job = self.farm.submit(spec, "anna")
        beat = await render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        [order] = beat["orders"]
        ref = attrs.asdict(order.ref())
        # A reconnect's backlog (16 chunks per task) for a dozen tasks, sent at once.
        chunks = [render.callRemote(c.TaskOutput, render_id=render_id, **ref, data=b"x" * (64 << 10),
                                    progress=i % 100) for i in range(200)]
        await defer.gatherResults(chunks)
        await render.callRemote(c.TaskFinished, render_id=render_id, **ref, exit_code=0,
                                time_started=1.0, time_done=2.0, message="")
        self.assertEqual(self.farm.job(job.id).counts[TaskState.DON], 1)
        self.assertEqual(self.server.registry.limited, 0)


# --- malformed input, generated --------------------------------------------------------


def raw_box(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A box as bytes, lengths as given (AmpBox.serialize would refuse bad ones)."""
    out = bytearray()
    for key, value in pairs:
        out += struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value
    return bytes(out + b"\x00\x00")


def command_box(command: type[amp.Command], ask: int, **arguments: Any) -> bytes:
    box = command.makeArguments(arguments, None)
    box[b"_command"], box[b"_ask"] = command.commandName, str(ask).encode()
    return box.serialize()


HELLO = command_box(c.Hello, 1, protocol=c.PROTOCOL_VERSION, kind="tool", user="fuzz")
KNOWN = [c.Hello, c.RegisterRender, c.Heartbeat, c.TaskOutput, c.TaskFinished, c.SubmitJob,
         c.ListJobs, c.ShowJob, c.ListTasks, c.GetTaskOutput, c.ListRenders, c.JobAction, c.Act,
         c.PollEvents, c.Close, amp.StartTLS]
VALUES = st.one_of(
    st.binary(max_size=64),
    st.integers().map(lambda i: str(i).encode()),
    st.text(max_size=32).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b"-1", b"1e400", b"True", b"\xff\xfe\xfd", b"9" * 5000, b"[" * 20000,
                     b'{"job": {"blocks": 5}}', b"null", b"1000000", b"[1, 2]", b'{"a": [{}]}']),
)


@st.composite
def garbage(draw: Any) -> bytes:
    """Bytes a broken or hostile peer might send."""
    kind = draw(st.sampled_from(["bytes", "box", "command", "answer", "length", "huge", "parts",
                                 "flood", "empty"]))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=4096))
    if kind == "box":
        return raw_box(draw(st.lists(st.tuples(st.binary(min_size=1, max_size=255), VALUES), max_size=8)))
    if kind == "command":  # a known command (or a made-up name) with missing, wrong or extra values
        command = draw(st.sampled_from(KNOWN))
        name = command.commandName if draw(st.booleans()) else draw(st.binary(min_size=1, max_size=40))
        pairs = [(b"_command", name), (b"_ask", draw(st.sampled_from([b"1", b"x", b"99999999999"])))]
        for key, _ in command.arguments:
            if draw(st.integers(0, 3)):
                pairs.append((key, draw(VALUES)))
                if draw(st.booleans()) and key in (b"spec", b"running", b"data", b"filters", b"message"):
                    pairs.append((key + b".0", draw(VALUES)))
        pairs += draw(st.lists(st.tuples(st.binary(min_size=1, max_size=16), VALUES), max_size=3))
        return (HELLO if draw(st.booleans()) else b"") + raw_box(pairs)
    if kind == "answer":  # answers and errors to questions never asked
        tag = draw(st.sampled_from([b"_answer", b"_error"]))
        return HELLO + raw_box([(tag, draw(VALUES)), (b"_error_code", b"X"), (b"_error_description", b"")])
    if kind == "length":  # a key longer than AMP allows, or a value cut short
        if draw(st.booleans()):
            return struct.pack("!H", draw(st.integers(256, 65535))) + draw(st.binary(max_size=64))
        return b"\x00\x05hello" + struct.pack("!H", draw(st.integers(10, 65535))) + b"short"
    if kind == "huge":  # one box past max_box_bytes (1 MiB here)
        parts = draw(st.integers(17, 24))
        return raw_box([(b"_command", b"submit_job"), (b"_ask", b"1"), (b"spec", str(parts).encode())]
                       + [(b"spec.%d" % i, b"x" * 65535) for i in range(parts)])
    if kind == "parts":  # a Big* argument claiming parts that are not there
        count = draw(st.sampled_from([b"1000000", b"2", b"-5", b"abc", b"99999999999999999999"]))
        return HELLO + raw_box([(b"_command", b"submit_job"), (b"_ask", b"2"), (b"spec", count)])
    if kind == "flood":  # boxes faster than max_boxes_per_second
        return HELLO + b"".join(command_box(c.ListJobs, i + 2) for i in range(draw(st.integers(500, 3000))))
    return b"\x00\x00" * draw(st.integers(1, 3))  # empty boxes


class BlockingAMP:
    """A well-behaved tool on a plain blocking socket (hypothesis drives tests without
    a reactor)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.buffer = b""
        self.ask = 0

    def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        self.ask += 1
        self.sock.sendall(command_box(command, self.ask, **arguments))
        box = amp.AmpBox(self._box())
        if b"_error" in box:
            raise AssertionError(f"error answer: {box}")
        return command.parseResponse(box, None)

    def _box(self) -> dict[bytes, bytes]:
        box: dict[bytes, bytes] = {}
        key: bytes | None = None
        while True:
            string = self._string()
            if key is None:
                if not string:
                    return box
                key = string
            else:
                box[key], key = string, None

    def _string(self) -> bytes:
        length = struct.unpack("!H", self._read(2))[0]
        return self._read(length)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the well-behaved client's connection")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def close(self) -> None:
        self.sock.close()


class MalformedInputTests(SynchronousTestCase):
    """Random bytes, bad length prefixes, huge values, unknown commands and wrong types,
    each on its own connection to a real server process: that connection may be closed,
    the server keeps serving (a well-behaved client gets an answer after every case)."""

    def start_server(self) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
        base = Path(tempfile.mkdtemp(prefix="farmnet-fuzz-"))
        self.addCleanup(shutil.rmtree, base, True)
        config = base / "farmnet.yaml"
        config.write_text("server:\n  stats:\n    enabled: false\n  limits:\n    max_box_bytes: 1048576\n"
                          "    max_boxes_per_second: 200\n    max_connections_per_address: 0\n")
        log = open(base / "server.log", "wb")  # noqa: SIM115 - closed in a cleanup
        self.addCleanup(log.close)
        proc = subprocess.Popen([*twistd_argv(), "-n", "--pidfile=", "farmnet", "server", "--config",
                                 str(config), "--listen", "tcp:0:interface=127.0.0.1", "--web", "",
                                 "--afanasy", "", "--store", str(base / "store")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=base,
                                env={k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"})

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        self.addCleanup(stop)
        address = base / "store" / "amp.address"
        deadline = time.monotonic() + 30
        while not address.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.fail(f"server did not start:\n{(base / 'server.log').read_text(errors='replace')}")
            time.sleep(0.05)
        _, host, port = address.read_text().strip().split(":")
        self.server_log = base / "server.log"
        return proc, (host, int(port))

    def test_malformed_and_oversized_boxes_leave_the_server_serving(self) -> None:
        proc, address = self.start_server()
        good = BlockingAMP(address)
        self.addCleanup(good.close)
        good.call(c.Hello, protocol=c.PROTOCOL_VERSION, kind="tool", user="good")

        @settings(max_examples=100, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(payload=garbage())
        def case(payload: bytes) -> None:
            with socket.create_connection(address, timeout=5) as s:
                try:
                    s.sendall(payload)
                    s.settimeout(0.1)  # let the server deal with it (it may reset us)
                    while s.recv(65536):
                        pass
                except OSError:  # reset by the server, or the read window ended
                    pass
            self.assertIsNone(proc.poll(), "the server died")
            self.assertIsInstance(good.call(c.ListJobs)["jobs"], list)

        case()
        self.assertIsNone(proc.poll())
        log = self.server_log.read_text(errors="replace")
        self.assertIn("closing", log)
        self.assertNotIn("Unhandled Error", log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with trial or pytest")
