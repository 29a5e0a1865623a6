"""Parsers for the programs CGRU's Afanasy parses, under CGRU's parser names.

Each reads its program's output line by line (``\\n`` or ``\\r`` ends a line, so progress rewritten in
place is read too) and keeps, as Afanasy's parsers do:

- the task's progress: ``frame`` frames of the task done plus ``percent_frame`` of the current one, over
  the task's ``frames`` (from its start order); some programs report the whole task's percentage;
- ``errors``: lines that make the run an error whatever its exit status (the render stops the task at the
  first one, as Afanasy's render does);
- ``warnings``: lines that flag the task (it may still finish done; Afanasy's ``WRN``);
- ``bad_results``: lines that make a run that exited 0 an error when it ends;
- ``finished``: a line that says the work is done (the render stops the task; the run is done).

The strings each parser looks for are Afanasy's (case-insensitive substrings of a line), as are its
progress rules, written from the programs' output; farmnet's code is its own.  See doc/afanasy.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs

__all__ = ["CGRU_PARSERS", "LineParser", "frames_of_order"]

# Longest line kept whole; the rest of a longer line is skipped.
_LINE_MAX = 4096
# Lines kept per kind (errors, warnings, bad results), and characters kept per line.
_KEPT_MAX = 20
_KEPT_CHARS = 300


def frames_of_order(order: Mapping[str, Any]) -> int:
    """How many frames the task of a start order renders (1 for a task of a non-numeric block)."""
    start, end = order.get("frame_start"), order.get("frame_end")
    inc = order.get("frames_inc") or 1
    if not isinstance(start, int) or not isinstance(end, int) or (start, end) == (0, 0) or end < start:
        return 1
    if not isinstance(inc, int) or inc < 1:
        inc = 1
    return (end - start) // inc + 1


_BLANKS = re.compile(r"[ \t]+")


@attrs.frozen
class _Flag:
    """One of Afanasy's flag strings: a blank-free piece of it to find fast in lower-cased output,
    and the expression a line holding that piece must match (any run of blanks matching a blank:
    Arnold pads ``ERROR   |`` where CGRU's strings say ``ERROR |``)."""

    kind: str
    key: str
    pattern: re.Pattern[str]


def _flags(kind: str, strings: tuple[str, ...]) -> tuple[_Flag, ...]:
    flags = []
    for text in strings:
        words = [w for w in _BLANKS.split(text.lower()) if w]
        flexible = r"[ \t]+".join(re.escape(w) for w in _BLANKS.split(text))
        flags.append(_Flag(kind, max(words, key=len), re.compile(flexible, re.IGNORECASE)))
    return tuple(flags)


def _line_at(text: str, position: int) -> tuple[int, str]:
    """The start and the text of the line of ``text`` (line ends: ``\n``) holding ``position``."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return start, text[start:] if end < 0 else text[start:end]


class LineParser:
    """The base of CGRU-named parsers: whole lines in, Afanasy's progress and flags out.

    A subclass sets the string lists and overrides :meth:`line` to move ``frame`` / ``percent_frame``
    (then :meth:`frame_progress`) or to set the task's percentage (:meth:`task_progress`).  Only the
    lines holding one of its ``progress_keys`` go to :meth:`line`, and only lines holding a piece of a
    flag string are matched against it: a chatty log is scanned by ``str.find``, not line by line.
    """

    name: ClassVar[str] = "lines"
    #: Case-insensitive substrings: a line holding one is an error / a warning / a bad result / the end.
    error_strings: ClassVar[tuple[str, ...]] = ()
    warning_strings: ClassVar[tuple[str, ...]] = ()
    bad_result_strings: ClassVar[tuple[str, ...]] = ()
    finished_strings: ClassVar[tuple[str, ...]] = ()
    #: Regular expressions: a line matching one is an error.
    error_patterns: ClassVar[tuple[re.Pattern[str], ...]] = ()
    #: Only lines holding one of these (as written) may tell progress; () for none.
    progress_keys: ClassVar[tuple[str, ...]] = ()
    # Built from the strings when the class is made.
    _all_flags: ClassVar[tuple[_Flag, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._all_flags = (*_flags("errors", cls.error_strings), *_flags("warnings", cls.warning_strings),
                          *_flags("bad_results", cls.bad_result_strings),
                          *_flags("finished", cls.finished_strings))

    def __init__(self, frames: int = 1) -> None:
        self.frames = max(1, frames)
        self.frame = 0  # frames of the task done
        self.percent_frame = 0  # of the frame being rendered
        self.progress: int | None = None
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.bad_results: list[str] = []
        self.finished = False
        self._frame_seen = False  # a line that starts a frame was read
        self._carry = b""
        self._skipping = False

    @classmethod
    def from_order(cls, order: Mapping[str, Any]) -> LineParser:
        """A parser for one start order: the task's frame count."""
        return cls(frames_of_order(order))

    def feed(self, data: bytes) -> int | None:
        """Read one chunk; return the new progress if it changed."""
        if not data:
            return None
        before = self.progress
        buf = self._carry + data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        complete, self._carry = buf[:cut], buf[cut:]
        if complete and self._skipping:  # the end of an over-long line
            self._skipping = False
            ends = [i for i in (complete.find(b"\n"), complete.find(b"\r")) if i >= 0]
            complete = complete[min(ends) + 1:]
        if complete:
            self._read(complete.decode("utf-8", "replace"))
        if len(self._carry) > _LINE_MAX:
            self._carry, self._skipping = b"", True
        return self.progress if self.progress != before else None

    def end(self) -> None:
        """The task's output is over: read its unfinished last line, then judge the whole run."""
        if self._carry and not self._skipping:
            self._read(self._carry.decode("utf-8", "replace"))
        self._carry = b""
        self.ended()

    def ended(self) -> None:
        """Called once at the end; a subclass may flag a bad result here."""

    def _read(self, text: str) -> None:
        """Complete lines: the flagged ones kept, the ones that may tell progress given to line()."""
        text = text.replace("\r", "\n")
        if self._all_flags or self.error_patterns:
            self._read_flags(text)
        if not self.progress_keys:
            return
        lines: dict[int, str] = {}
        for key in self.progress_keys:
            at = text.find(key)
            while at >= 0:
                start, line = _line_at(text, at)
                lines[start] = line
                at = text.find(key, start + len(line))
        for start in sorted(lines):
            self.line(lines[start])

    def _read_flags(self, text: str) -> None:
        lower = text.lower()  # the same length and line ends as text
        flagged: dict[tuple[int, str], str] = {}
        for flag in self._all_flags:
            at = lower.find(flag.key)
            while at >= 0:
                start, line = _line_at(text, at)
                if flag.pattern.search(line):
                    flagged[(start, flag.kind)] = line
                at = lower.find(flag.key, start + len(line))
        for pattern in self.error_patterns:
            for match in pattern.finditer(text):
                start, line = _line_at(text, match.start())
                flagged[(start, "errors")] = line
        for (_, kind), line in sorted(flagged.items()):
            if kind == "finished":
                self.finished = True
            else:
                self._keep(getattr(self, kind), line)

    @staticmethod
    def _keep(kept: list[str], text: str) -> None:
        if len(kept) < _KEPT_MAX:
            kept.append(text.strip()[:_KEPT_CHARS])

    def line(self, text: str) -> None:
        """Read one line of output for progress (the flags are already read)."""

    def frame_started(self) -> bool:
        """A line that starts a frame was read: every frame after the first ends the one
        before, so the count goes up from the second on (True when it did)."""
        if self._frame_seen:
            self.frame += 1
            return True
        self._frame_seen = True
        return False

    def frame_progress(self) -> None:
        """The task's progress from ``frame`` and ``percent_frame``, as Afanasy computes it."""
        self.frame = max(0, min(self.frame, self.frames))
        self.percent_frame = max(0, min(int(self.percent_frame), 100))
        if self.frames > 1:
            value = (100 * self.frame + self.percent_frame) // self.frames
        else:
            value = self.percent_frame
        self.progress = max(0, min(100, value))

    def task_progress(self, percent: float) -> None:
        """The program tells the task's percentage itself (one frame per run, or its own count)."""
        if 0 <= percent <= 100:
            self.progress = int(percent)
            self.percent_frame = int(percent)


# --- Afanasy's own markers ---------------------------------------------------------------


class AfanasyMarkers(LineParser):
    """CGRU's render scripts' ``FRAME: N`` and ``PROGRESS: N%`` lines (mayatomr, and the generic rules)."""

    name = "mayatomr"
    progress_keys = ("FRAME: ", "PROGRESS: ")
    _FRAME = re.compile(r"FRAME: ")
    _PROGRESS = re.compile(r"PROGRESS: *(-?[0-9]+(?:\.[0-9]+)?) *%")

    def line(self, text: str) -> None:
        if self._FRAME.search(text):
            if self.frame_started():
                self.percent_frame = 0
            self.frame_progress()
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = int(float(match.group(1)))
            self.frame_progress()


# --- Nuke, Natron ------------------------------------------------------------------------


class NukeParser(LineParser):
    """``nuke -x``: ``Writing FILE ... took N seconds`` per file, ``Frame N (i of n)`` per frame.

    A new file name written means the frame before it is done (Afanasy's rule); ``Frame N (i of n)``
    says ``i`` of the command's ``n`` frames are done.  (Afanasy also reads Nuke's dotted tenths,
    ``.1.2.3``, from the unfinished line; farmnet reads whole lines.)
    """

    name = "nuke"
    progress_keys = ("Writing ", "Frame ")
    error_strings = ("Worker process failed", "Segmentation fault", "Node execution error:")
    error_patterns = (re.compile(r"Invalid .* license key\."),)
    _WRITING = re.compile(r"\bWriting (\S+)")
    _FRAME_OF = re.compile(r"^Frame -?[0-9]+ \(([0-9]+) of ([0-9]+)\)")

    def __init__(self, frames: int = 1) -> None:
        super().__init__(frames)
        self._file = ""

    def line(self, text: str) -> None:
        match = self._FRAME_OF.search(text)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            if 0 < total and done <= total:
                self.frames, self.frame, self.percent_frame = total, done, 0
                self.frame_progress()
            return
        match = self._WRITING.search(text)
        if match:
            name = match.group(1)
            if self._file and name != self._file:
                self.frame += 1
                self.percent_frame = 0
            self._file = name
            self.frame_progress()


class NatronParser(LineParser):
    """NatronRenderer: ``Frame rendered: N`` per frame done."""

    name = "natron"
    progress_keys = ("Frame rendered:",)
    error_strings = ("Worker process failed",)
    error_patterns = (re.compile(r"Invalid .* license key\."),)
    _DONE = re.compile(r"Frame rendered: *-?[0-9]+")

    def line(self, text: str) -> None:
        if self._DONE.search(text):
            self.frame += 1
            self.percent_frame = 0
            self.frame_progress()


# --- Houdini -----------------------------------------------------------------------------

_LICENCE_ERRORS = ("No licenses could be found to run this application",
                   "Please check for a valid license server host")
_MANTRA_WARNINGS = ("Unable to access file", "Unable to load texture", "Recompress failed",
                    "WARNING: A procedural of", " Unknown parameter: ",
                    " is rendering as a packed procedural but has a mix of packed and non-packed primitives",
                    " primitives which may not be rendered directly",
                    "Procedural generated out of bounds geometry")
_GEOMETRY_ERROR = re.compile(r"Error loading geometry .* from stdin")
_ALF = re.compile(r"ALF_PROGRESS *(-?[0-9]+) *%")


def _alf_progress(parser: LineParser, text: str) -> None:
    """mantra's and karma's ``ALF_PROGRESS N%``: the frame's percentage."""
    match = _ALF.search(text)
    if match:
        parser.percent_frame = int(match.group(1))
        parser.frame_progress()


class MantraParser(LineParser):
    """mantra: ``ALF_PROGRESS N%`` (with ``-a``) is the frame's percentage."""

    name = "mantra"
    progress_keys = ("ALF_PROGRESS",)
    error_strings = (*_LICENCE_ERRORS, "Failed to create file")
    warning_strings = (*_MANTRA_WARNINGS, "mantra: No velocity attribute found for motion blur",
                       "mantra: WARNING:")
    error_patterns = (_GEOMETRY_ERROR,)

    def line(self, text: str) -> None:
        _alf_progress(self, text)


class KarmaParser(MantraParser):
    """karma (husk): the same ``ALF_PROGRESS N%`` lines, karma's warnings."""

    name = "karma"
    warning_strings = (*_MANTRA_WARNINGS, "karma: No velocity attribute found for motion blur",
                       "karma: WARNING:")


class HbatchParser(LineParser):
    """hbatch / hython rendering a ROP: ``RopNode.render: frame N`` per frame started, and
    ``ABC_PROGRESS N`` (Alembic export) as the frame's percentage."""

    name = "hbatch"
    progress_keys = ("RopNode.render: frame ", "ABC_PROGRESS")
    error_strings = _LICENCE_ERRORS
    warning_strings = ("OpenCL Exception", "Failed to create")
    _FRAME = "RopNode.render: frame "
    _ABC = re.compile(r"ABC_PROGRESS ([0-9]+)")

    def line(self, text: str) -> None:
        self.hbatch_line(text)

    def hbatch_line(self, text: str) -> None:
        if self._FRAME in text and self.frame_started():
            self.percent_frame = 0
            self.frame_progress()
        match = self._ABC.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()


class HbatchMantraParser(HbatchParser):
    """hbatch rendering with mantra: both programs' lines (mantra's errors and warnings)."""

    name = "hbatch_mantra"
    progress_keys = ("RopNode.render: frame ", "ABC_PROGRESS", "ALF_PROGRESS")
    error_strings = MantraParser.error_strings
    warning_strings = MantraParser.warning_strings
    error_patterns = MantraParser.error_patterns

    def line(self, text: str) -> None:
        _alf_progress(self, text)
        self.hbatch_line(text)


class HbatchKarmaParser(HbatchMantraParser):
    """hbatch rendering with karma."""

    name = "hbatch_karma"
    warning_strings = KarmaParser.warning_strings


# --- Arnold, RenderMan, Redshift, V-Ray, mental ray -------------------------------------


class ArnoldParser(LineParser):
    """kick: ``|    45% done - 23 rays/pixel`` is the task's percentage (one frame per kick run)."""

    name = "arnold"
    progress_keys = ("% done",)
    error_strings = ("Error reading pixel data from image file", "ERROR | [ass] can't open",
                     "ERROR | [ass] can't read in", "ERROR | [texturesys] unspecified OIIO error ",
                     "can't create file", "ERROR   | signal caught: SIGABRT -- Abnormal process abort",
                     "[rlm] error initializing license system", "ERROR | [alembic] invalid archive")
    warning_strings = ("WARNING | rendering with watermarks because of failed authorization:",)
    _DONE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*% done")

    def line(self, text: str) -> None:
        match = self._DONE.search(text)
        if match:
            self.task_progress(float(match.group(1)))


class HoudiniToArnoldParser(HbatchParser):
    """hbatch rendering with HtoA: Arnold's percentage, hbatch's frames; both programs' flags."""

    name = "houdinitoarnold"
    progress_keys = ("RopNode.render: frame ", "ABC_PROGRESS", "% done")
    error_strings = (*ArnoldParser.error_strings, *HbatchParser.error_strings)
    warning_strings = (*HbatchParser.warning_strings, *ArnoldParser.warning_strings)

    def line(self, text: str) -> None:
        match = ArnoldParser._DONE.search(text)
        if match:
            self.task_progress(float(match.group(1)))
        self.hbatch_line(text)


class PrmanParser(LineParser):
    """prman ``-Progress``: ``R90000  45%`` lines, the task's percentage."""

    name = "prman"
    progress_keys = ("%",)
    _PROGRESS = re.compile(r"(?<![0-9.])([0-9]{1,3})%\s*$")

    def line(self, text: str) -> None:
        match = self._PROGRESS.search(text)
        if match:
            self.task_progress(int(match.group(1)))


class HbatchPrmanParser(HbatchParser):
    """hbatch rendering with RenderMan: prman's percentage, hbatch's frames and flags."""

    name = "hbatch_prman"
    progress_keys = ("RopNode.render: frame ", "ABC_PROGRESS", "%")

    def line(self, text: str) -> None:
        match = PrmanParser._PROGRESS.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()
        self.hbatch_line(text)


_REDSHIFT_ERRORS = ("No devices found. Aborting rendering.", "Rendering was internally aborted",
                    "Bad node type found: Redshift_ROP", "Bad node type found: redshift_vopnet",
                    "Error an illegal memory access was encountered", "License error")


class RedshiftParser(LineParser):
    """Redshift: ``Block 32/48 (7,4) rendered by GPU 0 in 2ms`` is the frame's part;
    ``Rendering frame N...`` starts a frame, ``Frame ... done`` / ``Skipping frame`` ends one,
    ``Rendering done`` ends the task."""

    name = "redshift"
    progress_keys = ("Rendering", "Block", "Frame", "Skipping frame")
    error_strings = _REDSHIFT_ERRORS
    _BLOCK = re.compile(r"Block\s*([0-9]+)/([0-9]+)\s*\S*\s*rendered by GPU")
    _START = re.compile(r"Rendering.*frame -?[0-9]+\.\.\.")
    _FRAME_DONE = re.compile(r"Frame.*done|Skipping frame")
    _ALL_DONE = re.compile(r"Rendering done")

    def __init__(self, frames: int = 1) -> None:
        super().__init__(frames)
        self._block = self._blocks = 0

    def line(self, text: str) -> None:
        before = (self.frame, self.percent_frame)
        if self._START.search(text):
            self._block = self._blocks = 0
            self.percent_frame = 0
        match = self._BLOCK.search(text)
        if match:
            # Several GPUs finish blocks out of order: the highest block seen is the frame's part.
            self._block = max(self._block, int(match.group(1)))
            self._blocks = max(self._blocks, int(match.group(2)))
            if self._blocks:
                self.percent_frame = max(self.percent_frame, 100 * self._block // self._blocks)
        if self._ALL_DONE.search(text):
            if self.frames > 1:
                self.frame, self.percent_frame = self.frames, 0
            else:
                self.percent_frame = 100
        elif self._FRAME_DONE.search(text):
            self.frame += 1
            self.percent_frame = 0
        if match or (self.frame, self.percent_frame) != before:
            self.frame_progress()


class HbatchRedshiftParser(RedshiftParser):
    """hbatch rendering with Redshift: Redshift's progress, both programs' flags."""

    name = "hbatch_redshift"
    error_strings = (*_REDSHIFT_ERRORS, *HbatchParser.error_strings)
    warning_strings = HbatchParser.warning_strings


class VrayParser(LineParser):
    """V-Ray standalone: ``Rendering image...:  45.32%`` is the task's percentage."""

    name = "vray"
    progress_keys = ("Rendering image",)
    _PROGRESS = re.compile(r"Rendering image.*:\s+([0-9]{1,3}(?:\.[0-9]+)?)\s*%")

    def line(self, text: str) -> None:
        match = self._PROGRESS.search(text)
        if match:
            self.task_progress(float(match.group(1)))


class MentalrayParser(LineParser):
    """mental ray: ``JOB 0.3 progr:  45.3% rendered on host`` is the task's percentage."""

    name = "mentalray"
    progress_keys = ("progr:",)
    _PROGRESS = re.compile(r"JOB.*progr:\s*([0-9]{1,3}(?:\.[0-9]+)?)\s*%\s*rendered on")

    def line(self, text: str) -> None:
        match = self._PROGRESS.search(text)
        if match:
            self.task_progress(float(match.group(1)))


# --- Maya --------------------------------------------------------------------------------

_MAYA_ERRORS = ("Frame aborted", "Frame rendering aborted", "Fatal Error", "Maya exited with status 210",
                "failed to render", "(kFailure)")


class MayaParser(LineParser):
    """Maya's ``Render``: no progress (as in Afanasy), its errors."""

    name = "maya"
    progress_keys = ()
    error_strings = _MAYA_ERRORS


class MayaArnoldParser(MayaParser):
    """Maya with MtoA: Arnold's ``N% done`` is the frame's part; 100 % ends a frame."""

    name = "maya_arnold"
    progress_keys = ("% done",)
    error_strings = (*_MAYA_ERRORS, "[mtoa] Failed batch render")

    def line(self, text: str) -> None:
        match = ArnoldParser._DONE.search(text)
        if match:
            self.percent_frame = int(float(match.group(1)))
            if self.percent_frame >= 100 and self.frames > 1:
                self.frame += 1
                self.percent_frame = 0
            self.frame_progress()


class MayaRedshiftParser(RedshiftParser):
    """Maya with Redshift: Redshift's progress, both programs' errors."""

    name = "maya_redshift"
    error_strings = (*_MAYA_ERRORS, *_REDSHIFT_ERRORS)


class MayaMentalParser(MayaParser):
    """Maya with mental ray: ``SCEN ... begin scene preprocessing for frame N`` starts a frame,
    mental ray's ``progr: N% rendered on`` is its part."""

    name = "maya_mental"
    progress_keys = ("SCEN", "progr:")
    _FRAME = re.compile(r"SCEN.*progr: begin scene preprocessing for frame (-?[0-9]+)")

    def __init__(self, frames: int = 1) -> None:
        super().__init__(frames)
        self._started = 0

    def line(self, text: str) -> None:
        match = self._FRAME.search(text)
        if match:
            if self._started:
                self.frame += 1
                self.percent_frame = 0
            self._started += 1
            self.frame_progress()
        match = MentalrayParser._PROGRESS.search(text)
        if match:
            self.percent_frame = int(float(match.group(1)))
            self.frame_progress()


class MayaDelightParser(MayaParser):
    """Maya with 3Delight: ``Frame N: caching geometry:`` starts a frame."""

    name = "maya_delight"
    progress_keys = ("caching geometry:",)
    _FRAME = re.compile(r"Frame -?[0-9]+: caching geometry:")

    def line(self, text: str) -> None:
        if self._FRAME.search(text):
            self.frame_started()
            self.frame_progress()


class MayaFumeFxParser(MayaParser):
    """Maya simulating FumeFX: ``FumeFX: Frame: N`` starts a frame."""

    name = "mayafumefx"
    progress_keys = ("FumeFX: Frame: ",)
    error_strings = (*_MAYA_ERRORS, "Error: FumeFX is not authorized")

    def line(self, text: str) -> None:
        if "FumeFX: Frame: " in text and self.frame_started():
            self.frame_progress()


class MayaToArnoldParser(MayaParser):
    """Maya exporting .ass files: ``writing scene to FILE`` per frame; Maya's and Arnold's errors."""

    name = "mayatoarnold"
    progress_keys = ("writing scene to",)
    error_strings = (*_MAYA_ERRORS, *ArnoldParser.error_strings)
    warning_strings = ArnoldParser.warning_strings

    def line(self, text: str) -> None:
        if "writing scene to" in text:
            self.frame += 1
            self.frame_progress()


class MayaToVrayParser(AfanasyMarkers):
    """Maya exporting .vrscene files: ``Appending`` per frame, ``Render complete`` ends a layer
    (frames count again), CGRU's ``PROGRESS: N%``."""

    name = "mayatovray"
    progress_keys = ("FRAME: ", "PROGRESS: ", "Appending ", "Render complete")

    def line(self, text: str) -> None:
        if "Appending " in text and self.frame_started():
            self.frame_progress()
        if "Render complete" in text:
            self._frame_seen, self.frame = False, 0
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = int(float(match.group(1)))
            self.frame_progress()


# --- compositing, 3D, video ------------------------------------------------------------


class FfmpegParser(LineParser):
    """ffmpeg: ``Duration: 00:01:02.03`` of the input, then ``frame=  N ... time=00:00:31.01`` as it
    encodes: the task's percentage is time over duration (or frames over ``Frames: N`` when told).
    An empty output is a bad result; a file it cannot open an error; ``invalid`` a warning."""

    name = "ffmpeg"
    progress_keys = ("Frames:", "Duration:", "frame=", "time=")
    error_strings = ("impossible to open", "no such file or directory")
    warning_strings = ("invalid",)
    bad_result_strings = ("output file is empty",)
    _DURATION = re.compile(r"Duration: *([0-9]+):([0-9]{2}):([0-9]{2}(?:\.[0-9]+)?)")
    _FRAMES = re.compile(r"Frames: *([0-9]+)")
    _TIME = re.compile(r"time=([0-9]+):([0-9]{2}):([0-9]{2}(?:\.[0-9]+)?)")
    _FRAME = re.compile(r"frame= *([0-9]+) ")

    def __init__(self, frames: int = 1) -> None:
        super().__init__(frames)
        self._duration = 0.0
        self._total_frames = 0

    @staticmethod
    def _seconds(match: re.Match[str]) -> float:
        return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))

    def line(self, text: str) -> None:
        match = self._FRAMES.search(text)
        if match:
            self._total_frames = int(match.group(1))
        match = self._DURATION.search(text)
        if match and not self._duration:  # the first input's
            self._duration = self._seconds(match)
        # A status line may hold several updates when the terminal's \r was lost: the last counts.
        if self._total_frames:
            frames = self._FRAME.findall(text)
            if frames:
                self.task_progress(min(100.0, 100.0 * int(frames[-1]) / self._total_frames))
            return
        times = list(self._TIME.finditer(text))
        if times and self._duration > 0:
            self.task_progress(min(100.0, 100.0 * self._seconds(times[-1]) / self._duration))


