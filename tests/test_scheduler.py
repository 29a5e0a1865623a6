"""Afanasy's solving rules on the model, one by one, on a `task.Clock`."""

from __future__ import annotations

from collections import Counter
from typing import Any

from test_farm import FarmTestCase

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.messages import ExitOrder
from farmnet.model.data import Render, TaskState
from farmnet.model.events import RenderSick
from farmnet.model.farm import Farm
from farmnet.model.scheduler import Why
from farmnet.model.spec import parse_job
from farmnet.model.views import render_errors


def block(name: str = "b", frames: int = 10, **kw: Any) -> dict[str, Any]:
    return {"name": name, "command": "echo @#@", "frame_first": 1, "frame_last": frames, **kw}


class SchedulerTestCase(FarmTestCase):
    settings = SchedulingConfig(admins=("root",))

    def setUp(self) -> None:
        super().setUp()
        self.farm = Farm(self.clock, self.settings)

    def job(self, user: str = "anna", blocks: list[dict[str, Any]] | None = None, **kw: Any):
        spec, _ = parse_job({"name": kw.pop("name", "job"), "blocks": blocks or [block()], **kw})
        job = self.farm.submit(spec, user)
        self.clock.advance(0)
        return job

    def renders(self, count: int, prefix: str = "r", **kw: Any) -> list[Render]:
        return [self.render(f"{prefix}{i}", **kw) for i in range(count)]

    def running_by_user(self) -> Counter[str]:
        return Counter({u.name: u.running for u in self.farm.users.values()})

    def finish_all(self, renders: list[Render], exit_code: int = 0) -> list[dict[str, Any]]:
        done = []
        for render in renders:
            for order in self.orders(render):
                if order.order == "start":
                    self.finish(render, order, exit_code)
                    done.append(order)
        return done


class UserSolvingTests(SchedulerTestCase):
    def expected_share(self, priorities: dict[str, int], slots: int) -> Counter[str]:
        """Greedy by need, as Afanasy: each slot to the user with the highest need."""
        running: Counter[str] = Counter()
        for _ in range(slots):
            best = max(priorities, key=lambda u: 1.1 ** priorities[u] / (running[u] + 1))
            running[best] += 1
        return running

    def test_users_by_need_share_the_farm(self) -> None:
        self.job("anna", [block(frames=100)])
        self.job("bob", [block(frames=100)])
        self.farm.user_action("root", ["bob"], "set", {"priority": 95})
        self.renders(20, capacity=1000)
        expected = self.expected_share({"anna": 99, "bob": 95}, 20)
        running = self.running_by_user()
        for user in ("anna", "bob"):
            self.assertLessEqual(abs(running[user] - expected[user]), 1, (running, expected))
        self.assertGreater(running["bob"], 5)

    def test_users_by_order(self) -> None:
        self.farm = Farm(self.clock, SchedulingConfig(admins=("root",), users_solving="order"))
        self.job("anna", [block(frames=100)])
        self.job("bob", [block(frames=100)])
        self.farm.user_action("root", ["bob"], "set", {"priority": 100})
        self.renders(10, capacity=1000)
        self.assertEqual(self.running_by_user(), Counter({"bob": 10, "anna": 0}))

    def test_a_users_jobs_by_order_then_by_need(self) -> None:
        first = self.job("anna", [block(frames=100)], name="first")
        second = self.job("anna", [block(frames=100)], name="second")
        self.renders(6, capacity=1000)
        self.assertEqual((first.counts[TaskState.RUN], second.counts[TaskState.RUN]), (6, 0))
        self.farm.user_action("root", ["anna"], "set", {"jobs_solving": "need"})
        for render in self.farm.renders.values():
            self.farm.render_action("root", [render.name], "eject")
        self.clock.advance(0)
        self.assertEqual((first.counts[TaskState.RUN], second.counts[TaskState.RUN]), (3, 3))

    def test_work_added_during_a_solve_is_seen_by_its_next_pick(self) -> None:
        """Users are sorted once a solve; a subscriber that adds work during the solve (as the
        system job does on a state change) has it taken by the next pick, as a sort before every
        pick would. Unseen, the render would be marked solved-empty for the new work and wait."""
        from farmnet.model.events import TaskStateChanged

        def add_work(event: TaskStateChanged) -> None:
            if event.task.state is TaskState.RUN and event.task.block.job.user_name == "anna":
                spec, _ = parse_job({"name": "added", "blocks": [block(frames=1)]})
                self.farm.submit(spec, "bob")

        self.farm.bus.subscribe(TaskStateChanged, add_work)
        self.job("anna", [block(frames=1)])
        render = self.render("r1", capacity=2000)  # room for two tasks of 1000: one solve
        self.assertEqual(self.running_by_user(), Counter({"anna": 1, "bob": 1}))
        self.assertEqual(sorted(task.block.job.user_name for task in render.tasks.values()), ["anna", "bob"])

    def test_user_settings_are_admin_only(self) -> None:
        self.job("anna")
        self.assertRaises(errors.PermissionDenied, self.farm.user_action, "anna", ["anna"], "set",
                          {"priority": 250})
        self.assertRaises(errors.InvalidAction, self.farm.user_action, "root", ["anna"], "set",
                          {"priority": "high"})
        self.assertRaises(errors.InvalidAction, self.farm.user_action, "root", ["nobody"], "set",
                          {"priority": 1})


