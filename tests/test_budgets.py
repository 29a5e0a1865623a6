"""Budgets under hostile input, against a real ``twistd farmnet server`` on 127.0.0.1
(issue 11): unfinished boxes before login and across connections, a tool that does not
read its answers, slow web clients, and the web's Host check. Sizes are small, so each
test takes seconds; bench/hostile.py runs the same attacks bigger."""

from __future__ import annotations

import http.client
import shutil
import tempfile
from pathlib import Path

import psutil
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from farmnet import hostile
from farmnet.client import connect
from farmnet.protocol import commands as c
from farmnet.testing import ProcessFarm

MiB = 1 << 20

SERVER_YAML = """\
server:
  stats:
    enabled: false
  limits:
    max_partial_bytes: 8388608
  web:
    max_connections: 12
    max_connections_per_address: 6
    header_timeout: 2
"""


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


class BudgetTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-budgets-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        config = self.base / "server.yaml"
        config.write_text(SERVER_YAML)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        server = await self.farm.start_server("--config", str(config), "--web", "tcp:0:interface=127.0.0.1")
        self.pid = server.pid
        self.amp = int(self.farm.endpoint.rsplit(":", 1)[1])
        web_address = self.base / "server-store" / "web.address"
        for _ in range(200):
            if web_address.exists():
                break
            await deferLater(reactor, 0.05)
        self.web = int(web_address.read_text().strip().rsplit(":", 1)[1])

    def login_seconds(self) -> float:
        return hostile.amp_login_seconds("127.0.0.1", self.amp)

    async def test_unfinished_boxes_before_login_are_cut_short(self) -> None:
        """12 connections each sending 8 MiB of a box that never ends, before Hello: each
        is reset past max_hello_bytes (64 KiB), and the server's memory stays put."""
        before = rss(self.pid)
        results = [await deferToThread(hostile.partial_box, "127.0.0.1", self.amp, 8 * MiB)
                   for _ in range(12)]
        self.addCleanup(lambda: [sock.close() for _, _, sock in results])
        self.assertEqual([how for _, how, _ in results], ["reset"] * 12)
        self.assertTrue(all(sent < 4 * MiB for sent, _, _ in results), [s for s, _, _ in results])
        self.assertLess(rss(self.pid) - before, 16 * MiB)
        self.assertLess(await deferToThread(self.login_seconds), 2.0)

    async def test_unfinished_boxes_of_logged_in_peers_share_one_budget(self) -> None:
        """Logged-in tools may send big boxes, but their unfinished boxes together stay
        under max_partial_bytes (8 MiB here): of 5 tools sending 3 MiB each, the one whose
        bytes pass it is reset (which one depends on the order the server reads them in);
        at most two stay connected."""
        before = rss(self.pid)
        results = [await deferToThread(hostile.partial_box, "127.0.0.1", self.amp, 3 * MiB, login=True)
                   for _ in range(5)]
        self.addCleanup(lambda: [sock.close() for _, _, sock in results])
        await deferLater(reactor, 1.0)  # what the kernel buffered reaches the server
        # A reset seen while sending is already taken from the socket (a later recv reads b"").
        ended = sorted("reset" if how == "reset" else hostile.connection_state(sock)
                       for _, how, sock in results)
        self.assertIn(ended, [["open", "reset", "reset", "reset", "reset"],
                              ["open", "open", "reset", "reset", "reset"]])
        self.assertLess(rss(self.pid) - before, 40 * MiB)
        self.assertLess(await deferToThread(self.login_seconds), 2.0)

    async def test_a_tool_that_does_not_read_is_not_queued_for(self) -> None:
        """A tool asks 200 times for a page of 5,000 tasks (about 1 MiB each) and reads
        nothing: the server stops reading it once its answers back up, so its memory does
        not grow by the 200 MiB of answers, and other tools are served meanwhile."""
        client = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(client.close)
        job_id, _ = await client.submit({"job": {"name": "many", "blocks": [
            {"name": "b", "command": "echo @#@ and some words to make the page bigger",
             "frame_first": 1, "frame_last": 5000}]}})
        before = rss(self.pid)
        requests = [hostile.command_box(c.ListTasks, n + 2, job_id=job_id, offset=0, limit=5000)
                    for n in range(200)]
        sock = await deferToThread(hostile.non_reading_tool, "127.0.0.1", self.amp, requests)
        self.addCleanup(sock.close)
        await deferLater(reactor, 1.0)
        self.assertLess(rss(self.pid) - before, 48 * MiB)
        self.assertLess(await deferToThread(self.login_seconds), 2.0)
        for _ in range(3):  # served meanwhile; each big answer pauses and resumes its reading
            self.assertEqual(len(await client.tasks(job_id)), 5000)

    async def test_slow_web_clients_cannot_take_the_amp_port(self) -> None:
        """Slowloris from 4 addresses, 10 connections each: the web keeps at most 6 per
        address and 12 in all (the rest reset at once), an AMP login is quick meanwhile,
        and the header deadline (2 s) resets the ones it kept."""
        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        held, refused = await deferToThread(hostile.slow_web_connections, self.web, 10, sources)
        self.addCleanup(lambda: [sock.close() for sock in held])
        self.assertEqual((len(held), refused), (12, 28))
        self.assertLess(await deferToThread(self.login_seconds), 2.0)
        await deferLater(reactor, 3.0)
        self.assertEqual([hostile.connection_state(sock) for sock in held], ["reset"] * 12)

    async def test_web_answers_only_to_its_names(self) -> None:
        """DNS rebinding: a Host header naming another site gets 421; localhost and the
        address it listens on are answered."""
        for host, status in (("evil.example", 421), ("localhost", 200), (f"127.0.0.1:{self.web}", 200),
                             ("localhost.", 200), ("farm.evil.example:80", 421)):
            got = await deferToThread(_get_with_host, self.web, host)
            self.assertEqual(got, status, host)


def _get_with_host(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/api/farm", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
