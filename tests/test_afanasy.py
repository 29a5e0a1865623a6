"""Afanasy's wire protocol (``farmnet.server.afanasy``), spoken by a small client of the
tests' own: against a real ``twistd farmnet server`` with a real render, and against the
service in this reactor on 127.0.0.1 for the permission rules and bad input."""

from __future__ import annotations

import getpass
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from farmnet.client import connect
from farmnet.config import AfanasyConfig, ConnectionsConfig, LimitsConfig, SchedulingConfig
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.afanasy import AfanasyFactory, AfanasyServer
from farmnet.server.outputs import OutputStore
from farmnet.testing import ProcessFarm, wait_until

ME = getpass.getuser()  # the server's owner: an admin of a private farm


def time_wait_sockets(port: int, side: str = "local") -> set[tuple[str, str]]:
    """TIME-WAIT sockets (state 06 in /proc/net/tcp*) whose ``local`` or ``remote`` port is
    ``port``, as (local, remote) address pairs."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            mine = local if side == "local" else remote
            if state == "06" and int(mine.rsplit(":", 1)[1], 16) == port:
                found.add((local, remote))
    return found


def framed(request: Any) -> bytes:
    body = json.dumps(request).encode()
    return b"AFANASY %d JSON" % len(body) + body


class AfanasyClient(Protocol):
    """Sends ``payload`` (in ``chunks`` spaced ``pause`` s apart), reads one framed answer,
    then closes first, as CGRU's afnetwork does (``close=False``: never closes)."""

    def __init__(self, payload: bytes, *, close: bool = True, chunks: int = 1, pause: float = 0.0) -> None:
        self.payload, self.close, self.chunks, self.pause = payload, close, chunks, pause
        self.received = bytearray()
        self._writes: list[IDelayedCall] = []
        self.answer: defer.Deferred[Any] = defer.Deferred()
        #: Fires once the connection is gone; why is ``lost_reason``.
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.lost_reason: Failure | None = None

    def connectionMade(self) -> None:
        size = -(-len(self.payload) // self.chunks)
        self._writes = [reactor.callLater(i * self.pause, self._write, self.payload[i * size:(i + 1) * size])
                        for i in range(self.chunks)]

    def _write(self, piece: bytes) -> None:
        if self.transport is not None and self.transport.connected and not self.answer.called:
            self.transport.write(piece)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        end = self.received.find(b"JSON")
        if end < 0 or self.answer.called:
            return
        head = bytes(self.received[:end + 4])
        assert head.startswith(b"AFANASY "), head
        length = int(head.split()[1])
        if len(self.received) >= len(head) + length:
            body = bytes(self.received[len(head):len(head) + length])
            if self.close:
                self.transport.loseConnection()
            self.answer.callback(json.loads(body))

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.answer.called:
            self.answer.errback(reason)
        for call in self._writes:
            if call.active():
                call.cancel()
        self.lost_reason = reason
        self.lost.callback(None)


async def send(port: int, payload: bytes | Any, **options: Any) -> tuple[Any, AfanasyClient]:
    """One request on its own connection; the answer and the client."""
    if not isinstance(payload, bytes):
        payload = framed(payload)
    client = AfanasyClient(payload, **options)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    answer = await client.answer
    if client.close:
        await client.lost
    return answer, client


def job(name: str, user: str = ME, frames: int = 3, command: str = "sleep 30") -> dict[str, Any]:
    """A job as CGRU's af.py writes it."""
    return {"job": {"name": name, "user_name": user, "host_name": "ws1", "priority": 99,
                    "blocks": [{"name": "frames", "service": "generic", "parser": "generic", "flags": 1,
                                "capacity": 1000, "command": command, "working_directory": "/tmp",
                                "frame_first": 1, "frame_last": frames, "frames_per_task": 1,
                                "frames_inc": 1}]}}


def get(kind: str, **more: Any) -> dict[str, Any]:
    return {"get": {"type": kind, "user_name": ME, "host_name": "ws1", **more}}


def action(kind: str, user: str = ME, **more: Any) -> dict[str, Any]:
    return {"action": {"type": kind, "user_name": user, "host_name": "ws1", **more}}


class RealServerTests(TestCase):
    """``twistd farmnet server --afanasy tcp:0`` with one real render."""

    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-afanasy-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        config = self.base / "server.yaml"
        config.write_text("server:\n  stats:\n    enabled: false\n  connections:\n    close_wait: 0.5\n"
                          "  afanasy:\n    request_timeout: 1.0\n  limits:\n    max_box_bytes: 1048576\n")
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", str(config), "--afanasy", "tcp:0:interface=127.0.0.1")
        address = self.base / "server-store" / "afanasy.address"  # written after AMP's
        await wait_until(reactor, address.exists, 10, "the Afanasy listener")
        self.port = int(address.read_text().strip().rsplit(":", 1)[1])
        self.time_wait_before = time_wait_sockets(self.port)

    async def ask(self, request: Any, **options: Any) -> Any:
        answer, _ = await send(self.port, request, **options)
        return answer

    async def test_submit_list_info_progress_pause_delete(self) -> None:
        answer = await self.ask(job("shot010"))
        job_id = answer["id"]
        self.assertEqual(answer, {"id": job_id, "serial": answer["serial"]})
        self.assertGreater(job_id, 0)

        jobs = (await self.ask(get("jobs")))["jobs"]  # af.Cmd().getJobList()
        [mine] = [j for j in jobs if j["id"] == job_id]
        self.assertEqual((mine["name"], mine["user_name"], mine["host_name"], mine["state"], mine["st"]),
                         ("shot010", ME, "ws1", " RDY", 1))
        blocks = [(b["name"], b["tasks_num"], b["flags"]) for b in mine["blocks"]]
        self.assertEqual(blocks, [("frames", 3, 1)])

        [info] = (await self.ask(get("jobs", ids=[job_id], mode="full")))["jobs"]  # getJobInfo()
        self.assertEqual(info["blocks"][0]["command"], "sleep 30")
        self.assertEqual(info["blocks"][0]["working_directory"], "/tmp")

        progress = (await self.ask(get("jobs", ids=[job_id], mode="progress")))["job_progress"]
        self.assertEqual(progress["id"], job_id)
        self.assertEqual([[t["state"] for t in block] for block in progress["progress"]],
                         [[" RDY", " RDY", " RDY"]])

        # A render takes the first task: its progress says where it runs.
        await self.farm.start_render("r1")

        async def running() -> Any:
            answer = await self.ask(get("jobs", ids=[job_id], mode="progress"))
            tasks = answer["job_progress"]["progress"][0]
            return tasks[0].get("hst") == "r1" and tasks[0]["state"] == " RUN" and tasks

        tasks = await wait_until(reactor, running, 30, "the first task running on r1")
        self.assertEqual((tasks[0]["st"], tasks[0]["str"]), (2, 1))

        answer = await self.ask(action("jobs", ids=[job_id], operation={"type": "pause"}))  # setJobState
        self.assertEqual(answer["info"]["kind"], "log")
        [paused] = (await self.ask(get("jobs", ids=[job_id])))["jobs"]
        self.assertIn("OFF", paused["state"].split())
        await self.ask(action("jobs", ids=[job_id], operation={"type": "start"}))
        [started] = (await self.ask(get("jobs", ids=[job_id])))["jobs"]
        self.assertNotIn("OFF", started["state"].split())

        # deleteJob(name): by mask, a regular expression on the whole name.
        answer = await self.ask(action("jobs", mask="shot0.0", operation={"type": "delete"}))
        self.assertEqual(answer, {"info": {"kind": "log", "text": f"jobs {job_id}: delete"}})
        jobs = (await self.ask(get("jobs")))["jobs"]
        self.assertNotIn(job_id, [j["id"] for j in jobs])
        answer = await self.ask(get("jobs", ids=[job_id], mode="progress"))
        self.assertEqual(answer, {"info": {"kind": "error", "text": "Invalid ID"}})

    async def test_render_nimby_eject_and_free(self) -> None:
        await self.farm.start_render("r1")

        async def registered() -> Any:
            return (await self.ask(get("renders")))["renders"]

        [render] = await wait_until(reactor, registered, 30, "r1 registered")
        self.assertEqual((render["name"], render["state"]), ("r1", " ONL"))
        await self.ask(action("renders", mask="r1", params={"nimby": True}))  # renderSetNimby()
        [render] = (await self.ask(get("renders", mask="r1")))["renders"]
        self.assertEqual(render["state"], " ONL NbY")
        await self.ask(action("renders", ids=[render["id"]], params={"NIMBY": True},
                              operation={"type": "eject_tasks"}))  # renderEjectAndNIMBY()
        [render] = (await self.ask(get("renders", ids=[render["id"]])))["renders"]
        self.assertEqual(render["state"], " ONL NbY NBY")
        await self.ask(action("renders", mask="r1", params={"nimby": False}))  # renderSetFree()
        [render] = (await self.ask(get("renders")))["renders"]
        self.assertEqual(render["state"], " ONL")
        answer = await self.ask(action("renders", mask="nobody", params={"nimby": True}))
        self.assertEqual(answer["info"]["text"], "renders: No node matches 'nobody' found.")

    async def test_task_output_info_and_log_from_a_real_render_and_the_monitors(self) -> None:
        job_id = (await self.ask(job("echo", frames=1, command="echo hello-@#@")))["id"]
        await self.farm.start_render("r1")

        async def done() -> Any:
            answer = await self.ask(get("jobs", ids=[job_id], mode="progress"))
            return answer["job_progress"]["progress"][0][0]["state"] == " DON"

        await wait_until(reactor, done, 30, "the task done on r1")
        where = {"ids": [job_id], "block_ids": [0], "task_ids": [0]}
        task = (await self.ask(get("jobs", mode="output", **where)))["task"]
        self.assertEqual((task["type"], task["pos"]["number"], task["progress"]["hst"]), ("TOutput", 1, "r1"))
        self.assertIn("hello-1", task["data"])
        task = (await self.ask(get("jobs", mode="info", **where)))["task"]
        self.assertEqual((task["exec"]["command"], task["exec"]["frame_start"]), ("echo hello-1", 1))
        lines = (await self.ask(get("jobs", mode="log", **where)))["task"]["data"].split("\n")
        self.assertTrue(lines[0].endswith(": started on r1 (run 1)"), lines)
        self.assertTrue(lines[1].endswith(": run 1 on r1: DON, exit code 0"), lines)

        amp = (self.base / "server-store" / "amp.address").read_text().strip()
        monitor = await connect(reactor, amp, ME, kind="monitor")
        self.addCleanup(lambda: defer.ensureDeferred(monitor.aclose()))
        [listed] = (await self.ask(get("monitors")))["monitors"]
        self.assertEqual((listed["user_name"], listed["host_name"], listed["engine"]),
                         (ME, "127.0.0.1", "farmnet"))

    async def test_unsupported_requests_are_errors(self) -> None:
        for request, text in [
            ({"monitor": {"engine": "python"}}, "farmnet does not support Afanasy's 'monitor' request"),
            ({"reload_config": True}, "farmnet does not support Afanasy's 'reload_config' request"),
            ({"frobnicate": {}}, "unknown request 'frobnicate'"),
            (get("files"), "Invalid get type = 'files'"),
            (get("pools", ids=[1]), "farmnet's pools have no ids"),
            (get("jobs", mode="thumbnail", ids=[1]), "it keeps no thumbnails"),
            (action("jobs", ids=[1], operation={"type": "restart_warnings"}),
             "job operation 'restart_warnings' is not supported by farmnet"),
            (action("renders", mask=".*", params={"user_name": "x"}), "render parameter 'user_name' is not"),
            (action("monitors", ids=[1], operation={"type": "exit"}),
             "Action type 'monitors' is not supported"),
            (action("jobs", ids=[1], operation={"type": "delete"}), "the system job cannot be deleted"),
            (action("jobs", ids=[1],
                    operation={"type": "append_blocks", "blocks": [{"name": "b", "command": "true"}]}),
             "the system job takes no appended blocks"),
            (action("renderz", ids=[1], operation={"type": "exit"}), "Action has unknown type: 'renderz'"),
            (action("jobs", operation={"type": "pause"}), "should have nodes ids or mask"),
            (action("jobs", user="", ids=[1], operation={"type": "pause"}), 'needs a non-empty "user_name"'),
            (get("jobs", mask="(a)\\1"), "masks are RE2 regular expressions: no backreferences"),
        ]:
            answer = await self.ask(request)
            self.assertEqual(answer["info"]["kind"], "error", request)
            self.assertIn(text, answer["info"]["text"])

    async def test_permissions_are_the_action_apis(self) -> None:
        job_id = (await self.ask(job("anna's", user="anna")))["id"]
        answer = await self.ask(action("jobs", user="bob", ids=[job_id], operation={"type": "delete"}))
        self.assertEqual(answer["info"], {"kind": "error",
                                          "text": f"user 'bob' may not change job {job_id} of user 'anna'"})
        answer = await self.ask(action("jobs", user="anna", ids=[job_id], params={"priority": 251}))
        self.assertEqual(answer["info"]["kind"], "error")
        answer = await self.ask(action("jobs", user="anna", ids=[job_id], params={"priority": 50}))
        self.assertEqual(answer["info"]["kind"], "log")
        [anna] = (await self.ask(get("jobs", ids=[job_id])))["jobs"]
        self.assertEqual(anna["priority"], 50)
        bad = job("no blocks")
        bad["job"]["blocks"] = []
        answer = await self.ask(bad)
        self.assertEqual((answer["id"], answer["serial"]), (0, 0))
        self.assertIn("job.blocks: a job needs a non-empty list of blocks", answer["error"])

    async def test_bad_input_gets_an_error_and_the_server_goes_on(self) -> None:
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not Afanasy's framing"),
            (b"AFANASY x JSON{}", "not Afanasy's framing"),
            (b"AFANASY 999999999 JSON{", "a request of 999999999 bytes is more than this server takes"),
            (b"AFANASY 2 JSON{}}}}", "the request is longer than its header says (2 bytes)"),
            (b'AFANASY 5 JSON{"get": {"type": "jobs"}}', "the request is longer than its header says"),
            (b"AFANASY 3 JSON{]}", "the request is not JSON"),
            (b"AFANASY 2 JSON[]", 'a request is a JSON object with one key'),
            (b"AFANASY 2 JSON\xff\xfe", "the request is not UTF-8"),
            (b"AFANASY 50 JSON{}", "no whole request within 1 s"),  # a lying length: less comes
            (b"AFAN", "no whole request within 1 s"),  # a silent sender
        ]
        for payload, text in cases:
            answer, _ = await send(self.port, payload)
            self.assertEqual(answer["info"]["kind"], "error", payload)
            self.assertIn(text, answer["info"]["text"], payload)
        # A slow sender: a whole request, a piece every 0.3 s, not done within request_timeout.
        answer, _ = await send(self.port, framed(get("jobs")), chunks=8, pause=0.3)
        self.assertIn("no whole request within 1 s", answer["info"]["text"])
        # Each got its answer and closed first: the server is fine and left no TIME-WAIT.
        self.assertIn("jobs", await self.ask(get("jobs")))
        self.assertEqual(time_wait_sockets(self.port) - self.time_wait_before, set())

    async def test_no_time_wait_after_many_requests_and_a_client_that_never_closes_is_reset(self) -> None:
        await self.ask(job("many"))
        for _ in range(100):
            answer = await self.ask(get("jobs"))
            self.assertEqual([j["name"] for j in answer["jobs"]], ["system", "many"])
        self.assertEqual(time_wait_sockets(self.port) - self.time_wait_before, set())
        self.assertGreaterEqual(len(time_wait_sockets(self.port, "remote")), 100)  # the clients' side

        start = reactor.seconds()
        answer, client = await send(self.port, get("jobs"), close=False)
        self.assertIn("jobs", answer)
        await client.lost
        reason = client.lost_reason
        assert reason is not None
        self.assertTrue(reason.check(error.ConnectionLost), reason)  # an RST, not a FIN
        self.assertGreaterEqual(reactor.seconds() - start, 0.4)  # after close_wait (0.5 s)
        self.assertEqual(time_wait_sockets(self.port) - self.time_wait_before, set())


