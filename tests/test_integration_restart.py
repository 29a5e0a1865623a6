"""Real processes on 127.0.0.1: a server killed and restarted under running renders, a
render killed (or frozen) under its task, and a storm of 1,000 renders reconnecting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.testing import ChildOutput, LoggedProcess, ProcessFarm, wait_until

ROOT = Path(__file__).resolve().parent.parent
FAKE_RENDERS = ROOT / "bench" / "fake_renders.py"


def sleep_job(tasks: int, seconds: float, name: str = "sleepers") -> dict[str, Any]:
    return {"job": {"name": name, "blocks": [
        {"name": "sleep", "command": f"sleep {seconds}", "frame_first": 1, "frame_last": tasks,
         "parser": "none"}]}}


class RestartCase(TestCase):
    timeout = 180
    server_config = "server:\n  stats:\n    enabled: false\n"

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-restart-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        self.config = Path(self.base) / "server.yaml"
        self.config.write_text(self.server_config)
        self.client: FarmClient | None = None
        self.addCleanup(self._close_client)

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def start_server(self, listen: str = "tcp:0:interface=127.0.0.1") -> None:
        await self.farm.start_server("--config", str(self.config), listen=listen)
        self.client = await connect(reactor, self.farm.endpoint, "anna", timeout=20)

    def same_port(self) -> str:
        port = self.farm.endpoint.rsplit(":", 1)[1]
        return f"tcp:{port}:interface=127.0.0.1:backlog=1024"

    async def restart_server_killed(self) -> None:
        """kill -9 the server, start it again on the same port and store."""
        assert self.farm.server is not None and self.client is not None
        listen = self.same_port()
        self.client.close()
        ended = self.farm.server.watch.ended
        self.farm.kill(self.farm.server)
        await ended
        await self.start_server(listen)

    async def online(self, count: int) -> bool:
        assert self.client is not None
        return sum(1 for r in await self.client.renders() if r["online"]) == count

    async def _done(self, job_id: int) -> Any:
        assert self.client is not None
        job = await self.client.job(job_id)
        return job if job["state"] in ("DON", "ERR") else None


class ServerKilledTests(RestartCase):
    async def test_running_tasks_reattached_after_server_kill(self) -> None:
        """kill -9 the server while 3 renders run tasks; restarted on the same port and
        store, the renders reconnect, the tasks are re-attached (not run again) and the
        job ends DON with every task started once."""
        await self.start_server()
        for name in ("alpha", "beta", "gamma"):
            await self.farm.start_render(name)
        await wait_until(reactor, lambda: self.online(3), 60, "three renders online")
        assert self.client is not None
        job_id, _ = await self.client.submit(sleep_job(3, 3))

        async def all_running() -> bool:
            assert self.client is not None
            return [t["state"] for t in await self.client.tasks(job_id)] == ["RUN"] * 3

        await wait_until(reactor, all_running, 30, "three tasks running")
        await deferLater(reactor, 0.6)  # the store writes every 0.2 s
        await self.restart_server_killed()
        job = await wait_until(reactor, lambda: self._done(job_id), 60, "the job to finish")
        tasks = await self.client.tasks(job_id)
        self.assertEqual(job["state"], "DON")
        self.assertEqual([(t["state"], t["starts_count"]) for t in tasks], [("DON", 1)] * 3)
        self.assertEqual({t["host"] for t in tasks}, {"alpha", "beta", "gamma"})


class FinishOrdersKilledTests(RestartCase):
    async def render(self, running: list[Any]) -> tuple[FarmAMP, int]:
        """A protocol-level render that speaks finish_orders."""
        host, port = self.farm.endpoint.split(":")[1:3]
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), FarmAMP())
        self.addCleanup(self._close, proto)
        hello = await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render", user="proto",
                                       features=[c.FINISH_ORDERS])
        self.assertEqual(hello["features"], [c.FINISH_ORDERS])
        answer = await proto.callRemote(c.RegisterRender, name="proto", capacity=1100, max_tasks=0,
                                        services=[], services_disabled=[], platform="test", cpus=1,
                                        memory_mb=1024, running=running)
        return proto, answer["render_id"]

    async def _close(self, proto: FarmAMP) -> None:
        if not proto.lost:
            proto.transport.loseConnection()
            await proto.when_lost()

    @staticmethod
    def finish(proto: FarmAMP, render_id: int, order: Any) -> defer.Deferred[dict[str, Any]]:
        return proto.callRemote(c.TaskFinished, render_id=render_id, job_id=order.job_id, block=order.block,
                                task=order.task, run=order.run, exit_code=0, time_started=1.0,
                                time_done=2.0, message="")

    async def test_an_order_carried_by_a_finish_answer_survives_kill_9(self) -> None:
        """The next start order comes with the answer to a finish, and the server is killed
        (-9) at once: that start was on disk before its answer left, so the restarted server
        takes the render's report of it and the job ends with each task started once."""
        await self.start_server()
        assert self.client is not None
        proto, render_id = await self.render([])
        beat = proto.callRemote(c.Heartbeat, render_id=render_id, running=[])
        job_id, _ = await self.client.submit({"name": "two", "blocks": [
            {"name": "b", "command": "true", "frame_first": 1, "frame_last": 2, "parser": "none"}]})
        [first] = (await beat)["orders"]
        [second] = (await self.finish(proto, render_id, first))["orders"]
        self.assertEqual((second.order, second.task, second.run), ("start", 1, 1))
        await self.restart_server_killed()
        proto, render_id = await self.render([second.ref()])
        held = proto.callRemote(c.Heartbeat, render_id=render_id, running=[second.ref()])
        self.assertIsNone((await self.finish(proto, render_id, second))["orders"])
        job = await wait_until(reactor, lambda: self._done(job_id), 30, "the job to finish")
        tasks = await self.client.tasks(job_id)
        self.assertEqual(job["state"], "DON")
        self.assertEqual([(t["state"], t["starts_count"]) for t in tasks], [("DON", 1)] * 2)
        self.assertFalse(held.called)  # no order came for the render: nothing started twice
        held.addErrback(lambda failure: failure.trap(error.ConnectionDone, error.ConnectionLost))  # cleanup


