"""Requests per second on the Afanasy port: `get jobs` (af.Cmd().getJobList()) with 1,000
jobs on a real server process on 127.0.0.1.

    python bench/afanasy.py [--jobs 1000] [--tasks 10] [--clients 4] [--seconds 10] [--progress]

The jobs are submitted through the Afanasy port itself (af.py's JSON, one connection each:
that rate is printed too). Then --clients processes ask `get jobs` (--progress: one job's
progress, af.Cmd().getJobProgress(), instead) for --seconds, each
request on its own connection as CGRU's afnetwork does: send, read the framed answer,
close first (blocking sockets, so the clients cost little next to the server).
Prints requests/s, the answer's size, the server's CPU milliseconds per request and the
TIME-WAIT sockets left on the server's port (must be 0).
Anchor: Afanasy 3.4.1 on this kind of machine, 5,000-6,300 requests/s.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from farmnet.testing import ProcessFarm, wait_until


def framed(request: Any) -> bytes:
    body = json.dumps(request).encode()
    return b"AFANASY %d JSON" % len(body) + body


class OneRequest(Protocol):
    """Send one framed request, read the framed answer (not parsed), close first."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()
        self.expected = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.expected:
            end = self.received.find(b"JSON")
            if end < 0:
                return
            self.expected = end + 4 + int(self.received[8:end])
        if len(self.received) >= self.expected and not self.done.called:
            self.transport.loseConnection()
            self.done.callback(bytes(self.received[self.received.find(b"JSON") + 4:]))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


async def ask(reactor: Any, port: int, payload: bytes) -> bytes:
    proto = OneRequest(payload)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    return await proto.done


def get_jobs_loop(port: int, request: bytes, seconds: float) -> int:
    """One client process: `get jobs` requests, one connection each, for ``seconds``."""
    buffer = bytearray(1 << 24)
    view = memoryview(buffer)
    done = 0
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            got, expected = 0, 0
            while not expected or got < expected:
                n = sock.recv_into(view[got:])
                if not n:
                    raise RuntimeError("the server closed first")
                got += n
                if not expected:
                    end = buffer.find(b"JSON", 0, got)
                    if end >= 0:
                        expected = end + 4 + int(buffer[8:end])
        done += 1
    return done


def server_time_wait(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "06" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def job(i: int, tasks: int) -> dict[str, Any]:
    """A job as CGRU's af.py writes it."""
    return {"job": {"name": f"shot{i:04d}_render", "user_name": f"artist{i % 20}", "host_name": "ws1",
                    "priority": 50 + i % 50, "time_creation": 0, "blocks": [
                        {"name": "render", "service": "generic", "parser": "generic", "flags": 1,
                         "capacity": 1000, "command": "mantra -f scene.@####@.ifd",
                         "working_directory": "/tmp",
                         "frame_first": 1, "frame_last": tasks, "frames_per_task": 1, "frames_inc": 1}]}}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-afanasy-"))
    farm = ProcessFarm(reactor, base)
    try:
        await farm.start_server("--afanasy", "tcp:0:interface=127.0.0.1")
        assert farm.server is not None
        server = psutil.Process(farm.server.pid)
        address = base / "server-store" / "afanasy.address"  # written after AMP's
        await wait_until(reactor, address.exists, 10, "the Afanasy listener")
        port = int(address.read_text().strip().rsplit(":", 1)[1])
        started = time.perf_counter()
        for i in range(args.jobs):
            answer = json.loads(await ask(reactor, port, framed(job(i, args.tasks))))
            assert answer.get("id"), answer
        submit_s = time.perf_counter() - started

        get = {"type": "jobs", "user_name": "bench", "host_name": "ws1"}
        if args.progress:
            get.update(mode="progress", ids=[args.jobs // 2])
        request = framed({"get": get})
        first = json.loads(await ask(reactor, port, request))
        if args.progress:
            assert len(first["job_progress"]["progress"][0]) == args.tasks, first
        else:
            assert len(first["jobs"]) == args.jobs + 1, len(first["jobs"])  # and the system job
        size = len(json.dumps(first, separators=(",", ":")))
        with ProcessPoolExecutor(args.clients) as pool:
            list(pool.map(int, range(args.clients)))  # the processes are up before timing
            cpu = server.cpu_times()
            started = time.perf_counter()
            n = args.clients
            counts = await threads.deferToThread(lambda: list(pool.map(
                get_jobs_loop, [port] * n, [request] * n, [args.seconds] * n)))
            elapsed = time.perf_counter() - started
        done = sum(counts)
        cpu_after = server.cpu_times()
        server_cpu = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
        await task.deferLater(reactor, 0.2)
        print(json.dumps({
            "jobs": args.jobs, "tasks_per_job": args.tasks, "clients": args.clients,
            "request": "get jobs mode progress" if args.progress else "get jobs",
            "submits_per_s": round(args.jobs / submit_s, 1),
            "requests_per_s": round(done / elapsed, 1), "requests": done,
            "answer_bytes": size, "server_cpu_ms_per_request": round(1000 * server_cpu / max(done, 1), 2),
            "server_time_wait": server_time_wait(port),
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }))
    finally:
        await farm.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--progress", action="store_true", help="ask one job's progress, not the list")
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
