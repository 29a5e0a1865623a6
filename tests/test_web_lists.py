"""Lists that scale (issue 15): the model's JobListing against a plain sort of every job,
and the site's list pages over real HTTP on 127.0.0.1: paging (bytes follow what is
shown, not the farm), sorting by each column, filters and search kept in the URL, rows
asked for by key, projects, a render's page, ``jobs create`` and list filters through the
one action API, and bulk actions with the farm's permission checks."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from test_web import WebTestCase, basic
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.messages import HostResources
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.model.listing import FACETS, JOB_SORTS, JobQuery
from farmnet.model.spec import parse_job
from farmnet.server.actions import act
from farmnet.web.testing import job_doc

ROW = re.compile(r'<tr data-key="job:(\d+)"')


def submit(farm: Farm, name: str, user: str, frames: int = 4, **job: Any) -> Any:
    spec, _ = parse_job({"job": {"name": name, **job, "blocks": [
        {"name": "render", "command": "true @#@", "frame_first": 1, "frame_last": frames}]}})
    return farm.submit(spec, user)


class JobListingTests(SynchronousTestCase):
    """Every sort and filter, after random changes, equals sorting every job's record."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.farm = Farm(self.clock, SchedulingConfig(admins=("boss",), errors_retries=0))
        self.rng = random.Random(15)

    def expected(self, q: JobQuery) -> tuple[list[int], int]:
        listing = self.farm.job_listing()
        rows = [listing.make_row(job) for job in self.farm.jobs.values()]
        for name, accepted in q.filters.items():
            rows = [r for r in rows if FACETS[name](r) in accepted]
        if q.text:
            rows = [r for r in rows if q.text.lower() in r.record.name.lower()]
        rows = [r for r in rows if r.record.state not in q.without_states]
        rows.sort(key=JOB_SORTS[q.sort], reverse=q.descending)
        return [r.id for r in rows[q.offset:q.offset + q.limit]], len(rows)

    def check_all(self) -> None:
        for sort in JOB_SORTS:
            for descending in (False, True):
                for q in (JobQuery(sort=sort, descending=descending, offset=3, limit=7),
                          JobQuery({"user": frozenset({"u1"})}, sort=sort, descending=descending, limit=5),
                          JobQuery({"state": frozenset({"RUN", "OFF"}), "project": frozenset({"p1"})},
                                   text="SHOT", sort=sort, descending=descending, limit=100),
                          JobQuery(sort=sort, descending=descending, without_states=frozenset({"DON"})),
                          JobQuery({"branch": frozenset({"/b1", "/b2"})}, sort=sort, descending=descending,
                                   limit=9)):
                    rows, total = self.farm.query_jobs(q)
                    self.assertEqual(([r.id for r in rows], total), self.expected(q), q)

    def test_pages_follow_every_change(self) -> None:
        renders = [self.farm.register_render(f"r{n}", capacity=1000) for n in range(4)]
        for n in range(40):
            submit(self.farm, f"shot{n:03d}" if n % 3 else f"comp{n:03d}", f"u{n % 3}", frames=3 + n % 5,
                   project=f"p{n % 2}", department=("comp", "fx")[n % 2], priority=n % 7 * 10,
                   branch=f"/b{n % 4}")
        # Jobs whose shown state changes with no event about them: a time_wait, depend masks.
        submit(self.farm, "shot-later", "u1", project="p1", time_wait=int(self.clock.seconds()) + 3)
        submit(self.farm, "shot-after", "u2", project="p1", depend_mask="comp0.*")
        submit(self.farm, "shot-after-all", "u0", project="p1", depend_mask_global="shot00.*")
        self.check_all()  # made now, kept up to date from here on
        for _ in range(6):
            self.clock.advance(1)
            for render in renders:
                for order in self.farm.take_orders(render):
                    if order.order != "start":
                        continue
                    key = (order.job_id, order.block, order.task)
                    if self.rng.random() < 0.5:
                        self.farm.task_output(render, key, order.run, self.rng.randrange(1, 99))
                    else:
                        self.farm.task_finished(render, key, order.run, exit_code=self.rng.choice((0, 0, 1)),
                                                signal=None, time_started=1.0, time_done=2.0, message="")
            ids = list(self.farm.jobs)
            self.farm.job_action("boss", self.rng.sample(ids, 2), "pause")
            self.farm.job_action("boss", self.rng.sample(ids, 1), "set_priority", self.rng.randrange(0, 99))
            self.farm.job_action("boss", self.rng.sample(ids, 1), "delete")
            self.farm.branch_action("boss", f"/b{self.rng.randrange(4)}", "move", self.rng.sample(ids, 2))
            submit(self.farm, f"shot-late{self.clock.seconds():.0f}", "u1", project="p1")
            self.check_all()

    def test_progress_counts_running_tasks(self) -> None:
        render = self.farm.register_render("r1", capacity=1000)
        job = submit(self.farm, "shot", "u1", frames=4)
        self.clock.advance(1)
        [order] = [o for o in self.farm.take_orders(render) if o.order == "start"]
        task = self.farm.task((order.job_id, order.block, order.task))
        self.farm.task_output(render, task.key, order.run, 60)
        [row], _ = self.farm.query_jobs(JobQuery({"id": frozenset({job.id})}))
        self.assertEqual(row.progress, 15)  # 60 % of one task in four
        self.assertEqual(row.record.progress, 0)  # the wire's record still counts finished tasks only

    def test_jobs_that_came_without_an_event_are_listed(self) -> None:
        submit(self.farm, "before", "u1")
        self.assertEqual(self.farm.query_jobs(JobQuery())[1], 1)
        # A restore builds jobs and publishes nothing.
        spec, _ = parse_job({"job": {"name": "restored", "blocks": [
            {"name": "b", "command": "true @#@", "frame_first": 1, "frame_last": 2}]}})
        job = self.farm._build_job(7, spec, "u2", 50, 0.0, 7, False)
        self.assertIn(7, self.farm.jobs)
        rows, total = self.farm.query_jobs(JobQuery(sort="name", descending=False))
        self.assertEqual(([r.record.name for r in rows], total), (["before", "restored"], 2))
        del self.farm.jobs[job.id]
        self.assertEqual(self.farm.query_jobs(JobQuery())[1], 1)

    def test_unknown_sort_and_filter_are_refused(self) -> None:
        with self.assertRaises(errors.InvalidAction):
            JobQuery(sort="colour")
        with self.assertRaises(errors.InvalidAction):
            JobQuery({"pool": frozenset({"a"})})
        with self.assertRaises(errors.InvalidAction) as caught:
            act(self.farm, "u1", "jobs", "list", {"projekt": "x"})
        self.assertIn("did you mean 'project'", caught.exception.message)


