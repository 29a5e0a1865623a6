"""Tests for farmnet.render.parsers."""

from __future__ import annotations

from twisted.trial import unittest

from farmnet.model.catalog import PARSERS
from farmnet.render.parsers import (
    BlenderParser,
    GenericParser,
    NoneParser,
    Parser,
    builtin_parsers,
    parser_by_name,
    parser_errors,
)


def feed_all(parser: Parser, *chunks: bytes) -> list[int | None]:
    return [parser.feed(c) for c in chunks]


class GenericParserTests(unittest.TestCase):
    def test_plain(self) -> None:
        p = GenericParser()
        self.assertEqual(p.feed(b"Rendering frame 7: 42%\n"), 42)
        self.assertEqual(p.progress, 42)

    def test_last_value_in_chunk_wins(self) -> None:
        self.assertEqual(GenericParser().feed(b"10%\n20%\n35% done\n"), 35)

    def test_unchanged_returns_none(self) -> None:
        p = GenericParser()
        self.assertEqual(feed_all(p, b"50%\n", b"still 50%\n", b"no progress here\n"), [50, None, None])

    def test_zero_is_reported(self) -> None:
        self.assertEqual(GenericParser().feed(b"0%\n"), 0)

    def test_decimals_truncate(self) -> None:
        p = GenericParser()
        self.assertEqual(p.feed(b"Progress: 12.5%\n"), 12)
        self.assertEqual(p.feed(b"Progress: 99.99%\n"), 99)
        self.assertEqual(p.feed(b"Progress: 100.0%\n"), 100)

    def test_blank_before_percent(self) -> None:
        self.assertEqual(GenericParser().feed(b"progress 75 %\n"), 75)

    def test_split_across_chunks(self) -> None:
        p = GenericParser()
        self.assertEqual(feed_all(p, b"frame 3 at 6", b"7% done\n"), [None, 67])
        self.assertEqual(feed_all(p, b"now 80", b"%"), [None, 80])
        self.assertEqual(feed_all(p, b" then 9", b"0.", b"5", b"%\n"), [None, None, None, 90])

    def test_match_in_carried_text_not_repeated(self) -> None:
        p = GenericParser()
        # "40%" stays in the unfinished line; the next chunk must not report it again.
        self.assertEqual(feed_all(p, b"at 40%", b" and more text"), [40, None])

    def test_carriage_return_lines(self) -> None:
        p = GenericParser()
        self.assertEqual(p.feed(b"\r 10%\r 20%\r 30%"), 30)
        self.assertEqual(p.feed(b"\r 4"), None)
        self.assertEqual(p.feed(b"0%\r"), 40)

    def test_over_100_ignored(self) -> None:
        p = GenericParser()
        self.assertEqual(p.feed(b"30%\n"), 30)
        self.assertEqual(p.feed(b"CPU 250%\n"), None)
        self.assertEqual(p.progress, 30)
        self.assertEqual(p.feed(b"60% then cpu 150%\n"), 60)

    def test_number_parts_not_read_as_percent(self) -> None:
        p = GenericParser()
        # "1050%" is not 50 %, nor is "v1.50%" 50 %: both are ignored or read whole.
        self.assertIsNone(p.feed(b"1050%\n"))
        self.assertEqual(p.feed(b"v1.50%\n"), 1)

    def test_progress_may_go_down(self) -> None:
        p = GenericParser()
        self.assertEqual(feed_all(p, b"100%\n", b"second pass 5%\n"), [100, 5])

    def test_long_line_carry_is_bounded(self) -> None:
        p = GenericParser()
        self.assertIsNone(p.feed(b"x" * 100_000))
        self.assertLessEqual(len(p._carry), 128)
        self.assertEqual(p.feed(b"x" * 1000 + b" 12"), None)
        self.assertEqual(p.feed(b"%"), 12)

    def test_long_carry_not_cut_into_a_number(self) -> None:
        p = GenericParser()
        # The cut falls inside "123456789": what is left must not be read as a percentage.
        self.assertIsNone(p.feed(b"y" * 200 + b"123456789" + b"0" * 125))
        self.assertIsNone(p.feed(b"%"))

    def test_empty_and_binary(self) -> None:
        p = GenericParser()
        self.assertIsNone(p.feed(b""))
        self.assertEqual(p.feed(b"\xff\xfe 5%\x00"), 5)


class NoneParserTests(unittest.TestCase):
    def test_never_reports(self) -> None:
        p = NoneParser()
        self.assertEqual(p.name, "none")
        self.assertEqual(feed_all(p, b"50%\n", b"100%"), [None, None])


