"""What a job's previews cost the reactor: finding a job's output files for its page.

The job page's "Latest frames" and the thumbnail requests find a task's output files in the
reactor (the files themselves are read in threads): the reported ones, else the block's ``files``
of done tasks (farmnet.server.outputs.job_output_files). Timed on one job of ``--tasks`` tasks:
none done, all done with block files (the job page asks for the last 6 files), and the whole list
(``/api/jobs/ID/files``); and a job whose blocks name no files::

    .venv/bin/python bench/previews.py --tasks 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor

from farmnet.config import SchedulingConfig
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.outputs import OutputStore, job_output_files


def best_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    farm = Farm(reactor, SchedulingConfig(max_tasks_per_job=max(args.tasks, 100_000)))
    spec, _ = parse_job({"job": {"name": "comp", "blocks": [
        {"name": "comp", "command": "nuke -F @#@ comp.nk", "frame_first": 1, "frame_last": args.tasks,
         "working_directory": "/proj/show/shot", "files": ["out/comp.@####@.exr", "out/comp.@####@.jpg"]}]}})
    job = farm.submit(spec, "anna")
    outputs = OutputStore(tempfile.mkdtemp(prefix="bench-previews-"))
    reported = outputs.job_files(job.id)
    plain, _ = parse_job({"job": {"name": "plain", "blocks": [
        {"name": "b", "command": "true @#@", "frame_first": 1, "frame_last": args.tasks}]}})
    plain_job = farm.submit(plain, "anna")
    no_files = best_ms(lambda: job_output_files(plain_job, [], most=6), args.repeat)
    none_done = best_ms(lambda: job_output_files(job, reported, most=6), args.repeat)
    for task in job.blocks[0].tasks:  # the bench plays the farm: every task done
        task.state, task.starts_count = TaskState.DON, 1
    latest = best_ms(lambda: job_output_files(job, reported, most=6), args.repeat)
    whole = best_ms(lambda: job_output_files(job, reported), args.repeat)
    print(f"{args.tasks} tasks: latest frames, no block files {no_files:.3f} ms; "
          f"none done {none_done:.2f} ms; all done {latest:.3f} ms; "
          f"whole list {whole:.1f} ms ({2 * args.tasks} files)")


if __name__ == "__main__":
    main()
