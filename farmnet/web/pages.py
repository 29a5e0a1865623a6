"""The live farm's pages: overview, jobs, a job (blocks and a grid of tasks), a task and
its output, renders, users.

Each page is made on the server from the farm's state as twisted.web.template tags (so
every value is escaped). Its changing part is one ``<div id="live">`` that names what it
shows (``data-watch``) and the event sequence it was made at (``data-seq``); the site's
script listens to ``/events`` and fetches ``?partial=1`` (just that part) again when a
matching event arrives, so pages follow the farm without reloads. Buttons carry their
action as ``{item, action, filters}`` JSON for ``POST /api/act``.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from twisted.web.template import Tag, tags

from farmnet import errors
from farmnet.messages import BlockRecord, JobDetail, JobRecord, RenderRecord
from farmnet.model.views import render_record, task_record
from farmnet.web.context import WebContext
from farmnet.web.layout import (
    JOB_STATES,
    action_button,
    attributes,
    fmt_time,
    live_page,
    progress,
    state_badge,
    table,
)
from farmnet.web.previews import latest_frames
from farmnet.web.routing import Call, HTTPError, Reply

__all__ = ["LivePages", "resource_cells"]

#: Task cells drawn per block at once (more are paged with ?offset=).
GRID_MAX = 2500
#: How often the renders page looks at the renders' resources again, in ms.
RESOURCES_POLL_MS = 10_000
#: Output shown at once, in bytes (the tail by default).
OUTPUT_PAGE = 128 * 1024


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


def counts_text(counts: dict[str, int]) -> Tag:
    return tags.span([[state_badge(s), " ", str(counts[s]), " "] for s in JOB_STATES if counts.get(s)])


def info_list(items: tuple[tuple[str, Any], ...]) -> Tag:
    return tags.dl([[tags.dt(k), tags.dd(v)] for k, v in items], class_="info")


def user_link(name: str) -> Tag:
    return tags.a(name, href=f"/jobs?user={urllib.parse.quote(name)}")


class LivePages:
    """Handlers of the live farm's pages."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    # --- shared pieces -------------------------------------------------------------------

    def job_actions(self, job: JobRecord | JobDetail, compact: bool = False) -> Tag:
        ids = {"id": [job.id]}
        buttons = [
            action_button("resume", "jobs", "resume", ids) if job.paused
            else action_button("pause", "jobs", "pause", ids),
            action_button("restart errors", "jobs", "restart_errors", ids)
            if job.counts.get("ERR") else "",
            action_button("delete", "jobs", "delete", ids, confirm=f"Delete job {job.id} {job.name}?",
                          danger=True),
        ]
        if not compact:
            buttons[2:2] = [
                action_button("stop", "jobs", "stop", ids),
                action_button("restart", "jobs", "restart", ids, confirm="Restart every task of the job?"),
                action_button("skip", "jobs", "skip", ids, confirm="Skip every unfinished task?"),
                action_button("reset error hosts", "jobs", "reset_error_hosts", ids)
                if any(b.avoided_hosts for b in job.blocks) else "",
                action_button("priority…", "jobs", "set_priority", ids, prompt="New priority (0-250)",
                              default=job.priority),
            ]
        return tags.span(buttons, class_="actions")

    def jobs_table(self, jobs: list[JobRecord], *, actions: bool) -> Tag:
        rows = []
        for job in jobs:
            counts = job.counts
            row = [
                tags.a(str(job.id), href=f"/jobs/{job.id}"),
                tags.a(job.name, href=f"/jobs/{job.id}", class_="job-name"),
                user_link(job.user_name),
                state_badge(job.state),
                progress(job.progress),
                f"{counts.get('DON', 0) + counts.get('SKP', 0)} / {job.tasks}",
                str(counts.get("RUN", 0)),
                str(counts.get("ERR", 0)),
                str(job.priority),
                fmt_time(job.time_creation),
            ]
            if actions:
                row.append(self.job_actions(job, compact=True))
            rows.append(row)
        heads: list[Any] = [("id", "num"), "name", "user", "state", "progress", ("done", "num"),
                            ("running", "num"), ("errors", "num"), ("priority", "num"), "created"]
        if actions:
            heads.append("")
        return table(heads, rows, empty="no jobs", class_="jobs")

    # --- pages ---------------------------------------------------------------------------

    async def index(self, call: Call) -> Reply:
        farm = self.ctx.farm
        counts = farm.counts()
        tasks = counts["tasks"]
        online = [r for r in farm.renders.values() if r.online]
        capacity = sum(r.capacity for r in online)
        used = sum(r.capacity_used for r in online)

        def card(n: Any, label: str, href: str | None = None) -> Tag:
            inner = [tags.div(str(n), class_="n"), tags.div(label, class_="l")]
            return tags.a(inner, href=href, class_="card") if href else tags.div(inner, class_="card")

        cards = tags.div([
            card(counts["jobs"], "jobs", "/jobs"),
            card(tasks.get("RUN", 0), "tasks running"),
            card(tasks.get("RDY", 0), "tasks ready"),
            card(tasks.get("ERR", 0), "tasks in error"),
            card(tasks.get("DON", 0) + tasks.get("SKP", 0), "tasks done"),
            card(f"{counts['renders_busy']} / {counts['renders_online']}", "renders busy / online",
                 "/renders"),
            card(counts["renders_offline"], "renders offline", "/renders"),
            card(f"{used * 100 // capacity if capacity else 0}%", "capacity in use"),
            card(len(farm.users), "users", "/users"),
        ], class_="cards")
        unfinished = [j for j in farm.list_jobs() if j.state != "DON"]
        unfinished.sort(key=lambda j: (-j.priority, j.time_creation))
        busy = [render_record(r) for r in farm.renders.values() if r.online and r.tasks]
        body = tags.div(tags.h1("Farm"), cards, tags.h2("Unfinished jobs"),
                        self.jobs_table(unfinished[:100], actions=self.ctx.logins),
                        tags.h2("Busy renders"), self.renders_table(busy, actions=False))
        return live_page(self.ctx, call, "Farm", body, watch="all", current="/")

    async def jobs(self, call: Call) -> Reply:
        user = call.arg("user")
        state = call.arg("state")
        if state is not None and state not in JOB_STATES:
            raise HTTPError(400, f"state: one of {', '.join(JOB_STATES)}")
        jobs = self.ctx.farm.list_jobs(user)
        if state is not None:
            jobs = [j for j in jobs if j.state == state]
        jobs.sort(key=lambda j: -j.id)

        def select(name: str, choices: Any, current: str | None) -> Tag:
            options = [tags.option(c, value=c, **attributes(selected=c == current and "selected"))
                       for c in choices]
            return tags.label(name, tags.select(tags.option("(all)", value=""), options, name=name))

        filters = tags.form(select("user", sorted(self.ctx.farm.users), user),
                            select("state", JOB_STATES, state),
                            tags.button("show", type="submit"), method="get", class_="filters")
        title = f"Jobs of {user}" if user else "Jobs"
        body = tags.div(tags.h1(title), filters, self.jobs_table(jobs, actions=self.ctx.logins))
        return live_page(self.ctx, call, title, body, watch="jobs", current="/jobs")

    async def job(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        farm = self.ctx.farm
        job = farm.show_job(job_id)
        offset = call.int_arg("offset", 0, 0, farm.settings.max_tasks_per_job) or 0
        info = info_list((
            ("user", user_link(job.user_name)),
            ("state", state_badge(job.state)),
            ("progress", progress(job.progress)),
            ("tasks", counts_text(job.counts)),
            ("priority", str(job.priority)),
            ("created", fmt_time(job.time_creation)),
            ("started", fmt_time(job.time_started)),
            ("done", fmt_time(job.time_done)),
            ("annotation", job.annotation or "–"),
            ("depends on jobs", job.depend_mask or "–"),
            ("hosts mask", job.hosts_mask or "–"),
        ))
        blocks_rows = [[str(b.block), b.name, state_badge(b.state), progress(b.progress),
                        counts_text(b.counts), b.service, str(b.capacity), str(b.tasks),
                        b.depend_mask or "–", ", ".join(b.avoided_hosts or ()) or "–",
                        tags.code(b.command)] for b in job.blocks]
        blocks = table([("#", "num"), "name", "state", "progress", "tasks", "service", ("capacity", "num"),
                        ("count", "num"), "depends on", "avoided hosts", "command"], blocks_rows,
                       class_="blocks")
        grids = [self.grid(job_id, b, offset) for b in job.blocks]
        legend = tags.p([[state_badge(s), " "] for s in JOB_STATES], class_="legend")
        explain: Any = ""
        if call.arg("explain") == "1":
            why = farm.explain(job_id)
            explain = tags.div(
                tags.h2("Why is it waiting?"),
                tags.p("; ".join(why["reasons"]) or "nothing at the job's level"),
                table(["block", "ready", "running", "reasons", "renders refusing", "can run on"],
                      [[b["name"], str(b["ready"]), str(b["running"]), "; ".join(b["reasons"]) or "–",
                        "; ".join(f"{n} renders: {why_}" for why_, n in b["renders"].items()) or "–",
                        ", ".join(b["can_run_on"][:20]) or "–"] for b in why["blocks"]]))
        body = tags.div(
            tags.h1(f"Job {job_id}: ", tags.span(job.name, class_="job-name")),
            tags.p(self.job_actions(job) if self.ctx.logins else "", " ",
                   tags.a("why is it waiting?", href=f"/jobs/{job_id}?explain=1")),
            info, explain, latest_frames(self.ctx, call, job_id), tags.h2("Blocks"), blocks, legend, grids)
        return live_page(self.ctx, call, f"Job {job_id}", body, watch=f"job:{job_id}", current="/jobs")

    def grid(self, job_id: int, block: BlockRecord, offset: int) -> Tag:
        """A block's tasks as cells coloured by state, GRID_MAX at a time."""
        tasks, total = self.ctx.farm.list_tasks(job_id, block.block, offset, GRID_MAX)
        cells = [tags.a(href=f"/jobs/{job_id}/{block.block}/{t.task}", class_=f"t s-{t.state}",
                        title=f"{t.name}: {t.state}" + (f" on {t.host}" if t.host else "")
                        + (f", {t.progress}%" if t.state == "RUN" else ""),
                        **{"data-state": t.state}) for t in tasks]
        pager = []
        if offset > 0:
            pager.append(tags.a("« earlier tasks", href=f"?offset={max(0, offset - GRID_MAX)}"))
        if offset + GRID_MAX < total:
            pager.append(tags.a("later tasks »", href=f"?offset={offset + GRID_MAX}"))
        shown = f" tasks {offset + 1 if tasks else 0}–{offset + len(tasks)} of {total}"
        heading = tags.h2(f"Block {block.block}: {block.name}", tags.span(shown, class_="muted"))
        return tags.div(heading,
                        tags.div(cells, class_="grid", **{"data-block": str(block.block)}), tags.p(pager))

    async def task(self, call: Call) -> Reply:
        job_id, block, number = int(call.groups["job"]), int(call.groups["block"]), int(call.groups["task"])
        farm = self.ctx.farm
        task = farm.task((job_id, block, number))
        data = task_record(task)
        job = farm.job(job_id)
        spec = task.block.spec
        runs = task.starts_count
        run = call.int_arg("run", runs, 0, max(runs, 0)) or runs
        frames = spec.frames(number) if spec.numeric else None
        info = info_list((
            ("job", tags.a(f"{job_id}: {job.name}", href=f"/jobs/{job_id}")),
            ("block", f"{block}: {task.block.name}"),
            ("state", state_badge(data.state)),
            ("progress", progress(data.progress)),
            ("frames", f"{frames[0]}–{frames[1]}" if frames else "–"),
            ("host", data.host or "–"),
            ("runs", str(runs)),
            ("errors", str(data.errors_count)),
            ("started", fmt_time(data.time_started)),
            ("done", fmt_time(data.time_done)),
            ("command", tags.code(task.command)),
        ))
        actions: Any = ""
        if self.ctx.logins:
            f = {"job_id": job_id, "block": block, "task": [number]}
            actions = tags.p(tags.span([action_button("restart", "tasks", "restart", f),
                                        action_button("skip", "tasks", "skip", f)], class_="actions"))
        output: Any = tags.p("no output yet", class_="muted")
        run_links: Any = ""
        if runs:
            run_links = tags.p("run: ", [[tags.a(str(r), href=f"?run={r}",
                                                 **attributes(class_="current" if r == run else None)), " "]
                                         for r in range(1, runs + 1)])
            output = self.output(call, (job_id, block, number), run)
        running = data.state in ("RUN", "WRC") and run == runs
        body = tags.div(tags.h1(f"Task {task.name}"), actions, info, tags.h2(f"Output of run {run}"),
                        run_links, output)
        return live_page(self.ctx, call, f"Task {job_id}/{block}/{number}", body,
                         watch=f"task:{job_id}:{block}:{number}", current="/jobs",
                         poll_ms=2000 if running else None)

    def output(self, call: Call, key: tuple[int, int, int], run: int) -> Tag:
        outputs = self.ctx.outputs
        if outputs is None:
            return tags.p("task output is not kept here", class_="muted")
        try:
            self.ctx.farm.check_may_read_output(call.user, self.ctx.farm.job(key[0]), self.ctx.output_readers)
        except (errors.NotAuthenticated, errors.PermissionDenied) as e:
            return tags.p(e.message, class_="muted")
        try:
            size = outputs.path(key, run).stat().st_size
        except OSError:
            size = 0
        tail = max(0, size - OUTPUT_PAGE)
        offset = call.int_arg("offset", tail, 0, max(size, 0)) or 0
        data = outputs.read(key, run, offset, OUTPUT_PAGE)
        pager = []
        if offset > 0:
            pager.append(tags.a("« earlier", href=f"?run={run}&offset={max(0, offset - OUTPUT_PAGE)}"))
        if offset + len(data) < size:
            pager.append(tags.a("later »", href=f"?run={run}&offset={offset + len(data)}"))
        note = f"bytes {offset}–{offset + len(data)} of {size}" if size else "empty"
        return tags.div(tags.p(note, " ", pager, class_="muted"),
                        tags.pre(data.decode("utf-8", "replace"), class_="output"))

    def renders_table(self, renders: list[RenderRecord], *, actions: bool) -> Tag:
        rows = []
        for r in sorted(renders, key=lambda r: r.name):
            tasks = [[tags.a(f"{k[0]}/{k[1]}/{k[2]}", href=f"/jobs/{k[0]}/{k[1]}/{k[2]}"), " "]
                     for k in r.tasks]
            used = r.capacity_used * 100 // r.capacity if r.capacity else 0
            cpu, memory, load = resource_cells(r)
            row = [tags.a(r.name, href=f"/renders#{r.name}", id=r.name),
                   state_badge(r.state, "r"), tasks or "–",
                   tags.span(tags.progress(value=str(used), max="100"),
                             f" {r.capacity_used} / {r.capacity}"),
                   str(r.max_tasks or "–"), cpu, memory, load, r.platform or "–",
                   ", ".join(r.services) or "all", r.owner or "–", fmt_time(r.time_seen),
                   str(r.errors_in_row)]
            if actions:
                row.append(self.render_actions(r))
            rows.append(row)
        heads: list[Any] = ["name", "state", "tasks", "capacity", ("max tasks", "num"), "CPU", "memory",
                            "load, disk", "platform", "services", "owner", "last seen",
                            ("errors in a row", "num")]
        if actions:
            heads.append("")
        return table(heads, rows, empty="no renders", class_="renders")

    @staticmethod
    def render_actions(r: RenderRecord) -> Tag:
        names = {"name": [r.name]}
        return tags.span(
            action_button("resume", "renders", "resume", names) if r.paused
            else action_button("pause", "renders", "pause", names),
            action_button("free", "renders", "free", names) if (r.nimby or r.NIMBY)
            else action_button("nimby", "renders", "nimby", names),
            action_button("eject", "renders", "eject", names, confirm="Return its tasks to ready?")
            if r.tasks else "",
            action_button("heal", "renders", "heal", names) if r.sick else "",
            action_button("reset error hosts", "renders", "reset_error_hosts", names)
            if r.error_history else "",
            class_="actions")

    async def renders(self, call: Call) -> Reply:
        renders = self.ctx.farm.list_renders()
        body = tags.div(tags.h1("Renders"), self.renders_table(renders, actions=self.ctx.logins))
        # Resources come with heartbeats, which are not events: look again now and then.
        return live_page(self.ctx, call, "Renders", body, watch="renders", current="/renders",
                         poll_ms=RESOURCES_POLL_MS)

    async def users(self, call: Call) -> Reply:
        rows = [[user_link(u.name), str(u.jobs), str(u.running), str(u.running_capacity),
                 str(u.priority), str(u.max_running_tasks) if u.max_running_tasks >= 0 else "–",
                 u.jobs_solving, u.hosts_mask or "–", fmt_time(u.time_registered)]
                for u in sorted(self.ctx.farm.list_users(), key=lambda u: u.name)]
        body = tags.div(tags.h1("Users"),
                        table(["name", ("jobs", "num"), ("running", "num"), ("running capacity", "num"),
                               ("priority", "num"), ("max running", "num"), "jobs solving", "hosts mask",
                               "registered"], rows, empty="no users", class_="users"))
        return live_page(self.ctx, call, "Users", body, watch="users", current="/users")
