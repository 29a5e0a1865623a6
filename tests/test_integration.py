"""A real farm: a server and three render processes on 127.0.0.1, driven by the CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until

THREE_BLOCKS = {"job": {"name": "three blocks", "blocks": [
    {"name": "frames", "command": "echo frame @####@ on $FARMNET_RENDER", "frame_first": 1,
     "frame_last": 100},
    {"name": "pairs", "command": "echo frames @#@ to @#@; echo 50%", "frame_first": 1, "frame_last": 200,
     "frames_per_task": 2},
    {"name": "explicit", "command": "echo explicit @#@",
     "tasks": [{"name": f"shot{i:03d}", "command": f"shot{i:03d}"} for i in range(100)]},
]}}


class FarmIntegrationTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-it-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server()
        for name in ("alpha", "beta", "gamma"):
            await self.farm.start_render(name)
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(self.client.close)
        await wait_until(reactor, self.renders_online, 60, "three renders online")

    async def renders_online(self) -> bool:
        return sum(1 for r in await self.client.renders() if r["online"]) == 3

    async def cli(self, *args: str, user: str = "anna") -> tuple[int, bytes, bytes]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.farm.endpoint, "--user", user],
            env=dict(os.environ), path=self.base)
        return code, out, err

    def write(self, name: str, doc: Any) -> str:
        path = os.path.join(self.base, name)
        with open(path, "w") as f:
            (json.dump if name.endswith(".json") else yaml.safe_dump)(doc, f)
        return path

    async def test_three_block_job_from_the_cli(self) -> None:
        code, out, err = await self.cli("submit", self.write("job.yaml", THREE_BLOCKS))
        self.assertEqual(code, 0, err)
        job_id = int(out.strip())
        code, out, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 0, err)
        job = await self.client.job(job_id)
        self.assertEqual((job["state"], job["counts"]), ("DON", {"DON": 300}))
        tasks = await self.client.tasks(job_id)
        self.assertEqual(len(tasks), 300)
        self.assertEqual({t["host"] for t in tasks}, {"alpha", "beta", "gamma"})
        code, out, err = await self.cli("output", str(job_id), "1", "4")
        self.assertEqual(code, 0, err)
        self.assertIn(b"frames 9 to 10", out)
        code, out, err = await self.cli("output", str(job_id), "2", "7")
        self.assertIn(b"explicit shot007", out)
        code, out, err = await self.cli("tasks", str(job_id), "--json")
        self.assertEqual(len(json.loads(out)), 300)

    async def test_failing_task_ends_err_with_output(self) -> None:
        doc = {"job": {"name": "fails", "blocks": [{"name": "b", "errors_retries": 0, "tasks": [
            {"name": "bad", "command": "echo about to fail; exit 1"}]}]}}
        code, out, err = await self.cli("submit", self.write("fail.json", doc))
        self.assertEqual(code, 0, err)
        job_id = int(out.strip())
        code, out, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 1, err)
        [task] = await self.client.tasks(job_id)
        self.assertEqual((task["state"], task["errors_count"]), ("ERR", 1))
        output = await self.client.output(job_id, 0, 0)
        self.assertIn(b"about to fail", output)
        self.assertIn(b"exit status 1", output)

    async def test_100k_task_job_submits_and_lists(self) -> None:
        doc = {"job": {"name": "huge", "offline": True, "blocks": [{"name": "b", "tasks": [
            {"name": f"t{i}", "command": f"echo {i}"} for i in range(100_000)]}]}}
        code, out, err = await self.cli("submit", self.write("huge.json", doc))
        self.assertEqual(code, 0, err)
        job_id = int(out.strip())
        code, out, err = await self.cli("tasks", str(job_id), "--json")
        self.assertEqual(code, 0, err)
        tasks = json.loads(out)
        self.assertEqual((len(tasks), tasks[-1]["name"]), (100_000, "t99999"))

    async def test_renders_reconnect_to_a_restarted_server(self) -> None:
        endpoint = self.farm.endpoint
        self.client.close()
        await self.farm.server.stop()
        await self.farm.start_server(listen=endpoint.replace("tcp:127.0.0.1:", "tcp:") +
                                     ":interface=127.0.0.1")
        self.client = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(self.client.close)
        await wait_until(reactor, self.renders_online, 30, "renders back online")
        code, out, err = await self.cli("submit", self.write("after.yaml", {"job": {
            "name": "after restart", "blocks": [{"name": "b", "command": "true", "frame_last": 5}]}}))
        code, out, err = await self.cli("wait", out.decode().strip())
        self.assertEqual(code, 0, err)
