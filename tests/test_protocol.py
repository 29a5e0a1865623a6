"""The wire: AMP commands against a real server on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

import attrs
from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from farmnet import errors
from farmnet.app import render_service
from farmnet.config import ConnectionsConfig, RenderConfig
from farmnet.messages import RunResources
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
                {"name": "b", "command": "x", "capacity": 0}]}})
        self.assertIn("job.blocks[0].capacity", str(caught.exception))

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
        self.assertEqual((order.order, order.command), ("start", "true"))

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
        ref: dict[str, Any] = attrs.asdict(order.ref())
        big = b"z" * 300_000
        await render.callRemote(c.TaskOutput, render_id=render_id, **ref, data=big, progress=40)
        await render.callRemote(c.TaskFinished, render_id=render_id, **ref, exit_code=0,
                                time_started=1.0, time_done=2.0, message="")
        out = await tool.callRemote(c.GetTaskOutput, job_id=job_id, block=0, task=0, run=0,
                                    offset=0, limit=1 << 20)
        self.assertEqual(out["data"], big)
        self.assertEqual(self.farm.jobs[job_id].state.value, "DON")

    async def finish_orders_render(self) -> tuple[amp.AMP, int]:
        """A render that says the finish_orders feature in its Hello."""
        proto = await self.connect(hello=False)
        answer = await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render", user="r1",
                                        features=[c.FINISH_ORDERS, "a-feature-of-the-future"])
        self.assertEqual(answer["features"], [c.FINISH_ORDERS])  # only what both speak
        render_id = (await proto.callRemote(c.RegisterRender, name="r1", **RENDER))["render_id"]
        return proto, render_id

    async def two_tasks(self, render: amp.AMP, render_id: int) -> tuple[int, Any]:
        """A job of two tasks, one at a time on the render (capacity 1100, tasks 1000 each);
        returns its id and the first start order."""
        tool = await self.connect()
        beat = render.callRemote(c.Heartbeat, render_id=render_id, running=[])
        job_id = (await tool.callRemote(c.SubmitJob, spec={"name": "j", "blocks": [
            {"name": "b", "command": "true", "frame_first": 1, "frame_last": 2}]}))["job_id"]
        [order] = (await beat)["orders"]
        return job_id, order

    async def test_finish_answer_carries_the_next_order(self) -> None:
        """finish_orders: the next task comes with the answer to the finish; the render's held
        heartbeat stays held, and is answered empty after the hold."""
        render, render_id = await self.finish_orders_render()
        job_id, first = await self.two_tasks(render, render_id)
        beat = render.callRemote(c.Heartbeat, render_id=render_id, running=[first.ref()])
        answer = await render.callRemote(c.TaskFinished, render_id=render_id, **attrs.asdict(first.ref()),
                                         exit_code=0, time_started=1.0, time_done=2.0, message="")
        [second] = answer["orders"]
        self.assertEqual((second.order, second.task, second.run), ("start", 1, 1))
        self.assertFalse(beat.called)
        self.assertEqual((await beat)["orders"], [])
        tasks = self.farm.jobs[job_id].blocks[0].tasks
        self.assertEqual([t.state.value for t in tasks], ["DON", "RUN"])
        answer = await render.callRemote(c.TaskFinished, render_id=render_id, **attrs.asdict(second.ref()),
                                         exit_code=0, time_started=1.0, time_done=2.0, message="")
        self.assertIsNone(answer["orders"])  # nothing left to do
        self.assertEqual(self.farm.jobs[job_id].state.value, "DON")

    async def test_a_repeated_finish_is_acknowledged_without_orders(self) -> None:
        render, render_id = await self.finish_orders_render()
        _, first = await self.two_tasks(render, render_id)
        ref = attrs.asdict(first.ref())
        answer = await render.callRemote(c.TaskFinished, render_id=render_id, **ref, exit_code=0,
                                         time_started=1.0, time_done=2.0, message="")
        self.assertEqual(len(answer["orders"]), 1)
        again = await render.callRemote(c.TaskFinished, render_id=render_id, **ref, exit_code=0,
                                        time_started=1.0, time_done=2.0, message="")
        self.assertIsNone(again["orders"])  # the next order left once, with the first answer

    async def test_finishes_of_every_shape_and_their_refusals(self) -> None:
        """A plain finish (the box of nearly every task) takes the server's short way; one with
        more (signal, resources, files) AMP's, with the same effect; a finish for another
        render, or from a tool, is refused as before."""
        render, render_id = await self.finish_orders_render()
        job_id, first = await self.two_tasks(render, render_id)
        ref = attrs.asdict(first.ref())
        tool = await self.connect()
        with self.assertRaises(errors.NotAuthenticated):
            await tool.callRemote(c.TaskFinished, render_id=render_id, **ref, exit_code=0, time_started=1.0,
                                  time_done=2.0, message="")
        with self.assertRaises(errors.NotRegistered):
            await render.callRemote(c.TaskFinished, render_id=render_id + 1, **ref, exit_code=0,
                                    time_started=1.0, time_done=2.0, message="")
        answer = await render.callRemote(c.TaskFinished, render_id=render_id, **ref, signal=9,
                                         time_started=1.0, time_done=2.0, message="killed: by a test",
                                         resources=RunResources(peak_memory_mb=5), files=["a.png"])
        [again] = answer["orders"]  # the failed task is retried here (or the other one starts)
        tasks = self.farm.jobs[job_id].blocks[0].tasks
        self.assertEqual(tasks[0].errors_count, 1)
        answer = await render.callRemote(c.TaskFinished, render_id=render_id, **attrs.asdict(again.ref()),
                                         exit_code=0, time_started=1.0, time_done=2.0, message="done ✓")
        self.assertEqual(len(answer["orders"]), 1)
        out = await tool.callRemote(c.GetTaskOutput, job_id=job_id, block=0, task=again.task, run=again.run,
                                    offset=0, limit=1000)
        self.assertIn("done ✓", out["data"].decode())

    async def test_a_render_without_the_feature_gets_its_orders_by_heartbeat(self) -> None:
        """An older render (no features in its Hello) is answered as before: the finish is only
        acknowledged, and the next order comes in its held heartbeat."""
        render, render_id = await self.register()
        _, first = await self.two_tasks(render, render_id)
        beat = render.callRemote(c.Heartbeat, render_id=render_id, running=[first.ref()])
        answer = await render.callRemote(c.TaskFinished, render_id=render_id, **attrs.asdict(first.ref()),
                                         exit_code=0, time_started=1.0, time_done=2.0, message="")
        self.assertIsNone(answer["orders"])
        [second] = (await beat)["orders"]
        self.assertEqual((second.order, second.task), ("start", 1))

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


# --- malformed typed messages, on real connections ------------------------------------


class RawHeartbeat(amp.Command):
    """Heartbeat as a peer of another make could send and answer it: untyped JSON."""

    commandName = c.Heartbeat.commandName
    arguments = [(b"render_id", amp.Integer()), (b"running", BigJSON()),
                 (b"resources", BigJSON(optional=True))]
    response = [(b"orders", BigJSON())]
    errors = c.Heartbeat.errors


class MalformedFromRenderTests(ServerTestCase):
    async def register(self) -> tuple[amp.AMP, int]:
        proto = await self.connect(kind="render", user="r1")
        answer = await proto.callRemote(c.RegisterRender, name="r1", **RENDER)
        return proto, answer["render_id"]

    async def test_bad_running_is_logged_with_its_path_and_the_connection_reset(self) -> None:
        render, render_id = await self.register()
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "reason" in event:
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        with self.assertRaises(error.ConnectionLost):  # reset at once, like any malformed box
            await render.callRemote(RawHeartbeat, render_id=render_id,
                                    running=[{"job_id": "1", "block": 0, "task": 0, "run": 1}])
        [line] = lines
        self.assertIn("malformed box: heartbeat: ConversionError: running[0].job_id: expected an integer, "
                      "got '1'", line)
        tool = await self.connect()  # the server goes on
        self.assertEqual((await tool.callRemote(c.ListJobs))["jobs"], [])

    async def test_resources_of_a_newer_render_are_read_and_extra_keys_ignored(self) -> None:
        render, render_id = await self.register()
        beat = render.callRemote(RawHeartbeat, render_id=render_id, running=[],
                                 resources={"cpu_num": 12, "gpu_temp": 70})
        await deferLater(reactor, 0.05)
        self.assertEqual(self.farm.render(render_id).resources["cpu_num"], 12)
        self.assertEqual(await beat, {"orders": []})


class FakeServer(amp.AMP):
    """A server of another make: its first heartbeat answer is ``answers[0]``, and so on;
    the render's finishes are kept."""

    def __init__(self, answers: list[Any], seen: dict[str, list[Any]]) -> None:
        super().__init__()
        self.answers, self.seen = answers, seen

    @c.Hello.responder
    def hello(self, **kwargs: Any) -> dict[str, Any]:
        self.seen["hello"].append(kwargs["user"])
        return {"protocol": c.PROTOCOL_VERSION, "server_version": "fake", "connection_id": 1}

    @c.RegisterRender.responder
    def register(self, **kwargs: Any) -> dict[str, Any]:
        return {"render_id": 1, "heartbeat_hold": 0.2}

    @RawHeartbeat.responder
    async def heartbeat(self, **kwargs: Any) -> dict[str, Any]:
        if self.answers:
            return {"orders": self.answers.pop(0)}
        await deferLater(reactor, 0.1)
        return {"orders": []}

    @c.TaskFinished.responder
    def finished(self, **kwargs: Any) -> dict[str, Any]:
        self.seen["finished"].append(kwargs)
        return {}