class ParserByNameTests(unittest.TestCase):
    def test_builtins(self) -> None:
        self.assertIsInstance(parser_by_name("generic"), GenericParser)
        self.assertIsInstance(parser_by_name("none"), NoneParser)
        self.assertIsInstance(parser_by_name("blender"), BlenderParser)
        # CGRU's parser names (farmnet.model.catalog.PARSERS) that farmnet parses, and its own "none".
        self.assertLessEqual({"blender", "blender_cycles", "blender_internal", "blender_render", "generic",
                              "none",
                              "nuke", "hbatch_mantra", "ffmpeg"},
                             set(builtin_parsers()))
        self.assertLessEqual(set(builtin_parsers()), PARSERS)

    def test_new_parser_each_time(self) -> None:
        self.assertIsNot(parser_by_name("generic"), parser_by_name("generic"))

    def test_unknown_falls_back_to_generic(self) -> None:
        p = parser_by_name("mantra_that_we_do_not_have")
        self.assertIsInstance(p, GenericParser)
        self.assertEqual(p.name, "generic")

    def test_empty_name_is_generic(self) -> None:
        self.assertIsInstance(parser_by_name(""), GenericParser)

    def test_custom_registry(self) -> None:
        class Fixed:
            name = "fixed"

            def feed(self, data: bytes) -> int | None:
                return 7

        registry = {**builtin_parsers(), "fixed": Fixed}
        p = parser_by_name("fixed", registry)
        self.assertEqual(p.feed(b""), 7)
        self.assertIsInstance(parser_by_name("generic", registry), GenericParser)
        # A registry without the name falls back to generic too.
        self.assertIsInstance(parser_by_name("fixed", {}), GenericParser)

    def test_builtins_read_only(self) -> None:
        with self.assertRaises(TypeError):
            builtin_parsers()["x"] = GenericParser  # type: ignore[index]


# Lines as Blender prints them (Cycles 2.8x, Cycles 3+/4, Eevee).
CYCLES_2 = b"Fra:12 Mem:812.33M (0.00M, Peak 850.12M) | Time:00:03.12 | Remaining:00:40.00 | Mem:120M, Peak:130M | Scene, View Layer | Rendered 4/16 Tiles, Sample 32/128\n"  # noqa: E501
CYCLES_4 = b"Fra:12 Mem:412.1M (Peak 455.3M) | Time:00:02.61 | Remaining:00:21.12 | Mem:100M, Peak:100M | Scene, ViewLayer | Sample 32/128\n"  # noqa: E501
EEVEE = b"Fra:12 Mem:140.20M (Peak 152.77M) | Time:00:00.90 | Rendering 3 / 16 samples\n"


def order(start: int, end: int) -> dict[str, object]:
    return {"order": "start", "job_id": 1, "block": 0, "task": 0, "run": 1, "command": "blender -b x -a",
            "parser": "blender", "frame_start": start, "frame_end": end}