class TaskOrderTests(SchedulerTestCase):
    def order_of(self, sequential: int, frames: int = 10) -> list[str]:
        self.job(blocks=[block(frames=frames, sequential=sequential)])
        [render] = self.renders(1, capacity=1000)
        seen = []
        for _ in range(frames):
            [order] = self.orders(render)
            seen.append(order.command)
            self.finish(render, order)
        return seen

    def test_forward(self) -> None:
        self.assertEqual(self.order_of(1, 4), ["echo 1", "echo 2", "echo 3", "echo 4"])

    def test_backward(self) -> None:
        self.assertEqual(self.order_of(-1, 4), ["echo 4", "echo 3", "echo 2", "echo 1"])

    def test_every_nth_first(self) -> None:
        self.assertEqual(self.order_of(5, 10)[:4], ["echo 1", "echo 10", "echo 5", "echo 2"])

    def test_middle_out(self) -> None:
        self.assertEqual(self.order_of(0, 9)[:3], ["echo 1", "echo 9", "echo 5"])


class DependencyTests(SchedulerTestCase):
    def test_job_depend_mask_same_user(self) -> None:
        sim = self.job("anna", [block(frames=1)], name="shot010_sim")
        render = self.job("anna", [block(frames=1)], name="shot010_render", depend_mask="shot010_sim")
        self.job("bob", [block(frames=1)], name="shot010_sim")  # another user's: not waited for
        renders = self.renders(1, capacity=1000)
        self.assertEqual(self.farm.scheduler.display_state(render), TaskState.WD)
        why = self.farm.explain(render.id)
        self.assertEqual(why["reasons"], [f"{Why.JOB_DEPENDS}: shot010_sim"])
        while not sim.done:
            self.finish_all(renders)
        self.finish_all(renders)
        self.finish_all(renders)
        self.assertTrue(render.done)

    def test_job_depend_mask_global(self) -> None:
        self.job("bob", [block(frames=1)], name="lighting", offline=True)
        job = self.job("anna", [block(frames=1)], name="comp", depend_mask_global="light.*")
        self.renders(1)
        self.assertEqual(job.counts[TaskState.RUN], 0)
        self.farm.job_action("bob", [1], "skip")
        self.clock.advance(0)
        self.assertEqual(job.counts[TaskState.RUN], 1)

    def test_block_depend_mask(self) -> None:
        job = self.job(blocks=[block("render", frames=2), block("stitch", frames=1, depend_mask="render")])
        renders = self.renders(3, capacity=1000)
        self.assertEqual(job.blocks[1].counts[TaskState.RUN], 0)
        self.assertEqual(self.farm.show_job(job.id).blocks[1].state, "WD")
        self.finish_all(renders)
        self.assertEqual(job.blocks[1].counts[TaskState.RUN], 1)

    def test_tasks_depend_mask_by_frames(self) -> None:
        job = self.job(blocks=[block("sim", frames=4, frames_per_task=2),
                               block("render", frames=4, tasks_depend_mask="sim")])
        [render] = self.renders(1, capacity=100_000)
        started = [o.block for o in self.orders(render)]
        self.assertEqual(started, [0, 0])  # nothing of render before its frames are simulated
        sim = job.blocks[0]
        first = self.farm.task((job.id, 0, 0))
        self.farm.task_finished(render, first.key, 1, exit_code=0, signal=None, time_started=0,
                                time_done=1)
        self.clock.advance(0)
        self.assertEqual([(o.block, o.task) for o in self.orders(render)], [(1, 0), (1, 1)])
        self.assertEqual(sim.counts[TaskState.RUN], 1)

    def test_time_wait(self) -> None:
        job = self.job(time_wait=int(self.clock.seconds()) + 100)
        [render] = self.renders(1)
        self.assertEqual(self.farm.scheduler.display_state(job), TaskState.WT)
        self.assertEqual(self.orders(render), [])
        self.clock.advance(100)
        self.clock.advance(0)
        self.assertEqual(len(self.orders(render)), 1)


