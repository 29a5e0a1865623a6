"""The web site for real: twisted.web on 127.0.0.1 (a free port), requests with treq.

Pages made from a real farm's data, server-sent events, the JSON action API with its
logins (session from the login form, HTTP Basic) and permission errors, escaping,
/metrics, and the statistics pages against a throwaway PostgreSQL (skipped without its
server programs; scripts/test installs them).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import (
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.template import flattenString, tags

from farmnet.config import SchedulingConfig, StatsConfig, WebConfig
from farmnet.messages import HostResources
from farmnet.model.farm import Farm
from farmnet.server.monitors import EventLog
from farmnet.server.outputs import OutputStore
from farmnet.stats import pgtest
from farmnet.stats.queries import Filter
from farmnet.stats.service import StatsService
from farmnet.testing import wait_until
from farmnet.web import charts
from farmnet.web.auth import TokenChecker
from farmnet.web.routing import HTTPError
from farmnet.web.statspages import parse_time
from farmnet.web.testing import FarmPlayer, SiteUnderTest, job_doc, serve, write_users_file

PASSWORD = "correct horse battery"
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def basic(user: str, password: str = PASSWORD) -> dict[bytes, list[bytes]]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {b"authorization": [f"Basic {token}".encode()]}


class SSEReader(Protocol):
    """Reads a text/event-stream body: a list of (id, event, data) as they come."""

    def __init__(self) -> None:
        self.buffer = ""
        self.events: list[tuple[str | None, str, Any]] = []
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data.decode("utf-8")
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "data" in fields:
                event = (fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
                self.events.append(event)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class WebTestCase(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-web-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = self.make_farm()
        self.events = EventLog(self.farm, keep=self.event_log_size)
        self.addCleanup(self.farm.stop)
        self.player = FarmPlayer(reactor, self.farm)
        self.users_file = write_users_file(self.base / "users", {"anna": PASSWORD, "bob": PASSWORD,
                                                                 "boss": PASSWORD})
        self.outputs = OutputStore(self.base / "output")
        self.addCleanup(self.outputs.close_all)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.site = await self.serve()

    event_log_size = 100_000

    def make_farm(self) -> Farm:
        return Farm(reactor, SchedulingConfig(admins=("boss",), errors_retries=0))

    async def serve(self, **kw: Any) -> SiteUnderTest:
        kw.setdefault("events", self.events)
        kw.setdefault("users_file", str(self.users_file))
        config, stats = kw.pop("config", None), kw.pop("stats", None)
        site = await serve(reactor, self.farm, config, self.outputs, stats, **kw)
        self.addCleanup(site.stop)
        return site

    async def get(self, path: str, site: SiteUnderTest | None = None, **kw: Any) -> tuple[Any, str]:
        response = await treq.get((site or self.site).url + path, pool=self.pool, allow_redirects=False, **kw)
        return response, await response.text()

    async def post_json(self, path: str, body: Any, **kw: Any) -> tuple[Any, Any]:
        headers = kw.pop("headers", {})
        headers.setdefault(b"content-type", [b"application/json"])
        response = await treq.post(self.site.url + path, json.dumps(body).encode(), headers=headers,
                                   pool=self.pool, allow_redirects=False, **kw)
        text = await response.text()
        return response, json.loads(text) if text else None

    async def act(self, body: dict[str, Any], **kw: Any) -> tuple[Any, Any]:
        return await self.post_json("/api/act", body, **kw)

    async def some_work(self) -> None:
        """Two renders, jobs of anna and bob, some tasks done, one failed, one running."""
        self.r1 = await self.player.render("r1")
        self.r2 = await self.player.render("r2", services=["nuke"])
        self.job1 = await self.player.submit(job_doc("shot010", frames=6), "anna")
        self.job2 = await self.player.submit(job_doc("comp020", frames=4, service="nuke"), "bob")
        await self.player.play(self.r1, count=3, fail=[1])
        self.outputs.append((1, 0, 0), 1, b"frame 1 rendered in 2.5 s\n<done>\n")

    async def login(self, user: str = "anna", password: str = PASSWORD) -> dict[bytes, list[bytes]]:
        """Log in through the form; returns the cookie header to send."""
        response = await treq.post(self.site.url + "/login", data={"user": user, "password": password,
                                                                   "next": "/jobs"},
                                   pool=self.pool, allow_redirects=False)
        await response.content()
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/jobs"])
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"samesite=strict", cookie.lower())
        return {b"cookie": [cookie.split(b";")[0]]}


class PageTests(WebTestCase):
    async def test_pages_show_the_farm(self) -> None:
        await self.some_work()
        response, body = await self.get("/")
        self.assertEqual(response.code, 200)
        self.assertIn("shot010", body)
        self.assertIn("comp020", body)
        self.assertIn('data-watch="all"', body)
        [policy] = response.headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"default-src 'none'", policy)

        response, body = await self.get("/jobs?user=anna")
        self.assertEqual(response.code, 200)
        self.assertIn("shot010", body)
        self.assertNotIn("comp020", body)
        self.assertRegex(body, r'<progress value="\d+" max="100">')

        response, body = await self.get("/jobs/1")
        self.assertEqual(response.code, 200)
        cells = re.findall(r'class="t s-(\w+)"', body)
        self.assertEqual(len(cells), 6, "one grid cell per task")
        self.assertEqual(cells.count("ERR"), 1)
        self.assertEqual(cells.count("DON"), 2)
        self.assertIn("RUN", cells)
        self.assertIn('data-watch="job:1"', body)

        response, body = await self.get("/jobs/1/0/0", headers=basic("anna"))  # outputs: owner only
        self.assertEqual(response.code, 200)
        self.assertIn("frame 1 rendered in 2.5 s\n&lt;done&gt;", body)

        self.farm.render_seen(self.r1, HostResources(cpu_num=16, cpu_percent=73.5, mem_total_mb=65536,
                                                     mem_used_mb=20480, load_avg=[3.1, 2.0, 1.5],
                                                     hdd_free_gb=120.5))
        response, body = await self.get("/renders")
        self.assertEqual(response.code, 200)
        for text in ("r1", "r2", "busy", "nuke", "74% of 16", "20.0 / 64 GB", "load 3.1 2.0 1.5",
                     "disk 120 GB free", "16 cores"):
            self.assertIn(text, body)

        response, body = await self.get("/users")
        self.assertEqual(response.code, 200)
        self.assertIn("anna", body)
        self.assertIn("bob", body)

    async def test_task_page_shows_its_parser_frame_and_warning(self) -> None:
        await self.some_work()
        await self.player.tick()  # the scheduler hands r1 its next task
        [task] = [t for t in self.farm.list_tasks(1, 0, 0, 100)[0] if t.state == "RUN"]
        render = self.r1 if task.host == "r1" else self.r2
        key = (1, 0, task.task)
        self.farm.task_output(render, key, task.starts_count, 70, frame=1, percent_frame=40,
                              warning="mantra: Unable to load texture '/tex/<missing>.rat'")
        _, body = await self.get(f"/jobs/1/0/{task.task}", headers=basic("anna"))
        self.assertIn("1 done, 40% of the next", body)
        self.assertIn('<span class="warning">mantra: Unable to load texture '
                      "'/tex/&lt;missing&gt;.rat'</span>", body)
        _, body = await self.get("/jobs/1")
        self.assertIn(f"{task.name}: RUN WRN on {task.host}, 70%", body)

    async def test_partial_is_the_live_part_only(self) -> None:
        await self.some_work()
        response, body = await self.get("/jobs/1?partial=1")
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith('<div id="live"'), body[:80])
        self.assertNotIn("<header>", body)

    async def test_unknown_things_are_404(self) -> None:
        for path in ("/jobs/99", "/jobs/1/0/0", "/nowhere", "/api/jobs/99", "/api/renders/nope"):
            response, body = await self.get(path)
            self.assertEqual(response.code, 404, path)
        response, body = await self.get("/api/jobs/99")
        self.assertEqual(json.loads(body), {"error": {"type": "UnknownJob", "message": "no job 99"}})

    async def test_wrong_method_is_405_with_allow(self) -> None:
        response, body = await self.get("/api/act")
        self.assertEqual((response.code, response.headers.getRawHeaders(b"allow")), (405, [b"POST"]))
        self.assertEqual(json.loads(body)["error"]["type"], "MethodNotAllowed")
        response = await treq.request("PUT", self.site.url + "/login", pool=self.pool)
        self.assertIn("Error 405", await response.text())
        self.assertEqual((response.code, response.headers.getRawHeaders(b"allow")), (405, [b"GET, POST"]))
        response, _ = await self.get("/jobs/")
        self.assertEqual(response.code, 200, "a trailing slash is the same page")

    async def test_bad_arguments_are_400(self) -> None:
        await self.some_work()
        for path in ("/jobs?state=NOPE", "/jobs/1?offset=-3", "/api/jobs/1/tasks?limit=abc",
                     "/jobs?user=a%00b", "/jobs?user=a&user=b"):
            response, _ = await self.get(path)
            self.assertEqual(response.code, 400, path)

    async def test_script_in_names_is_escaped(self) -> None:
        await self.player.render(EVIL)
        await self.player.submit(job_doc(EVIL, frames=2, annotation=EVIL), "anna")
        self.outputs.append((1, 0, 0), 1, EVIL.encode())
        for path in ("/", "/jobs", "/jobs/1", "/jobs/1/0/0", "/renders"):
            response, body = await self.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertNotIn("<script>alert", body, path)
            self.assertNotIn("<img src=x", body, path)
            # Shown as text (twisted.web.template escapes quotes in attribute values only).
            self.assertRegex(body, r"&lt;script&gt;alert\((&quot;|\")x(&quot;|\")\)&lt;/script&gt;", path)
        # JSON is JSON (and says so): the browser never takes it for a page.
        response, body = await self.get("/api/jobs/1")
        self.assertEqual(json.loads(body)["result"]["name"], EVIL)
        self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])

    def test_markup_escapes_by_default(self) -> None:
        def flat(tag: Any) -> str:
            return self.successResultOf(flattenString(None, tag)).decode()

        self.assertEqual(flat(tags.a("<b>", href='"x"')), '<a href="&quot;x&quot;">&lt;b&gt;</a>')
        svg = flat(charts.time_bars([{"bucket": 0.0, "key": EVIL, "runs": 3}], "hour", title=EVIL))
        self.assertNotIn("<script>", svg)
        self.assertIn("&lt;script&gt;", svg)

    async def test_static_assets(self) -> None:
        response, body = await self.get("/static/farmnet.js")
        self.assertEqual(response.code, 200)
        self.assertIn("EventSource", body)
        response, body = await self.get("/static/farmnet.css")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/css; charset=utf-8"])


class EventTests(WebTestCase):
    async def stream(self, path: str, headers: dict[bytes, list[bytes]] | None = None) -> SSEReader:
        response = await treq.get(self.site.url + path, headers=headers, pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        reader = SSEReader()
        response.deliverBody(reader)
        self.addCleanup(lambda: reader.done)
        self.addCleanup(reader.close)
        return reader

    async def test_sse_delivers_a_job_event(self) -> None:
        reader = await self.stream(f"/events?after={self.events.last}")
        await self.player.submit(job_doc("new_job"), "anna")
        await wait_until(reactor, lambda: any(e[2].get("kind") == "job" for e in reader.events), 10,
                         "job event")
        seq, kind, data = next(e for e in reader.events if e[2].get("kind") == "job")
        self.assertEqual(kind, "message")
        self.assertEqual(data["job"]["name"], "new_job")
        self.assertEqual(int(seq), data["seq"])
        self.assertEqual(len(self.site.site.ctx.streams.open), 1)

    async def test_last_event_id_resumes_and_kinds_filter(self) -> None:
        await self.player.submit(job_doc("a"), "anna")
        await self.player.submit(job_doc("b"), "anna")
        last = self.events.last
        reader = await self.stream("/events?kinds=job", headers={b"last-event-id": [str(last - 1).encode()]})
        await self.player.submit(job_doc("c"), "anna")
        await wait_until(reactor, lambda: any(e[2].get("job", {}).get("name") == "c" for e in reader.events),
                         10, "job c")
        self.assertEqual(int(reader.events[0][0]), last, "resumed right after Last-Event-ID")
        self.assertEqual({e[2]["kind"] for e in reader.events}, {"job"})

    async def test_reset_when_the_log_forgot(self) -> None:
        reader = await self.stream("/events", headers={b"last-event-id": [b"999999"]})
        await wait_until(reactor, lambda: reader.events, 10, "reset")
        self.assertEqual(reader.events[0][1], "reset")
        self.assertEqual(int(reader.events[0][0]), self.events.last)

    async def test_long_poll(self) -> None:
        last = self.events.last
        later = task.deferLater(reactor, 0.2,
                                lambda: defer.ensureDeferred(self.player.submit(job_doc("x"), "bob")))
        response, body = await self.get(f"/api/events?after={last}&timeout=10")
        await later
        answer = json.loads(body)
        self.assertFalse(answer["reset"])
        self.assertIn("job", [e["kind"] for e in answer["events"]])
        response, body = await self.get("/api/events?after=999999&timeout=0")
        self.assertTrue(json.loads(body)["reset"])


class SmallLogTests(WebTestCase):
    event_log_size = 3

    def make_farm(self) -> Farm:
        return Farm(reactor, SchedulingConfig())

    async def test_reset_when_older_events_are_gone(self) -> None:
        for n in range(6):
            await self.player.submit(job_doc(f"j{n}"), "anna")
        reader = SSEReader()
        response = await treq.get(self.site.url + "/events?after=1", pool=self.pool)
        response.deliverBody(reader)
        self.addCleanup(lambda: reader.done)
        self.addCleanup(reader.close)
        await wait_until(reactor, lambda: reader.events, 10, "reset")
        self.assertEqual(reader.events[0][1], "reset")


class ApiTests(WebTestCase):
    async def test_list_and_show(self) -> None:
        await self.some_work()
        response, body = await self.get("/api/jobs")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json; charset=utf-8"])
        self.assertEqual([j["name"] for j in json.loads(body)["result"]], ["shot010", "comp020"])
        _, body = await self.get("/api/jobs?user=bob")
        self.assertEqual([j["name"] for j in json.loads(body)["result"]], ["comp020"])
        _, body = await self.get("/api/jobs/1")
        job = json.loads(body)["result"]
        self.assertEqual((job["id"], job["blocks"][0]["tasks"]), (1, 6))
        _, body = await self.get("/api/jobs/1/tasks?offset=1&limit=2")
        tasks = json.loads(body)["result"]
        self.assertEqual(([t["task"] for t in tasks["tasks"]], tasks["total"]), ([1, 2], 6))
        _, body = await self.get("/api/jobs/1/0/0/output", headers=basic("anna"))
        self.assertIn("rendered", json.loads(body)["result"]["data"])
        _, body = await self.get("/api/renders")
        self.assertEqual(sorted(r["name"] for r in json.loads(body)["result"]), ["r1", "r2"])
        _, body = await self.get("/api/users")
        self.assertEqual(sorted(u["name"] for u in json.loads(body)["result"]), ["anna", "bob"])
        _, body = await self.get("/api/farm")
        self.assertEqual(json.loads(body)["result"]["jobs"], 2)
        _, body = await self.get("/api/jobs/2/explain")
        self.assertEqual(json.loads(body)["result"]["job_id"], 2)
        # Reads through POST /api/act need no login either.
        response, answer = await self.act({"item": "jobs", "action": "show", "filters": {"id": 2}})
        self.assertEqual((response.code, answer["result"]["name"]), (200, "comp020"))
        response, answer = await self.act({"item": "renders", "action": "list"})
        self.assertEqual(len(answer["result"]), 2)

    async def test_action_without_login_is_refused(self) -> None:
        await self.some_work()
        pause = {"item": "jobs", "action": "pause", "filters": {"id": [1]}}
        response, answer = await self.act(pause)
        self.assertEqual(response.code, 401)
        self.assertEqual(answer["error"]["type"], "NotAuthenticated")
        self.assertTrue(response.headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic"))
        response, answer = await self.act(pause, headers=basic("anna", "wrong password"))
        self.assertEqual(response.code, 401)
        self.assertFalse(self.farm.jobs[1].paused)

    async def test_action_with_basic_auth(self) -> None:
        await self.some_work()
        response, answer = await self.act({"item": "jobs", "action": "pause", "filters": {"id": [1]}},
                                          headers=basic("anna"))
        self.assertEqual((response.code, answer), (200, {"result": [1]}))
        self.assertTrue(self.farm.jobs[1].paused)
        response, answer = await self.act({"item": "jobs", "action": "set_priority", "filters": {"id": [1]},
                                           "values": 120}, headers=basic("anna"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.farm.jobs[1].priority, 120)

    async def test_reset_error_hosts_from_the_job_and_render_pages(self) -> None:
        await self.some_work()
        cookie = await self.login("boss")
        for path in ("/jobs/1", "/renders"):
            response, page = await self.get(path, headers=cookie)
            self.assertIn("reset error hosts", page)
            self.assertIn("&quot;reset_error_hosts&quot;", page)
        response, answer = await self.act(
            {"item": "jobs", "action": "reset_error_hosts", "filters": {"id": [1]}}, headers=basic("anna"))
        self.assertEqual((response.code, answer), (200, {"result": [1]}))
        self.assertEqual(self.farm.jobs[1].blocks[0].host_errors, {})
        response, page = await self.get("/jobs/1", headers=cookie)
        self.assertNotIn("reset error hosts", page)

    async def test_another_users_job_is_forbidden(self) -> None:
        await self.some_work()
        response, answer = await self.act({"item": "jobs", "action": "delete", "filters": {"id": [1]}},
                                          headers=basic("bob"))
        self.assertEqual(response.code, 403)
        self.assertEqual(answer["error"]["type"], "PermissionDenied")
        self.assertIn(1, self.farm.jobs)
        response, answer = await self.act({"item": "renders", "action": "pause", "filters": {"name": ["r1"]}},
                                          headers=basic("bob"))
        self.assertEqual(response.code, 403)
        # An admin may.
        response, answer = await self.act({"item": "jobs", "action": "delete", "filters": {"id": [1]}},
                                          headers=basic("boss"))
        self.assertEqual(response.code, 200)
        self.assertNotIn(1, self.farm.jobs)

    async def test_invalid_actions_are_400(self) -> None:
        await self.some_work()
        for body in ({"item": "jobs", "action": "fly", "filters": {"id": [1]}},
                     {"item": "planes", "action": "list"},
                     {"item": "jobs", "action": "pause", "filters": {"id": "one"}},
                     {"item": "jobs", "action": "pause", "filters": {"id": [1]}, "extra": 1},
                     ["not", "an", "object"]):
            response, answer = await self.act(body, headers=basic("anna"))
            self.assertEqual(response.code, 400, body)
            self.assertIn("message", answer["error"])
        response, answer = await self.act({"item": "jobs", "action": "pause", "filters": {"id": [77]}},
                                          headers=basic("anna"))
        self.assertEqual((response.code, answer["error"]["type"]), (404, "UnknownJob"))

    async def test_session_login_and_csrf_rules(self) -> None:
        await self.some_work()
        cookie = await self.login("anna")
        pause = {"item": "jobs", "action": "pause", "filters": {"id": [1]}}
        # A form post (what another site could make a browser send) is not accepted.
        response = await treq.post(self.site.url + "/api/act", json.dumps(pause).encode(), pool=self.pool,
                                   headers={**cookie, b"content-type": [b"text/plain"]})
        await response.content()
        self.assertEqual(response.code, 415)
        # Nor a request that says it comes from another site.
        response, _ = await self.act(pause, headers={**cookie, b"origin": [b"http://evil.example"]})
        self.assertEqual(response.code, 403)
        self.assertFalse(self.farm.jobs[1].paused)
        # JSON with the session: done.
        response, answer = await self.act(pause, headers=dict(cookie))
        self.assertEqual(response.code, 200)
        self.assertTrue(self.farm.jobs[1].paused)
        _, body = await self.get("/api/whoami", headers=cookie)
        self.assertEqual(json.loads(body)["result"]["user"], "anna")
        _, body = await self.get("/jobs", headers=cookie)
        self.assertIn("logged in as", body)
        # Logging out ends the session.
        response = await treq.post(self.site.url + "/logout", pool=self.pool, headers=cookie,
                                   allow_redirects=False)
        await response.content()
        self.assertEqual(response.code, 303)
        response, answer = await self.act({"item": "jobs", "action": "resume", "filters": {"id": [1]}},
                                          headers=dict(cookie))
        self.assertEqual(response.code, 401)

    async def test_a_huge_body_is_not_read(self) -> None:
        body = b'{"item": "jobs", "action": "list", "values": "' + b"x" * (2 << 20) + b'"}'
        dropped = (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)
        with self.assertRaises(dropped):  # the connection is dropped: no answer
            response = await treq.post(self.site.url + "/api/act", body, pool=self.pool,
                                       headers={b"content-type": [b"application/json"]})
            await response.content()
        response, answer = await self.act({"item": "jobs", "action": "list"})
        self.assertEqual(response.code, 200, "the site goes on")

    async def test_wrong_password_in_the_form(self) -> None:
        response = await treq.post(self.site.url + "/login", data={"user": "anna", "password": "nope"},
                                   pool=self.pool, allow_redirects=False)
        body = await response.text()
        self.assertEqual(response.code, 401)
        self.assertIn("unknown user or wrong password", body)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        # After a login, only a path on this site is followed.
        response = await treq.post(self.site.url + "/login", data={"user": "anna", "password": PASSWORD,
                                                                   "next": "//evil.example/x"},
                                   pool=self.pool, allow_redirects=False)
        await response.content()
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/"])

    async def test_read_only_without_a_password_file(self) -> None:
        site = await self.serve(users_file="")
        response = await treq.post(site.url + "/api/act", b'{"item": "jobs", "action": "list"}',
                                   pool=self.pool, headers={b"content-type": [b"application/json"]})
        self.assertEqual(response.code, 200)
        await response.content()
        response = await treq.post(site.url + "/api/act", b'{"item": "jobs", "action": "pause", "filters": '
                                   b'{"id": [1]}}', pool=self.pool,
                                   headers={b"content-type": [b"application/json"], **basic("anna")})
        self.assertEqual(response.code, 401)
        self.assertIn("logins are off", (await response.text()))

    async def test_login_link_of_a_farm_without_passwords(self) -> None:
        """The link the server prints logs its user in (an admin); a wrong token does not, and
        the form says where the link is."""
        await self.some_work()
        site = await self.serve(users_file="", login_link=TokenChecker("s3cret-token", "boss"))
        response, page = await self.get("/login", site)
        self.assertIn("open the login link the server printed", page)
        response, page = await self.get("/login?token=wrong", site)
        self.assertEqual(response.code, 401)
        self.assertIn("this login link is not valid", page)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        response, _ = await self.get("/login?token=s3cret-token&next=/renders", site)
        self.assertEqual((response.code, response.headers.getRawHeaders(b"location")), (303, [b"/renders"]))
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        headers = {b"cookie": [cookie.split(b";")[0]]}
        response, page = await self.get("/renders", site, headers=headers)
        self.assertIn("logged in as <b>boss</b>", page)
        self.assertIn("&quot;eject&quot;", page)  # actions shown
        # Passwords are still refused: there is no password file.
        response = await treq.post(site.url + "/login", data={"user": "boss", "password": "x"},
                                   pool=self.pool, allow_redirects=False)
        self.assertEqual(response.code, 401)
        await response.content()

    async def test_private_site_needs_a_login_to_read(self) -> None:
        site = await self.serve(config=WebConfig(public=False))
        response, _ = await self.get("/jobs", site)
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/login?next=%2Fjobs"])
        for path in ("/api/jobs", "/metrics", "/events", "/api/stats/status"):
            response, _ = await self.get(path, site)
            self.assertEqual(response.code, 401, path)
        response, body = await self.get("/api/jobs", site, headers=basic("bob"))
        self.assertEqual(response.code, 200)
        response, body = await self.get("/login", site)
        self.assertEqual(response.code, 200)

    async def test_a_change_is_answered_once_on_disk(self) -> None:
        synced: list[defer.Deferred[None]] = []

        def durable() -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            synced.append(d)
            return d

        await self.some_work()
        site = await self.serve(durable=durable)
        async def pause() -> int:
            response = await treq.post(site.url + "/api/act",
                                       b'{"item": "jobs", "action": "pause", "filters": {"id": [1]}}',
                                       headers={b"content-type": [b"application/json"], **basic("anna")},
                                       pool=self.pool)
            await response.content()
            return response.code

        answer = defer.ensureDeferred(pause())
        await wait_until(reactor, lambda: synced, 10, "the sync")
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(answer.called, "answered before the change was on disk")
        self.assertTrue(self.farm.jobs[1].paused)
        synced[0].callback(None)
        self.assertEqual(await answer, 200)


class MetricsTests(WebTestCase):
    async def test_metrics_parse(self) -> None:
        await self.some_work()
        response, body = await self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body) for s in family.samples}
        self.assertEqual(samples[("farmnet_tasks", (("state", "RUN"),))], 2)
        self.assertEqual(samples[("farmnet_tasks", (("state", "ERR"),))], 1)
        self.assertEqual(samples[("farmnet_renders", (("state", "busy"),))], 2)
        self.assertEqual(samples[("farmnet_jobs", (("state", "RUN"),))], 2)
        self.assertEqual(samples[("farmnet_task_assignments_total", ())], self.farm.assignments)
        self.assertGreaterEqual(samples[("farmnet_task_assignments_total", ())], 5)
        self.assertEqual(samples[("farmnet_web_connections", ())], 1)
        self.assertNotIn(("farmnet_render_cpu_percent", (("render", "r1"),)), samples)
        self.farm.render_seen(self.r1, HostResources(cpu_percent=42.0, mem_used_mb=1000, mem_total_mb=4000))
        _, body = await self.get("/metrics")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body) for s in family.samples}
        self.assertEqual(samples[("farmnet_render_cpu_percent", (("render", "r1"),))], 42.0)
        self.assertEqual(samples[("farmnet_render_memory_used_mb", (("render", "r1"),))], 1000)

    async def test_amp_connections_by_kind(self) -> None:
        amp = SimpleNamespace(registry=SimpleNamespace(counts=lambda: {"render": 2, "tool": 1, "hello": 0}))
        site = await self.serve(amp=amp)
        _, body = await self.get("/metrics", site)
        self.assertIn('farmnet_connections{kind="render"} 2.0', body)
        self.assertIn('farmnet_connections{kind="tool"} 1.0', body)

    async def test_each_site_has_its_own_registry(self) -> None:
        other = Farm(reactor)
        self.addCleanup(other.stop)
        site = await serve(reactor, other)
        self.addCleanup(site.stop)
        await self.some_work()
        _, body = await self.get("/metrics", site)
        self.assertIn('farmnet_tasks{state="RUN"} 0.0', body)


class FakeStats:
    """Stands for the statistics service when statistics are off (status only)."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.queries = None
        self.enabled = False