class ListPageTests(WebTestCase):
    async def many_jobs(self, count: int) -> None:
        for n in range(count):
            await self.player.submit(job_doc(f"shot{n:04d}", frames=2, project=f"show{n % 3}",
                                             department=("comp", "fx")[n % 2]), ("anna", "bob")[n % 2])

    async def test_pages_have_the_rows_asked_for_and_bytes_follow_them(self) -> None:
        await self.many_jobs(120)
        _, first = await self.get("/jobs?per=25")
        self.assertEqual([int(i) for i in ROW.findall(first)], list(range(120, 95, -1)))
        self.assertIn("1–25 of 120", first)
        _, second = await self.get("/jobs?per=25&page=2")
        self.assertEqual([int(i) for i in ROW.findall(second)], list(range(95, 70, -1)))
        # The pager's links keep the view.
        self.assertIn('href="/jobs?sort=-id&amp;page=3&amp;per=25"', second)
        _, hundred = await self.get("/jobs?per=100")
        self.assertEqual(len(ROW.findall(hundred)), 100)
        per_row = (len(hundred) - len(first)) / 75
        # Ten times the jobs: a page of 25 weighs the same (bytes follow the page, not the farm).
        await self.many_jobs(1080)
        _, again = await self.get("/jobs?per=25")
        self.assertEqual(len(ROW.findall(again)), 25)
        self.assertLess(abs(len(again) - len(first)), 3 * per_row)
        self.assertIn("1–25 of 1,200", again)
        response, text = await self.get("/jobs?per=33")
        self.assertEqual(response.code, 400)
        response, _ = await self.get("/jobs?page=0")
        self.assertEqual(response.code, 400)

    async def test_sorted_by_each_column(self) -> None:
        await self.many_jobs(12)
        self.farm.job_action("anna", [3], "set_priority", 90)
        self.farm.job_action("bob", [4], "pause")
        records = {r.id: r for r in self.farm.list_jobs()}
        for column in ("id", "name", "user", "state", "priority", "project", "department", "created"):
            for prefix in ("", "-"):
                _, text = await self.get(f"/jobs?sort={prefix}{column}")
                ids = [int(i) for i in ROW.findall(text)]
                value = {"id": lambda r: r.id, "name": lambda r: (r.name.lower(), r.id),
                         "user": lambda r: (r.user_name, r.id), "state": lambda r: (r.state, r.id),
                         "priority": lambda r: (r.priority, r.id),
                         "project": lambda r: (self.farm.jobs[r.id].spec.project, r.id),
                         "department": lambda r: (self.farm.jobs[r.id].spec.department, r.id),
                         "created": lambda r: (r.time_creation, r.id)}[column]
                expected = sorted(records.values(), key=value, reverse=prefix == "-")
                self.assertEqual(ids, [r.id for r in expected], f"{prefix}{column}")
        _, text = await self.get("/jobs?sort=priority")
        self.assertIn('href="/jobs?sort=-priority"', text)  # its head sorts the other way next
        response, text = await self.get("/jobs?sort=colour")
        self.assertEqual(response.code, 400)
        self.assertIn("sort: one of", text)

    async def test_filters_and_search_stay_in_the_url(self) -> None:
        await self.many_jobs(30)
        self.farm.job_action("anna", [1, 3], "pause")
        _, text = await self.get("/jobs?user=anna&state=OFF")
        self.assertEqual(sorted(int(i) for i in ROW.findall(text)), [1, 3])
        _, text = await self.get("/jobs?q=SHOT001")
        self.assertEqual(sorted(int(i) for i in ROW.findall(text)), list(range(11, 21)))
        self.assertIn('value="SHOT001"', text)  # the search box shows it
        _, text = await self.get("/jobs?project=show1&department=comp&sort=id")
        expected = [n + 1 for n in range(30) if n % 3 == 1 and n % 2 == 0]
        self.assertEqual([int(i) for i in ROW.findall(text)], expected)
        self.assertIn('href="/jobs?project=show1&amp;department=comp&amp;sort=-id"', text)
        response, _ = await self.get("/jobs?state=LATE")
        self.assertEqual(response.code, 400)

    async def test_branch_and_pool_filters(self) -> None:
        for n in range(6):
            submit(self.farm, f"shot{n}", "anna", branch=("/a", "/b", "/other")[n % 3])
        _, text = await self.get("/jobs?branch=/other&sort=id")
        self.assertEqual([int(i) for i in ROW.findall(text)], [3, 6])
        self.assertIn('<option value="/other" selected="selected">/other</option>', text)
        self.farm.branch_action("boss", "/other", "move", [1])
        _, text = await self.get("/jobs?branch=/other&sort=id")
        self.assertEqual([int(i) for i in ROW.findall(text)], [1, 3, 6])
        _, text = await self.get("/jobs?branch=/nowhere")
        self.assertEqual(ROW.findall(text), [])
        listed = act(self.farm, "anna", "jobs", "list", {"branch": ["/other", "/a"], "sort": "id"})
        self.assertEqual([(j["id"], j["branch"]) for j in listed],
                         [(1, "/other"), (3, "/other"), (4, "/a"), (6, "/other")])

        self.farm.pool_action("boss", "/gpu", "create", {"pattern": "gpu.*"})
        for name in ("gpu1", "cpu1", "gpu2"):
            await self.player.render(name)
        _, text = await self.get("/renders?pool=/gpu")
        self.assertEqual(re.findall(r'data-key="render:([^"]+)"', text), ["gpu1", "gpu2"])
        self.assertIn('<option value="/gpu" selected="selected">/gpu</option>', text)
        _, text = await self.get("/renders?pool=/&sort=pool")
        self.assertEqual(re.findall(r'data-key="render:([^"]+)"', text), ["cpu1"])
        _, text = await self.get("/renders?sort=-pool")
        self.assertEqual(re.findall(r'data-key="render:([^"]+)"', text), ["gpu2", "gpu1", "cpu1"])

    async def test_rows_asked_for_by_key(self) -> None:
        await self.many_jobs(5)
        _, text = await self.get("/jobs?rows=2,4,99")
        self.assertEqual(sorted(ROW.findall(text)), ["2", "4"])
        self.assertNotIn("<html", text)
        response, _ = await self.get("/jobs?rows=" + ",".join(map(str, range(600))))
        self.assertEqual(response.code, 400)

    async def test_task_render_user_and_project_lists(self) -> None:
        r1 = await self.player.render("r1")
        await self.player.submit(job_doc("shot", frames=30, project="show"), "anna")
        await self.player.play(r1, count=5, fail=[2])
        _, text = await self.get("/jobs/1/tasks?state=DON&sort=-task&per=25")
        keys = re.findall(r'data-key="task:1:0:(\d+)"', text)
        self.assertEqual(keys, ["4", "3", "1", "0"])
        _, text = await self.get("/jobs/1/tasks?per=25&page=2")
        self.assertEqual(re.findall(r'data-key="task:1:0:(\d+)"', text), [str(n) for n in range(25, 30)])
        _, text = await self.get("/jobs/1/tasks?rows=0:7,0:8")
        self.assertEqual(re.findall(r'data-key="task:1:0:(\d+)"', text), ["7", "8"])
        for n in range(3):
            await self.player.render(f"extra{n}")
        _, text = await self.get("/renders?q=extra&sort=-name&per=25")
        self.assertEqual(re.findall(r'data-key="render:([^"]+)"', text), ["extra2", "extra1", "extra0"])
        _, text = await self.get("/users?sort=-jobs")
        self.assertEqual(re.findall(r'data-key="user:([^"]+)"', text), ["anna"])
        _, text = await self.get("/projects")
        self.assertIn('href="/jobs?project=show"', text)
        self.assertIn('<td class="num">30</td>', text)

    async def test_render_page_has_its_tasks_runs_resources_and_actions(self) -> None:
        r1 = await self.player.render("r1")
        await self.player.submit(job_doc("shot", frames=4), "anna")
        await self.player.play(r1, count=2, fail=[1])
        await self.player.tick()
        samples = self.site.site.ctx.samples
        self.farm.render_seen(r1, HostResources(cpu_percent=40.0, mem_used_mb=8192, mem_total_mb=65536))
        samples.sample()
        self.farm.render_seen(r1, HostResources(cpu_percent=90.0, mem_used_mb=9000, mem_total_mb=65536))
        samples.sample()
        self.assertEqual([s.cpu for s in samples.samples["r1"]], [40.0, 90.0])
        headers = await self.login("boss")
        _, text = await self.get("/renders/r1", headers=headers)
        self.assertIn("Render r1", text)
        self.assertIn("/jobs/1/0/2", text)  # running now
        self.assertIn('class="series"', text)  # resources over time
        for action in ("free", "heal", "exit", "sleep", "wake", "reset_error_hosts", "eject"):
            self.assertIn(f'&quot;action&quot;: &quot;{action}&quot;', text, action)
        self.assertIn("Recent runs", text)
        self.assertIn("task 1/0/1", text)  # its error
        response, _ = await self.get("/renders/nobody")
        self.assertEqual(response.code, 404)


