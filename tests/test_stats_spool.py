"""The statistics spool on its own: bounded, ordered, crash-tolerant; and COPY text (no database needed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from farmnet.stats.recorder import _copy_value, copy_text, encode_batch
from farmnet.stats.spool import Spool, batch_rows


def line(n: int, rows: int = 1) -> bytes:
    return encode_batch(f"b-{n}", [[n, "x" * 10]] * rows, [], []).line.encode()


class SpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="farmnet-spool-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_level") is LogLevel.warn and "statistics spool" in event.get("log_format", ""):
                self.warnings.append(event["log_format"].format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def spool(self, max_bytes: int = 1 << 20, segment_bytes: int = 4 << 20) -> Spool:
        spool = Spool(self.dir, max_bytes, segment_bytes)
        spool.open()
        self.addCleanup(spool.close)
        return spool

    def drain(self, spool: Spool, max_rows: int = 1) -> list[bytes]:
        out = []
        while lines := spool.peek(max_rows):
            out.extend(lines)
            spool.pop()
        return out

    def test_batch_rows(self) -> None:
        self.assertEqual(batch_rows(line(1, rows=7)), 7)
        self.assertIsNone(batch_rows(b'{"nope": 1}'))

    def test_in_order_and_empty_after(self) -> None:
        spool = self.spool()
        for n in range(10):
            spool.append(line(n), 1)
        self.assertEqual(spool.rows, 10)
        self.assertEqual(self.drain(spool, max_rows=3), [line(n) for n in range(10)])
        self.assertTrue(spool.empty)
        self.assertEqual(spool.rows, 0)
        self.assertEqual(list(self.dir.iterdir()), [], "an emptied spool leaves no file behind")

    def test_peek_without_pop_repeats(self) -> None:
        spool = self.spool()
        spool.append(line(1), 1)
        spool.append(line(2), 1)
        self.assertEqual(spool.peek(1), [line(1)])
        self.assertEqual(spool.peek(1), [line(1)])
        spool.pop()
        self.assertEqual(spool.peek(10), [line(2)])

    def test_pop_part_of_a_peek(self) -> None:
        spool = self.spool()
        for n in range(3):
            spool.append(line(n), 1)
        self.assertEqual(len(spool.peek(10)), 3)
        spool.pop(1)
        self.assertEqual(spool.peek(10), [line(1), line(2)])

    def test_segments_roll_and_are_deleted_once_read(self) -> None:
        spool = self.spool(segment_bytes=300)
        for n in range(20):
            spool.append(line(n), 1)
        self.assertGreater(len(list(self.dir.glob("*.jsonl"))), 3)
        self.assertEqual(self.drain(spool, max_rows=5), [line(n) for n in range(20)])
        self.assertEqual(list(self.dir.glob("*.jsonl")), [])

    def test_survives_reopen_with_a_truncated_last_line(self) -> None:
        spool = self.spool()
        for n in range(3):
            spool.append(line(n, rows=2), 2)
        spool.close()
        [segment] = self.dir.glob("*.jsonl")
        with segment.open("ab") as f:
            f.write(line(99)[:25])  # the crash came mid-write
        again = self.spool()
        self.assertEqual(again.rows, 6)
        again.append(line(3), 1)  # a new segment: never appended after the broken line
        self.assertEqual(self.drain(again), [line(0, 2), line(1, 2), line(2, 2), line(3)])
        self.assertTrue(any("truncated" in w for w in self.warnings), self.warnings)
        self.assertEqual(list(self.dir.glob("*.jsonl")), [])

    def test_only_a_truncated_line(self) -> None:
        (self.dir / "00000001.jsonl").write_bytes(line(1)[:10])
        spool = self.spool()
        self.assertEqual(spool.peek(10), [])
        self.assertTrue(spool.empty)

    def test_unreadable_line_skipped(self) -> None:
        (self.dir / "00000001.jsonl").write_bytes(line(1) + b"\n" + b"garbage\n" + line(2) + b"\n")
        spool = self.spool()
        self.assertEqual(self.drain(spool), [line(1), line(2)])
        self.assertTrue(any("unreadable" in w for w in self.warnings))

    def test_bounded_oldest_dropped_and_counted(self) -> None:
        one = len(line(0)) + 1
        spool = self.spool(max_bytes=one * 16, segment_bytes=one * 2)
        dropped = sum(spool.append(line(n), 1) for n in range(40))
        self.assertLessEqual(spool.bytes, one * 16)
        self.assertEqual(dropped, spool.dropped_rows)
        kept = self.drain(spool, max_rows=100)
        self.assertEqual(dropped + len(kept), 40, "every row is either kept or counted as dropped")
        self.assertEqual(kept, [line(n) for n in range(40 - len(kept), 40)], "the newest are kept, in order")
        self.assertTrue(any("dropped" in w and "over its limit" in w for w in self.warnings), self.warnings)

    def test_drop_of_a_partly_read_segment_counts_unread_rows(self) -> None:
        one = len(line(0)) + 1
        spool = self.spool(max_bytes=one * 32, segment_bytes=one * 4)
        for n in range(4):  # the first segment
            spool.append(line(n), 1)
        self.assertEqual(spool.peek(1), [line(0)])
        spool.pop()
        dropped = sum(spool.append(line(n), 1) for n in range(4, 33))
        self.assertEqual(dropped, 3)  # rows 1..3 of the first segment; row 0 was already written
        self.assertEqual(self.drain(spool, 10), [line(n) for n in range(4, 33)])

    def test_batch_larger_than_the_spool(self) -> None:
        spool = self.spool(max_bytes=100)
        self.assertEqual(spool.append(line(1, rows=50), 50), 50)
        self.assertTrue(spool.empty)

    def test_files_are_fsynced(self) -> None:
        calls: list[int] = []
        real = os.fsync
        self.patch(os, "fsync", lambda fd: calls.append(fd) or real(fd))
        spool = self.spool()
        spool.append(line(1), 1)
        spool.append(line(2), 1)
        self.assertGreaterEqual(len(calls), 2)


class CopyTextTests(SynchronousTestCase):
    """COPY text made at C speed must be what escaping value by value makes."""

    def careful(self, rows: list[tuple]) -> bytes:
        return "".join("\t".join(_copy_value(v) for v in row) + "\n" for row in rows).encode()

    def test_plain_rows_agree_with_escaping_value_by_value(self) -> None:
        rows = [(1, "shot", None, 2.5, "", 1_700_000_000.125, "naïve ✓"), (2, "x y", 3, None, "a", 0.1, None)]
        self.assertEqual(copy_text(rows), self.careful(rows))
        self.assertEqual(copy_text(rows), b"1\tshot\t\\N\t2.5\t\t1700000000.125\tna\xc3\xafve \xe2\x9c\x93\n"
                                          b"2\tx y\t3\t\\N\ta\t0.1\t\\N\n")
        self.assertEqual(copy_text([list(row) for row in rows]), copy_text(rows))  # job rows are lists

    def test_rows_that_need_escaping(self) -> None:
        for value in ("None", "a\tb", "a\nb", "a\rb", "C:\\Nuke", "\\N", "nul\x00", "info", float("nan"),
                      float("inf")):
            rows = [(1, value, None), (2, "ok", None)]
            with self.subTest(value=value):
                self.assertEqual(copy_text(rows), self.careful(rows))
                fields = copy_text(rows).decode().split("\n")[0].split("\t")
                self.assertEqual(len(fields), 3)
        self.assertEqual(copy_text([(1, "None", None)]), b"1\tNone\t\\N\n")
        self.assertEqual(copy_text([(1, "a\tb\\", float("inf"))]), b"1\ta\\tb\\\\\t\\N\n")
        self.assertEqual(copy_text([(1, 2), (3,)]), b"1\t2\n3\n")  # rows of different widths
        self.assertEqual(copy_text([]), b"")
