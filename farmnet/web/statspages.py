"""Statistics pages (Afanasy's statistics site, served by the farm itself) and their JSON.

Every figure comes from :class:`farmnet.stats.queries.StatsQueries` (parameterised SQL,
choices checked there too); here each query argument is validated first and a bad one is a
400 naming it. Pages:

- ``/stats``: graphs (SVG, drawn by :mod:`farmnet.web.charts`): task runs, render time
  and errors per minute/hour/day/week by service, run time per service, render
  utilisation; the groups with most errors;
- ``/stats/tasks``: task runs grouped by user, service, folder (a tree: a folder's row
  opens the level under it), host or job, with their graph and the latest runs;
- ``/stats/jobs``: finished and deleted jobs grouped by user, service, folder, host, job
  name, project or department, and the latest ones;
- ``/stats/logs``: the farm's events (job created/done/deleted, render online/offline...);
- ``/stats/graph.svg?chart=...``: one graph as an SVG picture.

Time filters: ``since`` and ``until`` as ``30m``, ``24h``, ``7d``, ``4w`` (that long
ago), ``2024-05-01`` or ``2024-05-01T12:00`` (server local time) or seconds since the epoch;
plus ``user``, ``service``, ``host``, ``folder`` (and everything under it).

When statistics are off (disabled, no PostgreSQL, database not reachable yet) the pages
say so with the statistics service's own status line, with HTTP 503.
``/api/stats/QUERY`` answers every query as JSON (``{"result": rows}``).
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.template import Tag, tags

from farmnet.stats.db import describe_error
from farmnet.stats.queries import GROUPS, INTERVALS, LOG_TYPES, Filter, QueryError, StatsQueries
from farmnet.web import charts
from farmnet.web.charts import duration, number, percent
from farmnet.web.context import WebContext
from farmnet.web.layout import attributes, fmt_time, page_reply, table
from farmnet.web.routing import Call, HTTPError, Reply, json_reply

__all__ = ["Params", "StatsPages", "StatsUnavailable", "auto_interval", "parse_time"]

log = Logger()

UNITS = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400})
RELATIVE = re.compile(r"(\d{1,6}(?:\.\d+)?)([smhdw])")
EPOCH = re.compile(r"\d{9,11}(?:\.\d+)?")
TASK_GROUPS = tuple(g for g, cols in GROUPS.items() if cols[0])
JOB_GROUPS = tuple(g for g, cols in GROUPS.items() if cols[1])
PERIODS = (("1h", "last hour"), ("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days"), ("365d", "year"))
MAX_ROWS = 1000
SUBNAV = (("/stats", "Graphs"), ("/stats/tasks", "Tasks"), ("/stats/jobs", "Jobs"), ("/stats/logs", "Logs"))
FILTER_FIELDS = ("user", "service", "host", "folder")
XML_PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>\n'
CHARTS = ("runs", "render_time", "errors", "run_time", "utilisation")


def parse_time(name: str, text: str | None, now: float) -> float | None:
    """A time filter: ``24h`` (ago), ``2024-05-01[T12:00]`` (local), epoch seconds, ``now``."""
    if text is None:
        return None
    text = text.strip()
    if text == "now":
        return now
    match = RELATIVE.fullmatch(text)
    if match:
        return now - float(match[1]) * UNITS[match[2]]
    if EPOCH.fullmatch(text):
        return float(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPError(400, f"{name}: {text!r} is not a time: use 24h, 7d (ago), 2024-05-01, "
                             "2024-05-01T12:00 or seconds since the epoch") from None
    return moment.timestamp()


def auto_interval(since: float, until: float) -> str:
    span = until - since
    if span <= 3 * 3600:
        return "minute"
    if span <= 4 * 86400:
        return "hour"
    if span <= 120 * 86400:
        return "day"
    return "week"


@attrs.frozen
class Params:
    """A statistics request's validated arguments (and their text, for forms and links)."""

    filter: Filter
    since: float
    until: float
    text: dict[str, str]
    interval: str


