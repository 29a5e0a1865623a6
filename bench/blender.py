"""The farm's overhead on real Blender renders: 24 frames through farmnet against bpy directly.

    python bench/blender.py [--frames 24] [--chunks 24,6] [--size 320x180] [--samples 8] [--repeat 2]

Makes a small Cycles scene with bpy (the end-to-end test's objects, camera and light), then renders
its frames on this host (a) directly, ``python -m farmnet.render.bpyrunner -b scene.blend -s 1 -e N
-a`` -- one bpy process, as an artist's own machine would, in a session of its own as a farm task
is (with the kernel's autogroup scheduling, each session gets its share of a busy CPU); (b) through
a real farm of one server and one render on the same host, submitted as a Blender job with each
``--chunks`` value (frames per task; each task starts its own bpy, as a render host does), timed
from the submit to the job DON.
Prints each time and the farm's overhead in percent of (a), how much of the farm's time no task ran
(the farm's own part, whatever the machine's load), and what starting bpy and reading the file costs
(each task pays it once: the rest of the overhead of small chunks).  Goal: <= 5 % for 24 frames.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.utils import getProcessOutputAndValue

from farmnet.client import connect
from farmnet.client.blender import blender_job
from farmnet.testing import ProcessFarm, wait_until

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
SCENE = Path(__file__).resolve().parent.parent / "examples" / "blender_scene.py"

MAKE = """
import os, sys
sys.path.insert(0, {examples!r})
import bpy
from blender_scene import make_scene
make_scene({blend!r}, "//frames/f_####", 1, {frames})
s = bpy.context.scene
s.render.resolution_x, s.render.resolution_y = {width}, {height}
s.cycles.samples = {samples}
bpy.ops.wm.save_mainfile()
sys.stdout.flush()
os._exit(0)
"""


async def direct(reactor: Any, blend: Path, frames: int, out: Path) -> float:
    start = time.perf_counter()
    stdout, stderr, code = await getProcessOutputAndValue(
        SETSID, ["-w", sys.executable, "-m", "farmnet.render.bpyrunner", "-b", str(blend), "-o",
                   f"{out}/f_####", "-s", "1", "-e", str(frames), "-a"], env=dict(os.environ))
    elapsed = time.perf_counter() - start
    if code != 0 or len(list(out.iterdir())) != frames:
        raise SystemExit(f"direct render failed ({code}):\n{(stdout + stderr).decode()[-2000:]}")
    return elapsed


async def bpy_start(reactor: Any, blend: Path) -> float:
    """Seconds to start bpy and read the file without rendering: what each task pays once."""
    start = time.perf_counter()
    _, err, code = await getProcessOutputAndValue(
        SETSID, ["-w", sys.executable, "-m", "farmnet.render.bpyrunner", "-b", str(blend)],
        env=dict(os.environ))
    if code != 0:
        raise SystemExit(f"bpy start failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - start


async def on_farm(reactor: Any, client: Any, blend: Path, frames: int, chunk: int,
                  out: Path) -> tuple[float, float]:
    """Seconds from the submit to the job DON, and of those the seconds no task ran (the farm's own:
    the submit, each start order, each finish report, the client seeing DON)."""
    start = time.perf_counter()
    job_id, _ = await client.submit(blender_job(str(blend), 1, frames, chunk=chunk, output=f"{out}/f_####"))
    job = await client.wait(job_id)
    elapsed = time.perf_counter() - start
    if job["state"] != "DON" or len(list(out.iterdir())) != frames:
        raise SystemExit(f"farm render failed: {job['state']} {job['counts']}")
    running = sum(t["time_done"] - t["time_started"] for t in await client.tasks(job_id))
    return elapsed, elapsed - running


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-blender-"))
    blend = base / "scene.blend"
    width, height = (int(n) for n in args.size.split("x"))
    _, err, code = await getProcessOutputAndValue(
        sys.executable, ["-c", MAKE.format(examples=str(SCENE.parent), blend=str(blend), frames=args.frames,
                                           width=width, height=height, samples=args.samples)],
        env=dict(os.environ))
    if code != 0:
        raise SystemExit(f"making the scene failed:\n{err.decode()[-2000:]}")
    farm = ProcessFarm(reactor, base)
    try:
        await farm.start_server()
        await farm.start_render("bench")
        client = await connect(reactor, farm.endpoint, "bench")

        async def online() -> bool:
            return any(r["online"] for r in await client.renders())

        await wait_until(reactor, online, 60, "the render")
        starts = [await bpy_start(reactor, blend) for _ in range(3)]
        print(f"bpy start and file read (a task's fixed cost): {statistics.median(starts):.2f} s", flush=True)
        times: dict[str, list[float]] = {"direct": []}
        gaps: dict[str, list[float]] = {}
        for n in range(args.repeat):
            out = base / f"direct{n}"
            out.mkdir()
            times["direct"].append(await direct(reactor, blend, args.frames, out))
            print(f"direct bpy, {args.frames} frames: {times['direct'][-1]:.2f} s", flush=True)
            for chunk in args.chunks:
                out = base / f"farm{n}-{chunk}"
                out.mkdir()
                elapsed, idle = await on_farm(reactor, client, blend, args.frames, chunk, out)
                times.setdefault(f"chunk {chunk}", []).append(elapsed)
                gaps.setdefault(f"chunk {chunk}", []).append(idle)
                print(f"farm, {chunk} frames per task: {elapsed:.2f} s, no task running {idle:.2f} s",
                      flush=True)
        await client.aclose()
    finally:
        await farm.stop()
    reference = statistics.median(times["direct"])
    print(f"\n{args.frames} frames {args.size} at {args.samples} samples (median of {args.repeat}):")
    print(f"  direct bpy: {reference:.2f} s")
    for name, values in times.items():
        if name != "direct":
            median = statistics.median(values)
            print(f"  farm, {name}: {median:.2f} s, overhead {100 * (median - reference) / reference:+.1f} %;"
                  f" no task running {statistics.median(gaps[name]):.2f} s")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--chunks", default="24,6", help="frames per task to try, comma-separated")
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    args.chunks = [int(c) for c in args.chunks.split(",")]
    return args


if __name__ == "__main__":
    task.react(main, (parse(),))
