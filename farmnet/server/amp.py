"""The server's AMP edge: one `ServerProtocol` per connection, answering the commands
of `farmnet.protocol.commands` from the farm model.

Deliveryless: a render's `Heartbeat` and a monitor's `PollEvents` are answered with a
Deferred the server holds until there is something to say (or the hold time passes), so
an order reaches an idle render one network hop after the scheduler decides, and no
server call ever waits on a slow client.

Every connection is in the server's `Registry` (its identity, kind, limits and close
lifecycle, see `farmnet.server.registry`). The server never closes a connection first:
it asks the peer and resets the connection only if the peer has not closed within
close_wait. A connection past a limit (boxes per second, bytes of one box) or sending a
malformed box is reset at once with one log line; the server goes on serving everyone
else.

Security: a render says the server's ``render_secret`` in its Hello when the server has
one. Tools and monitors give a password checked against ``users_file`` (``user:hash``
lines, `farmnet.server.passwords`) when the server has one; without a users file any
user name is accepted, from the server's own host only (loopback or a unix socket).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

import farmnet
from farmnet import errors
from farmnet.config import AuthConfig, ConnectionsConfig, LimitsConfig
from farmnet.messages import (
    CloseOrder,
    HostFacts,
    HostResources,
    KillOrder,
    Order,
    ReconnectOrder,
    RunResources,
    StartOrder,
    TaskRef,
)
from farmnet.model.catalog import known_names
from farmnet.model.data import ACTIVE, Render, TaskKey
from farmnet.model.events import JobDeleted, OrdersQueued, TaskStateChanged
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.server.actions import READ_ACTIONS, act
from farmnet.server.holds import Hold, HoldTimer
from farmnet.server.monitors import EventLog
from farmnet.server.outputs import OutputStore, job_output_files
from farmnet.server.passwords import PasswordFileChecker
from farmnet.server.registry import BOX_KEY_OVERHEAD, CloseState, Connection, Registry
from farmnet.server.throttle import LoginThrottle

log = Logger()

MAX_PAGE = 10_000  # tasks per ListTasks answer
MAX_OUTPUT_READ = 4 << 20  # bytes per GetTaskOutput answer
#: Failed Hellos (wrong secret or password) after which the connection is closed.
MAX_FAILED_LOGINS = 3
#: Kinds that may use the tool and monitor commands.
USER_KINDS = frozenset({"tool", "monitor"})
#: Orders the answer to a TaskFinished may carry (``finish_orders``); the others (exit, sleep)
#: end the render's session and go with its heartbeat's answer.
FINISH_ORDER_CLASSES = (StartOrder, KillOrder)
#: The keys of a plain TaskFinished box (no signal, resources, fatal or files): the box every
#: task costs, answered without AMP's generic dispatch (`ServerProtocol._plain_finish`).
_PLAIN_FINISH = frozenset({amp.COMMAND, amp.ASK, b"render_id", b"job_id", b"block", b"task", b"run",
                           b"exit_code", b"time_started", b"time_done", b"message", b"message.0"})
_PLAIN_FINISH_NEEDS = _PLAIN_FINISH - {b"exit_code"}


class HeldAnswer:
    """A Deferred answered early by `fire`, or with ``timeout_value`` once ``timer``'s hold
    is over. `reserve` keeps it for an answer on its way (orders waiting for their commit)."""

    def __init__(self, timer: HoldTimer, timeout_value: Callable[[], Any]) -> None:
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self._timeout_value = timeout_value
        self._call: Hold | None = timer.start(self._timeout)
        self._reserved = False

    @property
    def waiting(self) -> bool:
        """Still free to be answered (neither answered nor reserved)."""
        return self._call is not None

    def reserve(self) -> None:
        """This answer is taken: only `fire` answers it now, the hold time does not."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self._reserved = True

    def fire(self, value: Any) -> None:
        if self._call is not None or self._reserved:
            if self._call is not None:
                self._call.cancel()
            self._call, self._reserved = None, False
            self.deferred.callback(value)

    def _timeout(self) -> None:
        self._call = None
        self.deferred.callback(self._timeout_value())

    def abandon(self) -> None:
        """The connection is gone: nobody will read the answer."""
        if self._call is not None:
            self._call.cancel()
        self._call, self._reserved = None, False


class MalformedBox(Exception):
    """A box the server cannot make sense of: its connection is reset."""


def _no_orders() -> dict[str, Any]:
    return {"orders": []}


def _no_answer(_: Any) -> dict[str, Any]:
    return {}


def _close_order(order: str, reason: str) -> Order:
    return ReconnectOrder(reason) if order == "reconnect" else CloseOrder(reason)


class Batches(Protocol):
    """The store's numbered write batches (`farmnet.server.store.FarmStore`)."""

    @property
    def next_batch(self) -> int: ...

    def sync_batch(self, batch: int) -> defer.Deferred[None]: ...