class ActionApiTests(WebTestCase):
    async def test_create_over_http_with_validation_and_warnings(self) -> None:
        headers = await self.login("anna")
        doc = job_doc("from-json", frames=3)
        doc["job"]["blocks"][0]["colour"] = "red"
        response, body = await self.act({"item": "jobs", "action": "create", "values": doc}, headers=headers)
        self.assertEqual(response.code, 200, body)
        job_id = body["result"]["job_id"]
        self.assertEqual(self.farm.jobs[job_id].user_name, "anna")
        self.assertEqual(body["result"]["warnings"], ["job.blocks[0].colour: unknown key, ignored"])
        yaml_text = ("job:\n  name: from-yaml\n  blocks:\n  - name: r\n    command: true @#@\n"
                     "    frame_first: 1\n    frame_last: 2\n")
        response, body = await self.act({"item": "jobs", "action": "create", "values": yaml_text},
                                        headers=headers)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.farm.jobs[body["result"]["job_id"]].name, "from-yaml")
        before = len(self.farm.jobs)
        for values, expected in (("job: [unclosed", "not JSON or YAML"), ({"job": {"name": ""}}, "job.name"),
                                 ({"job": {**job_doc("x")["job"], "user_name": "bob"}}, "may not submit")):
            response, body = await self.act({"item": "jobs", "action": "create", "values": values},
                                            headers=headers)
            self.assertIn(response.code, (400, 403), body)
            self.assertIn(expected, body["error"]["message"])
        self.assertEqual(len(self.farm.jobs), before)
        response, body = await self.act({"item": "jobs", "action": "create", "values": doc})
        self.assertEqual(response.code, 401)

    async def test_list_filters_are_honoured(self) -> None:
        for n in range(6):
            doc = job_doc(f"shot{n}", frames=2, project=f"p{n % 2}")
            await self.player.submit(doc, ("anna", "bob")[n % 2])
        _, body = await self.act({"item": "jobs", "action": "list",
                                  "filters": {"project": "p1", "sort": "-id", "limit": 2}})
        self.assertEqual([j["id"] for j in body["result"]], [6, 4])
        _, body = await self.act({"item": "jobs", "action": "list", "filters": {"q": "SHOT3"}})
        self.assertEqual([j["id"] for j in body["result"]], [4])
        response, body = await self.act({"item": "jobs", "action": "list", "filters": {"colour": "red"}})
        self.assertEqual(response.code, 400)
        _, body = await self.act({"item": "tasks", "action": "list",
                                  "filters": {"job_id": 1, "state": "RDY", "sort": "-task", "limit": 1}})
        self.assertEqual((body["result"]["total"], body["result"]["tasks"][0]["task"]), (2, 1))

    async def test_bulk_actions_are_all_or_nothing_under_the_farms_rules(self) -> None:
        for n in range(4):
            await self.player.submit(job_doc(f"shot{n}", frames=2), ("anna", "bob")[n % 2])
        anna = await self.login("anna")
        response, body = await self.act({"item": "jobs", "action": "pause", "filters": {"id": [1, 2, 3]}},
                                        headers=anna)
        self.assertEqual(response.code, 403)
        self.assertIn("may not change job 2", body["error"]["message"])
        self.assertFalse(any(j.paused for j in self.farm.jobs.values()))
        response, body = await self.act({"item": "jobs", "action": "pause", "filters": {"id": [1, 3]}},
                                        headers=anna)
        self.assertEqual(body["result"], [1, 3])
        response, body = await self.act({"item": "jobs", "action": "pause", "filters": {"id": [2, 4]}},
                                        headers=basic("boss"))
        self.assertEqual(body["result"], [2, 4])
        self.assertTrue(all(j.paused for j in self.farm.jobs.values()))
        _, text = await self.get("/jobs?state=OFF")
        self.assertEqual(len(ROW.findall(text)), 4)
        self.assertNotIn(TaskState.RUN.value + "</span>", text)


