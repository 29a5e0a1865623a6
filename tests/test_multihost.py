"""Multi-host tasks (Afanasy's ``setMultiHost``) on the model, on a `task.Clock`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from test_farm import FarmTestCase
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from farmnet.config import SchedulingConfig
from farmnet.messages import KillOrder, StartOrder
from farmnet.model.data import Render, TaskRun, TaskState
from farmnet.model.events import RunEnded
from farmnet.model.farm import Farm
from farmnet.model.scheduler import Why
from farmnet.model.spec import FLAG_MASTER_ON_SLAVE, FLAG_MULTIHOST, FLAG_SLAVE_LOST_IGNORE, parse_job
from farmnet.render.services import GenericService, apply_hosts
from farmnet.server.store import Store


def multihost_block(low: int, high: int, frames: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": "mpi", "command": "mpirun @AF_HOSTS@ render @#@", "frame_first": 1,
            "frame_last": frames, "multihost_min": low, "multihost_max": high, **kw}


class MultiHostTestCase(FarmTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.runs: list[TaskRun] = []
        self.farm.bus.subscribe(RunEnded, lambda e: self.runs.append(e.run))

    def job(self, block: dict[str, Any], **kw: Any):
        spec, warnings = parse_job({"name": "mh", "blocks": [block], **kw})
        self.assertEqual(warnings, [])
        job = self.farm.submit(spec, "anna")
        self.clock.advance(0)
        return job

    def renders(self, count: int, **kw: Any) -> list[Render]:
        return [self.render(f"r{i}", **kw) for i in range(count)]

    def start_orders(self, render: Render) -> list[StartOrder]:
        return [o for o in self.orders(render) if isinstance(o, StartOrder)]

    def why(self, job) -> list[str]:
        return self.farm.explain(job.id)["blocks"][0]["reasons"]


class GatheringTests(MultiHostTestCase):
    def test_three_host_task_runs_on_three_renders_with_service(self) -> None:
        job = self.job(multihost_block(3, 3, multihost_service="serve --port 5000"))
        r0, r1, r2 = self.renders(3, capacity=1000)
        [master] = self.start_orders(r0)
        self.assertEqual(master.hosts, ("r1", "r2"))
        self.assertEqual(master.environment["FARMNET_HOSTS"], "r1 r2")
        self.assertEqual(apply_hosts(GenericService(), master.command, master.hosts),
                         "mpirun -H r1,r2 render 1")
        for secondary in (r1, r2):
            [service] = self.start_orders(secondary)
            self.assertEqual((service.key, service.run, service.command),
                             (master.key, 1, "serve --port 5000"))
            self.assertEqual(service.hosts, ())
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.state, task.host), (TaskState.RUN, "r0: r1 r2"))
        self.assertEqual([r.capacity_used for r in (r0, r1, r2)], [1000, 1000, 1000])
        self.assertEqual(sorted(self.farm.render_named("r1").multihost), [task.key])

        self.finish(r0, master)
        self.assertEqual(task.state, TaskState.DON)
        for secondary in (r1, r2):
            [kill] = self.orders(secondary)
            self.assertIsInstance(kill, KillOrder)
            self.assertEqual((kill.key, kill.run), (task.key, 1))
        self.assertEqual([r.capacity_used for r in (r0, r1, r2)], [0, 0, 0])
        self.assertEqual([(r.host, r.hosts) for r in self.runs], [("r0", ("r0", "r1", "r2"))])
        # The killed services' reports come later: stale, they change nothing.
        self.farm.task_finished(r1, task.key, 1, exit_code=None, signal=15, time_started=1.0, time_done=2.0)
        self.assertEqual((task.state, len(self.runs)), (TaskState.DON, 1))

    def test_gathers_up_to_max_wait_after_the_last_host_then_starts_with_what_it_has(self) -> None:
        job = self.job(multihost_block(2, 4, multihost_max_wait=10))
        r0, r1 = self.renders(2)
        task = job.blocks[0].tasks[0]
        self.assertEqual((self.start_orders(r0), task.state, task.host), ([], TaskState.RDY, "r0 r1"))
        reasons = self.why(job)
        self.assertIn(f"{Why.MULTIHOST_GATHERING}: task 0 has 2 of multihost_min 2 (max 4), starts when no "
                      "host came for multihost_max_wait 10 s", reasons)
        self.clock.advance(9)
        r2 = self.render("r2")  # a host came: the wait starts again
        self.clock.advance(9)
        self.assertEqual(self.start_orders(r0), [])
        self.clock.advance(1)
        [master] = self.start_orders(r0)
        self.assertEqual(master.hosts, ("r1", "r2"))
        self.assertEqual((task.state, task.host), (TaskState.RUN, "r0: r1 r2"))
        self.assertEqual(self.start_orders(r2), [])  # no service: secondaries are held, run nothing
        self.assertEqual(r2.capacity_used, 1000)

    def test_without_max_wait_it_takes_every_free_render_of_one_solve(self) -> None:
        self.renders(3)
        job = self.job(multihost_block(2, 4))
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.state, task.host), (TaskState.RUN, "r0: r1 r2"))
        [master] = self.start_orders(self.farm.render_named("r0"))
        self.assertEqual(master.hosts, ("r1", "r2"))

    def test_fewer_than_min_keeps_the_hosts_and_waits_as_afanasy_does(self) -> None:
        job = self.job(multihost_block(3, 3, multihost_max_wait=5))
        r0, r1 = self.renders(2)
        self.clock.advance(1000)
        self.assertEqual(self.start_orders(r0) + self.start_orders(r1), [])
        self.assertIn(f"{Why.MULTIHOST_GATHERING}: task 0 has 2 of multihost_min 3 (max 3)", self.why(job))
        self.assertEqual((r0.capacity_used, r1.capacity_used), (1000, 1000))
        self.farm.render_lost(r1)  # a captured host lost while gathering: one fewer
        self.assertEqual(job.blocks[0].tasks[0].host, "r0")
        self.assertIn(f"{Why.MULTIHOST_GATHERING}: task 0 has 1 of multihost_min 3 (max 3)", self.why(job))
        self.farm.job_action("anna", [job.id], "pause")  # paused: the hosts go back
        self.assertEqual((r0.capacity_used, r0.multihost), (0, {}))
        self.assertEqual(self.farm.multihost, {})

    def test_one_host_per_render_and_one_gathering_task_per_block(self) -> None:
        job = self.job(multihost_block(2, 2, frames=3))
        big = self.render("big", capacity=5000)
        self.assertEqual(big.capacity_used, 1000)  # captured once, though it has room for five
        explained = self.farm.explain(job.id)["blocks"][0]
        self.assertEqual(explained["renders"], {str(Why.MULTIHOST_HOST): 1})
        small = self.render("small", capacity=1000)
        [master] = self.start_orders(big)
        self.assertEqual((master.task, master.hosts), (0, ("small",)))
        self.assertEqual([t.state for t in job.blocks[0].tasks],
                         [TaskState.RUN, TaskState.RDY, TaskState.RDY])
        self.assertEqual(self.farm.multihost_gathering, {})  # big is the primary: no second host for task 1
        self.finish(big, master)
        [master] = self.start_orders(big)
        self.assertEqual((master.task, master.hosts), (1, ("small",)))
        self.assertEqual(small.multihost, {(job.id, 0, 1): job.blocks[0].tasks[1]})

    def test_master_on_slave_lists_the_primary_too(self) -> None:
        spec, _ = parse_job({"name": "af", "blocks": [{
            "name": "b", "command": "run @AF_HOSTS@", "frame_first": 1, "frame_last": 1,
            "flags": FLAG_MULTIHOST | FLAG_MASTER_ON_SLAVE | 1, "multihost_min": 2, "multihost_max": 2}]})
        self.farm.submit(spec, "anna")
        r0, _ = self.renders(2)
        [master] = self.start_orders(r0)
        self.assertEqual(master.hosts, ("r1", "r0"))
        self.assertEqual(self.farm.jobs[1].blocks[0].tasks[0].host, "r0: r1 r0")

    def test_service_wait_delays_the_primary(self) -> None:
        job = self.job(multihost_block(2, 2, multihost_service="serve", multihost_service_wait=7))
        r0, r1 = self.renders(2)
        self.assertEqual([o.command for o in self.start_orders(r1)], ["serve"])
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.RUN)
        self.clock.advance(6.9)
        self.assertEqual(self.start_orders(r0), [])
        self.clock.advance(0.1)
        [master] = self.start_orders(r0)
        self.assertEqual(master.hosts, ("r1",))


class SecondaryLostTests(MultiHostTestCase):
    def test_a_secondary_service_ending_restarts_the_whole_task(self) -> None:
        job = self.job(multihost_block(2, 2, multihost_service="serve"))
        r0, r1 = self.renders(2)
        self.start_orders(r0)
        [service] = self.start_orders(r1)
        self.farm.task_finished(r1, service.key, service.run, exit_code=3, signal=None, time_started=1.0,
                                time_done=2.0)
        self.clock.advance(0)
        task = job.blocks[0].tasks[0]
        kill, again = self.orders(r0)
        self.assertEqual((type(kill), kill.key, kill.run), (KillOrder, task.key, 1))
        self.assertEqual(task.errors_count, 0)
        self.assertIn("secondary host r1 lost (its service ended: exit 3 signal None)", self.runs[0].message)
        self.assertEqual((self.runs[0].state, self.runs[0].hosts), ("RDY", ("r0", "r1")))
        # Both hosts are free again: the task gathers them and runs again (run 2).
        self.assertEqual((task.state, task.starts_count), (TaskState.RUN, 2))
        self.assertEqual((type(again), again.run, again.hosts), (StartOrder, 2, ("r1",)))

    def test_a_secondary_render_lost_restarts_the_whole_task(self) -> None:
        job = self.job(multihost_block(3, 3))
        r0, r1, r2 = self.renders(3)
        self.start_orders(r0)
        self.farm.render_lost(r2)
        self.clock.advance(0)
        task = job.blocks[0].tasks[0]
        self.assertEqual([type(o) for o in self.orders(r0)], [KillOrder])
        self.assertEqual((task.state, r1.capacity_used, r1.multihost),
                         (TaskState.RDY, 1000, {task.key: task}))
        self.assertIn(f"{Why.MULTIHOST_GATHERING}: task 0 has 2 of multihost_min 3", self.why(job)[0])

    def test_slavelostignore_goes_on_while_a_secondary_is_left(self) -> None:
        spec, _ = parse_job({"name": "af", "blocks": [{
            "name": "b", "command": "run", "frame_first": 1, "frame_last": 1,
            "flags": FLAG_MULTIHOST | FLAG_SLAVE_LOST_IGNORE | 1, "multihost_min": 3, "multihost_max": 3}]})
        job = self.farm.submit(spec, "anna")
        r0, r1, r2 = self.renders(3)
        [master] = self.start_orders(r0)
        task = job.blocks[0].tasks[0]
        self.farm.render_lost(r1)
        self.assertEqual((task.state, task.host, self.orders(r0)), (TaskState.RUN, "r0: r2", []))
        self.farm.render_lost(r2)  # no secondary left: the whole task restarts
        self.assertEqual(task.state, TaskState.RDY)
        self.assertEqual([type(o) for o in self.orders(r0)], [KillOrder])

    def test_primary_lost_waits_with_its_secondaries_then_frees_them(self) -> None:
        job = self.job(multihost_block(2, 2, multihost_service="serve"))
        r0, r1 = self.renders(2)
        [master], [_service] = self.start_orders(r0), self.start_orders(r1)
        task = job.blocks[0].tasks[0]
        self.farm.render_lost(r0)
        self.assertEqual((task.state, r1.capacity_used), (TaskState.WRC, 1000))
        self.farm.register_render("r0", capacity=1100, running=[master.ref()])
        self.clock.advance(0)
        self.assertEqual(task.state, TaskState.RUN)
        self.farm.render_lost(r0)
        self.clock.advance(30)  # task_reconnect_timeout: ready again, the service is killed
        self.assertEqual([type(o) for o in self.orders(r1)], [KillOrder])
        # r1 is free, and captured again by the task gathering anew.
        self.assertEqual((task.state, task.host, r1.multihost), (TaskState.RDY, "r1", {task.key: task}))

    def test_deleting_the_job_kills_the_services(self) -> None:
        job = self.job(multihost_block(2, 2, multihost_service="serve"))
        r0, r1 = self.renders(2)
        self.start_orders(r0), self.start_orders(r1)
        self.farm.job_action("anna", [job.id], "delete")
        self.assertEqual([type(o) for o in self.orders(r1)], [KillOrder])
        self.assertEqual((r0.capacity_used, r1.capacity_used, self.farm.multihost), (0, 0, {}))


class SpecTests(MultiHostTestCase):
    def test_af_py_flags_and_checks(self) -> None:
        spec, warnings = parse_job({"name": "j", "blocks": [{
            "name": "b", "command": "c", "flags": FLAG_MULTIHOST | FLAG_MASTER_ON_SLAVE | 1,
            "multihost_min": 2, "multihost_max": 4, "multihost_max_wait": 10, "multihost_service": "s",
            "multihost_service_wait": 3}]})
        block = spec.blocks[0]
        self.assertEqual((block.multihost_min, block.multihost_max, block.multihost_max_wait,
                          block.multihost_service, block.multihost_service_wait), (2, 4, 10, "s", 3))
        self.assertFalse(block.multihost_master_on_slave)
        self.assertEqual(warnings, ["job.blocks[0].flags: masteronslave is dropped: a block with a "
                                    "multihost_service cannot run its primary on a secondary host, as in "
                                    "Afanasy"])
        with self.assertRaisesRegex(Exception, r"multihost_max: 1 is less than multihost_min 2"):
            parse_job({"name": "j", "blocks": [{"name": "b", "command": "c", "multihost_min": 2,
                                                "multihost_max": 1}]})
        with self.assertRaisesRegex(Exception, r"multihost_min: a multi-host block needs at least 1 host"):
            parse_job({"name": "j", "blocks": [{"name": "b", "command": "c", "flags": FLAG_MULTIHOST}]})
        _, warnings = parse_job({"name": "j", "blocks": [{"name": "b", "command": "c",
                                                          "multihost_service": "s"}]})
        self.assertEqual(warnings, ["job.blocks[0].multihost_service: the block is not multi-host (no "
                                    "multihost flag, no multihost_min): ignored"])


class RestartTests(TestCase):
    """The store keeps a multi-host run ("primary: secondary ..."): after a server restart
    its secondaries re-attach like its primary (a real Store on a temporary file)."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="farmnet-multihost-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def open(self, now: float) -> tuple[Farm, Clock, Store]:
        clock = Clock()
        clock.advance(now)
        farm = Farm(clock, SchedulingConfig(task_reconnect_timeout=30))
        store = Store(reactor, self.dir / "farm.sqlite", farm, flush_interval=0.05)
        store.startService()
        self.addCleanup(farm.stop)
        return farm, clock, store

    async def running_three_host_task(self, service: str) -> tuple[int, StartOrder]:
        farm, clock, store = self.open(1000)
        spec, _ = parse_job({"name": "mh", "blocks": [multihost_block(3, 3, multihost_service=service)]})
        job = farm.submit(spec, "anna")
        renders = [farm.register_render(f"r{i}", capacity=1000) for i in range(3)]
        farm.solve()
        [master] = farm.take_orders(renders[0])
        await store.sync()
        await store.stopService()
        return job.id, master

    async def test_secondaries_running_their_service_re_attach(self) -> None:
        job_id, master = await self.running_three_host_task("serve")
        farm, clock, store = self.open(1010)
        self.addCleanup(store.stopService)
        task = farm.jobs[job_id].blocks[0].tasks[0]
        self.assertEqual((task.state, task.host), (TaskState.WRC, "r0: r1 r2"))
        r0 = farm.register_render("r0", capacity=1000, running=[master.ref()])
        r1 = farm.register_render("r1", capacity=1000, running=[master.ref()])
        self.assertEqual((task.state, r0.tasks, r1.multihost),
                         (TaskState.RUN, {task.key: task}, {task.key: task}))
        self.assertEqual((farm.take_orders(r0), farm.take_orders(r1)), ([], []))  # nothing killed
        # r2 comes back without the service: it is lost, the whole task restarts.
        r2 = farm.register_render("r2", capacity=1000, running=[])
        self.assertEqual(task.state, TaskState.RDY)
        self.assertEqual([type(o) for o in farm.take_orders(r0)], [KillOrder])
        self.assertEqual([type(o) for o in farm.take_orders(r1)], [KillOrder])
        self.assertEqual((r1.multihost, r2.multihost), ({}, {}))

    async def test_secondaries_without_service_come_back_or_are_lost_after_reconnect_timeout(self) -> None:
        job_id, master = await self.running_three_host_task("")
        farm, clock, store = self.open(1010)
        self.addCleanup(store.stopService)
        task = farm.jobs[job_id].blocks[0].tasks[0]
        farm.register_render("r0", capacity=1000, running=[master.ref()])
        r1 = farm.register_render("r1", capacity=1000)
        self.assertEqual((task.state, r1.multihost, r1.capacity_used),
                         (TaskState.RUN, {task.key: task}, 1000))
        clock.advance(29)
        self.assertEqual(task.state, TaskState.RUN)
        clock.advance(1)  # r2 did not come back within task_reconnect_timeout: the run is over
        self.assertEqual((task.state, task.starts_count), (TaskState.RDY, 1))
        run = farm.multihost[task.key]  # r0 and r1 are free: the task gathers them anew
        self.assertEqual((run.master, task.host), (None, "r0 r1"))


