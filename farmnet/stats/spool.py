"""A bounded on-disk spool of statistics batches, for while the database is down.

Append-only segment files (``00000001.jsonl``, ``00000002.jsonl`` …) of JSON lines, one
line per batch (``{"v":1,"id":"...","n":ROWS,"tasks":[...],...}``, exactly what is sent to
the database), each append flushed and fsync'd. A segment is closed and a new one begun
past ``segment_bytes``. Lines are read back oldest first; a segment is deleted once read
and written, so what is on disk is what is still owed to the database.

Past ``max_bytes`` the oldest segment is dropped and a warning counts the rows lost:
that is the only loss, and it is explicit. A truncated last line (a crash mid-write)
is ignored with a warning; the segment being written at a crash is never appended to
again (each start begins a new segment).

The class does blocking file I/O and is not thread-safe: its user calls it from one
thread at a time (the writer calls it from the reactor's thread pool, one call at a
time, so the reactor never waits for an fsync).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import attrs
from twisted.logger import Logger

__all__ = ["Spool", "batch_rows"]

log = Logger()

SUFFIX = ".jsonl"
_HEAD = re.compile(rb'\{"v":\d+,"id":"[^"]*","n":(\d+)[,}]')


def batch_rows(line: bytes) -> int | None:
    """The row count a batch line declares, or None if it does not look like a batch."""
    match = _HEAD.match(line)
    return int(match[1]) if match else None


@attrs.define(eq=False)
class _Segment:
    path: Path
    seq: int
    size: int = 0
    rows: int = 0


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int,
                 segment_bytes: int = 4 << 20) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 8))
        self._segments: list[_Segment] = []
        self._write: BinaryIO | None = None
        self._write_segment: _Segment | None = None
        #: Read position in the oldest segment, and the rows before it.
        self._read_offset = 0
        self._read_rows = 0
        #: What the last peek returned: (offset after the line, its rows, a batch or garbage),
        #: all in one segment.
        self._peeked: list[tuple[int, int, bool]] = []
        self._peek_segment: _Segment | None = None
        self._next_seq = 1
        #: Rows dropped because the spool was full or a line was unreadable, since open.
        self.dropped_rows = 0

    # --- state -------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows waiting in the spool."""
        return sum(s.rows for s in self._segments) - self._read_rows

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def empty(self) -> bool:
        if not self._segments:
            return True
        return len(self._segments) == 1 and self._read_offset >= self._segments[0].size

    # --- opening and closing -----------------------------------------------------------

    def open(self) -> int:
        """Find the segments left by an earlier run; returns the rows waiting in them."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            segment = _Segment(path, seq)
            with path.open("rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        segment.rows += batch_rows(line) or 0
            segment.size = path.stat().st_size
            self._segments.append(segment)
            self._next_seq = max(self._next_seq, seq + 1)
        self._segments.sort(key=lambda s: s.seq)
        return self.rows

    def close(self) -> None:
        if self._write is not None:
            self._write.close()
            self._write = None
            self._write_segment = None

    # --- writing -----------------------------------------------------------------------

    def append(self, line: bytes, rows: int) -> int:
        """Append one batch line (fsync'd); returns the rows dropped to make room.

        ``line`` is one JSON object without a newline. Raises OSError if the disk
        refuses (the segment is then cut back to its last whole line).
        """
        record = line + b"\n"
        if len(record) > self.max_bytes:
            self._lost(rows, f"a batch of {len(record)} bytes is larger than the whole spool")
            return rows
        dropped = 0
        while self._segments and self.bytes + len(record) > self.max_bytes:
            dropped += self._drop_oldest()
        segment = self._write_segment
        if segment is None or self._write is None or segment.size >= self.segment_bytes:
            segment = self._new_segment()
        assert self._write is not None
        try:
            self._write.write(record)
            self._write.flush()
            os.fsync(self._write.fileno())
        except OSError:
            self._cut_back(segment)
            raise
        segment.size += len(record)
        segment.rows += rows
        return dropped

    def _new_segment(self) -> _Segment:
        self.close()
        segment = _Segment(self.directory / f"{self._next_seq:08d}{SUFFIX}", self._next_seq)
        self._next_seq += 1
        self._write = segment.path.open("ab")
        self._write_segment = segment
        self._segments.append(segment)
        self._sync_directory()
        return segment

    def _cut_back(self, segment: _Segment) -> None:
        """After a failed write: the segment back to its last whole line, or abandoned."""
        try:
            assert self._write is not None
            self._write.truncate(segment.size)
        except (OSError, ValueError, AssertionError):
            self.close()  # the next append begins a new segment

    def _drop_oldest(self) -> int:
        segment = self._segments[0]
        rows = segment.rows - self._read_rows
        if segment is self._write_segment:
            self.close()
        self._remove(segment)
        self._lost(rows, f"the spool is over its limit of {self.max_bytes} bytes "
                         "(server.stats.spool_max_bytes)")
        return rows

    def _lost(self, rows: int, why: str) -> None:
        self.dropped_rows += rows
        log.warn("statistics spool: {why}: dropped {rows} rows, the oldest ({total} dropped since start)",
                 why=why, rows=rows, total=self.dropped_rows)

    def _remove(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        if segment is self._peek_segment:
            self._peeked, self._peek_segment = [], None
        self._read_offset = 0
        self._read_rows = 0
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # --- reading -----------------------------------------------------------------------

    def peek(self, max_rows: int, max_bytes: int = 8 << 20) -> list[bytes]:
        """The oldest lines (without newline): at least one if any, then up to ``max_rows``
        rows and ``max_bytes``, from one segment. They stay in the spool until :meth:`pop`.
        Unreadable lines on the way are skipped with a warning."""
        self._peeked = []
        self._peek_segment = None
        lines: list[bytes] = []
        rows = size = 0
        while self._segments:
            segment = self._segments[0]
            offset = self._read_offset
            if offset >= segment.size:
                if segment is self._write_segment:
                    break  # everything was read
                self._remove(segment)  # read and written: done with it
                continue
            entries: list[tuple[int, int, bool]] = []
            with segment.path.open("rb") as f:
                f.seek(offset)
                while not lines or (rows < max_rows and size < max_bytes):
                    line = f.readline()
                    if not line:
                        break
                    end = offset + len(line)
                    if not line.endswith(b"\n"):
                        if segment is not self._write_segment:
                            log.warn("statistics spool: ignoring a truncated last line of {bytes} bytes in "
                                     "{file} (a crash while writing it)", bytes=len(line),
                                     file=str(segment.path))
                            entries.append((end, 0, False))
                        break
                    count = batch_rows(line)
                    if count is None:
                        log.warn("statistics spool: skipping an unreadable line in {file}",
                                 file=str(segment.path))
                        entries.append((end, 0, False))
                    else:
                        lines.append(line[:-1])
                        rows += count
                        size += len(line)
                        entries.append((end, count, True))
                    offset = end
            if lines:
                self._peeked, self._peek_segment = entries, segment
                break
            if entries:  # only unreadable lines so far: consume them and go on
                self._consume(segment, entries)
                continue
            if segment is self._write_segment:
                break
            self._remove(segment)  # nothing more in it (it shrank?)
        return lines

    def pop(self, lines: int | None = None) -> None:
        """Consume what the last :meth:`peek` returned, or only its first ``lines`` lines."""
        entries = self._peeked
        if lines is not None:
            seen = 0
            for index, (_, _, is_line) in enumerate(entries):
                seen += is_line
                if seen == lines:
                    entries = entries[: index + 1]
                    break
        self._peeked = self._peeked[len(entries):]
        if self._peek_segment is not None:
            self._consume(self._peek_segment, entries)

    def _consume(self, segment: _Segment, entries: list[tuple[int, int, bool]]) -> None:
        if not entries or not self._segments or self._segments[0] is not segment:
            return  # dropped meanwhile
        for end, rows, _ in entries:
            self._read_offset = end
            self._read_rows += rows
        if self._read_offset >= segment.size:
            if segment is self._write_segment:
                self.close()  # the spool is empty: the next append begins a new file
            self._remove(segment)
