"""The crash-safe store: what the farm was is what it loads."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from farmnet.config import SchedulingConfig
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.store import Store


def spec(name: str = "job", frames: int = 5, **kw: Any):
    return parse_job({"name": name, "blocks": [
        {"name": "b", "command": "echo @#@", "frame_first": 1, "frame_last": frames, **kw}]})[0]


class StoreTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="farmnet-store-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "farm.sqlite"

    async def open(self) -> tuple[Farm, Store]:
        farm = Farm(reactor, SchedulingConfig(admins=("root",), task_reconnect_timeout=300))
        store = Store(reactor, self.path, farm, flush_interval=0.05)
        store.startService()
        self.addCleanup(farm.stop)
        return farm, store

    async def close(self, store: Store) -> None:
        await store.stopService()

    def finish(self, farm: Farm, render: Any, exit_code: int = 0) -> None:
        for order in farm.take_orders(render):
            if order.order == "start":
                farm.task_finished(render, (order.job_id, order.block, order.task), order.run,
                                   exit_code=exit_code, signal=None, time_started=1.0, time_done=2.0)

    async def test_state_survives_a_reload(self) -> None:
        farm, store = await self.open()
        job = farm.submit(spec(frames=5, errors_retries=0), "anna")
        farm.submit(spec("paused"), "anna")
        farm.job_action("anna", [2], "pause")
        farm.user_action("root", ["anna"], "set", {"priority": 80, "hosts_mask": "r.*"})
        render = farm.register_render("r1", capacity=2100, owner="anna")
        farm.render_action("root", ["r1"], "nimby")
        farm.solve()
        self.finish(farm, render)  # two tasks done
        farm.solve()
        self.finish(farm, render, exit_code=1)  # two tasks in error
        farm.solve()  # two running
        before = [(t.state, t.errors_count, t.starts_count, t.host) for t in job.blocks[0].tasks]
        await store.sync()
        await self.close(store)

        again, store = await self.open()
        self.addCleanup(store.stopService)
        loaded = again.jobs[job.id]
        after = [(t.state, t.errors_count, t.starts_count, t.host) for t in loaded.blocks[0].tasks]
        expected = [(TaskState.WRC if s is TaskState.RUN else s, e, n, h) for s, e, n, h in before]
        self.assertEqual(after, expected)
        counts = {s: n for s, n in loaded.counts.items() if n}
        self.assertEqual(counts, {TaskState.DON: 2, TaskState.ERR: 2, TaskState.WRC: 1})
        self.assertTrue(again.jobs[2].paused)
        user = again.users["anna"]
        self.assertEqual((user.priority, user.hosts_mask.pattern), (80, "r.*"))
        r1 = again.renders_by_name["r1"]
        self.assertEqual((r1.id, r1.nimby, r1.online, r1.owner), (render.id, True, False, "anna"))
        self.assertEqual(again.submit(spec(), "anna").id, 3)  # ids continue

    async def test_running_task_reattaches_after_reload(self) -> None:
        farm, store = await self.open()
        job = farm.submit(spec(frames=1), "anna")
        render = farm.register_render("r1", capacity=1100)
        farm.solve()
        [order] = farm.take_orders(render)
        await store.sync()
        await self.close(store)

        again, store = await self.open()
        self.addCleanup(store.stopService)
        ref = order.ref()
        back = again.register_render("r1", capacity=1100, running=[ref])
        task = again.jobs[job.id].blocks[0].tasks[0]
        self.assertEqual((task.state, task.starts_count), (TaskState.RUN, 1))
        again.task_finished(back, task.key, 1, exit_code=0, signal=None, time_started=1, time_done=2)
        self.assertTrue(again.jobs[job.id].done)

    async def test_deleted_jobs_stay_deleted(self) -> None:
        farm, store = await self.open()
        job = farm.submit(spec(), "anna")
        await store.sync()
        farm.job_action("anna", [job.id], "delete")
        await store.sync()
        await self.close(store)
        again, store = await self.open()
        self.addCleanup(store.stopService)
        self.assertEqual(again.jobs, {})

    async def test_acknowledged_submit_is_on_disk(self) -> None:
        farm, store = await self.open()
        self.addCleanup(store.stopService)
        job = farm.submit(spec(frames=100_000), "anna")
        await store.sync()
        # A second reader sees it committed, as a restarted server would after kill -9.
        with sqlite3.connect(self.path) as db:
            rows = db.execute("SELECT id, user_name FROM jobs").fetchall()
        self.assertEqual(rows, [(job.id, "anna")])

    async def test_a_torn_write_loses_nothing_acknowledged(self) -> None:
        farm, store = await self.open()
        farm.submit(spec("kept"), "anna")
        await store.sync()
        # Crash in the middle of a transaction: an uncommitted write is rolled back at open.
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM jobs")
        db.close()  # never committed
        await self.close(store)
        again, store = await self.open()
        self.addCleanup(store.stopService)
        self.assertEqual([j.name for j in again.jobs.values()], ["kept"])


class RestoredTimerTests(TestCase):
    """task_reconnect_timeout continues across restarts: it counts from when the task
    began waiting (kept in the store), not from each start of the server."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="farmnet-store-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "farm.sqlite"

    def open(self, now: float) -> tuple[Farm, Clock, Store]:
        clock = Clock()
        clock.advance(now)
        farm = Farm(clock, SchedulingConfig(task_reconnect_timeout=30))
        store = Store(reactor, self.path, farm, flush_interval=0.05)
        store.startService()
        self.addCleanup(farm.stop)
        return farm, clock, store

    async def test_a_waiting_task_goes_on_waiting_after_a_restart(self) -> None:
        farm, clock, store = self.open(1000)
        job = farm.submit(spec(frames=1), "anna")
        render = farm.register_render("r1", capacity=1100)
        farm.solve()
        farm.take_orders(render)
        clock.advance(5)
        farm.render_lost(render)  # waits from 1005 until 1035
        await store.sync()
        await store.stopService()

        again, clock, store = self.open(1025)
        self.addCleanup(store.stopService)
        task = again.jobs[job.id].blocks[0].tasks[0]
        self.assertEqual((task.state, task.time_lost), (TaskState.WRC, 1005))
        clock.advance(9.9)
        self.assertEqual(task.state, TaskState.WRC)
        clock.advance(0.1)
        self.assertEqual(task.state, TaskState.RDY)

    async def test_a_running_task_waits_from_the_first_restart_only(self) -> None:
        """Loaded RUN (the server died under it), it waits from that start; the next
        restarts continue that wait."""
        farm, clock, store = self.open(1000)
        job = farm.submit(spec(frames=1), "anna")
        render = farm.register_render("r1", capacity=1100)
        farm.solve()
        farm.take_orders(render)
        await store.sync()
        await store.stopService()

        again, clock, store = self.open(2000)
        task = again.jobs[job.id].blocks[0].tasks[0]
        self.assertEqual((task.state, task.time_lost), (TaskState.WRC, 2000))
        await store.sync()  # written back as WRC since 2000
        await store.stopService()

        third, clock, store = self.open(2020)
        self.addCleanup(store.stopService)
        task = third.jobs[job.id].blocks[0].tasks[0]
        self.assertEqual((task.state, task.time_lost), (TaskState.WRC, 2000))
        clock.advance(9.9)
        self.assertEqual(task.state, TaskState.WRC)
        clock.advance(0.1)
        self.assertEqual((task.state, task.starts_count), (TaskState.RDY, 1))
