"""The live farm's pages: overview, jobs, a job (blocks and a grid of tasks), a task and
its output, renders, users, render pools and job branches.

Each page is made on the server from the farm's state as twisted.web.template tags (so
every value is escaped). Its changing part is one ``<div id="live">`` that names what it
shows (``data-watch``) and the event sequence it was made at (``data-seq``); the site's
script listens to ``/events`` and fetches ``?partial=1`` (just that part) again when a
matching event arrives, so pages follow the farm without reloads. Buttons carry their
action as ``{item, action, filters}`` JSON for ``POST /api/act``.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from twisted.web.template import Tag, tags

from farmnet import errors
from farmnet.messages import BlockRecord, BranchRecord, JobDetail, PoolRecord
from farmnet.model.data import Job, TaskState
from farmnet.model.listing import JobQuery
from farmnet.model.spec import BlockSpec
from farmnet.model.views import render_record, task_record
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
    table,
)
from farmnet.web.listpages import ListPages, recorded_runs, resource_cells
from farmnet.web.lists import ListView, list_table
from farmnet.web.previews import latest_frames, task_frames
from farmnet.web.routing import Call, Reply

__all__ = ["LivePages", "resource_cells"]

#: Task cells drawn per block at once (more are paged with ?offset=).
GRID_MAX = 1000
#: How often the renders page looks at the renders' resources again, in ms.
RESOURCES_POLL_MS = 10_000
#: Output shown at once, in bytes (the tail by default).
OUTPUT_PAGE = 128 * 1024


def frame_label(spec: BlockSpec, number: int) -> str:
    """What a grid cell says: its frame (``12``), its frames (``12-15``) or its number."""
    if not spec.numeric:
        return str(number)
    first, last = spec.frames(number)
    return str(first) if first == last else f"{first}-{last}"


def time_left(job: Job) -> str:
    """The job's time left: its finished runs' average run time times the tasks left, over
    the tasks running at once (at least one); one job's tasks, read when its page is made."""
    finished, total_time, left, running = 0, 0.0, 0, 0
    for block in job.blocks:
        for task in block.tasks:
            state = task.state
            if state is TaskState.DON:
                if task.time_done > task.time_started > 0:
                    finished += 1
                    total_time += task.time_done - task.time_started
            elif state is not TaskState.SKP:
                left += 1
                running += state in (TaskState.RUN, TaskState.WRC)
    if not left:
        return "–"
    if not finished:
        return "unknown until a task finishes"
    average = total_time / finished
    return f"about {duration(average * left / max(1, running))} (runs take {duration(average)} on average)"


#: Block parameters the job page edits (a subset of BLOCK_SETTABLE): name → input type.
BLOCK_EDITS = (("capacity", "number"), ("max_running_tasks", "number"),
               ("max_running_tasks_per_host", "number"),
               ("errors_retries", "number"), ("errors_avoid_host", "number"), ("task_max_run_time", "number"),
               ("hosts_mask", "text"), ("hosts_mask_exclude", "text"), ("depend_mask", "text"),
               ("service", "text"))


