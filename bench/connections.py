"""Connection scale on real processes on 127.0.0.1: idle long-polling renders and short
tool connections against one server process.

    python bench/connections.py [--counts 1000,5000,10000] [--holds 20] [--seconds 20]
                                [--tools 10000]

For each heartbeat hold (the server's heartbeat_hold), a fresh server; then fake renders
(bench/fake_renders.py, in other processes) up to each count, all idle and long-polling;
at each count the server's CPU (% of one core, over --seconds or one whole hold if
longer, so every render's heartbeat is answered once in it) and RSS are measured.
Then --tools short tool connections (Hello, ListJobs, close), 100 at a time, and the
TIME-WAIT sockets on the server's port: ss -tan state time-wait '( sport = :PORT )'.
Targets: 10,000 renders at <= 10 % of one core; TIME-WAIT 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, connectProtocol

from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.testing import LoggedProcess, ProcessFarm, wait_until

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fake_renders.py"


class Tool(FarmAMP):
    def __init__(self) -> None:
        super().__init__()
        self.gone: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.gone.callback(None)


def time_wait(port: int, side: str = "sport") -> int:
    out = subprocess.run(["ss", "-tan", "state", "time-wait", f"( {side} = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return max(0, len([line for line in out.splitlines() if line.strip()]) - 1)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(reactor: Any, pid: int, seconds: float) -> tuple[float, float]:
    """(% of one core, RSS MiB) of ``pid`` over ``seconds``."""
    before, started = cpu_seconds(pid), time.monotonic()
    await task.deferLater(reactor, seconds, lambda: None)
    used, wall = cpu_seconds(pid) - before, time.monotonic() - started
    return 100.0 * used / wall, psutil.Process(pid).memory_info().rss / (1 << 20)


async def tools(reactor: Any, endpoint: str, count: int, parallel: int = 100) -> float:
    """``count`` short tool connections, ``parallel`` at a time; seconds taken."""
    point = clientFromString(reactor, endpoint)
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        try:
            proto = await connectProtocol(point, Tool())
            await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="tool", user=f"bench{i}")
            await proto.callRemote(c.ListJobs)
            proto.transport.loseConnection()  # the client closes first
            await proto.gone
        except Exception:
            errors += 1

    started = time.monotonic()
    pending = iter(range(count))

    async def worker() -> None:
        for i in pending:
            await one(i)

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(parallel)])
    if errors:
        print(f"    {errors} tool connections failed")
    return time.monotonic() - started


async def run_hold(reactor: Any, base: Path, hold: float, counts: list[int], seconds: float,
                   tool_count: int) -> list[dict[str, Any]]:
    farm = ProcessFarm(reactor, base / f"hold-{hold:g}")
    config = farm.base / "server.yaml"
    config.write_text(f"server:\n  log_stats_interval: 10\n  stats:\n    enabled: false\n"
                      f"  connections:\n    heartbeat_hold: {hold}\n"
                      "  limits:\n    max_connections_per_address: 0\n")
    fakes: list[tuple[Any, LoggedProcess, Path]] = []
    rows: list[dict[str, Any]] = []
    try:
        await farm.start_server("--config", str(config), listen="tcp:0:interface=127.0.0.1:backlog=4096")
        assert farm.server is not None
        port = int(farm.endpoint.rsplit(":", 1)[1])
        idle_cpu, idle_rss = await measure(reactor, farm.server.pid, min(seconds, 5))
        print(f"  hold {hold:g} s: empty server {idle_cpu:.1f} % CPU, {idle_rss:.0f} MiB")
        have = 0
        for count in counts:
            status = farm.base / f"fakes-{count}.json"
            watch = LoggedProcess(farm.base / f"fakes-{count}.log")
            env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
            proc = reactor.spawnProcess(watch, sys.executable, [
                sys.executable, str(FAKES), farm.endpoint, "--count", str(count - have),
                "--prefix", f"f{count}-", "--status", str(status), "--connect-rate", "2000"],
                env=env, path=str(farm.base))
            fakes.append((proc, watch, status))
            started = time.monotonic()

            def registered() -> int:
                total = 0
                for _, _, path in fakes:
                    try:
                        total += json.loads(path.read_text())["registered"]
                    except (OSError, ValueError, KeyError):
                        pass
                return total

            await wait_until(reactor, lambda count=count: registered() >= count, 300,
                             f"{count} renders registered", interval=0.5)
            ramp = time.monotonic() - started
            await task.deferLater(reactor, 3, lambda: None)  # settle
            # At least one whole hold: every render's heartbeat is answered once in it.
            window = max(seconds, hold)
            cpu, rss = await measure(reactor, farm.server.pid, window)
            fake_cpu = sum(cpu_seconds(p.pid) for p, _, _ in fakes)
            rows.append({"hold": hold, "renders": count, "cpu": cpu, "rss": rss, "ramp": ramp})
            print(f"  hold {hold:g} s, {count:>6} renders: server {cpu:5.1f} % of a core over {window:g} s, "
                  f"RSS {rss:6.0f} MiB (registered in {ramp:.1f} s; fake renders used {fake_cpu:.0f} CPU s)")
            have = count
        # The server's own count of them, read while they are connected (a line every 10 s).
        log = farm.server.logfile.read_text(errors="replace")
        stats = [line for line in log.splitlines() if "statistics:" in line]
        if stats:
            print(f"  the server's last statistics line with them connected: "
                  f"{stats[-1].split('statistics: ', 1)[1]}")
        for proc, watch, _ in fakes:  # the renders close first
            proc.signalProcess("TERM")
            await watch.ended
        await task.deferLater(reactor, 1, lambda: None)
        after_renders = time_wait(port)
        if tool_count:
            took = await tools(reactor, farm.endpoint, tool_count)
            await task.deferLater(reactor, 1, lambda: None)
            server_side, client_side = time_wait(port), time_wait(port, "dport")
            print(f"  {tool_count} tool connections in {took:.1f} s ({tool_count / took:.0f}/s); "
                  f"TIME-WAIT on the server's port: {server_side} (client side: {client_side}); "
                  f"after the renders closed: {after_renders}")
            rows.append({"hold": hold, "tools": tool_count, "seconds": took, "time_wait": server_side,
                         "client_time_wait": client_side, "time_wait_after_renders": after_renders})
    finally:
        for proc, watch, _ in fakes:
            if not watch.ended.called:
                proc.signalProcess("KILL")
        await farm.stop()
    return rows


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1000,5000,10000")
    parser.add_argument("--holds", default="20")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tools", type=int, default=10000)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counts = [int(n) for n in args.counts.split(",")]
    print(f"open files: soft {soft} -> {hard} (hard); {os.cpu_count()} CPUs; "
          f"{sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="farmnet-bench-conn-") as base:
        for i, hold in enumerate(float(h) for h in args.holds.split(",")):
            await run_hold(reactor, Path(base), hold, counts, args.seconds,
                           args.tools if i == 0 else 0)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
