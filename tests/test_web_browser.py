"""The web site in a real browser: Debian's chromium, headless, on loopback only.

- The statistics graph page is screenshotted (``chromium --headless --screenshot``) and the
  PNG is decoded here (zlib and struct: no imaging library) to check it is a real picture
  with the charts' colours in it; ``--dump-dom`` shows the SVG bars the browser built.
- The console (lists that scale): a search, a sort and a page through the URL, three jobs
  checked and paused in one go (rows patched, no reload), a task's grid cell following
  the farm from the event stream.
- Previews: a real server and render run a job whose tasks write a PNG and a text file per frame
  with Pillow and name both in the block's ``files``; the job page's "Latest frames" and the task
  page show the PNG's thumbnail loaded in the browser, and the text file's "no preview" placeholder.
- A login and an action are done by clicking, through the DevTools protocol over a pipe
  (``--remote-debugging-pipe``: no port, no websocket): the page's pause button sends the
  user to the login form, the form logs in, the button pauses the job, and the page
  follows the farm through server-sent events without a reload.

Skipped when no chromium is installed (scripts/test installs Debian's ``chromium``).
Statistics rows come from a throwaway PostgreSQL when its server programs are there, else
from a fixed fake (for the page drawing only). Set ``FARMNET_SCREENSHOTS=DIR`` to keep the
screenshots.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from farmnet.client import connect
from farmnet.config import SchedulingConfig, StatsConfig
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.server.outputs import OutputStore
from farmnet.stats import pgtest
from farmnet.stats.service import StatsService
from farmnet.testing import ProcessFarm, free_port, wait_until
from farmnet.web.charts import PALETTE
from farmnet.web.site import make_site
from farmnet.web.testing import FarmPlayer, SiteUnderTest, job_doc, serve, write_users_file

PASSWORD = "correct horse battery"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--no-default-browser-check",
            f"--user-data-dir={profile}"]


def browser_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


# --- a PNG decoder: enough for Chromium's screenshots ---------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows of raw pixel bytes, bytes per pixel) of an 8-bit RGB/RGBA PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + chunk) != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
            raise ValueError(f"bad CRC in {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("no IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + predictor) & 0xFF
        elif kind != 0:
            raise ValueError(f"bad filter {kind} in row {y}")
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def colours(rows: list[bytes], bpp: int) -> set[tuple[int, int, int]]:
    found: set[tuple[int, int, int]] = set()
    for row in rows:
        for i in range(0, len(row), bpp):
            found.add((row[i], row[i + 1], row[i + 2]))
    return found


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


# --- running chromium ----------------------------------------------------------------


class Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


async def run_chromium(binary: str, home: Path, *args: str, timeout: float = 60.0) -> tuple[str, str]:
    """Run chromium once (a screenshot, a DOM dump); its stdout and stderr."""
    collect = Collect()
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=home))
    process = reactor.spawnProcess(collect, binary, [binary, *chromium_flags(profile), *args],
                                   env=browser_env(home))
    killer = reactor.callLater(timeout, lambda: collect.ended.called or process.signalProcess("KILL"))
    try:
        code = await collect.ended
    finally:
        if killer.active():
            killer.cancel()
    out = b"".join(collect.out).decode("utf-8", "replace")
    err = b"".join(collect.err).decode("utf-8", "replace")
    if code != 0:
        raise AssertionError(f"chromium exited with {code}:\n{err[-3000:]}")
    return out, err


class DevTools(ProcessProtocol):
    """Chromium driven over --remote-debugging-pipe: JSON messages ending in NUL, written
    to its fd 3 and read from its fd 4."""

    def __init__(self) -> None:
        self.buffer = b""
        self.next_id = 1
        self.waiting: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.stderr: list[bytes] = []

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.stderr.append(data)
            return
        if fd != 4:
            return
        self.buffer += data
        while b"\0" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\0", 1)
            message = json.loads(raw)
            waiter = self.waiting.pop(message.get("id", -1), None)
            if waiter is not None:
                waiter.callback(message)

    def processEnded(self, reason: Any) -> None:
        for waiter in self.waiting.values():
            stderr = b"".join(self.stderr).decode("utf-8", "replace")[-2000:]
            waiter.errback(RuntimeError(f"chromium ended:\n{stderr}"))
        self.waiting.clear()
        self.ended.callback(None)

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> Any:
        ident, self.next_id = self.next_id, self.next_id + 1
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        answer: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting[ident] = answer
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        reply = await answer
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


class Page:
    def __init__(self, tools: DevTools, session: str) -> None:
        self.tools = tools
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.tools.send(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        async def check() -> Any:
            try:
                return await self.evaluate(expression)
            except RuntimeError:  # the page is being replaced: no context for a moment
                return None

        return await wait_until(reactor, check, timeout, expression)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                         "button": "left", "clickCount": 1})

    async def type(self, selector: str, text: str) -> None:
        await self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            " if (!e) return false; e.focus(); return document.activeElement === e; })()")
        await self.send("Input.insertText", {"text": text})


class Chromium:
    def __init__(self, tools: DevTools, process: Any) -> None:
        self.tools = tools
        self.process = process

    @classmethod
    def start(cls, binary: str, home: Path) -> Chromium:
        tools = DevTools()
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=home))
        process = reactor.spawnProcess(
            tools, binary, [binary, *chromium_flags(profile), "--remote-debugging-pipe",
                            "--window-size=1280,900", "about:blank"],
            env=browser_env(home), childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        return cls(tools, process)

    async def new_page(self) -> Page:
        target = await self.tools.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.tools.send("Target.attachToTarget",
                                         {"targetId": target["targetId"], "flatten": True})
        page = Page(self.tools, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def close(self) -> None:
        if self.tools.ended.called:
            return
        try:
            await self.tools.send("Browser.close")
        except Exception:
            pass
        killer = reactor.callLater(10, lambda: self.tools.ended.called or self.process.signalProcess("KILL"))
        await self.tools.ended
        if killer.active():
            killer.cancel()


# --- the tests -----------------------------------------------------------------------


class FakeStatsQueries:
    """FAKE statistics rows, used only when PostgreSQL's server programs are missing, so the
    graph page's drawing can still be looked at in the browser. Real queries are tested
    against PostgreSQL in test_web.py and test_stats.py."""

    TASK_ORDERS = ("key", "runs", "run_time_sum")
    JOB_ORDERS = ("key", "jobs", "run_time_sum")

    def __init__(self, now: float) -> None:
        self.now = now

    async def tasks_per_interval(self, interval: str, f: Any, *, by: str = "service",
                                 depth: int | None = None) -> list[dict[str, Any]]:
        hour = int(self.now // 3600) * 3600.0
        return [{"bucket": hour - h * 3600, "key": key, "runs": 3 + (h * 7 + n * 3) % 9,
                 "errors": (h + n) % 3, "run_time": 600.0 * (1 + (h + n) % 4)}
                for h in range(12) for n, key in enumerate(("blender", "nuke", "houdini"))]

    async def run_time(self, group_by: str, f: Any, *, limit: int = 100,
                       depth: int | None = None) -> list[Any]:
        return [{"key": k, "runs": 10, "average": a, "median": a * 0.9, "p90": a * 1.4, "shortest": 1.0,
                 "longest": a * 2} for k, a in (("blender", 310.0), ("nuke", 95.0), ("houdini", 740.0))]

    async def render_utilisation(self, f: Any, *, limit: int = 1000) -> list[dict[str, Any]]:
        return [{"host": f"r{n}", "runs": 5, "busy": 3600.0, "capacity_time": 1.0, "utilisation": u}
                for n, u in enumerate((0.92, 0.55, 0.18))]

    async def errors(self, group_by: str, f: Any, *, limit: int = 100, depth: int | None = None) -> list[Any]:
        return [{"key": "nuke", "errors": 4, "runs": 40, "error_ratio": 0.1, "last_message": "exit 1",
                 "last_error": self.now - 600}]


class FakeStats:
    def __init__(self, queries: Any) -> None:
        self.queries = queries
        self.status = "on: FAKE rows for the page drawing test (no PostgreSQL server programs here)"
        self.enabled = True


class BrowserTestCase(TestCase):
    timeout = 120
    cluster: ClassVar[pgtest.ThrowawayCluster | None] = None

    async def setUp(self) -> None:
        binary = find_chromium()
        if binary is None:
            raise SkipTest("no chromium installed (apt-get install chromium)")
        self.chromium = binary
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-browser-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = Farm(reactor, SchedulingConfig(admins=("boss",), errors_retries=0))
        self.addCleanup(self.farm.stop)
        self.player = FarmPlayer(reactor, self.farm)
        self.users_file = write_users_file(self.base / "users", {"anna": PASSWORD, "bob": PASSWORD})
        self.outputs = OutputStore(self.base / "output")
        self.addCleanup(self.outputs.close_all)

    async def serve(self, stats: Any = None) -> SiteUnderTest:
        site = await serve(reactor, self.farm, None, self.outputs, stats, users_file=str(self.users_file))
        self.addCleanup(site.stop)
        return site

    def screenshot_dir(self) -> Path:
        keep = os.environ.get("FARMNET_SCREENSHOTS")
        if keep:
            path = Path(keep)
            path.mkdir(parents=True, exist_ok=True)
            return path
        return self.base


class StatisticsScreenshotTests(BrowserTestCase):
    @classmethod
    def tearDownClass(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.destroy()
            cls.cluster = None

    async def real_statistics(self) -> StatsService | None:
        """A StatsService on a throwaway PostgreSQL, with a day of task runs; None without
        PostgreSQL's server programs."""
        if pgtest.available() is not None:
            return None
        cls = type(self)
        if cls.cluster is None:
            cls.cluster = pgtest.ThrowawayCluster(prefix="farmnet-browser-pg-").start()
        dsn = await cls.cluster.create_database(reactor)
        stats = StatsService(reactor, StatsConfig(dsn=dsn, flush_interval=0.05), self.base / "stats",
                             self.farm)
        stats.startService()
        self.addCleanup(stats.stopService)
        renders = [await self.player.render(f"render{n:02d}") for n in range(4)]
        for n, (service, user) in enumerate((("blender", "anna"), ("nuke", "bob"), ("houdini", "anna"))):
            await self.player.submit(job_doc(f"shot{n:03d}", frames=40, service=service), user)
        await self.player.spread(renders, start=reactor.seconds() - 22 * 3600, spacing=600, seconds=420,
                                 fail=[5, 17])
        await wait_until(reactor, lambda: stats.queries is not None, 20, "statistics reader")

        async def written() -> bool:
            try:
                rows = await stats.queries.tasks_table("user")  # type: ignore[union-attr]
            except Exception:
                return False
            return sum(r["runs"] for r in rows) == 120

        await wait_until(reactor, written, 30, "rows written")
        return stats

    async def test_statistics_graph_page_screenshot(self) -> None:
        stats: Any = await self.real_statistics()
        if stats is None:
            stats = FakeStats(FakeStatsQueries(reactor.seconds()))
        site = await self.serve(stats)
        url = site.url + "/stats?since=24h&interval=hour"
        shot = self.screenshot_dir() / "statistics.png"
        if shot.exists():
            shot.unlink()
        await run_chromium(self.chromium, self.base, f"--screenshot={shot}", "--window-size=1280,1400", url)
        data = shot.read_bytes()
        self.assertGreater(len(data), 20_000, "a real picture, not an empty page")
        width, height, rows, bpp = decode_png(data)
        self.assertEqual((width, height), (1280, 1400))
        seen = colours(rows, bpp)
        self.assertGreater(len(seen), 50, "not blank")
        # The charts' first colours are there: the bars were drawn.
        for colour in PALETTE[:3]:
            self.assertIn(hex_rgb(colour), seen, colour)
        # The DOM the browser built has the SVG bars with their figures.
        dom, _ = await run_chromium(self.chromium, self.base, "--dump-dom", url)
        self.assertEqual(dom.count("<svg"), 5)
        self.assertGreater(dom.count('class="bar"'), 20)
        self.assertIn('data-key="blender"', dom)