class EjectTests(MultiHostTestCase):
    def test_eject_drops_a_captured_host_and_kills_a_secondarys_service(self) -> None:
        job = self.job(multihost_block(3, 3, multihost_service="serve"))
        r0, r1 = self.renders(2, owner="olga")
        self.farm.render_action("olga", ["r1"], "eject")
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.host, r1.multihost), ("r0", {}))
        self.clock.advance(0)  # free again: the scheduler gives r1 back to the task
        self.assertEqual((task.host, r1.multihost), ("r0 r1", {task.key: task}))
        self.render("r2")
        self.assertEqual(task.state, TaskState.RUN)
        self.orders(r0), self.orders(r1)
        self.farm.render_action("olga", ["r1"], "eject")
        self.assertEqual([type(o) for o in self.orders(r1)], [KillOrder])
        self.assertEqual([type(o) for o in self.orders(r0)], [KillOrder])  # the whole task restarts
        self.assertEqual(task.errors_count, 0)

    def test_a_secondary_without_service_is_not_ejected_alone(self) -> None:
        job = self.job(multihost_block(2, 2))
        r0, r1 = self.renders(2, owner="olga")
        self.farm.render_action("olga", ["r1"], "eject")
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.state, task.host, self.orders(r1)), (TaskState.RUN, "r0: r1", []))
        self.assertEqual(r1.state, "busy")
