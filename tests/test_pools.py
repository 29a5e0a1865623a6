"""Render pools and job branches on the model, on a `task.Clock`: placement, routing,
limits, solving through the branch tree, actions, and the store across a restart."""

from __future__ import annotations

from pathlib import Path

from test_scheduler import SchedulerTestCase, block

from farmnet import errors
from farmnet.model.data import TaskState
from farmnet.model.events import BranchChanged, PoolChanged
from farmnet.model.farm import Farm
from farmnet.model.pools import clean_path, job_branch_path, job_may_run_in
from farmnet.model.scheduler import Why
from farmnet.server.actions import act
from farmnet.server.store import Store


def running_hosts(job) -> set[str]:
    return {t.host for b in job.blocks for t in b.tasks if t.state is TaskState.RUN}


class PoolTests(SchedulerTestCase):
    def pool(self, path: str, **settings) -> None:
        self.farm.pool_action("root", path, "create", settings or None)

    def test_new_render_goes_in_the_pool_its_name_matches(self) -> None:
        self.pool("/farm", pattern="farm-.*")
        self.pool("/farm/gpu", pattern="farm-gpu.*")
        self.pool("/ws", pattern="ws-.*")
        placed = {r.name: r.pool.path for r in [self.render("farm-01"), self.render("farm-gpu-1"),
                                                 self.render("ws-anna"), self.render("laptop")]}
        self.assertEqual(placed, {"farm-01": "/farm", "farm-gpu-1": "/farm/gpu", "ws-anna": "/ws",
                                  "laptop": "/"})
        # A child's pattern is only looked at when its parent's matched (Afanasy's tree walk).
        self.pool("/other", pattern="nomatch")
        self.pool("/other/gpu", pattern="farm-gpu-2")
        self.assertEqual(self.render("farm-gpu-2").pool.path, "/farm/gpu")

    def test_disabled_service_never_runs_in_the_pool(self) -> None:
        self.pool("/ws", pattern="ws-.*", services_disabled=["nuke"])
        nuke = self.job(blocks=[block(frames=20, service="nuke")], name="comp")
        ws = self.render("ws-1", capacity=10_000)
        farm_render = self.render("farm-1", capacity=10_000)
        self.assertEqual(running_hosts(nuke), {"farm-1"})
        self.assertFalse(ws.tasks)
        why = self.farm.explain(nuke.id)["blocks"][0]["renders"]
        self.assertEqual(why, {f"{Why.POOL_SERVICE} (/ws)": 1, str(Why.BUSY): 1})
        self.finish_all([farm_render])
        self.assertEqual(running_hosts(nuke), {"farm-1"})

    def test_services_listed_in_a_pool_are_the_only_ones(self) -> None:
        self.pool("/gpu", pattern="gpu.*", services=["blender"])
        generic = self.job(blocks=[block(frames=2)], name="generic")
        gpu = self.render("gpu1", capacity=10_000)
        self.assertEqual(generic.counts[TaskState.RUN], 0)
        blender = self.job(blocks=[block(frames=2, service="blender")], name="b")
        self.assertEqual(running_hosts(blender), {"gpu1"})
        self.assertEqual(len(gpu.tasks), 2)
        # The root lists nothing: a render there runs anything.
        self.render("other", capacity=10_000)
        self.assertEqual(running_hosts(generic), {"other"})

    def test_pool_limits(self) -> None:
        self.pool("/farm", pattern="r.*", max_running_tasks=3, max_tasks_host=1)
        job = self.job(blocks=[block(frames=10)])
        renders = self.renders(5, capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 3)
        self.assertTrue(all(len(r.tasks) <= 1 for r in renders))
        pool = self.farm.trees.pool("/farm")
        self.assertEqual((pool.running, self.farm.trees.root_pool.running), (3, 3))
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"],
                         {f"{Why.POOL_MAX_TASKS} (/farm)": 3, f"{Why.POOL_LIMIT} (/farm)": 2})
        self.finish_all(renders)
        self.assertEqual(job.counts[TaskState.RUN], 3)
        self.assertEqual(pool.running, 3)
        self.farm.pool_action("root", "/farm", "set", {"max_running_tasks": -1})
        self.clock.advance(0)
        self.assertEqual(job.counts[TaskState.RUN], 5)

    def test_pool_tickets(self) -> None:
        self.pool("/farm", pattern="r.*", tickets_pool={"NUKE": 2}, tickets_host={"NUKE": 1})
        job = self.job(blocks=[block(frames=10, tickets={"NUKE": 1})])
        self.renders(4, capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 2)
        self.assertEqual(self.farm.trees.pool("/farm").tickets_used["NUKE"], 2)
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"],
                         {f"{Why.POOL_TICKETS} (/farm)": 4})

    def test_paused_pool_and_priority(self) -> None:
        self.pool("/slow", pattern="slow.*", priority=10)
        self.pool("/fast", pattern="fast.*", priority=200)
        slow = self.render("slow1", capacity=1000)
        fast = self.render("fast1", capacity=1000)
        self.farm.pool_action("root", "/fast", "set", {"paused": True})
        job = self.job(blocks=[block(frames=1)])
        self.assertEqual(running_hosts(job), {"slow1"})
        self.finish_all([slow])
        self.farm.pool_action("root", "/fast", "set", {"paused": False})
        job2 = self.job(blocks=[block(frames=1)], name="second")
        # Both are idle: the higher-priority pool's render is offered the work first.
        self.assertEqual(running_hosts(job2), {"fast1"})
        self.assertTrue(fast.tasks)

    def test_new_render_defaults(self) -> None:
        self.pool("/ws", pattern="ws.*", capacity_host=500, new_nimby=True)
        ws = self.render("ws1", capacity=4000)
        self.assertEqual((ws.capacity, ws.nimby), (500, True))
        ws.nimby = False
        self.farm.render_lost(ws)
        self.render("ws1", capacity=4000)  # registers again: not new, stays as set
        self.assertEqual((ws.capacity, ws.nimby), (500, False))
        self.pool("/ws/big", pattern="ws1")
        self.farm.pool_action("root", "/ws/big", "move", {"renders": ["ws1"]})
        self.farm.pool_action("root", "/ws", "set", {"capacity_host": 800})  # inherited below
        self.assertEqual(ws.capacity, 800)

    def test_move_render_carries_its_running_tasks(self) -> None:
        self.pool("/a", max_running_tasks=5)
        self.pool("/b")
        job = self.job(blocks=[block(frames=2)])
        render = self.render("r1", capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 2)
        self.farm.pool_action("root", "/a", "move", {"renders": ["r1"]})
        self.assertEqual(self.farm.trees.pool("/a").running, 2)
        self.farm.pool_action("root", "/b", "move", {"renders": ["r1"]})
        self.assertEqual((self.farm.trees.pool("/a").running, self.farm.trees.pool("/b").running), (0, 2))
        self.finish_all([render])
        self.assertEqual(self.farm.trees.pool("/b").running, 0)
        self.farm.pool_action("root", "/", "reassign", {"renders": ["r1"]})
        self.assertIs(render.pool, self.farm.trees.root_pool)

    def test_priority_zero_runs_nothing_and_the_webs_move_prompt(self) -> None:
        self.pool("/off", priority=0)
        job = self.job(blocks=[block(frames=2)])
        self.render("r1", capacity=10_000)
        self.render("r2", capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 2)  # in the root pool, they run
        self.farm.job_action("root", [job.id], "stop")
        self.farm.pool_action("root", "/off", "move", "r1, r2")  # the web's prompt: names as text
        self.farm.job_action("root", [job.id], "resume")
        self.clock.advance(0)
        self.assertEqual(job.counts[TaskState.RUN], 0)
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"], {f"{Why.POOL_OFF} (/off)": 2})

    def test_actions_check_input_and_rights(self) -> None:
        with self.assertRaises(errors.PermissionDenied):
            self.farm.pool_action("anna", "/x", "create")
        with self.assertRaises(errors.InvalidAction) as e:
            self.farm.pool_action("root", "/x/y", "create")
        self.assertIn("create it first", e.exception.message)
        with self.assertRaises(errors.InvalidAction) as e:
            self.farm.pool_action("root", "/x", "create", {"priorty": 5})
        self.assertIn("priority", e.exception.message)
        with self.assertRaises(errors.InvalidAction):
            self.farm.pool_action("root", "/x", "create", {"pattern": "(unclosed"})
        self.assertNotIn("/x", self.farm.trees.pools)
        self.pool("/x", pattern="r.*")
        self.render("r1")
        with self.assertRaises(errors.InvalidAction) as e:
            self.farm.pool_action("root", "/x", "delete")
        self.assertIn("1 renders", e.exception.message)
        with self.assertRaises(errors.InvalidAction):
            self.farm.pool_action("root", "/", "delete")
        self.farm.pool_action("root", "/", "move", {"renders": ["r1"]})
        self.farm.pool_action("root", "/x", "delete")
        self.assertEqual(sorted(self.farm.trees.pools), ["/"])

    def test_one_action_api(self) -> None:
        seen = []
        self.farm.bus.subscribe(PoolChanged, lambda e: seen.append(e.pool.path))
        act(self.farm, "root", "pools", "create", {"path": "/gpu"}, {"pattern": "gpu.*", "priority": 120})
        self.render("gpu1")
        listed = act(self.farm, "anna", "pools", "list", {"path": "/gpu"})
        self.assertEqual([(p["path"], p["renders"], p["priority"]) for p in listed],
                         [("/gpu", ["gpu1"], 120)])
        with self.assertRaises(errors.InvalidAction):
            act(self.farm, "root", "pools", "explode", {"path": "/gpu"})
        self.assertIn("/gpu", seen)


