"""Tests for farmnet.sysjob.events: the events program run as a real process, delivering to a real SMTP
server and a real web server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import json
import os
import sys
import textwrap
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.mail import smtp
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import implementer

from farmnet.config import RenderConfig, RenderSysJobConfig
from farmnet.render.services import EVENT_DATA_ENV_MAX, cleanup, event_data_path, prepare
from farmnet.sysjob.events import BadEventData, EventService, SmtpSettings, load_data

_T = 20.0


# --- a real SMTP server ------------------------------------------------------------------


@implementer(smtp.IMessage)
class _Message:
    """One recipient's copy of a message (the SMTP server makes one per accepted recipient)."""

    def __init__(self, store: list[dict[str, Any]], recipient: str) -> None:
        self.store, self.recipient, self.lines = store, recipient, []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        parsed = email.message_from_bytes(b"\n".join(self.lines), policy=email.policy.default)
        for entry in self.store:  # another recipient's copy of the same message
            if entry["message"]["Message-ID"] == parsed["Message-ID"]:
                entry["to"].append(self.recipient)
                break
        else:
            self.store.append({"to": [self.recipient], "message": parsed})
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, store: list[dict[str, Any]], refuse: set[str]) -> None:
        self.store, self.refuse = store, refuse

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: smtp.User) -> Any:
        address = str(user.dest)
        if address in self.refuse:
            raise smtp.SMTPBadRcpt(user)
        return lambda: _Message(self.store, address)


class _SMTPFactory(smtp.SMTPFactory):
    protocol = smtp.ESMTP

    def __init__(self, store: list[dict[str, Any]], refuse: set[str]) -> None:
        super().__init__()
        self.store, self.refuse = store, refuse

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        p.delivery = _Delivery(self.store, self.refuse)
        p.challengers = {}
        return p


# --- a real web server -----------------------------------------------------------------


class _Hook(resource.Resource):
    isLeaf = True

    def __init__(self, received: list[Any]) -> None:
        super().__init__()
        self.received = received

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self.received.append({"path": request.path.decode(), "type": request.getHeader("content-type"),
                              "json": json.loads(body)})
        if request.path == b"/fail":
            request.setResponseCode(500)
            return b"hook exploded"
        return b"ok"


# --- the tests -------------------------------------------------------------------------------


def job_data(**more: Any) -> dict[str, Any]:
    """Event data as the system job sends it (farmnet.sysjob.job): custom data, what happened."""
    return {
        "emails": ["anna@example.com", "lead@example.com"],
        "events": {"JOB_DONE": {"methods": ["email", "webhook"]}, "JOB_ERROR": {"methods": ["email"]}},
        "event": "JOB_DONE",
        "job": {"id": 12, "name": "shot010", "user_name": "anna", "state": "DON", "time_done": 1.5e9},
        "user": "anna",
        **more,
    }


class EventsProgramTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.mail: list[dict[str, Any]] = []
        self.refuse: set[str] = set()
        smtp_port = reactor.listenTCP(0, _SMTPFactory(self.mail, self.refuse), interface="127.0.0.1")
        self.addCleanup(smtp_port.stopListening)
        self.smtp = {"host": "127.0.0.1", "port": smtp_port.getHost().port, "from": "farm@example.com"}
        self.hooks: list[Any] = []
        web_port = reactor.listenTCP(0, server.Site(_Hook(self.hooks)), interface="127.0.0.1")
        self.addCleanup(web_port.stopListening)
        self.web = f"http://127.0.0.1:{web_port.getHost().port}"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("FARMNET_SMTP_", "FARMNET_EVENT"))}
        self.config = RenderConfig(name="r1", state_dir=os.path.abspath(self.mktemp()))

    async def run_events(self, data: Any, *args: str, env: dict[str, str] | None = None
                         ) -> tuple[str, str, int]:
        """The events program as a process, the data in the environment as the render passes it."""
        environ = {**self.env, **(env or {})}
        if data is not None:
            environ["FARMNET_EVENT_DATA"] = data if isinstance(data, str) else json.dumps(data)
        d = getProcessOutputAndValue(sys.executable, ["-m", "farmnet.sysjob.events", *args], env=environ,
                                     reactor=reactor)
        out, err, code = await d.addTimeout(_T, reactor)
        return out.decode(), err.decode(), code

    async def run_task(self, data: dict[str, Any], run: int = 1) -> tuple[str, str, int]:
        """The events task as the render runs it: the events service's command and environment."""
        order = {"order": "start", "job_id": 1, "block": 2, "task": 5, "run": run, "service": "events",
                 "command": json.dumps(data)}
        prepared = prepare(order, self.config, self.env)
        try:
            d = getProcessOutputAndValue("/bin/sh", ["-c", prepared.command], env=prepared.environment,
                                         reactor=reactor)
            out, err, code = await d.addTimeout(_T, reactor)
        finally:
            cleanup(order, self.config)
        self.assertFalse(os.path.exists(event_data_path(order, self.config)))
        return out.decode(), err.decode(), code

    async def test_job_done_email_and_webhook(self) -> None:
        data = job_data(webhooks=[f"{self.web}/hook"], smtp=self.smtp)
        out, err, code = await self.run_task(data)
        self.assertEqual(code, 0, err)
        # Only the emitted event: one email, to every address.
        self.assertEqual(len(self.mail), 1, self.mail)
        mail = self.mail[0]
        self.assertEqual(sorted(mail["to"]), ["anna@example.com", "lead@example.com"])
        message = mail["message"]
        self.assertEqual(message["Subject"], "[farmnet] JOB_DONE: shot010 (anna)")
        self.assertEqual(message["From"], "farm@example.com")
        self.assertEqual(message["To"], "anna@example.com, lead@example.com")
        body = message.get_content()
        for line in ("Event: JOB_DONE", "Job: shot010 (id 12)", "State: DON", "User: anna"):
            self.assertIn(line, body)
        # The webhook got the event, not the custom data.
        self.assertEqual(len(self.hooks), 1)
        hook = self.hooks[0]
        self.assertEqual((hook["path"], hook["type"]), ("/hook", "application/json; charset=UTF-8"))
        self.assertEqual(hook["json"]["event"], "JOB_DONE")
        self.assertEqual(hook["json"]["job"], data["job"])
        self.assertEqual(hook["json"]["user"], "anna")
        for secret in ("emails", "smtp", "webhooks", "events"):
            self.assertNotIn(secret, hook["json"])
        self.assertIn("JOB_DONE: email to anna@example.com, lead@example.com", out)
        self.assertIn(f"JOB_DONE: webhook {self.web}/hook: sent", out)

    async def test_large_data_through_a_file(self) -> None:
        data = job_data(smtp=self.smtp, notes="x" * (EVENT_DATA_ENV_MAX + 1))
        out, err, code = await self.run_task(data, run=3)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(self.mail), 1)

    async def test_smtp_settings_from_environment(self) -> None:
        env = {"FARMNET_SMTP_HOST": "127.0.0.1", "FARMNET_SMTP_PORT": str(self.smtp["port"]),
               "FARMNET_SMTP_FROM": "render@example.com"}
        _, err, code = await self.run_events(job_data(), env=env)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.mail[0]["message"]["From"], "render@example.com")

    async def test_failing_webhook(self) -> None:
        data = job_data(webhooks=[f"{self.web}/fail", f"{self.web}/ok"], smtp=self.smtp)
        out, err, code = await self.run_events(data)
        self.assertEqual(code, 1)
        self.assertIn(f"events: JOB_DONE: webhook {self.web}/fail failed: HTTP 500: hook exploded", err)
        self.assertNotIn("/ok failed", err)
        # The other deliveries went out all the same.
        self.assertEqual(len(self.mail), 1)
        self.assertEqual(sorted(h["path"] for h in self.hooks), ["/fail", "/ok"])

    async def test_refused_recipient_and_dead_smtp(self) -> None:
        self.refuse.add("lead@example.com")
        _, err, code = await self.run_events(job_data(smtp=self.smtp))
        self.assertEqual(code, 1)
        self.assertIn("JOB_DONE: email to anna@example.com, lead@example.com via 127.0.0.1:", err)
        self.assertIn("recipients refused: lead@example.com (550", err)
        # A server that is not there.
        port = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        dead = port.getHost().port
        await port.stopListening()
        _, err, code = await self.run_events(job_data(smtp={"host": "127.0.0.1", "port": dead}))
        self.assertEqual(code, 1)
        self.assertIn(
            f"JOB_DONE: email to anna@example.com, lead@example.com via 127.0.0.1:{dead} failed", err)

    async def test_bad_data(self) -> None:
        cases = [
            ("{not json", "the event data is not JSON"),
            ("[1, 2]", "must be a JSON object"),
            ({"job": {}}, 'the data has no "events"'),
            ({"events": {"JOB_DONE": {"methods": "email"}}, "emails": ["a@b"]}, '"methods" must be a list'),
            ({"events": {"JOB_DONE": {"methods": ["email"]}}, "emails": ["a@b", 7]},
             '"emails" must be a list'),
            ({"events": {"JOB_DONE": {"methods": ["webhook"]}}, "webhooks": ["ftp://x"]},
             "webhook URL must start with http:// or https://"),
        ]
        for data, message in cases:
            _, err, code = await self.run_events(data)
            self.assertEqual(code, 2, (data, err))
            self.assertIn(message, err)
        _, err, code = await self.run_events(None)
        self.assertEqual(code, 2)
        self.assertIn("no event data", err)
        self.assertEqual(self.mail, [])

    async def test_methods_with_nowhere_to_go_skipped(self) -> None:
        data = job_data(smtp=self.smtp, events={"JOB_DONE": {"methods": ["email", "webhook", "pigeon"]}})
        _, err, code = await self.run_events(data)
        self.assertEqual(code, 0, err)
        self.assertIn('events: JOB_DONE: method "webhook" but no "webhooks" in the data, skipped', err)
        self.assertIn("events: JOB_DONE: unknown method 'pigeon' (known: email, webhook), skipped", err)
        self.assertEqual(len(self.mail), 1)

    async def test_nothing_to_deliver(self) -> None:
        data = job_data(event="JOB_DELETED", smtp=self.smtp)
        _, err, code = await self.run_events(data)
        self.assertEqual((code, self.mail), (0, []), err)

    async def test_afanasy_list_of_events(self) -> None:
        data = {"events": ["JOB_ERROR"], "emails": ["anna@example.com"], "smtp": self.smtp,
                "job": {"id": 3, "name": "shot020", "user_name": "anna", "state": "ERR"}}
        _, err, code = await self.run_events(data)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.mail[0]["message"]["Subject"], "[farmnet] JOB_ERROR: shot020 (anna)")

    async def test_render_event(self) -> None:
        # As the system job sends it: farm custom data {"events": {"RENDER_ZOMBIE": {}}} (no methods:
        # every method with somewhere to go), the render and its pools.
        data = {"events": {"RENDER_ZOMBIE": {}, "RENDER_SICK": {}}, "emails": ["ops@example.com"],
                "smtp": self.smtp, "event": "RENDER_ZOMBIE", "pools": ["/", "/gpu"],
                "render": {"name": "render07", "state": "offline", "error_history": []}}
        _, err, code = await self.run_events(data)
        self.assertEqual(code, 0, err)
        message = self.mail[0]["message"]
        self.assertEqual(message["Subject"], "[farmnet] RENDER_ZOMBIE: render07")
        self.assertIn("Pools: /, /gpu", message.get_content())

    async def test_custom_class_by_name(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "studio_events.py"), "w") as f:
            f.write(textwrap.dedent("""
                import json, sys

                class Printer:
                    def __init__(self, reactor):
                        self.reactor = reactor

                    async def handle(self, data):
                        print("custom got " + json.dumps(data["event"]))
                        return ["pager is down"] if data.get("fail") else []
                """))
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [directory, os.environ.get("PYTHONPATH")]))}
        data = job_data()
        out, err, code = await self.run_events(data, "--service", "studio_events:Printer", env=env)
        self.assertEqual(code, 0, err)
        self.assertIn('custom got "JOB_DONE"', out)
        _, err, code = await self.run_events({**data, "fail": True}, "--service", "studio_events:Printer",
                                             env=env)
        self.assertEqual(code, 1)
        self.assertIn("events: pager is down", err)
        _, err, code = await self.run_events(data, "--service", "studio_events:Missing", env=env)
        self.assertEqual(code, 2)
        self.assertIn("cannot load the events class 'studio_events:Missing'", err)

    async def test_custom_class_from_render_config(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "studio_events2.py"), "w") as f:
            f.write("class Quiet:\n    def __init__(self, reactor):\n        pass\n\n"
                    "    async def handle(self, data):\n        print('quiet ok')\n        return []\n")
        self.config = RenderConfig(name="r1", state_dir=self.config.state_dir,
                                   sysjob=RenderSysJobConfig(events_service_class="studio_events2:Quiet"))
        self.env["PYTHONPATH"] = directory
        out, err, code = await self.run_task(job_data())
        self.assertEqual(code, 0, err)
        self.assertIn("quiet ok", out)