class JobAndTaskPageTests(WebTestCase):
    async def test_block_editors_for_owners_and_admins_only(self) -> None:
        await self.player.submit(job_doc("shot", frames=3), "anna")
        for user, editors in (("anna", 1), ("boss", 1), ("bob", 0)):
            _, text = await self.get("/jobs/1", headers=await self.login(user))
            self.assertEqual(text.count("data-edit="), editors, user)
        _, text = await self.get("/jobs/1")
        self.assertNotIn("data-edit=", text)
        self.assertIn('class="t s-RDY"', text)
        self.assertEqual(re.findall(r'data-key="task:1:0:\d+">([^<]*)</a>', text), ["1", "2", "3"])

    async def test_progress_time_left_runs_and_the_tail_of_a_running_task(self) -> None:
        render = await self.player.render("r1", capacity=2000)
        await self.player.submit(job_doc("shot", frames=4, block={"capacity": 1000}), "anna")
        await self.player.play(render, count=2, seconds=100.0)  # two runs of 100 s each
        await self.player.tick()
        running = sorted(t.number for t in self.farm.jobs[1].blocks[0].tasks if t.state is TaskState.RUN)
        self.assertEqual(len(running), 2)
        task = self.farm.task((1, 0, running[0]))
        self.farm.task_output(render, task.key, task.starts_count, 50)
        self.outputs.append(task.key, task.starts_count, b"rendering tile 1 of 2\n")
        _, text = await self.get("/jobs/1")
        self.assertIn("62%", text)  # two done, one at half of four: (200 + 50) / 4
        self.assertIn("about 1m 40s", text)  # two left, two at once, 100 s each
        anna = await self.login("anna")
        _, text = await self.get(f"/jobs/1/0/{running[0]}", headers=anna)
        self.assertIn(f'data-tail="/api/jobs/1/0/{running[0]}/output?run=1"', text)
        self.assertIn("rendering tile 1 of 2", text)
        self.assertIn("r1", text)
        _, text = await self.get("/jobs/1/0/0", headers=anna)
        self.assertNotIn("data-tail", text)  # done: nothing more to follow
        self.assertIn('<a href="?run=1" class="current">1</a>', text)

    async def test_a_grid_of_thousands_of_tasks_is_paged_and_labelled(self) -> None:
        await self.player.submit(job_doc("long", frames=2500), "anna")
        cell = re.compile(r'data-key="task:1:0:(\d+)">([^<]*)</a>')
        _, text = await self.get("/jobs/1")
        cells = cell.findall(text)
        self.assertEqual(len(cells), 1000)
        self.assertEqual(cells[-1], ("999", "1000"))
        self.assertIn('name="offset"', text)  # straight to any task
        _, text = await self.get("/jobs/1?offset=2000")
        cells = cell.findall(text)
        self.assertEqual((len(cells), cells[0]), (500, ("2000", "2001")))
        self.assertIn("tasks 2001–2500 of 2500", text)
        _, text = await self.get("/jobs")
        self.assertIn('href="/jobs?sort=name"', text)  # text A to Z first,
        self.assertIn('href="/jobs?sort=-priority"', text)  # figures largest first

    async def test_get_conveniences_take_the_same_filters(self) -> None:
        for n in range(6):
            doc = job_doc(f"shot{n}", frames=3, project=f"p{n % 2}")
            await self.player.submit(doc, ("anna", "bob")[n % 2])
        _, text = await self.get("/api/jobs?project=p0&sort=-id&limit=2")
        self.assertEqual([j["id"] for j in json.loads(text)["result"]], [5, 3])
        _, text = await self.get("/api/jobs?user=bob&q=SHOT5")
        self.assertEqual([j["id"] for j in json.loads(text)["result"]], [6])
        _, text = await self.get("/api/jobs/1/tasks?sort=-task&limit=2")
        result = json.loads(text)["result"]
        self.assertEqual(([t["task"] for t in result["tasks"]], result["total"]), ([2, 1], 3))
        response, _ = await self.get("/api/jobs?sort=colour")
        self.assertEqual(response.code, 400)


class SharedEventBytesTests(SynchronousTestCase):
    """Each event is made into its SSE message once, however many streams send it."""

    def test_encoded_once_and_kept_bounded(self) -> None:
        from farmnet.server.monitors import EventLog, events_json
        from farmnet.web.live import Streams, _sse

        farm = Farm(Clock())
        log = EventLog(farm)
        for n in range(10):
            submit(farm, f"shot{n}", "u1")
        events, _ = log.since(0)
        streams = Streams()
        first = streams.encoded(events)
        self.assertEqual(first, [_sse(data, data["seq"]) for data in events_json(events)])
        again = streams.encoded(events[3:])
        self.assertTrue(all(a is b for a, b in zip(again, first[3:], strict=True)))
        for n in range(3 * Streams.KEEP):
            farm.job_action("u1", [1], "pause" if n % 2 == 0 else "resume")
        latest, _ = log.since(log.last - 10)
        streams.encoded(log.since(events[-1].seq, 10 * Streams.KEEP)[0])
        self.assertLessEqual(len(streams._encoded), 2 * Streams.KEEP)
        self.assertEqual(streams.encoded(latest), [_sse(d, d["seq"]) for d in events_json(latest)])
