"""Blender's pieces, one at a time: the parser on real bpy output (tests/data/blender/, captured from
``python -m farmnet.render.bpyrunner`` with bpy 4.2), the service's choice of program, the job type,
the runner's frame lists, the server's output files and thumbnails."""

from __future__ import annotations

import io
import os
import shlex
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from farmnet.client.blender import blender_job
from farmnet.config import RenderBlenderConfig, RenderConfig
from farmnet.errors import JobSpecError
from farmnet.model.spec import parse_job
from farmnet.render.blender import BlenderService, blender_program
from farmnet.render.bpyrunner import RunnerError, frames_of
from farmnet.render.parsers import parser_by_name, parser_errors, parser_files
from farmnet.render.service import missing_or_empty
from farmnet.server.outputs import OutputStore
from farmnet.server.previews import PreviewError, Previews

DATA = Path(__file__).with_name("data") / "blender"


def feed_lines(parser: object, data: bytes) -> list[int]:
    """Feed ``data`` in line-sized chunks, as a render reads a pipe; the progress values reported."""
    seen = []
    for line in data.splitlines(keepends=True):
        value = parser.feed(line)  # type: ignore[attr-defined]
        if value is not None:
            seen.append(value)
    return seen


def order(start: int, end: int, parser: str = "blender") -> dict[str, object]:
    return {"job_id": 1, "block": 0, "task": 0, "run": 1, "parser": parser, "frame_start": start,
            "frame_end": end}


class ParserOnRealOutputTests(unittest.TestCase):
    def test_cycles_two_frames(self) -> None:
        parser = parser_by_name("blender_cycles", order=order(1, 2))
        seen = feed_lines(parser, (DATA / "cycles-2-frames.txt").read_bytes())
        # Frame 1's "Sample 0/4" is 0 %, its "Sample 1/4" 12 %, its "Sample 4/4" 50 % (as its save);
        # frame 2's "Sample 1/4" 62 %, its last sample and save 100 %.
        self.assertEqual(seen, [0, 12, 50, 62, 100])
        self.assertEqual(parser_files(parser),
                         ["/tmp/s4b-exp/out/f_0001.png", "/tmp/s4b-exp/out/f_0002.png"])
        self.assertEqual(parser_errors(parser), [])
        self.assertEqual(parser.name, "blender_cycles")

    def test_one_frame(self) -> None:
        parser = parser_by_name("blender", order=order(5, 5))
        seen = feed_lines(parser, (DATA / "cycles-frame-5.txt").read_bytes())
        self.assertEqual((seen[-1], parser_files(parser)), (100, ["/tmp/s4b-exp/out/f_0005.png"]))
        self.assertIn(25, seen)  # "Sample 1/4"

    def test_missing_file_and_python_error_are_errors(self) -> None:
        parser = parser_by_name("blender", order=order(1, 2))
        feed_lines(parser, (DATA / "missing-file.txt").read_bytes())
        self.assertEqual(parser_errors(parser),
                         ['Error: Cannot read file "/tmp/s4b-exp/missing.blend": No such file or directory'])
        parser = parser_by_name("blender", order=order(1, 250))
        feed_lines(parser, (DATA / "python-error.txt").read_bytes())
        self.assertEqual(parser_errors(parser), ["Traceback (most recent call last):",
                                                 "Error: Python script <string> failed: KeyError"])
        self.assertEqual(parser_files(parser), [])

    def test_warnings_kept_apart(self) -> None:
        parser = parser_by_name("blender_render", order=order(1, 1))
        parser.feed(b"Warning: 2 objects have no material\nWarning: Unable to open '/tex/wood.png'\n")
        self.assertEqual(parser.warnings, ["Warning: 2 objects have no material"])  # type: ignore[attr-defined]
        self.assertEqual(parser_errors(parser), ["Warning: Unable to open '/tex/wood.png'"])

    def test_saved_without_quotes_and_repeats(self) -> None:
        parser = parser_by_name("blender", order=order(1, 2))
        parser.feed(b"Fra:1 Mem:1M | Sample 2/2\nSaved: /out/a 0001.exr\nSaved: /out/a 0001.exr\n")
        self.assertEqual(parser_files(parser), ["/out/a 0001.exr"])


