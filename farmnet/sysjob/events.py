"""Event delivery: the program the system job's ``events`` tasks run on a render.

When something happens that a user's or a job's custom data asks to hear about (``JOB_DONE``,
``JOB_ERROR``, ``RENDER_ZOMBIE``, ...), the server adds a task to the system job's events block whose
command is the event data, JSON.  The render's ``events`` service runs it as::

    python -m farmnet.sysjob.events --service farmnet.sysjob.events:EventService

with the data in the environment variable ``FARMNET_EVENT_DATA`` (or, when large, in a file named by
``--data-file``, which is deleted once read).  The data is the custom data (the farm's, the user's over
it, the job's over that: the job's keys win), plus what the server knows (farmnet.sysjob.job)::

    {"emails": ["anna@example.com"],
     "webhooks": ["https://chat.example.com/hooks/farm"],
     "events": {"JOB_DONE": {"methods": ["email", "webhook"]},
                "JOB_ERROR": {"methods": ["email"]}},
     "event": "JOB_DONE",
     "job": {"id": 12, "name": "shot010", "user_name": "anna", "state": "DON"},
     "user": "anna",
     "smtp": {"host": "mail.example.com", "port": 25, "from": "farm@example.com"}}

Render events have ``"render": {"name": ...}`` and ``"pools"`` instead of ``job`` and ``user``.

``events`` maps each event to its delivery ``methods``: ``email`` (to every address of ``emails``, a list
or one comma-separated string) and ``webhook`` (a POST of a JSON payload to every URL of ``webhooks``).
An event without ``methods`` (``{"RENDER_SICK": {}}``) uses every method that has somewhere to go
(``email`` if there are ``emails``, ``webhook`` if there are ``webhooks``).  Only the event that happened
is delivered: ``event`` (or a list, ``emitted``); without either, every event of ``events``.  ``events``
may also be a list of event names (Afanasy's form), each with the default methods.

Email settings: each key of the data's ``smtp`` mapping (``host``, ``port``, ``from``, ``username``,
``password``, ``tls``: require STARTTLS) wins over the render's environment, ``FARMNET_SMTP_HOST``,
``FARMNET_SMTP_PORT``, ``FARMNET_SMTP_FROM``, ``FARMNET_SMTP_USERNAME``, ``FARMNET_SMTP_PASSWORD``,
``FARMNET_SMTP_TLS``, which default to localhost:25, from ``farmnet@<this host name>``, no login,
STARTTLS when offered.  Set the environment in the render's unit so a farm's mail relay is configured
once; users' custom data may name another.

A webhook's payload is ``{"event", "job", "user", "render", "pools", "time"}`` (those the data has): the
custom data itself (addresses, SMTP passwords) is never sent.  A non-2xx answer is a failure.

Exit status: 0 when every delivery succeeded (or there was nothing to deliver); 1 when a delivery failed
(the system job retries the task), with one line per failure on stderr; 2 when the data is unusable
(invalid JSON, no ``events``, ``methods`` not a list, a webhook URL that is not http(s)) or the events
class cannot be loaded: retrying cannot help, the task's log says what to fix.  A method with nowhere
to go (``email`` but no ``emails``) or unknown to the class is skipped with a line on stderr, as
Afanasy does.

A custom class (``--service package.module:Class``, the render's ``sysjob.events_service_class``) is
called with the reactor and must have ``async def handle(self, data) -> list[str]``, returning one
message per failed delivery ([] for success); it may raise :class:`BadEventData` for unusable data.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any

import attrs
import treq
from twisted.internet import defer
from twisted.mail.smtp import sendmail

__all__ = [
    "EXIT_BAD_DATA",
    "EXIT_FAILED",
    "BadEventData",
    "EventService",
    "SmtpSettings",
    "emitted",
    "load_data",
    "main",
]

#: Where the render's events service puts the data (see farmnet.render.services).
DATA_ENV = "FARMNET_EVENT_DATA"
#: Exit statuses: a delivery failed (retry may help), the data is unusable (it will not).
EXIT_FAILED = 1
EXIT_BAD_DATA = 2
#: The methods this module delivers.
METHODS = ("email", "webhook")
_TRUE = frozenset({"1", "true", "yes", "on"})


class BadEventData(Exception):
    """The event data cannot be delivered as it is (the message says why)."""


@attrs.frozen
class SmtpSettings:
    """Where and how to send email: the data's ``smtp`` mapping over ``FARMNET_SMTP_*``."""

    host: str = "localhost"
    port: int = 25
    sender: str = ""
    username: str | None = None
    password: str | None = None
    require_tls: bool = False

    @classmethod
    def from_data(cls, data: Mapping[str, Any], environ: Mapping[str, str]) -> SmtpSettings:
        given = data.get("smtp") or {}
        if not isinstance(given, Mapping):
            raise BadEventData('"smtp" must be a mapping (host, port, from, username, password, tls)')

        def pick(key: str, env: str) -> Any:
            value = given.get(key)
            return value if value not in (None, "") else (environ.get(f"FARMNET_SMTP_{env}") or None)

        port = pick("port", "PORT") or 25
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise BadEventData(f"SMTP port must be a number, got {port!r}") from None
        tls = pick("tls", "TLS")
        return cls(
            host=str(pick("host", "HOST") or "localhost"),
            port=port,
            sender=str(pick("from", "FROM") or f"farmnet@{socket.gethostname()}"),
            username=pick("username", "USERNAME"),
            password=pick("password", "PASSWORD"),
            require_tls=tls is True or str(tls).lower() in _TRUE,
        )


