"""Dispatch speed on real processes: a server and render processes on 127.0.0.1.

    python bench/dispatch.py [--renders 51] [--tasks 2000] [--skip-b] [--dir DIR] [--profile DIR]

Prints
  (p) the render's own cost of a task without the farm: 100 sequential `true` through TaskProcess
      (this process's CPU and the child's a task), beside the same by bare posix_spawn+waitpid;
  (a) 100 tasks of `true` on 1 render, and the gap from a task's end to the next one's start;
  (b) 2,000 tasks of `true` on 51 render processes;
  (c) the latency from submit to the first task's process start on an idle render
      (the task writes the time it started; median and worst of 20 submits).
With (a) and (b) go the CPU seconds of the server, of the renders and of the tasks' own processes.
Anchors (Afanasy 3.4.1 on this kind of machine): (a) 201.5 s, (b) 80.7 s.
Targets: (a) <= 0.3 s, (b) <= 3 s, (c) <= 50 ms (issue 17).  The limits of a 2-core machine: 100
sequential `/bin/sh -c true` take 0.07 s, 2,000 with 51 in flight 1.0 s.

    python bench/dispatch.py --dir /dev/shm          # the store on tmpfs: what its fsync costs (a)
    python bench/dispatch.py --profile /tmp/prof    # the renders under cProfile, their stats merged
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task

from farmnet.client import FarmClient, connect
from farmnet.render.process import TaskProcess
from farmnet.testing import ProcessFarm, wait_until


def cpu_seconds(farm: ProcessFarm) -> tuple[float, float, float]:
    """CPU time (user + system) of the server, of all render processes, and of the renders' ended
    children (the tasks' processes)."""
    server = renders = tasks = 0.0
    for proc in farm.processes:
        if proc.running:
            times = psutil.Process(proc.pid).cpu_times()
            if proc is farm.server:
                server += times.user + times.system
            else:
                renders += times.user + times.system
                tasks += times.children_user + times.children_system
    return server, renders, tasks


# Runs twistd (the script after the stats file) under cProfile counting CPU time, not wall time: on a
# shared machine a waiting process would otherwise seem to spend its time in whatever it waited in.
_PROFILED = """
import cProfile, sys, time
out, sys.argv = sys.argv[1], sys.argv[2:]
from twisted.application import app
from twisted.internet import reactor  # the default (epoll), as twistd would install it
from twisted.scripts.twistd import run
app._exitWithSignal = lambda sig: None  # exit normally on SIGTERM, after saving the stats
profiler = cProfile.Profile(time.process_time)
reactor.callWhenRunning(profiler.enable)  # the render's work, not its imports and start
try:
    run()
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


async def start_render(farm: ProcessFarm, name: str, profile: Path | None) -> None:
    """A render process; under cProfile (stats saved in ``profile``) if given."""
    if profile is None:
        await farm.start_render(name)
        return
    farm.spawn(f"render-{name}", ["farmnet", "render", "--server", farm.endpoint, "--name", name],
               python_args=["-c", _PROFILED, str(profile / f"{name}.prof")])


def print_profile(profile: Path, top: int) -> None:
    """The renders' profiles merged: the functions with the most time of their own, and cumulative."""
    files = sorted(str(f) for f in profile.glob("*.prof"))
    if not files:
        print(f"no profiles in {profile}")
        return
    stats = pstats.Stats(*files)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def cpu_split(before: tuple[float, ...], after: tuple[float, ...], tasks: int) -> str:
    server, renders, children = (later - earlier for later, earlier in zip(after, before, strict=True))
    return (f"CPU s: server {server:.2f}, renders {renders:.2f} ({renders / tasks * 1000:.2f} ms a task), "
            f"the tasks' processes {children:.2f} ({children / tasks * 1000:.2f} ms a task); "
            f"{os.cpu_count()} cores")


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def spawn_only(reactor: Any, count: int) -> None:
    """(p): the render's own cost of running a task, without the farm: ``count`` sequential `true`
    through TaskProcess in this process (what a render does between receiving an order and reporting
    its end), beside the machine's floor: the same `/bin/sh -c true` by posix_spawn and waitpid."""
    env = dict(os.environ)

    async def one() -> None:
        process = TaskProcess(reactor, "true", env=env, cwd=None, on_output=lambda data: None)
        process.start()
        await process.done

    for _ in range(10):
        await one()
    started, cpu = time.perf_counter(), _rusage(resource.RUSAGE_SELF)
    children = _rusage(resource.RUSAGE_CHILDREN)
    for _ in range(count):
        await one()
    wall, cpu = time.perf_counter() - started, _rusage(resource.RUSAGE_SELF) - cpu
    children = _rusage(resource.RUSAGE_CHILDREN) - children
    floor, floor_children = machine_floor(count, env)
    print(f"(p) {count} sequential `true` through TaskProcess: {wall:.3f} s; a task: "
          f"{cpu / count * 1e6:.0f} us of this process's CPU, {children / count * 1e6:.0f} us its child's"
          f"   (the machine: {floor:.3f} s by posix_spawn+waitpid, "
          f"{floor_children / count * 1e6:.0f} us a child)")


def machine_floor(count: int, env: dict[str, str]) -> tuple[float, float]:
    """Seconds for ``count`` sequential `/bin/sh -c true` with nothing around them, and their CPU."""
    started, children = time.perf_counter(), _rusage(resource.RUSAGE_CHILDREN)
    for _ in range(count):
        os.waitpid(os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "true"], env), 0)
    return time.perf_counter() - started, _rusage(resource.RUSAGE_CHILDREN) - children


