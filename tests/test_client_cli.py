"""farmnet.client, its blocking face and the farmnet CLI, against a real AMP server.

The server (farm model, output store, AMP listener) runs in the test's own reactor on
127.0.0.1; no render runs: tasks are handed out and finished by driving the farm model
directly. CLI and sync-client runs are separate processes (started without blocking the
reactor, which serves them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import farmnet
from farmnet import cli, errors
from farmnet.client import (
    FarmClient,
    ServerTimeout,
    ServerUnreachable,
    SpecFileError,
    connect,
    load_spec,
)
from farmnet.config import ConnectionsConfig, SchedulingConfig
from farmnet.convert import unstructure
from farmnet.model.data import Render
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.outputs import OutputStore
from farmnet.testing import ChildOutput
from tests.listing_scene import build

ROOT = str(Path(farmnet.__file__).resolve().parent.parent)
EXAMPLES = Path(ROOT) / "examples"
#: Short, so a test sees held PollEvents answered empty and polled again.
EVENT_HOLD = 0.5


def hello_job(frames: int = 3, **block: Any) -> dict[str, Any]:
    return {"job": {"name": "hello", "blocks": [
        {"name": "frames", "command": "echo frame @####@", "frame_first": 1, "frame_last": frames,
         **block},
        {"name": "summary", "tasks": [{"name": "all", "command": "echo done"}]}]}}


def failing_job(frames: int = 2) -> dict[str, Any]:
    """A job that ends ERR at the first failure of each task (no retries)."""
    return {"job": {"name": "fails", "blocks": [
        {"name": "frames", "command": "false", "frame_first": 1, "frame_last": frames,
         "errors_retries": 0}]}}


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    waited = 0.0
    while not (result := check()):
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(0.02)
        waited += 0.02
    return result


class ServerTestCase(TestCase):
    """A farm server on 127.0.0.1 in this reactor, its state in a temporary directory."""

    timeout = 60

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-client-test-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = Farm(reactor, SchedulingConfig(admins=("root",)))
        self.outputs = OutputStore(Path(self.base) / "output")
        self.server = FarmServer(reactor, self.farm, self.outputs,
                                 connections=ConnectionsConfig(heartbeat_hold=20.0, event_hold=EVENT_HOLD))
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            ServerFactory(self.server))
        self.endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"
        self.addCleanup(self._stop_server)

    async def _stop_server(self) -> None:
        await self.port.stopListening()
        # Clients close first (cleanups run in reverse); their server sides follow.
        await until(lambda: not self.server.connections, "client connections to close")
        self.outputs.close_all()

    async def client(self, user: str = "anna", timeout: float = 10.0) -> FarmClient:
        client = await connect(reactor, self.endpoint, user, timeout=timeout)
        self.addCleanup(client.aclose)
        return client

    def render(self, name: str = "r1") -> Render:
        return self.farm.register_render(name, capacity=1_000_000)

    async def run_tasks(self, render: Render, exit_code: int = 0, output: bytes = b"") -> int:
        """Finish every task the farm gives ``render`` until it gives none; returns how many."""
        finished = 0
        while True:
            await sleep(0)  # the farm solves at the end of the reactor turn
            starts = [o for o in self.farm.take_orders(render) if o.order == "start"]
            if not starts:
                return finished
            for order in starts:
                key = (order.job_id, order.block, order.task)
                if output:
                    self.outputs.append(key, order.run, output)
                self.farm.task_finished(render, key, order.run, exit_code=exit_code, signal=None,
                                        time_started=1000.0, time_done=1001.0)
                finished += 1

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.base, name)
        Path(path).write_text(text, encoding="utf-8")
        return path


class ClientTests(ServerTestCase):
    async def test_submit_list_show(self) -> None:
        client = await self.client()
        self.assertEqual(client.server_version, farmnet.__version__)
        doc = hello_job(frames=10)
        doc["job"]["blocks"][0]["colour"] = "blue"
        job_id, warnings = await client.submit(doc)
        self.assertIsInstance(job_id, int)
        self.assertEqual(warnings, ["job.blocks[0].colour: unknown key, ignored"])

        [listed] = await client.jobs()
        self.assertEqual((listed["id"], listed["name"], listed["user_name"], listed["tasks"]),
                         (job_id, "hello", "anna", 11))
        self.assertEqual(await client.jobs("bob"), [])
        self.assertEqual(len(await client.jobs("anna")), 1)

        job = await client.job(job_id)
        self.assertEqual([b["name"] for b in job["blocks"]], ["frames", "summary"])
        self.assertEqual(job["state"], "RDY")

        tasks = await client.tasks(job_id)
        self.assertEqual([(t["block"], t["task"]) for t in tasks],
                         [(0, n) for n in range(10)] + [(1, 0)])
        [summary] = await client.tasks(job_id, block=1)
        self.assertEqual(summary["name"], "all")

        self.assertEqual([u["name"] for u in await client.users()], ["anna"])
        self.assertEqual(await client.renders(), [])
        self.render("r7")
        self.assertEqual([r["name"] for r in await client.renders()], ["r7"])

    async def test_100k_task_job_submits_and_lists_fully(self) -> None:
        client = await self.client()
        count = 100_000
        doc = {"job": {"name": "big", "blocks": [
            {"name": "many", "command": "echo @#@",
             "tasks": [{"name": f"shot{i:06d}", "command": f"take {i}"} for i in range(count)]},
            {"name": "after", "tasks": [{"name": "last", "command": "echo last"}]}]}}
        self.assertGreater(len(json.dumps(doc)), 40 * 65_535)  # far past one AMP value
        job_id, _ = await client.submit(doc)
        tasks = await client.tasks(job_id)
        self.assertEqual(len(tasks), count + 1)
        self.assertEqual([t["task"] for t in tasks[:count]], list(range(count)))
        self.assertEqual((tasks[count - 1]["name"], tasks[count]["name"]), ("shot099999", "last"))
        self.assertEqual(len(await client.tasks(job_id, block=0)), count)
        self.assertEqual((await client.job(job_id))["tasks"], count + 1)

    async def test_actions(self) -> None:
        client = await self.client()
        first, _ = await client.submit(hello_job())
        second, _ = await client.submit(hello_job())
        self.assertEqual(await client.action([first, second], "pause"), [first, second])
        self.assertEqual({j["state"] for j in await client.jobs()}, {"OFF"})
        await client.action([first], "resume")
        self.assertEqual((await client.job(first))["state"], "RDY")
        await client.action([first], "set_priority", 10)
        self.assertEqual((await client.job(first))["priority"], 10)
        with self.assertRaises(errors.InvalidAction):
            await client.action([first], "set_priority", 300)
        with self.assertRaises(errors.InvalidAction):
            await client.action([first], "explode")

        render = self.render()
        self.assertEqual(await self.run_tasks(render), 4)  # the paused job waits
        self.assertEqual((await client.job(first))["state"], "DON")
        await client.action([first], "restart")
        self.assertNotIn("DON", (await client.job(first))["counts"])
        self.assertEqual(await self.run_tasks(render), 4)

        await client.action([second], "delete")
        with self.assertRaises(errors.UnknownJob):
            await client.job(second)
        with self.assertRaises(errors.UnknownJob):  # all or nothing
            await client.action([first, second], "pause")
        self.assertEqual((await client.job(first))["state"], "DON")

    async def test_act_passes_through(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit(hello_job())
        self.assertEqual(await client.act("jobs", "show", {"id": job_id}), await client.job(job_id))
        with self.assertRaises(errors.InvalidAction):
            await client.act("jobs", "explode", {"id": job_id})

    async def test_permission_denied_arrives_as_its_class(self) -> None:
        anna, bob, root = await self.client("anna"), await self.client("bob"), await self.client("root")
        job_id, _ = await anna.submit(hello_job())
        with self.assertRaises(errors.PermissionDenied) as caught:
            await bob.action([job_id], "delete")
        self.assertIn("'bob' may not change job", caught.exception.message)
        # A farm without passwords takes the job's user_name, as Afanasy does (the
        # connecting name proves nothing there); with a users_file: test_network.py.
        doc = hello_job()
        doc["job"]["user_name"] = "anna"
        other_id, _ = await bob.submit(doc)
        self.assertEqual(self.farm.jobs[other_id].user_name, "anna")
        self.assertEqual(await root.action([job_id], "pause"), [job_id])  # an admin may

    async def test_bad_spec_names_the_key(self) -> None:
        client = await self.client()
        with self.assertRaises(errors.JobSpecError) as caught:
            await client.submit(hello_job(capacity=0))
        self.assertIn("job.blocks[0].capacity", caught.exception.message)
        with self.assertRaises(errors.JobSpecError) as caught:
            await client.submit({"job": {"blocks": []}})
        self.assertIn("job.name", caught.exception.message)
        self.assertIn("job.blocks", caught.exception.message)

    async def test_unknown_job_task_block(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit(hello_job())
        with self.assertRaises(errors.UnknownJob):
            await client.job(job_id + 1)
        with self.assertRaises(errors.UnknownTask):
            await client.tasks(job_id, block=5)
        with self.assertRaises(errors.UnknownTask):
            await client.output(job_id, 0, 99)

    async def test_output_of_running_then_finished_task(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit({"job": {"name": "o", "blocks": [
            {"name": "b", "tasks": [{"name": "t", "command": "cat big"}]}]}})
        self.assertEqual(await client.output(job_id, 0, 0), b"")  # never ran
        render = self.render()
        await sleep(0)
        [order] = self.farm.take_orders(render)
        key = (job_id, 0, 0)
        first = bytes(range(256)) * (5 * 4096)  # 5 MiB: more than one GetTaskOutput read
        self.outputs.append(key, 1, first)
        self.assertEqual(await client.output(job_id, 0, 0), first)  # what exists now
        self.outputs.append(key, 1, b"the end\n")
        self.farm.task_finished(render, key, 1, exit_code=0, signal=None, time_started=1.0,
                                time_done=2.0)
        self.outputs.close(key, 1)
        whole = await client.output(job_id, 0, 0)
        self.assertEqual((len(whole), whole[-8:]), (len(first) + 8, b"the end\n"))
        self.assertEqual(await client.output(job_id, 0, 0, run=1), whole)
        with self.assertRaises(errors.UnknownTask):  # a run that never was
            await client.output(job_id, 0, 0, run=2)

    async def test_events_long_poll_gets_a_job_event(self) -> None:
        client = await self.client()
        seen: list[dict[str, Any]] = []

        async def consume() -> None:
            async for event in client.events():
                seen.append(event)
                if event["kind"] == "job":
                    return

        consuming = defer.ensureDeferred(consume())
        await sleep(EVENT_HOLD * 2.5)  # held polls come back empty and are asked again
        self.assertEqual(seen, [])
        job_id, _ = await client.submit(hello_job())
        await consuming
        self.assertEqual((seen[-1]["job"]["id"], seen[-1]["job"]["state"]), (job_id, "RDY"))
        self.assertTrue(all(e["seq"] > 0 for e in seen))

    async def test_events_reset_then_continue(self) -> None:
        client = await self.client()
        events = client.events(after=1_000_000)  # a sequence number from before a restart
        first = await events.__anext__()
        self.assertEqual(first, {"kind": "reset", "last": 0})
        await client.submit(hello_job())
        following = await events.__anext__()
        self.assertEqual(following["seq"], 1)

    async def test_events_end_quietly_when_closed(self) -> None:
        client = await self.client()
        seen: list[dict[str, Any]] = []

        async def consume() -> None:
            async for event in client.events():
                seen.append(event)

        consuming = defer.ensureDeferred(consume())
        await sleep(0.1)
        client.close()
        await consuming
        self.assertEqual(seen, [])

    async def test_wait_until_done(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit(hello_job(frames=5))
        progress: list[dict[str, Any]] = []
        waiting = defer.ensureDeferred(client.wait(job_id, on_progress=progress.append))
        await until(lambda: progress, "the first progress report")
        self.assertFalse(waiting.called)
        render = self.render()
        self.assertEqual(await self.run_tasks(render), 6)
        job = await waiting
        self.assertEqual((job["state"], job["counts"], job["progress"]), ("DON", {"DON": 6}, 100))
        self.assertEqual(progress[0]["state"], "RDY")
        self.assertEqual(progress[-1]["state"], "DON")
        percents = [p["progress"] for p in progress]
        self.assertEqual(percents, sorted(percents))
        # A finished job: answered at once.
        self.assertEqual((await client.wait(job_id))["state"], "DON")

    async def test_wait_until_error(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit(failing_job(frames=3))
        waiting = defer.ensureDeferred(client.wait(job_id))
        await sleep(0.1)
        await self.run_tasks(self.render(), exit_code=1)
        job = await waiting
        self.assertEqual((job["state"], job["counts"]), ("ERR", {"ERR": 3}))

    async def test_wait_rechecks_without_events(self) -> None:
        """The safety net: a change the event log does not show is still seen."""
        client = await self.client()
        client.recheck_interval = 0.2
        job_id, _ = await client.submit(hello_job(frames=1))
        waiting = defer.ensureDeferred(client.wait(job_id))
        await sleep(0.1)
        add, self.server.events.add = self.server.events.add, lambda event: None
        try:
            await self.run_tasks(self.render())
            job = await waiting
        finally:
            self.server.events.add = add  # type: ignore[method-assign]
        self.assertEqual(job["state"], "DON")

    async def test_unreachable_server(self) -> None:
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
        number = port.getHost().port
        await port.stopListening()
        with self.assertRaises(ServerUnreachable) as caught:
            await connect(reactor, f"tcp:127.0.0.1:{number}", "anna", timeout=5)
        self.assertEqual(str(caught.exception),
                         f"cannot reach the server at tcp:127.0.0.1:{number}: Connection refused")

    async def test_silent_server_times_out(self) -> None:
        silent: list[Protocol] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                silent.append(self)

            def connectionLost(self, reason: Any) -> None:
                silent.remove(self)

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        with self.assertRaises(ServerTimeout) as caught:
            await connect(reactor, f"tcp:127.0.0.1:{port.getHost().port}", "anna", timeout=0.3)
        self.assertIn("did not answer hello within 0.3 s", str(caught.exception))
        await until(lambda: not silent, "the client to close its connection")


class LoadSpecTests(TestCase):
    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-spec-test-")
        self.addCleanup(shutil.rmtree, self.base, True)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.base, name)
        Path(path).write_text(text, encoding="utf-8")
        return path

    def test_yaml_and_json(self) -> None:
        doc = hello_job()
        self.assertEqual(load_spec(self.write("a.json", json.dumps(doc))), doc)
        self.assertEqual(load_spec(self.write("a.job", json.dumps(doc))), doc)  # JSON by content
        self.assertEqual(load_spec(self.write("a.yaml", "job:\n  name: x\n  time_creation: 2024-05-01\n")),
                         {"job": {"name": "x", "time_creation": "2024-05-01"}})
        self.assertEqual(load_spec(self.write("flow.yaml", "{job: {name: x}}")), {"job": {"name": "x"}})

    def test_errors_name_the_file(self) -> None:
        path = self.write("bad.json", '{"job":\n {"name": "x",}}')
        with self.assertRaises(SpecFileError) as caught:
            load_spec(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}:2:"), caught.exception)
        path = self.write("bad.yaml", "job:\n  name: [x\n  blocks: 1\n")
        with self.assertRaises(SpecFileError) as caught:
            load_spec(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}:"), caught.exception)
        self.assertIn("YAML syntax error", str(caught.exception))
        with self.assertRaises(SpecFileError) as caught:
            load_spec(self.write("list.yaml", "- 1\n- 2\n"))
        self.assertIn("expected a job (a mapping), got a list", str(caught.exception))
        with self.assertRaises(SpecFileError) as caught:
            load_spec(os.path.join(self.base, "missing.yaml"))
        self.assertIn("missing.yaml: cannot read", str(caught.exception))

    def test_examples_are_valid_jobs(self) -> None:
        spec, warnings = parse_job(load_spec(str(EXAMPLES / "hello.yaml")))
        self.assertEqual(([b.tasks_count for b in spec.blocks], warnings), ([10, 1], []))
        self.assertEqual(spec.blocks[0].task_command(6), "echo rendering frame 0007; sleep 0.2; echo 100%")
        document = load_spec(str(EXAMPLES / "af_job.json"))
        self.assertEqual(set(document), {"job"})
        spec, warnings = parse_job(document)
        self.assertEqual(([b.name for b in spec.blocks], warnings), (["render", "stitch"], []))


class FormattingTests(TestCase):
    def test_table_aligns_numbers_right(self) -> None:
        out = io.StringIO()
        cli._table(["ID", "NAME", "DONE"], [[7, "hello", "50%"], [12, "a longer name", "100%"]], out)
        self.assertEqual(out.getvalue().splitlines(), [
            "ID  NAME           DONE",
            " 7  hello          50%",
            "12  a longer name  100%"])

    def test_progress_bar(self) -> None:
        job = {"id": 3, "progress": 50, "tasks": 4, "state": "RUN", "counts": {"RUN": 1, "DON": 2}}
        lines = io.StringIO()
        bar = cli._ProgressBar(lines)
        bar.update(job)
        bar.update(job)  # no change, no line
        bar.update({**job, "progress": 75, "counts": {"DON": 3, "RUN": 1}})
        bar.finish()
        self.assertEqual(lines.getvalue().splitlines(), [
            "job 3 [###############...............]  50%  RUN 1  DON 2  ERR 0  of 4  RUN",
            "job 3 [######################........]  75%  RUN 1  DON 3  ERR 0  of 4  RUN"])

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        terminal = Terminal()
        bar = cli._ProgressBar(terminal)
        bar.update(job)
        bar.update({**job, "progress": 100, "state": "DON", "counts": {"DON": 4}})
        bar.finish()
        text = terminal.getvalue()
        self.assertEqual((text.count("\r"), text.count("\n")), (2, 1))
        self.assertTrue(text.endswith("100%  RUN 0  DON 4  ERR 0  of 4  DON\n"), text)

    def test_durations_and_times(self) -> None:
        self.assertEqual([cli._duration(s) for s in (2.25, 42, 125, 7322)], ["2.2s", "42s", "2m05s", "2h02m"])
        self.assertEqual(cli._when(0), "-")


# --- the CLI and the sync client, as separate processes ----------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


class CLITests(ServerTestCase):
    async def cli(self, *args: str, user: str = "anna") -> tuple[int, bytes, bytes]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.endpoint, "--user", user],
            env=child_env(), path=self.base)
        self.assertNotIn(b"Traceback", err)
        return code, out, err

    async def test_submit_list_show(self) -> None:
        path = self.write("job.yaml", "name: hello\nblocks:\n  - {name: frames, command: 'echo @#@', "
                                      "frame_first: 1, frame_last: 10, colour: blue}\n")
        code, out, err = await self.cli("submit", path)
        self.assertEqual((code, out), (0, b"1\n"), err)
        self.assertEqual(err, b"farmnet: warning: job.blocks[0].colour: unknown key, ignored\n")

        code, out, err = await self.cli("jobs", "--json")
        self.assertEqual(code, 0, err)
        [job] = json.loads(out)
        self.assertEqual((job["id"], job["name"], job["tasks"]), (1, "hello", 10))

        code, out, err = await self.cli("jobs")
        header, row = out.decode().splitlines()
        self.assertEqual(header.split()[:5], ["ID", "NAME", "USER", "STATE", "PRI"])
        self.assertEqual(row.split()[:5], ["1", "hello", "anna", "RDY", "99"])

        code, out, err = await self.cli("job", "1")
        self.assertEqual(code, 0, err)
        self.assertIn("job 1  hello  (user anna)", out.decode())
        self.assertIn("frames", out.decode())
        code, out, err = await self.cli("job", "1", "--json")
        self.assertEqual(json.loads(out)["blocks"][0]["name"], "frames")

        code, out, err = await self.cli("tasks", "1", "--block", "0")
        lines = out.decode().splitlines()
        self.assertEqual((code, len(lines)), (0, 11))
        self.assertEqual(lines[10].split()[:5], ["0", "9", "frame", "10", "RDY"])
        code, out, err = await self.cli("tasks", "1", "--json")
        self.assertEqual(len(json.loads(out)), 10)

        for command in ("users", "renders"):
            code, out, err = await self.cli(command, "--json")
            self.assertEqual(code, 0, err)
            self.assertIsInstance(json.loads(out), list)

    async def test_workstation_finds_the_server_from_the_environment(self) -> None:
        """FARMNET_SERVER / FARMNET_USER and ``--server HOST:PORT``: no config file on a workstation;
        ``jobs --owner`` filters without logging in as that user."""
        anna = await self.client("anna")
        await anna.submit(hello_job(frames=1))
        bob = await self.client("bob")
        await bob.submit(hello_job(frames=1))
        host_port = f"127.0.0.1:{self.port.getHost().port}"
        env = {**child_env(), "FARMNET_SERVER": host_port, "FARMNET_USER": "carl"}
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "jobs", "--json", "--owner", "bob"], env=env,
            path=self.base)
        self.assertEqual(code, 0, err)
        self.assertEqual([job["user_name"] for job in json.loads(out)], ["bob"])
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "submit", self.write("j.yaml", "name: x\nblocks:\n"
                             "  - {name: b, command: 'true'}\n")], env=env, path=self.base)
        self.assertEqual(code, 0, err)
        self.assertEqual((await anna.job(int(out)))["user_name"], "carl")
        # --server wins over the environment; HOST:PORT is shorthand for tcp:HOST:PORT.
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "users", "--json", "--server", host_port],
            env={**env, "FARMNET_SERVER": "127.0.0.1:1"}, path=self.base)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(u["name"] for u in json.loads(out)), ["anna", "bob", "carl"])
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "users"], env={**env, "FARMNET_SERVER": "127.0.0.1:1"},
            path=self.base)
        self.assertEqual(code, 3)
        self.assertIn(b"cannot reach the server at 127.0.0.1:1", err)

    async def test_actions_and_output(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit(hello_job(frames=1))
        code, out, err = await self.cli("pause", str(job_id))
        self.assertEqual((code, out), (0, f"paused job {job_id}\n".encode()), err)
        code, out, err = await self.cli("priority", str(job_id), "7")
        self.assertEqual(code, 0, err)
        self.assertEqual((await client.job(job_id))["priority"], 7)
        code, out, err = await self.cli("resume", str(job_id))
        self.assertEqual(code, 0, err)
        await self.run_tasks(self.render(), output=b"\x00binary\xffoutput\n")
        code, out, err = await self.cli("output", str(job_id), "0", "0")
        self.assertEqual((code, out), (0, b"\x00binary\xffoutput\n"), err)
        code, out, err = await self.cli("delete", str(job_id))
        self.assertEqual(code, 0, err)
        self.assertEqual(await client.jobs(), [])

    async def test_error_exit_codes(self) -> None:
        code, out, err = await self.cli("job", "999")
        self.assertEqual((code, out, err), (2, b"", b"farmnet: no job 999\n"))

        client = await self.client("anna")
        job_id, _ = await client.submit(hello_job())
        code, out, err = await self.cli("pause", str(job_id), user="bob")
        self.assertEqual(code, 2)
        self.assertIn(b"farmnet: user 'bob' may not change job", err)

        bad = self.write("bad.json", '{"job": ')
        code, out, err = await self.cli("submit", bad)
        self.assertEqual(code, 2)
        self.assertTrue(err.startswith(f"farmnet: {bad}:1:".encode()), err)
        code, out, err = await self.cli("submit", self.write("bad.yaml", "name: x\nblocks: []\n"))
        self.assertEqual(code, 2)
        self.assertIn(b"job.blocks: a job needs a non-empty list of blocks", err)

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
        closed = f"tcp:127.0.0.1:{port.getHost().port}"
        await port.stopListening()
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "jobs", "--server", closed], env=child_env(),
            path=self.base)
        self.assertEqual((code, out), (3, b""))
        self.assertEqual(err, f"farmnet: cannot reach the server at {closed}: Connection refused\n".encode())

    async def test_documented_render_and_act_commands(self) -> None:
        """doc/cli.md's render set/sleep and act filters do what they say; a run that does not
        exist is an error (exit 2), not empty output."""
        client = await self.client("anna")
        job_id, _ = await client.submit(hello_job(frames=2))
        self.render("r1")
        self.render("r2")
        code, out, err = await self.cli("render", "set", "r1", "capacity=2000", "max_tasks=3", user="root")
        self.assertEqual((code, out), (0, b"set: r1\n"), err)
        [r1] = [r for r in await client.renders() if r["name"] == "r1"]
        self.assertEqual((r1["capacity"], r1["max_tasks"]), (2000, 3))
        code, out, err = await self.cli("render", "set", "r1", user="root")
        self.assertEqual(code, 2)
        self.assertIn(b"give names and at least one KEY=VALUE", err)
        code, out, err = await self.cli("render", "wake", "r2", user="root")  # online: refused, clearly
        self.assertEqual((code, err), (2, b"farmnet: render 'r2' is awake\n"))

        code, out, err = await self.cli("act", "jobs", "list", "--filters", f'{{"id": [{job_id}]}}')
        self.assertEqual([job["id"] for job in json.loads(out)], [job_id])
        code, out, err = await self.cli("act", "jobs", "list", "--filters", '{"id": 999}')
        self.assertEqual(json.loads(out), [])
        code, out, err = await self.cli("act", "renders", "list", "--filters", '{"name": "r2"}')
        self.assertEqual([r["name"] for r in json.loads(out)], ["r2"])
        code, out, err = await self.cli("act", "jobs", "list", "--filters", '{"usr": "anna"}')
        self.assertEqual(code, 2)
        self.assertIn(b"filters.usr: unknown for jobs list (did you mean 'user'?)", err)

        code, out, err = await self.cli("output", str(job_id), "0", "0", "--run", "3")
        self.assertEqual((code, err), (2, f"farmnet: job {job_id} block 0 task 0 has no run 3; "
                                          "it has run 1 time(s)\n".encode()))
        code, out, err = await self.cli("reset-error-hosts", str(job_id), "--block", "0")
        self.assertEqual((code, out), (0, f"reset the error hosts of job {job_id}\n".encode()), err)
        code, out, err = await self.cli("render", "reset-error-hosts", "r1", user="root")
        self.assertEqual((code, out), (0, b"reset-error-hosts: r1\n"), err)

    async def test_submit_af_job_then_wait(self) -> None:
        code, out, err = await self.cli("submit", str(EXAMPLES / "af_job.json"))
        self.assertEqual(code, 0, err)
        job_id = int(out)
        before = len(self.server.connections)
        waiting = defer.ensureDeferred(self.cli("wait", str(job_id)))
        await until(lambda: len(self.server.connections) > before, "the wait command to connect")
        await sleep(0.3)
        self.assertEqual(await self.run_tasks(self.render()), 101)
        code, out, err = await waiting
        self.assertEqual(code, 0, err)
        lines = err.decode().splitlines()  # not a tty: one line per change
        self.assertIn(f"job {job_id} [", lines[0])
        self.assertTrue(lines[-1].endswith("100%  RUN 0  DON 101  ERR 0  of 101  DON"), lines[-1])

    async def test_wait_exits_1_on_error(self) -> None:
        client = await self.client()
        job_id, _ = await client.submit(failing_job(frames=2))
        await self.run_tasks(self.render(), exit_code=1)
        code, out, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 1)
        self.assertIn(f"farmnet: job {job_id} ended in error: ERR 2".encode(), err)

    async def test_watch_prints_events_until_interrupted(self) -> None:
        lines = ChildOutput()
        before = len(self.server.connections)
        process = reactor.spawnProcess(
            lines, sys.executable,
            [sys.executable, "-m", "farmnet.cli", "watch", "--json", "--server", self.endpoint],
            env=child_env(), path=self.base)
        self.addCleanup(lambda: lines.ended if lines.ended.called else _kill(process, lines))
        await until(lambda: len(self.server.connections) > before, "watch to connect")
        await sleep(0.3)
        client = await self.client()
        job_id, _ = await client.submit(hello_job())
        await until(lambda: b'"kind": "job"' in lines.out, "the job event")
        root = await self.client("root")
        await root.act("pools", "create", {"path": "/gpu"}, {"priority": 150})
        await root.act("pools", "delete", {"path": "/gpu"})
        await until(lambda: b'"kind": "pool_deleted"' in lines.out, "the pool events")
        process.signalProcess(signal.SIGINT)
        self.assertEqual(await lines.ended, 130)
        events = [json.loads(line) for line in lines.out.splitlines()]
        self.assertIn(job_id, [e["job"]["id"] for e in events if e["kind"] == "job"])
        pools = [(e["pool"]["path"], e["pool"]["priority"]) for e in events if e["kind"] == "pool"]
        self.assertIn(("/gpu", 150), pools)
        self.assertEqual([e["path"] for e in events if e["kind"] == "pool_deleted"], ["/gpu"])
        self.assertEqual(lines.err, b"")

    async def test_renders_show_their_pool(self) -> None:
        self.render("gpu1")
        self.render("r1")
        self.farm.pool_action("root", "/gpu", "create")
        self.farm.pool_action("root", "/gpu", "move", {"renders": ["gpu1"]})
        code, out, err = await self.cli("renders")
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0].split()[:4], ["ID", "NAME", "STATE", "POOL"])
        pools = {line.split()[1]: line.split()[3] for line in lines[1:]}
        self.assertEqual(pools, {"gpu1": "/gpu", "r1": "/"})


def _kill(process: Any, lines: ChildOutput) -> defer.Deferred[int]:
    process.signalProcess(signal.SIGKILL)
    return lines.ended


SYNC_SCRIPT = textwrap.dedent("""
    import json, sys, threading
    from farmnet import errors
    from farmnet.client.sync import SyncFarmClient

    endpoint, done_job = sys.argv[1], int(sys.argv[2])
    report = {"thread_at_import": any(t.name == "CrochetReactor" for t in threading.enumerate())}
    with SyncFarmClient(endpoint, "anna", timeout=10) as farm:
        report["thread_after"] = any(t.name == "CrochetReactor" for t in threading.enumerate())
        job_id, report["warnings"] = farm.submit(
            {"job": {"name": "from maya", "blocks": [{"name": "b", "command": "echo @#@",
                                                     "frame_first": 1, "frame_last": 4}]}})
        report["jobs"] = [j["name"] for j in farm.jobs("anna")]
        report["job_tasks"] = farm.job(job_id)["tasks"]
        report["tasks"] = len(farm.tasks(job_id))
        report["paused"] = farm.action([job_id], "pause")
        report["users"] = [u["name"] for u in farm.users()]
        report["renders"] = [r["name"] for r in farm.renders()]
        report["done"] = farm.wait(done_job, timeout=10)["state"]
        report["output"] = farm.output(done_job, 0, 0).decode()
        try:
            farm.job(999)
        except errors.UnknownJob as e:
            report["unknown"] = e.message
        try:
            farm.wait(job_id, timeout=0.5)
        except TimeoutError as e:
            report["timeout"] = str(e)
    print(json.dumps(report))
