"""Output parsers: read a task's progress and errors from what it prints.

A block names its parser the way Afanasy does (``"parser": "generic"``); the render creates one parser per
running task and feeds it every chunk of output as it arrives.  Parsers keep only a few bytes of state, so
a task that prints gigabytes costs nothing here.

A parser may also have an ``errors`` list: lines of output it recognised as errors (Blender's ``Error:``,
a Python traceback).  The render reports a task whose parser found errors as failed even when its process
exits with status 0, as Afanasy does, since renderers often exit 0 after failing to load a scene.  Parsers
built for one task's frame range have a ``from_order(order)`` class method (see :func:`parser_by_name`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from twisted.logger import Logger

from farmnet.render.blender import BlenderParser, blender_parsers
from farmnet.render.cgru import CGRU_PARSERS

__all__ = [
    "BlenderParser",
    "GenericParser",
    "NoneParser",
    "Parser",
    "builtin_parsers",
    "parser_bad_results",
    "parser_by_name",
    "parser_end",
    "parser_errors",
    "parser_fatal",
    "parser_finished",
    "parser_frame",
    "parser_files",
    "parser_warnings",
]

_logger = Logger(namespace="farmnet.render.parsers")


class Parser(Protocol):
    """What the render needs from a parser: a name and a per-chunk feed."""

    name: str

    def feed(self, data: bytes) -> int | None:
        """Read one chunk of output; return the new progress 0..100 if this chunk changed it, else None."""
        ...


# A percentage: an integer or decimal number, optionally followed by blanks, then "%".  The look-behind
# stops us from reading "1.50%" as "50%" or "1050%" as "50%".
_PERCENT = re.compile(rb"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)[ \t]*%$")
# How far before a "%" its number may start (blanks included); a longer number is no percentage.
_NUMBER_MAX = 64
# CGRU's generic markers (a line holding one flags the run; fatal errors are errors here).
_MARKER = re.compile(
    rb"[^\r\n]*\[ PARSER (WARNING|ERROR|FATAL ERROR|BAD RESULT|FINISHED SUCCESS) \][^\r\n]*", re.IGNORECASE)
_MARKER_HINT = b"[ "  # cheap test before the regular expression
# How much of an unfinished line is kept to catch a percentage split across two chunks.  Progress
# lines are short; anything longer is cut (at a non-digit, so no number is truncated into a new one).
_CARRY_MAX = 128


class GenericParser:
    """Afanasy's "generic" parser: the progress is the last ``NN%`` (0..100) the task printed.

    Renderers print progress on lines of their own or rewrite one line with ``\\r``; either way the last
    percentage seen wins.  A value above 100 is not progress (``CPU 250%``) and is ignored.  The parser
    reports what the output says, so progress may go down (a second pass starts at 0 %).
    """

    name = "generic"

    def __init__(self) -> None:
        self.progress: int | None = None
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.bad_results: list[str] = []
        self.finished = False
        self.fatal = False  # a fatal error: the task is not retried
        # The unfinished last line of the previous chunk, so "5" + "0%" reads as 50 %.
        self._carry = b""

    def feed(self, data: bytes) -> int | None:
        """Read one chunk; return the new progress if it changed."""
        if not data:
            return None
        buf = self._carry + data
        skip = len(self._carry)
        found: int | None = None
        # The last percentage wins: look back from each "%" (a fast scan; most output has none), the
        # last first.  A "%" in the carry was read with the previous chunk.
        sign = buf.rfind(b"%", skip)
        while sign >= 0 and found is None:
            match = _PERCENT.search(buf, max(0, sign - _NUMBER_MAX), sign + 1)
            if match is not None and float(match.group(1)) <= 100.0:
                found = int(float(match.group(1)))  # truncate: 99.9 % is not done yet
            sign = buf.rfind(b"%", skip, sign)
        if _MARKER_HINT in buf:
            self._markers(buf[: max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1])
        self._carry = _unfinished_line(buf)
        if found is None or found == self.progress:
            return None
        self.progress = found
        return found


    def _markers(self, lines: bytes) -> None:
        """CGRU's ``[ PARSER ERROR ]``-style markers a script prints to flag its run."""
        for match in _MARKER.finditer(lines):
            kind = match.group(1).upper()
            if kind == b"FINISHED SUCCESS":
                self.finished = True
                continue
            self.fatal = self.fatal or kind == b"FATAL ERROR"
            kept = self.warnings if kind == b"WARNING" else (
                self.bad_results if kind == b"BAD RESULT" else self.errors)
            if len(kept) < _ERRORS_MAX:
                kept.append(match.group(0).decode("utf-8", "replace").strip()[:_ERROR_CHARS])


