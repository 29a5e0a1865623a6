"""Lists that scale: the query of a list page (filters, sort, page) read from and written
back to its URL, so a view can be bookmarked; sortable column heads, a pager, rows that
the site's script can patch one by one (``data-key``), a check box per row and the bulk
actions bar.

A page is ``?page=N&per=M`` (M one of PER_PAGE), its order ``?sort=column`` or
``?sort=-column`` (descending); every other argument is a filter. ``?rows=K1,K2`` gives
only those rows (as ``<table><tbody>``): the script asks for the rows an event changed.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.web.template import Tag, tags

from farmnet.web.layout import attributes
from farmnet.web.routing import Call, HTTPError

__all__ = ["BulkAction", "ListView", "bulk_bar", "list_table", "pager", "rows_only"]

PER_PAGE = (25, 50, 100, 200, 500)
#: Columns sorted A to Z at first.
TEXT_COLUMNS = frozenset({"name", "user", "project", "department", "state", "host", "platform", "owner",
                          "task", "solving"})
#: Rows asked for by key at once, at most (``?rows=``).
MAX_ROWS = 500


@attrs.frozen
class ListView:
    """A list page's query as read from its URL."""

    path: str
    sort: str
    descending: bool
    page: int
    per: int
    #: Filters given (name → value), in the URL's order of FILTER names.
    filters: Mapping[str, str]

    @classmethod
    def read(cls, call: Call, path: str, sorts: Iterable[str], default_sort: str,
             filters: Sequence[str], per: int = 50) -> ListView:
        sort = call.arg("sort", default_sort) or default_sort
        column = sort.lstrip("-")
        known = tuple(sorts)
        if column not in known:
            raise HTTPError(400, f"sort: one of {', '.join(known)} (-column: descending); got {sort!r}")
        page = call.int_arg("page", 1, 1, 10**7) or 1
        size = call.int_arg("per", per, 1, max(PER_PAGE)) or per
        if size not in PER_PAGE:
            raise HTTPError(400, f"per: one of {', '.join(map(str, PER_PAGE))}")
        given = {name: value for name in filters if (value := call.arg(name)) is not None}
        return cls(path, column, sort.startswith("-"), page, size, given)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per

    def url(self, **changes: Any) -> str:
        """This view's URL with ``changes`` (None drops an argument)."""
        args: dict[str, Any] = dict(self.filters)
        args["sort"] = ("-" if self.descending else "") + self.sort
        if self.page != 1:
            args["page"] = self.page
        if self.per != 50:
            args["per"] = self.per
        args.update(changes)
        query = urllib.parse.urlencode({k: v for k, v in args.items() if v not in (None, "")})
        return f"{self.path}?{query}" if query else self.path

    def head(self, label: str, column: str | None, numeric: bool = False) -> Tag:
        """A column head: a link sorting by ``column`` (again: the other way)."""
        cls = "num" if numeric else None
        if column is None:
            return tags.th(label, **attributes(class_=cls))
        # A first click sorts text A to Z and figures largest first; the next, the other way.
        descending = not self.descending if column == self.sort else column not in TEXT_COLUMNS
        arrow = ""
        if column == self.sort:
            arrow = " ▼" if self.descending else " ▲"
        link = tags.a(label, arrow, href=self.url(sort=("-" if descending else "") + column, page=None),
                      **attributes(class_="sorted" if column == self.sort else None))
        return tags.th(link, **attributes(class_=cls, data_sort=column))


def requested_rows(call: Call) -> list[str] | None:
    """The keys of ``?rows=`` (None: the whole page is asked for)."""
    text = call.arg("rows")
    if text is None:
        return None
    keys = [k for k in text.split(",") if k]
    if len(keys) > MAX_ROWS:
        raise HTTPError(400, f"rows: at most {MAX_ROWS} at once")
    return keys


def list_row(key: str, cells: Sequence[Any], numbers: frozenset[int], selectable: bool) -> Tag:
    tds = [tags.td(cell if cell is not None else "", **attributes(class_="num" if i in numbers else None))
           for i, cell in enumerate(cells)]
    if selectable:
        tds.insert(0, tags.td(tags.input(type="checkbox", class_="pick", **{"aria-label": "select"}),
                              class_="pick"))
    return tags.tr(tds, **{"data-key": key})


