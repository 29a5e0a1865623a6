"""Issue 16's "done when": a real Blender scene, submitted from the add-on, rendered on a real farm.

A small scene made with bpy (a few objects, a camera, a light; 64x36 pixels, Cycles on the CPU at 16
samples) is submitted by the add-on's operator from a child Python (as from Blender), rendered as 6
frames in chunks of 2 by 2 real render processes with the bpy module (no blender program here), and
then: the 6 images exist with the right frame numbers, the job lists them as its output files, the
progress went through values only Blender's sample lines give, and the web site serves a thumbnail.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, free_port, wait_until

try:
    import bpy  # noqa: F401  (the module the renders and the add-on's child use)
except ImportError:
    bpy = None

SCENE_SCRIPT = str(Path(__file__).resolve().parent.parent / "examples" / "blender_scene.py")


class BlenderFarmTests(TestCase):
    # Bounded: the frames take about a second each; starting bpy twice per task a few more.
    timeout = 240

    async def setUp(self) -> None:
        if bpy is None:
            raise SkipTest("bpy is not installed (pip install 'farmnet[blender]'; scripts/bootstrap does)")
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-blender-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        self.web_port = free_port()
        await self.farm.start_server("--web", f"tcp:{self.web_port}:interface=127.0.0.1")
        # Output (and progress) sent every 20 ms: a 64x36 frame renders in a few tenths of a second.
        config = self.base / "render.yaml"
        config.write_text("render:\n  tasks:\n    output_flush: 0.02\n")
        for name in ("r1", "r2"):
            await self.farm.start_render(name, "--config", str(config))
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(self.client.close)
        await wait_until(reactor, self.renders_online, 60, "two renders online")

    async def renders_online(self) -> bool:
        return sum(1 for r in await self.client.renders() if r["online"]) == 2

    async def watch_progress(self, job_ids: list[int], seen: list[int]) -> defer.Deferred[Any]:
        """Collect the progress values of the job's tasks from the farm's events, from now on."""
        watcher = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(watcher.close)
        after = await watcher.subscribe()

        async def collect() -> None:
            async for event in watcher.events(after):
                if event.get("kind") == "progress" and event.get("job_id") in job_ids:
                    seen.append(event["progress"])

        return defer.ensureDeferred(collect())

    async def test_six_frames_from_the_addon_on_two_renders(self) -> None:
        blend, out = self.base / "scene.blend", self.base / "frames"
        progress: list[int] = []
        job_ids: list[int] = []
        watching = await self.watch_progress(job_ids, progress)
        watching.addErrback(lambda f: None)  # ends when the watcher closes
        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable,
            [SCENE_SCRIPT, str(blend), "--frames", "1-6", "--output", f"{out}/frame_####",
             "--submit", self.farm.endpoint, "--chunk", "2", "--priority", "120", "--name", "blender e2e"],
            env={**os.environ, "FARMNET_USER": "anna"}, path=str(self.base))
        self.assertEqual(code, 0, (stdout + stderr).decode(errors="replace")[-3000:])
        found = re.search(rb"^job ([0-9]+)$", stdout, re.MULTILINE)
        self.assertIsNotNone(found, stdout)
        assert found is not None
        job_id = int(found.group(1))
        job_ids.append(job_id)

        job = await self.client.wait(job_id)
        tasks = await self.client.tasks(job_id)
        self.assertEqual((job["state"], job["tasks"], job["name"], job["priority"]),
                         ("DON", 3, "blender e2e", 120), await self.client.output(job_id, 0, 0))
        self.assertEqual({t["host"] for t in tasks}, {"r1", "r2"})  # one task at a time on each

        frames = [f"frame_{n:04d}.png" for n in range(1, 7)]
        self.assertEqual(sorted(os.listdir(out)), frames)
        self.assertTrue(all((out / f).stat().st_size > 0 for f in frames))
        listed = await self.client.output_files(job_id)
        self.assertEqual([(f["block"], f["task"], f["run"]) for f in listed],
                         [(0, 0, 1), (0, 1, 1), (0, 2, 1)])
        self.assertEqual([p for f in listed for p in f["paths"]], [str(out / f) for f in frames])

        # A chunk of 2 frames counted by frames alone reads 0, 50 or 100; Blender's "Sample N/16"
        # lines put values in between.
        self.assertTrue([p for p in progress if p not in (0, 50, 100)], progress)
        log = await self.client.output(job_id, 0, 1)
        self.assertIn(b"Sample 16/16", log)
        self.assertIn(f"Saved: '{out}/frame_0003.png'".encode(), log)

        from PIL import Image

        url = f"http://127.0.0.1:{self.web_port}/jobs/{job_id}/0/2/files/1"
        response = await treq.get(url, persistent=False)
        body = await treq.content(response)
        self.assertEqual((response.code, response.headers.getRawHeaders("content-type")),
                         (200, ["image/png"]), body[:300])
        with Image.open(io.BytesIO(body)) as thumbnail:
            self.assertEqual(thumbnail.size, (64, 36))  # no larger than its frame
        missing = await treq.get(f"http://127.0.0.1:{self.web_port}/jobs/{job_id}/0/2/files/2",
                                 persistent=False)
        self.assertEqual(missing.code, 404)
        await treq.content(missing)
        api = await treq.get(f"http://127.0.0.1:{self.web_port}/api/jobs/{job_id}/files", persistent=False)
        runs = (await treq.json_content(api))["result"]
        self.assertEqual([f["thumbnail"] for r in runs for f in r["files"]][-1],
                         f"/jobs/{job_id}/0/2/files/1")
        self.assertEqual([f["path"] for r in runs for f in r["files"]], [str(out / f) for f in frames])
        page = await treq.get(f"http://127.0.0.1:{self.web_port}/jobs/{job_id}", persistent=False)
        html = (await treq.content(page)).decode()
        self.assertIn("Latest frames", html)
        self.assertIn(f'src="/jobs/{job_id}/0/2/files/1"', html)

    async def test_blender_errors_fail_runs_that_exit_0(self) -> None:
        """A missing .blend file (the bpy runner's real error), Blender's "Error:" line and a frame saved
        empty fail their runs, the last two with exit status 0; a warning only notes."""
        empty = self.base / "empty_0001.png"
        saved = f"echo \"Fra:1 Mem:1M | Sample 1/1\"; echo \"Saved: '{empty}'\""
        job_id, _ = await self.client.submit({"name": "broken", "blocks": [
            {"name": "missing", "errors_retries": 0, "frame_first": 1, "frame_last": 1,
             "blender": {"file": str(self.base / "missing.blend")}},
            {"name": "empty", "errors_retries": 0, "parser": "blender", "command": f": > {empty}; {saved}"},
            {"name": "error line", "errors_retries": 0, "parser": "blender_cycles",
             "command": "echo 'Error: Cannot read file \"/x.blend\": No such file or directory'"},
            {"name": "warned", "errors_retries": 0, "parser": "blender",
             "command": f"echo x > {empty}; echo 'Warning: no material'; {saved}"}]})
        job = await self.client.wait(job_id)
        self.assertEqual(job["counts"], {"ERR": 3, "DON": 1})
        missing = await self.client.output(job_id, 0, 0)
        self.assertIn(b"\nError: Cannot read file \"" + str(self.base / "missing.blend").encode(), missing)
        self.assertIn(b"[farmnet: blender parser found an error: Error: Cannot read file", missing)
        self.assertIn(b'[farmnet: blender_cycles parser found an error: Error: Cannot read file "/x.blend"',
                      await self.client.output(job_id, 2, 0))
        self.assertIn(b"[farmnet: output file " + str(empty).encode() + b" is empty (0 bytes)]",
                      await self.client.output(job_id, 1, 0))
        self.assertIn(b"[farmnet: blender parser found a warning: Warning: no material]",
                      await self.client.output(job_id, 3, 0))
