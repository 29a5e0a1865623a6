"""The system job on the model, with a `task.Clock`: post commands, tasksmax, tasklife,
events, wake-on-LAN."""

from __future__ import annotations

import json
from typing import Any

from test_farm import FarmTestCase

from farmnet import errors
from farmnet.config import SchedulingConfig, SysJobConfig
from farmnet.messages import SleepOrder
from farmnet.model.data import Render, TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.sysjob.job import SYSTEM_USER, SystemJob


class SystemJobTestCase(FarmTestCase):
    sysjob_settings = SysJobConfig(tasksmax=5, tasklife=100)

    def setUp(self) -> None:
        super().setUp()
        self.farm = Farm(self.clock, SchedulingConfig(admins=("root",)))
        self.saved: dict[str, Any] = {}
        self.outputs: dict[tuple[Any, int], bytes] = {}
        self.sysjob = SystemJob(self.farm, self.sysjob_settings,
                                read_output=lambda key, run: self.outputs.get((key, run), b""),
                                load_state=self.saved.get, save_state=self.saved.__setitem__)
        self.sysjob.startService()
        self.addCleanup(self.sysjob.stopService)
        self.farm.on_wake = self.sysjob.wake
        self.clock.advance(0)

    def job(self, user: str = "anna", **kw: Any):
        spec, _ = parse_job({"name": kw.pop("name", "shot"), "blocks": [
            {"name": "b", "command": "true", "command_post": kw.pop("block_post", "")}], **kw})
        job = self.farm.submit(spec, user)
        self.clock.advance(0)
        return job

    def system_block(self, name: str):
        return self.sysjob.block(name)

    def run_all(self, render: Render, exit_code: int = 0) -> list[dict[str, Any]]:
        ran = []
        for _ in range(100):
            orders = [o for o in self.orders(render) if o.order == "start"]
            if not orders:
                break
            for order in orders:
                self.finish(render, order, exit_code)
                ran.append(order)
            self.clock.advance(0)
        return ran


class PostCommandTests(SystemJobTestCase):
    def test_system_job_exists_and_is_protected(self) -> None:
        job = self.farm.jobs[self.farm.system_job_id]
        self.assertEqual((job.user_name, [b.name for b in job.blocks]),
                         (SYSTEM_USER, ["postcmd", "events", "wakeonlan"]))
        self.assertEqual(job.blocks[0].spec.service, "postcmd")
        self.assertRaises(errors.InvalidAction, self.farm.job_action, "root", [job.id], "delete")
        self.assertRaises(errors.PermissionDenied, self.farm.job_action, "anna", [job.id], "pause")

    def test_deleting_a_job_runs_its_post_commands(self) -> None:
        job = self.job(command_post="rm /tmp/scene.hip", block_post="rm -r /tmp/b")
        self.farm.job_action("anna", [job.id], "delete")
        render = self.render("r1", capacity=10_000, services=["postcmd", "generic"])
        ran = self.run_all(render)
        self.assertEqual(sorted(o.command for o in ran), ["rm -r /tmp/b", "rm /tmp/scene.hip"])
        self.assertEqual([o.service for o in ran], ["postcmd", "postcmd"])
        self.assertEqual(self.system_block("postcmd").tasks, [])  # done tasks are deleted

    def test_tasksmax_queues_and_loses_nothing(self) -> None:
        for i in range(20):
            job = self.job(name=f"j{i}", command_post=f"echo post {i}")
            self.farm.job_action("anna", [job.id], "delete")
        self.assertEqual(len(self.system_block("postcmd").tasks), 5)
        self.assertEqual(len(self.sysjob.queue), 15)
        self.assertEqual(len(self.saved["sysjob"]["queue"]), 15)  # stored with the farm's state
        render = self.render("r1", capacity=3000)
        ran = self.run_all(render)
        self.assertEqual(sorted(o.command for o in ran), sorted(f"echo post {i}" for i in range(20)))
        self.assertEqual(len(self.sysjob.queue), 0)

    def test_queue_survives_a_restart(self) -> None:
        for i in range(8):
            job = self.job(name=f"j{i}", command_post=f"echo {i}")
            self.farm.job_action("anna", [job.id], "delete")
        again = SystemJob(self.farm, self.sysjob_settings, load_state=self.saved.get)
        again.ensure()
        self.assertEqual([c for _, _, c in again.queue], [f"echo {i}" for i in range(5, 8)])

    def test_failing_task_past_retries_is_deleted_and_logged(self) -> None:
        job = self.job(command_post="false")
        self.farm.job_action("anna", [job.id], "delete")
        task = self.system_block("postcmd").tasks[0]
        renders = [self.render(f"r{i}", capacity=1000) for i in range(12)]
        for _ in range(10):
            for render in renders:
                for order in self.orders(render):
                    if order.order == "start":
                        self.outputs[((order.job_id, 0, 0), order.run)] = b"no such file\n"
                        self.finish(render, order, exit_code=1)
            self.clock.advance(0)
        self.assertEqual(task.errors_count, 10)  # Afanasy's system retries: 9
        self.assertEqual(self.system_block("postcmd").tasks, [])
        self.assertIn("no such file", self.sysjob.log[-1])
        self.assertIn("command: false", self.saved["sysjob"]["log"][-1])

    def test_tasklife_makes_a_stuck_task_an_error(self) -> None:
        job = self.job(command_post="sleep 1000")
        self.farm.job_action("anna", [job.id], "delete")
        render = self.render("r1")
        [start] = self.orders(render)
        self.clock.advance(100)
        self.clock.advance(0)
        kinds = [o.order for o in self.orders(render)]
        self.assertEqual(kinds, ["kill"])
        self.assertIn("older than tasklife", self.sysjob.log[-1])
        self.assertEqual(self.system_block("postcmd").tasks, [])

    def test_restarting_the_block_resets_the_queue(self) -> None:
        for i in range(7):
            job = self.job(name=f"j{i}", command_post=f"echo {i}")
            self.farm.job_action("anna", [job.id], "delete")
        system = self.farm.jobs[self.farm.system_job_id]
        for task in list(self.system_block("postcmd").tasks)[:2]:
            self.farm.fail_task(task, "test")
        self.clock.advance(0)  # errors deleted, the queue flows in
        self.assertEqual(len(self.system_block("postcmd").tasks), 5)
        self.assertEqual(len(self.sysjob.queue), 0)
        self.farm.job_action("root", [system.id], "restart")
        self.assertEqual(system.counts[TaskState.RDY], 5)