class FarmServer:
    """What every connection shares: the farm, the output store, the registry of
    connections and the security settings."""

    def __init__(self, reactor: IReactorTime, farm: Farm, outputs: OutputStore, *,
                 connections: ConnectionsConfig | None = None, auth: AuthConfig | None = None,
                 limits: LimitsConfig | None = None,
                 durable: Callable[[], defer.Deferred[None]] | None = None,
                 events: EventLog | None = None, throttle: LoginThrottle | None = None,
                 batches: Batches | None = None) -> None:
        connections = connections or ConnectionsConfig()
        auth = auth or AuthConfig()
        self.reactor = reactor
        #: What monitors poll: the farm's events as records.
        self.events = events if events is not None else EventLog(farm)
        #: Waits until the farm's changes so far are on disk (the store's sync).
        self.durable = durable or (lambda: defer.succeed(None))
        #: The store's numbered batches: an order waits for the batch that holds its changes,
        #: not for changes made after it (on a busy farm there always are some).
        self.batches = batches
        self._order_batch: dict[int, int] = {}
        self.farm = farm
        self.outputs = outputs
        self.heartbeat_hold = connections.heartbeat_hold
        self.event_hold = connections.event_hold
        self.render_secret = auth.render_secret
        self.passwords = PasswordFileChecker(auth.users_file, reactor) if auth.users_file else None
        #: Who may read task outputs (`farmnet.server.outputs.check_may_read`).
        self.output_readers = auth.outputs if auth.users_file else "public"
        #: Failed secrets and passwords back off per address (shared with the web site).
        self.throttle = throttle if throttle is not None else LoginThrottle(
            reactor, free_failures=auth.free_failures, max_delay=auth.backoff_max)
        self.registry = Registry(reactor, limits=limits, close_wait=connections.close_wait,
                                 idle_timeout=connections.idle_timeout, zombie_time=connections.zombie_time,
                                 on_zombie=self._zombie)
        self._delivering: set[int] = set()
        self._hold_timers: dict[float, HoldTimer] = {}
        farm.bus.subscribe(OrdersQueued, self._orders_queued)
        farm.bus.subscribe(JobDeleted, lambda e: self.outputs.delete_job(e.job.id))
        farm.bus.subscribe(TaskStateChanged, self._task_changed)

    @property
    def connections(self) -> Mapping[int, Connection]:
        """Open connections by id (the registry's)."""
        return self.registry.connections

    def hold_timer(self, seconds: float) -> HoldTimer:
        """The timer of every answer held ``seconds`` (heartbeat_hold, event_hold)."""
        timer = self._hold_timers.get(seconds)
        if timer is None:
            timer = self._hold_timers[seconds] = HoldTimer(self.reactor, seconds)
        return timer

    def _orders_queued(self, event: OrdersQueued) -> None:
        if self.batches is not None:
            self._order_batch[event.render.id] = self.batches.next_batch
        self._orders_for(event.render)

    def _orders_for(self, render: Render) -> None:
        # Deliver at the end of this reactor turn, so a solve that gives a render several
        # tasks answers its heartbeat once with all of them.
        if render.id in self._delivering:
            return
        conn = self.registry.render_connection(render.id)
        if conn is not None and getattr(conn.peer, "finishing", 0):
            return  # the answer to its finish takes them, or hands them on (finish_answer)
        self._delivering.add(render.id)
        self.reactor.callLater(0, self._deliver, render)

    def _deliver(self, render: Render) -> None:
        self._delivering.discard(render.id)
        conn = self.registry.render_connection(render.id)
        if conn is None or conn.state is not CloseState.OPEN or not render.orders:
            return
        if getattr(conn.peer, "finishing", 0):  # the answer to its finish takes them (finish_orders)
            return
        held = conn.held_heartbeat
        if held is not None and held.waiting:
            held.reserve()
            self._committed_orders(render).addCallback(held.fire)  # `answered` clears it

    def _committed_orders(self, render: Render) -> defer.Deferred[dict[str, Any]]:
        """Take the render's orders; the answer carrying them fires once the changes
        they act on are committed (a start order leaves only after its run is on disk).
        Every answer of a reactor turn waits for the same commit (group commit)."""
        orders = self.farm.take_orders(render)
        batch = self._order_batch.pop(render.id, None)
        committed = (self.batches.sync_batch(batch) if batch is not None and self.batches is not None
                     else self.durable())
        return committed.addCallback(lambda _: {"orders": orders})

    def finish_answer(self, conn: Connection, render: Render) -> defer.Deferred[dict[str, Any]]:
        """The answer to a committed TaskFinished of a ``finish_orders`` render: its orders, if
        it has some this answer may carry (each on disk before it leaves, as a heartbeat's);
        otherwise they go to its held heartbeat. The render spoke: it has zombie_time again."""
        orders = render.orders
        if not orders:
            return defer.succeed({})
        if conn.state is not CloseState.OPEN or conn.render is not render or \
                not all(isinstance(order, FINISH_ORDER_CLASSES) for order in orders):
            self._orders_for(render)
            return defer.succeed({})
        if conn.held_heartbeat is None:
            self.registry.heartbeat_answered(conn)
        return self._committed_orders(render)

    def _task_changed(self, event: TaskStateChanged) -> None:
        task = event.task
        if task.state not in ACTIVE:  # its run's output file is complete
            self.outputs.close(task.key, task.starts_count)

    def _zombie(self, conn: Connection, render: Render) -> None:
        self.farm.render_lost(render, zombie=True)

    def heartbeat(self, conn: Connection, render: Render) -> defer.Deferred[dict[str, Any]] | dict[str, Any]:
        self.farm.render_seen(render)
        registry = self.registry
        if conn.state is not CloseState.OPEN:  # asked to close: say it again
            registry.heartbeat_answered(conn)
            return {"orders": [_close_order(conn.close_order, conn.close_reason)]}
        old = conn.held_heartbeat
        if old is not None and old.waiting:  # one heartbeat at a time; answer a leftover
            old.fire({"orders": []})  # (a reserved one keeps its orders)
        if render.orders:
            registry.heartbeat_answered(conn)
            return self._committed_orders(render)
        held = HeldAnswer(self.hold_timer(self.heartbeat_hold), _no_orders)
        registry.heartbeat_held(conn, held)

        def answered(result: dict[str, Any]) -> dict[str, Any]:
            if conn.held_heartbeat is held:
                registry.heartbeat_answered(conn)
            return result

        held.deferred.addCallback(answered)
        return held.deferred

    async def authenticate(self, conn: Connection, kind: str, user: str, secret: str | None,
                           password: str | None) -> None:
        """Raise PermissionDenied unless this peer may say Hello as ``kind`` ``user``.
        A wrong secret or password backs its address off (`LoginThrottle`)."""
        if kind == "render":
            if self.render_secret:
                self.throttle.check(conn.address)
                given, expected = (secret or "").encode("utf-8"), self.render_secret.encode("utf-8")
                if not hmac.compare_digest(given, expected):
                    self._wrong(conn, f"render {user!r}", "wrong or missing render secret")
            return
        if self.passwords is None:
            if not conn.local:
                log.warn("refused {kind} {user} from {peer}: not from this host", kind=kind, user=user,
                         peer=conn.label)
                raise errors.PermissionDenied(
                    "this server accepts tools and monitors from its own host only "
                    "(give it a users_file to accept passwords from other hosts)")
            return
        self.throttle.check(conn.address)
        if not password:
            raise errors.PermissionDenied(f"user {user!r}: a password is required")
        try:
            await self.passwords.requestAvatarId(
                UsernamePassword(user.encode("utf-8"), password.encode("utf-8")))
        except UnauthorizedLogin:
            self._wrong(conn, f"{kind} {user!r}", f"user {user!r}: unknown user or wrong password")

    def _wrong(self, conn: Connection, who: str, reason: str) -> None:
        self.throttle.failed(conn.address, who, reason)
        raise errors.PermissionDenied(reason)

    def eject(self, connection_id: int, reason: str = "ejected by an admin") -> defer.Deferred[None]:
        """Close one connection the polite way (the peer is asked, reset after close_wait);
        fires once it is gone. A render's connection: the render reconnects."""
        conn = self.registry.connections.get(connection_id)
        if conn is None:
            raise errors.InvalidAction(f"no connection {connection_id}")
        return self.registry.close(conn, reason)

    async def shutdown(self, reason: str = "the server is stopping") -> None:
        """Refuse new connections, ask every peer to close (renders: to reconnect) and
        return once all are gone, close_wait at most."""
        self.registry.accepting = False
        self.throttle.stop()
        await self.registry.close_all(reason, order="reconnect")


