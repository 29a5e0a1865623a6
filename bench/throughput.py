"""The server's cost per task, end to end: a real server process and protocol-level fake
renders that finish every task the moment it starts (bench/fake_renders.py).

    python bench/throughput.py [--tasks 50000] [--jobs 10] [--renders 1000]
        [--fake-processes 2] [--no-stats] [--no-finish-orders] [--profile] [--keep]

A server with the embedded defaults (statistics into an embedded PostgreSQL unless
--no-stats; needs PostgreSQL's initdb on PATH) on a temporary store, with
``limits.max_connections_per_address: 0`` so that every fake render may connect from
127.0.0.1. --renders fake renders in --fake-processes other processes register; then
--jobs jobs of --tasks tasks in all are submitted at once, and the bench waits until
every job is done (polling ListJobs every 0.2 s). The fakes take their next orders from
the answers to their finishes (the ``finish_orders`` feature: one message per task) unless
--no-finish-orders (a heartbeat and a finish per task, as before that feature).

Prints tasks/s (first submit -> last job done), the server's CPU seconds over that
window and per task (the main figure on a shared machine: wall time depends on the
other processes, CPU per task much less), the fake renders' CPU, and the server's
CPU for the submits alone. Goal (issue 17 item 2): >= 10,000 tasks/s on one server
core, i.e. <= 100 us of server CPU per task.

--profile runs the server under cProfile (twistd --profile) and prints its top
functions by own time and by cumulative time once the server has stopped; the raw
stats are kept in the farm's directory (printed at the end with --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task

from farmnet.client import FarmClient, connect
from farmnet.testing import FarmProcess, LoggedProcess, ProcessFarm, free_port, wait_until

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fake_renders.py"


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def start_server(farm: ProcessFarm, stats: bool, profile: Path | None) -> FarmProcess:
    """ProcessFarm.start_server, with twistd's profiler options when asked."""
    config = farm.base / "server.yaml"
    config.write_text("server:\n"
                      f"  stats:\n    enabled: {'true' if stats else 'false'}\n"
                      "  limits:\n    max_connections_per_address: 0\n")
    store = farm.base / "server-store"
    twistd = [f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else []
    server = farm.spawn("server", [*twistd, "farmnet", "server", "--config", str(config),
                                   "--listen", f"tcp:{free_port()}:interface=127.0.0.1:backlog=4096",
                                   "--web", "", "--afanasy", "", "--store", str(store)])
    farm.server = server
    farm.servers.append(server)
    farm.endpoint = await farm.wait_active(server, timeout=120)
    return server


def fake_counts(paths: list[Path]) -> dict[str, int]:
    total: dict[str, int] = {}
    for path in paths:
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, value in counts.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


def job_spec(number: int, tasks: int) -> dict[str, Any]:
    return {"name": f"throughput {number}", "blocks": [
        {"name": "b", "command": "true", "frame_first": 1, "frame_last": tasks, "parser": "none"}]}


async def all_done(client: FarmClient, job_ids: set[int]) -> bool:
    jobs = [j for j in await client.jobs() if j["id"] in job_ids]
    return len(jobs) == len(job_ids) and all(j["state"] in ("DON", "ERR") for j in jobs)


async def run(reactor: Any, args: argparse.Namespace, base: Path) -> None:
    farm = ProcessFarm(reactor, base)
    profile = base / "server.pstats" if args.profile else None
    fakes: list[tuple[Any, LoggedProcess]] = []
    statuses: list[Path] = []
    try:
        server = await start_server(farm, not args.no_stats, profile)
        per_process = -(-args.renders // args.fake_processes)
        left = args.renders
        for i in range(args.fake_processes):
            count = min(per_process, left)
            left -= count
            if count <= 0:
                break
            status = base / f"fakes-{i}.json"
            statuses.append(status)
            watch = LoggedProcess(base / f"fakes-{i}.log")
            env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
            proc = reactor.spawnProcess(watch, sys.executable, [
                sys.executable, str(FAKES), farm.endpoint, "--count", str(count), "--prefix", f"f{i}-",
                "--status", str(status), "--connect-rate", "2000",
                *(["--no-finish-orders"] if args.no_finish_orders else [])], env=env, path=str(base))
            fakes.append((proc, watch))
        await wait_until(reactor, lambda: fake_counts(statuses).get("registered", 0) >= args.renders, 120,
                         f"{args.renders} fake renders registered", interval=0.2)
        client = await connect(reactor, farm.endpoint, "bench")
        await task.deferLater(reactor, 1.0, lambda: None)  # settle
        per_job = -(-args.tasks // args.jobs)
        sizes = [min(per_job, args.tasks - i * per_job) for i in range(args.jobs)]
        sizes = [n for n in sizes if n > 0]
        server_before = cpu_seconds(server.pid)
        fakes_before = sum(cpu_seconds(p.pid) for p, _ in fakes)
        tasks_before = fake_counts(statuses).get("tasks", 0)
        started = time.perf_counter()
        job_ids = set()
        for number, size in enumerate(sizes):
            job_id, _ = await client.submit(job_spec(number, size))
            job_ids.add(job_id)
        submitted = time.perf_counter() - started
        server_submitted = cpu_seconds(server.pid) - server_before
        await wait_until(reactor, lambda: all_done(client, job_ids), 3600, "every job done", interval=0.2)
        wall = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - server_before
        fakes_cpu = sum(cpu_seconds(p.pid) for p, _ in fakes) - fakes_before
        total = sum(sizes)
        await task.deferLater(reactor, 0.6, lambda: None)  # the fakes' status files are rewritten every 0.5 s
        started_tasks = fake_counts(statuses).get("tasks", 0) - tasks_before
        client.close()
        print(f"{total} tasks in {len(sizes)} jobs on {args.renders} fake renders "
              f"({len(fakes)} processes), statistics {'off' if args.no_stats else 'on'}; "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        print(f"  wall {wall:.2f} s: {total / wall:,.0f} tasks/s (submits took {submitted:.2f} s)")
        print(f"  server CPU {server_cpu:.2f} s = {server_cpu / total * 1e6:.0f} us per task "
              f"({server_cpu / wall * 100:.0f} % of a core; submits {server_submitted:.2f} s); "
              f"target <= 100 us")
        print(f"  fake renders' CPU {fakes_cpu:.2f} s = {fakes_cpu / total * 1e6:.0f} us per task; "
              f"start orders they saw: {started_tasks}")
    finally:
        for proc, watch in fakes:  # the renders close first
            if not watch.ended.called:
                proc.signalProcess("TERM")
        for _, watch in fakes:
            await watch.ended
        await farm.stop()
    if profile is not None and profile.exists():
        print(f"\nserver profile ({profile}), by own time:")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(args.top)
        print("by cumulative time:")
        pstats.Stats(str(profile)).sort_stats("cumulative").print_stats(args.top)


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--renders", type=int, default=1000)
    parser.add_argument("--fake-processes", type=int, default=2)
    parser.add_argument("--no-stats", action="store_true", help="statistics off (no embedded PostgreSQL)")
    parser.add_argument("--no-finish-orders", action="store_true",
                        help="fakes send a heartbeat per task (not the finish_orders feature)")
    parser.add_argument("--profile", action="store_true", help="run the server under cProfile")
    parser.add_argument("--top", type=int, default=40, help="profile lines printed")
    parser.add_argument("--keep", action="store_true", help="keep the farm's directory (logs, profile)")
    args = parser.parse_args(argv)
    if not args.no_stats and shutil.which("initdb") is None:
        sys.exit("throughput: statistics need PostgreSQL's initdb on PATH (or say --no-stats)")
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-throughput-"))
    try:
        await run(reactor, args, base)
    finally:
        if args.keep:
            print(f"farm directory: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
