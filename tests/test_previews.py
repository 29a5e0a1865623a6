"""Which files a job's tasks get thumbnails of: what their runs reported (Blender's parser), else
what their block names in ``files`` once done (:func:`farmnet.server.outputs.job_output_files`)."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from farmnet.config import SchedulingConfig
from farmnet.model.farm import Farm
from farmnet.server.outputs import OutputStore, job_output_files
from farmnet.web.testing import FarmPlayer, job_doc


class JobOutputFilesTests(TestCase):
    async def setUp(self) -> None:
        self.farm = Farm(reactor, SchedulingConfig(errors_retries=0))
        self.addCleanup(self.farm.stop)
        self.player = FarmPlayer(reactor, self.farm)
        self.outputs = OutputStore(self.mktemp())

    def files(self, job_id: int, most: int | None = None) -> list[tuple[int, int, int, tuple[str, ...]]]:
        job = self.farm.job(job_id)
        return [(f.block, f.task, f.run, f.paths)
                for f in job_output_files(job, self.outputs.job_files(job_id), most=most)]

    async def test_done_tasks_get_their_blocks_files_unless_their_run_reported_some(self) -> None:
        render = await self.player.render("r1", capacity=1000)
        block = {"frames_per_task": 2, "working_directory": "/proj/comp",
                 "files": ["out/comp.@####@.png", "/abs/matte.@#@.tif"]}
        job = await self.player.submit(job_doc("comp", frames=6, block=block), "anna")
        self.assertEqual(self.files(job.id), [])  # nothing done yet
        await self.player.play(render, count=2, fail={1})
        self.outputs.write_files((job.id, 0, 0), 1, ["/render/reported_0001.exr"])
        # Task 0 reported its files (they win); task 1 failed (none); task 2 has not run.
        self.assertEqual(self.files(job.id), [(0, 0, 1, ("/render/reported_0001.exr",))])
        await self.player.play(render)
        self.assertEqual(self.files(job.id), [
            (0, 0, 1, ("/render/reported_0001.exr",)),
            (0, 2, 1, ("/proj/comp/out/comp.0005.png", "/proj/comp/out/comp.0006.png",
                       "/abs/matte.5.tif", "/abs/matte.6.tif"))])
        # The job page's latest frames: the last tasks that hold at least ``most`` files.
        self.assertEqual([f[1] for f in self.files(job.id, most=4)], [2])
        self.assertEqual([f[1] for f in self.files(job.id, most=5)], [0, 2])

    async def test_relative_files_without_a_working_directory_mean_nothing_here(self) -> None:
        render = await self.player.render("r1")
        block = {"working_directory": "", "files": ["out.@#@.png", "/abs/out.@#@.png"]}
        job = await self.player.submit(job_doc("w", frames=1, block=block), "anna")
        await self.player.play(render)
        self.assertEqual(self.files(job.id), [(0, 0, 1, ("/abs/out.1.png",))])

    async def test_skipthumbnails_blocks_have_none(self) -> None:
        render = await self.player.render("r1")
        block = {"working_directory": "/w", "files": ["out.@#@.png"], "flags": 1 | 1 << 5}
        job = await self.player.submit(job_doc("w", frames=1, block=block), "anna")
        await self.player.play(render)
        self.outputs.write_files((job.id, 0, 0), 1, ["/w/reported.png"])
        self.assertEqual(self.files(job.id), [])
