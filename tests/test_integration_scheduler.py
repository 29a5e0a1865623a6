"""Scheduling on a real farm: a server and four render processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import Counter
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until


def expected_share(priorities: dict[str, int], slots: int) -> Counter[str]:
    """Afanasy's need solving: each slot to the user with the highest 1.1^p / (running + 1)."""
    running: Counter[str] = Counter()
    for _ in range(slots):
        running[max(priorities, key=lambda u: 1.1 ** priorities[u] / (running[u] + 1))] += 1
    return running


class SchedulingIntegrationTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-sched-")
        self.addCleanup(shutil.rmtree, self.base, True)
        config = os.path.join(self.base, "farmnet.yaml")
        with open(config, "w") as f:
            yaml.safe_dump({"server": {"scheduling": {"admins": ["root"]}, "stats": {"enabled": False}}}, f)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", config)
        for i in range(4):
            await self.farm.start_render(f"node{i}")
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "root")
        self.addCleanup(self.client.close)
        await wait_until(reactor, self.online, 60, "four renders online")

    async def online(self) -> bool:
        return sum(1 for r in await self.client.renders() if r["online"]) == 4

    async def cli(self, *args: str, user: str = "root") -> str:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.farm.endpoint, "--user", user],
            env=dict(os.environ), path=self.base)
        self.assertEqual(code, 0, err)
        return out.decode()

    async def submit(self, user: str, doc: dict[str, Any], name: str) -> int:
        path = os.path.join(self.base, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"job": doc}, f)
        return int((await self.cli("submit", path, user=user)).strip())

    async def test_two_users_share_by_need(self) -> None:
        # Users are created by their first job; an admin sets bob's priority before work flows.
        await self.submit("bob", {"name": "bob first", "offline": True, "blocks": [
            {"name": "b", "command": "true"}]}, "bob0")
        await self.cli("user", "set", "bob", "priority=50")  # anna keeps the default, 99
        sleeper = {"offline": True, "blocks": [
            {"name": "b", "command": "sleep 5", "frame_first": 1, "frame_last": 20}]}
        anna = await self.submit("anna", {"name": "anna shots", **sleeper}, "anna")
        bob = await self.submit("bob", {"name": "bob shots", **sleeper}, "bob")
        await self.cli("resume", str(anna), str(bob))  # one solve sees both users
        owner = {anna: "anna", bob: "bob"}

        async def busy() -> Counter[str] | None:
            running: Counter[str] = Counter()
            for render in await self.client.renders():
                for job_id, _, _ in render["tasks"]:
                    running[owner.get(job_id, "?")] += 1
            return running if sum(running.values()) == 4 else None

        running = await wait_until(reactor, busy, 30, "all four renders busy")
        expected = expected_share({"anna": 99, "bob": 50}, 4)
        for user in ("anna", "bob"):
            self.assertLessEqual(abs(running[user] - expected[user]), 1, (running, expected))
        await self.cli("delete", str(anna), str(bob))

    async def test_dependency_chain_completes_in_order(self) -> None:
        trace = os.path.join(self.base, "trace")
        note = f'echo "$FARMNET_BLOCK_NAME @#@ $(date +%s.%N)" >> {trace}'
        go = os.path.join(self.base, "go")  # A runs until the test has asked why (a busy machine is slow)
        sim = await self.submit("anna", {"name": "A sim", "blocks": [
            {"name": "A", "command": f"while [ ! -e {go} ]; do sleep 0.05; done; sleep 0.2; {note}",
             "frame_first": 1, "frame_last": 4}]}, "a")
        chain = await self.submit("anna", {"name": "chain", "depend_mask": "A sim", "blocks": [
            {"name": "B", "command": f"sleep 0.3; {note}", "frame_first": 1, "frame_last": 4},
            {"name": "C", "command": note, "frame_first": 1, "frame_last": 4, "tasks_depend_mask": "B"},
        ]}, "chain")
        why = await self.cli("why", str(chain))
        self.assertIn("A sim", why)  # waiting on job A, says the scheduler
        open(go, "w").close()
        await self.cli("wait", str(chain))
        self.assertEqual((await self.client.job(sim))["state"], "DON")
        lines = [line.split() for line in open(trace).read().splitlines()]
        when = {(block, int(frame)): float(t) for block, frame, t in lines}
        self.assertEqual(len(when), 12)
        last_a = max(t for (block, _), t in when.items() if block == "A")
        self.assertTrue(all(t > last_a for (block, _), t in when.items() if block != "A"))
        for frame in range(1, 5):
            self.assertGreater(when[("C", frame)], when[("B", frame)])