class JobPoolsTests(SchedulerTestCase):
    def test_afanasys_matching(self) -> None:
        self.assertTrue(job_may_run_in({}, "/farm"))
        self.assertFalse(job_may_run_in({"/farm": -100}, "/farm/gpu"))
        self.assertTrue(job_may_run_in({"/farm": -100}, "/ws"))
        self.assertTrue(job_may_run_in({"gpu": 100}, "/farm/gpu"))  # a key without "/": part of the path
        self.assertFalse(job_may_run_in({"gpu": 100}, "/farm/cpu"))
        self.assertTrue(job_may_run_in({"/farm": 10}, "/ws"))  # a priority alone restricts nothing

    def test_job_pools_route_the_job(self) -> None:
        self.farm.pool_action("root", "/gpu", "create", {"pattern": "gpu.*"})
        only_gpu = self.job(blocks=[block(frames=4)], pools={"/gpu": 100}, name="gpu only")
        self.render("cpu1", capacity=10_000)
        self.assertEqual(only_gpu.counts[TaskState.RUN], 0)
        self.assertEqual(self.farm.explain(only_gpu.id)["blocks"][0]["renders"], {f"{Why.JOB_POOLS} (/)": 1})
        self.render("gpu1", capacity=10_000)
        self.assertEqual(running_hosts(only_gpu), {"gpu1"})
        not_gpu = self.job(blocks=[block(frames=2)], pools={"/gpu": -100}, name="not gpu")
        self.assertEqual(running_hosts(not_gpu), {"cpu1"})
        with self.assertRaises(errors.JobSpecError):
            self.job(pools=["/gpu"])


