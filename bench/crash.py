"""Exactly once through crashes, on real processes: kill -9 the server again and again
while renders run a job of many short tasks.

    python bench/crash.py [--renders 4] [--tasks 400] [--seconds 0.1] [--kills 5] [--every 1.5]

Every task appends "S job.block.task run" to a log when its process starts and
"F job.block.task run" when it ends. The server is killed (SIGKILL) every ``--every``
seconds and started again at once on the same port and store, ``--kills`` times.
Prints: tasks run twice (started more than once; goal 0), tasks that ran again after
finishing (goal 0), run numbers used twice (goal 0), and the tail: seconds from the last
restart to the job being done (goal: a few seconds more than the remaining tasks need;
`--kills 0` shows the job's time without crashes).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until


def crash_job(tasks: int, seconds: float, log: Path) -> dict[str, Any]:
    key = "$FARMNET_JOB_ID.$FARMNET_BLOCK.$FARMNET_TASK $FARMNET_RUN"
    command = f'echo "S {key}" >> {log}; sleep {seconds}; echo "F {key}" >> {log}'
    return {"name": "crash", "blocks": [{"name": "b", "command": command, "frame_first": 1,
                                         "frame_last": tasks, "parser": "none"}]}


def read_runs(log: Path) -> dict[str, Any]:
    """What the tasks' log says: starts per task, runs after a finish, run numbers reused."""
    starts: collections.Counter[str] = collections.Counter()
    runs: collections.Counter[tuple[str, str]] = collections.Counter()
    finished: set[str] = set()
    again: set[str] = set()
    for line in log.read_text().splitlines():
        kind, key, run = line.split()
        if kind == "S":
            starts[key] += 1
            runs[(key, run)] += 1
            if key in finished:
                again.add(key)
        else:
            finished.add(key)
    return {"tasks": len(starts), "twice": sum(1 for n in starts.values() if n > 1),
            "after_finish": len(again), "reused_runs": sum(1 for n in runs.values() if n > 1)}


async def restart(reactor: Any, farm: ProcessFarm, listen: str) -> FarmClient:
    assert farm.server is not None
    ended = farm.server.watch.ended
    farm.kill(farm.server)
    await ended
    await farm.start_server(listen=listen)
    return await connect(reactor, farm.endpoint, "bench", timeout=20)


async def job_done(client: FarmClient, job_id: int) -> bool:
    job = await client.job(job_id)
    return job["state"] in ("DON", "ERR")


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="farmnet-crash-"))
    log = base / "runs.log"
    log.touch()
    farm = ProcessFarm(reactor, base)
    try:
        await farm.start_server()
        port = farm.endpoint.rsplit(":", 1)[1]
        listen = f"tcp:{port}:interface=127.0.0.1"
        for i in range(args.renders):
            await farm.start_render(f"r{i}")
        client = await connect(reactor, farm.endpoint, "bench")
        await wait_until(reactor, lambda: _online(client, args.renders), 60, "the renders")
        job_id, _ = await client.submit(crash_job(args.tasks, args.seconds, log))
        started = time.perf_counter()
        for _ in range(args.kills):
            await task.deferLater(reactor, args.every)
            client.close()
            client = await restart(reactor, farm, listen)
        last_restart = time.perf_counter()
        left = args.tasks - sum(1 for line in log.read_text().splitlines() if line.startswith("F"))
        await wait_until(reactor, lambda: job_done(client, job_id), 600, "the job", interval=0.05)
        tail = time.perf_counter() - last_restart
        total = time.perf_counter() - started
        job = await client.job(job_id)
        client.close()
        await task.deferLater(reactor, 0.5)  # the last "F" lines
        runs = read_runs(log)
        print(f"{args.tasks} tasks of {args.seconds} s on {args.renders} renders, {args.kills} x kill -9 "
              f"of the server every {args.every} s: job {job['state']} in {total:.1f} s")
        print(f"tasks run twice: {runs['twice']} (goal 0); ran again after finishing: "
              f"{runs['after_finish']}; run numbers used twice: {runs['reused_runs']}; "
              f"tasks that ran: {runs['tasks']}")
        print(f"tail after the last restart: {tail:.1f} s, with {left} tasks left then "
              f"(their own work: {left * args.seconds / args.renders:.1f} s at least)")
    finally:
        await farm.stop()
    print(f"logs in {base}")


async def _online(client: FarmClient, count: int) -> bool:
    return sum(1 for r in await client.renders() if r["online"]) >= count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=0.1, help="each task's sleep")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--every", type=float, default=1.5, help="seconds between kills")
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