""")


class SyncClientTests(ServerTestCase):
    async def test_sync_client_in_a_script(self) -> None:
        client = await self.client()
        done_job, _ = await client.submit(hello_job(frames=1))
        await self.run_tasks(self.render(), output=b"rendered\n")
        script = self.write("dcc_script.py", SYNC_SCRIPT)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [script, self.endpoint, str(done_job)], env=child_env(), path=self.base)
        self.assertEqual(code, 0, err)
        report = json.loads(out)
        self.assertEqual(report, {
            "thread_at_import": False, "thread_after": True, "warnings": [], "jobs": ["hello", "from maya"],
            "job_tasks": 4, "tasks": 4, "paused": [done_job + 1], "users": ["anna"], "renders": ["r1"],
            "done": "DON", "output": "rendered\n", "unknown": "no job 999",
            "timeout": f"job {done_job + 1} did not finish within 0.5 s"})


class WatchLineTests(TestCase):
    """``farmnet watch`` without --json: one line per event, pool and branch kinds too."""

    def test_pool_and_branch_events_read_as_lines(self) -> None:
        _, events, _ = build()
        found, _ = events.since(0, 10_000)
        lines = [cli._describe_event(unstructure(e)).split(" ", 1)[1] for e in found]
        self.assertIn("pool /gpu: 0 renders, 0 running", lines)
        self.assertIn("pool /gpu: 1 renders, 0 running", lines)  # r2 moved in
        self.assertIn("pool /old deleted", lines)
        self.assertIn("branch /old: 0 jobs, 0 running", lines)
        self.assertIn("branch /old deleted", lines)