class RvioParser(LineParser):
    """RV's rvio: ``Writing frame 12 (45.23% done)``."""

    name = "rvio"
    progress_keys = ("Writing frame",)
    _PROGRESS = re.compile(r"Writing frame -?[0-9]+ \(([0-9]+(?:\.[0-9]+)?)% done\)")

    def line(self, text: str) -> None:
        match = self._PROGRESS.search(text)
        if match:
            self.task_progress(float(match.group(1)))


class FusionParser(LineParser):
    """Fusion's render node: ``Rendered frame 12 (3 of 10), took 1.2 secs``; ``Closing outstanding
    documents`` means the render is over (Fusion may not exit by itself): the task is done."""

    name = "fusion"
    progress_keys = ("Rendered frame",)
    error_strings = ("Error ",)
    finished_strings = ("Closing outstanding documents",)
    _FRAME = re.compile(r"Rendered frame -?[0-9]+ \(([0-9]+) of ([0-9]+)\)")

    def line(self, text: str) -> None:
        match = self._FRAME.search(text)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            if 0 < total and done <= total:
                self.frames, self.frame, self.percent_frame = total, done, 0
                self.frame_progress()


class AfterFxParser(LineParser):
    """aerender: ``PROGRESS:  0:00:00:05 (6): 1 Seconds`` once a frame is rendered (its timecode,
    number and time); a run that never printed a ``PROGRESS`` line rendered nothing: a bad result."""

    name = "afterfx"
    progress_keys = ("PROGRESS",)
    error_strings = ("aerender Error", "After Effects error", "Unable to Render")
    _FRAME = re.compile(r"PROGRESS:\s+[0-9:;]+ \(-?[0-9]+\): [0-9]+ Seconds")

    def __init__(self, frames: int = 1) -> None:
        super().__init__(frames)
        self._any_progress = False

    def line(self, text: str) -> None:
        if "PROGRESS" in text:
            self._any_progress = True
        if self._FRAME.search(text):
            self.frame += 1
            self.frame_progress()

    def ended(self) -> None:
        if not self._any_progress:
            self._keep(self.bad_results, "aerender printed no PROGRESS line: nothing was rendered")


