"""Every ``get`` and ``action`` of Afanasy's protocol farmnet serves (doc/afanasy.md), and
the ones it refuses, spoken by the tests' own client (test_afanasy.py) to the Afanasy
service listening on 127.0.0.1 in this reactor; renders are the farm's, fed by hand."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from test_afanasy import action, get, job, send
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase

from farmnet.config import ConnectionsConfig, SchedulingConfig
from farmnet.messages import ExitOrder, KillOrder, StartOrder
from farmnet.model.data import Render, TaskState
from farmnet.model.farm import Farm
from farmnet.server.afanasy import AfanasyFactory, AfanasyServer
from farmnet.server.outputs import OutputStore
from farmnet.server.store import Store


def two_blocks(name: str, user: str = "anna") -> dict[str, Any]:
    """A numeric block of 4 frames and an explicit block of 2 tasks, as af.py writes them."""
    document = job(name, user=user, frames=4, command="render -f @####@")
    document["job"]["blocks"].append({
        "name": "comp", "service": "generic", "parser": "generic", "capacity": 500, "command": "nuke -x @#@",
        "environment": {"SCENE": "a.nk", "TAKE": "main"},
        "tasks": [{"name": "left", "command": "left.nk", "environment": {"TAKE": "alt"}},
                  {"name": "right", "command": "right.nk"}]})
    return document


class AfanasyRequestsTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="farmnet-afanasy-requests-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.farm = Farm(reactor, SchedulingConfig(admins=("boss",)))
        self.addCleanup(self.farm.stop)
        self.outputs = OutputStore(self.dir / "output")
        self.addCleanup(self.outputs.close_all)
        self.server = AfanasyServer(reactor, self.farm, connections=ConnectionsConfig(close_wait=0.5),
                                    outputs=self.outputs)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(AfanasyFactory(self.server))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.ensureDeferred(self.server.shutdown()))
        self.port = port.getHost().port

    async def ask(self, request: Any) -> Any:
        answer, _ = await send(self.port, request)
        return answer

    async def error(self, request: Any) -> str:
        """The text of the error ``request`` is answered with."""
        answer = await self.ask(request)
        self.assertEqual(answer.get("info", {}).get("kind"), "error", (request, answer))
        return answer["info"]["text"]

    async def logged(self, request: Any) -> str:
        answer = await self.ask(request)
        self.assertEqual(answer.get("info", {}).get("kind"), "log", (request, answer))
        return answer["info"]["text"]

    async def submit(self, document: dict[str, Any]) -> int:
        answer = await self.ask(document)
        self.assertGreater(answer["id"], 0, answer)
        return answer["id"]

    def starts(self, render: Render) -> list[StartOrder]:
        self.farm.solve()
        return [o for o in self.farm.take_orders(render) if isinstance(o, StartOrder)]

    def finish(self, render: Render, order: StartOrder, exit_code: int = 0) -> None:
        started = self.farm.task(order.key).time_started
        self.farm.task_finished(render, order.key, order.run, exit_code=exit_code, signal=None,
                                time_started=started, time_done=started + 3,
                                message="" if exit_code == 0 else "it failed")

    def states(self, job_id: int, block: int = 0) -> list[str]:
        return [t.state.value for t in self.farm.jobs[job_id].blocks[block].tasks]

    # --- get ---------------------------------------------------------------------------

    async def test_blocks_and_task_info(self) -> None:
        job_id = await self.submit(two_blocks("shot"))
        blocks = (await self.ask(get("jobs", ids=[job_id], block_ids=[0, 1], mode="full")))["blocks"]
        self.assertEqual([(b["name"], b["tasks_num"], b["command"]) for b in blocks],
                         [("frames", 4, "render -f @####@"), ("comp", 2, "nuke -x @#@")])
        # The web GUI asks with one mode per block.
        blocks = (await self.ask(get("jobs", ids=[job_id], block_ids=[1], mode=["full"])))["blocks"]
        self.assertEqual(blocks[0]["tasks"], [{"name": "left", "command": "left.nk"},
                                              {"name": "right", "command": "right.nk"}])

        task = (await self.ask(get("jobs", ids=[job_id], block_ids=[0], task_ids=[2], mode="info")))["task"]
        self.assertEqual((task["type"], task["job_name"], task["block_name"], task["pos"]),
                         ("TExec", "shot", "frames", {"job": job_id, "block": 0, "task": 2, "number": 0}))
        self.assertEqual(task["progress"]["state"], " RDY")
        execute = task["exec"]
        self.assertEqual((execute["command"], execute["frame_start"], execute["frame_finish"],
                          execute["working_directory"], execute["job_id"], execute["block_num"],
                          execute["task_num"]), ("render -f 0003", 3, 3, "/tmp", job_id, 0, 2))
        task = (await self.ask(get("jobs", ids=[job_id], block_ids=[1], task_ids=[0], mode="info")))["task"]
        self.assertEqual((task["exec"]["command"], task["exec"]["command_task"], task["exec"]["environment"]),
                         ("nuke -x left.nk", "left.nk", {"SCENE": "a.nk", "TAKE": "alt"}))

        for request, text in [
            (get("jobs", ids=[job_id], block_ids=[2]), "Invalid block number: 2"),
            (get("jobs", ids=[job_id], block_ids=[1], task_ids=[2], mode="info"),
             "Invalid block/task number."),
            (get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="files"),
             "mode 'files' is not supported by farmnet"),
            (get("jobs", ids=[job_id, 1], block_ids=[0]), 'needs "ids" with one job id'),
            (get("jobs", ids=[999], block_ids=[0], task_ids=[0], mode="info"), "Invalid ID"),
            (get("jobs", ids=[job_id], mode="output"),
             'needs "ids", "block_ids" and "task_ids" with one each'),
            (get("jobs", ids=[job_id], mode="thumbnail"), "it keeps no thumbnails"),
            (get("jobs", uids=[1]), 'its users have no ids, ask by "users"'),
            (get("jobs", mode=7), '"mode" must be a string'),
        ]:
            self.assertIn(text, await self.error(request), request)

    async def test_task_output_log_and_error_hosts(self) -> None:
        job_id = await self.submit(two_blocks("shot"))
        ask_output = get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="output")
        task = (await self.ask(ask_output))["task"]
        self.assertEqual((task["type"], task["data"]), ("TOutput", "ERROR: the task has not run yet"))

        render = self.farm.register_render("r1", capacity=2000)
        first = self.starts(render)[0]
        self.assertEqual(first.key, (job_id, 0, 0))
        self.outputs.append(first.key, first.run, b"frame 1 rendering\n")
        task = (await self.ask(ask_output))["task"]  # a running task's output, as it streams in
        self.assertEqual((task["data"], task["pos"]["number"], task["render_id"]),
                         ("frame 1 rendering\n", 1, render.id))
        self.finish(render, first, exit_code=1)  # an error: ready again, r1 remembered
        self.outputs.close(first.key, first.run)
        self.assertEqual(self.states(job_id)[0], "RDY")

        log = (await self.ask(get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="log")))["task"]
        lines = log["data"].split("\n")
        self.assertEqual(log["type"], "TLog")
        self.assertTrue(lines[0].endswith(": started on r1 (run 1)"), lines)
        self.assertTrue(lines[1].endswith(": run 1 on r1: RDY, exit code 1: it failed"), lines)
        hosts = (await self.ask(get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="error_hosts")))
        self.assertRegex(hosts["task"]["data"], r"^r1: 1 errors, last ")
        hosts = await self.ask(get("jobs", ids=[job_id], block_ids=[0], task_ids=[1], mode="error_hosts"))
        self.assertEqual(hosts["task"]["data"], "The task has no error hosts.")

        job_hosts = (await self.ask(get("jobs", ids=[job_id], mode="error_hosts")))["message"]
        self.assertEqual((job_hosts["type"], job_hosts["name"]), ("error_hosts", "shot"))
        self.assertRegex(job_hosts["list"][0], r"^frames: r1: 1 errors, last ")
        job_log = (await self.ask(get("jobs", ids=[job_id], mode="log")))["message"]
        self.assertEqual((job_log["type"], job_log["name"]), ("log", "shot"))
        self.assertTrue(job_log["list"][0].endswith(": submitted by anna: 6 tasks in 2 blocks"), job_log)
        self.assertIn(": task[0][0]: run 1 on r1: RDY, exit code 1: it failed",
                      [line[line.index(": "):] for line in job_log["list"]])

        self.assertIn(first.key, [o.key for o in self.starts(render)])  # its second run
        self.outputs.append(first.key, 2, b"second try\n")
        task = (await self.ask(ask_output))["task"]  # the latest run by default
        self.assertEqual((task["data"], task["pos"]["number"]), ("second try\n", 2))
        ask_first = get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="output", number=1)
        self.assertEqual((await self.ask(ask_first))["task"]["data"], "frame 1 rendering\n")
        ask_fifth = get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="output", number=5)
        self.assertEqual((await self.ask(ask_fifth))["task"]["data"],
                         "ERROR: the task has run 2 times: no run 5")

        ask_bad = get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="output", number="x")
        self.assertIn('"number" (the run whose output to read)', await self.error(ask_bad))

    async def test_renders_full_logs_and_tasks_log(self) -> None:
        job_id = await self.submit(job("shot", user="anna", frames=1))
        render = self.farm.register_render("r1", capacity=2000, owner="anna")
        [order] = self.starts(render)
        self.finish(render, order)
        full = (await self.ask(get("renders", ids=[render.id], mode="full")))["object"]
        self.assertEqual((full["name"], full["id"], full["render"]["state"]), ("r1", render.id, " ONL"))
        nimby = action("renders", user="boss", ids=[render.id], params={"nimby": True})
        self.assertEqual(await self.logged(nimby), "renders r1: nimby")
        log = (await self.ask(get("renders", ids=[render.id], mode="log")))["message"]
        self.assertEqual((log["type"], log["name"]), ("log", "r1"))
        self.assertTrue(log["list"][0].endswith(": registered (online)"), log)
        self.assertTrue(log["list"][-1].endswith(": boss@ws1: nimby"), log)
        tasks_log = (await self.ask(get("renders", ids=[render.id], mode="tasks_log")))["message"]
        self.assertEqual(tasks_log["type"], "tasks_log")
        self.assertRegex(tasks_log["list"][0], r": shot\[frames\]\[frame 1\] \(anna\) run 1: DON after 3 s, "
                                               r"exit code 0$")
        self.farm.register_render("r2", capacity=2000)
        idle = self.farm.renders_by_name["r2"]
        tasks_log = (await self.ask(get("renders", ids=[idle.id], mode="tasks_log")))["message"]
        self.assertEqual(tasks_log["list"], ["No tasks execution."])
        self.assertEqual(job_id, self.farm.jobs[job_id].id)
        for request, text in [
            (get("renders", ids=[999], mode="full"), "Invalid ID"),
            (get("renders", mode="log"), 'needs "ids" with one render id'),
            (get("renders", mode="services"), "get renders mode 'services' is not supported"),
        ]:
            self.assertIn(text, await self.error(request), request)

    async def test_user_log_monitors_and_refused_types(self) -> None:
        job_id = await self.submit(job("shot", user="anna"))
        await self.submit(job("other", user="bob"))
        priority = action("users", user="boss", mask="anna", params={"priority": 120})
        self.assertEqual(await self.logged(priority), "users anna: set priority")
        log = (await self.ask(get("users", mask="anna", mode="log")))["message"]
        self.assertEqual(log["name"], "anna")
        self.assertTrue(log["list"][1].endswith(f": job {job_id} 'shot' submitted"), log)
        self.assertTrue(log["list"][-1].endswith(": boss@ws1: set priority"), log)
        self.assertIn('needs a "mask" naming one user (2 match)', await self.error(get("users", mode="log")))
        self.assertIn("jobs_order: farmnet orders a user's jobs", await self.error(
            get("users", mask="anna", mode="jobs_order")))
        self.assertEqual(await self.ask(get("monitors")), {"monitors": []})  # none connected here
        self.assertIn("mode 'events' is not supported",
                      await self.error(get("monitors", ids=[1], mode="events")))
        self.assertIn("does not list its server's files", await self.error(get("files", path="/")))
        self.assertIn("configuration is the server's file", await self.error(get("config")))

    # --- action --------------------------------------------------------------------------

    async def test_job_operations_and_params(self) -> None:
        job_id = await self.submit(job("shot", user="anna", frames=4))
        render = self.farm.register_render("r1", capacity=4000)
        orders = self.starts(render)
        self.finish(render, orders[0])
        self.farm.task_action("anna", job_id, 0, [1], "skip")
        self.farm.render_action("boss", ["r1"], "pause")  # takes no more tasks
        self.assertEqual(self.states(job_id), ["DON", "SKP", "RUN", "RUN"])
        ids = {"ids": [job_id]}
        self.assertEqual(await self.logged(action("jobs", user="anna", operation={"type": "restart_skipped"},
                                                  **ids)), f"jobs {job_id}: restart_skipped")
        self.assertEqual(self.states(job_id), ["DON", "RDY", "RUN", "RUN"])
        self.farm.task_action("anna", job_id, 0, [1], "skip")
        await self.logged(action("jobs", user="anna", operation={"type": "restart_done"}, **ids))
        self.assertEqual(self.states(job_id), ["RDY", "RDY", "RUN", "RUN"])  # done includes skipped
        await self.logged(action("jobs", user="anna", operation={"type": "restart_pause"}, **ids))
        self.assertEqual((self.states(job_id), self.farm.jobs[job_id].paused), (["RDY"] * 4, True))
        # task 1 was running when it was skipped; tasks 2 and 3 were running at the restart
        self.assertEqual([(type(o), o.task) for o in self.farm.take_orders(render)],
                         [(KillOrder, 1), (KillOrder, 2), (KillOrder, 3)])

        params = {"priority": 20, "max_running_tasks": 2, "hosts_mask": "r.*", "depend_mask": "nothing",
                  "time_wait": 0, "annotation": "for review", "description": "a shot"}
        self.assertEqual(await self.logged(action("jobs", user="anna", params=params, **ids)),
                         f"jobs {job_id}: set {', '.join(params)}")
        [listed] = (await self.ask(get("jobs", ids=[job_id])))["jobs"]
        self.assertEqual({k: listed[k] for k in ("priority", "max_running_tasks", "hosts_mask", "depend_mask",
                                                 "annotation", "description")},
                         {k: v for k, v in params.items() if k != "time_wait"})
        log = (await self.ask(get("jobs", ids=[job_id], mode="log")))["message"]["list"]
        self.assertTrue(log[-1].endswith(": anna@ws1: set priority, max_running_tasks, hosts_mask, "
                                         "depend_mask, "
                                         "time_wait, annotation, description"), log)

        for request, text in [
            (action("jobs", user="anna", operation={"type": "restart_warnings"}, **ids),
             "job operation 'restart_warnings' is not supported by farmnet: farmnet's tasks have no warning"),
            (action("jobs", user="anna", operation={"type": "reset_trying_next_tasks"}, **ids),
             "farmnet has no tasks to try next"),
            (action("jobs", user="anna", operation={"type": "explode"}, **ids),
             "Unknown operation: 'explode'"),
            (action("jobs", user="anna", params={"user_name": "bob"}, **ids), "job.user_name: cannot be set"),
            (action("jobs", user="bob", operation={"type": "restart"}, **ids),
             "user 'bob' may not change job"),
        ]:
            self.assertIn(text, await self.error(request), request)

    async def test_block_and_task_operations(self) -> None:
        job_id = await self.submit(two_blocks("shot"))
        render = self.farm.register_render("r1", capacity=1000)
        [order] = self.starts(render)
        self.finish(render, order, exit_code=1)
        self.farm.render_action("boss", ["r1"], "pause")  # takes no more tasks
        self.farm.task_action("anna", job_id, 0, [0], "restart")
        where = {"ids": [job_id], "block_ids": [0]}

        def op(kind: str, **more: Any) -> dict[str, Any]:
            return action("jobs", user="anna", operation={"type": kind, **more}, **where)

        self.assertEqual(await self.logged(op("done", task_ids=[1, 2])), f"blocks {job_id}.0: done")
        self.assertEqual(self.states(job_id)[1:3], ["DON", "DON"])
        self.assertEqual(self.farm.jobs[job_id].blocks[0].tasks[1].progress, 100)
        await self.logged(op("skip", task_ids=[3]))
        await self.logged(op("restart_done"))  # every task of the block that is done (skipped too)
        self.assertEqual(self.states(job_id), ["RDY", "RDY", "RDY", "RDY"])
        await self.logged(op("skip"))
        await self.logged(op("restart_skipped", task_ids=[0, 1]))
        self.assertEqual(self.states(job_id), ["RDY", "RDY", "SKP", "SKP"])
        await self.logged(op("restart_errors"))  # none in error: nothing changes
        self.assertEqual(self.states(job_id), ["RDY", "RDY", "SKP", "SKP"])
        self.farm.render_action("boss", ["r1"], "resume")
        [order] = self.starts(render)
        self.farm.render_action("boss", ["r1"], "pause")
        await self.logged(op("restart_running"))
        self.assertEqual(self.states(job_id)[order.task], "RDY")
        await self.logged(op("reset_error_hosts"))

        await self.logged(action("jobs", user="anna", ids=[job_id], block_mask="co.*",
                                 operation={"type": "tickets", "name": "NUKE", "count": 1}))
        self.assertEqual(dict(self.farm.jobs[job_id].blocks[1].spec.tickets), {"NUKE": 1})
        await self.logged(action("jobs", user="anna", ids=[job_id], block_ids=[-1],
                                 params={"capacity": 250, "hosts_mask": "r.*", "max_running_tasks": 1}))
        self.assertEqual([(b.spec.capacity, b.spec.hosts_mask, b.spec.max_running_tasks)
                          for b in self.farm.jobs[job_id].blocks], [(250, "r.*", 1)] * 2)
        log = (await self.ask(get("jobs", ids=[job_id], mode="log")))["message"]["list"]
        self.assertTrue(log[-1].endswith(": block[1]: anna@ws1: set capacity, hosts_mask, "
                                         "max_running_tasks"), log)

        for request, text in [
            (op("suspend"), "block operation 'suspend' is not supported by farmnet: farmnet's tasks have no"),
            (op("trynext", task_ids=[1], mode="append"), "block operation 'trynext' is not supported"),
            (op("restart", mode="affect_depends"), "block operation mode 'affect_depends' is not supported"),
            (op("restart", task_ids=[9]), "Invalid operation task numer = 9"),
            (op("tickets", count=1), "Ticket 'name' string is not specified."),
            (op("bogus"), "Unknown operation: 'bogus'"),
            (action("jobs", user="anna", ids=[job_id], block_ids=[7], operation={"type": "skip"}),
             "Invalid block number: 7"),
            (action("jobs", user="anna", ids=[job_id], block_mask="zz", operation={"type": "skip"}),
             '"block_ids" array does not contain any integers or invalid "block_mask"'),
            (action("jobs", user="anna", params={"capacity": -5}, **where), "block.capacity"),
        ]:
            self.assertIn(text, await self.error(request), request)

    async def test_append_blocks_and_tasks(self) -> None:
        job_id = await self.submit(two_blocks("shot"))
        render = self.farm.register_render("r1", capacity=100_000)
        for order in self.starts(render):
            self.finish(render, order)
        self.assertTrue(self.farm.jobs[job_id].done)
        self.farm.render_action("boss", ["r1"], "pause")  # takes no more tasks
        new_block = {"name": "proxy", "service": "generic", "command": "ffmpeg -i @#@ out.mov", "flags": 0,
                     "tasks": [{"name": "a", "command": "a.exr"}]}
        answer = await self.ask(action("jobs", user="anna", ids=[job_id],
                                       operation={"type": "append_blocks", "blocks": [new_block]}))
        self.assertEqual(answer, {"object": {"block_ids": [2]}})
        job_record = self.farm.jobs[job_id]
        self.assertEqual((job_record.done, [b.name for b in job_record.blocks]),
                         (False, ["frames", "comp", "proxy"]))
        progress = (await self.ask(get("jobs", ids=[job_id], mode="progress")))["job_progress"]["progress"]
        self.assertEqual([[t["state"] for t in block] for block in progress],
                         [[" DON"] * 4, [" DON"] * 2, [" RDY"]])

        answer = await self.ask(action("jobs", user="anna", ids=[job_id], block_ids=[1],
                                       operation={"type": "append_tasks", "tasks": [
                                           {"name": "centre", "command": "centre.nk"},
                                           {"name": "top", "command": "top.nk",
                                            "environment": {"TAKE": "t"}}]}))
        self.assertEqual(answer, {"object": {"task_ids": [2, 3]}})
        self.farm.render_action("boss", ["r1"], "resume")
        commands = sorted(o.command for o in self.starts(render))
        self.assertEqual(commands, ["ffmpeg -i a.exr out.mov", "nuke -x centre.nk", "nuke -x top.nk"])

        for request, text in [
            (action("jobs", user="anna", ids=[job_id], block_ids=[0],
                    operation={"type": "append_tasks", "tasks": [{"name": "x", "command": "x"}]}),
             "block 'frames' is numeric: tasks are appended to explicit blocks"),
            (action("jobs", user="bob", ids=[job_id],
                    operation={"type": "append_blocks", "blocks": [new_block]}),
             "user 'bob' may not change job"),
            (action("jobs", user="anna", ids=[job_id], operation={"type": "append_blocks", "blocks": []}),
             "Operation blocks array has zero size."),
            (action("jobs", user="anna", ids=[job_id], operation={"type": "append_blocks", "blocks": [{}]}),
             "job.blocks[0]"),
            (action("jobs", user="anna", ids=[job_id], block_ids=[1], operation={"type": "append_tasks"}),
             "Operation requires tasks array."),
        ]:
            self.assertIn(text, await self.error(request), request)
        self.assertEqual(len(self.farm.jobs[job_id].blocks), 3)  # nothing of the refused ones stayed

    async def test_appended_blocks_tasks_and_block_parameters_survive_a_restart(self) -> None:
        store = Store(reactor, self.dir / "farm.sqlite", self.farm, flush_interval=0.05)
        store.startService()
        self.server.durable = store.sync
        job_id = await self.submit(two_blocks("shot"))
        more = {"name": "more", "command": "echo @#@", "frame_first": 1, "frame_last": 3, "flags": 1}
        await self.ask(action("jobs", user="anna", ids=[job_id],
                              operation={"type": "append_blocks", "blocks": [more]}))
        await self.ask(action("jobs", user="anna", ids=[job_id], block_ids=[1], operation={
            "type": "append_tasks", "tasks": [{"name": "centre", "command": "centre.nk"}]}))
        await self.ask(action("jobs", user="anna", ids=[job_id], block_ids=[0], params={"capacity": 250}))
        await store.stopService()

        again = Farm(reactor, SchedulingConfig(admins=("boss",)))
        self.addCleanup(again.stop)
        reopened = Store(reactor, self.dir / "farm.sqlite", again, flush_interval=0.05)
        reopened.startService()
        self.addCleanup(reopened.stopService)
        loaded = again.jobs[job_id]
        self.assertEqual([(b.name, len(b.tasks)) for b in loaded.blocks],
                         [("frames", 4), ("comp", 3), ("more", 3)])
        self.assertEqual((loaded.blocks[1].tasks[2].name, loaded.blocks[1].tasks[2].command),
                         ("centre", "nuke -x centre.nk"))
        self.assertEqual(loaded.counts[TaskState.RDY], 10)
        self.assertEqual(loaded.blocks[0].spec.capacity, 250)  # a block's parameters are kept too

    async def test_render_operations_and_params(self) -> None:
        anna_job = await self.submit(job("anna's", user="anna", frames=1))
        boss_job = await self.submit(job("boss's", user="boss", frames=1))
        render = self.farm.register_render("r1", capacity=4000, owner="anna")
        self.assertEqual(len(self.starts(render)), 2)
        await self.logged(action("renders", user="anna", mask="r1", params={"paused": True}))  # owner may
        [listed] = (await self.ask(get("renders", mask="r1")))["renders"]
        self.assertIn("PAU", listed["state"].split())
        self.assertEqual(await self.logged(action("renders", user="boss", mask="r1",
                                                  operation={"type": "eject_tasks_keep_my"})),
                         "renders r1: eject_others")
        self.assertEqual((self.states(anna_job), self.states(boss_job)), (["RDY"], ["RUN"]))
        await self.logged(action("renders", user="boss", ids=[render.id],
                                 params={"capacity_host": 2500, "max_tasks_host": 3}))
        [listed] = (await self.ask(get("renders", ids=[render.id])))["renders"]
        self.assertEqual((listed["capacity_host"], listed["max_tasks_host"]), (2500, 3))
        await self.logged(action("renders", user="boss", mask="r1", operation={"type": "exit"}))
        self.assertIn(ExitOrder(), self.farm.take_orders(render))

        for request, text in [
            (action("renders", user="boss", mask="r1", operation={"type": "reboot"}),
             "render operation 'reboot' is not supported by farmnet: farmnet's server does not power hosts"),
            (action("renders", user="boss", mask="r1", operation={"type": "shutdown"}),
             "does not power hosts"),
            (action("renders", user="boss", mask="r1", operation={"type": "launch_cmd", "cmd": "ls"}),
             "does not run commands on render hosts"),
            (action("renders", user="boss", mask="r1", operation={"type": "farm", "mode": "service_add"}),
             "a render's services are in its own configuration"),
            (action("renders", user="boss", mask="r1", operation={"type": "set_pool", "name": "p"}),
             "no pool 'p'; pools: /"),
            (action("renders", user="boss", mask="r1", operation={"type": "set_pool"}),
             'set_pool needs the pool\'s path as a non-empty "name" string'),
            (action("renders", user="boss", mask="r1", params={"user_name": "x"}), "render.owner"),
            (action("renders", user="boss", mask="r1", params={"capacity_host": -1}), "render.capacity"),
            (action("renders", user="anna", mask="r1", params={"capacity_host": 10}),
             "user 'anna' may not set render 'r1'"),
            (action("renders", user="boss", mask="r1", operation={"type": "delete"}),
             "render 'r1' is online: exit it first"),
            (action("renders", user="boss", ids=[99], operation={"type": "exit"}),
             "Action node ID not found: 99."),
        ]:
            self.assertIn(text, await self.error(request), request)

    async def test_pools_listed_changed_and_renders_set_in_them(self) -> None:
        r1 = self.farm.register_render("r1", capacity=2000, owner="anna")  # anna may pause it, not move it
        self.farm.register_render("gpu1", capacity=2000)
        [root] = (await self.ask(get("pools")))["pools"]
        self.assertEqual((root["name"], root["parent"], root["renders_total"], root["renders_online"],
                          root["st"], root["state"], root["priority"]), ("/", "", 2, 2, 0, "", 99))
        added = action("pools", user="boss", mask="/", operation={"type": "add_pool", "name": "gpu"})
        self.assertEqual(await self.logged(added), "Pool '/gpu' added to pool '/'")
        params = {"pattern": "gpu.*", "new_nimby": True, "capacity_host": 3000, "priority": 150}
        self.assertEqual(await self.logged(action("pools", user="boss", mask="/gpu", params=params)),
                         "pools /gpu: set pattern, new_nimby, capacity_host, priority")
        for mode, extra, services in [("service_add", {"name": "blender"}, ("blender",)),
                                      ("service_add", {"name": "nuke"}, ("blender", "nuke")),
                                      ("service_remove", {"mask": "nu.*"}, ("blender",))]:
            await self.logged(action("pools", user="boss", mask="/gpu",
                                     operation={"type": "farm", "mode": mode, **extra}))
            self.assertEqual(self.farm.trees.pools["/gpu"].services, services)
        await self.logged(action("pools", user="boss", mask="/gpu",
                                 operation={"type": "farm", "mode": "service_disable", "mask": "blender"}))
        self.assertEqual(self.farm.trees.pools["/gpu"].services_disabled, ("blender",))
        await self.logged(action("pools", user="boss", mask="/gpu",
                                 operation={"type": "farm", "mode": "service_enable", "mask": "b.*"}))
        self.assertEqual(self.farm.trees.pools["/gpu"].services_disabled, ())

        # A render's pool: set by name, and placed again by the patterns.
        self.assertEqual(await self.logged(action("renders", user="boss", mask="r1",
                                                  operation={"type": "set_pool", "name": "/gpu"})),
                         "renders r1: set_pool /gpu")
        [listed] = (await self.ask(get("renders", ids=[r1.id])))["renders"]
        self.assertEqual((listed["pool"], listed["capacity_host"]), ("/gpu", 3000))
        await self.logged(action("renders", user="boss", mask=".*", operation={"type": "reassign_pool"}))
        self.assertEqual({r["name"]: r["pool"] for r in (await self.ask(get("renders")))["renders"]},
                         {"r1": "/", "gpu1": "/gpu"})
        pools = (await self.ask(get("pools")))["pools"]
        self.assertEqual([p["name"] for p in pools], ["/", "/gpu"])
        gpu = pools[1]
        self.assertEqual((gpu["parent"], gpu["pattern"], gpu["new_nimby"], gpu["capacity_host"],
                          gpu["priority"], gpu["services"], gpu["renders_total"], gpu["pools_total"]),
                         ("/", "gpu.*", True, 3000, 150, ["blender"], 1, 0))
        self.assertEqual(pools[0]["pools_total"], 1)
        self.assertNotIn("max_tasks_host", gpu)  # Afanasy writes only what is set
        self.assertEqual([p["name"] for p in (await self.ask(get("pools", mask="/g.*")))["pools"]], ["/gpu"])

        for request, text in [
            (get("pools", ids=[1]), "farmnet's pools have no ids: name them by \"mask\""),
            (get("pools", mode="full"), "get pools mode 'full' is not supported"),
            (action("pools", user="anna", mask="/gpu", params={"priority": 10}),
             "user 'anna' may not change pools: admins only"),
            (action("pools", user="boss", mask="/gpu", params={"priority": "high"}), "priority"),
            (action("pools", user="boss", mask="/gpu", params={"heartbeat_sec": 5}),
             "pool parameter 'heartbeat_sec' is not supported by farmnet: it sets pattern"),
            (action("pools", user="boss", mask="/gpu", operation={"type": "heal_sick"}),
             "pool operation 'heal_sick' is not supported by farmnet: heal a pool's renders"),
            (action("pools", user="boss", mask="/gpu", operation={"type": "fly"}),
             "Unknown operation: 'fly': farmnet's pool operations are add_pool, delete, farm"),
            (action("pools", user="boss", mask="/gpu", operation={"type": "farm", "mode": "service_add",
                                                                  "name": "blender"}),
             "Service 'blender' already exists."),
            (action("pools", user="boss", mask="/gpu", operation={"type": "farm", "mode": "service_remove",
                                                                  "mask": "maya"}),
             "no service of pool '/gpu' matches 'maya'"),
            (action("pools", user="boss", mask="/gpu", operation={"type": "farm", "mode": "add"}),
             "valid modes are service_add"),
            (action("pools", user="boss", mask="/gpu", operation={"type": "add_pool", "name": "a/b"}),
             "add_pool operation should have a new pool's name string"),
            (action("pools", user="boss", mask=".*", operation={"type": "add_pool", "name": "x"}),
             "pool operation 'add_pool' acts on one pool (2 match)"),
            (action("pools", user="boss", mask="/gpu", operation={"type": "delete"}),
             "pool '/gpu' has 0 pools and 1 renders: delete or move them first"),
            (action("pools", user="boss", mask="/", operation={"type": "delete"}),
             "the root pool cannot be deleted"),
            (action("pools", user="boss", mask="/nope", operation={"type": "delete"}),
             "pools: No node matches '/nope' found."),
            (action("pools", user="boss", ids=[1], operation={"type": "delete"}), "have no ids"),
            (action("renders", user="anna", mask="r1", operation={"type": "reassign_pool"}),
             "user 'anna' may not change pools: admins only"),
            (action("renders", user="anna", mask="r1", params={"paused": True},
                    operation={"type": "set_pool", "name": "/"}), "may not change pools"),
        ]:
            self.assertIn(text, await self.error(request), request)
        self.assertEqual(self.farm.trees.pools["/gpu"].priority, 150)  # the refused ones changed nothing
        self.assertFalse(r1.paused)
        self.assertEqual(sorted(self.farm.trees.pools), ["/", "/gpu"])

        await self.logged(action("renders", user="boss", mask="gpu1",
                                 operation={"type": "set_pool", "name": "/"}))
        self.assertEqual(await self.logged(action("pools", user="boss", mask="/gpu",
                                                  operation={"type": "delete"})), "pools /gpu: delete")
        self.assertEqual([p["name"] for p in (await self.ask(get("pools")))["pools"]], ["/"])

    async def test_branches_listed_and_changed(self) -> None:
        shot = job("shot", user="anna", frames=2)
        shot["job"]["branch"] = "/show/shot"  # under /show: only the root creates childs
        shot_id = await self.submit(shot)
        other_id = await self.submit(job("other", user="bob", frames=1))
        render = self.farm.register_render("r1", capacity=1000)
        [order] = self.starts(render)
        self.assertEqual(order.key[0], shot_id)
        branches = {b["name"]: b for b in (await self.ask(get("branches")))["branches"]}
        self.assertIn("/show", branches)
        mine = branches["/show"]
        self.assertEqual((mine["parent"], mine["jobs_total"], mine["jobs_running"], mine["tasks_ready"],
                          mine["running_tasks_num"], mine["solve_method"]),
                         ("/", 1, 1, 1, 1, "solve_order"))
        self.assertEqual([(j["id"], j["name"], j["user_name"], j["running_tasks_num"])
                          for j in mine["active_jobs"]], [(shot_id, "shot", "anna", 1)])
        self.assertEqual(mine["active_users"], [{"name": "anna", "running_tasks_num": 1,
                                                 "running_capacity_total": 1000}])
        self.assertTrue(branches["/"]["create_childs"])
        [listed] = (await self.ask(get("jobs", ids=[shot_id], mode="full")))["jobs"]
        self.assertEqual(listed["branch"], "/show")
        self.assertNotEqual(self.farm.jobs[other_id].branch.path, "/show")

        params = {"priority": 120, "max_running_tasks": 1, "solve_method": "solve_priority"}
        self.assertEqual(await self.logged(action("branches", user="boss", mask="/show", params=params)),
                         "branches /show: set priority, max_running_tasks, solve_method")
        branch = self.farm.trees.branches["/show"]
        self.assertEqual((branch.priority, branch.max_running_tasks, branch.solving), (120, 1, "need"))
        self.assertEqual(await self.logged(action("branches", user="boss", mask="/show",
                                                  operation={"type": "pause"})), "branches /show: pause")
        self.assertTrue(branch.paused)
        [listed] = (await self.ask(get("branches", mask="/show")))["branches"]
        self.assertEqual((listed["paused"], listed["priority"], listed["max_running_tasks"],
                          listed["solve_method"]), (True, 120, 1, "solve_priority"))
        await self.logged(action("branches", user="boss", mask="/show", operation={"type": "start"}))
        self.assertFalse(branch.paused)

        self.finish(render, order)
        [order] = self.starts(render)
        self.finish(render, order)
        self.assertTrue(self.farm.jobs[shot_id].done)
        self.assertEqual(await self.logged(action("branches", user="boss", mask="/show",
                                                  operation={"type": "delete_done_jobs"})),
                         f"branches /show: deleted done jobs {shot_id}")
        self.assertNotIn(shot_id, self.farm.jobs)
        self.assertIn(other_id, self.farm.jobs)

        for request, text in [
            (get("branches", ids=[1]), "farmnet's branches have no ids"),
            (action("branches", user="anna", mask="/show", operation={"type": "pause"}),
             "user 'anna' may not change branches: admins only"),
            (action("branches", user="boss", mask="/show", params={"solve_method": "solve_fast"}),
             '"solve_method" is one of solve_order, solve_priority, got "solve_fast"'),
            (action("branches", user="boss", mask="/show", params={"max_running_tasks": -5}),
             "max_running_tasks"),
            (action("branches", user="boss", mask="/show", params={"hosts_mask": "r.*"}),
             "branch parameter 'hosts_mask' is not supported by farmnet"),
            (action("branches", user="boss", mask="/show", operation={"type": "stop"}),
             "Unknown operation: 'stop': farmnet's branch operations are delete, delete_done_jobs"),
            (action("branches", user="boss", mask="/", operation={"type": "delete"}), "root"),
            (action("branches", user="boss", mask="/nope", operation={"type": "pause"}),
             "branches: No node matches '/nope' found."),
        ]:
            self.assertIn(text, await self.error(request), request)
        self.assertEqual((branch.priority, branch.max_running_tasks), (120, 1))  # refused: nothing changed
        self.assertEqual(await self.logged(action("branches", user="boss", mask="/show",
                                                  operation={"type": "delete"})), "branches /show: delete")
        self.assertNotIn("/show", self.farm.trees.branches)

    async def test_user_operations_and_params(self) -> None:
        await self.submit(job("shot", user="anna"))
        params = {"priority": 150, "max_running_tasks": 5, "max_running_tasks_per_host": 1,
                  "hosts_mask": "r.*", "hosts_mask_exclude": "r9", "errors_retries": 2,
                  "errors_avoid_host": 3, "errors_task_same_host": 1, "errors_forgive_time": 600}
        await self.logged(action("users", user="boss", mask="anna", params=params))
        [listed] = (await self.ask(get("users", mask="anna")))["users"]
        self.assertEqual({k: listed[k] for k in params}, params)
        for request, text in [
            (action("users", user="anna", mask="anna", params={"priority": 200}),
             "user 'anna' may not change users: admins only"),
            (action("users", user="boss", mask="anna", params={"paused": True}), "user.paused"),
            (action("users", user="boss", mask="anna", operation={"type": "move_jobs_up", "jids": [2]}),
             "user operation 'move_jobs_up' is not supported by farmnet"),
            (action("users", user="boss", mask="anna", operation={"type": "delete"}),
             "user 'anna' has 1 jobs: delete them first"),
            (action("users", user="boss", ids=[1], operation={"type": "delete"}),
             "farmnet's users have no ids"),
        ]:
            self.assertIn(text, await self.error(request), request)
        self.assertEqual(self.farm.users["anna"].priority, 150)  # the refused ones changed nothing

    async def test_progress_answers_follow_every_change(self) -> None:
        """getJobProgress() is answered from a kept answer: a state or a percentage shows."""
        job_id = await self.submit(job("shot", user="anna", frames=2))
        ask = get("jobs", ids=[job_id], mode="progress")

        async def tasks() -> list[tuple[str, int]]:
            progress = (await self.ask(ask))["job_progress"]["progress"][0]
            return [(t["state"], t.get("per", 0)) for t in progress]

        self.assertEqual(await tasks(), [(" RDY", 0), (" RDY", 0)])
        self.assertEqual(await tasks(), [(" RDY", 0), (" RDY", 0)])  # kept
        render = self.farm.register_render("r1", capacity=1000)
        [order] = self.starts(render)
        self.farm.render_action("boss", ["r1"], "pause")
        self.assertEqual(await tasks(), [(" RUN", 0), (" RDY", 0)])
        self.farm.task_output(render, order.key, order.run, 40)
        self.assertEqual(await tasks(), [(" RUN", 40), (" RDY", 0)])
        self.finish(render, order)
        self.assertEqual(await tasks(), [(" DON", 100), (" RDY", 0)])

    async def test_job_lists_narrowed_by_ids_users_serials_and_mask(self) -> None:
        first = await self.submit(job("shot010", user="anna"))
        second = await self.submit(job("shot020", user="bob"))
        third = await self.submit(job("comp030", user="anna"))

        async def names(**narrow: Any) -> list[str]:
            return [j["name"] for j in (await self.ask(get("jobs", **narrow)))["jobs"]]

        self.assertEqual(await names(), ["shot010", "shot020", "comp030"])
        self.assertEqual(await names(ids=[third, first, 999]), ["comp030", "shot010"])
        self.assertEqual(await names(users=["anna"]), ["shot010", "comp030"])
        self.assertEqual(await names(users=["anna"], mask="shot.*"), ["shot010"])
        serial = self.farm.jobs[second].serial
        self.assertEqual(await names(serials=[serial]), ["shot020"])
        self.assertEqual(await names(mask="nothing"), [])
        full = (await self.ask(get("jobs", users=["bob"], mode="full")))["jobs"]
        self.assertEqual([(j["name"], j["blocks"][0]["command"]) for j in full], [("shot020", "sleep 30")])
        self.assertIn('"users" must be a list of user names', await self.error(get("jobs", users="anna")))
        self.assertIn('"ids" must be a list of integers', await self.error(get("jobs", ids=["1"])))