def list_table(view: ListView, heads: Sequence[tuple[str, str | None, bool]], rows: Iterable[Tag], *,
               selectable: bool, empty: str, class_: str) -> Tag:
    """The table: ``heads`` are (label, sort column or None, numeric)."""
    ths = [view.head(label, column, numeric) for label, column, numeric in heads]
    if selectable:
        ths.insert(0, tags.th(tags.input(type="checkbox", class_="pick-all", **{"aria-label": "select all"}),
                              class_="pick"))
    body = list(rows)
    if not body:
        body = [tags.tr(tags.td(empty, colspan=str(len(ths)), class_="muted"))]
    return tags.div(tags.table(tags.thead(tags.tr(ths)), tags.tbody(body), class_=f"list {class_}"),
                    class_="table-wrap")


def rows_only(rows: Iterable[Tag]) -> Tag:
    """Just rows, for the script to put in place of those with the same keys."""
    return tags.table(tags.tbody(list(rows)), id="rows")


def pager(view: ListView, total: int, shown: int) -> Tag:
    last = max(1, (total + view.per - 1) // view.per)
    first_row = view.offset + 1 if shown else 0
    links: list[Any] = []
    if view.page > 1:
        links += [tags.a("« first", href=view.url(page=None), rel="first"), " ",
                  tags.a("‹ previous", href=view.url(page=view.page - 1 if view.page > 2 else None),
                         rel="prev"),
                  " "]
    links.append(tags.span(f"{first_row:,}–{view.offset + shown:,} of {total:,}", class_="count"))
    if view.page < last:
        links += [" ", tags.a("next ›", href=view.url(page=view.page + 1), rel="next"), " ",
                  tags.a("last »", href=view.url(page=last), rel="last")]
    sizes = [[tags.a(str(n), href=view.url(per=n if n != 50 else None, page=None),
                     **attributes(class_="current" if n == view.per else None)), " "] for n in PER_PAGE]
    return tags.div(tags.span(links), tags.span(" · per page: ", sizes, class_="muted"), class_="pager")


@attrs.frozen
class BulkAction:
    label: str
    action: str
    confirm: str | None = None
    danger: bool = False
    prompt: str | None = None


def bulk_bar(item: str, actions: Sequence[BulkAction]) -> Tag:
    """Buttons acting on the rows checked (the script sends one ``/api/act`` per item, or
    per block for tasks, and shows each result)."""
    buttons = [tags.button(a.label, type="button", disabled="", **attributes(
        data_bulk=json.dumps({"item": item, "action": a.action}), data_confirm=a.confirm,
        data_prompt=a.prompt, class_="danger" if a.danger else None)) for a in actions]
    return tags.div(tags.div(tags.span("0 selected", class_="picked"), buttons, class_="bulk actions",
                             **{"data-item": item}),
                    tags.div(id="bulk-results", **{"aria-live": "polite"}))


def select_filter(name: str, choices: Iterable[str], current: str | None, label: str | None = None) -> Tag:
    options = [tags.option(c, value=c, **attributes(selected=c == current and "selected")) for c in choices]
    return tags.label(label or name, tags.select(tags.option("(all)", value=""), options, name=name))


def text_filter(name: str, current: str | None, label: str, placeholder: str = "") -> Tag:
    return tags.label(label, tags.input(type="search", name=name, value=current or "",
                                        placeholder=placeholder))


def filter_form(view: ListView, fields: Sequence[Tag]) -> Tag:
    """The filters as a GET form (so the URL keeps them); the sort and page size stay."""
    keep = [tags.input(type="hidden", name="sort", value=("-" if view.descending else "") + view.sort)]
    if view.per != 50:
        keep.append(tags.input(type="hidden", name="per", value=str(view.per)))
    return tags.form(fields, keep, tags.button("show", type="submit"), method="get", action=view.path,
                     class_="filters")