class LimitTests(SchedulerTestCase):
    def test_job_max_running_tasks(self) -> None:
        job = self.job(blocks=[block(frames=10)], max_running_tasks=2)
        self.renders(5, capacity=1000)
        self.assertEqual(job.counts[TaskState.RUN], 2)
        self.assertIn(str(Why.JOB_LIMIT), self.farm.explain(job.id)["reasons"])

    def test_block_max_running_tasks_per_host(self) -> None:
        job = self.job(blocks=[block(frames=10, max_running_tasks_per_host=1)])
        self.renders(2, capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 2)

    def test_user_limits(self) -> None:
        self.job("anna", [block(frames=10)])
        self.farm.user_action("root", ["anna"], "set", {"max_running_tasks": 3})
        self.renders(5, capacity=1000)
        self.assertEqual(self.farm.users["anna"].running, 3)

    def test_hosts_masks(self) -> None:
        job = self.job(blocks=[block(frames=10, hosts_mask_exclude="farm-0")], hosts_mask="farm-.*")
        self.renders(2, prefix="farm-", capacity=1000)
        self.renders(2, prefix="ws-", capacity=1000)
        self.assertEqual({t.host for t in job.blocks[0].tasks if t.state is TaskState.RUN}, {"farm-1"})
        why = self.farm.explain(job.id)["blocks"][0]["renders"]
        self.assertEqual(why, {str(Why.JOB_MASK): 2, str(Why.BLOCK_MASK): 1, str(Why.BUSY): 1})

    def test_services_disabled_wins(self) -> None:
        job = self.job(blocks=[block(service="nuke")])
        self.render("a", services=["nuke"], services_disabled=["nuke"])
        self.assertEqual(job.counts[TaskState.RUN], 0)
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"], {str(Why.SERVICE): 1})

    def test_block_capacity_too_big(self) -> None:
        job = self.job(blocks=[block(capacity=5000)])
        self.renders(1)
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"], {str(Why.TOO_SMALL): 1})


class TicketTests(SchedulerTestCase):
    settings = SchedulingConfig(admins=("root",), tickets={"NUKE": 2}, tickets_per_host={"NUKE": 1})

    def test_farm_and_host_tickets(self) -> None:
        job = self.job(blocks=[block(frames=10, tickets={"NUKE": 1})])
        renders = self.renders(4, capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 2)
        self.assertEqual(sorted(r.tickets_used["NUKE"] for r in renders), [0, 0, 1, 1])
        why = self.farm.explain(job.id)["blocks"][0]["reasons"]
        self.assertEqual(why, [f"{Why.TICKETS}: NUKE 2/2 in use, needs 1"])
        self.finish_all(renders)
        self.assertEqual(job.counts[TaskState.RUN], 2)  # freed tickets are used again
        self.assertEqual(self.farm.tickets_used["NUKE"], 2)


