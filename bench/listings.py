"""Listing and event-building speed of the farm model, in process (no sockets).

    python bench/listings.py [--jobs 10000] [--tasks 10] [--changes 200000] [--repeat 5]

Prints, best of ``--repeat``, in CPU time of this process (a busy machine inflates wall time,
not this as much; a full collection runs before each repeat):
  (a) list_jobs of every job as the ListJobs answer's JSON bytes (built, unstructured, encoded),
  (b) the same for list_renders with 1,000 renders,
  (c) show_job of a 100-block job, 1,000 times,
  (d) the event log's cost per task state change (the monitors' record of one change).
Run the old code the same way (PYTHONPATH=/path/to/old/worktree) to compare.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from twisted.internet.task import Clock

from farmnet.model import events as ev
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.protocol import commands as c
from farmnet.server.monitors import EventLog


def best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    clock = Clock()
    farm = Farm(clock)
    for i in range(args.jobs):
        spec, _ = parse_job({"job": {"name": f"job {i}", "blocks": [
            {"name": "render", "command": "true @#@", "frame_first": 1, "frame_last": args.tasks}]}})
        farm.submit(spec, f"user{i % 10}")
    spec, _ = parse_job({"job": {"name": "big", "blocks": [
        {"name": f"b{n}", "command": "true @#@", "frame_first": 1, "frame_last": 10} for n in range(100)]}})
    big = farm.submit(spec, "user0")
    for n in range(1000):
        farm.register_render(f"r{n:04d}", capacity=1000, services=("generic",), platform="linux", cpus=8)
    clock.advance(0)

    def list_jobs() -> None:
        c.ListJobs.makeResponse({"jobs": farm.list_jobs()}, None)

    def list_renders() -> None:
        c.ListRenders.makeResponse({"renders": farm.list_renders()}, None)

    def show_job() -> None:
        for _ in range(1000):
            c.ShowJob.makeResponse({"job": farm.show_job(big.id)}, None)

    jobs = len(farm.jobs)
    t = best(args.repeat, list_jobs)
    print(f"(a) list_jobs of {jobs} jobs to wire JSON: {t * 1000:.1f} ms ({t / jobs * 1e6:.2f} us/job)")
    t = best(args.repeat, list_renders)
    print(f"(b) list_renders of {len(farm.renders)} renders to wire JSON: {t * 1000:.1f} ms")
    t = best(args.repeat, show_job)
    print(f"(c) show_job of a {len(big.blocks)}-block job to wire JSON: {t:.3f} ms each")

    # (d) the event log alone on a bus: one TaskStateChanged per change.
    log = EventLog(keep=100_000)
    bare = Farm(Clock())
    log.follow(bare)
    task = big.blocks[0].tasks[0]
    change = ev.TaskStateChanged(task, TaskState.RDY)
    publish = bare.bus.publish

    def changes() -> None:
        for _ in range(args.changes):
            publish(change)

    t = best(args.repeat, changes)
    print(f"(d) event log per task state change: {t / args.changes * 1e6:.2f} us")


if __name__ == "__main__":
    main()