class BlenderParserTests(unittest.TestCase):
    def test_samples_of_one_frame(self) -> None:
        p = parser_by_name("blender", order=order(12, 12))
        self.assertIsInstance(p, BlenderParser)
        self.assertEqual(p.frames, 1)
        self.assertEqual(p.feed(CYCLES_4), 25)
        self.assertEqual(p.feed(EEVEE), 18)  # 3/16
        self.assertIsNone(p.feed(EEVEE))
        self.assertEqual(p.feed(b"Fra:12 Mem:1M | Sample 128/128\n"), 100)
        self.assertIsNone(p.feed(b"Saved: '/render/0012.png'\n Time: 00:04.11 (Saving: 00:00.02)\n"))
        self.assertEqual(p.errors, [])

    def test_tiles_win_over_samples(self) -> None:
        p = BlenderParser.from_order(order(12, 12))
        self.assertEqual(p.feed(CYCLES_2), 25)  # 4/16 tiles
        self.assertEqual(p.feed(b"Fra:12 Mem:1M | Path Tracing Tile 8/16\n"), 50)
        self.assertEqual(p.feed(b"Fra:12 Mem:1M | Tiles 12/16\n"), 75)

    def test_frames_over_the_task_range(self) -> None:
        p = parser_by_name("blender", order=order(1, 4))
        self.assertEqual(p.frames, 4)
        self.assertEqual(p.feed(b"Fra:1 Mem:1M | Sample 64/128\n"), 12)  # half of a quarter
        self.assertEqual(p.feed(b"Fra:1 Mem:1M | Sample 128/128\nSaved: '/r/0001.png'\n"), 25)
        # A second view of the same frame is not another frame.
        self.assertIsNone(p.feed(b"Saved: '/r/0001_R.png'\n"))
        self.assertEqual(p.feed(b"Fra:2 Mem:1M | Sample 32/128\n"), 31)
        chunk = b"Saved: '/r/0002.png'\nFra:3 Mem:1M | Sample 1/128\nSaved: '/r/0003.png'\n"
        self.assertEqual(p.feed(chunk), 75)
        self.assertEqual(p.feed(b"Fra:4 Mem:1M | Sample 128/128\nSaved: '/r/0004.png'\n"), 100)
        self.assertIsNone(p.feed(b"Fra:5 Mem:1M | Sample 1/128\nSaved: '/r/0005.png'\n"))  # past the range
        self.assertEqual(p.progress, 100)

    def test_without_a_frame_range(self) -> None:
        for p in (BlenderParser(), parser_by_name("blender"), parser_by_name("blender", order=order(0, 0))):
            self.assertIsNone(p.frames)
            self.assertEqual(p.feed(CYCLES_4), 25)
            self.assertEqual(p.feed(b"Saved: 'a.png'\nFra:13 Mem:1M | Sample 64/128\n"), 50)
            self.assertEqual(p.feed(b"Saved: 'b.png'\n Time: 00:01.00\n"), 100)

    def test_lines_split_across_chunks_and_carriage_returns(self) -> None:
        p = BlenderParser(1, 1)
        self.assertIsNone(p.feed(b"Fra:1 Mem:1M | Sam"))
        self.assertIsNone(p.feed(b"ple 64/1"))
        self.assertEqual(p.feed(b"28\r"), 50)
        self.assertEqual(p.feed(b"Fra:1 Mem:1M | Sample 96/128\r"), 75)

    def test_errors_flagged(self) -> None:
        p = parser_by_name("blender", order=order(1, 10))
        self.assertIsNone(p.feed(b"Blender 4.1.0\nRead blend: /x.blend\n"))
        p.feed(b"Error: Cannot read file '/x.blend': No such file or directory\n")
        p.feed(b"Traceback (most recent call last):\n  File \"<string>\", line 1\nNameError: name 'x'\n")
        p.feed(b"Warning: Unable to open '/tex/wood.png'\nError: CUDA error: out of memory\n")
        p.feed(b"No errors here: Error: only at a line start\n")
        self.assertEqual(p.errors, [
            "Error: Cannot read file '/x.blend': No such file or directory",
            "Traceback (most recent call last):",
            "Warning: Unable to open '/tex/wood.png'",
            "Error: CUDA error: out of memory",
        ])
        self.assertEqual(parser_errors(p), p.errors)
        self.assertEqual(parser_errors(GenericParser()), [])

    def test_errors_bounded(self) -> None:
        p = BlenderParser()
        p.feed(b"".join(b"Error: number %d " % i + b"x" * 1000 + b"\n" for i in range(100)))
        self.assertEqual(len(p.errors), 20)
        self.assertTrue(all(len(e) <= 300 for e in p.errors))

    def test_long_lines_bounded_and_not_misread(self) -> None:
        p = BlenderParser(1, 1)
        self.assertIsNone(p.feed(b"x" * 100_000))
        self.assertLessEqual(len(p._carry), 4096)
        # The end of the over-long line is not a line start, so this is not an error or a frame line.
        self.assertIsNone(p.feed(b"Error: in the middle\n"))
        self.assertEqual(p.errors, [])
        self.assertIsNone(p.progress)
        self.assertEqual(p.feed(b"Fra:1 Mem:1M | Sample 32/128\n"), 25)

    def test_nonsense_counts_ignored(self) -> None:
        p = BlenderParser(1, 1)
        # The frame started (0 %), the impossible counts are ignored.
        self.assertEqual(p.feed(b"Fra:1 Mem:1M | Sample 200/128\nFra:1 | Sample 3/0\n"), 0)
        self.assertEqual(p.feed(b"Fra:1 | Sample 64/128\n"), 50)

    def test_from_order_bad_values(self) -> None:
        self.assertIsNone(BlenderParser.from_order({"frame_start": "1", "frame_end": 3}).frames)
        self.assertIsNone(BlenderParser.from_order({}).frames)
        self.assertIsNone(BlenderParser(5, 1).frames)
        self.assertEqual(BlenderParser.from_order(order(-2, 2)).frames, 5)

    def test_order_ignored_by_plain_parsers(self) -> None:
        self.assertIsInstance(parser_by_name("generic", order=order(1, 2)), GenericParser)
        self.assertIsInstance(parser_by_name("nope", order=order(1, 2)), GenericParser)