class ErrorRuleTests(SchedulerTestCase):
    settings = SchedulingConfig(admins=("root",), errors_forgive_time=600, sick_errors_count=0)

    def test_block_avoids_a_host_and_forgives_it(self) -> None:
        job = self.job(blocks=[block(frames=20, errors_avoid_host=2, errors_retries=10)])
        bad, good = self.render("bad", capacity=1000), self.render("good", capacity=1000)
        for _ in range(2):
            [order] = self.orders(bad)
            self.finish(bad, order, exit_code=1)
        self.assertEqual(self.orders(bad), [])
        self.assertIn(str(Why.AVOIDED), self.farm.explain(job.id)["blocks"][0]["renders"])
        self.finish_all([good])
        self.clock.advance(600)
        bad.solved_empty_at = -1
        self.farm.renders_to_visit.add(bad.id)
        self.farm.request_solve()
        self.clock.advance(0)
        self.assertEqual(len(self.orders(bad)), 1)

    def test_reset_error_hosts_of_a_job_a_block_and_a_render(self) -> None:
        """After restart-errors the block still avoids the host until its error hosts are reset
        (Afanasy's "reset error hosts"), for a job, one block, or everything about one render."""
        job = self.job(blocks=[block(name, frames=20, errors_avoid_host=1, errors_task_same_host=1,
                                     errors_retries=10) for name in ("a", "b")])
        bad = self.render("bad", capacity=1000)
        for _ in range(2):  # one failure in each block
            [order] = self.orders(bad)
            self.finish(bad, order, exit_code=1)
        self.assertEqual(self.orders(bad), [])
        self.farm.job_action("anna", [job.id], "restart_errors")
        self.clock.advance(0)
        self.assertEqual(self.orders(bad), [])
        self.assertIn(str(Why.AVOIDED), self.farm.explain(job.id)["blocks"][1]["renders"])

        with self.assertRaises(errors.UnknownTask):
            self.farm.job_action("anna", [job.id], "reset_error_hosts", {"block": 2})
        self.farm.job_action("anna", [job.id], "reset_error_hosts", {"block": 1})
        self.clock.advance(0)
        [order] = self.orders(bad)
        self.assertEqual(order.block, 1)
        self.assertEqual(self.farm.show_job(job.id).blocks[0].avoided_hosts, ["bad"])
        self.assertEqual(self.farm.show_job(job.id).blocks[1].avoided_hosts, [])

        with self.assertRaises(errors.PermissionDenied):  # a render's errors are the admins' business
            self.farm.render_action("anna", ["bad"], "reset_error_hosts")
        self.farm.render_action("root", ["bad"], "reset_error_hosts")
        self.assertEqual([b.avoided_hosts for b in self.farm.show_job(job.id).blocks], [[], []])
        self.assertTrue(all(t.host_errors is None for b in job.blocks for t in b.tasks))

    def test_task_avoids_its_failing_host(self) -> None:
        job = self.job(blocks=[block(frames=1, errors_task_same_host=1, errors_avoid_host=0)])
        a = self.render("a", capacity=1000)
        [order] = self.orders(a)
        self.finish(a, order, exit_code=1)
        self.assertEqual(self.orders(a), [])
        b = self.render("b", capacity=1000)
        [again] = self.orders(b)
        self.assertEqual((again.task, again.run), (0, 2))
        self.assertEqual(job.blocks[0].tasks[0].host, "b")

    def test_error_settings_cascade_user_job_block(self) -> None:
        job = self.job(blocks=[block(), block("c", errors_retries=7)], errors_retries=5)
        self.farm.user_action("root", ["anna"], "set", {"errors_retries": 1})
        self.assertEqual(self.farm.setting(job.blocks[0], "errors_retries"), 5)
        self.assertEqual(self.farm.setting(job.blocks[1], "errors_retries"), 7)
        other = self.job(blocks=[block()])
        self.assertEqual(self.farm.setting(other.blocks[0], "errors_retries"), 1)
        self.assertEqual(self.farm.setting(other.blocks[0], "errors_avoid_host"), 3)

    def test_render_gets_sick_and_is_healed(self) -> None:
        self.farm = Farm(self.clock, SchedulingConfig(admins=("root",), sick_errors_count=2))
        sick = []
        self.farm.bus.subscribe(RenderSick, lambda e: sick.append(e.render.name))
        self.job("anna", [block(frames=1, errors_retries=0)], name="a")
        self.job("bob", [block(frames=5)], name="b")
        render = self.render("r", capacity=1000)
        for _ in range(2):
            [order] = self.orders(render)
            self.finish(render, order, exit_code=1)
        self.assertEqual((render.sick, sick), (True, ["r"]))
        self.assertEqual(self.orders(render), [])
        self.assertEqual([e.job_id for e in render_errors(render)], [1, 2])
        self.assertRaises(errors.PermissionDenied, self.farm.render_action, "anna", ["r"], "heal")
        self.farm.render_action("root", ["r"], "heal")
        self.clock.advance(0)
        self.assertEqual(len(self.orders(render)), 1)


class TimeLimitTests(SchedulerTestCase):
    def test_task_max_run_time_kills_and_errs(self) -> None:
        job = self.job(blocks=[block(frames=1, task_max_run_time=60, errors_retries=0)])
        [render] = self.renders(1)
        [start] = self.orders(render)
        self.clock.advance(60)
        [kill] = self.orders(render)
        self.assertEqual((kill.order, kill.run), ("kill", start.run))
        self.assertIn("task_max_run_time", kill.reason)
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.ERR)
        self.finish(render, start, exit_code=None)  # the killed run's report changes nothing
        self.assertEqual(job.blocks[0].tasks[0].errors_count, 1)

    def test_task_min_run_time(self) -> None:
        job = self.job(blocks=[block(frames=1, task_min_run_time=10, errors_retries=0)])
        [render] = self.renders(1)
        [start] = self.orders(render)
        self.finish(render, start)  # 1 s run (time_started 1, time_done 2)
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.ERR)

    def test_progress_change_timeout(self) -> None:
        job = self.job(blocks=[block(frames=1, task_progress_change_timeout=30, errors_retries=0)])
        [render] = self.renders(1)
        [start] = self.orders(render)
        key = (start.job_id, start.block, start.task)
        self.clock.advance(20)
        self.farm.task_output(render, key, start.run, 10)
        self.clock.advance(20)
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.RUN)
        self.clock.advance(11)
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.ERR)