class C4dParser(LineParser):
    """Cinema 4D's command line: ``Rendering frame N`` and ``Progress: N%``."""

    name = "c4d"
    progress_keys = ("Progress: ", "Rendering frame")
    error_strings = ("Files cannot be written - please check output paths!", "Error rendering project")
    _PROGRESS = re.compile(r"Progress: ([0-9]+)%")
    _FRAME = re.compile(r"Rendering frame (-?[0-9]+)")

    def __init__(self, frames: int = 1) -> None:
        super().__init__(frames)
        self._first: int | None = None

    def line(self, text: str) -> None:
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()
        match = self._FRAME.search(text)
        if match:
            number = int(match.group(1))
            if self._first is None:
                self._first = number
            if number - self._first != self.frame:
                self.frame, self.percent_frame = number - self._first, 0  # a new frame starts at 0 %
            self.frame_progress()


class ClarisseParser(LineParser):
    """Clarisse's cnode: ``Progress for IMAGE: N%`` and ``Saving Image:`` per frame."""

    name = "clarisse"
    progress_keys = ("Progress for ", "Saving Image:")
    _PROGRESS = re.compile(r"Progress for .*: ([0-9]+)%")

    def line(self, text: str) -> None:
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()
        if "Saving Image:" in text:
            self.frame += 1
            self.percent_frame = 0
            self.frame_progress()


