"""Every connection of the server, with its identity, kind and close lifecycle.

Afanasy's SocketPool, owned by the server (`FarmServer.registry`) rather than global.
A `Connection` is registered when a peer connects, identified by its `Hello` (kind
render, monitor or tool, and a user or render name), bound to its render by
`RegisterRender`, and removed when the transport is gone.

Closing follows the TIME-WAIT rule: the side that closes first keeps the socket in
TIME-WAIT, so the server never closes first. When it wants a connection gone (shutdown,
a render's newer connection, an idle tool, a zombie) it *asks* the peer
(`ClosablePeer.ask_to_close`: a render's held heartbeat answered with a ``close`` or
``reconnect`` order, a monitor's held poll with the ``close`` flag, a tool sent the
`Close` command), waits at most ``close_wait`` seconds for the peer to close, then
resets the connection (SO_LINGER 0, then abort: an RST, no TIME-WAIT; the mechanism every
listener shares, :mod:`farmnet.server.listening`). A connection's
close lifecycle is the small state machine `CloseState`: OPEN → CLOSING (asked) →
CLOSED; a limit or a malformed box goes OPEN → CLOSED at once, with one log line.

One timer (`sweep`, a LoopingCall running while there are connections) finds zombie
renders and idle tools and monitors. A render's heartbeat is held by the server and the
render sends the next one as soon as it has the answer, so a render is silent when no
heartbeat arrived within ``zombie_time`` after the previous one was answered; while one
is held the render is waiting on us, and only a dead connection (TCP keepalive) can
make it silent.
"""

from __future__ import annotations

import enum
import ipaddress
import resource
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from farmnet.config import LimitsConfig
from farmnet.model.data import Render
from farmnet.protocol.commands import KINDS
from farmnet.protocol.endpoints import set_keepalive
from farmnet.server.listening import reset_connection

__all__ = [
    "CloseState",
    "ClosablePeer",
    "Connection",
    "Registry",
    "raise_fd_limit",
    "reset_connection",
]

log = Logger()

#: Unanswered TCP keepalive probes after which the kernel drops a connection. Accepted
#: sockets probe after zombie_time / 2 idle seconds, then every zombie_time / 8 s: a
#: peer gone without a word (power off, cable, NAT) is found out within about
#: zombie_time, even while its heartbeat is held.
KEEPALIVE_COUNT = 4
#: Longest gap between two sweeps for zombies and idle connections.
SWEEP_INTERVAL = 1.0


class CloseState(enum.Enum):
    """Where a connection is in its close lifecycle."""

    OPEN = "open"
    #: The peer was asked to close; it is reset if still there after close_wait.
    CLOSING = "closing"
    CLOSED = "closed"


_NEXT_STATES = {
    CloseState.OPEN: frozenset({CloseState.CLOSING, CloseState.CLOSED}),
    CloseState.CLOSING: frozenset({CloseState.CLOSED}),
    CloseState.CLOSED: frozenset(),
}


class ClosablePeer(Protocol):
    """What the registry needs of a connection's protocol (`ServerProtocol`)."""

    transport: Any

    def ask_to_close(self, order: str, reason: str) -> None:
        """Ask the peer to close its side, the way its kind can be asked."""


#: Bytes a key/value pair of a box counts towards max_box_bytes besides its key and value
#: (what Python keeps per key).
BOX_KEY_OVERHEAD = 100


