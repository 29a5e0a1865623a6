"""Dispatch speed on real processes: a server and render processes on 127.0.0.1.

    python bench/dispatch.py [--renders 51] [--tasks 2000] [--skip-b]

Prints wall times for
  (a) 100 tasks of `true` on 1 render,
  (b) 2,000 tasks of `true` on 51 render processes,
  (c) the latency from submit to the first task's process start on an idle render
      (the task writes the time it started; median and worst of 20 submits).
Anchors (Afanasy 3.4.1 on this kind of machine): (a) 201.5 s, (b) 80.7 s.
Targets: (a) <= 1.5 s, (b) <= 6 s, (c) <= 50 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until


def cpu_seconds(farm: ProcessFarm) -> tuple[float, float]:
    """CPU time (user + system) of the server and of all render processes."""
    server = renders = 0.0
    for proc in farm.processes:
        if proc.running:
            times = psutil.Process(proc.pid).cpu_times()
            if proc is farm.server:
                server += times.user + times.system
            else:
                renders += times.user + times.system
    return server, renders


async def online(client: FarmClient, count: int) -> bool:
    return sum(1 for r in await client.renders() if r["online"]) >= count


async def run_job(client: FarmClient, tasks: int) -> float:
    """Seconds from submit to the job being done."""
    spec = {"name": f"true x{tasks}", "blocks": [
        {"name": "b", "command": "true", "frame_first": 1, "frame_last": tasks, "parser": "none"}]}
    after = await client.subscribe()  # before submitting: no event is missed
    started = time.perf_counter()
    job_id, _ = await client.submit(spec)
    async for event in client.events(after):
        if event.get("kind") == "job" and event["job"]["id"] == job_id and event["job"]["state"] in (
                "DON", "ERR"):
            return time.perf_counter() - started
    raise RuntimeError("event stream ended")


async def latency(reactor: Any, client: FarmClient, stamp_dir: Path, samples: int) -> list[float]:
    result = []
    for i in range(samples):
        stamp = stamp_dir / f"stamp{i}"
        spec = {"name": f"latency {i}", "blocks": [
            {"name": "b", "command": f"date +%s.%N > {stamp}", "parser": "none"}]}
        sent = time.time()
        await client.submit(spec)
        await wait_until(reactor, stamp.exists, 10, "the task to start", interval=0.01)
        await task.deferLater(reactor, 0.05)
        result.append(float(stamp.read_text()) - sent)
    return result


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-"))
    farm = ProcessFarm(reactor, base)
    try:
        await farm.start_server()
        await farm.start_render("r000")
        client = await connect(reactor, farm.endpoint, "bench")
        await wait_until(reactor, lambda: online(client, 1), 30, "the render")
        await run_job(client, 10)  # warm up
        a = await run_job(client, 100)
        print(f"(a) 100 tasks of `true` on 1 render: {a:.2f} s   (Afanasy 201.5 s; target <= 1.5 s)")
        c = await latency(reactor, client, base, 20)
        print(f"(c) submit -> first task process start on an idle render: median "
              f"{statistics.median(c) * 1000:.1f} ms, worst {max(c) * 1000:.1f} ms   (target <= 50 ms)")
        if not args.skip_b:
            for i in range(1, args.renders):
                await farm.start_render(f"r{i:03d}")
            started = time.perf_counter()
            await wait_until(reactor, lambda: online(client, args.renders), 180, "all renders",
                             interval=0.5)
            print(f"    ({args.renders} render processes online in {time.perf_counter() - started:.1f} s)")
            before = cpu_seconds(farm)
            b = await run_job(client, args.tasks)
            after = cpu_seconds(farm)
            print(f"(b) {args.tasks} tasks of `true` on {args.renders} render processes: {b:.2f} s   "
                  f"(Afanasy 80.7 s; target <= 6 s)")
            print(f"    CPU seconds during (b): server {after[0] - before[0]:.2f}, renders "
                  f"{after[1] - before[1]:.2f} (tasks' own processes not counted); {os.cpu_count()} cores")
        client.close()
    finally:
        await farm.stop()
    print(f"logs in {base}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=51)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--skip-b", action="store_true", help="only (a) and (c)")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
