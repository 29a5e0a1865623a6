"""Solving speed of the farm model: 1,000 jobs × 100 tasks on 1,000 in-process renders.

    python bench/solve.py [--jobs 1000] [--tasks 100] [--renders 1000] [--users 10] [--needs] [--pools 0]

With ``--needs`` the renders report what needs read (OS, properties on every other render,
power, CPU MHz, free memory and disk, GPU memory on every fourth) and a third of the jobs ask
for some (job need_os; block need_memory, need_hdd, need_cpu_cores, need_properties "gpu",
need_gpu_mem_mb), and a tenth have variable capacity (capacity_coeff 1..2); every task still
fits somewhere.  The issue's figure: ``--renders 10000 --needs``.
With ``--pools N`` the renders are spread over N pools under /farm (services, limits, priorities).

Renders are in-process (the model's own API, no sockets); every task finishes the
moment it is handed out. Two figures, per CPU second:
- the solve: assignments per second, a task picked for a render, started (counters, state,
  events) and its start order made. This is issue 14's figure (>= 50,000/s).
- the cycle: tasks per second through the solve and the finish the render reports (the
  run freed, counted, its record and events), both in this loop. The figures quoted
  before 2026-11-30 were this one.
The wall-clock rate of the whole loop and the process's RSS with the whole queue loaded
are printed too.
Anchors: Tractor claims "over 500 tasks per second"; OpenCue's stress sample 975 frames/s.
Targets: >= 50,000 assignments/s (the solve) and <= 300 MB RSS.

``--pools N`` puts the renders in N render pools (placed by their names' patterns, each with
its own priority, a disabled service and a running-tasks limit, so every pool rule is checked
on every pick); issue 14 asks for 10,000 renders in 20 pools: ``--renders 10000 --pools 20``.
"""

from __future__ import annotations

import argparse
import time

import psutil
from twisted.internet.task import Clock

from farmnet.config import SchedulingConfig
from farmnet.memory import settle_after_load
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job


def needs(i: int) -> dict[str, object]:
    """A job's block needs: a third of the jobs have some, every one met by some renders."""
    if i % 3:
        return {"capacity_coeff_min": 1, "capacity_coeff_max": 2} if i % 10 == 1 else {}
    choice = (i // 3) % 4
    return [{"need_memory": 40000, "need_hdd": 100},
            {"need_properties": "gpu", "need_cpu_cores": 32},
            {"need_gpu_mem_mb": 16000},
            {"need_cpu_freq_mgz": 3500, "need_power": 12}][choice]


def add_pools(farm: Farm, count: int) -> None:
    """``count`` pools under /farm; a render goes in one by the last two digits of its name."""
    farm.pool_action("root", "/farm", "create", {"pattern": "render.*"})
    for k in range(count):
        suffixes = "|".join(f"{n:02d}" for n in range(100) if n % count == k)
        farm.pool_action("root", f"/farm/p{k:02d}", "create", {
            "pattern": f"render\\d*({suffixes})", "priority": 50 + 5 * k, "services_disabled": ["nuke"],
            "max_running_tasks": 100_000, "max_tasks_host": 4})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--renders", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--needs", action="store_true", help="renders report resources; jobs have needs")
    parser.add_argument("--pools", type=int, default=0, help="render pools (0: the root pool only)")
    args = parser.parse_args()

    process = psutil.Process()
    base_rss = process.memory_info().rss
    clock = Clock()
    farm = Farm(clock, SchedulingConfig(admins=("root",)))
    if args.pools:
        add_pools(farm, args.pools)
    started = time.perf_counter()
    for i in range(args.jobs):
        block = {"name": "render", "command": "render -f @####@", "frame_first": 1, "frame_last": args.tasks}
        job: dict[str, object] = {"name": f"shot{i:04d}", "priority": 50 + i % 50, "blocks": [block]}
        if args.needs:
            block.update(needs(i))
            if i % 3 == 0:
                job["need_os"] = "linux"
        spec, _ = parse_job(job)
        farm.submit(spec, f"user{i % args.users}")
    renders = []
    if args.needs:  # imported here: without --needs the bench also runs code from before needs
        from farmnet.messages import HostFacts, HostResources
    for i in range(args.renders):
        if not args.needs:
            renders.append(farm.register_render(f"render{i:04d}", capacity=1100))
            continue
        facts = HostFacts(os="unix linux 64 debian 12", cpu_mhz=3000 + 100 * (i % 10),
                          properties="gpu,houdini" if i % 2 else "", power=10 + i % 5)
        render = farm.register_render(f"render{i:04d}", capacity=2200, cpus=16 + 16 * (i % 2), facts=facts)
        gpu = (24576, 512) if i % 4 == 1 else (None, None)
        farm.render_seen(render, HostResources(mem_free_mb=32000 + 1000 * (i % 32), hdd_free_gb=500.0,
                                               gpu_mem_total_mb=gpu[0], gpu_mem_used_mb=gpu[1]))
        renders.append(render)
    loaded = time.perf_counter() - started
    settle_after_load()  # as the server does once the store has loaded the farm
    rss = process.memory_info().rss
    print(f"loaded {args.jobs} jobs x {args.tasks} tasks and {args.renders} renders in {loaded:.2f} s; "
          f"RSS {rss / 2**20:.0f} MB (interpreter {base_rss / 2**20:.0f} MB)")

    total = args.jobs * args.tasks
    done = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    solving = time.process_time()
    clock.advance(0)  # the first solve: every render gets a task
    solve_cpu = time.process_time() - solving
    while done < total:
        for render in renders:
            for order in farm.take_orders(render):
                key = (order.job_id, order.block, order.task)
                farm.task_finished(render, key, order.run, exit_code=0, signal=None,
                                   time_started=0.0, time_done=0.0)
                done += 1
        solving = time.process_time()
        clock.advance(0)  # one solve for everything finished in this round
        solve_cpu += time.process_time() - solving
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak = process.memory_info().rss
    n = farm.assignments
    print(f"{n} tasks assigned, run and finished in {elapsed:.2f} s: {n / elapsed:,.0f}/s "
          f"(Tractor ~500/s, OpenCue 975/s)")
    print(f"  the solve:  {n / solve_cpu:,.0f} assignments/s per CPU second "
          f"({solve_cpu:.2f} s of CPU; target >= 50,000/s)")
    print(f"  the cycle:  {n / cpu:,.0f} tasks/s per CPU second with the finishes "
          f"({cpu:.2f} s of CPU; the finishes alone {n / (cpu - solve_cpu):,.0f}/s)")
    print(f"RSS at the end {peak / 2**20:.0f} MB   (target <= 300 MB)")
    assert all(job.done for job in farm.jobs.values())
    if args.pools:
        placed = sorted(len(p.renders) for p in farm.trees.pools.values() if p.path.startswith("/farm/"))
        print(f"{args.pools} pools of {placed[0]}..{placed[-1]} renders")


if __name__ == "__main__":
    main()
