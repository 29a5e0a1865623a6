"""The system job on a real farm: post commands and sleep orders run on render processes."""

from __future__ import annotations

import os
import shutil
import tempfile

import yaml
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until


class SystemJobIntegrationTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-sysjob-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.slept = os.path.join(self.base, "slept")
        config = os.path.join(self.base, "farmnet.yaml")
        with open(config, "w") as f:
            yaml.safe_dump({"server": {"scheduling": {"admins": ["root"]}, "stats": {"enabled": False}},
                            "render": {"sysjob": {"cmd_wolsleep": f"touch {self.slept}"}}}, f)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", config)
        await self.farm.start_render("worker", "--config", config)
        await self.farm.start_render("sleeper", "--config", config)
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "root")
        self.addCleanup(self.client.close)
        await wait_until(reactor, lambda: self.render_states(2), 60, "two renders online")

    async def render_states(self, online: int) -> dict[str, str] | None:
        renders = await self.client.renders()
        states = {r["name"]: r["state"] for r in renders}
        return states if sum(1 for r in renders if r["online"]) >= online else None

    async def test_deleting_a_job_runs_its_post_command(self) -> None:
        marker = os.path.join(self.base, "post-ran")
        job_id, _ = await self.client.submit({"name": "shot", "command_post": f"touch {marker}",
                                              "offline": True,
                                              "blocks": [{"name": "b", "command": "true"}]})
        await self.client.action([job_id], "delete")
        await wait_until(reactor, lambda: os.path.exists(marker), 30, "the post command to run")

    async def test_a_render_asked_to_sleep_sleeps(self) -> None:
        await self.client.act("renders", "sleep", {"name": "sleeper"})
        await wait_until(reactor, lambda: os.path.exists(self.slept), 30, "the sleep command")

        async def sleeping() -> bool:
            states = await self.render_states(1)
            return bool(states) and states["sleeper"] == "WOL sleeping"

        await wait_until(reactor, sleeping, 30, "the render to show WOL sleeping")