@attrs.define(eq=False)
class Connection:
    """One peer's connection as the server sees it."""

    id: int
    peer: ClosablePeer = attrs.field(repr=False)
    address: str
    port: int
    opened: float
    #: Loopback or unix socket: tools may connect without a password from there.
    local: bool = False
    #: render, monitor or tool once it said Hello.
    kind: str | None = None
    #: The user name it said Hello with; a render's name once registered.
    identity: str = ""
    render: Render | None = attrs.field(default=None, repr=False)
    state: CloseState = CloseState.OPEN
    close_reason: str = ""
    #: Who ended it: "peer" (it closed first), "reset" (the server, after close_wait)
    #: or "limit" (a limit or a malformed box).
    ended_by: str = ""
    #: The order a closing render's heartbeat is answered with: close or reconnect.
    close_order: str = "close"
    #: When a box last arrived or an answer left.
    last_active: float = 0.0
    #: A render's heartbeat held by the server now (a `HeldAnswer`), else None.
    held_heartbeat: Any = attrs.field(default=None, repr=False)
    #: When the render's last heartbeat was answered (or it registered).
    beat_answered: float = 0.0
    #: Commands received and not answered yet (held ones included).
    pending: int = 0
    boxes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    failed_logins: int = 0
    #: Removed from the registry (its transport is gone).
    gone: bool = False
    tokens: float = 0.0
    tokens_at: float = 0.0
    _close_call: IDelayedCall | None = attrs.field(default=None, repr=False)
    _waiters: list[defer.Deferred[None]] = attrs.field(factory=list, repr=False)

    def move(self, state: CloseState) -> None:
        if state not in _NEXT_STATES[self.state]:
            raise ValueError(f"connection {self.id}: no way from {self.state.value} to {state.value}")
        self.state = state

    @property
    def label(self) -> str:
        """``kind name (address:port #id)`` for log lines."""
        who = f"{self.kind or 'peer'} {self.identity}".rstrip()
        return f"{who} ({self.address}:{self.port} #{self.id})"

    def when_closed(self) -> defer.Deferred[None]:
        if self.gone:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        return waiter


def is_local(address: Any) -> bool:
    """A loopback TCP peer or a unix socket peer."""
    if isinstance(address, UNIXAddress):
        return True
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    if host == "127.0.0.1":  # the common case, without parsing
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to the hard one (each connection
    takes one); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft, hard


