"""A busy farm on real processes on 127.0.0.1: one server, thousands of protocol-level fake
renders running simulated tasks of random length, and monitors following the events.

    python bench/busy.py [--renders 10000] [--procs 4] [--seconds 300] [--mean 19]
                         [--monitors 3] [--warmup 15] [--no-stats]

The server runs with its embedded defaults (statistics in an embedded PostgreSQL unless
--no-stats), a temporary store and ``max_connections_per_address: 0``. The fake renders
(bench/fake_renders.py, --procs processes) run one task at a time, each lasting a random
time, uniform in [0, 2 x --mean] seconds (a render's first task is drawn from the same
renewal's residual time, so the farm is at its steady rate from the start): --renders /
--mean tasks finish and start per second. Jobs of ``true`` tasks are submitted so that the
farm never runs dry. --monitors monitors follow the events (PollEvents, as `farmnet
watch` and the web site's event stream do).

After --warmup seconds, over --seconds: the server's CPU (% of one core; goal <= 25 %),
its RSS, tasks finished per second (goal >= 500), finish -> next start on the same render
(from a fake render sending its TaskFinished to receiving its next start order; goals
p50 <= 10 ms, p99 <= 50 ms), the store's lag (the server's statistics line, every second:
how long the oldest change waited for its batch, and commits per second), the events the
monitors received, and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fake_renders import Swarm, raise_fd_limit, write_status  # noqa: E402

from farmnet.client import connect  # noqa: E402
from farmnet.testing import LoggedProcess, ProcessFarm, wait_until  # noqa: E402

#: Tasks per submitted job.
JOB_TASKS = 50_000


# --- children ------------------------------------------------------------------------


class Simulated:
    """Task lengths and the finish -> next start samples of one process's fake renders."""

    def __init__(self, mean: float) -> None:
        self.mean = mean
        self.begun: set[str] = set()
        self.finished_at: dict[str, float] = {}
        #: (wall time of the start, seconds since that render's finish left) per start.
        self.start_times = array("d")
        self.latencies = array("d")
        #: Wall time of every finish sent.
        self.finishes = array("d")

    def length(self, name: str) -> float:
        u = random.random()
        if name not in self.begun:  # the renewal's residual time: steady from the start
            self.begun.add(name)
            return 2 * self.mean * (1 - math.sqrt(1 - u))
        return 2 * self.mean * u

    def on_task(self, name: str, what: str) -> None:
        now = time.perf_counter()
        if what == "finish":
            self.finished_at[name] = now
            self.finishes.append(time.time())
            return
        sent = self.finished_at.pop(name, None)
        if sent is not None:
            self.start_times.append(time.time())
            self.latencies.append(now - sent)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps({"start_times": self.start_times.tolist(),
                                    "latencies": self.latencies.tolist(),
                                    "finishes": self.finishes.tolist()}))


def run_fakes(args: argparse.Namespace) -> None:
    raise_fd_limit()
    from twisted.internet import reactor

    swarm = Swarm(reactor, args.endpoint, args.count, args.prefix, None, args.connect_rate, 5.0)
    simulated = Simulated(args.mean)
    swarm.task_length = simulated.length
    swarm.on_task = simulated.on_task
    status = Path(args.status)
    task.LoopingCall(write_status, status, swarm).start(0.5)

    async def stop() -> None:
        await swarm.stop()
        simulated.dump(Path(args.out))

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(stop()))
    reactor.callWhenRunning(lambda: defer.ensureDeferred(swarm.run()))
    reactor.run()


