"""The farm model and its first scheduler, without sockets, on a `task.Clock`."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.messages import Order, StartOrder, TaskRef
from farmnet.model.data import Render, TaskState
from farmnet.model.events import OrdersQueued
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.monitors import POOL_COALESCE_RENDERS, POOL_RECORD_INTERVAL, EventLog


def job_doc(name: str = "job", frames: int = 3, **extra: Any) -> dict[str, Any]:
    block = {"name": "render", "command": "echo @####@", "frame_first": 1, "frame_last": frames}
    block.update(extra.pop("block", {}))
    return {"job": {"name": name, "blocks": [block], **extra}}


class FarmTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.farm = Farm(self.clock, SchedulingConfig(admins=("root",), task_reconnect_timeout=30))
        self.woken: list[str] = []
        self.farm.bus.subscribe(OrdersQueued, lambda e: self.woken.append(e.render.name))
        self.events = EventLog(self.farm)

    def submit(self, user: str = "anna", **kw: Any):
        spec, _ = parse_job(job_doc(**kw))
        job = self.farm.submit(spec, user)
        self.clock.advance(0)
        return job

    def render(self, name: str = "r1", capacity: int = 1100, **kw: Any) -> Render:
        render = self.farm.register_render(name, capacity=capacity, **kw)
        self.clock.advance(0)
        return render

    def orders(self, render: Render) -> list[Order]:
        return self.farm.take_orders(render)

    def finish(self, render: Render, order: StartOrder, exit_code: int = 0) -> None:
        key = order.key
        self.farm.task_finished(render, key, order.run, exit_code=exit_code, signal=None,
                                time_started=1.0, time_done=2.0)
        self.clock.advance(0)


class DispatchTests(FarmTestCase):
    def test_idle_render_gets_order_at_once(self) -> None:
        render = self.render()
        self.submit()
        self.assertEqual(self.woken, ["r1"])
        [order] = self.orders(render)
        self.assertEqual(order.command, "echo 0001")
        self.assertEqual(order.environment["FARMNET_FRAME_START"], "1")

    def test_finish_hands_the_next_task(self) -> None:
        render = self.render()
        job = self.submit(frames=3)
        for frame in ("0001", "0002", "0003"):
            [order] = self.orders(render)
            self.assertEqual(order.command, f"echo {frame}")
            self.finish(render, order)
        self.assertEqual(job.state, TaskState.DON)
        self.assertEqual(self.orders(render), [])
        self.assertEqual(self.farm.users["anna"].ready_jobs, [])

    def test_capacity_bounds_parallel_tasks(self) -> None:
        render = self.render(capacity=2500)
        self.submit(frames=5, block={"capacity": 1000})
        self.assertEqual(len(self.orders(render)), 2)

    def test_max_tasks(self) -> None:
        render = self.render(capacity=10_000, max_tasks=3)
        self.submit(frames=5)
        self.assertEqual(len(self.orders(render)), 3)

    def test_priority_then_submission_order(self) -> None:
        low = self.submit(name="low", priority=10)
        first = self.submit(name="first", priority=50)
        second = self.submit(name="second", priority=50)
        render = self.render(capacity=1000)
        picked = []
        for _ in range(9):
            [order] = self.orders(render)
            picked.append(order.job_id)
            self.finish(render, order)
        self.assertEqual(picked, [first.id] * 3 + [second.id] * 3 + [low.id] * 3)

    def test_services(self) -> None:
        nuke = self.render("nuke-only", services=["nuke"])
        anything = self.render("any", services_disabled=["nuke"])
        self.submit(block={"service": "nuke"})
        self.assertEqual(len(self.orders(nuke)), 1)
        self.assertEqual(self.orders(anything), [])

    def test_hosts_mask(self) -> None:
        a = self.render("farm-a1")
        b = self.render("farm-b1")
        self.submit(hosts_mask="farm-b.*")
        self.assertEqual(self.orders(a), [])
        self.assertEqual(len(self.orders(b)), 1)

    def test_idle_render_is_not_resolved_until_new_work(self) -> None:
        render = self.render()
        picks = []
        original = self.farm.scheduler.pick
        self.farm.scheduler.pick = lambda r, users, now: picks.append(r) or original(r, users, now)  # type: ignore[method-assign]
        for _ in range(3):  # registration already found nothing for it
            self.farm.request_solve()
            self.clock.advance(0)
        self.assertEqual(picks, [])
        self.submit()
        self.assertEqual(picks, [render])  # one task; the 100 capacity left fits no block: no scan
        self.assertEqual(len(self.orders(render)), 1)


class ErrorTests(FarmTestCase):
    def test_retries_then_error(self) -> None:
        render = self.render()
        job = self.submit(frames=1, block={"errors_retries": 2})
        for _ in range(3):
            [order] = self.orders(render)
            self.finish(render, order, exit_code=1)
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.state, task.errors_count, task.starts_count), (TaskState.ERR, 3, 3))
        self.assertEqual(job.state, TaskState.ERR)

    def test_farm_default_retries(self) -> None:
        renders = [self.render(f"r{i}") for i in range(4)]
        job = self.submit(frames=1)
        for _ in range(4):
            [order] = [o for r in renders for o in self.orders(r)]
            self.finish(self.farm.renders_by_name[self.farm.task((job.id, 0, 0)).host], order, exit_code=1)
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.ERR)

    def test_finish_counted_once(self) -> None:
        render = self.render()
        job = self.submit(frames=2)
        [order] = self.orders(render)
        self.finish(render, order)
        self.finish(render, order)  # repeated report
        self.assertEqual(job.counts[TaskState.DON], 1)
        self.assertEqual(render.capacity_used, 1000)

    def test_report_of_an_old_run_is_ignored(self) -> None:
        render = self.render()
        job = self.submit(frames=1)
        [order] = self.orders(render)
        self.farm.job_action("anna", [job.id], "restart")
        self.clock.advance(0)
        stale = attrs.evolve(order, run=order.run - 1)
        self.finish(render, stale)
        self.assertNotEqual(job.state, TaskState.DON)


class RenderLifeTests(FarmTestCase):
    def test_lost_render_tasks_wait_then_run_elsewhere(self) -> None:
        r1 = self.render("r1")
        job = self.submit(frames=1)
        self.orders(r1)
        self.farm.render_lost(r1)
        task = job.blocks[0].tasks[0]
        self.assertEqual(task.state, TaskState.WRC)
        r2 = self.render("r2")
        self.assertEqual(self.orders(r2), [])
        self.clock.advance(30)
        self.clock.advance(0)
        [order] = self.orders(r2)
        self.assertEqual(order.run, 2)

    def test_reconnecting_render_reattaches_its_task(self) -> None:
        r1 = self.render("r1")
        job = self.submit(frames=1)
        [order] = self.orders(r1)
        self.farm.render_lost(r1)
        ref = order.ref()
        again = self.render("r1", running=[ref])
        self.assertIs(again, r1)
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.state, task.starts_count), (TaskState.RUN, 1))
        self.clock.advance(60)  # the reconnect timer was cancelled
        self.assertEqual(task.state, TaskState.RUN)
        self.finish(r1, order)
        self.assertEqual(job.state, TaskState.DON)
    def test_finish_of_a_waiting_task_frees_nothing_twice(self) -> None:
        """A render marked lost (a zombie) may still report a finish: the run's capacity and
        counts were freed when it was lost, so the finish must not free them again (the user's
        running count went to -1 and its need, which the scheduler sorts by, went negative)."""
        r1 = self.render("r1")
        job = self.submit(frames=2)
        orders = self.orders(r1)
        self.farm.render_lost(r1)
        task = job.blocks[0].tasks[0]
        self.assertEqual(task.state, TaskState.WRC)
        self.finish(r1, orders[0])
        user, block = self.farm.users["anna"], job.blocks[0]
        self.assertEqual((task.state, task.render_id), (TaskState.DON, 0))
        self.assertEqual((user.running, user.running_capacity, block.running_capacity), (0, 0, 0))
        self.assertEqual((r1.running_of_user("anna"), r1.running_of_block(block)), (0, 0))
        self.assertEqual(r1.waiting, {})
        self.clock.advance(60)  # its reconnect timer was cancelled with the wait
        self.assertEqual(task.state, TaskState.DON)


    def test_render_reporting_an_unwanted_task_is_told_to_kill_it(self) -> None:
        render = self.render("r1", running=[TaskRef(99, 0, 0, 1)])
        [order] = self.orders(render)
        self.assertEqual((order.order, order.job_id), ("kill", 99))

    def test_undelivered_start_is_ready_again_on_loss(self) -> None:
        """Ready again, and its run number stays used: the run may be committed already,
        and a run number never repeats."""
        r1 = self.render("r1")
        job = self.submit(frames=1)
        self.farm.render_lost(r1)  # the start order was never taken
        task = job.blocks[0].tasks[0]
        self.assertEqual((task.state, task.starts_count), (TaskState.RDY, 1))
        r2 = self.render("r2")
        [order] = self.orders(r2)
        self.assertEqual(order.run, 2)

    def test_render_back_without_its_task_frees_it_at_once(self) -> None:
        """A render that lost its task (it restarted, or the start never reached it)
        re-registers without it: the task is ready again now, not after
        task_reconnect_timeout."""
        r1 = self.render("r1")
        job = self.submit(frames=1)
        self.orders(r1)
        self.farm.render_lost(r1)
        task = job.blocks[0].tasks[0]
        self.assertEqual(task.state, TaskState.WRC)
        self.assertEqual(r1.waiting, {task.key: task})
        self.render("r1")  # running nothing
        self.assertEqual(r1.waiting, {})
        [order] = self.orders(r1)
        self.assertEqual((task.state, order.run), (TaskState.RUN, 2))
        self.clock.advance(60)  # no reconnect timer is left to fire
        self.assertEqual((task.state, task.starts_count), (TaskState.RUN, 2))

    def test_reconnect_wait_counts_from_time_lost(self) -> None:
        r1 = self.render("r1")
        job = self.submit(frames=1)
        self.orders(r1)
        self.clock.advance(100)
        self.farm.render_lost(r1)
        task = job.blocks[0].tasks[0]
        self.assertEqual(task.time_lost, 100)
        self.clock.advance(29)
        self.assertEqual(task.state, TaskState.WRC)
        self.clock.advance(1)
        self.assertEqual((task.state, task.time_lost, task.render_id), (TaskState.RDY, 0.0, 0))

    def test_deleting_a_render_frees_its_waiting_tasks(self) -> None:
        r1 = self.render("r1")
        job = self.submit(frames=1)
        self.orders(r1)
        self.farm.render_lost(r1)
        self.farm.delete_renders("root", ["r1"])
        self.assertEqual(job.blocks[0].tasks[0].state, TaskState.RDY)


class ActionTests(FarmTestCase):
    def test_only_owner_or_admin(self) -> None:
        job = self.submit(user="anna")
        self.assertRaises(errors.PermissionDenied, self.farm.job_action, "bob", [job.id], "pause")
        self.farm.job_action("root", [job.id], "pause")
        self.assertTrue(job.paused)

    def test_submit_as_someone_else_needs_admin(self) -> None:
        spec, _ = parse_job(job_doc(user_name="anna"))
        self.assertRaises(errors.PermissionDenied, self.farm.submit, spec, "bob")
        self.assertEqual(self.farm.submit(spec, "root").user_name, "anna")

    def test_pause_and_resume(self) -> None:
        job = self.submit(frames=2)
        self.farm.job_action("anna", [job.id], "pause")
        render = self.render()
        self.assertEqual(self.orders(render), [])
        self.assertEqual(job.state, TaskState.OFF)
        self.farm.job_action("anna", [job.id], "resume")
        self.clock.advance(0)
        self.assertEqual(len(self.orders(render)), 1)

    def test_delete_kills_running(self) -> None:
        render = self.render()
        job = self.submit()
        [start] = self.orders(render)
        self.farm.job_action("anna", [job.id], "delete")
        self.clock.advance(0)
        [kill] = self.orders(render)
        self.assertEqual((kill.order, kill.job_id, kill.run), ("kill", job.id, start.run))
        self.assertNotIn(job.id, self.farm.jobs)
        self.assertEqual(render.capacity_used, 0)
        self.assertRaises(errors.UnknownJob, self.farm.show_job, job.id)

    def test_restart_errors(self) -> None:
        render = self.render()
        job = self.submit(frames=1, block={"errors_retries": 0})
        [order] = self.orders(render)
        self.finish(render, order, exit_code=1)
        self.assertEqual(job.state, TaskState.ERR)
        self.farm.job_action("anna", [job.id], "restart_errors")
        self.clock.advance(0)
        [order] = self.orders(render)
        self.finish(render, order)
        self.assertEqual(job.state, TaskState.DON)

    def test_set_priority_reorders(self) -> None:
        a = self.submit(name="a")
        b = self.submit(name="b")
        self.farm.job_action("anna", [b.id], "set_priority", 200)
        self.assertEqual(self.farm.users["anna"].ready_jobs, [b, a])
        self.assertRaises(errors.InvalidAction, self.farm.job_action, "anna", [b.id], "set_priority", 999)
        self.assertRaises(errors.InvalidAction, self.farm.job_action, "anna", [b.id], "explode")

    def test_events_follow_changes(self) -> None:
        render = self.render()
        self.submit(frames=1)
        [order] = self.orders(render)
        self.finish(render, order)
        kinds = [e.kind for e in self.events.since(0)[0]]
        self.assertIn("job", kinds)
        self.assertEqual([e.state for e in self.events.since(0)[0] if e.kind == "task"],
                         ["RUN", "DON"])

    def pool_events(self) -> list[tuple[str, list[str]]]:
        return [(e.pool.path, e.pool.renders) for e in self.events.since(0)[0] if e.kind == "pool"]

    def test_pool_recorded_once_per_interval_while_renders_join(self) -> None:
        """Each new render changes its pool, whose record lists every render: a burst of
        them makes a record at once and one at the end of the interval, not one each."""
        names = [f"r{i:03d}" for i in range(POOL_COALESCE_RENDERS + 50)]
        for name in names:
            self.render(name)
        # Recorded at each change while small, then once it is big, then after the interval.
        small = [("/", names[: i + 1]) for i in range(POOL_COALESCE_RENDERS - 1)]
        self.assertEqual(self.pool_events(), small)
        self.clock.advance(POOL_RECORD_INTERVAL)
        self.assertEqual(self.pool_events(), [*small, ("/", names)])
        self.clock.advance(POOL_RECORD_INTERVAL)  # nothing changed in that interval
        self.render("late")
        self.assertEqual(len(self.pool_events()), POOL_COALESCE_RENDERS + 1)
        self.assertIn("late", self.pool_events()[-1][1])


class ListingTests(FarmTestCase):
    def test_tasks_paged_across_blocks(self) -> None:
        spec, _ = parse_job({"name": "j", "blocks": [
            {"name": "a", "command": "x @#@", "frame_first": 1, "frame_last": 5},
            {"name": "b", "tasks": [{"name": f"t{i}", "command": "y"} for i in range(5)]}]})
        job = self.farm.submit(spec, "anna")
        page, total = self.farm.list_tasks(job.id, None, 3, 4)
        self.assertEqual(total, 10)
        self.assertEqual([(t.block, t.name) for t in page],
                         [(0, "frame 4"), (0, "frame 5"), (1, "t0"), (1, "t1")])
        self.assertRaises(errors.UnknownTask, self.farm.list_tasks, job.id, 7, 0, 10)


class ParserReportTests(FarmTestCase):
    """What a render's parser reports besides output: per-frame progress and warnings."""

    def test_frame_and_warning_kept_per_run(self) -> None:
        render = self.render()
        self.submit(frames=4, block={"frames_per_task": 4, "frames_inc": 1, "errors_retries": 1})
        [order] = self.orders(render)
        self.assertEqual((order.frame_start, order.frame_end, order.frames_inc), (1, 4, 1))
        key = order.key
        self.farm.task_output(render, key, order.run, 37, frame=1, percent_frame=50)
        self.farm.task_output(render, key, order.run, None, warning="Unable to load texture a.rat")
        self.farm.task_output(render, key, order.run, None, warning="a later warning")  # the first stays
        task = self.farm.task(key)
        self.assertEqual((task.progress, task.frame, task.percent_frame, task.warning),
                         (37, 1, 50, "Unable to load texture a.rat"))
        [record] = self.farm.list_tasks(order.job_id, 0, 0, 10)[0]
        self.assertEqual((record.warning, record.frame, record.percent_frame),
                         ("Unable to load texture a.rat", 1, 50))
        self.farm.task_output(render, key, order.run + 1, 90, warning="stale run")  # not current: ignored
        self.assertEqual((task.progress, task.warning), (37, "Unable to load texture a.rat"))
        self.finish(render, order, exit_code=1)  # retried: the next run starts clean
        [again] = self.orders(render)
        self.assertEqual((again.run, task.warning, task.frame, task.percent_frame), (2, "", 0, 0))

    def test_frames_inc_in_the_start_order(self) -> None:
        render = self.render()
        self.submit(frames=20, block={"frames_per_task": 6, "frames_inc": 3})
        [order] = self.orders(render)
        self.assertEqual((order.frame_start, order.frame_end, order.frames_inc), (1, 16, 3))

    def test_fatal_parser_error_is_not_retried(self) -> None:
        render = self.render()
        self.submit(frames=2, block={"errors_retries": 3})
        [first] = self.orders(render)
        self.farm.task_finished(render, first.key, first.run, exit_code=None, signal=None, time_started=1.0,
                                time_done=2.0, fatal=True,
                                message="generic parser found an error: [ PARSER FATAL ERROR ]")
        self.clock.advance(0)
        task = self.farm.task(first.key)
        self.assertEqual((task.state, task.errors_count), (TaskState.ERR, 1))
        [second] = self.orders(render)  # an ordinary failure is retried
        self.farm.task_finished(render, second.key, second.run, exit_code=1, signal=None, time_started=1.0,
                                time_done=2.0)
        self.assertEqual(self.farm.task(second.key).state, TaskState.RDY)


