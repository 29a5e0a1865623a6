"""Pools and branches on a real farm: a server and two render processes on 127.0.0.1,
set up with the `farmnet` command; the server killed and started again keeps them."""

from __future__ import annotations

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


class PoolsIntegrationTests(TestCase):
    timeout = 150

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-pools-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.config = os.path.join(self.base, "farmnet.yaml")
        with open(self.config, "w") as f:
            yaml.safe_dump({"server": {"scheduling": {"admins": ["root"]}, "stats": {"enabled": False}}}, f)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        self.client: FarmClient | None = None
        self.addCleanup(self._close)
        await self.start_server()

    async def _close(self) -> None:
        if self.client is not None:
            self.client.close()

    async def start_server(self, listen: str = "tcp:0:interface=127.0.0.1") -> None:
        await self.farm.start_server("--config", self.config, listen=listen)
        self.client = await connect(reactor, self.farm.endpoint, "root", timeout=20)

    async def cli(self, *args: str) -> str:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.farm.endpoint, "--user", "root"],
            env=dict(os.environ), path=self.base)
        self.assertEqual(code, 0, err)
        return out.decode()

    async def submit(self, doc: dict[str, Any], name: str) -> int:
        path = os.path.join(self.base, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"job": doc}, f)
        return int((await self.cli("submit", path)).strip())

    async def done(self, job_id: int) -> Any:
        assert self.client is not None
        job = await self.client.job(job_id)
        return job if job["state"] in ("DON", "ERR") else None

    async def test_pools_route_work_and_survive_a_restart(self) -> None:
        await self.cli("pool", "create", "/ws", "pattern=ws-.*", "services_disabled=nuke")
        await self.cli("pool", "create", "/farm", "pattern=farm-.*", "priority=150")
        await self.cli("branch", "create", "/proj", "max_running_tasks=1")
        for name in ("ws-1", "farm-1"):
            await self.farm.start_render(name)

        async def placed() -> dict[str, list[str]] | None:
            assert self.client is not None
            pools = {p["path"]: p["renders"] for p in await self.client.act("pools", "list")}
            return pools if pools["/ws"] and pools["/farm"] else None

        pools = await wait_until(reactor, placed, 60, "both renders placed by their names")
        self.assertEqual((pools["/ws"], pools["/farm"], pools["/"]), (["ws-1"], ["farm-1"], []))

        # A render in a pool that disables a service never gets that service's tasks. They run
        # until the test has asked why (a busy machine is slow to start the command).
        go = os.path.join(self.base, "go")
        nuke = await self.submit({"name": "comp", "blocks": [
            {"name": "comp", "service": "nuke", "command": f"while [ ! -e {go} ]; do sleep 0.05; done",
             "frame_first": 1, "frame_last": 6}]}, "nuke")
        why = await self.cli("why", str(nuke))
        self.assertIn("1 render: render's pool does not allow the block's service (/ws)", why)
        open(go, "w").close()
        # A job of the limited branch runs one task at a time, on either render.
        shots = await self.submit({"name": "shots", "branch": "/proj", "blocks": [
            {"name": "b", "command": "sleep 0.2", "frame_first": 1, "frame_last": 3}]}, "shots")
        for job_id in (nuke, shots):
            job = await wait_until(reactor, lambda j=job_id: self.done(j), 60, f"job {job_id} to finish")
            self.assertEqual(job["state"], "DON")
        assert self.client is not None
        self.assertEqual({t["host"] for t in await self.client.tasks(nuke)}, {"farm-1"})
        listing = await self.cli("branches")
        self.assertRegex(listing, r"/proj\s+99\s+order\s+1\s+0\s+1\s")

        # kill -9 and start again on the same store: pools, branches, placements stay.
        port = self.farm.endpoint.rsplit(":", 1)[1]
        self.client.close()
        assert self.farm.server is not None
        ended = self.farm.server.watch.ended
        self.farm.kill(self.farm.server)
        await ended
        await self.start_server(f"tcp:{port}:interface=127.0.0.1")
        pools = {p["path"]: p for p in await self.client.act("pools", "list")}
        self.assertEqual(sorted(pools), ["/", "/farm", "/ws"])
        ws = pools["/ws"]
        self.assertEqual((ws["pattern"], ws["services_disabled"], ws["renders"]),
                         ("ws-.*", ["nuke"], ["ws-1"]))
        self.assertEqual(pools["/farm"]["priority"], 150)
        [proj] = await self.client.act("branches", "list", {"path": "/proj"})
        self.assertEqual((proj["max_running_tasks"], proj["jobs"]), (1, [shots]))
        self.assertIn("/farm", await self.cli("pools"))