class StatsUnavailable(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def select(name: str, choices: tuple[str, ...], current: str | None, everything: bool = False) -> Tag:
    """A select of ``choices`` with ``current`` selected (and "(all)" first with ``everything``)."""
    options = [tags.option(c, value=c, **attributes(selected=c == current and "selected")) for c in choices]
    return tags.select(tags.option("(all)", value="") if everything else "", options, name=name)


class StatsPages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    # --- plumbing ------------------------------------------------------------------------

    def status(self) -> str:
        stats = self.ctx.stats
        return "off: this server does not run statistics" if stats is None else str(stats.status)

    def queries(self) -> StatsQueries:
        stats = self.ctx.stats
        queries = getattr(stats, "queries", None) if stats is not None else None
        if queries is None:
            raise StatsUnavailable(self.status())
        return queries

    async def run(self, query: Awaitable[Any]) -> Any:
        try:
            return await query
        except QueryError as e:
            raise HTTPError(400, str(e), "QueryError") from None
        except HTTPError:
            raise
        except Exception as e:
            log.warn("web: statistics query failed: {error}", error=describe_error(e))
            raise StatsUnavailable(f"the statistics database did not answer: {describe_error(e)}; "
                                   f"statistics: {self.status()}") from None

    def params(self, call: Call, default_since: str) -> Params:
        now = self.ctx.reactor.seconds()
        text: dict[str, str] = {}
        since_text = call.arg("since", default_since) or default_since
        until_text = call.arg("until")
        since = parse_time("since", since_text, now)
        until = parse_time("until", until_text, now)
        assert since is not None
        text["since"] = since_text
        if until_text is not None:
            text["until"] = until_text
        end = until if until is not None else now
        if end <= since:
            raise HTTPError(400, "until must be after since")
        fields: dict[str, str | None] = {}
        for name in FILTER_FIELDS:
            value = call.arg(name)
            fields[name] = value
            if value is not None:
                text[name] = value
        interval = call.arg("interval")
        if interval is not None:
            if interval not in INTERVALS:
                raise HTTPError(400, f"interval: one of {', '.join(INTERVALS)}")
            text["interval"] = interval
        else:
            interval = auto_interval(since, end)
        return Params(Filter(since=since, until=until, **fields), since, end, text, interval)

    @staticmethod
    def choice(call: Call, name: str, choices: tuple[str, ...], default: str) -> str:
        value = call.arg(name, default) or default
        if value not in choices:
            raise HTTPError(400, f"{name}: one of {', '.join(choices)}")
        return value

    @staticmethod
    def url(path: str, text: dict[str, str], **changes: Any) -> str:
        query = {**text, **{k: str(v) for k, v in changes.items() if v is not None}}
        for k, v in changes.items():
            if v is None:
                query.pop(k, None)
        return path + ("?" + urllib.parse.urlencode(query) if query else "")

    def page(self, call: Call, title: str, path: str, *content: Any, status: int = 200) -> Reply:
        subnav = tags.nav([tags.a(label, href=href, **attributes(class_="current" if href == path else None))
                           for href, label in SUBNAV], class_="sub")
        line = tags.p("statistics: ", self.status(), class_="muted status")
        body = tags.div(tags.h1(title), subnav, line, *content)
        return page_reply(self.ctx, call, title, body, current="/stats", status=status)

    def unavailable(self, call: Call, path: str, status: str) -> Reply:
        off = status.startswith("off")
        heading = "Statistics are off" if off else "Statistics are not available right now"
        reason = status[len("off: "):] if status.startswith("off: ") else status
        banner = tags.div(tags.b(heading + ": "), reason, class_="banner off", id="stats-off")
        return self.page(call, "Statistics", path, banner, status=503)

    def guarded(self, path: str, handler: Callable[[Call], Awaitable[Reply]]) -> Callable[[Call], Any]:
        async def wrapped(call: Call) -> Reply:
            try:
                return await handler(call)
            except StatsUnavailable as e:
                return self.unavailable(call, path, e.status)

        return wrapped

    def filters_form(self, path: str, p: Params, extra: dict[str, tuple[tuple[str, ...], str]]) -> Tag:
        """The filter form; ``extra`` adds selects: name → (choices, current)."""
        def text_input(name: str, placeholder: str) -> Tag:
            return tags.label(name, tags.input(name=name, value=p.text.get(name, ""),
                                               placeholder=placeholder))

        selects = [tags.label(name, select(name, choices, current))
                   for name, (choices, current) in extra.items()]
        periods = tags.p("period: ", [[tags.a(label, href=self.url(path, p.text, since=value, until=None)),
                                       " "] for value, label in PERIODS])
        form = tags.form(text_input("since", "24h, 7d, 2024-05-01"), text_input("until", "now"),
                         [text_input(f, "any") for f in FILTER_FIELDS], selects,
                         tags.button("show", type="submit"), method="get", class_="filters")
        return tags.div(form, periods)

    # --- graphs --------------------------------------------------------------------------

    async def chart(self, name: str, p: Params, by: str) -> Tag:
        q = self.queries()
        f, interval = p.filter, p.interval
        if name in ("runs", "render_time", "errors"):
            rows = await self.run(q.tasks_per_interval(interval, f, by=by))
            value, fmt, what = {"runs": ("runs", number, "Task runs"),
                                "render_time": ("run_time", duration, "Render time"),
                                "errors": ("errors", number, "Errors")}[name]
            return charts.time_bars(rows, interval, value=value, fmt=fmt, since=p.since, until=p.until,
                                    title=f"{what} per {interval} by {by}")
        if name == "run_time":
            rows = await self.run(q.run_time(by, f, limit=30))
            return charts.hbars(rows, label="key", series=(("average", "average"), ("median", "median"),
                                                           ("p90", "90th percentile")),
                                fmt=duration, title=f"Run time of finished tasks by {by}")
        if name == "utilisation":
            window = attrs.evolve(f, since=p.since, until=p.until)
            rows = await self.run(q.render_utilisation(window, limit=60))
            return charts.hbars(rows, label="host", series=(("utilisation", "busy"),), fmt=percent, top=1.0,
                                title="Render utilisation (time running tasks)")
        raise HTTPError(400, f"chart: one of {', '.join(CHARTS)}")

    async def graphs(self, call: Call) -> Reply:
        p = self.params(call, "24h")
        by = self.choice(call, "by", TASK_GROUPS, "service")
        form = self.filters_form("/stats", p, {"interval": (INTERVALS, p.interval), "by": (TASK_GROUPS, by)})
        pictures = [await self.chart(name, p, by) for name in CHARTS]
        errors = await self.run(self.queries().errors(by, p.filter, limit=20))
        errors_table = table(
            [by, ("errors", "num"), ("runs", "num"), ("error ratio", "num"), "last error", "last message"],
            [[r["key"] or "–", str(r["errors"]), str(r["runs"]), percent(r["error_ratio"] or 0),
              fmt_time(r["last_error"]), r["last_message"] or "–"] for r in errors],
            empty="no errors in this period", class_="errors")
        return self.page(call, "Statistics", "/stats", form,
                         tags.div(pictures, class_="charts", id="charts"),
                         tags.h2(f"Most errors by {by}"), errors_table)

    async def graph_svg(self, call: Call) -> Reply:
        p = self.params(call, "24h")
        by = self.choice(call, "by", TASK_GROUPS, "service")
        name = self.choice(call, "chart", CHARTS, "runs")
        try:
            picture = await self.chart(name, p, by)
        except StatsUnavailable as e:
            raise HTTPError(503, f"statistics unavailable: {e.status}") from None
        return Reply(picture, 200, "image/svg+xml; charset=utf-8", prolog=XML_PROLOG)

    # --- tables --------------------------------------------------------------------------

    def key_link(self, path: str, p: Params, group: str, key: Any, depth: int | None) -> Tag:
        if key in (None, ""):
            return tags.span("(none)", class_="muted")
        if group == "folder":
            return tags.a(str(key), href=self.url(path, p.text, folder=key, depth=(depth or 1) + 1))
        if group in FILTER_FIELDS:
            return tags.a(str(key), href=self.url(path, p.text, **{group: key}))
        return tags.span(str(key))

    async def tasks(self, call: Call) -> Reply:
        p = self.params(call, "7d")
        group = self.choice(call, "group", TASK_GROUPS, "user")
        order = self.choice(call, "order", StatsQueries.TASK_ORDERS, "run_time_sum")
        depth = call.int_arg("depth", None, 1, 64) if group == "folder" else None
        limit = call.int_arg("limit", 100, 1, MAX_ROWS) or 100
        errors_only = call.arg("errors") == "1"
        q = self.queries()
        rows = await self.run(q.tasks_table(group, p.filter, order=order, limit=limit, depth=depth))
        text = {**p.text, "group": group, **({"depth": str(depth)} if depth else {})}
        params = attrs.evolve(p, text=text)
        heads = [(group, "key"), ("runs", "runs"), ("done", "done"), ("errors", "errors"),
                 ("render time", "run_time_sum"), ("average", "run_time_avg"), ("longest", None),
                 ("capacity × time", "capacity_time"), ("hosts", None), ("first", None),
                 ("last", "time_last")]
        header = [tags.a(h, href=self.url("/stats/tasks", text, order=o)) if o else h for h, o in heads]
        body_rows = [[self.key_link("/stats/tasks", params, group, r["key"], depth), str(r["runs"]),
                      str(r["done"]), str(r["errors"]), duration(r["run_time_sum"]),
                      duration(r["run_time_avg"]), duration(r["run_time_max"]), number(r["capacity_time"]),
                      str(r["hosts"]),
                      fmt_time(r["time_first"]), fmt_time(r["time_last"])] for r in rows]
        tasks_table = table(header, body_rows, numeric=range(1, 9), empty="no task runs in this period",
                            class_="stats-tasks")
        per_interval = await self.run(q.tasks_per_interval(p.interval, p.filter, by=group, depth=depth))
        picture = charts.time_bars(per_interval, p.interval, since=p.since, until=p.until,
                                   title=f"Task runs per {p.interval} by {group}")
        runs = await self.run(q.tasks(p.filter, errors_only=errors_only, limit=50))
        runs_table = table(["ended", "job", "block", "task", "user", "host", "service", "state",
                            ("run time", "num"), ("exit", "num"), "message"],
                           [[fmt_time(r["time_done"]), f"{r['job_id']}: {r['job_name']}", r["block_name"],
                             r["task_name"], r["user_name"], r["hosts"] or r["host"], r["service"],
                             r["state"],
                             duration(r["run_time"]), "–" if r["exit_code"] is None else str(r["exit_code"]),
                             r["message"] or ""] for r in runs], empty="no task runs", class_="runs")
        form = self.filters_form("/stats/tasks", params, {"group": (TASK_GROUPS, group),
                                                          "interval": (INTERVALS, p.interval)})
        toggle = tags.a("all runs" if errors_only else "failed runs only",
                        href=self.url("/stats/tasks", text, errors=None if errors_only else "1"))
        return self.page(call, "Task statistics", "/stats/tasks", form,
                         tags.h2(f"Task runs by {group}"), tasks_table, picture,
                         tags.h2("Latest failed runs" if errors_only else "Latest runs", " ",
                                 tags.small(toggle)), runs_table)

    async def jobs(self, call: Call) -> Reply:
        p = self.params(call, "30d")
        group = self.choice(call, "group", JOB_GROUPS, "user")
        order = self.choice(call, "order", StatsQueries.JOB_ORDERS, "run_time_sum")
        depth = call.int_arg("depth", None, 1, 64) if group == "folder" else None
        limit = call.int_arg("limit", 100, 1, MAX_ROWS) or 100
        q = self.queries()
        rows = await self.run(q.jobs_table(group, p.filter, order=order, limit=limit, depth=depth))
        text = {**p.text, "group": group, **({"depth": str(depth)} if depth else {})}
        params = attrs.evolve(p, text=text)
        heads = [(group, "key"), ("jobs", "jobs"), ("done", None), ("deleted", None),
                 ("tasks", "tasks_quantity"), ("tasks done", "tasks_done"), ("task errors", None),
                 ("runs", None), ("render time", "run_time_sum"), ("average duration", "duration_avg"),
                 ("last", "time_last")]
        header = [tags.a(h, href=self.url("/stats/jobs", text, order=o)) if o else h for h, o in heads]
        body_rows = [[self.key_link("/stats/jobs", params, group, r["key"], depth), str(r["jobs"]),
                      str(r["done"]), str(r["deleted"]), str(r["tasks_quantity"]), str(r["tasks_done"]),
                      str(r["tasks_error"]), str(r["runs"]), duration(r["run_time_sum"]),
                      duration(r["duration_avg"]), fmt_time(r["time_last"])] for r in rows]
        jobs_table = table(header, body_rows, numeric=range(1, 10), empty="no jobs in this period",
                           class_="stats-jobs")
        latest = await self.run(q.jobs(p.filter, limit=50))
        latest_table = table(["recorded", "job", "user", "project", "state", "why", ("tasks", "num"),
                              ("errors", "num"), ("render time", "num"), "started", "done"],
                             [[fmt_time(r["time_recorded"]), f"{r['job_id']}: {r['job_name']}",
                               r["user_name"], r["project"] or "–", r["state"], r["reason"],
                               f"{r['tasks_done']} / {r['tasks_quantity']}", str(r["tasks_error"]),
                               duration(r["run_time_sum"]), fmt_time(r["time_started"]),
                               fmt_time(r["time_done"])] for r in latest],
                             empty="no jobs", class_="latest-jobs")
        form = self.filters_form("/stats/jobs", params, {"group": (JOB_GROUPS, group)})
        return self.page(call, "Job statistics", "/stats/jobs", form, tags.h2(f"Jobs by {group}"),
                         jobs_table, tags.h2("Latest jobs"), latest_table)

    async def logs(self, call: Call) -> Reply:
        p = self.params(call, "7d")
        kind = call.arg("type")
        if kind is not None and kind not in LOG_TYPES:
            raise HTTPError(400, f"type: one of {', '.join(LOG_TYPES)}")
        subject = call.arg("subject")
        offset = call.int_arg("offset", 0, 0, 1 << 31) or 0
        limit = call.int_arg("limit", 200, 1, MAX_ROWS) or 200
        rows = await self.run(self.queries().logs(p.filter, types=[kind] if kind else [], subject=subject,
                                                  limit=limit, offset=offset))
        text = {**p.text, **({"type": kind} if kind else {}), **({"subject": subject} if subject else {})}
        form = tags.form([tags.label(n, tags.input(name=n, value=text.get(n, ""), placeholder=ph))
                          for n, ph in (("since", "7d"), ("until", "now"), ("subject", "user or render"))],
                         tags.label("type", select("type", LOG_TYPES, kind, everything=True)),
                         tags.button("show", type="submit"), method="get", class_="filters")
        pager = []
        if offset:
            newer = self.url("/stats/logs", text, offset=max(0, offset - limit))
            pager.append(tags.a("« newer", href=newer))
        if len(rows) == limit:
            pager.append(tags.a("older »", href=self.url("/stats/logs", text, offset=offset + limit)))
        logs_table = table(["time", "type", "subject", "object", "info"],
                           [[fmt_time(r["time"]), r["type"], r["subject"] or "–",
                             f"{r['object'] or ''}"
                             + (f" ({r['object_id']})" if r["object_id"] is not None else ""),
                             r["info"] or ""] for r in rows], empty="no events in this period", class_="logs")
        return self.page(call, "Farm log", "/stats/logs", form, logs_table, tags.p(pager))

    # --- JSON ----------------------------------------------------------------------------

    async def api(self, call: Call) -> Reply:
        name = call.groups["query"]
        if name == "status":
            stats = self.ctx.stats
            return json_reply({"result": {"status": self.status(),
                                          "available": getattr(stats, "queries", None) is not None}})
        try:
            q = self.queries()
        except StatsUnavailable as e:
            raise HTTPError(503, f"statistics unavailable: {e.status}", "StatisticsUnavailable") from None
        p = self.params(call, "7d")
        depth = call.int_arg("depth", None, 1, 64)
        limit = call.int_arg("limit", 100, 1, 10_000) or 100
        offset = call.int_arg("offset", 0, 0, 1 << 31) or 0
        f = p.filter
        def group(default: str, choices: tuple[str, ...] = TASK_GROUPS) -> str:
            return self.choice(call, "group", choices, default)

        def order(choices: tuple[str, ...]) -> str:
            return self.choice(call, "order", choices, "run_time_sum")

        window = attrs.evolve(f, since=p.since, until=p.until)
        types = [t for t in (call.arg("type") or "").split(",") if t]
        queries: dict[str, Callable[[], Awaitable[Any]]] = {
            "tasks_table": lambda: q.tasks_table(group("user"), f, order=order(q.TASK_ORDERS), limit=limit,
                                                 depth=depth),
            "jobs_table": lambda: q.jobs_table(group("user", JOB_GROUPS), f, order=order(q.JOB_ORDERS),
                                               limit=limit, depth=depth),
            "tasks": lambda: q.tasks(f, errors_only=call.arg("errors") == "1", limit=limit, offset=offset),
            "jobs": lambda: q.jobs(f, limit=limit, offset=offset),
            "tasks_per_interval": lambda: q.tasks_per_interval(
                p.interval, f, by=self.choice(call, "by", TASK_GROUPS, "service"), depth=depth),
            "run_time": lambda: q.run_time(group("service"), f, limit=limit, depth=depth),
            "errors": lambda: q.errors(group("service"), f, limit=limit, depth=depth),
            "render_utilisation": lambda: q.render_utilisation(window, limit=limit),
            "logs": lambda: q.logs(f, types=types, subject=call.arg("subject"), limit=limit, offset=offset),
        }
        if name not in queries:
            raise HTTPError(404, f"no statistics query {name!r}; one of status, {', '.join(queries)}")
        try:
            rows = await self.run(queries[name]())
        except StatsUnavailable as e:
            raise HTTPError(503, e.status, "StatisticsUnavailable") from None
        return json_reply({"result": rows})

