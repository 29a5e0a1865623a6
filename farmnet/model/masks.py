"""Masks: Afanasy's regular expressions over render, job and block names, in linear time.

A mask (``hosts_mask``, ``hosts_mask_exclude``, ``depend_mask``, ``depend_mask_global``,
``tasks_depend_mask``, a user's hosts masks) must match the whole name, as in Afanasy.
Python's `re` backtracks: ``(a+)+$`` against ``aaaa…a!`` takes seconds per check, and the
scheduler checks on the reactor for every render, user, job and block. RE2 (google-re2)
matches in time linear in the name, with memory bounded by ``max_mem``, so no check can
stall the server. RE2 has no backreferences and no lookaround: a mask using them is refused
where it comes in (submit, ``set``), naming its key. The scheduler asks the same
questions on every solve, so answers are remembered per (mask, name), up to a bound.
"""

from __future__ import annotations

import re2

#: Longer masks are refused: matching costs up to (name length × mask length) when RE2
#: falls back from its DFA, so both bounded keeps every check bounded.
MAX_MASK_LENGTH = 4096
#: Answers remembered per farm; the whole memory is dropped when full (cheap, bounded).
ANSWERS = 200_000
#: Compiled masks kept for reuse (jobs with the same mask share one).
COMPILED = 10_000


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors come back as exceptions, with the mask's key
    return options


def check_mask(text: str) -> str:
    """The mask, if RE2 compiles it; otherwise a `ValueError` that says why."""
    _compile(text)
    return text


def _compile(text: str) -> re2._Regexp:
    if len(text) > MAX_MASK_LENGTH:
        raise ValueError(f"a mask is at most {MAX_MASK_LENGTH} characters, this one has {len(text)}")
    try:
        return re2.compile(text, options=_options())
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"invalid regular expression {text!r}: {reason} (masks are RE2 regular "
                         "expressions: no backreferences, no lookahead or lookbehind)") from None


class _Answers(dict[str, bool]):
    """One mask's answers by name; a name not asked yet is matched by RE2 (`__missing__`),
    so a remembered answer costs one dict lookup in C."""

    __slots__ = ("masks", "regex")

    def __init__(self, regex: re2._Regexp, masks: Masks) -> None:
        super().__init__()
        self.regex = regex
        self.masks = masks

    def __missing__(self, name: str) -> bool:
        answer = self.regex.fullmatch(name) is not None
        self.masks.remember(self, name, answer)
        return answer


class Mask:
    """A compiled mask: ``fullmatch(name)`` is True when the mask matches the whole name."""

    __slots__ = ("fullmatch", "pattern")

    def __init__(self, pattern: str, regex: re2._Regexp, masks: Masks) -> None:
        self.pattern = pattern
        self.fullmatch = _Answers(regex, masks).__getitem__

    def __repr__(self) -> str:
        return f"Mask({self.pattern!r})"


class Masks:
    """Compiles masks (once per pattern) and remembers their answers; one per farm.

    At most ``answers`` answers are kept over all masks: when full, all are forgotten
    (cheap, and a forgotten answer costs one RE2 match)."""

    def __init__(self, answers: int = ANSWERS, compiled: int = COMPILED) -> None:
        self.max_answers = answers
        self.max_compiled = compiled
        self._compiled: dict[str, Mask] = {}
        self._holding: list[_Answers] = []
        #: Answers kept now, and answers RE2 computed since the start (benchmarks, tests).
        self.kept = 0
        self.evaluated = 0

    def compile(self, pattern: str) -> Mask | None:
        """None for an empty mask (no restriction). Raises `ValueError` for one RE2 refuses:
        masks are checked where they come in, so here that is a bug or an old store."""
        if not pattern:
            return None
        mask = self._compiled.get(pattern)
        if mask is None:
            if len(self._compiled) >= self.max_compiled:
                self._compiled.clear()  # masks in use keep their compiled form
            mask = self._compiled[pattern] = Mask(pattern, _compile(pattern), self)
        return mask

    def remember(self, answers: _Answers, name: str, answer: bool) -> None:
        self.evaluated += 1
        if self.kept >= self.max_answers:
            for held in self._holding:
                held.clear()
            self._holding.clear()
            self.kept = 0
        if not answers:
            self._holding.append(answers)
        answers[name] = answer
        self.kept += 1
