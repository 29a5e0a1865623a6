"""The CGRU-named parsers on their programs' output (tests/data/parsers/*.txt, written as each program
prints): progress, frames, and the errors, warnings and bad results Afanasy's parsers find."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from farmnet.model.catalog import PARSERS, SERVICE_PARSERS
from farmnet.render.cgru import CGRU_PARSERS, LineParser, frames_of_order
from farmnet.render.parsers import (
    GenericParser,
    builtin_parsers,
    parser_bad_results,
    parser_by_name,
    parser_end,
    parser_errors,
    parser_fatal,
    parser_finished,
    parser_frame,
    parser_warnings,
)

DATA = Path(__file__).parent / "data" / "parsers"


def run(name: str, sample: str, frames: int = 1, chunk: int = 0) -> tuple[Any, list[int]]:
    """Feed a sample to a new parser (line by line as a program prints, or in ``chunk``-byte pieces);
    the parser and every progress it reported."""
    parser = parser_by_name(name, order={"frame_start": 1, "frame_end": frames})
    data = (DATA / sample).read_bytes()
    if chunk:
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    else:
        pieces = re.findall(rb"[^\r\n]*(?:\r\n|[\r\n]|$)", data)
    seen = [p for p in (parser.feed(piece) for piece in pieces) if p is not None]
    parser_end(parser)
    return parser, seen


class SampleTests(unittest.SynchronousTestCase):
    def check(self, name: str, sample: str, frames: int, progress: list[int], *,
              errors: int = 0, warnings: int = 0, bad: int = 0, frame: tuple[int, int] | None = None) -> Any:
        parser, seen = run(name, sample, frames)
        self.assertEqual(seen, progress, f"{name} on {sample}")
        self.assertEqual((len(parser_errors(parser)), len(parser_warnings(parser)),
                          len(parser_bad_results(parser))), (errors, warnings, bad), f"{name} on {sample}")
        if frame is not None:
            self.assertEqual(parser_frame(parser), frame)
        # The same output cut into 7-byte chunks ends the same: only whole lines count.
        again, _ = run(name, sample, frames, chunk=7)
        self.assertEqual((again.progress, parser_errors(again), parser_warnings(again)),
                         (parser.progress, parser_errors(parser), parser_warnings(parser)))
        return parser

    def test_nuke(self) -> None:
        # "Writing FILE took N seconds" then "Frame N (i of n)": frames done of the command's range.
        self.check("nuke", "nuke.txt", 4, [0, 25, 50, 75, 100], frame=(4, 0))

    def test_nuke_errors(self) -> None:
        parser = self.check("nuke", "nuke_error.txt", 4, [0, 25], errors=1)
        self.assertIn("Node execution error: /plates/sh020_plate.0102.exr", parser_errors(parser)[0])
        self.check("nuke", "nuke_license.txt", 1, [], errors=1)

    def test_hbatch_mantra(self) -> None:
        # Two frames: mantra's ALF_PROGRESS is the frame's part, hbatch's "RopNode.render: frame"
        # starts the next one; mantra's texture warning flags the task.
        parser = self.check("hbatch_mantra", "hbatch_mantra.txt", 2, [0, 12, 25, 37, 50, 70],
                            warnings=1, frame=(1, 40))
        self.assertIn("Unable to load texture", parser_warnings(parser)[0])

    def test_mantra_licence(self) -> None:
        self.check("mantra", "mantra_license.txt", 1, [], errors=2)
        self.check("hbatch", "mantra_license.txt", 1, [], errors=2)

    def test_karma(self) -> None:
        self.check("karma", "karma.txt", 1, [10, 55, 100], warnings=1)
        self.check("hbatch_karma", "karma.txt", 1, [10, 55, 100], warnings=1)

    def test_arnold(self) -> None:
        self.check("arnold", "arnold.txt", 1, [0, 15, 45, 80, 100])
        self.check("arnold", "arnold_watermark.txt", 1, [50], warnings=1)
        self.check("arnold", "arnold_missing_ass.txt", 1, [], errors=1)
        self.check("houdinitoarnold", "arnold_missing_ass.txt", 1, [], errors=1)

    def test_redshift(self) -> None:
        # Blocks 1, 3, 2 of 4 (two GPUs): the highest is the frame's part; "Frame ... done" ends it.
        self.check("redshift", "redshift.txt", 2, [12, 37, 50, 75], frame=(1, 50))
        self.check("redshift", "redshift_license.txt", 1, [], errors=1)
        self.check("maya_redshift", "redshift_license.txt", 1, [], errors=1)
        self.check("hbatch_redshift", "mantra_license.txt", 1, [], errors=2)

    def test_maya(self) -> None:
        self.check("maya_arnold", "maya_arnold.txt", 2, [15, 50, 75], frame=(1, 50))
        self.check("maya", "maya_error.txt", 1, [], errors=1)
        self.check("maya_arnold", "maya_error.txt", 1, [], errors=1)

    def test_ffmpeg(self) -> None:
        # time= over the input's Duration (4 s), the \r-rewritten status line read each time.
        self.check("ffmpeg", "ffmpeg.txt", 1, [25, 50, 75])
        self.check("ffmpeg", "ffmpeg_missing.txt", 1, [], errors=1)

    def test_renderers_with_a_task_percentage(self) -> None:
        self.check("vray", "vray.txt", 1, [12, 48, 90])
        self.check("prman", "prman.txt", 1, [0, 12, 37, 64, 91, 100])
        self.check("rvio", "rvio.txt", 1, [1, 10, 62])

    def test_three_d_and_compositing(self) -> None:
        self.check("c4d", "c4d.txt", 2, [0, 12, 37, 50, 75])
        self.check("lightwave", "lightwave.txt", 2, [3, 26, 45, 50, 62])
        self.check("afterfx", "afterfx.txt", 3, [33, 66, 100])
        self.check("fusion", "fusion.txt", 4, [25, 50, 75])

    def test_afterfx_flags(self) -> None:
        # An error, and nothing rendered: both, as Afanasy's afterfx parser reads it.
        self.check("afterfx", "afterfx_error.txt", 1, [], errors=1, bad=1)
        # No PROGRESS line at all: aerender rendered nothing, a bad result once the output is over.
        self.check("afterfx", "afterfx_nothing.txt", 1, [], bad=1)

    def test_fusion_finished(self) -> None:
        parser = self.check("fusion", "fusion_done.txt", 2, [50, 100])
        self.assertTrue(parser_finished(parser))
        self.assertFalse(parser_finished(run("fusion", "fusion.txt", 4)[0]))

    def test_transfers(self) -> None:
        self.check("rsync", "rsync.txt", 1, [0, 38, 100])
        self.check("curl", "curl.txt", 1, [0, 12, 57])
        self.check("awscli", "awscli.txt", 1, [12, 25, 75])

    def test_generic_markers(self) -> None:
        parser, seen = run("generic", "generic_markers.txt")
        self.assertEqual((seen, parser_warnings(parser)),
                         ([30, 60], ["[ PARSER WARNING ] frame range fixed: frame_end < frame_start"]))
        generic = GenericParser()
        generic.feed(b"[ PARSER ERROR ] no licence\n[ PARSER BAD RESULT ] empty\n")
        generic.feed(b"[ PARSER FINISHED SUCCESS ]\n")
        self.assertEqual((parser_errors(generic), parser_bad_results(generic), parser_finished(generic)),
                         (["[ PARSER ERROR ] no licence"], ["[ PARSER BAD RESULT ] empty"], True))
        self.assertFalse(parser_fatal(generic))
        generic.feed(b"[ parser fatal error ] scene is corrupt\n")  # an error that is not retried
        self.assertEqual((parser_fatal(generic), parser_errors(generic)[-1]),
                         (True, "[ parser fatal error ] scene is corrupt"))


class RuleTests(unittest.SynchronousTestCase):
    def test_flags_are_case_insensitive_substrings(self) -> None:
        parser = parser_by_name("nuke")
        parser.feed(b"fatal: SEGMENTATION FAULT in Write2\n")
        self.assertEqual(parser_errors(parser), ["fatal: SEGMENTATION FAULT in Write2"])

    def test_progress_bounded_and_frames_clamped(self) -> None:
        parser = parser_by_name("maya_arnold", order={"frame_start": 1, "frame_end": 2})
        for _ in range(5):  # more frames end than the task has
            parser.feed(b"|   100% done - 6 rays/pixel\n")
        self.assertEqual((parser.progress, parser_frame(parser)), (100, (2, 0)))

    def test_frames_of_order(self) -> None:
        self.assertEqual(frames_of_order({"frame_start": 1, "frame_end": 20, "frames_inc": 3}), 7)
        self.assertEqual(frames_of_order({"frame_start": 5, "frame_end": 5}), 1)
        self.assertEqual(frames_of_order({"frame_start": 0, "frame_end": 0}), 1)
        self.assertEqual(frames_of_order({}), 1)

    def test_long_lines_and_kept_lines_bounded(self) -> None:
        parser = parser_by_name("nuke")
        parser.feed(b"x" * 100_000 + b" Segmentation fault\n")  # over-long: skipped, not kept whole
        parser.feed(b"Segmentation fault " + b"y" * 1000 + b"\n" * 1)
        for _ in range(100):
            parser.feed(b"Segmentation fault\n")
        errors = parser_errors(parser)
        self.assertEqual(len(errors), 20)
        self.assertLessEqual(max(len(e) for e in errors), 300)

    def test_names(self) -> None:
        # Every CGRU parser but Blender's (farmnet.render.parsers) is here, under CGRU's name.
        cgru = {n for n in PARSERS if not n.startswith("blender")} - {"generic", "none"}
        self.assertEqual(set(CGRU_PARSERS), cgru)
        self.assertLessEqual(set(CGRU_PARSERS), set(builtin_parsers()))
        for name, factory in CGRU_PARSERS.items():
            parser = factory()
            self.assertIsInstance(parser, LineParser)
            self.assertEqual(parser.name, name)
        # Every parser a CGRU service names is one farmnet has (Blender's aside).
        self.assertLessEqual({p for p in SERVICE_PARSERS.values() if p and not p.startswith("blender")},
                             set(builtin_parsers()))