def _unfinished_line(buf: bytes) -> bytes:
    """The text after the last line end, bounded, never starting in the middle of a number."""
    tail = buf[max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1 :]
    if len(tail) > _CARRY_MAX:
        tail = tail[-_CARRY_MAX:].lstrip(b"0123456789.")
    return tail


class NoneParser:
    """The "none" parser: for tasks whose output says nothing useful about progress."""

    name = "none"

    def __init__(self) -> None:
        self.progress: int | None = None

    def feed(self, data: bytes) -> int | None:
        """Ignore the chunk."""
        return None


# Marked lines kept per task, and characters kept per line: enough to say what went wrong.
_ERRORS_MAX = 20
_ERROR_CHARS = 300


def _lines(parser: Parser, attribute: str) -> list[str]:
    found = getattr(parser, attribute, None)
    return list(found) if isinstance(found, list) else []


def parser_errors(parser: Parser) -> list[str]:
    """The error lines ``parser`` found ([] for parsers that look for none)."""
    return _lines(parser, "errors")


def parser_warnings(parser: Parser) -> list[str]:
    """The warning lines ``parser`` found: the task is flagged (Afanasy's WRN), its run may succeed."""
    return _lines(parser, "warnings")


def parser_bad_results(parser: Parser) -> list[str]:
    """Lines that make a run which exited 0 an error (Afanasy's "bad result")."""
    return _lines(parser, "bad_results")


def parser_finished(parser: Parser) -> bool:
    """The parser read that the work is done (the render stops the task and reports it done)."""
    return getattr(parser, "finished", False) is True


def parser_fatal(parser: Parser) -> bool:
    """The parser found a fatal error: the task fails without being retried (Afanasy's PFE)."""
    return getattr(parser, "fatal", False) is True


def parser_frame(parser: Parser) -> tuple[int, int] | None:
    """(frames of the task done, percent of the current frame), for parsers that count frames."""
    frame, percent = getattr(parser, "frame", None), getattr(parser, "percent_frame", None)
    if isinstance(frame, int) and isinstance(percent, int):
        return frame, percent
    return None


def parser_end(parser: Parser) -> None:
    """Tell ``parser`` the task's output is over (some judge the whole run then)."""
    end = getattr(parser, "end", None)
    if callable(end):
        end()


def parser_files(parser: Parser) -> list[str]:
    """The files the task wrote, as ``parser`` read them from its output ([] for parsers that do not)."""
    files = getattr(parser, "files", None)
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


_BUILTIN: Mapping[str, Callable[[], Parser]] = MappingProxyType(
    {
        **CGRU_PARSERS,
        **blender_parsers(),
        GenericParser.name: GenericParser,
        NoneParser.name: NoneParser,
    }
)


def builtin_parsers() -> Mapping[str, Callable[[], Parser]]:
    """The parsers farmnet ships, by name (a read-only mapping; build your own to add parsers)."""
    return _BUILTIN


def parser_by_name(
    name: str,
    registry: Mapping[str, Callable[[], Parser]] | None = None,
    order: Mapping[str, Any] | None = None,
) -> Parser:
    """A new parser for one task.

    An unknown name must not stop a job from rendering (a job may come from a farm with more parsers), so
    it falls back to the generic parser with a warning.  An empty name means the default, silently.  With
    the task's start ``order``, a parser class that has a ``from_order`` class method is built from it
    (the blender parser reads the task's frame range); other parsers are built with no arguments.
    """
    parsers = builtin_parsers() if registry is None else registry
    factory = parsers.get(name) if name else None
    if factory is None:
        if name:
            _logger.warn(
                "unknown parser {parser!r}, using {fallback!r}",
                parser=name,
                fallback=GenericParser.name,
            )
        return GenericParser()
    from_order = getattr(factory, "from_order", None)
    if order is not None and callable(from_order):
        return from_order(order)  # type: ignore[no-any-return]
    return factory()