def block_editor(job_id: int, block: int, name: str, spec: BlockSpec) -> Tag:
    """A form changing a block's parameters through ``blocks update`` (its owner and admins;
    the farm checks again)."""
    fields = [tags.label(name.replace("_", " "),
                         tags.input(type=kind, name=name, value=str(getattr(spec, name, "") or ""),
                                    **attributes(data_kind=kind)))
              for name, kind in BLOCK_EDITS]
    target = json.dumps({"item": "blocks", "action": "update", "filters": {"job_id": job_id, "block": block}})
    return tags.details(tags.summary(f"edit block {block}: {name}"),
                        tags.form(fields, tags.button("save", type="submit"), class_="block-edit",
                                  **{"data-edit": target}))


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

    def job_actions(self, job: JobDetail) -> Tag:
        ids = {"id": [job.id]}
        return tags.span(
            action_button("resume", "jobs", "resume", ids) if job.paused
            else action_button("pause", "jobs", "pause", ids),
            action_button("restart errors", "jobs", "restart_errors", ids) if job.counts.get("ERR") else "",
            action_button("stop", "jobs", "stop", ids),
            action_button("restart", "jobs", "restart", ids, confirm="Restart every task of the job?"),
            action_button("skip", "jobs", "skip", ids, confirm="Skip every unfinished task?"),
            action_button("reset error hosts", "jobs", "reset_error_hosts", ids)
            if any(b.avoided_hosts for b in job.blocks) else "",
            action_button("priority…", "jobs", "set_priority", ids, prompt="New priority (0-250)",
                          default=job.priority),
            action_button("delete", "jobs", "delete", ids, confirm=f"Delete job {job.id} {job.name}?",
                          danger=True),
            class_="actions")

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
        # The 100 unfinished jobs first in the farm's order: a page of the listing, not every job.
        jobs_view = ListView("/jobs", "priority", True, 1, 100, {})
        unfinished, count = farm.query_jobs(JobQuery(sort="priority", limit=100,
                                                     without_states=frozenset({"DON"})))
        lists = ListPages(self.ctx)
        heads = [*lists.JOB_HEADS, ("", None, False)] if self.ctx.logins else lists.JOB_HEADS
        jobs = list_table(jobs_view, heads, [lists.job_row(r, selectable=False, actions=self.ctx.logins)
                                             for r in unfinished], selectable=False, empty="no jobs",
                          class_="jobs")
        busy = sorted((render_record(r) for r in farm.renders.values() if r.online and r.tasks),
                      key=lambda r: r.name)
        renders_view = ListView("/renders", "name", False, 1, 50, {})
        renders = list_table(renders_view, lists.RENDER_HEADS,
                             [lists.render_row(r, selectable=False) for r in busy[:100]], selectable=False,
                             empty="no renders", class_="renders")
        more: Any = ""
        if count > 100:
            more = tags.p(tags.a(f"all {count:,} unfinished jobs", href="/jobs?sort=-priority"))
        body = tags.div(tags.h1("Farm"), cards, tags.h2("Unfinished jobs"), jobs, more,
                        tags.h2("Busy renders"), renders)
        # Every event is about the farm: its page is drawn again at most every 3 s.
        return live_page(self.ctx, call, "Farm", body, watch="all", current="/", refresh_ms=3000)

    async def job(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        farm = self.ctx.farm
        job = farm.show_job(job_id)
        model = farm.job(job_id)
        offset = call.int_arg("offset", 0, 0, farm.settings.max_tasks_per_job) or 0
        listing = farm.job_listing()
        listing.refresh()
        row = listing.rows.get(job_id)
        live_progress = row.progress if row is not None else job.progress
        info = info_list((
            ("user", user_link(job.user_name)),
            ("state", state_badge(job.state)),
            ("progress", progress(live_progress)),
            ("time left", time_left(model)),
            ("tasks", counts_text(job.counts)),
            ("priority", str(job.priority)),
            ("project", job.project or "–"),
            ("department", job.department or "–"),
            ("created", fmt_time(job.time_creation)),
            ("started", fmt_time(job.time_started)),
            ("done", fmt_time(job.time_done)),
            ("annotation", job.annotation or "–"),
            ("depends on jobs", job.depend_mask or "–"),
            ("hosts mask", job.hosts_mask or "–"),
        ))
        editable = bool(call.user) and (call.user == job.user_name or farm.is_admin(call.user or ""))
        blocks_rows = [[str(b.block), b.name, state_badge(b.state), progress(b.progress),
                        counts_text(b.counts), b.service, str(b.capacity), str(b.tasks),
                        b.depend_mask or "–", ", ".join(b.avoided_hosts or ()) or "–",
                        tags.code(b.command)] for b in job.blocks]
        blocks = tags.div(table([("#", "num"), "name", "state", "progress", "tasks", "service",
                                 ("capacity", "num"), ("count", "num"), "depends on", "avoided hosts",
                                 "command"],
                                blocks_rows, class_="blocks"), class_="table-wrap")
        editors = [block_editor(job_id, b.block, b.name, model.blocks[b.block].spec)
                   for b in job.blocks] if editable else []
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
        head = tags.div(
            tags.h1(f"Job {job_id}: ", tags.span(job.name, class_="job-name")),
            tags.p(self.job_actions(job) if self.ctx.logins else "", " ",
                   tags.a("why is it waiting?", href=f"/jobs/{job_id}?explain=1"), " · ",
                   tags.a("tasks as a list", href=f"/jobs/{job_id}/tasks")),
            info, explain, latest_frames(self.ctx, call, job_id), tags.h2("Blocks"), blocks, editors)
        # The grids follow task events cell by cell (the script); the head is fetched again
        # on the job's own events only.
        return live_page(self.ctx, call, f"Job {job_id}", head, watch=f"job:{job_id}", current="/jobs",
                         after=tags.div(legend, grids, id="grids"))

    def grid(self, job_id: int, block: BlockRecord, offset: int) -> Tag:
        """A block's tasks as cells labelled with their frames and coloured by state,
        GRID_MAX at a time."""
        tasks, total = self.ctx.farm.list_tasks(job_id, block.block, offset, GRID_MAX)
        spec = self.ctx.farm.job(job_id).blocks[block.block].spec
        cells = [tags.a(frame_label(spec, t.task), href=f"/jobs/{job_id}/{block.block}/{t.task}",
                        class_=f"t s-{t.state}",
                        title=f"{t.name}: {t.state}" + (" WRN" if t.warning else "")
                        + (f" on {t.host}" if t.host else "")
                        + (f", {t.progress}%" if t.state == "RUN" else ""),
                        **{"data-state": t.state, "data-key": f"task:{job_id}:{block.block}:{t.task}"})
                 for t in tasks]
        pager: list[Any] = []
        if offset > 0:
            pager += [tags.a("« earlier tasks", href=f"?offset={max(0, offset - GRID_MAX)}"), " "]
        if offset + GRID_MAX < total:
            pager += [tags.a("later tasks »", href=f"?offset={offset + GRID_MAX}"), " "]
        if total > GRID_MAX:  # thousands of tasks: go straight to one
            pager.append(tags.form(tags.label("from task ", tags.input(
                type="number", name="offset", min="0", max=str(total - 1), value=str(offset))),
                tags.button("show", type="submit"), method="get", class_="inline"))
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
        elapsed = None
        if data.time_started:
            elapsed = (data.time_done if data.time_done >= data.time_started else farm.clock.seconds()) \
                - data.time_started
        info = info_list((
            ("job", tags.a(f"{job_id}: {job.name}", href=f"/jobs/{job_id}")),
            ("block", f"{block}: {task.block.name}"),
            ("state", state_badge(data.state)),
            ("progress", progress(data.progress)),
            ("frames", f"{frames[0]}–{frames[1]}" if frames else "–"),
            # Where its parser reads the running task is (Afanasy's frame and percent of frame).
            ("frame", f"{data.frame} done, {data.percent_frame}% of the next"
             if data.state == "RUN" and (data.frame or data.percent_frame) else "–"),
            # The first line its parser flagged (Afanasy's WRN): the run's outcome stands.
            ("warning", tags.span(data.warning, class_="warning") if data.warning else "–"),
            # A multi-host run's host reads "primary: secondary ...": the link is the primary's page.
            ("host", tags.a(data.host, href=f"/renders/{data.host.split(':')[0]}") if data.host else "–"),
            ("runs", str(runs)),
            ("errors", str(data.errors_count)),
            ("started", fmt_time(data.time_started)),
            ("done", fmt_time(data.time_done)),
            ("run time", duration(elapsed) if elapsed is not None else "–"),
            ("command", tags.code(task.command)),
        ))
        actions: Any = ""
        if self.ctx.logins:
            f = {"job_id": job_id, "block": block, "task": [number]}
            actions = tags.p(tags.span([action_button("restart", "tasks", "restart", f),
                                        action_button("skip", "tasks", "skip", f)], class_="actions"))
        output: Any = tags.p("no output yet", class_="muted")
        run_table: Any = ""
        running = data.state in ("RUN", "WRC") and run == runs
        if runs:
            recorded = await recorded_runs(self.ctx, lambda q: q.task_runs(job_id, block, number))
            run_table = self.runs_table((job_id, block, number), runs, run, data,
                                        {r["run"]: r for r in reversed(recorded or [])})
            output = self.output(call, (job_id, block, number), run, follow=running)
        body = tags.div(tags.h1(f"Task {task.name}"), actions, info,
                        task_frames(self.ctx, call, (job_id, block, number)), tags.h2("Runs"), run_table)
        return live_page(self.ctx, call, f"Task {job_id}/{block}/{number}", body,
                         watch=f"task:{job_id}:{block}:{number}", current="/jobs",
                         after=tags.div(tags.h2(f"Output of run {run}"), output))

    def runs_table(self, key: tuple[int, int, int], runs: int, current: int, data: Any,
                   recorded: dict[int, dict[str, Any]]) -> Tag:
        """Each run: its host, times and end as the statistics recorded them (else, for the
        last run, as the farm knows it now), and its output's size."""
        outputs = self.ctx.outputs
        rows = []
        for r in range(runs, 0, -1):
            size: Any = "–"
            if outputs is not None:
                try:
                    size = f"{outputs.path(key, r).stat().st_size:,} B"
                except OSError:
                    size = "–"
            row = recorded.get(r)
            if r == runs and (row is None or data.state in ("RUN", "WRC")):
                host, started, done = data.host, data.time_started, data.time_done
                state, ended = state_badge(data.state), ""
            elif row is not None:
                host, started, done, state = row["host"], row["time_started"], row["time_done"], \
                    state_badge(row["state"])
                ended = ("exit " + str(row["exit_code"]) if row["exit_code"] is not None else "") + (
                    f" signal {row['signal']}" if row.get("signal") else "") + (
                    f": {row['message']}" if row.get("message") else "")
            else:
                host, started, done, state, ended = "", 0.0, 0.0, "–", "not recorded"
            rows.append([tags.a(str(r), href=f"?run={r}",
                                **attributes(class_="current" if r == current else None)),
                         tags.a(host, href=f"/renders/{host}") if host else "–",
                         fmt_time(started), fmt_time(done),
                         duration(done - started) if done >= started > 0 else "–", state, ended or "–",
                         size])
        return table([("run", "num"), "host", "started", "done", "run time", "state", "end",
                      ("output", "num")], rows, class_="runs")

    def output(self, call: Call, key: tuple[int, int, int], run: int, follow: bool = False) -> Tag:
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
        # A running task's tail is followed by the script from where this page ends.
        tail_url = f"/api/jobs/{key[0]}/{key[1]}/{key[2]}/output?run={run}"
        return tags.div(tags.p(note, " ", pager, class_="muted"),
                        tags.pre(data.decode("utf-8", "replace"), class_="output", **attributes(
                            data_tail=tail_url if follow and offset + len(data) >= size else None,
                            data_offset=offset + len(data))))

    async def pools(self, call: Call) -> Reply:
        """Render pools and job branches: the trees, their settings and what runs in them."""
        farm, acting = self.ctx.farm, self.ctx.logins
        pool_rows = [self.pool_row(p, acting) for p in farm.list_pools()]
        branch_rows = [self.branch_row(b, acting) for b in farm.list_branches()]
        pool_heads: list[Any] = ["pool", "pattern", ("priority", "num"), "renders", ("busy", "num"),
                                 ("running", "num"), ("max running", "num"), ("max tasks/host", "num"),
                                 "services", "disabled", "tickets", "state"]
        branch_heads: list[Any] = ["branch", ("priority", "num"), "solving", "jobs", ("running", "num"),
                                   ("max running", "num"), ("max/host", "num"), "new branches", "state"]
        if acting:
            pool_heads.append("")
            branch_heads.append("")
        body = tags.div(tags.h1("Pools"),
                        table(pool_heads, pool_rows, empty="no pools", class_="pools"),
                        tags.h1("Branches"),
                        table(branch_heads, branch_rows, empty="no branches", class_="branches"))
        return live_page(self.ctx, call, "Pools", body, watch="pools", current="/pools")

    @staticmethod
    def pool_row(p: PoolRecord, actions: bool) -> list[Any]:
        depth = p.path.count("/") - 1 if p.path != "/" else 0
        tickets = ", ".join([*(f"{k} {v}/host" for k, v in p.tickets_host.items()),
                             *(f"{k} {p.tickets_used.get(k, 0)}/{v}" for k, v in p.tickets_pool.items())])
        row: list[Any] = [
            tags.span("\u00a0\u00a0" * depth, tags.strong(p.path), id=f"pool{p.path}"), p.pattern or "–",
            str(p.priority), [[tags.a(name, href=f"/renders#{name}"), " "] for name in p.renders] or "–",
            str(p.renders_busy), str(p.running), _limit_text(p.max_running_tasks),
            _limit_text(p.max_tasks_host), ", ".join(p.services) or "–",
            ", ".join(p.services_disabled) or "–",
            tickets or "–", "paused" if p.paused else "–"]
        if actions:
            where = {"path": p.path}
            row.append(tags.span(
                action_button("resume", "pools", "update", where, values={"paused": False}) if p.paused
                else action_button("pause", "pools", "update", where, values={"paused": True}),
                action_button("move render here", "pools", "move", where, prompt="Render names"),
                action_button("delete", "pools", "delete", where, confirm=f"Delete pool {p.path}?",
                              danger=True) if p.path != "/" else "",
                class_="actions"))
        return row

    @staticmethod
    def branch_row(b: BranchRecord, actions: bool) -> list[Any]:
        depth = b.path.count("/") - 1 if b.path != "/" else 0
        row: list[Any] = [
            tags.span("\u00a0\u00a0" * depth, tags.strong(b.path)), str(b.priority), b.solving,
            [[tags.a(str(job_id), href=f"/jobs/{job_id}"), " "] for job_id in b.jobs] or "–",
            str(b.running), _limit_text(b.max_running_tasks), _limit_text(b.max_running_tasks_per_host),
            "created by jobs" if b.create_childs else "–", "paused" if b.paused else "–"]
        if actions:
            where = {"path": b.path}
            other = "need" if b.solving == "order" else "order"
            row.append(tags.span(
                action_button("resume", "branches", "update", where, values={"paused": False}) if b.paused
                else action_button("pause", "branches", "update", where, values={"paused": True}),
                action_button(f"solve by {other}", "branches", "update", where, values={"solving": other}),
                action_button("delete", "branches", "delete", where, confirm=f"Delete branch {b.path}?",
                              danger=True) if b.path != "/" and not b.jobs else "",
                class_="actions"))
        return row


def _limit_text(value: int) -> str:
    return "–" if value < 0 else str(value)