class MissingOrEmptyTests(unittest.TestCase):
    def test_zero_byte_and_missing_files(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        (directory / "ok.png").write_bytes(b"x")
        (directory / "empty.png").write_bytes(b"")
        bad = missing_or_empty(["ok.png", str(directory / "empty.png"), "gone.png"], str(directory))
        self.assertEqual(len(bad), 2)
        self.assertIn("empty.png is empty (0 bytes)", bad[0])
        self.assertTrue(bad[1].startswith("gone.png is missing"), bad[1])


class ServiceProgramTests(unittest.TestCase):
    def command(self, executable: str, which: dict[str, str], text: str = "blender -b s.blend -a") -> str:
        config = RenderConfig(name="r1", state_dir="/x", blender=RenderBlenderConfig(executable=executable))
        return BlenderService(threads=2, which=which.get).command({"command": text}, config)

    def test_configured_program(self) -> None:
        self.assertEqual(self.command("/opt/blender 4.2/blender", {}),
                         "'/opt/blender 4.2/blender' -b s.blend -t 2 -a")

    def test_blender_on_path(self) -> None:
        self.assertEqual(self.command("", {"blender": "/usr/bin/blender"}), "blender -b s.blend -t 2 -a")

    def test_bpy_runner_without_a_program(self) -> None:
        words = shlex.split(self.command("", {}))
        self.assertEqual(words, [sys.executable, "-m", "farmnet.render.bpyrunner", "-b", "s.blend", "-t", "2",
                                 "-a"])
        self.assertEqual(blender_program("", {}.get),
                         f"{shlex.quote(sys.executable)} -m farmnet.render.bpyrunner")

    def test_explicit_path_kept(self) -> None:
        self.assertEqual(self.command("", {}, "/opt/b/blender x.blend -a"),
                         "/opt/b/blender -b x.blend -t 2 -a")


class JobTypeTests(unittest.TestCase):
    def test_client_job_parses_to_blender_command(self) -> None:
        spec, warnings = parse_job(blender_job("/p/shot 1.blend", 1, 6, chunk=2, output="/r/f_####",
                                               engine="CYCLES", samples=16, scene="Scene", camera="Cam",
                                               view_layer="Fg", priority=120))
        block = spec.blocks[0]
        self.assertEqual((warnings, spec.name, spec.priority, block.tasks_count),
                         ([], "shot 1.blend", 120, 3))
        self.assertEqual((block.service, block.parser), ("blender", "blender"))
        words = shlex.split(block.task_command(1))
        self.assertEqual(words[:7], ["blender", "-b", "/p/shot 1.blend", "-S", "Scene", "-E", "CYCLES"])
        self.assertEqual(words[-7:], ["-o", "/r/f_####", "-s", "3", "-e", "4", "-a"])
        expression = words[words.index("--python-expr") + 1]
        self.assertIn('s = bpy.data.scenes["Scene"]', expression)
        self.assertIn("s.cycles.samples = 16", expression)
        self.assertIn('s.camera = bpy.data.objects["Cam"]', expression)
        compile(expression, "<expr>", "exec")  # valid Python

    def test_bad_blender_sections(self) -> None:
        with self.assertRaises(JobSpecError) as caught:
            parse_job({"name": "x", "blocks": [
                {"name": "a", "blender": {"fil": "/x.blend", "samples": -2}},
                {"name": "b", "command": "echo", "blender": {"file": "/x.blend"}},
                {"name": "c", "blender": "/x.blend"},
                {"name": "d", "blender": {"file": "/x.blend", "camera": "a\nb"}}]})
        message = str(caught.exception)
        for part in ("job.blocks[0].blender.fil: unknown key", "job.blocks[0].blender.samples: expected",
                     "job.blocks[0].blender.file: a Blender block needs",
                     "job.blocks[1].command: a Blender block", "job.blocks[2].blender: expected a mapping",
                     "job.blocks[3].blender.camera: must be one line"):
            self.assertIn(part, message)


class RunnerFrameTests(unittest.TestCase):
    def test_frames_of(self) -> None:
        self.assertEqual(frames_of("5", 1, 10), [5])
        self.assertEqual(frames_of("1,3..5", 1, 10), [1, 3, 4, 5])
        self.assertEqual(frames_of("+1..-1", 1, 10), [2, 3, 4, 5, 6, 7, 8, 9])
        with self.assertRaises(RunnerError):
            frames_of("x", 1, 10)


class OutputFilesTests(unittest.TestCase):
    def test_latest_run_with_files_kept_across_a_restart(self) -> None:
        root = self.mktemp()
        outputs = OutputStore(root)
        outputs.write_files((3, 0, 1), 1, ["/r/f_0003.png"])
        outputs.write_files((3, 0, 0), 2, ["/r/f_0001.png", "/r/f_0002.png"])
        outputs.write_files((3, 0, 0), 1, ["/r/old.png"])  # an older run's late report
        outputs.write_files((3, 0, 2), 1, [])
        expected = [(0, 0, 2, ("/r/f_0001.png", "/r/f_0002.png")), (0, 1, 1, ("/r/f_0003.png",))]
        got = [(f.block, f.task, f.run, f.paths) for f in outputs.job_files(3)]
        self.assertEqual(got, expected)
        self.assertEqual([outputs.task_files((3, 0, n)) for n in range(3)],
                         [*outputs.job_files(3), None])
        again = OutputStore(root)  # a restarted server reads them from disk
        self.assertEqual([(f.block, f.task, f.run, f.paths) for f in again.job_files(3)], expected)
        again.delete_job(3)
        self.assertEqual(again.job_files(3), [])


class PreviewTests(unittest.TestCase):
    async def test_thumbnail_made_once_and_cached(self) -> None:
        from PIL import Image

        directory = Path(self.mktemp())
        directory.mkdir()
        source = directory / "f_0001.png"
        Image.new("RGB", (640, 360), (200, 30, 30)).save(source)
        previews = Previews(reactor, directory / "previews", size=128)
        first, second = await previews.thumbnail(7, str(source)), await previews.thumbnail(7, str(source))
        self.assertEqual(first, second)
        with Image.open(io.BytesIO(first)) as image:
            self.assertEqual((image.size, image.getpixel((5, 5))), ((128, 72), (200, 30, 30)))
        self.assertEqual(len(list((directory / "previews" / "7").iterdir())), 1)
        (directory / "f_0002.png").write_bytes(b"not an image")
        for bad in ("f_0002.png", "gone.png"):
            with self.assertRaises(PreviewError):
                await previews.thumbnail(7, str(directory / bad))
        previews.delete_job(7)
        self.assertFalse(os.path.exists(directory / "previews" / "7"))