class MaxParser(LineParser):
    """3ds Max's 3dsmaxcmd: ``Frame N completed`` per frame, ``progr: N% rendered`` within it."""

    name = "max"
    progress_keys = ("completed", "progr:")
    error_strings = ("Error occured while rendering job.",)
    _DONE = re.compile(r"Frame -?[0-9]+ completed")
    _PROGRESS = re.compile(r"progr:\s*([0-9]{1,3})(?:\.[0-9]+)?\s*%\s*rendered")

    def line(self, text: str) -> None:
        if self._DONE.search(text):
            self.frame += 1
            self.percent_frame = 0
            self.frame_progress()
            return
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()


class LightwaveParser(LineParser):
    """LightWave's LWSN: ``Render Complete N%`` within a frame, ``Finished frame: N`` ends it."""

    name = "lightwave"
    progress_keys = ("Beginning frame:", "Render Complete", "Finished frame:")
    _PROGRESS = re.compile(r"Render Complete ([0-9]{1,3})%")
    _DONE = re.compile(r"Finished frame: -?[0-9]+")

    def line(self, text: str) -> None:
        if "Beginning frame:" in text:
            self.percent_frame = 0
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = max(self.percent_frame, int(match.group(1)))
            self.frame_progress()
        if self._DONE.search(text):
            self.frame += 1
            self.percent_frame = 0
            self.frame_progress()


