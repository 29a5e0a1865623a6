"""A multi-host task on a real farm: a server and three render processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until

NODES = ("node0", "node1", "node2")


class MultiHostIntegrationTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-multihost-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server()
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(self.client.close)

    async def online(self, count: int) -> None:
        async def enough() -> bool:
            return sum(1 for r in await self.client.renders() if r["online"]) == count

        await wait_until(reactor, enough, 60, f"{count} renders online")

    async def cli(self, *args: str) -> str:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.farm.endpoint, "--user", "anna"],
            env=dict(os.environ), path=str(self.base))
        self.assertEqual(code, 0, err)
        return out.decode()

    async def test_a_three_host_task_runs_on_three_renders(self) -> None:
        out = self.base / "out"
        out.mkdir()
        # Each secondary's service notes that it started, and that it was stopped (the render's
        # kill is a SIGTERM to its process group first).
        service = (f'trap "touch {out}/stopped-$FARMNET_RENDER; exit 0" TERM; '
                   f'touch {out}/service-$FARMNET_RENDER; while :; do sleep 0.05; done')
        # The primary writes what it got, and ends once both services run.
        primary = (f'echo "$FARMNET_RENDER|@AF_HOSTS@|$FARMNET_HOSTS" > {out}/primary; '
                   f'while [ "$(ls {out} | grep -c ^service-)" -lt 2 ]; do sleep 0.05; done')
        job_file = self.base / "job.yaml"
        job_file.write_text(yaml.safe_dump({"name": "mpi", "blocks": [{
            "name": "solve", "command": primary, "multihost_min": 3, "multihost_max": 3,
            "multihost_service": service}]}))
        for node in NODES[:2]:
            await self.farm.start_render(node)
        await self.online(2)
        job_id = int((await self.cli("submit", str(job_file))).strip())

        async def gathered() -> str | None:
            why = await self.cli("why", str(job_id))
            return why if "has 2 of multihost_min 3" in why else None

        why = await wait_until(reactor, gathered, 30, "two hosts captured")
        self.assertIn("multi-host task gathers hosts: task 0 has 2 of multihost_min 3 (max 3)", why)
        self.assertFalse((out / "primary").exists())

        await self.farm.start_render(NODES[2])
        await self.cli("wait", str(job_id))
        master, hosts, variable = (out / "primary").read_text().strip().split("|")
        secondaries = sorted(set(NODES) - {master})
        self.assertEqual(sorted(hosts.removeprefix("-H ").split(",")), secondaries)
        self.assertTrue(hosts.startswith("-H "), hosts)
        self.assertEqual(sorted(variable.split()), secondaries)

        async def stopped() -> bool:
            return all((out / f"stopped-{name}").exists() for name in secondaries)

        await wait_until(reactor, stopped, 30, "both services stopped")
        self.assertEqual(sorted(p.name for p in out.iterdir() if p.name.startswith("service-")),
                         [f"service-{name}" for name in secondaries])
        [task] = (await self.client.tasks(job_id))
        self.assertEqual(task["state"], "DON")
        host_master, _, others = task["host"].partition(": ")
        self.assertEqual((host_master, sorted(others.split())), (master, secondaries))
        shown = await self.cli("tasks", str(job_id))
        self.assertIn(task["host"], shown)

        async def freed() -> bool:
            return all(r["capacity_used"] == 0 and not r["tasks"] for r in await self.client.renders())

        await wait_until(reactor, freed, 30, "the three renders free")

    async def test_a_running_multi_host_task_survives_a_server_kill(self) -> None:
        """kill -9 the server while a 3-host task runs: restarted on the same port and store,
        the primary and both secondaries re-attach; nothing runs twice, and the services are
        stopped when the primary ends."""
        out, go = self.base / "out", self.base / "go"
        out.mkdir()
        service = (f'trap "echo >> {out}/stopped-$FARMNET_RENDER; exit 0" TERM; '
                   f'echo >> {out}/service-$FARMNET_RENDER; while :; do sleep 0.05; done')
        primary = f'echo >> {out}/primary-$FARMNET_RENDER; while [ ! -e {go} ]; do sleep 0.05; done'
        job_file = self.base / "job.yaml"
        job_file.write_text(yaml.safe_dump({"name": "mpi", "blocks": [{
            "name": "solve", "command": primary, "multihost_min": 3, "multihost_service": service}]}))
        for node in NODES:
            await self.farm.start_render(node)
        await self.online(3)
        job_id = int((await self.cli("submit", str(job_file))).strip())

        async def everyone_started() -> bool:
            return len(list(out.iterdir())) == 3

        await wait_until(reactor, everyone_started, 30, "the primary and both services running")
        await deferLater(reactor, 0.6, lambda: None)  # the store writes every 0.2 s
        listen = f"tcp:{self.farm.endpoint.rsplit(':', 1)[1]}:interface=127.0.0.1"
        self.client.close()
        assert self.farm.server is not None
        ended = self.farm.server.watch.ended
        self.farm.kill(self.farm.server)
        await ended
        await self.farm.start_server(listen=listen)
        self.client = await connect(reactor, self.farm.endpoint, "anna", timeout=20)
        self.addCleanup(self.client.close)
        await self.online(3)

        async def reattached() -> dict | None:
            [task] = await self.client.tasks(job_id)
            renders = await self.client.renders()
            held = all(any(key[0] == job_id for key in r["tasks"]) for r in renders)
            return task if task["state"] == "RUN" and held else None

        task = await wait_until(reactor, reattached, 30, "the task and its three hosts re-attached")
        go.touch()
        await self.cli("wait", str(job_id))
        [task] = await self.client.tasks(job_id)
        self.assertEqual((task["state"], task["starts_count"]), ("DON", 1))
        master, _, others = task["host"].partition(": ")

        async def stopped() -> bool:
            return all((out / f"stopped-{name}").exists() for name in others.split())

        await wait_until(reactor, stopped, 30, "both services stopped")
        started = {p.name: p.read_text().count("\n") for p in out.iterdir()
                   if not p.name.startswith("stopped")}
        self.assertEqual(started, {f"primary-{master}": 1, **{f"service-{n}": 1 for n in others.split()}})
