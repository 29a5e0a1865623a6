"""HTML built from escaped parts: every plain string is escaped, only :class:`Markup` is not.

``el("a", "x < y", href="/jobs/1", class_="job")`` gives ``<a href="/jobs/1" class="job">x &lt;
y</a>``: text children and attribute values always go through :func:`html.escape`, so data
from the farm (a job name, a task's output, a user name) can never become markup. The only
way to put raw markup in a page is to make a :class:`Markup` by hand, which this package does
for its own fixed text only (and the SVG that :mod:`farmnet.web.charts` builds the same way).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

__all__ = ["Markup", "el", "escape", "join", "VOID"]

#: Elements without an end tag.
VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "col", "wbr", "source"})


class Markup(str):
    """Text that is already markup (escaped or made here): inserted as it is."""

    __slots__ = ()

    def __add__(self, other: object) -> Markup:
        return Markup(str.__add__(self, escape(other)))

    def __radd__(self, other: object) -> Markup:
        return Markup(str.__add__(escape(other), self))


def escape(value: Any) -> Markup:
    """``value`` as markup: Markup stays, None is empty, anything else is escaped text."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], separator: Any = "") -> Markup:
    sep = escape(separator)
    return Markup(sep.join(_flatten(parts)))


def _flatten(parts: Iterable[Any]) -> Iterable[str]:
    for part in parts:
        if part is None or part is False:
            continue
        if isinstance(part, str | int | float):
            yield escape(part)
        else:
            yield from _flatten(part)


def _attribute(name: str, value: Any) -> str:
    name = name.rstrip("_").replace("_", "-")
    if value is True:
        return f" {name}"
    return f' {name}="{html.escape(str(value), quote=True)}"'


def el(tag: str, *children: Any, **attributes: Any) -> Markup:
    """One element. Attributes: a trailing ``_`` is dropped (``class_``), ``_`` inside
    becomes ``-`` (``data_seq``); None and False leave the attribute out, True writes
    it bare. Children: strings (escaped), numbers, Markup, None (nothing) or iterables."""
    attrs = "".join(_attribute(k, v) for k, v in attributes.items() if v is not None and v is not False)
    if tag in VOID:
        return Markup(f"<{tag}{attrs}>")
    return Markup(f"<{tag}{attrs}>{''.join(_flatten(children))}</{tag}>")