class MalformedFromServerTests(TestCase):
    timeout = 30

    async def render_of(self, answers: list[Any]) -> dict[str, list[Any]]:
        seen: dict[str, list[Any]] = {"hello": [], "finished": []}
        self.addCleanup(deferLater, reactor, 0.2)  # last: the fake server's held heartbeat ends
        factory = Factory.forProtocol(lambda: FakeServer(answers, seen))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        state = tempfile.mkdtemp(prefix="farmnet-render-")
        self.addCleanup(shutil.rmtree, state, True)
        config = RenderConfig(server=f"tcp:127.0.0.1:{port.getHost().port}", name="r1", state_dir=state,
                              reconnect_max_delay=0.2)
        service = render_service(reactor, config)
        service.startService()
        self.addCleanup(service.stopService)
        return seen

    async def until(self, check: Any, what: str) -> None:
        for _ in range(500):
            if check():
                return
            await deferLater(reactor, 0.02)
        self.fail(f"timed out waiting for {what}")

    async def test_unknown_order_is_refused_and_the_render_reconnects(self) -> None:
        start = {"order": "start", "job_id": 1, "block": 0, "task": 0, "run": 1, "name": "t",
                 "command": "true"}
        seen = await self.render_of([[{"order": "dance"}, start], [start]])
        await self.until(lambda: seen["finished"], "the second answer's task to finish")
        self.assertEqual(len(seen["hello"]), 2)  # closed after the bad answer, came back
        self.assertEqual(len(seen["finished"]), 1)  # the bad answer's start was not obeyed
        self.assertEqual(seen["finished"][0]["exit_code"], 0)
        self.flushLoggedErrors()

    async def test_render_enforces_max_run_time_when_the_server_does_not(self) -> None:
        start = {"order": "start", "job_id": 1, "block": 0, "task": 0, "run": 1, "name": "t",
                 "command": "sleep 30", "max_run_time": 1}
        seen = await self.render_of([[start]])
        await self.until(lambda: seen["finished"], "the task to be killed")
        [finish] = seen["finished"]
        self.assertIn("task_max_run_time of 1 s exceeded", finish["message"])
        self.assertLess(finish["time_done"] - finish["time_started"], 10)