class Registry:
    """The server's connections: who they are, their limits and how they close."""

    def __init__(self, clock: IReactorTime, *, limits: LimitsConfig | None = None,
                 close_wait: float = 2.0, idle_timeout: float = 300.0, zombie_time: float = 16.0,
                 on_zombie: Callable[[Connection, Render], None] | None = None,
                 keepalive: bool = True) -> None:
        self.clock = clock
        #: TCP keepalive on each connection (off for one-request connections: Afanasy's).
        self.keepalive = keepalive
        self.limits = limits or LimitsConfig()
        self.close_wait = close_wait
        self.idle_timeout = idle_timeout
        self.zombie_time = zombie_time
        self.on_zombie = on_zombie or (lambda conn, render: None)
        self.connections: dict[int, Connection] = {}
        self.accepting = True
        self._renders: dict[int, Connection] = {}
        # What the sweep looks at: renders between an answered heartbeat and their next
        # one (held ones are waiting on us), and connections that are not a render's.
        self._unheld: set[Connection] = set()
        self._users: set[Connection] = set()
        self._per_address: Counter[str] = Counter()
        self._next_id = 1
        self._sweeper: LoopingCall | None = None
        # Totals since start, every connection included.
        self.boxes = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Bytes of unfinished boxes buffered now, all connections (max_partial_bytes).
        self.partial_bytes = 0
        self.opened = 0
        self.refused = 0
        self.limited = 0
        self.reset = 0
        self.zombies = 0

    def __len__(self) -> int:
        return len(self.connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.connections.values()))

    # --- registration ----------------------------------------------------------------

    def add(self, peer: ClosablePeer, address: Any) -> Connection | None:
        """Register a new connection; None (and an RST) when a limit refuses it."""
        host = str(getattr(address, "host", None) or getattr(address, "name", None) or "unix")
        port = int(getattr(address, "port", 0) or 0)
        now = self.clock.seconds()
        limit = self.limits.max_connections_per_address
        why = ""
        if not self.accepting:
            why = "the server is shutting down"
        elif limit and self._per_address[host] >= limit:
            why = f"more than {limit} connections from {host}"
        if why:
            self.refused += 1
            log.warn("refused connection from {peer}: {reason}", peer=f"{host}:{port}", kind=None,
                     reason=why)
            reset_connection(peer.transport)
            return None
        conn = Connection(self._next_id, peer, host, port, now, local=is_local(address),
                          last_active=now, beat_answered=now,
                          tokens=self._bucket_size(), tokens_at=now)
        self._next_id += 1
        self.connections[conn.id] = conn
        self._users.add(conn)
        self._per_address[host] += 1
        self.opened += 1
        if self.keepalive:
            set_keepalive(peer.transport, self.zombie_time / 2, self.zombie_time / 8, KEEPALIVE_COUNT)
        if self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(self._sweep_interval(), now=False)
        return conn

    def identified(self, conn: Connection, kind: str, identity: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        conn.kind, conn.identity = kind, identity

    def bind_render(self, conn: Connection, render: Render) -> Connection | None:
        """``conn`` is now ``render``'s connection; returns the one it replaces, which
        no longer speaks for the render (its loss does not take the render offline) and
        is asked to close."""
        old = self._renders.get(render.id)
        self._renders[render.id] = conn
        conn.render, conn.identity = render, render.name
        self._users.discard(conn)
        self.heartbeat_answered(conn)
        if old is None or old is conn:
            return None
        self._unbind(old)
        log.info("render {render}: new connection {new} replaces {old}", render=render.name,
                 new=conn.label, old=old.label)
        self.close(old, "replaced by a newer connection of the same render")
        return old

    def render_connection(self, render_id: int) -> Connection | None:
        return self._renders.get(render_id)

    def _unbind(self, conn: Connection) -> None:
        """The connection no longer speaks for its render (replaced, or a zombie)."""
        conn.render = None
        self._unheld.discard(conn)
        self._users.add(conn)

    def heartbeat_held(self, conn: Connection, held: Any) -> None:
        """The server holds this render's heartbeat (a `HeldAnswer`): it is waiting on us."""
        conn.held_heartbeat = held
        self._unheld.discard(conn)

    def heartbeat_answered(self, conn: Connection) -> None:
        """A heartbeat was answered: the render has zombie_time to send the next one."""
        conn.held_heartbeat = None
        conn.beat_answered = self.clock.seconds()
        if conn.render is not None and not conn.gone:
            self._unheld.add(conn)

    def removed(self, conn: Connection) -> Render | None:
        """The transport is gone. Returns the render that lost its connection (None
        when the connection was replaced, or not a render's)."""
        if conn.id not in self.connections:
            return None
        del self.connections[conn.id]
        conn.gone = True
        self._unheld.discard(conn)
        self._users.discard(conn)
        self._per_address[conn.address] -= 1
        if self._per_address[conn.address] <= 0:
            del self._per_address[conn.address]
        if conn._close_call is not None:
            if conn._close_call.active():
                conn._close_call.cancel()
            conn._close_call = None
        if conn.state is not CloseState.CLOSED:
            if not conn.ended_by:
                conn.ended_by = "peer"
            conn.move(CloseState.CLOSED)
        render, conn.render = conn.render, None
        if render is not None and self._renders.get(render.id) is conn:
            del self._renders[render.id]
        else:
            render = None
        waiters, conn._waiters = conn._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if not self.connections and self._sweeper is not None:
            sweeper, self._sweeper = self._sweeper, None
            if sweeper.running:
                sweeper.stop()
        return render

    # --- closing -----------------------------------------------------------------------

    def close(self, conn: Connection, reason: str, order: str = "close", *,
              quiet: bool = False) -> defer.Deferred[None]:
        """Ask the peer to close (a render gets ``order``: close or reconnect), reset the
        connection if it is still there after close_wait; fires once it is gone. ``quiet``:
        the ordinary end of a one-request connection (Afanasy's), not logged."""
        if conn.state is CloseState.OPEN and conn.id in self.connections:
            conn.move(CloseState.CLOSING)
            conn.close_reason, conn.close_order = reason, order
            if not quiet:  # not a line per request on a busy Afanasy port
                log.info("asking {peer} to close: {reason}", peer=conn.label, kind=conn.kind, reason=reason)
            conn._close_call = self.clock.callLater(self.close_wait, self._close_wait_over, conn)
            try:
                conn.peer.ask_to_close(order, reason)
            except Exception:
                log.failure("asking {peer} to close failed", peer=conn.label)
        return conn.when_closed()

    def _close_wait_over(self, conn: Connection) -> None:
        conn._close_call = None
        if conn.state is CloseState.CLOSING and conn.id in self.connections:
            log.info("{peer} did not close within {seconds} s: reset", peer=conn.label,
                     kind=conn.kind, seconds=self.close_wait)
            conn.ended_by = "reset"
            conn.move(CloseState.CLOSED)
            self.reset += 1
            reset_connection(conn.peer.transport)

    def abort(self, conn: Connection, reason: str) -> None:
        """A limit passed or a malformed box: reset this connection now, one log line."""
        if conn.state is CloseState.CLOSED:
            return
        log.warn("closing {peer}: {reason}", peer=conn.label, kind=conn.kind, reason=reason)
        conn.close_reason, conn.ended_by = reason, "limit"
        conn.move(CloseState.CLOSED)
        self.limited += 1
        reset_connection(conn.peer.transport)

    async def close_all(self, reason: str, order: str = "close") -> None:
        """Ask every peer to close at once; returns when all are gone (≤ close_wait)."""
        closing = [self.close(conn, reason, order) for conn in self]
        if closing:
            await defer.DeferredList(closing, consumeErrors=True)

    # --- limits ------------------------------------------------------------------------

    def _bucket_size(self) -> float:
        return self.limits.max_boxes_per_second * self.limits.burst_seconds

    def box_received(self, conn: Connection) -> bool:
        """Count a box; False when the connection sends faster than allowed."""
        conn.boxes += 1
        self.boxes += 1
        now = self.clock.seconds()
        conn.last_active = now
        rate = self.limits.max_boxes_per_second
        if not rate:
            return True
        conn.tokens = min(self._bucket_size(), conn.tokens + (now - conn.tokens_at) * rate)
        conn.tokens_at = now
        if conn.tokens < 1.0:
            return False
        conn.tokens -= 1.0
        return True

    # --- liveness ----------------------------------------------------------------------

    def _sweep_interval(self) -> float:
        candidates = [SWEEP_INTERVAL, self.zombie_time / 4]
        if self.idle_timeout:
            candidates.append(self.idle_timeout / 4)
        return max(0.05, min(candidates))

    def sweep(self) -> None:
        """Zombie renders go offline; idle tools and monitors are asked to close."""
        now = self.clock.seconds()
        zombie_before = now - self.zombie_time
        for conn in [c for c in self._unheld if c.beat_answered < zombie_before]:
            render = conn.render
            if conn.state is not CloseState.OPEN or render is None or conn.held_heartbeat is not None:
                continue
            self.zombies += 1
            self._unbind(conn)
            del self._renders[render.id]
            self.on_zombie(conn, render)
            self.close(conn, f"render silent for {self.zombie_time:g} s (zombie)")
        if self.idle_timeout:
            idle_before = now - self.idle_timeout
            for conn in [c for c in self._users if c.pending == 0 and c.last_active < idle_before]:
                if conn.state is CloseState.OPEN:
                    self.close(conn, f"idle for {self.idle_timeout:g} s")

    # --- statistics --------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Open connections by kind ("hello" for those that did not say Hello yet)."""
        counts = dict.fromkeys(KINDS, 0)
        counts["hello"] = 0
        for conn in self.connections.values():
            counts[conn.kind or "hello"] += 1
        return counts