class BranchTests(SchedulerTestCase):
    def test_branch_from_the_job_or_its_folders(self) -> None:
        self.assertEqual(job_branch_path({"branch": "proj\\shot 1/./"}, "/x"), "/proj/shot_1")
        self.assertEqual(job_branch_path({"folders": {"input": "/in", "output": "/out/a"}}, "/x"), "/out/a")
        self.assertEqual(job_branch_path({"folders": {"input": "/in"}}, "/x"), "/in")
        self.assertEqual(job_branch_path({}, "/work/dir"), "/work/dir")
        self.assertEqual(clean_path(""), "/")

    def test_jobs_create_branches_where_allowed(self) -> None:
        job = self.job(branch="/proj/seq/shot")
        # The root creates children; a new branch does not (Afanasy): the job goes to /proj.
        self.assertEqual(job.branch.path, "/proj")
        self.assertEqual(job.spec.extra["branch"], "/proj")
        self.farm.branch_action("root", "/proj", "set", {"create_childs": True})
        job2 = self.job(branch="/proj/seq/shot", name="j2")
        self.assertEqual(job2.branch.path, "/proj/seq")
        self.assertEqual(self.farm.trees.branch("/proj").jobs, {job})

    def test_branch_limits(self) -> None:
        self.farm.branch_action("root", "/proj", "create", {"max_running_tasks": 3,
                                                            "max_running_tasks_per_host": 1})
        a = self.job(blocks=[block(frames=10)], branch="/proj", name="a")
        b = self.job("bob", blocks=[block(frames=10)], branch="/proj", name="b")
        other = self.job(blocks=[block(frames=10)], branch="/other", name="other")
        renders = self.renders(4, capacity=10_000)
        self.assertEqual(a.counts[TaskState.RUN] + b.counts[TaskState.RUN], 3)
        self.assertEqual(self.farm.trees.branch("/proj").running, 3)
        self.assertEqual(other.counts[TaskState.RUN], 10)  # another branch is not limited
        for render in renders:
            self.assertLessEqual(sum(1 for t in render.tasks.values() if t.block.job in (a, b)), 1)
        waiting = a if a.counts[TaskState.RUN] < b.counts[TaskState.RUN] else b
        self.assertIn(f"{Why.BRANCH_LIMIT} (/proj)", self.farm.explain(waiting.id)["reasons"])
        self.farm.branch_action("root", "/proj", "set", {"paused": True})
        self.finish_all(renders)
        self.assertEqual(a.counts[TaskState.RUN] + b.counts[TaskState.RUN], 0)
        self.assertIn(f"{Why.BRANCH_PAUSED} (/proj)", self.farm.explain(a.id)["reasons"])
        self.assertEqual(self.farm.trees.branch("/proj").running, 0)

    def test_branch_host_limit_explained(self) -> None:
        self.farm.branch_action("root", "/p", "create", {"max_running_tasks_per_host": 1})
        job = self.job(blocks=[block(frames=3)], branch="/p")
        self.render("r1", capacity=10_000)
        self.assertEqual(job.counts[TaskState.RUN], 1)
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"],
                         {f"{Why.BRANCH_HOST_LIMIT} (/p)": 1})

    def test_host_limit_set_while_tasks_run(self) -> None:
        """Running tasks per render are counted afresh when a per-host limit is set."""
        job = self.job(blocks=[block(frames=6)], branch="/p")
        render = self.render("r1", capacity=3000)
        self.assertEqual(len(render.tasks), 3)
        self.farm.branch_action("root", "/", "set", {"max_running_tasks_per_host": 2})
        self.assertEqual(self.farm.trees.root_branch.running_per_host[render.id], 3)
        [first, *_] = self.orders(render)
        self.finish(render, first)
        self.assertEqual(len(render.tasks), 2)  # 2 running: at the limit, nothing new
        self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"],
                         {f"{Why.BRANCH_HOST_LIMIT} (/p)": 1})

    def test_solving_through_the_tree(self) -> None:
        """Branch priority orders sibling branches; a branch solving by need shares its
        renders between its jobs."""
        self.farm.branch_action("root", "/low", "create", {"priority": 10})
        self.farm.branch_action("root", "/high", "create", {"priority": 200, "solving": "need"})
        low = self.job(blocks=[block(frames=10)], branch="/low", name="low", priority=250)
        h1 = self.job(blocks=[block(frames=10)], branch="/high", name="h1", priority=99)
        h2 = self.job(blocks=[block(frames=10)], branch="/high", name="h2", priority=99)
        self.renders(4, capacity=1000)
        self.assertEqual(low.counts[TaskState.RUN], 0)
        self.assertEqual((h1.counts[TaskState.RUN], h2.counts[TaskState.RUN]), (2, 2))
        # By order, the older job of the branch takes everything.
        self.farm.branch_action("root", "/high", "set", {"solving": "order"})
        for job in (h1, h2):
            self.farm.job_action("root", [job.id], "stop")
            self.farm.job_action("root", [job.id], "resume")
        self.clock.advance(0)
        self.assertEqual((h1.counts[TaskState.RUN], h2.counts[TaskState.RUN]), (4, 0))

    def test_move_jobs_and_delete_branches(self) -> None:
        seen = []
        self.farm.bus.subscribe(BranchChanged, lambda e: seen.append(e.branch.path))
        job = self.job(blocks=[block(frames=2)], branch="/a")
        self.render("r1", capacity=10_000)
        self.farm.branch_action("root", "/b", "create")
        act(self.farm, "root", "branches", "move", {"path": "/b"}, {"jobs": [job.id]})
        self.assertEqual((self.farm.trees.branch("/a").running, self.farm.trees.branch("/b").running), (0, 2))
        self.assertEqual(job.spec.extra["branch"], "/b")
        act(self.farm, "root", "branches", "delete", {"path": "/a"})
        with self.assertRaises(errors.InvalidAction):
            act(self.farm, "root", "branches", "delete", {"path": "/b"})
        self.farm.job_action("anna", [job.id], "delete")
        act(self.farm, "root", "branches", "delete", {"path": "/b"})
        self.assertEqual(sorted(self.farm.trees.branches), ["/"])
        self.assertEqual(self.farm.trees.root_branch.running, 0)
        self.assertIn("/b", seen)
        with self.assertRaises(errors.InvalidAction):
            act(self.farm, "root", "branches", "update", {"path": "/"}, {"solving": "fast"})


