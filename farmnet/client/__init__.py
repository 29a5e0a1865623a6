"""The farm's client library: what tools, monitors and scripts use to talk to the server.

One long-lived AMP connection per `FarmClient`; `connect` opens it and says `Hello`.
Every call is bounded by a timeout, so a dead or wedged server never hangs a tool, and
the farm's declared errors (`farmnet.errors`) arrive as their own classes. Failures on
this side of the wire (cannot connect, no answer in time, bad spec file) are
`ClientError`s, so a caller can tell "the server said no" from "the server is not there".

Listings and events come as the plain JSON the server sends (dicts and lists): their keys
are the fields of the record and event classes of `farmnet.messages` (`JobRecord`,
`JobDetail`, `TaskRecord`, `RenderRecord`, `UserRecord`, `Event`; see doc/protocol.md). A
newer server's extra keys and event kinds pass through untouched.

Everything here is ``async def`` on Twisted's reactor; `farmnet.client.sync` is the
blocking face for scripts that run without a reactor (Maya, Houdini, Nuke).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, error
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure

import farmnet
from farmnet.protocol import commands as c
from farmnet.protocol.arguments import PART, BigJSON
from farmnet.protocol.base import FarmAMP
from farmnet.protocol.endpoints import client_endpoint as farm_endpoint

__all__ = [
    "FINAL_STATES",
    "ClientError",
    "FarmClient",
    "ServerTimeout",
    "ServerUnreachable",
    "SpecFileError",
    "connect",
    "find_password",
    "load_spec",
    "read_password_file",
]

#: Job states `FarmClient.wait` returns on.
FINAL_STATES = frozenset({"DON", "ERR"})
#: Tasks per ListTasks call (the server's page limit).
TASKS_PAGE = 10_000
#: Bytes asked per GetTaskOutput call (the server's read limit).
OUTPUT_READ = 4 << 20
#: Added to the timeout of a PollEvents: the server holds it until an event (20 s by default).
POLL_HOLD_ALLOWANCE = 30.0
#: Seconds between the safety-net ShowJob calls of `FarmClient.wait`.
RECHECK_INTERVAL = 5.0
#: Shortest gap between two ShowJob calls of `FarmClient.wait`: a busy job's events come
#: many times a second, and each waiting tool must not turn them into as many calls.
MIN_RECHECK_GAP = 0.1
#: Events that can change a job's state or counts (task progress percentages cannot).
_JOB_EVENTS = frozenset({"task", "job", "job_deleted"})

Job = dict[str, Any]

#: Seconds a client keeps trying to reach a server that went away (a restart, an upgrade).
RECONNECT_FOR = 300.0
RECONNECT_FIRST_DELAY = 0.25
RECONNECT_MAX_DELAY = 5.0
#: Calls that change nothing, asked again on a new connection.
_READS = frozenset({c.ListJobs, c.ShowJob, c.ListTasks, c.GetTaskOutput, c.ListRenders, c.ListUsers,
                    c.PollEvents})
_READ_ACTIONS = frozenset({"list", "show", "explain"})


class ClientError(Exception):
    """A failure on the client's side of the wire, not an answer of the server."""


class ServerUnreachable(ClientError):
    """The server cannot be reached: connection refused, lost, or no connection in time."""


class ServerTimeout(ServerUnreachable):
    """The server did not answer within the timeout (it may be overloaded or wedged)."""


class SpecFileError(ClientError):
    """A job file could not be read or parsed; the message names the file (and line)."""


class _ClientProtocol(FarmAMP):
    """AMP that can tell when its connection is gone, so closing can be awaited, and
    that closes its side when the server asks (`Close`): the client closes first."""

    def __init__(self, clock: IReactorTime | None = None) -> None:
        super().__init__()
        #: Why the server asked this client to close, when it did.
        self.close_reason: str | None = None
        #: What ended the connection, once it ended.
        self.lost_reason: Failure | None = None
        self._clock = clock

    @c.Close.responder
    def _close_requested(self, reason: str | None = None) -> dict[str, Any]:
        self.close_reason = reason or "asked by the server"
        if self._clock is None:
            from twisted.internet import reactor as clock
        else:
            clock = self._clock
        clock.callLater(0, self._close_now)  # after this answer is written
        return {}

    def _close_now(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)


