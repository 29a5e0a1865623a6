"""The farm's lists as pages that scale: jobs, a job's tasks, renders, users and projects,
each a page at a time (sorted, filtered, its state in the URL), rows patched live by key,
checked rows acted on in bulk; and a render's own page.

Jobs come from the model's :class:`~farmnet.model.listing.JobListing` (a page costs the
page, not the farm); a job's tasks, renders and users are sorted per request (one job's
tasks at most, renders and users are few next to tasks).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.web.template import Tag, tags

from farmnet import errors
from farmnet.messages import RenderRecord, TaskRecord, UserRecord
from farmnet.model.listing import JOB_SORTS, JobQuery, JobRow
from farmnet.model.views import render_record, task_record
from farmnet.server.actions import TASK_SORTS, list_tasks_sorted
from farmnet.stats.queries import Filter
from farmnet.web.charts import duration
from farmnet.web.context import WebContext
from farmnet.web.layout import (
    JOB_STATES,
    action_button,
    attributes,
    fmt_time,
    live_page,
    progress,
    state_badge,
)
from farmnet.web.lists import (
    BulkAction,
    ListView,
    bulk_bar,
    filter_form,
    list_row,
    list_table,
    pager,
    requested_rows,
    rows_only,
    select_filter,
    text_filter,
)
from farmnet.web.routing import Call, HTTPError, Reply

__all__ = ["ListPages", "job_actions_compact", "recorded_runs", "resource_cells"]

log = Logger()

JOB_FILTERS = ("q", "user", "state", "project", "department", "branch")
JOB_BULK = (BulkAction("pause", "pause"), BulkAction("resume", "resume"), BulkAction("stop", "stop"),
            BulkAction("restart errors", "restart_errors"),
            BulkAction("restart", "restart", confirm="Restart every task of the {n} selected jobs?"),
            BulkAction("skip", "skip", confirm="Skip every unfinished task of the {n} selected jobs?"),
            BulkAction("priority…", "set_priority", prompt="New priority (0-250) for {n} jobs"),
            BulkAction("delete", "delete", confirm="Delete the {n} selected jobs?", danger=True))
TASK_BULK = (BulkAction("restart", "restart", confirm="Restart the {n} selected tasks?"),
             BulkAction("skip", "skip", confirm="Skip the {n} selected tasks?"))
RENDER_BULK = (BulkAction("pause", "pause"), BulkAction("resume", "resume"), BulkAction("nimby", "nimby"),
               BulkAction("NIMBY", "NIMBY"), BulkAction("free", "free"),
               BulkAction("eject", "eject", confirm="Return the tasks of {n} renders to ready?"),
               BulkAction("heal", "heal"), BulkAction("reset error hosts", "reset_error_hosts"),
               BulkAction("sleep", "sleep", confirm="Put {n} renders to sleep?"), BulkAction("wake", "wake"),
               BulkAction("exit", "exit", confirm="Stop the render process on {n} hosts?", danger=True),
               BulkAction("delete", "delete", confirm="Forget the {n} selected renders?", danger=True))

RENDER_SORTS: Mapping[str, Callable[[RenderRecord], Any]] = {
    "name": lambda r: r.name,
    "state": lambda r: (r.state, r.name),
    "pool": lambda r: (r.pool, r.name),
    "tasks": lambda r: (len(r.tasks), r.name),
    "capacity": lambda r: (r.capacity_used, r.capacity, r.name),
    "cpus": lambda r: (r.cpus, r.name),
    "memory": lambda r: (r.memory_mb, r.name),
    "max_tasks": lambda r: (r.max_tasks, r.name),
    "platform": lambda r: (r.platform, r.name),
    "owner": lambda r: (r.owner, r.name),
    "seen": lambda r: (r.time_seen, r.name),
    "errors": lambda r: (r.errors_in_row, r.name),
}
USER_SORTS: Mapping[str, Callable[[UserRecord], Any]] = {
    "name": lambda u: u.name,
    "jobs": lambda u: (u.jobs, u.name),
    "running": lambda u: (u.running, u.name),
    "capacity": lambda u: (u.running_capacity, u.name),
    "priority": lambda u: (u.priority, u.name),
    "max": lambda u: (u.max_running_tasks, u.name),
    "solving": lambda u: (u.jobs_solving, u.name),
    "registered": lambda u: (u.time_registered, u.name),
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def resource_cells(render: RenderRecord) -> tuple[Any, Any, Any]:
    """CPU, memory and load/disk cells of a render: what it reported with its heartbeats
    (``cpu_percent``, ``mem_used_mb``, ``load_avg``, ...), else what it registered with."""
    res = render.resources
    cores = _number(res.get("cpu_num")) or render.cpus or 0
    percent = _number(res.get("cpu_percent"))
    cpu: Any = f"{int(cores)} cores" if cores else "–"
    if percent is not None:
        cpu = tags.span(tags.progress(value=f"{min(100.0, percent):.0f}", max="100"),
                        f" {percent:.0f}% of {int(cores)}" if cores else f" {percent:.0f}%")
    total = _number(res.get("mem_total_mb")) or render.memory_mb or 0
    used = _number(res.get("mem_used_mb"))
    memory: Any = f"{total / 1024:.0f} GB" if total else "–"
    if used is not None and total:
        memory = tags.span(tags.progress(value=f"{min(used, total):.0f}", max=f"{total:.0f}"),
                           f" {used / 1024:.1f} / {total / 1024:.0f} GB")
    parts = []
    load = res.get("load_avg")
    if isinstance(load, list) and load:
        parts.append("load " + " ".join(str(x) for x in load[:3]))
    swap = _number(res.get("swap_used_mb"))
    if swap:
        parts.append(f"swap {swap:.0f} MB")
    disk = _number(res.get("hdd_free_gb"))
    if disk is not None:
        parts.append(f"disk {disk:.0f} GB free")
    return cpu, memory, ", ".join(parts) or "–"


def user_link(name: str) -> Tag:
    return tags.a(name, href=f"/jobs?user={urllib.parse.quote(name)}")


def render_link(name: str) -> Tag:
    return tags.a(name, href=f"/renders/{urllib.parse.quote(name)}")


def job_actions_compact(job: Any) -> Tag:
    ids = {"id": [job.id]}
    return tags.span(
        action_button("resume", "jobs", "resume", ids) if job.paused
        else action_button("pause", "jobs", "pause", ids),
        action_button("restart errors", "jobs", "restart_errors", ids) if job.counts.get("ERR") else "",
        class_="actions")


class ListPages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    # --- jobs ----------------------------------------------------------------------------

    JOB_HEADS: Sequence[tuple[str, str | None, bool]] = (
        ("id", "id", True), ("name", "name", False), ("user", "user", False), ("project", "project", False),
        ("department", "department", False), ("state", "state", False), ("progress", "progress", False),
        ("done", "done", True), ("running", "running", True), ("errors", "errors", True),
        ("priority", "priority", True), ("created", "created", False))

    def job_row(self, row: JobRow, *, selectable: bool, actions: bool) -> Tag:
        job = row.record
        counts = job.counts
        cells: list[Any] = [
            tags.a(str(job.id), href=f"/jobs/{job.id}"),
            tags.a(job.name, href=f"/jobs/{job.id}", class_="job-name"),
            user_link(job.user_name), row.project or "–", row.department or "–",
            state_badge(job.state), progress(row.progress),
            f"{counts.get('DON', 0) + counts.get('SKP', 0)} / {job.tasks}",
            str(counts.get("RUN", 0) + counts.get("WRC", 0)), str(counts.get("ERR", 0)), str(job.priority),
            fmt_time(job.time_creation)]
        if actions:
            cells.append(job_actions_compact(job))
        return list_row(f"job:{job.id}", cells, frozenset({0, 7, 8, 9, 10}), selectable)

    def jobs_listing(self, rows: list[JobRow], view: ListView, total: int, *, bulk: bool) -> Tag:
        # Checked rows and the bulk bar act: no buttons on every row (fewer tags to draw).
        body = [self.job_row(r, selectable=bulk, actions=False) for r in rows]
        heads = self.JOB_HEADS
        return tags.div(pager(view, total, len(rows)),
                        list_table(view, heads, body, selectable=bulk, empty="no jobs", class_="jobs"),
                        pager(view, total, len(rows)))

    async def jobs(self, call: Call) -> Reply:
        farm = self.ctx.farm
        view = ListView.read(call, "/jobs", JOB_SORTS, "-id", JOB_FILTERS)
        f = view.filters
        state = f.get("state")
        if state is not None and state not in JOB_STATES:
            raise HTTPError(400, f"state: one of {', '.join(JOB_STATES)}")
        facets = {k: frozenset([v]) for k, v in f.items() if k != "q"}
        query = JobQuery(facets, f.get("q", ""), view.sort, view.descending, view.offset, view.per)
        wanted = requested_rows(call)
        bulk = self.ctx.logins
        if wanted is not None:
            ids = frozenset(int(k) for k in wanted if k.isdigit())
            rows, _ = farm.query_jobs(JobQuery({"id": ids}, limit=len(ids)))
            return Reply(rows_only(self.job_row(r, selectable=bulk, actions=False) for r in rows))
        rows, total = farm.query_jobs(query)
        listing = farm.job_listing()
        title = f"Jobs of {f['user']}" if "user" in f else "Jobs"
        filters = filter_form(view, [
            text_filter("q", f.get("q"), "name contains", "shot010"),
            select_filter("user", sorted(farm.users), f.get("user")),
            select_filter("state", JOB_STATES, state),
            select_filter("project", listing.projects(), f.get("project")),
            select_filter("department", listing.departments(), f.get("department")),
            select_filter("branch", sorted(farm.trees.branches), f.get("branch")),
        ])
        live = self.jobs_listing(rows, view, total, bulk=bulk)
        head = tags.div(tags.h1(title), filters, bulk_bar("jobs", JOB_BULK) if bulk else "")
        return live_page(self.ctx, call, title, live, watch="jobs", current="/jobs", rows="job",
                         before=head)

    # --- a job's tasks -------------------------------------------------------------------

    TASK_HEADS: Sequence[tuple[str, str | None, bool]] = (
        ("block", "task", True), ("task", "task", True), ("name", "name", False), ("state", "state", False),
        ("progress", "progress", False), ("host", "host", False), ("errors", "errors", True),
        ("runs", "runs", True), ("started", "started", False), ("done", "done", False))

    def task_row(self, t: TaskRecord, *, selectable: bool) -> Tag:
        href = f"/jobs/{t.job_id}/{t.block}/{t.task}"
        cells: list[Any] = [str(t.block), tags.a(str(t.task), href=href), tags.a(t.name, href=href),
                            state_badge(t.state), progress(t.progress) if t.state in ("RUN", "WRC") else
                            f"{t.progress}%", render_link(t.host) if t.host else "–", str(t.errors_count),
                            str(t.starts_count), fmt_time(t.time_started), fmt_time(t.time_done)]
        return list_row(f"task:{t.job_id}:{t.block}:{t.task}", cells, frozenset({0, 1, 6, 7}), selectable)

    async def tasks(self, call: Call) -> Reply:
        farm = self.ctx.farm
        job_id = int(call.groups["job"])
        job = farm.job(job_id)
        path = f"/jobs/{job_id}/tasks"
        view = ListView.read(call, path, TASK_SORTS, "task", ("q", "state", "host", "block"), per=100)
        f = dict(view.filters)
        block = None
        if "block" in f:
            if not f["block"].isdigit():
                raise HTTPError(400, "block: a block number")
            block = int(f.pop("block"))
        bulk = self.ctx.logins
        wanted = requested_rows(call)
        if wanted is not None:
            keys = set()
            for k in wanted:
                b, _, t = k.partition(":")
                if b.isdigit() and t.isdigit():
                    keys.add((int(b), int(t)))
            records = [t for t in (task_or_none(farm, (job_id, b, n)) for b, n in sorted(keys)) if t]
            return Reply(rows_only(self.task_row(t, selectable=bulk) for t in records))
        f["sort"] = ("-" if view.descending else "") + view.sort
        tasks = list_tasks_sorted(farm, job_id, block, f)
        shown = tasks[view.offset:view.offset + view.per]
        filters = filter_form(view, [
            text_filter("q", view.filters.get("q"), "name contains"),
            select_filter("state", JOB_STATES, view.filters.get("state")),
            select_filter("block", [str(b.number) for b in job.blocks], view.filters.get("block")),
            text_filter("host", view.filters.get("host"), "host"),
        ])
        live = tags.div(pager(view, len(tasks), len(shown)),
                        list_table(view, self.TASK_HEADS, [self.task_row(t, selectable=bulk) for t in shown],
                                   selectable=bulk, empty="no tasks", class_="tasks"),
                        pager(view, len(tasks), len(shown)))
        head = tags.div(tags.h1(tags.a(f"Job {job_id}", href=f"/jobs/{job_id}"), ": tasks of ",
                                tags.span(job.name, class_="job-name")),
                        filters, bulk_bar("tasks", TASK_BULK) if bulk else "")
        return live_page(self.ctx, call, f"Tasks of job {job_id}", live, watch=f"job:{job_id}",
                         current="/jobs", rows="task", before=head)

    # --- renders -------------------------------------------------------------------------

    RENDER_HEADS: Sequence[tuple[str, str | None, bool]] = (
        ("name", "name", False), ("state", "state", False), ("pool", "pool", False),
        ("tasks", "tasks", False), ("capacity", "capacity", False), ("CPU", "cpus", False),
        ("memory", "memory", False),
        ("load, disk", None, False), ("max tasks", "max_tasks", True), ("platform", "platform", False),
        ("services", None, False), ("owner", "owner", False), ("last seen", "seen", False),
        ("errors in a row", "errors", True))

    def render_row(self, r: RenderRecord, *, selectable: bool) -> Tag:
        tasks = [[tags.a(f"{k[0]}/{k[1]}/{k[2]}", href=f"/jobs/{k[0]}/{k[1]}/{k[2]}"), " "] for k in r.tasks]
        used = r.capacity_used * 100 // r.capacity if r.capacity else 0
        cpu, memory, load = resource_cells(r)
        cells: list[Any] = [render_link(r.name), state_badge(r.state, "r"), r.pool or "–", tasks or "–",
                            tags.span(tags.progress(value=str(used), max="100"),
                                      f" {r.capacity_used} / {r.capacity}"),
                            cpu, memory, load, str(r.max_tasks or "–"), r.platform or "–",
                            ", ".join(r.services) or "all", r.owner or "–", fmt_time(r.time_seen),
                            str(r.errors_in_row)]
        return list_row(f"render:{r.name}", cells, frozenset({8, 13}), selectable)

    async def renders(self, call: Call) -> Reply:
        farm = self.ctx.farm
        view = ListView.read(call, "/renders", RENDER_SORTS, "name", ("q", "state", "pool"))
        bulk = self.ctx.logins
        wanted = requested_rows(call)
        if wanted is not None:
            records = [render_record(farm.renders_by_name[n]) for n in wanted if n in farm.renders_by_name]
            return Reply(rows_only(self.render_row(r, selectable=bulk) for r in records))
        text = (view.filters.get("q") or "").lower()
        state = view.filters.get("state")
        renders = [render_record(r) for r in farm.renders.values() if text in r.name.lower()]
        states = sorted({r.state for r in renders})
        if state is not None:
            renders = [r for r in renders if r.state == state]
        pool = view.filters.get("pool")
        if pool is not None:
            renders = [r for r in renders if r.pool == pool]
        renders.sort(key=RENDER_SORTS[view.sort], reverse=view.descending)
        shown = renders[view.offset:view.offset + view.per]
        filters = filter_form(view, [text_filter("q", view.filters.get("q"), "name contains"),
                                     select_filter("state", states, state),
                                     select_filter("pool", sorted(farm.trees.pools), pool)])
        live = tags.div(pager(view, len(renders), len(shown)),
                        list_table(view, self.RENDER_HEADS,
                                   [self.render_row(r, selectable=bulk) for r in shown],
                                   selectable=bulk, empty="no renders", class_="renders"))
        head = tags.div(tags.h1("Renders"), filters, bulk_bar("renders", RENDER_BULK) if bulk else "")
        return live_page(self.ctx, call, "Renders", live, watch="renders", current="/renders", rows="render",
                         before=head, poll_ms=10_000)

    # --- users ---------------------------------------------------------------------------

    USER_HEADS: Sequence[tuple[str, str | None, bool]] = (
        ("name", "name", False), ("jobs", "jobs", True), ("running", "running", True),
        ("running capacity", "capacity", True), ("priority", "priority", True),
        ("max running", "max", True), ("jobs solving", "solving", False), ("hosts mask", None, False),
        ("registered", "registered", False))

    @staticmethod
    def user_row(u: UserRecord) -> Tag:
        cells: list[Any] = [user_link(u.name), str(u.jobs), str(u.running), str(u.running_capacity),
                            str(u.priority), str(u.max_running_tasks) if u.max_running_tasks >= 0 else "–",
                            u.jobs_solving, u.hosts_mask or "–", fmt_time(u.time_registered)]
        return list_row(f"user:{u.name}", cells, frozenset({1, 2, 3, 4, 5}), False)

    async def users(self, call: Call) -> Reply:
        from farmnet.model.views import user_record

        farm = self.ctx.farm
        view = ListView.read(call, "/users", USER_SORTS, "name", ("q",))
        wanted = requested_rows(call)
        if wanted is not None:
            known = [user_record(farm.users[n]) for n in wanted if n in farm.users]
            return Reply(rows_only(self.user_row(u) for u in known))
        text = (view.filters.get("q") or "").lower()
        users = [user_record(u) for u in farm.users.values() if text in u.name.lower()]
        users.sort(key=USER_SORTS[view.sort], reverse=view.descending)
        shown = users[view.offset:view.offset + view.per]
        live = tags.div(pager(view, len(users), len(shown)),
                        list_table(view, self.USER_HEADS, [self.user_row(u) for u in shown], selectable=False,
                                   empty="no users", class_="users"))
        head = tags.div(tags.h1("Users"), filter_form(view, [text_filter("q", view.filters.get("q"),
                                                                         "name contains")]))
        return live_page(self.ctx, call, "Users", live, watch="users", current="/users", rows="user",
                         before=head)

    # --- projects ------------------------------------------------------------------------

    async def projects(self, call: Call) -> Reply:
        """Jobs grouped by project and department, with their counts (one pass over the
        listing's rows: jobs, not tasks)."""
        listing = self.ctx.farm.job_listing()
        listing.refresh()
        groups: dict[tuple[str, str], dict[str, int]] = {}
        for row in listing.rows.values():
            g = groups.setdefault((row.project, row.department), {"jobs": 0, "tasks": 0, "unfinished": 0})
            rec = row.record
            g["jobs"] += 1
            g["tasks"] += rec.tasks
            g["unfinished"] += rec.state != "DON"
            for state, n in rec.counts.items():
                g[state] = g.get(state, 0) + n
        body = []
        for (project, department), g in sorted(groups.items()):
            args = {k: v for k, v in (("project", project), ("department", department)) if v}
            href = "/jobs?" + urllib.parse.urlencode(args) if args else "/jobs"
            body.append(tags.tr(
                tags.td(tags.a(project or "(none)", href=href)), tags.td(department or "–"),
                tags.td(str(g["jobs"]), class_="num"), tags.td(str(g["unfinished"]), class_="num"),
                tags.td(str(g["tasks"]), class_="num"),
                tags.td(str(g.get("RUN", 0) + g.get("WRC", 0)), class_="num"),
                tags.td(str(g.get("ERR", 0)), class_="num"),
                tags.td(progress((g.get("DON", 0) + g.get("SKP", 0)) * 100 // g["tasks"]
                                 if g["tasks"] else 100))))
        heads = [tags.th(h, **attributes(class_="num" if n else None)) for h, n in (
            ("project", False), ("department", False), ("jobs", True), ("unfinished", True), ("tasks", True),
            ("running", True), ("errors", True), ("done", False))]
        if not body:
            body = [tags.tr(tags.td("no jobs", colspan="8", class_="muted"))]
        table = tags.div(tags.table(tags.thead(tags.tr(heads)), tags.tbody(body), class_="list projects"),
                         class_="table-wrap")
        return live_page(self.ctx, call, "Projects", tags.div(tags.h1("Projects"), table), watch="jobs",
                         current="/projects")

    # --- a render ------------------------------------------------------------------------

    async def render(self, call: Call) -> Reply:
        ctx = self.ctx
        name = call.groups["name"]
        r = render_record(ctx.farm.render_named(name))
        cpu, memory, load = resource_cells(r)
        info = tags.dl([[tags.dt(k), tags.dd(v)] for k, v in (
            ("state", state_badge(r.state, "r")), ("capacity", f"{r.capacity_used} / {r.capacity}"),
            ("max tasks", str(r.max_tasks or "–")), ("CPU", cpu), ("memory", memory), ("load, disk", load),
            ("platform", r.platform or "–"), ("services", ", ".join(r.services) or "all"),
            ("owner", r.owner or "–"), ("last seen", fmt_time(r.time_seen)),
            ("errors in a row", str(r.errors_in_row)), ("wake-on-LAN", "yes" if r.wol else "no"))],
            class_="info")
        tasks = [t for t in (task_or_none(ctx.farm, tuple(key)) for key in r.tasks) if t]
        current = list_table(ListView(f"/renders/{name}", "task", False, 1, 50, {}), self.TASK_HEADS,
                             [self.task_row(t, selectable=False) for t in tasks], selectable=False,
                             empty="no tasks running", class_="tasks")
        names = {"name": [r.name]}
        actions: Any = ""
        if ctx.logins:
            actions = tags.span([action_button(a.label, "renders", a.action, names,
                                               confirm=a.confirm.format(n=1) if a.confirm else None,
                                               danger=a.danger) for a in RENDER_BULK], class_="actions")
        ctx.samples.start()
        history = ctx.samples.chart(r.name)
        runs, log = self.render_log(r.name)
        recorded = await recorded_runs(ctx, lambda q: q.tasks(Filter(host=r.name), limit=50))
        if recorded:
            runs = recorded_runs_table(recorded)
        failures = [tags.li(fmt_time(e.time), " ", tags.a(f"task {e.job_id}/{e.block}/{e.task}",
                                                          href=f"/jobs/{e.job_id}/{e.block}/{e.task}"),
                            f" of {e.user}") for e in r.error_history]
        body = tags.div(tags.h1(f"Render {r.name}"), tags.p(actions), info, tags.h2("Running tasks"), current,
                        tags.h2("Resources over time"), history or tags.p("no samples yet", class_="muted"),
                        tags.h2("Recent runs"), runs, tags.h2("Events"), log,
                        tags.h2("Recent errors"),
                        tags.ul(failures) if failures else tags.p("none", class_="muted"))
        return live_page(ctx, call, f"Render {r.name}", body, watch=f"render:{r.name}", current="/renders",
                         poll_ms=10_000)

    def render_log(self, name: str) -> tuple[Tag, Tag]:
        """The render's recent task runs and its own events, from the event log's tail."""
        runs: list[Tag] = []
        log: list[Tag] = []
        for event in self.ctx.events.recent(20_000):
            kind = event.kind
            if kind == "task" and event.host == name and len(runs) < 50:
                href = f"/jobs/{event.job_id}/{event.block}/{event.task}"
                runs.append(tags.tr(tags.td(str(event.seq), class_="num"),
                                    tags.td(tags.a(f"{event.job_id}/{event.block}/{event.task}", href=href)),
                                    tags.td(state_badge(event.state))))
            elif kind in ("render", "render_zombie", "render_deleted") and len(log) < 50:
                subject = event.render.name if kind == "render" else event.name
                if subject == name:
                    what = state_badge(event.render.state, "r") if kind == "render" else kind
                    log.append(tags.li(f"#{event.seq} ", what))
            if len(runs) >= 50 and len(log) >= 50:
                break
        heads = tags.tr(tags.th("event", class_="num"), tags.th("task"), tags.th("state"))
        return (tags.table(tags.thead(heads),
                           tags.tbody(runs or [tags.tr(tags.td("none lately", colspan="3", class_="muted"))]),
                           class_="list") if runs else tags.p("none lately", class_="muted"),
                tags.ul(log) if log else tags.p("none lately", class_="muted"))


async def recorded_runs(ctx: WebContext, ask: Any) -> list[dict[str, Any]] | None:
    """Rows from the statistics database (``ask(queries)``), or None when statistics are
    off or do not answer (the page then shows what the farm knows)."""
    queries = getattr(ctx.stats, "queries", None)
    if queries is None:
        return None
    try:
        return list(await ask(queries))
    except Exception as e:
        log.info("web: statistics did not answer for a page: {error}", error=str(e))
        return None


def recorded_runs_table(rows: list[dict[str, Any]]) -> Tag:
    """A render's latest runs as the statistics recorded them."""
    body = [tags.tr(tags.td(tags.a(f"{r['job_id']}/{r['block']}/{r['task']}",
                                   href=f"/jobs/{r['job_id']}/{r['block']}/{r['task']}")),
                    tags.td(r["job_name"]), tags.td(str(r["run"]), class_="num"),
                    tags.td(fmt_time(r["time_started"])), tags.td(duration(r["run_time"])),
                    tags.td(state_badge(r["state"])), tags.td(r.get("message") or "–")) for r in rows]
    heads = tags.tr([tags.th(h) for h in ("task", "job", "run", "started", "run time", "state", "message")])
    return tags.table(tags.thead(heads), tags.tbody(body), class_="list runs")


def task_or_none(farm: Any, key: tuple[int, ...]) -> TaskRecord | None:
    """The task's record; None when it is gone (deleted since the page was drawn)."""
    try:
        return task_record(farm.task(key))
    except (errors.UnknownJob, errors.UnknownTask):
        return None