class RenderKilledTests(RestartCase):
    server_config = ("server:\n  stats:\n    enabled: false\n  scheduling:\n    task_reconnect_timeout: 1\n"
                     "  connections:\n    zombie_time: 2\n    heartbeat_hold: 1\n")

    async def _run_with(self, stop: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
        await self.start_server()
        renders = {name: await self.farm.start_render(name) for name in ("alpha", "beta")}
        await wait_until(reactor, lambda: self.online(2), 60, "two renders online")
        assert self.client is not None
        job_id, _ = await self.client.submit(sleep_job(1, 2))

        async def running_on() -> str:
            assert self.client is not None
            [task] = await self.client.tasks(job_id)
            return task["host"] if task["state"] == "RUN" else ""

        first = await wait_until(reactor, running_on, 30, "the task to run")
        stop(renders[first])

        async def finished() -> Any:
            assert self.client is not None
            job = await self.client.job(job_id)
            return job if job["state"] in ("DON", "ERR") else None

        job = await wait_until(reactor, finished, 60, "the task to run elsewhere")
        assert self.client is not None
        [task] = await self.client.tasks(job_id)
        return job, task, first

    async def test_killed_render_task_runs_elsewhere(self) -> None:
        job, task, first = await self._run_with(self.farm.kill)
        self.assertEqual(job["state"], "DON")
        self.assertNotEqual(task["host"], first)
        self.assertEqual(task["starts_count"], 2)

    async def test_frozen_render_is_a_zombie_and_its_task_runs_elsewhere(self) -> None:
        """SIGSTOP: the connection stays up, the render just goes silent. Past zombie_time
        after its last answered heartbeat it is offline (RENDER_ZOMBIE); its task waits
        task_reconnect_timeout (WRC), then runs on the other render."""
        frozen: list[Any] = []

        def freeze(proc: Any) -> None:
            proc.signal(signal.SIGSTOP)
            frozen.append(proc)

        try:
            job, task, first = await self._run_with(freeze)
        finally:
            for proc in frozen:  # let it die normally at cleanup
                proc.signal(signal.SIGCONT)
        self.assertEqual(job["state"], "DON")
        self.assertNotEqual(task["host"], first)
        assert self.client is not None
        renders = {r["name"]: r for r in await self.client.renders()}
        self.assertIn(first, renders)
        server_log = self.farm.server.logfile.read_text() if self.farm.server else ""
        self.assertIn(f"render {first} is a zombie", server_log)


class ReconnectStormTests(RestartCase):
    server_config = ("server:\n  log_stats_interval: 2\n  stats:\n    enabled: false\n"
                     "  limits:\n    max_connections_per_address: 0\n")
    count = 1000

    async def test_storm_of_1000_renders(self) -> None:
        """1,000 fake renders (another process) connect at once, then all reconnect at
        once to a server killed and restarted: the server answers a tool throughout and
        every render registers, each time."""
        await self.start_server("tcp:0:interface=127.0.0.1:backlog=1024")
        status = Path(self.base) / "fakes.json"
        watch = LoggedProcess(Path(self.base) / "fakes.log")
        env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
        proc = reactor.spawnProcess(watch, sys.executable, [
            sys.executable, str(FAKE_RENDERS), self.farm.endpoint, "--count", str(self.count),
            "--status", str(status), "--max-delay", "3"], env=env, path=self.base)

        async def stop_fakes() -> None:
            if not watch.ended.called:
                proc.signalProcess("TERM")
                await watch.ended

        self.addCleanup(stop_fakes)

        def fakes() -> dict[str, Any]:
            try:
                return json.loads(status.read_text())
            except (OSError, ValueError):
                return {}

        for round_ in ("first connection", "after the server restart"):
            latencies: list[float] = []
            storming = [True]
            asking = defer.ensureDeferred(self._keep_asking(storming, latencies))
            await wait_until(reactor, lambda: fakes().get("registered") == self.count, 120,
                             f"{self.count} fake renders registered ({round_})")
            await wait_until(reactor, lambda: self.online(self.count), 60, "the server to list them")
            storming[0] = False
            await asking
            self.assertTrue(latencies)
            self.assertLess(max(latencies), 10.0, round_)
            if round_ == "first connection":
                await self.restart_server_killed()
        self.assertEqual(fakes()["ever_registered"], self.count)

    async def _keep_asking(self, going: list[bool], latencies: list[float]) -> None:
        """A tool's calls while the renders storm in: each is answered, and how fast."""
        assert self.client is not None
        while going[0]:
            started = reactor.seconds()
            await self.client.jobs()
            latencies.append(reactor.seconds() - started)
            await deferLater(reactor, 0.05)


class DeletionsSurviveTests(RestartCase):
    server_config = "server:\n  stats: false\n  admins: [anna]\n"

    async def test_deleted_render_job_and_user_stay_deleted(self) -> None:
        """Delete a render, a job and a user through the action API, kill -9 the server
        and start it again on the same store: all three stay deleted (acknowledged
        deletions are on disk), and what was not deleted is still there."""
        await self.start_server()
        render = await self.farm.start_render("gone")
        await wait_until(reactor, lambda: self.online(1), 60, "the render online")
        assert self.client is not None
        kept, _ = await self.client.submit(sleep_job(1, 0.1, "kept"))
        doomed = sleep_job(1, 0.1, "doomed")
        doomed["job"]["user_name"] = "bob"
        deleted, _ = await self.client.submit(doomed)
        self.assertEqual(await self.client.action([deleted], "delete"), [deleted])
        self.assertEqual(await self.client.act("users", "delete", {"name": ["bob"]}), ["bob"])
        await render.stop()
        await wait_until(reactor, lambda: self.online(0), 60, "the render offline")
        self.assertEqual(await self.client.act("renders", "delete", {"name": ["gone"]}), ["gone"])

        await self.restart_server_killed()
        assert self.client is not None
        self.assertEqual([r["name"] for r in await self.client.renders()], [])
        jobs = {j["id"] for j in await self.client.jobs()}
        self.assertIn(kept, jobs)
        self.assertNotIn(deleted, jobs)
        users = {u["name"] for u in await self.client.users()}
        self.assertIn("anna", users)
        self.assertNotIn("bob", users)


class RepeatedKillTests(RestartCase):
    # A task that waited for task_reconnect_timeout would outlast the test's timeout.
    server_config = "server:\n  stats:\n    enabled: false\n  scheduling:\n    task_reconnect_timeout: 600\n"

    async def test_no_finished_task_runs_again_through_repeated_kills(self) -> None:
        """200 short tasks on 3 renders, the server killed (-9) and restarted 3 times
        while they run: every task's process starts exactly once, no run number is used
        twice, and the job ends without any task waiting for task_reconnect_timeout."""
        await self.start_server()
        for name in ("alpha", "beta", "gamma"):
            await self.farm.start_render(name)
        await wait_until(reactor, lambda: self.online(3), 60, "three renders online")
        assert self.client is not None
        log = Path(self.base) / "runs.log"
        log.touch()
        key = "$FARMNET_JOB_ID.$FARMNET_BLOCK.$FARMNET_TASK"
        job_id, _ = await self.client.submit({"job": {"name": "short", "blocks": [
            {"name": "b", "frame_first": 1, "frame_last": 200, "parser": "none",
             "command": f'echo "{key} $FARMNET_RUN" >> {log}; sleep 0.05'}]}})
        for _ in range(3):
            await deferLater(reactor, 1.0)
            await self.restart_server_killed()
        job = await wait_until(reactor, lambda: self._done(job_id), 120, "the job to finish")
        self.assertEqual(job["state"], "DON")
        starts = [tuple(line.split()) for line in log.read_text().splitlines()]
        tasks = [task for task, _ in starts]
        self.assertEqual(len(set(starts)), len(starts), "a run number was used twice")
        self.assertEqual(sorted(tasks), sorted(set(tasks)), "a task ran twice")
        self.assertEqual(len(tasks), 200)


class ClientsRideRestartsTests(RestartCase):
    async def test_wait_watch_and_a_script_carry_on_through_a_server_restart(self) -> None:
        """`farmnet wait`, `farmnet watch` and a SyncFarmClient script started before a graceful
        restart (an upgrade) and a kill -9 of the server reconnect and see the job end."""
        await self.start_server()
        await self.farm.start_render("alpha")
        await wait_until(reactor, lambda: self.online(1), 60, "the render online")
        assert self.client is not None
        job_id, _ = await self.client.submit(sleep_job(8, 1))
        env = {**self.farm.environ, "FARMNET_SERVER": self.farm.endpoint, "FARMNET_USER": "anna",
               "PYTHONPATH": str(ROOT)}
        waiting, watching, script = ChildOutput(), ChildOutput(), ChildOutput()
        for proto, args in ((waiting, ["-m", "farmnet.cli", "wait", str(job_id)]),
                            (watching, ["-m", "farmnet.cli", "watch", "--json"]),
                            (script, ["-c", SYNC_WAIT, str(job_id)])):
            transport = reactor.spawnProcess(proto, sys.executable, [sys.executable, *args], env=env,
                                             path=self.base)
            self.addCleanup(_stop, transport, proto)
        # All three connected and following the job (each has said something).
        await wait_until(reactor, lambda: waiting.err and watching.out and b"ready" in script.out, 60,
                         "wait, watch and the script to be connected")

        listen = self.same_port()  # an upgrade: SIGTERM, then the new server on the same port
        assert self.farm.server is not None
        self.client.close()
        await self.farm.server.stop()
        await deferLater(reactor, 1.0)
        await self.start_server(listen)
        await deferLater(reactor, 1.0)
        await self.restart_server_killed()  # and a crash

        for proto in (waiting, script):
            try:
                code = await _within(proto.ended, 90)
            except defer.TimeoutError:
                job = await self.client.job(job_id) if self.client else None
                state = job and (job["state"], job["counts"])
                self.fail(f"still waiting; job {state}\nwait: {waiting.err!r}\n"
                          f"script: {script.out!r} {script.err[-2000:]!r}")
            self.assertEqual(code, 0, proto.err.decode(errors="replace"))
        self.assertIn(b"connecting again to", waiting.err)
        self.assertIn(b"connected again to", waiting.err)
        self.assertIn(b"DON", script.out)
        await wait_until(reactor, lambda: b'"state": "DON"' in watching.out or b'"DON"' in watching.out, 30,
                         "watch to print the job done")
        self.assertFalse(watching.ended.called)  # watch goes on


SYNC_WAIT = """
import sys
from farmnet.client.sync import SyncFarmClient

with SyncFarmClient() as farm:
    print("ready", flush=True)
    print(farm.wait(int(sys.argv[1]))["state"], flush=True)
"""


def _stop(transport: Any, proto: Any) -> Any:
    if proto.ended.called:
        return None
    transport.signalProcess(signal.SIGKILL)
    return proto.ended


async def _within(d: defer.Deferred[Any], seconds: float) -> Any:
    d.addTimeout(seconds, reactor)
    return await d