async def connect(reactor: Any, endpoint: str, user: str, *, kind: str = "tool",
                  timeout: float = 30.0, password: str | None = None, ca: str = "",
                  reconnect: float = RECONNECT_FOR,
                  on_reconnect: Callable[[str], None] | None = None) -> FarmClient:
    """Connect to the server at ``endpoint`` (a Twisted client endpoint string) as
    ``user`` and say Hello. Raises `ServerUnreachable` when nobody answers there.

    ``password`` is for a server with a users file (without one, the server accepts any
    user name from its own host only). ``ca``, the path of a PEM CA certificate, makes
    the connection TLS, verifying that the server's certificate is signed by it for the
    endpoint's host (``tcp:HOST:PORT`` or ``tls:HOST:PORT``); a ``tls:`` endpoint
    without it verifies against ``trustRoots=DIR`` or the system's trust store.

    When the server goes away later (a restart, an upgrade), the client connects again for
    up to ``reconnect`` seconds (0: never) and carries on: reads are asked again, a change
    in flight is reported as maybe done (`ServerUnreachable`). ``on_reconnect`` hears
    what happens, in words."""
    try:
        client_endpoint = farm_endpoint(reactor, endpoint, ca)
    except (ValueError, TypeError, KeyError) as e:
        raise ClientError(f"invalid server endpoint {endpoint!r}: {e}") from None

    async def dial() -> _ClientProtocol:
        connecting = connectProtocol(client_endpoint, _ClientProtocol(reactor))
        connecting.addTimeout(timeout, reactor)
        try:
            return await connecting
        except defer.TimeoutError:
            raise ServerTimeout(f"cannot reach the server at {endpoint}: "
                                f"no connection within {timeout:g} s") from None
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            raise ServerUnreachable(f"cannot reach the server at {endpoint}: {_reason(e)}") from None

    proto = await dial()
    client = FarmClient(reactor, proto, endpoint=endpoint, user=user, timeout=timeout, dial=dial,
                        kind=kind, password=password, reconnect=reconnect, on_reconnect=on_reconnect)
    try:
        await client._hello()
    except Exception:
        client.close()
        raise
    return client


#: Environment variable holding a password, for a server with a users file.
PASSWORD_ENV = "FARMNET_PASSWORD"