class StatsOffTests(WebTestCase):
    async def test_no_statistics_service(self) -> None:
        response, body = await self.get("/stats")
        self.assertEqual(response.code, 503)
        self.assertIn("Statistics are off", body)

    async def test_statistics_off_says_why(self) -> None:
        why = "off: no PostgreSQL server programs (initdb, pg_ctl, postgres) in PATH: install PostgreSQL"
        site = await self.serve(stats=FakeStats(why))
        for path in ("/stats", "/stats/tasks", "/stats/jobs", "/stats/logs"):
            response, body = await self.get(path, site)
            self.assertEqual(response.code, 503, path)
            self.assertIn("Statistics are off", body)
            self.assertIn("no PostgreSQL server programs", body)
        response, body = await self.get("/api/stats/tasks_table", site)
        self.assertEqual((response.code, json.loads(body)["error"]["type"]), (503, "StatisticsUnavailable"))
        _, body = await self.get("/api/stats/status", site)
        self.assertEqual(json.loads(body)["result"], {"status": why, "available": False})

    def test_time_filters(self) -> None:
        now = 1_700_000_000.0
        self.assertEqual(parse_time("since", "24h", now), now - 86400)
        self.assertEqual(parse_time("since", "30m", now), now - 1800)
        self.assertEqual(parse_time("since", "1700000000", now), now)
        self.assertIsNone(parse_time("since", None, now))
        for bad in ("yesterday", "24x", "1; DROP TABLE tasks", "-5h"):
            with self.assertRaises(HTTPError, msg=bad):
                parse_time("since", bad, now)