class XsiParser(LineParser):
    """Softimage XSI batch: ``Rendering frame N`` per frame, mental ray's ``progr: N% rendered``."""

    name = "xsi"
    progress_keys = ("Rendering frame", "progr:")
    _FRAME = re.compile(r"Rendering frame -?[0-9]+")
    _PROGRESS = re.compile(r"progr:\s*([0-9]{1,3})(?:\.[0-9]+)?\s*%\s*rendered")

    def line(self, text: str) -> None:
        if self._FRAME.search(text):
            if self.frame_started():
                self.percent_frame = 0
            self.frame_progress()
            return
        match = self._PROGRESS.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()


class XsiArnoldParser(XsiParser):
    """XSI with SItoA: ``: Rendering frame N``, ``Skipping Frame N``, Arnold's ``N% done``,
    ``Render completed`` (the task is at 100 %)."""

    name = "xsi_arnold"
    progress_keys = ("Rendering frame", "progr:", "Skipping Frame", "% done", "Render completed ")
    _SKIP = re.compile(r"Skipping Frame -?[0-9]+")

    def line(self, text: str) -> None:
        if self._SKIP.search(text):
            self.frame += 1
            self.frame_progress()
            return
        if self._FRAME.search(text):
            super().line(text)
            return
        match = ArnoldParser._DONE.search(text)
        if match:
            self.percent_frame = int(float(match.group(1)))
            self.frame_progress()
        if "Render completed " in text:
            self.frame, self.percent_frame = self.frames, 0
            self.frame_progress()