class EventServiceUnitTests(unittest.SynchronousTestCase):
    def test_deliveries(self) -> None:
        service = EventService(reactor, environ={})
        data = job_data(webhooks=["http://h/1"])
        self.assertEqual(service.deliveries(data), [("JOB_DONE", "email"), ("JOB_DONE", "webhook")])
        self.assertEqual(service.deliveries({**data, "event": None, "emitted": ["JOB_ERROR", "JOB_DONE"]}),
                         [("JOB_DONE", "email"), ("JOB_DONE", "webhook"), ("JOB_ERROR", "email")])
        del data["event"]  # the server sent only what happened
        self.assertEqual(len(service.deliveries(data)), 3)
        with self.assertRaises(BadEventData):
            service.deliveries({**data, "events": {"JOB_DONE": {"methods": "email"}}})
        with self.assertRaises(BadEventData):
            service.deliveries({**data, "event": 5})
        # No methods: every one with somewhere to go.
        self.assertEqual(service.deliveries({**data, "events": {"JOB_DONE": {}}, "event": "JOB_DONE"}),
                         [("JOB_DONE", "email"), ("JOB_DONE", "webhook")])
        self.assertEqual(service.deliveries({"events": ["JOB_DONE"], "emails": "a@b, c@d"}),
                         [("JOB_DONE", "email")])
        notes: list[str] = []
        self.assertEqual(service.deliveries({**data, "webhooks": []}, notes),
                         [("JOB_DONE", "email"), ("JOB_ERROR", "email")])
        self.assertEqual(notes, ['JOB_DONE: method "webhook" but no "webhooks" in the data, skipped'])

    def test_smtp_settings(self) -> None:
        env = {"FARMNET_SMTP_HOST": "mail", "FARMNET_SMTP_PORT": "587", "FARMNET_SMTP_USERNAME": "farm",
               "FARMNET_SMTP_PASSWORD": "pw", "FARMNET_SMTP_TLS": "yes"}
        s = SmtpSettings.from_data({"smtp": {"port": 2525, "from": "a@b"}}, env)
        self.assertEqual((s.host, s.port, s.sender, s.username, s.password, s.require_tls),
                         ("mail", 2525, "a@b", "farm", "pw", True))
        s = SmtpSettings.from_data({}, {})
        self.assertEqual((s.host, s.port, s.username, s.require_tls), ("localhost", 25, None, False))
        self.assertTrue(s.sender.startswith("farmnet@"))
        with self.assertRaises(BadEventData):
            SmtpSettings.from_data({"smtp": {"port": "x"}}, {})

    def test_subject(self) -> None:
        service = EventService(reactor, environ={})
        self.assertEqual(service.subject("JOB_DONE", job_data()), "[farmnet] JOB_DONE: shot010 (anna)")
        self.assertEqual(service.subject("JOB_DELETED", {"job": {"name": "x"}, "user": "bob"}),
                         "[farmnet] JOB_DELETED: x (bob)")
        self.assertEqual(service.subject("RENDER_SICK", {"render": {"name": "r9"}}),
                         "[farmnet] RENDER_SICK: r9")

    def test_load_data_file_deleted(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"events": []}')
        self.assertEqual(load_data(path, {}), {"events": []})
        self.assertFalse(os.path.exists(path))
        with self.assertRaises(BadEventData):
            load_data(path, {})