class ActionRuleTests(SchedulerTestCase):
    def test_stop_pauses_and_returns_running_to_ready(self) -> None:
        job = self.job(blocks=[block(frames=3)])
        [render] = self.renders(1)
        self.orders(render)
        self.farm.job_action("anna", [job.id], "stop")
        self.clock.advance(0)
        [kill] = self.orders(render)
        self.assertEqual(kill.order, "kill")
        self.assertEqual((job.state, job.counts[TaskState.RDY]), (TaskState.OFF, 3))

    def test_skip_and_task_actions(self) -> None:
        job = self.job(blocks=[block(frames=3)])
        self.farm.task_action("anna", job.id, 0, [1], "skip")
        self.assertEqual(job.blocks[0].tasks[1].state, TaskState.SKP)
        self.farm.task_action("anna", job.id, 0, [1], "restart")
        self.assertEqual(job.blocks[0].tasks[1].state, TaskState.RDY)
        self.assertRaises(errors.PermissionDenied, self.farm.task_action, "bob", job.id, 0, [1], "skip")
        self.farm.job_action("anna", [job.id], "skip")
        self.assertEqual(job.state, TaskState.DON)

    def test_render_nimby_NIMBY_pause_eject_exit(self) -> None:
        self.job("anna", [block(frames=10)])
        self.job("bob", [block(frames=10)])
        render = self.render("ws1", capacity=1000, owner="bob")
        self.assertEqual(len(self.orders(render)), 1)
        self.farm.render_action("bob", ["ws1"], "eject")
        self.farm.render_action("bob", ["ws1"], "nimby")
        self.clock.advance(0)
        [order] = [o for o in self.orders(render) if o.order == "start"]
        self.assertEqual(self.farm.job(order.job_id).user_name, "bob")
        self.farm.render_action("bob", ["ws1"], "NIMBY")
        self.farm.render_action("bob", ["ws1"], "eject")
        self.clock.advance(0)
        self.assertEqual([o.order for o in self.orders(render)], ["kill"])
        self.assertEqual(render.state, "NIMBY nimby online")
        self.assertRaises(errors.PermissionDenied, self.farm.render_action, "anna", ["ws1"], "free")
        self.farm.render_action("root", ["ws1"], "exit")
        self.assertEqual(self.orders(render), [ExitOrder()])

    def test_set_job_and_block_parameters(self) -> None:
        job = self.job(blocks=[block(frames=10)])
        self.farm.job_action("anna", [job.id], "set", {"max_running_tasks": 1, "hosts_mask": "r.*"})
        self.farm.job_action("anna", [job.id], "set_block", {"block": 0, "capacity": 500})
        self.renders(1, capacity=1100)
        self.assertEqual(job.counts[TaskState.RUN], 1)
        self.assertRaises(errors.InvalidAction, self.farm.job_action, "anna", [job.id], "set",
                          {"hosts_mask": "("})
        self.assertRaises(errors.InvalidAction, self.farm.job_action, "anna", [job.id], "set",
                          {"name": "renamed"})


class ExplainTests(SchedulerTestCase):
    def test_paused_job(self) -> None:
        job = self.job(offline=True)
        self.assertEqual(self.farm.explain(job.id)["reasons"], [str(Why.PAUSED)])

    def test_all_fitting_renders_busy_and_offline(self) -> None:
        self.job("anna", [block(frames=1)], name="first")
        job = self.job("anna", [block(frames=1)], name="second")
        [render] = self.renders(1)
        self.render("gone")
        self.farm.render_lost(self.farm.render_named("gone"))
        why = self.farm.explain(job.id)["blocks"][0]
        self.assertEqual(why["renders"], {str(Why.BUSY): 1, str(Why.OFFLINE): 1})
        self.assertEqual(why["can_run_on"], [])
        self.assertIs(render, self.farm.render_named("r0"))

