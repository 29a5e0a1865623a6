"""The frame of every page and the pieces pages share, as twisted.web.template tags.

twisted.web.template escapes every string it flattens (text and attribute values), so data
from the farm (a job name, a task's output, a user name) can never become markup: pages
put it in tags as plain strings, never as raw HTML.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.web.template import Element, Tag, TagLoader, renderer, slot, tags

from farmnet.model.data import TaskState
from farmnet.web.assets import CSS, JS, asset_version
from farmnet.web.context import WebContext
from farmnet.web.routing import Call, Reply, html_reply

__all__ = ["Page", "action_button", "attributes", "fmt_time", "live_page", "progress", "state_badge",
           "table"]

NAV = (("/", "Farm"), ("/jobs", "Jobs"), ("/projects", "Projects"), ("/renders", "Renders"),
       ("/users", "Users"), ("/pools", "Pools"), ("/stats", "Statistics"))
JOB_STATES = tuple(s.value for s in TaskState)
CSS_URL = f"/static/farmnet.css?v={asset_version(CSS)}"
JS_URL = f"/static/farmnet.js?v={asset_version(JS)}"


def attributes(**values: Any) -> dict[str, str]:
    """Keyword attributes that tags cannot take as they are: ``data_seq`` is ``data-seq``,
    ``class_`` is ``class``; None and False leave the attribute out."""
    return {k.rstrip("_").replace("_", "-"): str(v) for k, v in values.items()
            if v is not None and v is not False}


def fmt_time(t: float | None) -> str:
    if not t:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def state_badge(state: str, prefix: str = "s") -> Tag:
    return tags.span(state, class_=f"state {prefix}-{state.split(' ')[0]}")


def progress(percent: int) -> Tag:
    return tags.span(tags.progress(f"{percent}%", value=str(percent), max="100"), " ", f"{percent}%")


def action_button(label: str, item: str, action: str, filters: dict[str, Any], *, values: Any = None,
                  confirm: str | None = None, prompt: str | None = None, default: Any = None,
                  danger: bool = False) -> Tag:
    """A button the site's script turns into ``POST /api/act`` with this body."""
    body: dict[str, Any] = {"item": item, "action": action, "filters": filters}
    if values is not None:
        body["values"] = values
    return tags.button(label, type="button", **attributes(
        data_act=json.dumps(body), data_confirm=confirm, data_prompt=prompt, data_default=default,
        class_="danger" if danger else None))


def _cell(value: Any) -> Any:
    """A cell's content: tags and text as they are, None empty, anything else as text."""
    if value is None:
        return ""
    return value if isinstance(value, Tag | str | list | tuple) else str(value)


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, empty: str = "none",
          class_: str | None = None, numeric: Iterable[int] = ()) -> Tag:
    """A table; a header given as (text, "num"), or a column in ``numeric``, is right-aligned."""
    heads, numbers = [], set(numeric)
    for i, h in enumerate(headers):
        if isinstance(h, tuple):
            h, kind = h
            if kind == "num":
                numbers.add(i)
        heads.append(tags.th(h, **attributes(class_="num" if i in numbers else None)))
    body = [tags.tr([tags.td(_cell(cell), **attributes(class_="num" if i in numbers else None))
                     for i, cell in enumerate(row)]) for row in rows]
    if not body:
        body = [tags.tr(tags.td(empty, colspan=str(len(heads)), class_="muted"))]
    return tags.table(tags.thead(tags.tr(heads)), tags.tbody(body), **attributes(class_=class_))


class Page(Element):
    """The frame around a page's content: head, navigation, who is logged in."""

    loader = TagLoader(tags.html(lang="en", render="page")(
        tags.head(tags.meta(charset="utf-8"),
                  tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                  tags.title(slot("title"), " · farmnet"), tags.link(rel="stylesheet", href=CSS_URL),
                  tags.script(src=JS_URL, defer="")),
        tags.body(tags.header(tags.a("farmnet", href="/", class_="brand"), tags.transparent(render="nav"),
                              tags.span(class_="spacer"), tags.span(id="live-status"),
                              tags.transparent(render="who")),
                  Tag("main")(slot("content")),  # not among tags' names
                  tags.div(id="flash"))))

    def __init__(self, ctx: WebContext, call: Call, title: str, content: Tag, current: str = "") -> None:
        super().__init__()
        self.ctx, self.call, self.title, self.content, self.current = ctx, call, title, content, current

    @renderer
    def page(self, request: Any, tag: Tag) -> Tag:
        return tag.fillSlots(title=self.title, content=self.content)

    @renderer
    def nav(self, request: Any, tag: Tag) -> list[Tag]:
        return [tags.a(label, href=href, **attributes(class_="current" if href == self.current else None))
                for href, label in NAV]

    @renderer
    def who(self, request: Any, tag: Tag) -> Any:
        call = self.call
        if call.user:
            logout = tags.form(tags.button("log out", type="submit"), method="post", action="/logout")
            return [tags.span("logged in as ", tags.b(call.user)), " ",
                    logout if call.via == "session" else ""]
        if self.ctx.logins:
            return tags.a("log in", href="/login?next=" + urllib.parse.quote(call.local_url(), safe=""))
        return tags.span("read-only", class_="muted")


def page_reply(ctx: WebContext, call: Call, title: str, content: Tag, *, current: str = "",
               status: int = 200) -> Reply:
    """A whole page around ``content``."""
    return html_reply(Page(ctx, call, title, content, current), status)


def live_page(ctx: WebContext, call: Call, title: str, body: Tag, *, watch: str | None, current: str,
              poll_ms: int | None = None, status: int = 200, rows: str | None = None,
              before: Tag | str = "", after: Tag | str = "", refresh_ms: int | None = None) -> Reply:
    """A page whose ``#live`` part follows the farm (the site's script fetches it again when
    an event about ``watch`` comes); ``?partial=1`` gives only that part. With ``rows``
    (job, task, render, user), an event about a row on screen fetches just that row
    (``?rows=KEY``); ``before`` (filters, the bulk bar) and ``after`` (a job's grids, patched
    cell by cell; a task's output, its tail followed) stay put around the live part.
    ``refresh_ms``: at most one fetch of the live part that often (a page of the whole farm)."""
    live = tags.div(body, id="live", **attributes(data_seq=ctx.events.last, data_watch=watch,
                                                   data_poll=poll_ms or None, data_rows=rows,
                                                   data_refresh=refresh_ms))
    if call.arg("partial") == "1":
        return Reply(live, status)
    return page_reply(ctx, call, title, tags.div(before, live, after), current=current, status=status)
