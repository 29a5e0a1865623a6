"""Many fake renders in one process: plain AMP clients that Hello, RegisterRender and
long-poll Heartbeat like a real render, without running anything (a start order is
answered at once with a successful TaskFinished).

    python bench/fake_renders.py tcp:127.0.0.1:51100 --count 10000 [--prefix fake-]
        [--secret S] [--connect-rate 0] [--status status.json] [--no-finish-orders]

With a server that speaks the ``finish_orders`` feature (and without --no-finish-orders)
a fake takes its next orders from the answers to its finishes, and sends a heartbeat only
when those carry none: one message per task, as a real render whose heartbeat is held.
Otherwise it sends the next heartbeat along with its finishes (two messages per task).

Each fake keeps one connection, sends its next heartbeat as soon as the previous one is
answered, closes first when the server orders ``close`` or ``reconnect`` and reconnects
with backoff (and jitter) whenever its connection ends. ``--status`` is rewritten every
half second with counts (connected, registered now, ever registered, heartbeats,
reconnects, errors). SIGTERM closes every connection (the client closes first), then
exits. The soft limit of open files is raised to the hard one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import attrs
from twisted.internet import defer, error, task
from twisted.internet.endpoints import clientFromString, connectProtocol

from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP

#: Added to the server's hold before an unanswered heartbeat means a dead connection.
HEARTBEAT_MARGIN = 15.0


class FakeConnection(FarmAMP):
    """A fake render's connection (FarmAMP knows when it is gone)."""


@attrs.define
class Counts:
    connected: int = 0
    registered: int = 0
    ever_registered: int = 0
    heartbeats: int = 0
    reconnects: int = 0
    errors: int = 0
    tasks: int = 0
    last_error: str = ""


class Link(NamedTuple):
    """One fake render's registered connection."""

    name: str
    proto: FakeConnection
    render_id: int
    finish_orders: bool