class ServerProtocol(FarmAMP):
    """One peer's connection: a render, a monitor or a tool."""

    def __init__(self, server: FarmServer) -> None:
        super().__init__()
        self.server = server
        self.farm = server.farm
        self.conn: Connection | None = None
        self.kind: str | None = None
        self.user = ""
        self._box_bytes = 0
        #: The transport's buffer is full (the peer does not read): no box is parsed and
        #: nothing read until it drains; answers still coming out count in _unsent.
        self._writes_paused = False
        self._unsent = 0
        self._held_poll: HeldAnswer | None = None
        self._held_after = 0
        self._cancel_wait: Callable[[], None] | None = None
        #: The optional protocol parts agreed in Hello (`farmnet.protocol.commands.FEATURES`).
        self.features: frozenset[str] = frozenset()
        #: A finish_orders render's TaskFinished answers waiting for their commit: its next
        #: orders wait for them rather than going to its held heartbeat.
        self.finishing = 0
        #: locateResponder's answers by command name (AMP builds a new wrapper per box).
        self._responders: dict[bytes, Callable[[amp.AmpBox], defer.Deferred[Any]]] = {}

    @property
    def render(self) -> Render | None:
        return self.conn.render if self.conn is not None else None

    # --- lifecycle ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.conn = self.server.registry.add(self, self.transport.getPeer())
        if self.conn is not None:
            # Back-pressure: the transport pauses us when its buffer fills (pauseProducing).
            self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure) -> None:
        self._release_box()
        super().connectionLost(reason)
        if self._held_poll is not None:
            self._held_poll.abandon()
            self._held_poll = None
        if self._cancel_wait is not None:
            self._cancel_wait()
            self._cancel_wait = None
        conn = self.conn
        if conn is None:
            return
        if conn.held_heartbeat is not None:
            conn.held_heartbeat.abandon()
            conn.held_heartbeat = None
        render = self.server.registry.removed(conn)
        # At shutdown the renders are not lost: their tasks stay RUN in the store and are
        # re-attached when they reconnect to the next server.
        if render is not None and self.server.registry.accepting:
            self.farm.render_lost(render)

    def ask_to_close(self, order: str, reason: str) -> None:
        """The registry wants this connection gone: ask the peer the way its kind
        listens (deliveryless for renders and monitors)."""
        conn = self.conn
        assert conn is not None
        held = conn.held_heartbeat
        if held is not None and held.waiting:
            held.fire({"orders": [_close_order(order, reason)]})
        if self._held_poll is not None and self._held_poll.waiting:
            self._held_poll.fire(self._close_answer(self._held_after))
        if conn.kind == "tool":
            self.callRemote(c.Close, reason=reason).addErrback(lambda _: None)

    def _close_answer(self, after: int) -> dict[str, Any]:
        last = after if after >= 0 else self.server.events.last
        return {"events": [], "last": last, "reset": False, "close": True}

    # --- back-pressure: a peer that does not read stops being served --------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop reading and parsing this peer's requests."""
        if not self._writes_paused:
            self._writes_paused, self._unsent = True, 0
            self.paused = True
            if self.transport is not None:
                self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The peer has read what was waiting: serve it again, from what is buffered."""
        if self._writes_paused:
            self._writes_paused = False
            if not self._open():
                return
            self.paused = False
            self.transport.resumeProducing()
            self.dataReceived(b"")  # the boxes already read and not parsed

    def stopProducing(self) -> None:
        self._writes_paused = False

    # --- limits and malformed input ----------------------------------------------------

    def _reject(self, reason: str) -> None:
        """Reset this connection now (a limit or a malformed box), one log line."""
        self._release_box()
        self.paused = True  # stop parsing what is left of this read
        if self.conn is not None:
            self.server.registry.abort(self.conn, reason)
        elif self.transport is not None:
            self.transport.abortConnection()

    def _open(self) -> bool:
        return self.conn is not None and self.conn.state is not CloseState.CLOSED

    def dataReceived(self, data: bytes) -> None:
        if not self._open():
            return
        assert self.conn is not None
        self.conn.bytes_in += len(data)
        self.server.registry.bytes_in += len(data)
        try:
            if self.innerProtocol is None:
                self._parse(data)
            else:
                super().dataReceived(data)
        except Exception as e:
            self._reject(f"malformed data: {type(e).__name__}: {_short(e)}")

    def _parse(self, data: bytes) -> None:
        """AMP's parsing (Int16StringReceiver.dataReceived and BinaryBoxProtocol's proto_init,
        proto_key and proto_value with the limits of ours) in one loop: the same states,
        limits and errors, without the dozen Python calls per key and per value."""
        buffer = self._unprocessed + data
        offset, end = 0, len(buffer)
        self._unprocessed = buffer
        while end >= offset + 2 and not self.paused:
            length = buffer[offset] << 8 | buffer[offset + 1]
            if length > self.MAX_LENGTH:
                self._unprocessed = buffer[offset:]
                self.lengthLimitExceeded(length)
                return
            start = offset + 2
            offset = start + length
            if end < offset:
                offset = start - 2
                break
            string = buffer[start:offset]
            if self.state == "value":
                self.state = "key"
                self.MAX_LENGTH = amp.BinaryBoxProtocol._MAX_KEY_LENGTH
                if not self._too_big(length):
                    self._currentBox[self._currentKey] = string
                self._currentKey = None
                continue
            if self.state == "init":
                self._currentBox = amp.AmpBox()
            if string:
                self.state = "value"
                self.MAX_LENGTH = amp.BinaryBoxProtocol._MAX_VALUE_LENGTH
                if self._too_big(length + BOX_KEY_OVERHEAD):  # reset: nothing more is parsed
                    self.state = "key"
                self._currentKey = string
                continue
            box, self._currentBox = self._currentBox, None
            self.state = "init"
            self.ampBoxReceived(box)
        self._unprocessed = buffer[offset:]

    def lengthLimitExceeded(self, length: int) -> None:
        self._reject(f"malformed box: a key of {length} bytes (AMP keys are 1 to 255 bytes)")

    def _too_big(self, size: int) -> bool:
        """Count ``size`` bytes of the box being received, here and in the registry's total
        of unfinished boxes; True (and a reset) past a limit: max_hello_bytes before login,
        max_box_bytes after, max_partial_bytes for all connections together."""
        self._box_bytes += size
        registry = self.server.registry
        registry.partial_bytes += size
        limits = registry.limits
        if self.kind is None and self._box_bytes > limits.max_hello_bytes:
            self._reject(f"box larger than max_hello_bytes ({limits.max_hello_bytes} bytes) before Hello")
            return True
        if limits.max_box_bytes and self._box_bytes > limits.max_box_bytes:
            self._reject(f"box larger than max_box_bytes ({limits.max_box_bytes} bytes)")
            return True
        if limits.max_partial_bytes and registry.partial_bytes > limits.max_partial_bytes:
            self._reject(f"unfinished boxes of all connections past max_partial_bytes "
                         f"({limits.max_partial_bytes} bytes)")
            return True
        return False

    def _release_box(self) -> None:
        """The box being received is complete or dropped: out of the registry's total."""
        self.server.registry.partial_bytes -= self._box_bytes
        self._box_bytes = 0

    def proto_key(self, string: bytes) -> str:
        if string and self._too_big(len(string) + BOX_KEY_OVERHEAD):
            return "key"
        return super().proto_key(string)

    def proto_value(self, string: bytes) -> str:
        if self._too_big(len(string)):
            return "key"
        return super().proto_value(string)

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if not self._open():
            return
        assert self.conn is not None
        self._release_box()  # the box is complete
        if not self.server.registry.box_received(self.conn):
            limits = self.server.registry.limits
            self._reject(f"more than {limits.max_boxes_per_second:g} boxes per second")
            return
        if box.get(amp.COMMAND) == b"task_finished" and self._plain_finish(box):
            return
        try:
            super().ampBoxReceived(box)
        except Exception as e:
            self._reject(f"malformed box: {type(e).__name__}: {_short(e)}")

    def _plain_finish(self, box: amp.AmpBox) -> bool:
        """Answer a plain TaskFinished of this connection's render as AMP would, without its
        generic dispatch (argument objects, responder lookup, five Deferred links: a third of
        a task's server time). False for any other box, which AMP's path handles, errors and
        all."""
        keys = box.keys()
        render = self.render
        if render is None or self.kind != "render" or not _PLAIN_FINISH_NEEDS <= keys <= _PLAIN_FINISH \
                or box[b"message"] != b"1":
            return False
        try:  # amp.Integer, amp.Float and BigUnicode's conversions
            render_id, job_id, block, task, run = (int(box[k]) for k in (
                b"render_id", b"job_id", b"block", b"task", b"run"))
            exit_code = int(box[b"exit_code"]) if b"exit_code" in box else None
            time_started, time_done = float(box[b"time_started"]), float(box[b"time_done"])
            message = box[b"message.0"].decode("utf-8")
        except ValueError:
            return False
        if render_id != render.id:
            return False
        conn = self.conn
        assert conn is not None
        conn.pending += 1
        try:
            d = self.task_finished(render_id, job_id, block, task, run, time_started, time_done, message,
                                   exit_code=exit_code)
        except Exception:
            d = defer.fail()
        ask = box[amp.ASK]
        d.addCallbacks(self._plain_answer, self._plain_failed, callbackArgs=(ask,), errbackArgs=(ask,))
        d.addErrback(self.unhandledError)
        return True

    def _plain_answer(self, result: dict[str, Any], ask: bytes) -> None:
        answer = c.TaskFinished.makeResponse(result, self)
        answer[amp.ANSWER] = ask
        self._plain_answered()
        self._safeEmit(answer)

    def _plain_failed(self, failure: Failure, ask: bytes) -> None:
        self._plain_answered()
        known = c.TaskFinished.allErrors
        found = failure.check(*known)
        if found is not None:
            code, description = known[found], str(failure.value)
        else:
            log.failure("task_finished from {peer} failed", failure,
                        peer=self.conn.label if self.conn is not None else "?")
            code, description = amp.UNKNOWN_ERROR_CODE, "internal error"
        self._safeEmit(amp.AmpBox({amp.ERROR: ask, amp.ERROR_CODE: code,
                                   amp.ERROR_DESCRIPTION: description.encode("utf-8", "replace")}))

    def _plain_answered(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.pending -= 1
            conn.last_active = self.server.reactor.seconds()

    def sendBox(self, box: amp.AmpBox) -> None:
        if self.transport is None:
            raise error.ConnectionLost()
        if not self._open():
            return  # being reset: nothing more goes out
        assert self.conn is not None
        data = box.serialize()
        self.conn.bytes_out += len(data)
        self.server.registry.bytes_out += len(data)
        if self._writes_paused:  # the peer is not reading: answers in flight, bounded
            self._unsent += len(data)
            limit = self.server.registry.limits.max_unsent_bytes
            if self._unsent > limit:
                self._reject(f"peer does not read its answers (more than max_unsent_bytes, {limit} bytes)")
                return
        self.transport.write(data)

    def unhandledError(self, failure: Failure) -> None:
        log.failure("unhandled error on {peer}", failure,
                    peer=self.conn.label if self.conn is not None else "?")
        if self._open():
            assert self.conn is not None
            self.server.registry.close(self.conn, "unhandled error")

    # --- dispatch ----------------------------------------------------------------------

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], defer.Deferred[Any]] | None:
        """AMP's responder (never StartTLS: TLS is the listener's), made to keep the server
        from closing first, and arguments that do not parse make the box malformed."""
        found = self._responders.get(name)
        if found is None:
            responder = None if name == amp.StartTLS.commandName else super().locateResponder(name)
            if responder is None:
                return None
            found = self._responders[name] = partial(self._respond, name, responder)
        return found

    def _respond(self, name: bytes, responder: Callable[[amp.AmpBox], defer.Deferred[Any]],
                 box: amp.AmpBox) -> defer.Deferred[Any]:
        try:
            d = responder(box)  # AMP parses the arguments at once, raising on bad ones
        except Exception as e:
            command = name.decode("ascii", "replace")
            d = defer.fail(MalformedBox(f"{command}: {type(e).__name__}: {_short(e)}"))
        return d.addErrback(self._failed, name)

    def _failed(self, failure: Failure, name: bytes) -> Failure:
        if failure.check(MalformedBox):
            raise amp.RemoteAmpError(b"MALFORMED_BOX", str(failure.value), local=failure)
        if not failure.check(amp.RemoteAmpError):  # not the command's error: a bug, or input not expected
            log.failure("{command} from {peer} failed", failure, command=name.decode("ascii", "replace"),
                        peer=self.conn.label if self.conn is not None else "?")
            raise amp.RemoteAmpError(amp.UNKNOWN_ERROR_CODE, "internal error", local=failure)
        remote, local = failure.value, failure.value.local
        if remote.fatal and self.conn is not None:
            # The peer is told, then asked to close (AMP would close first: TIME-WAIT).
            why = f"{local.type.__name__}: {_short(local.value)}" if local else remote.description
            self.server.reactor.callLater(0, self.server.registry.close, self.conn, why)
            raise amp.RemoteAmpError(remote.errorCode, remote.description, local=local)
        return failure

    def dispatchCommand(self, box: amp.AmpBox) -> defer.Deferred[Any]:
        conn = self.conn
        d = super().dispatchCommand(box)
        if conn is None:
            return d
        conn.pending += 1

        def answered(result: Any) -> Any:
            conn.pending -= 1
            conn.last_active = self.server.reactor.seconds()
            if isinstance(result, Failure) and result.check(amp.RemoteAmpError) and \
                    result.value.errorCode == b"MALFORMED_BOX":
                self._reject(f"malformed box: {result.value.description}")
            return result

        d.addBoth(answered)
        return d

    # --- access ------------------------------------------------------------------------

    def _need(self, kind: str | None = None) -> None:
        if self.kind is None:
            raise errors.NotAuthenticated("say Hello first")
        if kind is not None and self.kind != kind:
            raise errors.NotAuthenticated(f"this command is for a {kind} connection, not {self.kind}")

    def _need_user(self) -> None:
        """Tool and monitor commands: not for renders (their name is no user)."""
        self._need()
        if self.kind not in USER_KINDS:
            raise errors.NotAuthenticated(f"this command is for tools and monitors, not a {self.kind}")

    def _need_render(self, render_id: int) -> Render:
        self._need("render")
        render = self.render
        if render is None or render.id != render_id:
            raise errors.NotRegistered(f"render {render_id} is not registered on this connection")
        return render

    # --- everyone ----------------------------------------------------------------------

    @c.Hello.responder
    async def hello(self, protocol: int, kind: str, user: str, client: str | None = None,
                    secret: str | None = None, password: str | None = None,
                    features: list[str] | None = None) -> dict[str, Any]:
        if protocol != c.PROTOCOL_VERSION:
            raise errors.IncompatibleProtocol(
                f"server speaks protocol {c.PROTOCOL_VERSION}, peer {protocol}")
        if kind not in c.KINDS:
            raise errors.InvalidAction(f"kind must be one of {', '.join(c.KINDS)}, not {kind!r}")
        if not user:
            raise errors.PermissionDenied("a user name is required")
        conn = self.conn
        assert conn is not None
        if self.kind is not None and self.kind != kind:
            raise errors.InvalidAction(f"this is a {self.kind} connection already")
        if conn.failed_logins >= MAX_FAILED_LOGINS:  # no more guesses while it is being closed
            raise errors.PermissionDenied(f"{conn.failed_logins} failed logins: this connection is closing")
        try:
            await self.server.authenticate(conn, kind, user, secret, password)
        except errors.PermissionDenied:
            conn.failed_logins += 1  # the log line is authenticate's (bounded in rate)
            if conn.failed_logins >= MAX_FAILED_LOGINS:
                self.server.reactor.callLater(0, self.server.registry.close, conn,
                                              f"{conn.failed_logins} failed logins")
            raise
        self.kind, self.user = kind, user
        self.features = frozenset(features or ()).intersection(c.FEATURES)
        self.server.registry.identified(conn, kind, user)
        return {"protocol": c.PROTOCOL_VERSION, "server_version": farmnet.__version__,
                "connection_id": conn.id, "max_box_bytes": self.server.registry.limits.max_box_bytes,
                "features": sorted(self.features)}

    # --- renders -----------------------------------------------------------------------

    @c.RegisterRender.responder
    def register_render(self, name: str, capacity: int, max_tasks: int, services: list[str],
                        services_disabled: list[str], platform: str, cpus: int, memory_mb: int,
                        running: list[TaskRef], owner: str | None = None,
                        macs: list[str] | None = None, facts: HostFacts | None = None) -> dict[str, Any]:
        self._need("render")
        conn = self.conn
        assert conn is not None
        if conn.state is not CloseState.OPEN:
            raise errors.InvalidAction(f"this connection is closing ({conn.close_reason}): reconnect")
        if conn.render is not None and conn.render.name != name:
            raise errors.InvalidAction(f"this connection is render {conn.render.name!r} already")
        render = self.farm.register_render(
            name, capacity=capacity, max_tasks=max_tasks, services=services,
            services_disabled=services_disabled, platform=platform, cpus=cpus,
            memory_mb=memory_mb, owner=owner or "", macs=macs or (), running=running, facts=facts)
        self.server.registry.bind_render(conn, render)
        return {"render_id": render.id, "heartbeat_hold": self.server.heartbeat_hold}

    @c.Heartbeat.responder
    def heartbeat(self, render_id: int, running: list[TaskRef],
                  resources: HostResources | None = None) -> Any:
        self._need("render")
        conn = self.conn
        assert conn is not None
        if conn.state is not CloseState.OPEN:  # asked to close (a zombie, replaced): say it again
            return {"orders": [_close_order(conn.close_order, conn.close_reason)]}
        render = self._need_render(render_id)
        if resources is not None:
            self.farm.render_seen(render, resources)
        return self.server.heartbeat(conn, render)

    @c.ReportResources.responder
    def report_resources(self, render_id: int, resources: HostResources) -> dict[str, Any]:
        self.farm.render_seen(self._need_render(render_id), resources)
        return {}

    @staticmethod
    def _key(job_id: int, block: int, task: int) -> TaskKey:
        return (job_id, block, task)

    @c.TaskOutput.responder
    def task_output(self, render_id: int, job_id: int, block: int, task: int, run: int,
                    data: bytes, progress: int | None = None, frame: int | None = None,
                    percent_frame: int | None = None, warning: str | None = None) -> dict[str, Any]:
        render = self._need_render(render_id)
        key = self._key(job_id, block, task)
        found = self.farm.task_output(render, key, run, progress, frame=frame, percent_frame=percent_frame,
                                      warning=warning)
        if found is not None and data:
            self.server.outputs.append(key, run, data)
        return {}

    @c.TaskFinished.responder
    def task_finished(self, render_id: int, job_id: int, block: int, task: int, run: int,
                      time_started: float, time_done: float, message: str,
                      exit_code: int | None = None, signal: int | None = None,
                      resources: RunResources | None = None, fatal: bool | None = None,
                      files: list[str] | None = None) -> defer.Deferred[dict[str, Any]]:
        render = self._need_render(render_id)
        key = self._key(job_id, block, task)
        if self.farm.current_task(render, key, run) is not None:
            if message:
                self.server.outputs.append(key, run, f"\n[farmnet: {message}]\n".encode())
            if files:
                self.server.outputs.write_files(key, run, files)
        self.farm.task_finished(render, key, run, exit_code=exit_code, signal=signal,
                                time_started=time_started, time_done=time_done, message=message,
                                peak_memory_mb=resources.peak_memory_mb if resources is not None else None,
                                fatal=bool(fatal))
        self.server.outputs.close(key, run)
        # Acknowledged once committed: the render forgets the run only when a restarted
        # server cannot think it still runs. A repeated report is acknowledged the same way.
        # (Deferreds, not a coroutine: this runs once per task.)
        if c.FINISH_ORDERS not in self.features:
            return self.server.durable().addCallback(_no_answer)
        self.finishing += 1
        return self.server.durable().addCallbacks(self._finish_committed, self._finish_failed,
                                                  callbackArgs=(render,))

    def _finish_committed(self, _: Any, render: Render) -> defer.Deferred[dict[str, Any]]:
        if not render.orders and self.farm.solve_pending:  # committed within this turn (no store)
            return deferLater(self.server.reactor, 0, self._finish_committed, None, render)  # after the solve
        self.finishing -= 1
        conn = self.conn
        assert conn is not None
        return self.server.finish_answer(conn, render)

    def _finish_failed(self, failure: Failure) -> Failure:
        self.finishing -= 1
        return failure

    # --- tools -------------------------------------------------------------------------

    @c.SubmitJob.responder
    async def submit_job(self, spec: Any) -> dict[str, Any]:
        """Acknowledged once the job is on disk."""
        self._need_user()
        job_spec, warnings = parse_job(spec, self.farm.settings.max_tasks_per_job,
                                       **known_names(self.farm.settings))
        job = self.farm.submit(job_spec, self.user, names_verified=self.server.passwords is not None)
        await self.server.durable()
        return {"job_id": job.id, "warnings": warnings}

    @c.ListJobs.responder
    def list_jobs(self, user: str | None = None) -> dict[str, Any]:
        self._need_user()
        return {"jobs": self.farm.list_jobs(user)}

    @c.ShowJob.responder
    def show_job(self, job_id: int) -> dict[str, Any]:
        self._need_user()
        return {"job": self.farm.show_job(job_id)}

    @c.ListTasks.responder
    def list_tasks(self, job_id: int, offset: int, limit: int, block: int | None = None) -> dict[str, Any]:
        self._need_user()
        tasks, total = self.farm.list_tasks(job_id, block, offset, max(0, min(limit, MAX_PAGE)))
        return {"tasks": tasks, "total": total}

    @c.GetTaskOutput.responder
    def get_task_output(self, job_id: int, block: int, task: int, run: int, offset: int,
                        limit: int) -> dict[str, Any]:
        self._need_user()
        t = self.farm.task((job_id, block, task))
        self.farm.check_may_read_output(self.user, t.block.job, self.server.output_readers)
        if run < 0 or run > t.starts_count:
            raise errors.UnknownTask(f"job {job_id} block {block} task {task} has no run {run}; "
                                     f"it has run {t.starts_count} time(s)")
        run = run or t.starts_count
        if run == 0:  # never started: no output yet
            return {"data": b"", "run": 0, "next_offset": 0, "complete": True}
        data = self.server.outputs.read(t.key, run, offset, max(0, min(limit, MAX_OUTPUT_READ)))
        still_running = run == t.starts_count and t.state.value in ("RUN", "WRC")
        return {"data": data, "run": run, "next_offset": offset + len(data),
                "complete": not data and not still_running}

    @c.ListOutputFiles.responder
    def list_output_files(self, job_id: int) -> dict[str, Any]:
        self._need_user()
        job = self.farm.job(job_id)
        self.farm.check_may_read_output(self.user, job, self.server.output_readers)
        return {"files": job_output_files(job, self.server.outputs.job_files(job_id))}

    @c.ListRenders.responder
    def list_renders(self) -> dict[str, Any]:
        self._need_user()
        return {"renders": self.farm.list_renders()}

    @c.ListUsers.responder
    def list_users(self) -> dict[str, Any]:
        self._need_user()
        return {"users": self.farm.list_users()}

    @c.JobAction.responder
    async def job_action(self, job_ids: list[int], action: str, value: Any = None) -> dict[str, Any]:
        self._need_user()
        done = act(self.farm, self.user, "jobs", action, {"id": job_ids}, value)
        await self.server.durable()
        return {"done": done}

    @c.Act.responder
    async def act(self, item: str, action: str, filters: Any = None, values: Any = None) -> dict[str, Any]:
        """The one action API; a change is acknowledged once it is on disk."""
        self._need_user()
        result = act(self.farm, self.user, item, action, filters, values,
                     names_verified=self.server.passwords is not None)
        if action not in READ_ACTIONS:
            await self.server.durable()
        return {"result": result}

    # --- monitors ----------------------------------------------------------------------

    @c.PollEvents.responder
    def poll_events(self, after: int, limit: int | None = None) -> Any:
        self._need_user()
        if self.conn is not None and self.conn.state is not CloseState.OPEN:
            return self._close_answer(after)  # asked to close: say it again
        events = self.server.events
        limit = max(1, min(limit or 10_000, 10_000))

        def answer() -> dict[str, Any]:
            found, reset = events.since(after, limit)
            last = found[-1].seq if found else events.last
            return {"events": found, "last": last, "reset": reset}

        if after < 0:  # subscribing: where the log is now
            return {"events": [], "last": events.last, "reset": False}
        if after > events.last:  # a sequence from before a server restart
            return {"events": [], "last": events.last, "reset": True}
        if after < events.last:
            return answer()
        if self._held_poll is not None:  # a newer poll replaces a held one
            self._held_poll.fire(answer())
        held = HeldAnswer(self.server.hold_timer(self.server.event_hold), answer)
        self._held_poll, self._held_after = held, after
        # Answer at the end of the reactor turn, with every event of that turn.
        cancel = events.wait(lambda: self.server.reactor.callLater(0, lambda: held.fire(answer())))
        self._cancel_wait = cancel

        def resolved(result: Any) -> Any:
            cancel()  # however it was answered, its waiter goes
            if self._held_poll is held:
                self._held_poll = self._cancel_wait = None
            return result

        held.deferred.addBoth(resolved)
        return held.deferred


class ServerFactory(Factory):
    noisy = False  # "Starting factory" says nothing an operator needs; the listener logs its port

    def __init__(self, server: FarmServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> ServerProtocol:
        proto = ServerProtocol(self.server)
        proto.factory = self
        return proto


def _short(e: BaseException, limit: int = 200) -> str:
    """An exception's text cut for a log line (a malformed box may carry megabytes)."""
    text = str(e)
    return text if len(text) <= limit else text[: limit - 3] + "..."