class StoredTreesTests(SchedulerTestCase):
    def test_pools_branches_and_placement_survive_a_restart(self) -> None:
        path = Path(self.mktemp()) / "farm.sqlite"
        store = Store(self.clock, path, self.farm)
        store.load()
        store.follow()
        self.farm.pool_action("root", "/gpu", "create", {"pattern": "gpu.*", "services": ["blender"],
                                                         "tickets_pool": {"GPU": 4}, "priority": 150})
        self.farm.pool_action("root", "/gpu/big", "create", {"max_running_tasks": 7})
        self.render("gpu1")
        self.farm.pool_action("root", "/gpu/big", "move", {"renders": ["gpu1"]})
        self.farm.branch_action("root", "/proj", "create", {"max_running_tasks": 2, "solving": "need",
                                                            "create_childs": True})
        job = self.job(branch="/proj/shot")
        store.write_now()
        store.close()

        farm = Farm(self.clock, self.settings)
        again = Store(self.clock, path, farm)
        again.load()
        self.addCleanup(again.close)
        self.assertEqual(sorted(farm.trees.pools), ["/", "/gpu", "/gpu/big"])
        gpu = farm.trees.pool("/gpu")
        self.assertEqual((gpu.pattern, gpu.services, gpu.tickets_pool, gpu.priority),
                         ("gpu.*", ("blender",), {"GPU": 4}, 150))
        self.assertEqual(farm.trees.pool("/gpu/big").max_running_tasks, 7)
        self.assertIs(farm.renders_by_name["gpu1"].pool, farm.trees.pool("/gpu/big"))
        proj = farm.trees.branch("/proj")
        self.assertEqual((proj.max_running_tasks, proj.solving, proj.create_childs), (2, "need", True))
        self.assertIs(farm.jobs[job.id].branch, farm.trees.branch("/proj/shot"))
        self.assertTrue(farm.trees.pools_active and farm.trees.branches_ordering)
