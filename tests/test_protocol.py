"""The wire: AMP commands against a real server on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from farmnet import errors
from farmnet.config import ConnectionsConfig
from farmnet.model.farm import Farm
from farmnet.protocol import commands as c
from farmnet.protocol.arguments import BigBytes, BigJSON
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.outputs import OutputStore

RENDER = {"capacity": 1100, "max_tasks": 0, "services": [], "services_disabled": [],
          "platform": "test", "cpus": 1, "memory_mb": 1, "running": []}


class Echo(amp.Command):
    arguments = [(b"value", BigJSON()), (b"data", BigBytes(optional=True))]
    response = [(b"value", BigJSON()), (b"data", BigBytes(optional=True))]


class Client(amp.AMP):
    """A peer whose cleanup waits until the server has seen the connection go."""

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.gone.callback(None)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.gone: defer.Deferred[None] = defer.Deferred()

    async def close(self) -> None:
        if not self.gone.called:
            self.transport.loseConnection()
            await self.gone
        await deferLater(reactor, 0.01)  # let the server side process its own loss


class ArgumentTests(SynchronousTestCase):
    def test_big_values_split_into_parts(self) -> None:
        value = {"tasks": ["x" * 100] * 5000}
        box = Echo.makeArguments({"value": value, "data": b"y" * 200_000}, None)
        self.assertTrue(all(len(v) <= amp.MAX_VALUE_LENGTH for v in box.values()))
        self.assertGreater(len(box), 10)
        parsed = Echo.parseArguments(amp.AmpBox(box), None)
        self.assertEqual(parsed, {"value": value, "data": b"y" * 200_000})
        amp.AmpBox(box).serialize()  # would raise TooLong if any value were too big

    def test_optional_absent(self) -> None:
        box = Echo.makeArguments({"value": [], "data": None}, None)
        self.assertEqual(Echo.parseArguments(amp.AmpBox(box), None), {"value": [], "data": None})


class AMPContractTests(SynchronousTestCase):
    def test_responder_parses_arguments_at_once(self) -> None:
        """ServerProtocol.locateResponder tells a malformed box from a failing command by
        this: the responder AMP locates raises on bad arguments, before any Deferred."""

        class Locator(amp.CommandLocator):
            @Echo.responder
            def echo(self, value: Any, data: bytes | None = None) -> dict[str, Any]:
                raise AssertionError("not called with bad arguments")

        responder = Locator().locateResponder(Echo.commandName)
        self.assertRaises(ValueError, responder, amp.AmpBox({b"value": b"{not json"}))
        self.assertRaises(KeyError, responder, amp.AmpBox())


class ServerTestCase(TestCase):
    timeout = 30
    hold = 0.5

    async def setUp(self) -> None:
        self.store = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.store, True)
        self.farm = Farm(reactor)
        self.addCleanup(self.farm.stop)
        connections = ConnectionsConfig(heartbeat_hold=self.hold, event_hold=self.hold)
        self.server = FarmServer(reactor, self.farm, OutputStore(self.store), connections=connections)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            ServerFactory(self.server))
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def connect(self, kind: str = "tool", user: str = "anna", hello: bool = True) -> amp.AMP:
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Client())
        self.addCleanup(proto.close)
        if hello:
            await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind=kind, user=user)
        return proto


class HelloTests(ServerTestCase):
    async def test_incompatible_version_is_fatal(self) -> None:
        proto = await self.connect(hello=False)
        with self.assertRaises(errors.IncompatibleProtocol):
            await proto.callRemote(c.Hello, protocol=999, kind="tool", user="anna")
        await proto.gone  # a fatal error closes the connection

    async def test_commands_need_hello(self) -> None:
        proto = await self.connect(hello=False)
        with self.assertRaises(errors.NotAuthenticated):
            await proto.callRemote(c.ListJobs)

    async def test_tools_cannot_act_as_renders(self) -> None:
        proto = await self.connect(kind="tool")
        with self.assertRaises(errors.NotAuthenticated):
            await proto.callRemote(c.RegisterRender, name="r", **RENDER)


class ToolTests(ServerTestCase):
    async def test_submit_100k_tasks_and_list_them(self) -> None:
        proto = await self.connect()
        tasks = [{"name": f"t{i}", "command": f"echo {i}"} for i in range(100_000)]
        answer = await proto.callRemote(c.SubmitJob, spec={"job": {"name": "big", "blocks": [
            {"name": "b", "tasks": tasks}]}})
        job_id = answer["job_id"]
        page = await proto.callRemote(c.ListTasks, job_id=job_id, offset=99_990, limit=100)
        self.assertEqual(page["total"], 100_000)
        self.assertEqual([t["name"] for t in page["tasks"]], [f"t{i}" for i in range(99_990, 100_000)])

    async def test_invalid_spec_names_the_key(self) -> None:
        proto = await self.connect()
        with self.assertRaises(errors.JobSpecError) as caught:
            await proto.callRemote(c.SubmitJob, spec={"job": {"name": "x", "blocks": [
                {"name": "b", "command": "x", "frames_per_task": 0}]}})
        self.assertIn("job.blocks[0].frames_per_task", str(caught.exception))

    async def test_unknown_job(self) -> None:
        proto = await self.connect()
        with self.assertRaises(errors.UnknownJob):
            await proto.callRemote(c.ShowJob, job_id=42)

    async def test_another_users_job_is_refused(self) -> None:
        anna = await self.connect(user="anna")
        bob = await self.connect(user="bob")
        job_id = (await anna.callRemote(c.SubmitJob, spec={"name": "j", "blocks": [
            {"name": "b", "command": "true"}]}))["job_id"]
        with self.assertRaises(errors.PermissionDenied):
            await bob.callRemote(c.JobAction, job_ids=[job_id], action="delete")
        self.assertIn(job_id, self.farm.jobs)


class DeliverylessTests(ServerTestCase):
    async def register(self) -> tuple[amp.AMP, int]:
        proto = await self.connect(kind="render", user="r1")
        answer = await proto.callRemote(c.RegisterRender, name="r1", **RENDER)
        return proto, answer["render_id"]

    async def test_heartbeat_held_until_an_order(self) -> None:
        render, render_id = await self.register()
        tool = await self.connect()
        beat = render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        self.assertFalse(beat.called)
        sent = time.monotonic()
        await tool.callRemote(c.SubmitJob, spec={"name": "j", "blocks": [{"name": "b", "command": "true"}]})
        answer = await beat
        self.assertLess(time.monotonic() - sent, self.hold)  # not the hold time: at once
        [order] = answer["orders"]
        self.assertEqual((order["order"], order["command"]), ("start", "true"))

    async def test_heartbeat_answered_empty_after_hold(self) -> None:
        render, render_id = await self.register()
        answer = await render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        self.assertEqual(answer["orders"], [])

    async def test_heartbeat_of_a_foreign_render_id(self) -> None:
        render, render_id = await self.register()
        with self.assertRaises(errors.NotRegistered):
            await render.callRemote(c.Heartbeat, render_id=render_id + 1, running=[])

    async def test_output_and_finish(self) -> None:
        render, render_id = await self.register()
        tool = await self.connect()
        beat = render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        job_id = (await tool.callRemote(c.SubmitJob, spec={"name": "j", "blocks": [
            {"name": "b", "command": "true"}]}))["job_id"]
        [order] = (await beat)["orders"]
        ref: dict[str, Any] = {k: order[k] for k in ("job_id", "block", "task", "run")}
        big = b"z" * 300_000
        await render.callRemote(c.TaskOutput, render_id=render_id, **ref, data=big, progress=40)
        await render.callRemote(c.TaskFinished, render_id=render_id, **ref, exit_code=0,
                                time_started=1.0, time_done=2.0, message="")
        out = await tool.callRemote(c.GetTaskOutput, job_id=job_id, block=0, task=0, run=0,
                                    offset=0, limit=1 << 20)
        self.assertEqual(out["data"], big)
        self.assertEqual(self.farm.jobs[job_id].state.value, "DON")

    async def test_monitor_long_poll(self) -> None:
        monitor = await self.connect(kind="monitor")
        tool = await self.connect()
        last = (await monitor.callRemote(c.PollEvents, after=-1))["last"]
        poll = monitor.callRemote(c.PollEvents, after=last)
        self.assertFalse(poll.called)
        await tool.callRemote(c.SubmitJob, spec={"name": "j", "blocks": [{"name": "b", "command": "true"}]})
        answer = await poll
        self.assertIn("job", [e["kind"] for e in answer["events"]])
        self.assertEqual(answer["last"], answer["events"][-1]["seq"])

    async def test_held_polls_leave_no_waiters_behind(self) -> None:
        monitor = await self.connect(kind="monitor")
        last = (await monitor.callRemote(c.PollEvents, after=-1))["last"]
        for _ in range(3):  # each is held, then answered empty after the hold
            answer = await monitor.callRemote(c.PollEvents, after=last)
            self.assertEqual(answer["events"], [])
        self.assertLessEqual(len(self.server.events._waiters), 1)