class StartEnvironmentTests(FarmTestCase):
    """A block's start environment is built once and reused: what each start order carries must
    still follow the block's and the task's variables."""

    def test_variables_per_task(self) -> None:
        render = self.render()
        job = self.submit(name="shot", frames=2, block={"environment": {"SCENE": "a", "FARMNET_USER": "x"}})
        [first] = self.orders(render)
        self.assertEqual(first.environment["SCENE"], "a")
        self.assertEqual(first.environment["FARMNET_USER"], "anna")  # the farm's variables win
        self.assertEqual((first.environment["FARMNET_JOB_NAME"], first.environment["FARMNET_TASK"],
                          first.environment["FARMNET_FRAME_END"]), ("shot", "0", "1"))
        self.farm.job_action("anna", [job.id], "set_block", {"block": 0, "service": "blender"})
        self.finish(render, first)
        [second] = self.orders(render)
        self.assertEqual((second.environment["FARMNET_JOB_NAME"], second.environment["AF_TASK_ID"],
                          second.environment["FARMNET_TASK_NAME"]), ("shot", "1", "frame 2"))
        self.assertEqual(second.service, "blender")
        self.assertEqual(list(second.environment), list(first.environment))  # same keys, same order

    def test_explicit_tasks_lay_their_variables_over_the_block(self) -> None:
        render = self.render()
        spec, _ = parse_job({"job": {"name": "tiles", "blocks": [{
            "name": "tile", "command": "tile ", "environment": {"SCENE": "a", "TILE": "none"},
            "tasks": [{"name": "t0", "command": "0", "environment": {"TILE": "0"}},
                      {"name": "t1", "command": "1"}]}]}})
        self.farm.submit(spec, "anna")
        self.clock.advance(0)
        [first] = self.orders(render)
        self.assertEqual((first.environment["SCENE"], first.environment["TILE"]), ("a", "0"))
        self.finish(render, first)
        [second] = self.orders(render)
        environment = second.environment
        self.assertEqual((environment["TILE"], environment["FARMNET_TASK_NAME"]), ("none", "t1"))