class LoginAndActionTests(BrowserTestCase):
    async def test_log_in_through_the_form_then_pause_a_job(self) -> None:
        render = await self.player.render("r1")
        await self.player.submit(job_doc("shot010", frames=6), "anna")
        await self.player.submit(job_doc("comp020", frames=3), "bob")
        await self.player.play(render, count=2)
        site = await self.serve()
        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()

        await page.goto(site.url + "/jobs/1")
        self.assertEqual(await page.evaluate("document.querySelector('h1').textContent"), "Job 1: shot010")
        # Not logged in: the pause button leads to the login form.
        await page.click('#live button[data-act*=\'"action": "pause"\']')
        await page.wait_for("location.pathname === '/login' && document.readyState === 'complete'")
        self.assertFalse(self.farm.jobs[1].paused)
        await page.type("input[name=user]", "anna")
        await page.type("input[name=password]", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for("location.pathname === '/jobs/1' && document.readyState === 'complete'")
        header = await page.evaluate("document.querySelector('header').textContent")
        self.assertIn("logged in as anna", header)
        # The session cookie is not for scripts.
        self.assertEqual(await page.evaluate("document.cookie"), "")
        await page.wait_for("document.getElementById('live-status').textContent === 'live'")
        await page.evaluate("window.notReloaded = true")
        state = "document.querySelector('#live .info .state').textContent"
        self.assertEqual(await page.evaluate(state), "RUN")

        await page.click('#live button[data-act*=\'"action": "pause"\']')
        await wait_until(reactor, lambda: self.farm.jobs[1].paused, 15, "job 1 paused")
        # The page follows (server-sent event, then the live part fetched again): no reload.
        await page.wait_for("document.querySelector('#live .info .state').textContent === 'OFF'")
        self.assertTrue(await page.evaluate("window.notReloaded === true"))
        self.assertTrue(await page.evaluate("!!document.querySelector('#live button[data-act*=\"resume\"]')"))

        # Someone else's job: the farm says no, and the page says why.
        await page.goto(site.url + "/jobs/2")
        await page.click('#live button[data-act*=\'"action": "pause"\']')
        message = await page.wait_for("(document.querySelector('#flash .error') || {}).textContent")
        self.assertIn("may not change job 2", message)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(self.farm.jobs[2].paused)


class ConsoleTests(BrowserTestCase):
    """The wrangler's console (issue 15): search, sort and page a list whose state is in
    the URL; check three jobs and pause them in one go; a task's cell follows the farm."""

    async def log_in(self, page: Page, site: SiteUnderTest, next_path: str) -> None:
        await page.goto(site.url + "/login?next=" + next_path.replace("/", "%2F"))
        await page.type("input[name=user]", "anna")
        await page.type("input[name=password]", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for(f"location.pathname === {json.dumps(next_path)}"
                            " && document.readyState === 'complete'")

    async def names(self, page: Page) -> list[str]:
        return await page.evaluate(
            "Array.from(document.querySelectorAll('#live tr[data-key] .job-name')).map(e => e.textContent)")

    async def test_search_sort_page_select_three_and_pause_them_then_follow_a_task(self) -> None:
        for n in range(60):
            await self.player.submit(job_doc(f"shot{n:03d}", frames=4), "anna")
        for n in range(10):
            await self.player.submit(job_doc(f"comp{n:03d}", frames=4), "bob")
        site = await self.serve()
        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()
        await self.log_in(page, site, "/jobs")

        # Search: the box's text goes into the URL; only matching jobs come back.
        await page.type("form.filters input[name=q]", "shot01")
        await page.click("form.filters button[type=submit]")
        await page.wait_for("new URL(location.href).searchParams.get('q') === 'shot01'"
                            " && document.readyState === 'complete'")
        self.assertEqual(sorted(await self.names(page)), [f"shot{n:03d}" for n in range(10, 20)])

        # Sort: the name column's head, ascending, the search kept.
        await page.click("th[data-sort=name] a")
        await page.wait_for("new URL(location.href).searchParams.get('sort') === 'name'"
                            " && document.readyState === 'complete'")
        self.assertEqual(await self.names(page), [f"shot{n:03d}" for n in range(10, 20)])
        self.assertEqual(await page.evaluate("new URL(location.href).searchParams.get('q')"), "shot01")

        # Page: 25 a page, the next one.
        await page.goto(site.url + "/jobs?user=anna&per=25")
        await page.click("a[rel=next]")
        await page.wait_for("new URL(location.href).searchParams.get('page') === '2'"
                            " && document.readyState === 'complete'")
        self.assertEqual(await self.names(page), [f"shot{n:03d}" for n in range(34, 9, -1)])
        self.assertIn("26–50 of 60", await page.evaluate("document.querySelector('.pager').textContent"))

        # Three checked, paused in one go; the rows follow without a reload.
        await page.goto(site.url + "/jobs?user=anna")
        await page.wait_for("document.getElementById('live-status').textContent === 'live'")
        await page.evaluate("window.notReloaded = true")
        for n in range(3):
            await page.click(f"#live tbody tr:nth-child({n + 1}) input.pick")
        await page.wait_for("document.querySelector('.bulk .picked').textContent === '3 selected'")
        await page.click(".bulk button[data-bulk*='\"pause\"']")
        await wait_until(reactor, lambda: [j.id for j in self.farm.jobs.values() if j.paused] ==
                         [58, 59, 60], 15, "three jobs paused")
        message = await page.wait_for("(document.querySelector('#bulk-results .ok') || {}).textContent")
        self.assertEqual(message, "jobs pause: done for 60, 59, 58")
        await page.wait_for("Array.from(document.querySelectorAll('#live tbody tr')).slice(0, 3)"
                            ".every(r => r.querySelector('.state').textContent === 'OFF')")
        self.assertEqual(await page.evaluate("document.querySelector('#live tbody tr:nth-child(4) .state')"
                                             ".textContent"), "RDY")
        self.assertTrue(await page.evaluate("window.notReloaded === true"))
        # Only the changed rows were asked for, not the page.
        fetched = await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                                      ".filter(n => n.includes('/jobs?'))")
        self.assertTrue(fetched, "rows fetched")
        self.assertTrue(all("rows=" in url and "partial" not in url for url in fetched), fetched)
        self.assertEqual(sorted({n for url in fetched for n in url.split("rows=")[1].split("&")[0]
                                 .replace("%2C", ",").split(",")}), ["58", "59", "60"])
        # Still checked after the rows were drawn again.
        checked = "document.querySelectorAll('#live input.pick:checked').length"
        self.assertEqual(await page.evaluate(checked), 3)

        # A task's cell on its job's page turns RUN, then DON, as a render takes it: no reload.
        await page.goto(site.url + "/jobs/1")
        await page.wait_for("document.getElementById('live-status').textContent === 'live'")
        await page.evaluate("window.notReloaded = true")
        cell = "document.querySelector('#grids [data-key=\"task:1:0:0\"]')"
        self.assertEqual(await page.evaluate(f"{cell}.className"), "t s-RDY")
        self.assertEqual(await page.evaluate(f"{cell}.textContent"), "1")  # labelled with its frame
        render = await self.player.render("r1")
        await page.wait_for(f"{cell}.className === 't s-RUN'")
        await self.player.play(render, count=1)
        await page.wait_for(f"{cell}.className === 't s-DON'")
        await page.wait_for("document.querySelector('#live .info .state').textContent === 'RUN'")
        self.assertTrue(await page.evaluate("window.notReloaded === true"))

    async def test_a_restarted_server_is_caught_up_without_a_reload(self) -> None:
        for n in range(5):
            await self.player.submit(job_doc(f"shot{n:03d}", frames=4), "anna")
        site = make_site(reactor, self.farm, None, self.outputs, users_file=str(self.users_file))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        number = port.getHost().port
        first = SiteUnderTest(site, port)
        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()
        await page.goto(first.url + "/jobs")
        await page.wait_for("document.getElementById('live-status').textContent === 'live'")
        await page.evaluate("window.notReloaded = true")
        await first.stop()  # the server goes; its events stream ends
        await page.wait_for("document.getElementById('live-status').textContent.startsWith('reconnecting')")
        self.farm.job_action("boss", [2], "pause")  # missed while away
        # A new server (its event log starts again from nothing) on the same port.
        again = make_site(reactor, self.farm, None, self.outputs, users_file=str(self.users_file))
        port = await TCP4ServerEndpoint(reactor, number, interface="127.0.0.1").listen(again)
        self.addCleanup(SiteUnderTest(again, port).stop)
        await page.wait_for("document.getElementById('live-status').textContent === 'live'", timeout=20)
        await page.wait_for("document.querySelector('#live tr[data-key=\"job:2\"] .state').textContent"
                            " === 'OFF'")
        self.assertTrue(await page.evaluate("window.notReloaded === true"))

    async def test_layout_from_a_phone_to_a_wide_screen(self) -> None:
        render = await self.player.render("r1", owner="anna")
        for n in range(50):
            await self.player.submit(job_doc(f"a_rather_long_shot_name_{n:03d}", frames=4,
                                             project="feature", department="lighting"), "anna")
        await self.player.play(render, count=1, fail=[0])
        site = await self.serve()
        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()
        await self.log_in(page, site, "/jobs")
        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        for width, mobile in ((1024, False), (1400, False), (1920, False), (390, True)):
            await page.send("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile})
            for path in ("/jobs", "/renders", "/renders/r1", "/jobs/1"):
                await page.goto(site.url + path)
                self.assertTrue(await page.evaluate(fits), f"{path} wider than {width} px")
                # Every button can be seen (wrapped, not cut off).
                cut = await page.evaluate(
                    "Array.from(document.querySelectorAll('main button')).filter(b => b.offsetParent"
                    " && b.getBoundingClientRect().right > window.innerWidth"
                    " && !b.closest('.table-wrap')).length")
                self.assertEqual(cut, 0, f"{path} at {width} px: buttons cut off")
            if not mobile:
                await page.goto(site.url + "/jobs")
                tallest = await page.evaluate(
                    "Math.max(...Array.from(document.querySelectorAll('#live tbody tr'))"
                    ".map(r => r.offsetHeight))")
                self.assertLess(tallest, 40, f"job rows wrap at {width} px")

    async def test_edit_a_block_and_follow_a_running_tasks_output(self) -> None:
        await self.player.render("r1")
        await self.player.submit(job_doc("shot010", frames=3), "anna")
        await self.player.tick()
        [task] = [t for t in self.farm.jobs[1].blocks[0].tasks if t.state is TaskState.RUN]
        self.outputs.append(task.key, task.starts_count, b"first line\n")
        site = await self.serve()
        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()
        await self.log_in(page, site, "/jobs/1")
        await page.click("details summary")
        await page.evaluate("document.querySelector('form.block-edit input[name=capacity]').value = ''")
        await page.type("form.block-edit input[name=capacity]", "250")
        await page.click("form.block-edit button[type=submit]")
        await wait_until(reactor, lambda: self.farm.jobs[1].blocks[0].spec.capacity == 250, 15,
                         "capacity set")
        await page.wait_for("(document.querySelector('#flash .ok') || {}).textContent === 'block 0 updated'")

        await page.goto(site.url + f"/jobs/1/0/{task.number}")
        await page.evaluate("window.notReloaded = true")
        output = "document.querySelector('pre.output').textContent"
        self.assertEqual(await page.evaluate(output), "first line\n")
        self.outputs.append(task.key, task.starts_count, b"second line\n")
        await page.wait_for(f"{output} === 'first line\\nsecond line\\n'")
        self.assertTrue(await page.evaluate("window.notReloaded === true"))

    async def test_bulk_actions_on_renders_and_tasks(self) -> None:
        await self.player.render("r1", owner="anna")
        await self.player.render("r2", owner="anna")
        await self.player.render("r3", owner="bob")
        await self.player.submit(job_doc("shot010", frames=6, block={"capacity": 5000}), "anna")
        site = await self.serve()
        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()
        await self.log_in(page, site, "/renders")
        for name in ("r1", "r2"):
            await page.click(f'#live tr[data-key="render:{name}"] input.pick')
        await page.click(".bulk button[data-bulk*='\"pause\"']")
        await wait_until(reactor, lambda: [r.paused for r in self.farm.renders.values()]
                         == [True, True, False], 15, "r1 and r2 paused")
        await page.wait_for("(document.querySelector('#bulk-results .ok') || {}).textContent"
                            " === 'renders pause: done for r1, r2'")
        # Not hers: the farm says no, the page says why, nothing changes.
        await page.click('#live tr[data-key="render:r3"] input.pick')
        await page.click(".bulk button[data-bulk*='\"resume\"']")
        message = await page.wait_for("(document.querySelector('#bulk-results .error') || {}).textContent")
        self.assertIn("may not resume render 'r3'", message)
        self.assertTrue(self.farm.renders_by_name["r1"].paused)

        await page.goto(site.url + "/jobs/1/tasks")
        await page.evaluate("window.asked = []; window.confirm = t => { window.asked.push(t); return true; }")
        for number in (1, 4):
            await page.click(f'#live tr[data-key="task:1:0:{number}"] input.pick')
        await page.click(".bulk button[data-bulk*='\"skip\"']")
        await wait_until(reactor, lambda: [t.state.value for t in self.farm.jobs[1].blocks[0].tasks]
                         == ["RDY", "SKP", "RDY", "RDY", "SKP", "RDY"], 15, "tasks 1 and 4 skipped")
        self.assertEqual(await page.evaluate("window.asked"), ["Skip the 2 selected tasks?"])
        await page.wait_for("document.querySelector('#live tr[data-key=\"task:1:0:4\"] .state').textContent"
                            " === 'SKP'")


#: A task's command: one frame as an 80x60 PNG (Pillow) and a text file beside it; argv[1] is the frame.
WRITE_FRAME = ("import sys; from PIL import Image; n = sys.argv[1]; "
               "Image.new('RGB', (80, 60), (200, 40, 40)).save(f'frame_{n}.png'); "
               "open(f'frame_{n}.txt', 'w').write('not an image')")


class PreviewTests(TestCase):
    """Thumbnails of a real farm's output, named by the block's ``files`` (no parser reports them)."""

    timeout = 180

    async def setUp(self) -> None:
        binary = find_chromium()
        if binary is None:
            raise SkipTest("no chromium installed (apt-get install chromium)")
        self.chromium = binary
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-previews-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        self.web_port = free_port()
        await self.farm.start_server("--web", f"tcp:{self.web_port}:interface=127.0.0.1")
        await self.farm.start_render("r1")
        self.client = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(self.client.close)

    async def loaded(self, page: Page, selector: str) -> list[list[Any]]:
        """[src, naturalWidth, naturalHeight] of each image ``selector`` finds, once all loaded or failed."""
        return await page.wait_for(
            f"(() => {{ const all = [...document.querySelectorAll({json.dumps(selector)})];"
            " if (!all.length || !all.every(i => i.complete)) return null;"
            " return all.map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]); })()")

    async def test_job_and_task_pages_show_thumbnails_of_the_blocks_files(self) -> None:
        frames = self.base / "frames"
        frames.mkdir()
        command = f"{shlex.quote(sys.executable)} -c {shlex.quote(WRITE_FRAME)} @####@"
        job_id, warnings = await self.client.submit({"job": {"name": "comp", "blocks": [
            {"name": "comp", "command": command, "frame_first": 1, "frame_last": 3,
             "working_directory": str(frames), "files": ["frame_@####@.png", "frame_@####@.txt"]}]}})
        self.assertEqual(warnings, [])
        job = await self.client.wait(job_id)
        self.assertEqual(job["state"], "DON", await self.client.output(job_id, 0, 0))
        listed = await self.client.output_files(job_id)
        self.assertEqual([(f["block"], f["task"], f["run"], f["paths"]) for f in listed],
                         [(0, n, 1, [str(frames / f"frame_{n + 1:04d}.{kind}") for kind in ("png", "txt")])
                          for n in range(3)])

        browser = Chromium.start(self.chromium, self.base)
        self.addCleanup(browser.close)
        page = await browser.new_page()
        site = f"http://127.0.0.1:{self.web_port}"
        await page.goto(f"{site}/jobs/{job_id}")
        images = await self.loaded(page, ".thumbnails img")
        self.assertEqual(images, [[f"/jobs/{job_id}/0/{n}/files/{i}", *size]
                                  for n in range(3) for i, size in ((0, (80, 60)), (1, (192, 108)))])

        await page.goto(f"{site}/jobs/{job_id}/0/1")
        self.assertIn("Frames of run 1", await page.evaluate("document.body.textContent"))
        images = await self.loaded(page, ".thumbnails img")
        self.assertEqual(images, [[f"/jobs/{job_id}/0/1/files/0", 80, 60],
                                  [f"/jobs/{job_id}/0/1/files/1", 192, 108]])
        # The placeholder says why (its title), and the text file's thumbnail is not cached as an image.
        reason = await page.evaluate(
            f"fetch('/jobs/{job_id}/0/1/files/1').then(r => r.text()).then(t => [t.includes('no preview'),"
            " t.includes('not an image this server reads')])")
        self.assertEqual(reason, [True, True])
        cached = list(self.base.glob(f"server-store/**/previews/{job_id}/*.png"))
        self.assertEqual(len(cached), 3, cached)
