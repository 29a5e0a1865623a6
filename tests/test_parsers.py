"""Tests for farmnet.render.parsers."""

from __future__ import annotations

from twisted.trial import unittest

from farmnet.render.parsers import GenericParser, NoneParser, Parser, builtin_parsers, parser_by_name


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
        self.assertEqual(sorted(builtin_parsers()), ["generic", "none"])

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