class XsiRedshiftParser(XsiParser):
    """XSI with Redshift: ``: Rendering frame N``, ``N skipped``, Redshift's blocks, ``Render completed``."""

    name = "xsi_redshift"
    progress_keys = ("Rendering frame", "progr:", "skipped", "Block", "Render completed ")
    _SKIP = re.compile(r"[0-9]+ skipped")

    def line(self, text: str) -> None:
        if self._SKIP.search(text):
            self.frame += 1
            self.frame_progress()
            return
        match = RedshiftParser._BLOCK.search(text)
        if match and int(match.group(2)):
            self.percent_frame = max(self.percent_frame, 100 * int(match.group(1)) // int(match.group(2)))
            self.frame_progress()
        if self._FRAME.search(text):
            super().line(text)
        if "Render completed " in text:
            self.frame, self.percent_frame = self.frames, 0
            self.frame_progress()


class YafrayParser(LineParser):
    """YafaRay: ``Render pass: [#####        ]``: the share of ``#`` is the percentage."""

    name = "yafray"
    progress_keys = ("Render pass:",)
    _BAR = re.compile(r"Render pass: \[([# ]*)\]?")

    def line(self, text: str) -> None:
        match = self._BAR.search(text)
        if match:
            bar = match.group(1)
            width = len(bar) if text.endswith("]") else 13  # Afanasy's bar: 13 marks
            if width:
                self.task_progress(min(100, 100 * bar.count("#") // width))


# --- file transfers ----------------------------------------------------------------------


class RsyncParser(LineParser):
    """rsync ``--progress``: ``  1,234,567  45%  1.23MB/s    0:00:01``."""

    name = "rsync"
    progress_keys = ("%",)
    _PERCENT = re.compile(r"(?<![0-9.])([0-9]{1,3})%")

    def line(self, text: str) -> None:
        match = self._PERCENT.search(text)
        if match and int(match.group(1)) <= 100:
            self.percent_frame = int(match.group(1))
            self.frame_progress()


class CurlParser(LineParser):
    """curl's progress meter: twelve columns, the first the percentage (`` 45 1234k   45  556k ...``)."""

    name = "curl"
    progress_keys = (":",)
    _COLUMN = re.compile(r"(?:[0-9.:]+[kMGTP]?|--:--:--)$")

    def line(self, text: str) -> None:
        columns = text.split()
        if len(columns) == 12 and all(self._COLUMN.match(c) for c in columns) and columns[0].isdigit():
            self.percent_frame = int(columns[0])
            self.frame_progress()


class AwscliParser(LineParser):
    """aws s3 cp: ``Completed 3 of 10 part(s) with 1 file(s) remaining``."""

    name = "awscli"
    progress_keys = (" part",)
    _PARTS = re.compile(r"([0-9]+) of ([0-9]+) part")

    def line(self, text: str) -> None:
        found = self._PARTS.findall(text)
        if found and int(found[-1][1]):
            self.percent_frame = 100 * int(found[-1][0]) // int(found[-1][1])
            self.frame_progress()


class RedlineParser(LineParser):
    """RED's REDline: `` 0.45`` is 45 % of the frame."""

    name = "redline"
    progress_keys = ("0.",)
    _FRACTION = re.compile(r"(?:^|\s)0\.([0-9]{2})\b")

    def line(self, text: str) -> None:
        match = self._FRACTION.search(text)
        if match:
            self.percent_frame = int(match.group(1))
            self.frame_progress()


class FtrackParser(LineParser):
    """CGRU's ftrack upload script: ``FTRACK ERROR`` lines."""

    name = "ftrack"
    progress_keys = ()
    error_strings = ("FTRACK ERROR",)


class ShotgunParser(LineParser):
    """CGRU's Shotgun upload script: ``SHOTGUN ERROR`` lines."""

    name = "shotgun"
    progress_keys = ()
    error_strings = ("SHOTGUN ERROR",)


def _named(cls: type[LineParser], name: str) -> type[LineParser]:
    """``cls`` under another of CGRU's names (a parser CGRU ships twice)."""
    return type(cls.__name__ + "_" + name, (cls,), {"name": name, "__doc__": cls.__doc__})


#: Every CGRU-named parser farmnet ships (blender's are in farmnet.render.parsers), by name.
CGRU_PARSERS: Mapping[str, Callable[[], LineParser]] = MappingProxyType({
    cls.name: cls
    for cls in (
        AfanasyMarkers, NukeParser, NatronParser, MantraParser, KarmaParser, HbatchParser,
        HbatchMantraParser, HbatchKarmaParser, HbatchPrmanParser, HbatchRedshiftParser,
        HoudiniToArnoldParser, ArnoldParser, PrmanParser, RedshiftParser, VrayParser, MentalrayParser,
        MayaParser, MayaArnoldParser, MayaRedshiftParser, MayaMentalParser, MayaDelightParser,
        MayaFumeFxParser, MayaToArnoldParser, MayaToVrayParser, FfmpegParser, RvioParser, FusionParser,
        AfterFxParser, C4dParser, ClarisseParser, MaxParser, LightwaveParser, XsiParser, XsiArnoldParser,
        _named(XsiArnoldParser, "xsi_arnold_watermarked"), XsiRedshiftParser, YafrayParser, RsyncParser,
        CurlParser, AwscliParser, RedlineParser, FtrackParser, ShotgunParser,
    )
})