class StatsPagesTests(WebTestCase):
    """Real rows: a StatsService on a throwaway PostgreSQL, fed by the farm's own recorder."""

    timeout = 90
    cluster: ClassVar[pgtest.ThrowawayCluster | None] = None

    @classmethod
    def setUpClass(cls) -> None:
        reason = pgtest.available()
        if reason:
            raise SkipTest(reason)
        cls.cluster = pgtest.ThrowawayCluster(prefix="farmnet-web-pg-").start()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.destroy()
            cls.cluster = None

    async def setUp(self) -> None:
        await super().setUp()
        assert self.cluster is not None
        dsn = await self.cluster.create_database(reactor)
        store = Path(tempfile.mkdtemp(prefix="farmnet-web-stats-"))
        self.addCleanup(shutil.rmtree, store, True)
        config = StatsConfig(dsn=dsn, flush_interval=0.05, reconnect_max_delay=0.3)
        self.stats = StatsService(reactor, config, store, self.farm)
        self.stats.startService()
        self.addCleanup(self.stats.stopService)
        renders = [await self.player.render(f"r{n}") for n in range(3)]
        for n, (service, user) in enumerate((("blender", "anna"), ("nuke", "bob"), ("houdini", "anna"))):
            await self.player.submit(job_doc(f"shot{n}", frames=8, service=service), user)
        await self.player.spread(renders, start=reactor.seconds() - 6 * 3600, spacing=600, seconds=120,
                                 fail=[2])
        await wait_until(reactor, lambda: self.stats.queries is not None, 20, "statistics reader")
        await wait_until(reactor, self.all_rows, 20, "rows written")
        self.site = await self.serve(stats=self.stats)

    async def all_rows(self) -> bool:
        assert self.stats.queries is not None
        try:
            rows = await self.stats.queries.tasks_table("user")
        except Exception:
            return False
        return sum(r["runs"] for r in rows) == 24

    async def test_graph_page(self) -> None:
        response, body = await self.get("/stats?since=12h")
        self.assertEqual(response.code, 200)
        self.assertIn("statistics: on:", body)
        self.assertEqual(body.count("<svg"), 5)
        bars = re.findall(r'<rect class="bar"[^>]*data-key="([^"]*)"[^>]*data-value="([^"]*)"', body)
        keys = {k for k, _ in bars}
        self.assertTrue({"blender", "nuke", "houdini"} <= keys, keys)
        response, body = await self.get("/stats/graph.svg?chart=runs&by=user&since=12h")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"image/svg+xml; charset=utf-8"])
        runs = sum(float(v) for k, v in re.findall(r'data-key="([^"]*)" data-value="([^"]*)"', body))
        self.assertEqual(runs, 24)

    async def test_task_and_render_pages_show_recorded_runs(self) -> None:
        # Task 2 of each job failed (errors_retries=0): its one run, recorded with its host.
        [row] = await self.stats.queries.task_runs(1, 0, 2)  # type: ignore[union-attr]
        _, body = await self.get("/jobs/1/0/2")
        runs = body.split('class="runs"')[1].split("</table>")[0]
        self.assertIn(f'<a href="/renders/{row["host"]}">{row["host"]}</a>', runs)
        self.assertIn(">2m 00s<", runs)  # 120 s runs
        self.assertIn("exit 1", runs)
        self.assertIn("ERR", runs)
        _, body = await self.get(f"/renders/{row['host']}")
        recent = body.split("Recent runs")[1].split("<h2>")[0]
        queries: Any = self.stats.queries
        host_rows = await queries.tasks(Filter(host=row["host"]), limit=50)
        self.assertEqual(recent.count("<tr>") - 1, len(host_rows))  # a head, then each run
        self.assertIn('href="/jobs/1/0/2"', recent)

    async def test_tables_and_filters(self) -> None:
        _, body = await self.get("/stats/tasks?group=service&since=1d")
        for service in ("blender", "nuke", "houdini"):
            self.assertIn(service, body)
        _, body = await self.get("/api/stats/tasks_table?group=user&since=1d")
        rows = {r["key"]: r for r in json.loads(body)["result"]}
        self.assertEqual((rows["anna"]["runs"], rows["bob"]["runs"]), (16, 8))
        self.assertEqual(rows["anna"]["errors"], 2)
        _, body = await self.get("/api/stats/tasks_table?group=user&since=1d&service=nuke")
        self.assertEqual([r["key"] for r in json.loads(body)["result"]], ["bob"])
        _, body = await self.get("/stats/tasks?group=folder&depth=1&since=1d")
        self.assertIn("/proj", body)
        _, body = await self.get("/stats/jobs?group=user&since=1d")
        self.assertIn("stats-jobs", body)
        response, body = await self.get("/stats/logs?type=job_created&since=1d")
        self.assertEqual(response.code, 200)
        self.assertEqual(body.count("<td>job_created</td>"), 3)
        for path in ("/stats?since=soon", "/stats/tasks?group=colour", "/stats?interval=fortnight",
                     "/stats/tasks?order=1;DROP", "/api/stats/tasks?limit=0", "/stats/logs?type=x",
                     "/api/stats/nothing"):
            response, _ = await self.get(path)
            self.assertIn(response.code, (400, 404), path)
        # Text in a filter is a value, never SQL.
        response, body = await self.get("/api/stats/tasks_table?user=x%27%3B%20DROP%20TABLE%20tasks%3B%20--")
        self.assertEqual((response.code, json.loads(body)["result"]), (200, []))
        _, body = await self.get("/api/stats/tasks_table?group=user&since=1d")
        self.assertEqual(len(json.loads(body)["result"]), 2)