class EventTests(SystemJobTestCase):
    def test_job_done_event_when_custom_data_asks(self) -> None:
        self.farm.submit(parse_job({"name": "quiet", "blocks": [{"name": "b", "command": "true"}]})[0],
                         "anna")
        spec, _ = parse_job({"name": "shot010", "custom_data": {
            "events": {"JOB_DONE": {"methods": ["email"]}}, "emails": ["anna@studio"]},
            "blocks": [{"name": "b", "command": "true"}]})
        self.farm.user_action("root", ["anna"], "set", {"custom_data": {"emails": ["lead@studio"],
                                                                        "webhooks": ["http://x"]}})
        job = self.farm.submit(spec, "anna")
        render = self.render("r1", capacity=1000, services=["generic"])
        self.run_all(render)
        self.assertTrue(job.done)
        [task] = self.system_block("events").tasks
        data = json.loads(task.command)
        self.assertEqual((data["event"], data["job"]["name"], data["emails"], data["webhooks"]),
                         ("JOB_DONE", "shot010", ["anna@studio"], ["http://x"]))

    def test_render_events_from_farm_custom_data(self) -> None:
        self.sysjob.settings = SysJobConfig(custom_data={"events": {"RENDER_ZOMBIE": {}}})
        render = self.render("r1")
        self.farm.render_lost(render, zombie=True)
        [task] = self.system_block("events").tasks
        self.assertEqual(json.loads(task.command)["render"]["name"], "r1")


class WakeOnLanTests(SystemJobTestCase):
    def test_sleep_then_wake(self) -> None:
        render = self.render("ws1", macs=["aa:bb:cc:dd:ee:ff"])
        self.farm.render_action("root", ["ws1"], "sleep")
        self.assertEqual(self.orders(render), [SleepOrder()])
        self.farm.render_lost(render)
        self.assertEqual(render.state, "WOL sleeping")
        self.farm.render_action("root", ["ws1"], "wake")
        [task] = self.system_block("wakeonlan").tasks
        self.assertEqual((task.command, render.state), ("wolwake aa:bb:cc:dd:ee:ff", "WOL waking"))
        other = self.render("r2", capacity=1000)
        [order] = [o for o in self.orders(other) if o.order == "start"]
        self.assertEqual(order.service, "wakeonlan")
        again = self.render("ws1")
        self.assertEqual(again.state, "online")

    def test_no_mac_no_wake(self) -> None:
        render = self.render("ws1")
        self.farm.render_lost(render)
        self.assertRaises(errors.InvalidAction, self.farm.render_action, "root", ["ws1"], "wake")