async def online(client: FarmClient, count: int) -> bool:
    return sum(1 for r in await client.renders() if r["online"]) >= count


async def run_job(client: FarmClient, tasks: int) -> tuple[float, int]:
    """Seconds from submit to the job being done, and the job's id."""
    spec = {"name": f"true x{tasks}", "blocks": [
        {"name": "b", "command": "true", "frame_first": 1, "frame_last": tasks, "parser": "none"}]}
    after = await client.subscribe()  # before submitting: no event is missed
    started = time.perf_counter()
    job_id, _ = await client.submit(spec)
    async for event in client.events(after):
        if event.get("kind") == "job" and event["job"]["id"] == job_id and event["job"]["state"] in (
                "DON", "ERR"):
            return time.perf_counter() - started, job_id
    raise RuntimeError("event stream ended")


async def restart_gaps(client: FarmClient, job_id: int) -> list[float]:
    """Seconds from each task's end to the next task's start (the render's own times, as it reported
    them): the render's finish, the server's answer with the next order once committed, the spawn."""
    runs = sorted((t["time_started"], t["time_done"]) for t in await client.tasks(job_id))
    return [start - done for (_, done), (start, _) in zip(runs, runs[1:], strict=False)]


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
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-", dir=args.dir))
    await spawn_only(reactor, 100)
    farm = ProcessFarm(reactor, base)
    try:
        await farm.start_server()
        await start_render(farm, "r000", args.profile)
        client = await connect(reactor, farm.endpoint, "bench")
        await wait_until(reactor, lambda: online(client, 1), 30, "the render")
        await run_job(client, 10)  # warm up
        before = cpu_seconds(farm)
        a, job_id = await run_job(client, 100)
        after = cpu_seconds(farm)
        print(f"(a) 100 tasks of `true` on 1 render: {a:.2f} s   (Afanasy 201.5 s; target <= 0.3 s)")
        print(f"    {cpu_split(before, after, 100)}")
        gaps = [gap * 1000 for gap in sorted(await restart_gaps(client, job_id))]
        print(f"    a task's end -> the next start on the render: median {statistics.median(gaps):.1f} ms, "
              f"90th percentile {gaps[len(gaps) * 9 // 10]:.1f} ms, worst {gaps[-1]:.1f} ms")
        c = await latency(reactor, client, base, 20)
        print(f"(c) submit -> first task process start on an idle render: median "
              f"{statistics.median(c) * 1000:.1f} ms, worst {max(c) * 1000:.1f} ms   (target <= 50 ms)")
        if not args.skip_b:
            for i in range(1, args.renders):
                await start_render(farm, f"r{i:03d}", args.profile)
            started = time.perf_counter()
            await wait_until(reactor, lambda: online(client, args.renders), 180, "all renders",
                             interval=0.5)
            print(f"    ({args.renders} render processes online in {time.perf_counter() - started:.1f} s)")
            before = cpu_seconds(farm)
            b, _ = await run_job(client, args.tasks)
            after = cpu_seconds(farm)
            print(f"(b) {args.tasks} tasks of `true` on {args.renders} render processes: {b:.2f} s   "
                  f"(Afanasy 80.7 s; target <= 3 s)")
            print(f"    {cpu_split(before, after, args.tasks)}")
        client.close()
    finally:
        await farm.stop()
    print(f"logs in {base}")
    if args.profile is not None:
        print_profile(args.profile, args.top)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=51)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--skip-b", action="store_true", help="only (a) and (c)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="the renders under cProfile (CPU time), stats saved in DIR, printed merged")
    parser.add_argument("--dir", help="where the farm's files go (its store: /dev/shm shows what the "
                        "store's fsync costs); default: the system's temporary directory")
    parser.add_argument("--top", type=int, default=40, help="functions shown from the profile")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