class PoolsPageTests(WebTestCase):
    async def test_pools_page_lists_and_acts(self) -> None:
        await self.some_work()
        response, answer = await self.act({"item": "pools", "action": "create", "filters": {"path": "/farm"},
                                           "values": {"pattern": "r.*", "services_disabled": ["nuke"]}},
                                          headers=basic("boss"))
        self.assertEqual(response.code, 200, answer)
        response, answer = await self.act({"item": "pools", "action": "reassign", "filters": {"path": "/"}},
                                          headers=basic("boss"))
        self.assertEqual((response.code, sorted(answer["result"])), (200, ["r1", "r2"]))
        response, answer = await self.act({"item": "pools", "action": "delete", "filters": {"path": "/farm"}},
                                          headers=basic("anna"))
        self.assertEqual((response.code, answer["error"]["type"]), (403, "PermissionDenied"))
        response, body = await self.get("/pools")
        self.assertEqual(response.code, 200)
        self.assertIn('data-watch="pools"', body)  # reloaded on pool, branch, render and job events
        for text in ("/farm", "r.*", "nuke", "/renders#r1", "Branches", "created by jobs"):
            self.assertIn(text, body)
        response, body = await self.get("/pools", headers=basic("boss"))
        self.assertIn("move render here", body)
        self.assertIn('"item": "pools", "action": "update", "filters": {"path": "/farm"}, '
                      '"values": {"paused": true}', body.replace("&quot;", '"'))
