"""Hostile and ordinary masks: the longest check on the reactor, and solving with masks.

    python bench/masks.py [--length 22] [--jobs 200] [--renders 500]

Attack: a job whose mask makes a backtracking engine explode (``(a+)+$`` against a render
named ``aaaa…a!``, ``(.|.)*!`` against an ordinary name, the same as a job's
``depend_mask`` against job names), in the farm model on a `task.Clock`; each scenario
times the solve that a render's registration triggers and an ``explain`` of the job, and
prints the longest. ``--length`` is the hostile name's length: each extra character
doubles a backtracking engine's time (22 keeps the old code's run to seconds).
Ordinary: jobs with everyday hosts masks on many renders, every task finishing at once;
prints assignments per second (the cost of mask checks in solving).

Run the old code with PYTHONPATH=/path/to/old/checkout to compare.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock

from farmnet import errors
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job


def job(name: str, **keys: Any) -> dict[str, Any]:
    block = {"name": "render", "command": "render -f @####@", "frame_first": 1, "frame_last": 10}
    block.update(keys.pop("block", {}))
    return {"name": name, "blocks": [block], **keys}


def timed(f: Callable[[], Any]) -> float:
    started = time.perf_counter()
    f()
    return time.perf_counter() - started


def attack(name: str, document: dict[str, Any], render_name: str, other_job: str | None) -> float | None:
    clock = Clock()
    farm = Farm(clock)
    if other_job is not None:
        farm.submit(parse_job(job(other_job))[0], "eve")
    try:
        spec, _ = parse_job(document)
    except errors.JobSpecError as e:
        print(f"  {name:44} refused at submit: {e}")
        return None
    longest = timed(lambda: (farm.submit(spec, "mallory"), clock.advance(0)))
    longest = max(longest, timed(lambda: (farm.register_render(render_name, capacity=1100),
                                          clock.advance(0))))
    job_id = max(farm.jobs)
    longest = max(longest, timed(lambda: farm.explain(job_id)))
    print(f"  {name:44} longest check {longest * 1000:10.2f} ms")
    return longest


def ordinary(jobs: int, renders: int) -> None:
    clock = Clock()
    farm = Farm(clock)
    for i in range(jobs):
        masks = {"hosts_mask": f"render0[{i % 5}-9].*", "block": {"hosts_mask_exclude": ".*-gpu|render09.."}}
        farm.submit(parse_job(job(f"shot{i:04d}", **masks))[0], f"user{i % 10}")
    nodes = [farm.register_render(f"render{i:04d}", capacity=1100) for i in range(renders)]
    started = time.perf_counter()
    assigned = 0
    while True:
        clock.advance(0)
        finished = 0
        for render in nodes:
            for order in farm.take_orders(render):
                if order.order == "start":
                    key = (order.job_id, order.block, order.task)
                    farm.task_finished(render, key, order.run, exit_code=0, signal=None,
                                       time_started=1.0, time_done=2.0)
                    finished += 1
        if not finished:
            break
        assigned += finished
    seconds = time.perf_counter() - started
    print(f"ordinary masks: {jobs} jobs x 10 tasks on {renders} renders: {assigned} assignments in "
          f"{seconds:.2f} s, {assigned / seconds:,.0f}/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=22)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--renders", type=int, default=500)
    args = parser.parse_args()
    hostile = "a" * args.length + "!"
    ordinary_name = "render-farm-node-0042-x"  # 23 characters, as in the finding
    print(f"attack (hostile name of {len(hostile)} characters):")
    results = [
        attack("hosts_mask (a+)+$ vs aaaa…a!", job("j", hosts_mask="(a+)+$"), hostile, None),
        attack("block hosts_mask_exclude (.|.)*! vs 23 chars",
               job("j", block={"hosts_mask_exclude": "(.|.)*!"}), ordinary_name, None),
        attack("depend_mask_global (a+)+$ vs job aaaa…a!", job("j", depend_mask_global="(a+)+$"), "r1",
               hostile),
        attack("hosts_mask (a)\\1 (backreference)", job("j", hosts_mask="(a)\\1"), "aa", None),
    ]
    longest = max((r for r in results if r is not None), default=0.0)
    print(f"longest check: {longest * 1000:.2f} ms")
    ordinary(args.jobs, args.renders)


if __name__ == "__main__":
    main()