def _strings(value: Any, key: str) -> list[str]:
    """A list of strings from ``value``: a list, or one string (for ``emails``, comma-separated)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()] if key == "emails" else [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadEventData(f'"{key}" must be a list of strings, got {value!r}')
    return list(value)


class EventService:
    """farmnet's default events class: email and webhooks, as the data asks."""

    #: Seconds one delivery (one email, one POST) may take.
    timeout = 30.0

    def __init__(self, reactor: Any, environ: Mapping[str, str] | None = None) -> None:
        self.reactor = reactor
        self.environ = os.environ if environ is None else environ

    # --- what to deliver ---------------------------------------------------------------

    def deliveries(self, data: Mapping[str, Any], notes: list[str] | None = None) -> list[tuple[str, str]]:
        """(event, method) pairs the data asks for, in order; BadEventData if it is malformed.

        A method this class does not know, or one with nowhere to go (``email`` without ``emails``), is
        skipped with a line in ``notes``, as Afanasy skips them: user and job data are merged, so a user
        may ask for webhooks that only some of their jobs name.
        """
        configured = data.get("events")
        if isinstance(configured, list):
            events: Mapping[str, Any] = {str(name): {} for name in configured}
        elif isinstance(configured, Mapping):
            events = configured
        else:
            raise BadEventData('the data has no "events" (a mapping of event name to {"methods": [...]})')
        happened = emitted(data)
        if happened is not None:
            events = {name: spec for name, spec in events.items() if name in happened}
        default = [m for m, key in (("email", "emails"), ("webhook", "webhooks")) if data.get(key)]
        pairs: list[tuple[str, str]] = []
        for name, spec in events.items():
            methods = spec.get("methods", default) if isinstance(spec, Mapping) else None
            if not isinstance(methods, list):
                raise BadEventData(f'event {name}: "methods" must be a list, e.g. ["email"]')
            for method in methods:
                why = _skip_reason(method, data)
                if why is None:
                    pairs.append((name, method))
                elif notes is not None:
                    notes.append(f"{name}: {why}, skipped")
        return pairs

    async def handle(self, data: Mapping[str, Any]) -> list[str]:
        """Deliver everything the data asks for, concurrently; one message per failure."""
        notes: list[str] = []
        pairs = self.deliveries(data, notes)
        for note in notes:
            print(f"events: {note}", file=sys.stderr, flush=True)
        smtp = SmtpSettings.from_data(data, self.environ) if any(m == "email" for _, m in pairs) else None
        jobs: list[tuple[str, defer.Deferred[Any]]] = []
        for event, method in pairs:
            if method == "email":
                assert smtp is not None
                recipients = _strings(data.get("emails"), "emails")
                what = f"{event}: email to {', '.join(recipients)} via {smtp.host}:{smtp.port}"
                jobs.append((what, defer.ensureDeferred(self.email(event, data, recipients, smtp))))
            else:
                for url in _strings(data.get("webhooks"), "webhooks"):
                    d = defer.ensureDeferred(self.webhook(event, data, url))
                    jobs.append((f"{event}: webhook {url}", d))
        failures: list[str] = []
        for what, d in jobs:
            try:
                await d
            except Exception as e:
                failures.append(f"{what} failed: {_reason(e)}")
            else:
                print(f"events: {what}: sent", flush=True)
        return failures

    # --- email -------------------------------------------------------------------------

    def subject(self, event: str, data: Mapping[str, Any]) -> str:
        """``[farmnet] JOB_DONE: shot010 (anna)``; for render events ``[farmnet] RENDER_SICK: render01``."""
        job = data.get("job") if isinstance(data.get("job"), Mapping) else {}
        render = data.get("render") if isinstance(data.get("render"), Mapping) else {}
        if event.startswith("RENDER_") and render.get("name"):
            return f"[farmnet] {event}: {render['name']}"
        name = job.get("name") or render.get("name") or "?"
        user = job.get("user_name") or _user_name(data)
        return f"[farmnet] {event}: {name}" + (f" ({user})" if user else "")

    def body(self, event: str, data: Mapping[str, Any]) -> str:
        lines = [f"Event: {event}"]
        job = data.get("job")
        if isinstance(job, Mapping):
            lines.append(f"Job: {job.get('name', '?')} (id {job.get('id', '?')})")
            if job.get("state"):
                lines.append(f"State: {job['state']}")
        user = (job.get("user_name") if isinstance(job, Mapping) else None) or _user_name(data)
        if user:
            lines.append(f"User: {user}")
        render = data.get("render")
        if isinstance(render, Mapping):
            lines.append(f"Render: {render.get('name', '?')}")
        pools = data.get("pools")
        if isinstance(pools, list) and pools:
            lines.append("Pools: " + ", ".join(str(p.get("name", p) if isinstance(p, Mapping) else p)
                                               for p in pools))
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        lines += ["", f"Sent by farmnet from {socket.gethostname()} at {when}."]
        return "\n".join(lines) + "\n"

    async def email(self, event: str, data: Mapping[str, Any], recipients: list[str],
                    smtp: SmtpSettings) -> None:
        message = EmailMessage()
        message["Subject"] = self.subject(event, data)
        message["From"] = smtp.sender
        message["To"] = ", ".join(recipients)
        message["Date"] = email.utils.formatdate(localtime=True)
        message["Message-ID"] = email.utils.make_msgid(domain=smtp.sender.rpartition("@")[2] or None)
        message.set_content(self.body(event, data))
        d = sendmail(
            smtp.host, smtp.sender, recipients, message.as_bytes(), port=smtp.port, reactor=self.reactor,
            username=smtp.username, password=smtp.password, requireAuthentication=bool(smtp.username),
            requireTransportSecurity=smtp.require_tls,
        )
        d.addTimeout(self.timeout, self.reactor)
        accepted, answers = await d
        refused = [f"{_text(address)} ({code} {_text(text)})" for address, code, text in answers
                   if not 200 <= code < 300]
        if refused or accepted < len(recipients):
            raise RuntimeError("recipients refused: " + (", ".join(refused) or "some"))

    # --- webhook -----------------------------------------------------------------------

    def payload(self, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """What a webhook receives: the event and what the server said about it, no custom data."""
        body: dict[str, Any] = {"event": event}
        for key in ("emitted", "job", "user", "render", "pools"):  # "emitted": when the data has it
            if key in data:
                body[key] = data[key]
        body["time"] = time.time()
        return body

    async def webhook(self, event: str, data: Mapping[str, Any], url: str) -> None:
        d = treq.post(url, json=self.payload(event, data), timeout=self.timeout, persistent=False,
                      reactor=self.reactor)
        d.addTimeout(self.timeout, self.reactor)
        response = await d
        content = treq.content(response)
        content.addTimeout(self.timeout, self.reactor)
        text = await content
        if not 200 <= response.code < 300:
            answer = text[:200].decode("utf-8", "replace").strip()
            raise RuntimeError(f"HTTP {response.code}" + (f": {answer}" if answer else ""))


def _skip_reason(method: Any, data: Mapping[str, Any]) -> str | None:
    """Why ``method`` cannot be delivered (None: it can); BadEventData if its targets are malformed."""
    if method not in METHODS:
        return f"unknown method {method!r} (known: {', '.join(METHODS)})"
    if method == "email" and not _strings(data.get("emails"), "emails"):
        return 'method "email" but no "emails" in the data'
    if method == "webhook":
        urls = _strings(data.get("webhooks"), "webhooks")
        if not urls:
            return 'method "webhook" but no "webhooks" in the data'
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise BadEventData(f"webhook URL must start with http:// or https://, got {url!r}")
    return None


def emitted(data: Mapping[str, Any]) -> set[str] | None:
    """The events that happened: ``event`` and ``emitted`` (None when the data names neither)."""
    if data.get("event") is None and data.get("emitted") is None:
        return None
    happened = set(_strings(data.get("emitted"), "emitted"))
    event = data.get("event")
    if event is not None:
        if not isinstance(event, str) or not event:
            raise BadEventData(f'"event" must be an event name, got {event!r}')
        happened.add(event)
    return happened


def _user_name(data: Mapping[str, Any]) -> str:
    user = data.get("user")
    if isinstance(user, Mapping):
        return str(user.get("name") or "")
    return user if isinstance(user, str) else ""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reason(error: BaseException) -> str:
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text if isinstance(error, RuntimeError | BadEventData) else f"{type(error).__name__}: {text}"


# --- the program ---------------------------------------------------------------------------


def load_data(data_file: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The event data from ``data_file`` (deleted once read) or ``$FARMNET_EVENT_DATA``."""
    if data_file:
        try:
            with open(data_file, "rb") as stream:
                raw = stream.read()
        except OSError as e:
            raise BadEventData(f"cannot read the event data: {e}") from None
        try:
            os.unlink(data_file)
        except OSError:
            pass  # the render removes it when the task ends
    elif DATA_ENV in environ:
        raw = environ[DATA_ENV].encode("utf-8")
    else:
        raise BadEventData(f"no event data (${DATA_ENV} or --data-file)")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BadEventData(f"the event data is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadEventData(f"the event data must be a JSON object, got {type(data).__name__}")
    return data


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m farmnet.sysjob.events",
                                     description="Deliver the system job's event (email, webhook).")
    parser.add_argument("--service", default="farmnet.sysjob.events:EventService",
                        help="events class, package.module:Class")
    parser.add_argument("--data-file", help=f"read the event data from this file (default ${DATA_ENV})")
    return parser.parse_args(argv)


async def main(reactor: Any, *argv: str) -> None:
    from farmnet.plugins import import_object

    args = parse_args(argv)
    try:
        data = load_data(args.data_file, os.environ)
        try:
            cls = import_object(args.service)
        except ImportError as e:
            raise BadEventData(f"cannot load the events class {args.service!r}: {e}") from None
        events = data.get("event") or data.get("emitted") or data.get("events")
        print(f"events: {args.service} handling {json.dumps(events)}", flush=True)
        failures = await cls(reactor).handle(data)
    except BadEventData as e:
        print(f"events: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_DATA) from None
    for failure in failures:
        print(f"events: {failure}", file=sys.stderr)
    if failures:
        raise SystemExit(EXIT_FAILED)


if __name__ == "__main__":
    from twisted.internet.task import react

    # Run the module's importable copy, not this __main__ one: the events class is imported from
    # farmnet.sysjob.events, and its BadEventData must be the one main() catches.
    from farmnet.sysjob import events

    react(events.main, sys.argv[1:])
