"""Blender on the render: the blender services (the command a task runs) and parsers (its output).

CGRU names four services and parsers for Blender (``blender``, ``blender_cycles``, ``blender_render``,
``blender_internal``); farmnet runs them all the same way, since Blender's command line and output are
the same whatever the engine.

The service (:class:`BlenderService`) edits the task's command line: ``-b`` (background) becomes the first
argument, ``-t N`` (render threads, N = this machine's CPU count) is added before the first ``-a``/``-f``
when the command sets no thread count, and a bare ``blender`` program is replaced by the render's own:
``render.blender.executable`` when set, else ``blender`` found on PATH, else the bpy module through
``python -m farmnet.render.bpyrunner`` (which reads the same arguments and prints the same lines).  The
command is edited as text (the rest of it, quoting and ``$VARS`` included, is untouched); a command
without a ``blender`` program is run as is.

The parser (:class:`BlenderParser`) reads progress from the ``Fra:`` status lines (samples, tiles) and
the ``Saved: '...'`` lines (frames written, which it keeps as the run's output files), and keeps
Blender's ``Error:`` lines (which fail the run whatever its exit status) and ``Warning:`` lines.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from farmnet.config import RenderConfig

__all__ = [
    "BLENDER_NAMES",
    "BlenderParser",
    "BlenderService",
    "blender_parsers",
    "blender_program",
    "blender_services",
]

#: The service and parser names of Blender (CGRU's).
BLENDER_NAMES = ("blender", "blender_cycles", "blender_render", "blender_internal")

# --- the parser ---------------------------------------------------------------------------

# "Fra:12 Mem:..." starts every status line of a render; the number is the frame being rendered.
_BLENDER_FRAME = re.compile(rb"^Fra:\s*(-?[0-9]+)")
# Where in the frame the render is, most specific first: tiles ("Tiles 4/16", "Path Tracing Tile 4/16",
# "Rendered 3/16 Tiles"), then samples (Cycles "Sample 32/128", Eevee "Rendering 3 / 16 samples").
_BLENDER_PARTS = (
    re.compile(rb"\bTiles?\s+([0-9]+)\s*/\s*([0-9]+)"),
    re.compile(rb"\bRendered\s+([0-9]+)\s*/\s*([0-9]+)\s+Tiles\b"),
    re.compile(rb"\bSample\s+([0-9]+)\s*/\s*([0-9]+)"),
    re.compile(rb"\bRendering\s+([0-9]+)\s*/\s*([0-9]+)\s+samples\b"),
)
# A frame written: "Saved: '/path/0012.png'" (Blender quotes the path; old versions did not).
_BLENDER_SAVED = re.compile(rb"^Saved:\s+(?:'(.*)'|\"(.*)\"|(\S.*?))\s*$")
# Lines that mean the task failed whatever its exit status.  Blender prints "Error: Cannot read file ..."
# and exits 0 in background mode; CGRU's blender parser knows the last three.
_BLENDER_ERRORS = re.compile(
    rb"^(?:Error:|Traceback \(most recent call last\)|Warning: Unable to open|Render error: cannot save"
    rb"|Error: CUDA error)"
)
_BLENDER_WARNINGS = re.compile(rb"^Warning:")
# Longest line kept whole; the rest of a longer line is skipped (Blender's lines are short).
_LINE_MAX = 4096
# Error and warning lines kept per task, and characters kept per line: enough to say what went wrong.
_ERRORS_MAX = 20
_ERROR_CHARS = 300
# Output files kept per task: a chunk of frames writes one (or a few: views, passes) per frame.
_FILES_MAX = 10_000


class BlenderParser:
    """Progress, errors and written files of Blender's renders (``blender -b scene.blend -s 1 -e 10 -a``).

    Progress counts the frames written (``Saved: '...'`` lines, one frame however many views or passes it
    saves) over the task's frame range, plus how far the current frame is (its tiles or samples).  Without
    a frame range (a task of a non-numeric block) it is the current frame's progress (100 once saved).
    Lines starting with ``Error:`` or ``Traceback (most recent call last)`` (and CGRU's few others) are
    kept in ``errors``, other ``Warning:`` lines in ``warnings``, the saved paths in ``files``.  Only
    whole lines are read; ``\\r`` ends a line too.
    """

    name = "blender"

    def __init__(self, frame_start: int | None = None, frame_end: int | None = None) -> None:
        self.progress: int | None = None
        self.errors: list[str] = []
        self.warnings: list[str] = []
        #: Paths of the files the render wrote, as Blender printed them, in order, without repeats.
        self.files: list[str] = []
        self.frames: int | None = None
        if frame_start is not None and frame_end is not None and frame_end >= frame_start:
            self.frames = frame_end - frame_start + 1
        self._frame: int | None = None  # the frame being rendered (last "Fra:")
        self._done: set[int] = set()  # frames saved
        self._done_unnumbered = 0  # "Saved:" before any "Fra:" line
        self._part = 0.0  # how far the current frame is, 0..1
        self._carry = b""
        self._skipping = False  # inside an over-long line
        self._seen = False  # a progress line was read: until then there is no progress to report

    @classmethod
    def from_order(cls, order: Mapping[str, Any]) -> BlenderParser:
        """A parser for one start order: its ``frame_start``/``frame_end`` ((0, 0): not numeric)."""
        start, end = order.get("frame_start"), order.get("frame_end")
        if not isinstance(start, int) or not isinstance(end, int) or (start, end) == (0, 0):
            return cls()
        return cls(start, end)

    def feed(self, data: bytes) -> int | None:
        """Read one chunk; return the new progress if it changed."""
        if not data:
            return None
        lines = re.split(rb"[\r\n]", self._carry + data)
        self._carry = lines.pop()
        for line in lines:
            if self._skipping:  # the end of an over-long line: not a line start, read nothing
                self._skipping = False
                continue
            self._line(line)
        if len(self._carry) > _LINE_MAX:
            self._carry, self._skipping = b"", True
        return self._update()

    def _line(self, line: bytes) -> None:
        if _BLENDER_ERRORS.match(line):
            _keep(self.errors, line)
            return
        if _BLENDER_WARNINGS.match(line):
            _keep(self.warnings, line)
            return
        saved = _BLENDER_SAVED.match(line)
        if saved is not None:
            self._saved(next(g for g in saved.groups() if g is not None))
            return
        frame = _BLENDER_FRAME.match(line)
        if frame is None:
            return
        self._seen = True
        number = int(frame.group(1))
        if number != self._frame:
            self._frame, self._part = number, 0.0
        for pattern in _BLENDER_PARTS:
            part = pattern.search(line)
            if part is not None:
                done, total = int(part.group(1)), int(part.group(2))
                if 0 < total and done <= total:
                    self._part = done / total
                break

    def _saved(self, path: bytes) -> None:
        self._seen = True
        name = path.decode("utf-8", "surrogateescape")
        if len(self.files) < _FILES_MAX and name not in self.files[-8:]:
            self.files.append(name)
        if self.frames is None:
            self._part = 1.0  # no range: this frame is done, the next "Fra:" starts another
            return
        if len(self._done) + self._done_unnumbered >= self.frames:
            pass  # all counted: the state stays bounded
        elif self._frame is None:
            self._done_unnumbered += 1
        else:
            self._done.add(self._frame)
        self._part = 0.0

    def _update(self) -> int | None:
        if not self._seen:
            return None
        if self.frames is None:
            value = 100.0 * self._part
        else:
            done = min(self.frames, len(self._done) + self._done_unnumbered)
            part = self._part if done < self.frames else 0.0
            value = 100.0 * (done + part) / self.frames
        found = min(100, int(value))  # truncate: 99.9 % is not done yet
        if found == self.progress:
            return None
        self.progress = found
        return found


def _keep(lines: list[str], line: bytes) -> None:
    if len(lines) < _ERRORS_MAX:
        lines.append(line.decode("utf-8", "replace")[:_ERROR_CHARS])


def blender_parsers() -> dict[str, Callable[[], BlenderParser]]:
    """A parser class for each of Blender's names (each reports its own name)."""
    return {name: BlenderParser if name == BlenderParser.name else
            type(f"BlenderParser_{name}", (BlenderParser,), {"name": name}) for name in BLENDER_NAMES}


# --- the service --------------------------------------------------------------------------

_BLENDER_EXE = re.compile(r"blender(?:[-_][0-9][0-9.]*)?(?:\.exe)?", re.IGNORECASE)
_BLENDER_RENDER_ACTIONS = frozenset({"-a", "--render-anim", "-f", "--render-frame"})
_SHELL_OPERATORS = frozenset(";&|<>()")


@attrs.frozen
class _Word:
    start: int
    end: int
    value: str  # unquoted
    operator: bool = False


def _shell_words(text: str) -> list[_Word] | None:
    """``text`` split like /bin/sh splits words, each with its span in ``text``; None if quotes are open.

    Operator characters (``; & | < > ( )``) outside quotes are words of their own, marked ``operator``.
    Expansions (``$VAR``) are left in the value as written: only the spans are used to edit the text.
    """
    words: list[_Word] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char in _SHELL_OPERATORS:
            j = i
            while j < n and text[j] in _SHELL_OPERATORS:
                j += 1
            words.append(_Word(i, j, text[i:j], operator=True))
            i = j
            continue
        start, value = i, []
        while i < n and not text[i].isspace() and text[i] not in _SHELL_OPERATORS:
            char = text[i]
            if char == "\\":
                if i + 1 < n:
                    value.append(text[i + 1])
                i += 2
            elif char == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    return None
                value.append(text[i + 1 : end])
                i = end + 1
            elif char == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                        i += 1
                    value.append(text[i])
                    i += 1
                if i >= n:
                    return None
                i += 1
            else:
                value.append(char)
                i += 1
        words.append(_Word(start, min(i, n), "".join(value)))
    return words


# Words that may come before a program's name in a simple command (besides NAME=value assignments).
_COMMAND_PREFIXES = frozenset({"exec", "env", "nohup", "time"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _blender_word(words: list[_Word]) -> int | None:
    """The index of the first word that runs Blender (a ``blender`` program at a command's start)."""
    at_start = True
    for k, word in enumerate(words):
        if word.operator:
            at_start = True
            continue
        if not at_start:
            continue
        if _ASSIGNMENT.match(word.value) or word.value in _COMMAND_PREFIXES:
            continue
        if _BLENDER_EXE.fullmatch(os.path.basename(word.value)):
            return k
        at_start = False
    return None


def blender_program(executable: str, which: Callable[[str], str | None] = shutil.which) -> str:
    """The shell words that run a bare ``blender`` on this render.

    ``executable`` (the render's ``blender.executable``) when set; else ``blender`` on PATH; else the bpy
    module's runner when bpy is installed; else ``blender`` (the task then fails with the shell's
    "blender: not found").
    """
    if executable:
        return shlex.quote(executable)
    if which("blender") is not None:
        return "blender"
    if importlib.util.find_spec("bpy") is not None:
        return f"{shlex.quote(sys.executable)} -m farmnet.render.bpyrunner"
    return "blender"


class BlenderService:
    """Blender: ``-b`` first, ``-t <CPU count>`` unless the command sets the threads, and this render's
    Blender program for a bare ``blender``."""

    name = "blender"

    def __init__(self, threads: int | None = None,
                 which: Callable[[str], str | None] = shutil.which) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.which = which

    def environment(self, order: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        return dict(env)

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        text = str(order.get("command") or "")
        words = _shell_words(text)
        if words is None:
            return text
        exe = _blender_word(words)
        if exe is None:
            return text
        args: list[_Word] = []
        for word in words[exe + 1 :]:
            if word.operator:
                break
            args.append(word)
        values = [w.value for w in args]
        # Edits as (position, text to insert) and spans to remove, applied from the end of the text.
        inserts: list[tuple[int, str]] = []
        removes: list[_Word] = []
        if not any(v == "-t" or v == "--threads" or v.startswith("--threads=") for v in values):
            action = next((w for w in args if w.value in _BLENDER_RENDER_ACTIONS), None)
            if action is not None:
                inserts.append((action.start, f"-t {self.threads} "))
            else:
                inserts.append((args[-1].end if args else words[exe].end, f" -t {self.threads}"))
        background = [w for w in args if w.value in ("-b", "--background")]
        if not background or args[0] is not background[0]:
            inserts.append((words[exe].end, " -b"))
            removes.extend(background[:1])
        edits: list[tuple[int, int, str]] = [(p, p, s) for p, s in inserts]
        edits += [(w.start, w.end, "") for w in removes]
        program = words[exe]
        if text[program.start : program.end] == "blender":  # bare: this render's Blender
            executable = blender_program(config.blender.executable, self.which)
            if executable != "blender":
                edits.append((program.start, program.end, executable))
        # Later positions first, so earlier spans stay valid; at one position, removals before inserts.
        for start, end, insert in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
            text = text[:start] + insert + text[end:]
        return text


def blender_services() -> dict[str, Callable[[], BlenderService]]:
    """A service class for each of Blender's names (each reports its own name)."""
    return {name: BlenderService if name == BlenderService.name else
            type(f"BlenderService_{name}", (BlenderService,), {"name": name}) for name in BLENDER_NAMES}
