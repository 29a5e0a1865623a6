"""Needs, variable capacity and file checks on a real farm: a server and two render processes on
127.0.0.1 that report their own machine (this one), one with properties from its config."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import psutil
import yaml
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until


class NeedsIntegrationTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-needs-")
        self.addCleanup(shutil.rmtree, self.base, True)
        server = self.write("server.yaml", {"server": {"scheduling": {"admins": ["root"]},
                                                       "stats": {"enabled": False}}})
        fx = self.write("fx.yaml", {"render": {"capacity": 4000, "resources": {
            "properties": "gpu,fx", "power": 50, "interval": 0.5, "disk_path": self.base}}})
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", server)
        await self.farm.start_render("plain")
        await self.farm.start_render("fx", "--config", fx)
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "root")
        self.addCleanup(self.client.close)
        await wait_until(reactor, self.reported, 60, "two renders online with their resources")

    def write(self, name: str, data: Any) -> str:
        path = os.path.join(self.base, name)
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        return path

    async def reported(self) -> bool:
        renders = [r for r in await self.client.renders() if r["online"]]
        return len(renders) == 2 and all("mem_free_mb" in r["resources"] for r in renders)

    async def cli(self, *args: str) -> str:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.farm.endpoint, "--user", "root"],
            env=dict(os.environ), path=self.base)
        self.assertIn(code, (0, 1), err)
        return out.decode()

    async def submit(self, name: str, **job: Any) -> int:
        path = self.write(f"{name}.yaml", {"job": {"name": name, **job}})
        return int((await self.cli("submit", path)).strip())

    async def test_a_need_no_render_meets_waits_and_why_says_so(self) -> None:
        too_much = psutil.virtual_memory().total // 2**20 * 8  # eight times this machine's memory
        waiting = await self.submit("huge", blocks=[
            {"name": "sim", "command": "true", "need_memory": too_much}])
        fits = await self.submit("fits", blocks=[{"name": "b", "command": "true", "need_memory": 1,
                                                  "need_hdd": 0, "need_cpu_cores": 1}])
        await self.cli("wait", str(fits))
        self.assertEqual((await self.client.job(fits))["state"], "DON")
        self.assertEqual((await self.client.job(waiting))["state"], "RDY")
        why = await self.cli("why", str(waiting))
        self.assertIn("2 renders: render has less free memory than the block's need_memory", why)
        self.assertIn(f"need_memory {too_much} MB free: the best render, ", why)

    async def test_properties_power_and_variable_capacity_route_to_the_fx_render(self) -> None:
        coeffs = os.path.join(self.base, "coeffs")
        job = await self.submit("fx shots", blocks=[{
            "name": "b", "command": f"echo @AF_CAPACITY@ $FARMNET_CAPACITY_COEFF >> {coeffs}",
            "frame_first": 1, "frame_last": 2, "need_properties": "fx", "need_power": 40,
            "capacity": 1000, "capacity_coeff_min": 1, "capacity_coeff_max": 3}])
        await self.cli("wait", str(job))
        tasks = await self.client.tasks(job)
        self.assertEqual({t["host"] for t in tasks}, {"fx"})
        with open(coeffs) as f:
            lines = f.read().split("\n")
        self.assertIn("3 3", lines)  # the first took 3 of the fx render's 4000

    async def test_rendered_files_out_of_bounds_make_the_run_an_error(self) -> None:
        job = await self.submit("files", blocks=[{
            "name": "b", "command": "printf abc > out.@#@.txt", "frame_first": 1, "frame_last": 2,
            "working_directory": self.base, "files": ["out.@#@.txt"], "flags": 1 << 7,
            "file_size_min": 2, "file_size_max": 100, "errors_retries": 0}])
        small = await self.submit("too small", blocks=[{
            "name": "b", "command": "printf a > small.txt", "working_directory": self.base,
            "files": ["small.txt"], "flags": 1 << 7, "file_size_min": 2, "errors_retries": 0}])
        await self.cli("wait", str(job))
        self.assertEqual((await self.client.job(job))["state"], "DON")
        await self.cli("wait", str(small))
        [task] = await self.client.tasks(small)
        self.assertEqual(task["state"], "ERR")
        output = await self.client.output(small, 0, 0)
        self.assertIn(b"rendered file size less than minimum (1 < 2)", output)
        # skipexistingfiles: frame 1's file is there (3 bytes), frame 3's is not
        skip = await self.submit("skip", blocks=[{
            "name": "b", "command": "echo ran @#@ >> ran.txt", "frame_first": 1, "frame_last": 3,
            "frames_inc": 2, "working_directory": self.base, "files": ["out.@#@.txt"], "flags": 1 << 6}])
        await self.cli("wait", str(skip))
        with open(os.path.join(self.base, "ran.txt")) as f:
            self.assertEqual(f.read(), "ran 3\n")
        self.assertIn(b"command skipped (skipexistingfiles)", await self.client.output(skip, 0, 0))