class Swarm:
    def __init__(self, reactor: Any, endpoint: str, count: int, prefix: str, secret: str | None,
                 connect_rate: float, max_delay: float, finish_orders: bool = True) -> None:
        self.reactor = reactor
        self.endpoint = clientFromString(reactor, endpoint)
        self.count = count
        self.prefix = prefix
        self.secret = secret
        self.connect_rate = connect_rate
        self.max_delay = max_delay
        self.features = [c.FINISH_ORDERS] if finish_orders else []
        self.counts = Counts()
        self.names_registered: set[str] = set()
        self.protocols: set[FakeConnection] = set()
        self.stopping = False
        #: Simulated tasks (bench/busy.py): seconds a start order runs before its
        #: TaskFinished, by render name; None finishes at once.
        self.task_length: Callable[[str], float] | None = None
        #: Told (render name, "start" or "finish") as a start order arrives and as its
        #: TaskFinished leaves (bench/busy.py's finish -> next start).
        self.on_task: Callable[[str, str], None] | None = None

    async def run(self) -> None:
        runs = []
        for i in range(self.count):
            runs.append(defer.ensureDeferred(self.one(f"{self.prefix}{i:05d}")))
            if self.connect_rate > 0:
                await task.deferLater(self.reactor, 1.0 / self.connect_rate, lambda: None)
        await defer.DeferredList(runs, consumeErrors=True)

    async def one(self, name: str) -> None:
        failures = 0
        while not self.stopping:
            proto: FakeConnection | None = None
            registered = False
            try:
                proto = await connectProtocol(self.endpoint, FakeConnection())
                self.protocols.add(proto)
                self.counts.connected += 1
                hello = await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render",
                                               user=name, client="fake-render", secret=self.secret,
                                               features=self.features)
                finish_orders = c.FINISH_ORDERS in (hello.get("features") or ())
                answer = await proto.callRemote(
                    c.RegisterRender, name=name, capacity=1100, max_tasks=0, services=[],
                    services_disabled=[], platform="fake", cpus=1, memory_mb=1024, running=[])
                render_id, hold = answer["render_id"], answer["heartbeat_hold"]
                registered = True
                failures = 0
                self.counts.registered += 1
                if name not in self.names_registered:
                    self.names_registered.add(name)
                    self.counts.ever_registered += 1
                link = Link(name, proto, render_id, finish_orders)
                while not self.stopping:
                    d = proto.callRemote(c.Heartbeat, render_id=render_id, running=[])
                    d.addTimeout(hold + HEARTBEAT_MARGIN, self.reactor)
                    orders = (await d)["orders"]
                    self.counts.heartbeats += 1
                    if self.started(link, orders):
                        break
            except (error.ConnectError, error.ConnectionClosed, defer.TimeoutError, OSError) as e:
                self.counts.errors += 1
                self.counts.last_error = type(e).__name__
            except Exception as e:  # a refusal (PermissionDenied...): count it, retry later
                self.counts.errors += 1
                self.counts.last_error = f"{type(e).__name__}: {e}"
            finally:
                if registered:
                    self.counts.registered -= 1
                if proto is not None:
                    self.counts.connected -= 1
                    await self.close(proto)
            if self.stopping:
                return
            failures += 1
            self.counts.reconnects += 1
            delay = min(self.max_delay, 1.0 * 1.5 ** min(failures, 20)) + random.random()
            await task.deferLater(self.reactor, delay, lambda: None)

    def started(self, link: Link, orders: list[Any]) -> bool:
        """Start (simulate) the start orders; whether a close is among them."""
        closing = False
        for order in orders:
            kind = order.order
            if kind in ("close", "reconnect", "exit"):
                closing = True
            elif kind == "start":
                self.counts.tasks += 1
                if self.on_task is not None:
                    self.on_task(link.name, "start")
                length = self.task_length(link.name) if self.task_length is not None else 0.0
                if length > 0:
                    self.reactor.callLater(length, self.finish, link, order, time.time())
                else:
                    self.finish(link, order, time.time())
        return closing

    def finish(self, link: Link, order: Any, started_at: float) -> None:
        """The task's end; with finish_orders its answer carries the render's next orders."""
        if self.on_task is not None:
            self.on_task(link.name, "finish")
        d = link.proto.callRemote(
            c.TaskFinished, render_id=link.render_id, job_id=order.job_id, block=order.block,
            task=order.task, run=order.run, exit_code=0, time_started=started_at,
            time_done=time.time(), message="")
        if link.finish_orders:
            d.addCallback(lambda answer: self.started(link, answer.get("orders") or []))
        d.addErrback(lambda _: None)

    async def close(self, proto: FakeConnection) -> None:
        """Close first (our side keeps the TIME-WAIT), and wait until it is gone."""
        if not proto.lost and proto.transport is not None:
            proto.transport.loseConnection()
            gone = proto.when_lost()
            timeout = self.reactor.callLater(5, lambda: proto.transport.abortConnection())
            await gone
            if timeout.active():
                timeout.cancel()
        self.protocols.discard(proto)

    async def stop(self) -> None:
        self.stopping = True
        await defer.DeferredList([defer.ensureDeferred(self.close(p)) for p in list(self.protocols)],
                                 consumeErrors=True)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def write_status(path: Path, swarm: Swarm) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**attrs.asdict(swarm.counts), "time": time.time()}))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", help="the server, e.g. tcp:127.0.0.1:51100")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--prefix", default="fake-")
    parser.add_argument("--secret", default=None)
    parser.add_argument("--connect-rate", type=float, default=0.0,
                        help="new connections per second at start (0: all at once)")
    parser.add_argument("--max-delay", type=float, default=5.0, help="longest reconnection backoff")
    parser.add_argument("--status", default="", help="JSON status file, rewritten every 0.5 s")
    parser.add_argument("--no-finish-orders", action="store_true",
                        help="do not take orders from the answers to finishes (the older protocol)")
    args = parser.parse_args(argv)
    limit = raise_fd_limit()
    if args.count + 100 > limit:
        sys.exit(f"fake_renders: {args.count} connections need more than the {limit} open files allowed")

    from twisted.internet import reactor

    swarm = Swarm(reactor, args.endpoint, args.count, args.prefix, args.secret, args.connect_rate,
                  args.max_delay, finish_orders=not args.no_finish_orders)
    if args.status:
        status = Path(args.status)
        loop = task.LoopingCall(write_status, status, swarm)
        loop.start(0.5)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(swarm.stop()))
    reactor.callWhenRunning(lambda: defer.ensureDeferred(swarm.run()))
    reactor.run()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