def read_password_file(path: str) -> str:
    """The first line of ``path`` (a password file, best mode 600)."""
    try:
        with open(path, encoding="utf-8") as stream:
            password = stream.readline().rstrip("\r\n")
    except OSError as e:
        raise ClientError(f"password file {path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ClientError(f"password file {path}: not UTF-8 text") from None
    if not password:
        raise ClientError(f"password file {path}: the first line is empty")
    return password


def find_password(password_file: str | None = None, config_password_file: str = "",
                  environ: Mapping[str, str] | None = None) -> str | None:
    """The password to log in with: from ``password_file`` (a --password-file flag),
    else ``$FARMNET_PASSWORD``, else the configuration's password_file; None if none."""
    env = os.environ if environ is None else environ
    if password_file:
        return read_password_file(password_file)
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    if config_password_file:
        return read_password_file(config_password_file)
    return None


def _tls_error(failure: Failure) -> str:
    """The words of a TLS failure (a certificate that does not verify, or is for another
    name), else ""."""
    try:
        from OpenSSL import SSL
        from service_identity import VerificationError
    except ImportError:
        return ""
    if failure.check(VerificationError):
        names = [str(getattr(e.mismatched_id, "hostname", None) or getattr(e.mismatched_id, "ip", None)
                     or e.mismatched_id) for e in failure.value.errors if hasattr(e, "mismatched_id")]
        return (f"the server's certificate is not for {' or '.join(names) or 'this name'}: "
                "connect with a name the certificate lists")
    if not failure.check(SSL.Error):
        return ""
    reasons = [part for args in failure.value.args for item in (args if isinstance(args, list) else [])
               for part in (item if isinstance(item, tuple) else (item,)) if isinstance(part, str)]
    return reasons[-1] if reasons else str(failure.value) or "handshake failed"


#: Bytes the server counts per part of a big value besides the part (its key and overhead).
BOX_PART_OVERHEAD = 128


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _reason(e: Exception) -> str:
    """Twisted's connect errors say "...: 111: Connection refused."; keep the OS words."""
    os_error = getattr(e, "osError", None)
    if isinstance(os_error, int):
        return os.strerror(os_error)
    return str(e).strip().rstrip(".") or type(e).__name__


class FarmClient:
    """One connection to the server. Obtain it from `connect`; `close` it when done
    (the farm's rule: the client closes the connection, so the server's sockets do not
    linger in TIME-WAIT)."""

    #: Seconds between the safety-net ShowJob calls of `wait`.
    recheck_interval = RECHECK_INTERVAL

    def __init__(self, reactor: IReactorTime, proto: _ClientProtocol, *, endpoint: str, user: str,
                 timeout: float, dial: Callable[[], Awaitable[_ClientProtocol]] | None = None,
                 kind: str = "tool", password: str | None = None, reconnect: float = 0.0,
                 on_reconnect: Callable[[str], None] | None = None) -> None:
        self._reactor = reactor
        self._proto = proto
        self._closed = False
        self._dial = dial
        self._kind = kind
        self._password = password
        self._dialing = defer.DeferredLock()
        #: Seconds to keep trying to reach a server that went away (0: give up at once).
        self.reconnect = reconnect if dial is not None else 0.0
        self.on_reconnect = on_reconnect
        self.endpoint = endpoint
        self.user = user
        self.timeout = timeout
        self.server_version = ""
        self.connection_id = 0
        #: The most bytes of one message the server takes (its limits.max_box_bytes); None: not said.
        self.max_box_bytes: int | None = None

    # --- the wire ------------------------------------------------------------------

    def _call(self, command: type[amp.Command], timeout: float | None = None,
              **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        """One server call, bounded by a timeout, on a connection made again if the server
        went away: a read is asked again there; a change whose connection was lost in
        flight is reported, since the server may or may not have done it."""
        return defer.ensureDeferred(self._call_riding(command, timeout, arguments))

    async def _call_riding(self, command: type[amp.Command], timeout: float | None,
                           arguments: dict[str, Any]) -> dict[str, Any]:
        while True:
            proto = self._proto
            if proto.lost and not self._closed and self.reconnect > 0:
                await self._connect_again(proto, "the connection was gone")  # nothing was sent yet
                continue
            try:
                return await self._send(command, timeout, **arguments)
            except ServerTimeout:
                raise
            except ServerUnreachable as e:
                if self._closed or self.reconnect <= 0:
                    raise
                if not _is_read(command, arguments):
                    name = command.commandName.decode()
                    raise ServerUnreachable(f"{e} during {name}: it may or may not have been done; "
                                            "look before doing it again") from None
                await self._connect_again(proto, str(e))

    async def _connect_again(self, failed: _ClientProtocol, why: str) -> None:
        """Dial until a new connection says Hello, or until `reconnect` seconds have passed.
        One caller dials; the others wait for its connection."""
        async with self._dialing:
            if self._proto is not failed or self._closed:
                return  # another call made the connection while this one waited
            if failed.transport is not None and not failed.lost:
                failed.transport.loseConnection()  # the client closes first
            assert self._dial is not None
            self._notify(f"{why}; connecting again to {self.endpoint} (for up to {self.reconnect:g} s)")
            deadline = self._reactor.seconds() + self.reconnect
            delay = RECONNECT_FIRST_DELAY
            while True:
                try:
                    self._proto = await self._dial()
                    await self._hello()
                    self._notify(f"connected again to {self.endpoint}")
                    return
                except ServerUnreachable as e:
                    if self._closed or self._reactor.seconds() + delay > deadline:
                        raise ServerUnreachable(f"{why}; could not connect again within "
                                                f"{self.reconnect:g} s: {e}") from None
                await deferLater(self._reactor, delay, lambda: None)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _notify(self, text: str) -> None:
        if self.on_reconnect is not None:
            self.on_reconnect(text)

    def _send(self, command: type[amp.Command], timeout: float | None = None,
              **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        """callRemote on the current connection, bounded by a timeout, with transport
        failures as `ClientError`s."""
        seconds = self.timeout if timeout is None else timeout
        d: defer.Deferred[dict[str, Any]] = defer.maybeDeferred(
            self._proto.callRemote, command, **arguments)
        d.addTimeout(seconds, self._reactor)
        d.addErrback(self._translate, command.commandName.decode(), seconds)
        return d

    def _translate(self, failure: Failure, name: str, seconds: float) -> Failure:
        if failure.check(defer.TimeoutError):
            raise ServerTimeout(f"the server at {self.endpoint} did not answer {name} "
                                f"within {seconds:g} s")
        if failure.check(error.ConnectionClosed) or _tls_error(failure):
            if self._proto.close_reason is not None and not self._closed:
                raise ServerUnreachable(f"the server at {self.endpoint} closed the connection: "
                                        f"{self._proto.close_reason}")
            why = "the connection was closed" if self._closed else "lost the connection"
            lost = self._proto.lost_reason
            tls = _tls_error(failure) or (lost is not None and _tls_error(lost))
            detail = f" (TLS: {tls})" if tls else ""
            raise ServerUnreachable(f"{why} to the server at {self.endpoint}{detail}")
        return failure

    async def _hello(self) -> None:
        answer = await self._send(c.Hello, protocol=c.PROTOCOL_VERSION, kind=self._kind, user=self.user,
                                  client=f"farmnet-client/{farmnet.__version__}", password=self._password)
        self.server_version = answer["server_version"]
        self.connection_id = answer["connection_id"]
        self.max_box_bytes = answer.get("max_box_bytes")

    def close(self) -> None:
        """Close the connection (the client closes first). Pending calls fail."""
        if not self._closed:
            self._closed = True
            if self._proto.transport is not None:
                self._proto.transport.loseConnection()

    async def aclose(self) -> None:
        """`close`, and return once the connection is really gone (tests, clean exits)."""
        self.close()
        gone = self._proto.when_lost()
        gone.addTimeout(self.timeout, self._reactor)
        try:
            await gone
        except defer.TimeoutError:
            if self._proto.transport is not None:
                self._proto.transport.abortConnection()

    # --- jobs ----------------------------------------------------------------------

    async def submit(self, spec: dict[str, Any]) -> tuple[int, list[str]]:
        """Submit a job (CGRU's ``{"job": {...}}`` or the bare mapping); returns its id
        and the server's warnings (unknown keys and the like)."""
        self._check_size(spec)
        answer = await self._call(c.SubmitJob, spec=spec)
        return answer["job_id"], list(answer["warnings"])

    def _check_size(self, spec: dict[str, Any]) -> None:
        """A job bigger than the server takes in one box would only get the connection
        closed: refuse it here, naming the limit."""
        limit = self.max_box_bytes
        if not limit:
            return
        size = len(BigJSON().encode(spec))
        boxed = size + (size // PART + 2) * BOX_PART_OVERHEAD  # each part has a key, counted by the server
        if boxed > limit:
            raise ClientError(f"the job is {_mib(size)} as JSON, over this server's limit of {_mib(limit)} "
                              f"({limit} bytes) a message (server.limits.max_box_bytes)")

    async def jobs(self, user: str | None = None) -> list[Job]:
        """Every job, or only ``user``'s."""
        return (await self._call(c.ListJobs, user=user))["jobs"]

    async def job(self, job_id: int) -> Job:
        """One job with its blocks (``job["blocks"]``)."""
        return (await self._call(c.ShowJob, job_id=job_id))["job"]

    async def tasks(self, job_id: int, block: int | None = None) -> list[dict[str, Any]]:
        """Every task of a job (or of one block), asked in pages so a 100,000-task job
        lists fully without one huge answer."""
        tasks: list[dict[str, Any]] = []
        while True:
            answer = await self._call(c.ListTasks, job_id=job_id, block=block, offset=len(tasks),
                                      limit=TASKS_PAGE)
            tasks.extend(answer["tasks"])
            if not answer["tasks"] or len(tasks) >= answer["total"]:
                return tasks

    async def output(self, job_id: int, block: int, task: int, run: int = 0) -> bytes:
        """A task run's output (``run`` 0: the latest). For a finished task, all of it;
        for a running one, what the server has now. A run the task never had raises
        UnknownTask."""
        chunks: list[bytes] = []
        offset = 0
        while True:
            answer = await self._call(c.GetTaskOutput, job_id=job_id, block=block, task=task,
                                      run=run, offset=offset, limit=OUTPUT_READ)
            run = answer["run"]  # keep reading the run the first answer chose
            if not answer["data"]:  # complete, or a running task's end for now
                return b"".join(chunks)
            chunks.append(answer["data"])
            offset = answer["next_offset"]

    async def output_files(self, job_id: int) -> list[dict[str, Any]]:
        """The files a job's tasks wrote (rendered frames), as ``{"block", "task", "run", "paths"}``:
        each task's latest run that wrote any."""
        return (await self._call(c.ListOutputFiles, job_id=job_id))["files"]

    async def action(self, job_ids: list[int], action: str, value: Any = None) -> list[int]:
        """pause, resume, delete, restart, restart_errors or set_priority (``value``) on
        every job of ``job_ids``, all or nothing; returns the ids done."""
        answer = await self._call(c.JobAction, job_ids=list(job_ids), action=action, value=value)
        return list(answer["done"])

    async def act(self, item: str, action: str, filters: dict[str, Any] | None = None,
                  values: Any = None) -> Any:
        """The server's one action API (`farmnet.server.actions`), for what the methods
        above do not cover: ``act("renders", "pause", {"name": "r1"})``."""
        answer = await self._call(c.Act, item=item, action=action, filters=filters, values=values)
        return answer["result"]

    # --- the farm ------------------------------------------------------------------

    async def renders(self) -> list[dict[str, Any]]:
        return (await self._call(c.ListRenders))["renders"]

    async def users(self) -> list[dict[str, Any]]:
        return (await self._call(c.ListUsers))["users"]

    # --- events --------------------------------------------------------------------

    async def subscribe(self) -> int:
        """The event log's current sequence number: poll from there for what is new."""
        return (await self._call(c.PollEvents, after=-1))["last"]

    def _poll(self, after: int) -> defer.Deferred[dict[str, Any]]:
        return defer.ensureDeferred(self._poll_riding(after))

    async def _poll_riding(self, after: int) -> dict[str, Any]:
        """One PollEvents. An answer with ``close`` means the server wants this connection
        gone (it is stopping, or this client was idle): close first, then poll again on a
        new connection, or say so when this client does not reconnect."""
        while True:
            # Held by the server until there is an event: allow for that on top of the timeout.
            answer = await self._call(c.PollEvents, timeout=self.timeout + POLL_HOLD_ALLOWANCE, after=after)
            if not answer.get("close"):
                return answer
            proto = self._proto
            if proto.close_reason is None:
                proto.close_reason = "asked by the server"
            if proto.transport is not None:
                proto.transport.loseConnection()  # the client closes first
            why = f"the server at {self.endpoint} closed the connection: {proto.close_reason}"
            if self._closed or self.reconnect <= 0:
                raise ServerUnreachable(why)
            await self._connect_again(proto, why)

    async def events(self, after: int = -1) -> AsyncIterator[dict[str, Any]]:
        """Farm events after sequence number ``after`` (-1: from now on), forever.

        When the server no longer has the events asked for, yields ``{"kind": "reset",
        "last": N}``: reload what you show, events go on from there. Ends quietly when
        this client is closed."""
        if after < 0:
            after = await self.subscribe()
        while True:
            try:
                answer = await self._poll(after)
            except ServerUnreachable:
                if self._closed:
                    return
                raise
            after = answer["last"]
            if answer["reset"]:
                yield {"kind": "reset", "last": after}
                continue
            for event in answer["events"]:
                yield event

    async def wait(self, job_id: int, on_progress: Callable[[Job], None] | None = None) -> Job:
        """Return the job once it is DON or ERR (no ready or running task left, some in
        error). Driven by the job's events, re-checked with ShowJob at start, on every
        batch of its events and every `recheck_interval` seconds as a safety net.
        ``on_progress`` gets the job each time its state, progress or counts change."""
        after = await self.subscribe()
        seen: tuple[Any, ...] | None = None
        checked = 0.0
        while True:
            gap = checked + MIN_RECHECK_GAP - self._reactor.seconds()
            if gap > 0:  # the events of that gap come in the next poll's batch
                await deferLater(self._reactor, gap, lambda: None)
            checked = self._reactor.seconds()
            job = await self.job(job_id)
            shown = (job["state"], job["progress"], job["counts"])
            if on_progress is not None and shown != seen:
                on_progress(job)
            seen = shown
            if job["state"] in FINAL_STATES:
                return job
            recheck_at = self._reactor.seconds() + self.recheck_interval
            while True:  # until something may have changed for this job
                # Other jobs' events must not postpone the safety net: one deadline.
                left = max(0.0, recheck_at - self._reactor.seconds())
                tick = deferLater(self._reactor, left, lambda: None)
                # race cancels the loser: a cancelled poll is answered by the server when
                # the next one arrives, and its events are asked for again (same ``after``).
                # A failed poll lets the tick win; the ShowJob that follows raises.
                index, answer = await defer.race([self._poll(after), tick])
                if index == 1:
                    break
                after = answer["last"]
                if answer["reset"] or any(_concerns(e, job_id) for e in answer["events"]):
                    break


def _is_read(command: type[amp.Command], arguments: Mapping[str, Any]) -> bool:
    """A call that changes nothing on the server: safe to ask again."""
    if command is c.Act:
        return arguments.get("action") in _READ_ACTIONS
    return command in _READS


def _concerns(event: dict[str, Any], job_id: int) -> bool:
    if event.get("kind") not in _JOB_EVENTS:
        return False
    if event.get("job_id") == job_id:
        return True
    job = event.get("job")
    return isinstance(job, dict) and job.get("id") == job_id


# --- job files ---------------------------------------------------------------------


class _SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML, with dates kept as text: a job travels as JSON, which has no dates."""


_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def load_spec(path: str) -> dict[str, Any]:
    """Read a job file: JSON (what af.py writes) or YAML, told apart by content.

    JSON goes through `json` (fast on a 100,000-task file), anything else through YAML.
    Raises `SpecFileError` naming the file and line of a syntax error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SpecFileError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SpecFileError(f"{path}: not UTF-8 text: {e.reason}") from None
    is_json = path.lower().endswith(".json")
    document: Any = None
    try:
        if is_json or text.lstrip().startswith(("{", "[")):
            try:
                document = json.loads(text)
            except json.JSONDecodeError as e:
                if is_json:
                    raise SpecFileError(f"{path}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}") from None
                document = _load_yaml(path, text)  # flow-style YAML also starts with "{"
        else:
            document = _load_yaml(path, text)
    except RecursionError:
        raise SpecFileError(f"{path}: nested too deeply (a job has at most {MAX_NESTING} levels)") from None
    if not isinstance(document, dict):
        what = "nothing" if document is None else f"a {type(document).__name__}"
        raise SpecFileError(f"{path}: expected a job (a mapping), got {what}")
    if _nesting(document, MAX_NESTING) > MAX_NESTING:
        raise SpecFileError(f"{path}: nested too deeply (a job has at most {MAX_NESTING} levels)")
    return document


#: Levels of lists and mappings a job file may have (a job needs 5; custom data a few more).
MAX_NESTING = 100


def _nesting(value: Any, limit: int) -> int:
    """How deep lists and mappings nest in ``value``, counted up to ``limit + 1`` (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _load_yaml(path: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # _SpecLoader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        what = ", ".join(p for p in (e.context, e.problem) if p) or str(e)
        raise SpecFileError(f"{where}: YAML syntax error: {what}") from None
    except yaml.YAMLError as e:
        raise SpecFileError(f"{path}: YAML error: {e}") from None