class TrustTests(TestCase):
    """Who may do what on this port: the service in this reactor, a real listener."""

    async def serve(self, *, users_file: str = "", public: bool = True, trust: bool = False,
                    output_readers: str = "public") -> int:
        self.farm = Farm(reactor, SchedulingConfig(admins=("boss",)))
        self.addCleanup(self.farm.stop)
        outputs = Path(tempfile.mkdtemp(prefix="farmnet-afanasy-outputs-"))
        self.addCleanup(shutil.rmtree, outputs, True)
        self.outputs = OutputStore(outputs)
        self.addCleanup(self.outputs.close_all)
        self.server = AfanasyServer(reactor, self.farm, AfanasyConfig(trust_user_names=trust),
                                    connections=ConnectionsConfig(close_wait=0.5), limits=LimitsConfig(),
                                    users_file=users_file, public=public, outputs=self.outputs,
                                    output_readers=output_readers)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(AfanasyFactory(self.server))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.ensureDeferred(self.server.shutdown()))
        return port.getHost().port

    async def test_without_a_users_file_local_user_names_are_believed(self) -> None:
        port = await self.serve()
        answer, _ = await send(port, job("anna's", user="anna"))
        self.assertEqual(self.farm.jobs[answer["id"]].user_name, "anna")

    async def test_with_a_users_file_changes_are_refused_and_reads_allowed(self) -> None:
        port = await self.serve(users_file="/nonexistent/users")
        answer, _ = await send(port, job("anna's", user="anna"))
        self.assertEqual((answer["id"], answer["serial"]), (0, 0))
        self.assertIn("this farm has passwords (auth.users_file) and Afanasy's protocol has none",
                      answer["error"])
        spec, _ = parse_job(job("kept", user="anna")["job"])
        job_id = self.farm.submit(spec, "anna").id
        answer, _ = await send(port, action("jobs", user="boss", ids=[job_id], operation={"type": "delete"}))
        self.assertIn("refused: this farm has passwords", answer["info"]["text"])
        self.assertIn(job_id, self.farm.jobs)
        answer, _ = await send(port, get("jobs"))
        self.assertEqual([j["name"] for j in answer["jobs"]], ["kept"])

    async def test_private_pages_are_not_read_without_trust(self) -> None:
        port = await self.serve(users_file="/nonexistent/users", public=False)
        answer, _ = await send(port, get("jobs"))
        self.assertIn("reading refused", answer["info"]["text"])

    async def test_task_output_is_read_by_whom_server_auth_outputs_says(self) -> None:
        port = await self.serve(users_file="/nonexistent/users", trust=True, output_readers="owner")
        spec, _ = parse_job(job("anna's", user="anna", frames=1)["job"])
        job_id = self.farm.submit(spec, "anna").id
        render = self.farm.register_render("r1", capacity=1000)
        self.farm.solve()
        self.outputs.append((job_id, 0, 0), 1, b"secret frame\n")
        where = {"ids": [job_id], "block_ids": [0], "task_ids": [0], "mode": "output"}
        answer, _ = await send(port, {"get": {"type": "jobs", "user_name": "bob", **where}})
        self.assertIn("user 'bob' may not read the output of job", answer["info"]["text"])
        answer, _ = await send(port, {"get": {"type": "jobs", "user_name": "anna", **where}})
        self.assertEqual(answer["task"]["data"], "secret frame\n")
        self.assertEqual(render.tasks[(job_id, 0, 0)].host, "r1")

    async def test_without_trust_a_farm_with_passwords_keeps_outputs(self) -> None:
        port = await self.serve(users_file="/nonexistent/users", output_readers="users")
        spec, _ = parse_job(job("anna's", user="anna", frames=1)["job"])
        job_id = self.farm.submit(spec, "anna").id
        answer, _ = await send(port, get("jobs", ids=[job_id], block_ids=[0], task_ids=[0], mode="output"))
        self.assertIn("reading task output refused: this farm has passwords", answer["info"]["text"])

    async def test_trust_takes_user_names_as_afanasy_does(self) -> None:
        port = await self.serve(users_file="/nonexistent/users", trust=True)
        answer, _ = await send(port, job("anna's", user="anna"))
        job_id = answer["id"]
        answer, _ = await send(port, action("jobs", user="bob", ids=[job_id], operation={"type": "delete"}))
        self.assertIn("user 'bob' may not change job", answer["info"]["text"])
        answer, _ = await send(port, action("jobs", user="boss", ids=[job_id], operation={"type": "delete"}))
        self.assertEqual(answer["info"]["kind"], "log")
        self.assertNotIn(job_id, self.farm.jobs)