def run_monitors(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    received = [0] * args.count
    errors: list[str] = []
    clients: list[Any] = []

    async def follow(i: int) -> None:
        try:
            client = await connect(reactor, args.endpoint, f"monitor{i}", kind="monitor")
            clients.append(client)
            async for _event in client.events():
                received[i] += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    def write() -> None:
        Path(args.status).write_text(json.dumps({"events": received, "errors": errors}))

    task.LoopingCall(write).start(0.5)

    def stop() -> None:
        for client in clients:
            client.close()
        write()

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    for i in range(args.count):
        reactor.callWhenRunning(lambda i=i: defer.ensureDeferred(follow(i)))
    reactor.run()


# --- the bench -----------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


async def bench(reactor: Any, args: argparse.Namespace, base: Path) -> None:
    farm = ProcessFarm(reactor, base)
    config = base / "server.yaml"
    config.write_text("server:\n  log_stats_interval: 1\n"
                      "  limits:\n    max_connections_per_address: 0\n"
                      + ("  stats:\n    enabled: false\n" if args.no_stats else ""))
    children: list[tuple[Any, LoggedProcess]] = []
    try:
        await farm.start_server("--config", str(config), timeout=180,
                                listen=f"tcp:{free_port()}:interface=127.0.0.1:backlog=4096")
        assert farm.server is not None
        server = psutil.Process(farm.server.pid)
        rate = args.renders / args.mean
        tasks = int(args.renders + rate * (args.warmup + args.seconds + 30) * 1.3)
        client = await connect(reactor, farm.endpoint, "bench")
        submitted = 0
        started = time.monotonic()
        while submitted < tasks:
            n = min(JOB_TASKS, tasks - submitted)
            await client.submit({"job": {"name": f"busy{submitted}", "blocks": [
                {"name": "b", "command": "true", "frame_first": 1, "frame_last": n, "parser": "none"}]}})
            submitted += n
        client.close()
        print(f"server pid {server.pid}; submitted {submitted} tasks in {time.monotonic() - started:.1f} s")

        env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
        fakes = []
        per = math.ceil(args.renders / args.procs)
        for i in range(args.procs):
            count = min(per, args.renders - i * per)
            if count <= 0:
                break
            status, out = base / f"fakes{i}.json", base / f"samples{i}.json"
            watch = LoggedProcess(base / f"fakes{i}.log")
            proc = reactor.spawnProcess(watch, sys.executable, [
                sys.executable, __file__, "--child", "fakes", farm.endpoint, "--count", str(count),
                "--prefix", f"r{i}-", "--mean", str(args.mean), "--status", str(status),
                "--out", str(out), "--connect-rate", str(args.connect_rate / args.procs)],
                env=env, path=str(base))
            children.append((proc, watch))
            fakes.append((proc, watch, status, out))
        monitors = None
        if args.monitors:
            status = base / "monitors.json"
            watch = LoggedProcess(base / "monitors.log")
            proc = reactor.spawnProcess(watch, sys.executable, [
                sys.executable, __file__, "--child", "monitors", farm.endpoint, "--count",
                str(args.monitors), "--status", str(status)], env=env, path=str(base))
            children.append((proc, watch))
            monitors = (proc, status)

        def registered() -> int:
            return sum(read_json(status).get("registered", 0) for _, _, status, _ in fakes)

        started = time.monotonic()
        await wait_until(reactor, lambda: registered() >= args.renders, 600,
                         f"{args.renders} renders registered", interval=0.5)
        print(f"{args.renders} renders in {len(fakes)} processes registered in "
              f"{time.monotonic() - started:.1f} s; warming up {args.warmup:g} s")
        await task.deferLater(reactor, args.warmup, lambda: None)

        log_at = farm.server.logfile.stat().st_size
        monitor_proc = psutil.Process(monitors[0].pid) if monitors else None
        fake_procs = [psutil.Process(p.pid) for p, _, _, _ in fakes]
        cpu0 = cpu_seconds(server)
        fake_cpu0 = sum(cpu_seconds(p) for p in fake_procs)
        monitor_cpu0 = cpu_seconds(monitor_proc) if monitor_proc else 0.0
        events0 = sum(read_json(monitors[1]).get("events", [])) if monitors else 0
        reconnects0 = sum(read_json(status).get("reconnects", 0) for _, _, status, _ in fakes)
        t0, wall0 = time.time(), time.monotonic()
        rss: list[float] = []
        cpu_samples: list[float] = []
        last_cpu, last_at = cpu0, wall0
        while time.monotonic() - wall0 < args.seconds:
            await task.deferLater(reactor, min(5.0, args.seconds - (time.monotonic() - wall0)), lambda: None)
            rss.append(server.memory_info().rss / (1 << 20))
            now_cpu, now = cpu_seconds(server), time.monotonic()
            cpu_samples.append(100 * (now_cpu - last_cpu) / (now - last_at))
            last_cpu, last_at = now_cpu, now
        wall = time.monotonic() - wall0
        t1 = time.time()
        server_cpu = cpu_seconds(server) - cpu0
        fake_cpu = sum(cpu_seconds(p) for p in fake_procs) - fake_cpu0
        monitor_cpu = (cpu_seconds(monitor_proc) - monitor_cpu0) if monitor_proc else 0.0
        monitor_status = read_json(monitors[1]) if monitors else {}
        events = sum(monitor_status.get("events", [])) - events0
        reconnects = sum(read_json(status).get("reconnects", 0) for _, _, status, _ in fakes) - reconnects0
        load = os.getloadavg()
        with open(farm.server.logfile, "rb") as f:
            f.seek(log_at)
            window_log = f.read().decode("utf-8", "replace")
        lags = sorted(float(x) for x in re.findall(r"store lag ([0-9.]+) s", window_log))
        commits = [int(x) for x in re.findall(r"store lag [0-9.]+ s, (\d+) commits", window_log)]

        for proc, _ in children:  # the renders close first, then dump their samples
            proc.signalProcess("TERM")
        for _, watch in children:
            await watch.ended
        latencies: list[float] = []
        finishes = 0
        for _, _, _, out in fakes:
            samples = read_json(out)
            latencies += [lat for at, lat in zip(samples.get("start_times", []), samples.get("latencies", []),
                                                 strict=True) if t0 <= at <= t1]
            finishes += sum(1 for at in samples.get("finishes", []) if t0 <= at <= t1)
        latencies.sort()
        ms = [1000 * percentile(latencies, p) for p in (50, 90, 99)]
        print(f"over {wall:.0f} s ({args.renders} renders, mean task {args.mean:g} s, "
              f"{args.monitors} monitors; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
              f"{os.cpu_count()} CPUs):")
        cpu = 100 * server_cpu / wall
        spread = f" (5 s samples {min(cpu_samples):.0f}-{max(cpu_samples):.0f} %)" if cpu_samples else ""
        print(f"  server CPU      {cpu:5.1f} % of one core{spread}  [goal <= 25 %]")
        print(f"  server RSS      {rss[-1]:5.0f} MiB (max {max(rss):.0f})")
        per_task = f"; {1e6 * server_cpu / finishes:.0f} us of server CPU per task" if finishes else ""
        print(f"  tasks finished  {finishes / wall:5.0f} per second ({finishes} in the window){per_task}"
              "  [goal >= 500]")
        if latencies:
            print(f"  finish -> next start on the same render: p50 {ms[0]:.1f} ms, p90 {ms[1]:.1f} ms, "
                  f"p99 {ms[2]:.1f} ms, max {1000 * latencies[-1]:.0f} ms ({len(latencies)} starts)  "
                  "[goal p50 <= 10 ms, p99 <= 50 ms]")
        else:
            print("  finish -> next start: no samples")
        if lags:
            line = (f"  store lag       median {1000 * percentile(lags, 50):.0f} ms, "
                    f"max {1000 * lags[-1]:.0f} ms ({len(lags)} statistics lines)")
            if len(commits) >= 2:
                line += f"; {(commits[-1] - commits[0]) / max(1, len(commits) - 1):.0f} commits/s"
            print(line)
        print(f"  reconnections   {reconnects} in the window (zombies, timeouts)")
        print(f"  monitors        {events / wall:5.0f} events/s received (all monitors)"
              + (f"; errors: {monitor_status['errors'][:3]}" if monitor_status.get("errors") else ""))
        print(f"  other CPU       fake renders {100 * fake_cpu / wall:.0f} %, "
              f"monitors {100 * monitor_cpu / wall:.0f} % of one core")
    finally:
        for proc, watch in children:
            if not watch.ended.called:
                proc.signalProcess("KILL")
        await farm.stop()


def free_port() -> int:
    from farmnet.testing import free_port as free

    return free()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renders", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4, help="fake render processes")
    parser.add_argument("--seconds", type=float, default=300.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds between the last render registered and the window")
    parser.add_argument("--connect-rate", type=float, default=1000.0,
                        help="new render connections per second at start, all processes together")
    parser.add_argument("--dir", default="", help="keep the server's and children's logs here")
    parser.add_argument("--mean", type=float, default=19.0, help="mean task length, seconds")
    parser.add_argument("--monitors", type=int, default=3)
    parser.add_argument("--no-stats", action="store_true", help="statistics off (no embedded PostgreSQL)")
    parser.add_argument("--child", choices=["fakes", "monitors"], help=argparse.SUPPRESS)
    parser.add_argument("endpoint", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--status", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "fakes":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return run_fakes(args)
    if args.child == "monitors":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return run_monitors(args)
    soft, hard = raise_fd_limit(), None
    del hard
    if args.renders + 200 > soft * args.procs:
        sys.exit(f"busy: {args.renders} renders need more open files than {args.procs} processes have")
    if args.dir:
        base = Path(args.dir)
        base.mkdir(parents=True, exist_ok=False)
        task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args, base)))
        return
    with tempfile.TemporaryDirectory(prefix="farmnet-bench-busy-") as tmp:
        task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args, Path(tmp))))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
