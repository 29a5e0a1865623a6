"""The farm's event log over HTTP: server-sent events and a long-poll.

``GET /events`` streams :attr:`Farm.events <farmnet.model.farm.Farm.events>` as
``text/event-stream``: one ``message`` per event, its ``id:`` the event's sequence number
and its data the event as JSON. It starts after the ``Last-Event-ID`` header (what a
browser's EventSource sends when it reconnects), else after ``?after=N`` (a page passes
the sequence it was rendered at, so nothing between rendering and subscribing is lost),
else at the log's end. When the log no longer has what was asked (it keeps the most recent
events only, or the server restarted) a ``reset`` event says so: reload everything.
``?kinds=job,render`` keeps only those kinds.

A stream is a push producer: while the client's socket is full it is paused and sends
nothing; it then goes on from its own position in the log, so a slow client costs no
memory and, if it fell too far behind, gets a ``reset``. Comments keep idle connections
(and proxies) alive.

``GET /api/events?after=N&timeout=S`` is the same log as a long-poll for scripts:
``{"events": [...], "last": N, "reset": bool}``, answered at once when there are events,
else at the first one or after ``timeout`` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.web import server
from zope.interface import implementer

from farmnet.server.monitors import EventLog, events_json
from farmnet.web.routing import STREAMING, Call, HTTPError, Reply, json_reply

__all__ = ["EventStream", "Streams", "long_poll", "sse"]

log = Logger()

#: Events written per turn of the reactor, at most (a burst is sent in slices).
BATCH = 500
#: Seconds between keep-alive comments.
KEEPALIVE = 15.0
#: Seconds events gather before they are written (one write for a burst).
GATHER = 0.05
#: What the browser waits before reconnecting, in ms.
RETRY_MS = 2000
MAX_POLL = 60.0


def _sse(event: dict[str, Any] | None, seq: int, kind: str | None = None) -> bytes:
    lines = [f"id: {seq}"]
    if kind:
        lines.append(f"event: {kind}")
    lines.append("data: " + json.dumps(event, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


class Streams:
    """The site's open event streams (to count them and to end them at shutdown), and the
    recent events as SSE messages: each event is made into JSON once, however many browsers
    follow (twenty streams otherwise convert the same burst twenty times, on the one thread)."""

    #: Encoded events kept (a burst's worth: every stream reads close to the log's end).
    KEEP = 4 * BATCH

    def __init__(self) -> None:
        self.open: set[EventStream] = set()
        self._encoded: dict[int, bytes] = {}

    def encoded(self, events: list[Any]) -> list[bytes]:
        """``events`` as SSE messages, each converted at most once while it is recent."""
        cache = self._encoded
        missing = [e for e in events if e.seq not in cache]
        if not missing:
            return [cache[e.seq] for e in events]
        for data in events_json(missing):
            cache[data["seq"]] = _sse(data, data["seq"])
        found = [cache[e.seq] for e in events]  # before old ones go: a slow stream may ask for them
        if len(cache) > 2 * self.KEEP:
            newest = max(cache)
            for seq in [s for s in cache if s <= newest - self.KEEP]:
                del cache[seq]
        return found

    def close_all(self) -> None:
        for stream in list(self.open):
            stream.close()


@implementer(IPushProducer)
class EventStream:
    """One SSE client."""

    def __init__(self, reactor: Any, events: EventLog, request: server.Request, after: int,
                 kinds: frozenset[str] | None, streams: Streams) -> None:
        self.reactor = reactor
        self.events = events
        self.request = request
        self.after = after
        self.kinds = kinds
        self.streams = streams
        self.paused = False
        self.closed = False
        self._cancel_wait: Callable[[], None] | None = None
        self._scheduled: IDelayedCall | None = None
        self._keepalive = task.LoopingCall(self._ping)
        self._keepalive.clock = reactor

    def start(self) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._gone)
        self.streams.open.add(self)
        request.write(f"retry: {RETRY_MS}\n: farmnet events after {self.after}\n\n".encode())
        self._keepalive.start(KEEPALIVE, now=False)
        self._pump()

    # --- IPushProducer -------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self._schedule(0)

    def stopProducing(self) -> None:
        self._stop()  # the connection is going: nothing more to write

    # --- the stream ----------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self._scheduled is None and not self.closed:
            self._scheduled = self.reactor.callLater(delay, self._pump)

    def _wake(self) -> None:
        self._cancel_wait = None
        self._schedule(GATHER)

    def _pump(self) -> None:
        self._scheduled = None
        if self.closed or self.paused:
            return
        events = self.events
        if self.after > events.last:  # a sequence from before a server restart
            found, reset = [], True
        else:
            found, reset = events.since(self.after, BATCH)
        if reset:
            self.after = events.last
            self.request.write(_sse({"last": events.last}, events.last, "reset"))
        elif found:
            self.after = found[-1].seq
            wanted = found if self.kinds is None else [e for e in found if e.kind in self.kinds]
            chunks = self.streams.encoded(wanted)
            if chunks:
                self.request.write(b"".join(chunks))
        if self.closed:
            return
        if self.after < events.last:
            self._schedule(0)  # more to send: the next slice in the next turn
        elif self._cancel_wait is None:
            self._cancel_wait = events.wait(self._wake)

    def _ping(self) -> None:
        if not self.closed and not self.paused:
            self.request.write(b": keep-alive\n\n")

    def _gone(self, _: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.streams.open.discard(self)
        if self._cancel_wait is not None:
            self._cancel_wait()
            self._cancel_wait = None
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._keepalive.running:
            self._keepalive.stop()

    def close(self) -> None:
        """End the stream (the server is stopping): the browser reconnects later."""
        if self.closed:
            return
        self._stop()
        try:
            self.request.unregisterProducer()
            self.request.finish()
        except Exception:  # the connection went at the same moment
            pass


def _after(call: Call, last: int) -> int:
    header = call.request.getHeader(b"last-event-id")
    if header is not None:
        try:
            return int(header.decode("ascii").strip())
        except ValueError:
            return last + 1  # unknown: the stream starts with a reset
    after = call.int_arg("after", None, -1, 2**62)
    return last if after is None or after < 0 else after


def _kinds(call: Call) -> frozenset[str] | None:
    text = call.arg("kinds")
    if text is None:
        return None
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    if not kinds or any(not k.replace("_", "").isalnum() for k in kinds):
        raise HTTPError(400, "kinds: a comma-separated list of event kinds")
    return kinds


def sse(reactor: Any, events: EventLog, streams: Streams) -> Callable[[Call], Any]:
    async def handler(call: Call) -> Reply:
        after, kinds = _after(call, events.last), _kinds(call)
        EventStream(reactor, events, call.request, after, kinds, streams).start()
        return STREAMING

    return handler


def long_poll(reactor: Any, events: EventLog) -> Callable[[Call], Any]:
    async def handler(call: Call) -> Reply:
        after = call.int_arg("after", -1, -1, 2**62)
        limit = call.int_arg("limit", 1000, 1, 10_000)
        timeout = float(call.int_arg("timeout", 20, 0, int(MAX_POLL)) or 0)
        assert after is not None and limit is not None

        def answer() -> Reply:
            if after > events.last:
                return json_reply({"events": [], "last": events.last, "reset": True})
            found, reset = events.since(after, limit)
            last = found[-1].seq if found else events.last
            return json_reply({"events": events_json(found), "last": last, "reset": reset})

        if after < 0:
            return json_reply({"events": [], "last": events.last, "reset": False})
        if after != events.last or timeout <= 0:
            return answer()
        woken: defer.Deferred[None] = defer.Deferred()

        def wake(*_: Any) -> None:
            if not woken.called:
                woken.callback(None)

        calls = [reactor.callLater(timeout, wake)]
        cancel = events.wait(lambda: calls.append(reactor.callLater(GATHER, wake)))
        call.request.notifyFinish().addErrback(wake)
        try:
            await woken
        finally:
            cancel()
            for delayed in calls:
                if delayed.active():
                    delayed.cancel()
        return answer()

    return handler