class JobListTests(TestCase):
    """``get jobs`` is answered from each job's JSON kept encoded: every change shows."""

    async def setUp(self) -> None:
        self.farm = Farm(reactor, SchedulingConfig(admins=("boss",)))
        self.addCleanup(self.farm.stop)
        self.server = AfanasyServer(reactor, self.farm, connections=ConnectionsConfig(close_wait=0.5))
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(AfanasyFactory(self.server))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.ensureDeferred(self.server.shutdown()))
        self.port = port.getHost().port

    def submit(self, name: str, **job_keys: Any) -> int:
        document = job(name, user="anna")["job"]
        document.update(job_keys)
        spec, _ = parse_job(document)
        return self.farm.submit(spec, "anna").id

    async def states(self) -> dict[str, str]:
        answer, _ = await send(self.port, get("jobs"))
        return {j["name"]: j["state"] for j in answer["jobs"]}

    async def test_changes_show_in_the_next_listing(self) -> None:
        first = self.submit("first")
        self.submit("later", depend_mask="first")  # its state depends on another job
        self.assertEqual(await self.states(), {"first": " RDY", "later": " WDP"})
        self.assertEqual(await self.states(), {"first": " RDY", "later": " WDP"})  # from the kept JSON
        render = self.farm.register_render("r1", capacity=1100)
        self.farm.solve()
        self.assertEqual([t.key[0] for t in render.tasks.values()], [first])
        self.assertEqual(await self.states(), {"first": " RDY RUN", "later": " WDP"})
        self.farm.job_action("anna", [first], "pause")
        self.assertEqual(await self.states(), {"first": " RDY RUN OFF", "later": " WDP"})
        self.farm.job_action("anna", [first], "skip")  # done: the job that waited for it is ready
        states = await self.states()
        self.assertEqual(states["first"], " DON SKP OFF")
        self.assertIn(states["later"], (" RDY", " RDY RUN"))  # the render may have its first task
        self.farm.job_action("anna", [first], "delete")
        self.assertEqual(list(await self.states()), ["later"])
        answer, _ = await send(self.port, get("jobs", mask="lat.*"))
        self.assertEqual([j["name"] for j in answer["jobs"]], ["later"])

    async def test_a_half_sent_request_is_told_when_the_server_stops(self) -> None:
        client = AfanasyClient(b"AFANASY 40 JSON{")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        await wait_until(reactor, lambda: len(self.server.registry) == 1, 5, "the connection")
        stopped = defer.ensureDeferred(self.server.shutdown())
        answer = await client.answer
        self.assertEqual(answer, {"info": {"kind": "error", "text": "the server is stopping"}})
        await client.lost
        await stopped
        self.assertEqual(len(self.server.registry), 0)
