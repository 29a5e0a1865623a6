"""The web site at studio scale: ``/jobs`` pages of a farm of 10,000 jobs of 100 tasks, and
the reactor's longest stall while browsers follow the live stream.

    python bench/web.py [--jobs 10000] [--tasks 100] [--pages 30] [--streams 20] [--seconds 20]

One process, the real site on 127.0.0.1 (twisted.web, the real reactor), the farm in memory:

  (a) ``/jobs`` pages: --pages GETs each of: the first page (newest first), a page deep in
      the list sorted by name, a free-text search, a user's jobs sorted by progress, and a
      state filter sorted by priority; the time from sending the request to the last byte
      (a bare HTTP client in the same reactor: loopback plus server time) and this
      process's CPU time for it (less moved by a busy machine), median and worst, and the
      bytes of each page;
  (b) the same pages while (c) runs;
  (c) --streams clients follow ``/events`` (server-sent events) while renders finish tasks
      (a task state change stream of a few thousand events per second) for --seconds;
      a 5 ms timer measures the reactor's longest stall and its 99th percentile; the
      events sent and every stream's bytes are counted;
  and the longest garbage collection of each generation over the whole run.

Old code (no paging: every job on one page) runs the same way:
PYTHONPATH=/path/to/old/checkout python bench/web.py.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

from farmnet.config import SchedulingConfig
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.web.site import make_site

PAGES = (
    ("first page", "/jobs"),
    ("page 100 by name", "/jobs?sort=name&page=100"),
    ("search", "/jobs?q=shot0123"),
    ("a user's, by progress", "/jobs?user=user3&sort=-progress"),
    ("state RUN, by priority", "/jobs?state=RUN&sort=-priority"),
)


class Fetch(protocol.Protocol):
    """Sends one GET and keeps every byte until the server closes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(b"".join(self.chunks))


class Follow(protocol.Protocol):
    """An event stream's reader: counts what arrives."""

    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0

    def connectionMade(self) -> None:
        self.transport.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.bytes += len(data)
        self.events += data.count(b"\nid: ") + data.startswith(b"id: ")


class Collections:
    """The longest garbage collection of each generation (gc.callbacks): with a million
    tasks in memory a full collection is a stall of its own, whatever the site does."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)

    def report(self) -> str:
        return ", ".join(f"gen {g} {t * 1000:.0f} ms" for g, t in enumerate(self.longest))


class Stalls:
    """A timer every ``interval``: how late each tick is, the reactor's stalls."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lateness: list[float] = []
        self._last = time.monotonic()
        self._loop = task.LoopingCall(self._tick)

    def start(self) -> None:
        self._last = time.monotonic()
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        self._loop.stop()

    def _tick(self) -> None:
        now = time.monotonic()
        self.lateness.append(max(0.0, now - self._last - self.interval))
        self._last = now


def build(jobs: int, tasks: int) -> Farm:
    farm = Farm(reactor, SchedulingConfig())
    departments = ("comp", "light", "fx", "anim")
    for i in range(jobs):
        spec, _ = parse_job({"job": {
            "name": f"shot{i:05d}_{departments[i % 4]}", "priority": 50 + i % 50,
            "project": f"show{i % 7}", "department": departments[i % 4],
            "blocks": [{"name": "render", "command": "true @#@", "frame_first": 1, "frame_last": tasks,
                        "service": "generic", "capacity": 1000}]}})
        farm.submit(spec, f"user{i % 10}")
    return farm


async def get(port: int, path: str) -> tuple[float, int, int, float]:
    """(seconds, bytes of the body, status, CPU seconds of this process) of one GET."""
    fetch = Fetch(path)
    started, cpu = time.perf_counter(), time.process_time()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(lambda: fetch))
    raw = await fetch.done
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return took, len(body), status, cpu


async def pages(port: int, repeat: int, label: str) -> None:
    print(f"{label}:")
    for name, path in PAGES:
        times, sizes, cpus = [], [], []
        for _ in range(repeat):
            took, size, status, cpu = await get(port, path)
            if status != 200:
                raise SystemExit(f"{path}: HTTP {status}")
            times.append(took)
            sizes.append(size)
            cpus.append(cpu)
        print(f"  {name:24s} {path:34s} median {statistics.median(times) * 1000:6.1f} ms "
              f"(CPU {statistics.median(cpus) * 1000:5.1f} ms), worst {max(times) * 1000:7.1f} ms, "
              f"{statistics.median(sizes) / 1024:7.1f} KiB")


def churn(farm: Farm, renders: list[Any], per_tick: int) -> int:
    """Renders finish the tasks they were given (each start and end is an event)."""
    ended = 0
    now = reactor.seconds()
    for render in renders:
        for order in farm.take_orders(render):
            if order.order != "start" or ended >= per_tick:
                continue
            farm.task_finished(render, (order.job_id, order.block, order.task), order.run, exit_code=0,
                               signal=None, time_started=now - 1, time_done=now, message="",
                               peak_memory_mb=100)
            ended += 1
    return ended


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    farm = build(args.jobs, args.tasks)
    print(f"farm: {args.jobs:,} jobs x {args.tasks} tasks built in {time.perf_counter() - started:.1f} s")
    collections = Collections()
    site = make_site(reactor, farm)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    number = port.getHost().port
    renders = [farm.register_render(f"r{n:03d}", capacity=1000, services=("generic",), platform="linux",
                                    cpus=8) for n in range(200)]
    await task.deferLater(reactor, 0.2, lambda: None)  # the first solve hands out tasks
    # The first page builds the listing's rows (once); it is not what a browser waits for later.
    took, _, _, _ = await get(number, "/jobs")
    print(f"first /jobs after start: {took * 1000:.0f} ms")
    await pages(number, args.pages, "(a) /jobs pages, idle farm")

    followers = [Follow() for _ in range(args.streams)]
    for follower in followers:
        await TCP4ClientEndpoint(reactor, "127.0.0.1", number).connect(
            protocol.Factory.forProtocol(lambda f=follower: f))
    ended = [0]
    churner = task.LoopingCall(lambda: ended.__setitem__(0, ended[0] + churn(farm, renders, args.per_tick)))
    stalls = Stalls()
    await task.deferLater(reactor, 0.5, lambda: None)
    stalls.start()
    churner.start(0.02)
    load_started = time.perf_counter()
    await pages(number, max(3, args.pages // 3), f"(b) /jobs pages while {args.streams} streams follow")
    remaining = args.seconds - (time.perf_counter() - load_started)
    if remaining > 0:
        await task.deferLater(reactor, remaining, lambda: None)
    elapsed = time.perf_counter() - load_started
    churner.stop()
    stalls.stop()
    late = sorted(stalls.lateness)
    events = min((f.events for f in followers), default=0)
    print(f"(c) {args.streams} event streams for {elapsed:.1f} s: {ended[0]:,} tasks finished "
          f"({ended[0] / elapsed:,.0f}/s), each stream got >= {events:,} events "
          f"({sum(f.bytes for f in followers) / elapsed / 1024 / 1024:.1f} MiB/s in all); reactor stall: "
          f"longest {late[-1] * 1000:.0f} ms, 99th percentile {late[int(len(late) * 0.99)] * 1000:.1f} ms")
    print(f"longest garbage collections (the whole run): {collections.report()}")
    await defer.maybeDeferred(port.stopListening)
    await site.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--per-tick", type=int, default=40, help="tasks finished per 20 ms at most")
    args = parser.parse_args()
    task.react(lambda _: defer.ensureDeferred(main(args)))


if __name__ == "__main__":
    run()
