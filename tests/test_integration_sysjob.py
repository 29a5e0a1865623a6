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

    async def test_pre_commands_run_before_the_tasks_which_see_afanasys_variables(self) -> None:
        """command_pre (job and block) runs before any task; the task's environment is the
        block's with the task's laid over it, plus AF_JOB_ID / AF_BLOCK_ID / AF_TASK_ID; a task
        command without @#@ is appended to the block command."""
        job_pre, block_pre = os.path.join(self.base, "job-pre"), os.path.join(self.base, "block-pre")
        job_id, warnings = await self.client.submit({
            "name": "afkeys", "command_pre": f"sleep 0.5; echo job-pre > {job_pre}", "blocks": [{
                "name": "b", "command_pre": f"sleep 0.5; echo block-pre > {block_pre}", "errors_retries": 0,
                "environment": {"SCENE": "a.hip", "TAKE": "main"},
                "command": f"cat {job_pre} {block_pre} && echo AF=$AF_JOB_ID/$AF_BLOCK_ID/$AF_TASK_ID "
                           "TAKE=$TAKE SCENE=$SCENE && echo ",
                "tasks": [{"name": "t0", "command": "task0", "environment": {"TAKE": "alt"}},
                          {"name": "t1", "command": "task1"}]}]})
        self.assertEqual(warnings, [])

        async def done() -> bool:
            return (await self.client.job(job_id))["state"] in ("DON", "ERR")

        await wait_until(reactor, done, 30, "the job to end")
        self.assertEqual((await self.client.job(job_id))["state"], "DON")
        outputs = [(await self.client.output(job_id, 0, n)).decode() for n in (0, 1)]
        for n, (take, output) in enumerate(zip(("alt", "main"), outputs, strict=True)):
            self.assertIn("job-pre\nblock-pre\n", output)
            self.assertIn(f"AF={job_id}/0/{n} TAKE={take} SCENE=a.hip\ntask{n}\n", output)
