"""The live farm's pages: overview, jobs, a job (blocks and a grid of tasks), a task and
its output, renders, users; the login form and error pages.

Each page is made on the server from the farm's state, every value escaped
(:mod:`farmnet.web.markup`). Its changing part is one ``<div id="live">`` that names what it
shows (``data-watch``) and the event sequence it was made at (``data-seq``); the site's
script listens to ``/events`` and fetches ``?partial=1`` (just that part) again when a
matching event arrives, so pages follow the farm without reloads. Buttons carry their
action as ``{item, action, filters}`` JSON for ``POST /api/act``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from farmnet.server.model import TaskState
from farmnet.web import auth
from farmnet.web.assets import CSS, JS, asset_version
from farmnet.web.context import WebContext
from farmnet.web.markup import Markup, el
from farmnet.web.routing import Call, HTTPError, Reply, html_reply, redirect

__all__ = ["LivePages", "action_button", "asset", "fmt_time", "layout", "live_page", "safe_next",
           "state_badge", "table"]

NAV = (("/", "Farm"), ("/jobs", "Jobs"), ("/renders", "Renders"), ("/users", "Users"),
       ("/stats", "Statistics"))
#: Task cells drawn per block at once (more are paged with ?offset=).
GRID_MAX = 2500
#: How often the renders page looks at the renders' resources again, in ms.
RESOURCES_POLL_MS = 10_000
#: Output shown at once, in bytes (the tail by default).
OUTPUT_PAGE = 128 * 1024
JOB_STATES = tuple(s.value for s in TaskState)
CSS_URL = f"/static/farmnet.css?v={asset_version(CSS)}"
JS_URL = f"/static/farmnet.js?v={asset_version(JS)}"


def fmt_time(t: float | None) -> str:
    if not t:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def state_badge(state: str, prefix: str = "s") -> Markup:
    return el("span", state, class_=f"state {prefix}-{state.split(' ')[0]}")


def action_button(label: str, item: str, action: str, filters: dict[str, Any], *, values: Any = None,
                  confirm: str | None = None, prompt: str | None = None, default: Any = None,
                  danger: bool = False) -> Markup:
    body: dict[str, Any] = {"item": item, "action": action, "filters": filters}
    if values is not None:
        body["values"] = values
    return el("button", label, type="button", data_act=json.dumps(body), data_confirm=confirm,
              data_prompt=prompt, data_default=None if default is None else str(default),
              class_="danger" if danger else None)


def table(headers: Sequence[str | tuple[str, str]], rows: Iterable[Sequence[Any]], *, empty: str = "none",
          class_: str | None = None) -> Markup:
    """A table; a header given as (text, "num") right-aligns its column."""
    heads, numeric = [], []
    for h in headers:
        text, kind = (h, "") if isinstance(h, str) else h
        numeric.append(kind == "num")
        heads.append(el("th", text, class_="num" if kind == "num" else None))
    body = [el("tr", [el("td", cell, class_="num" if numeric[i] else None) for i, cell in enumerate(row)])
            for row in rows]
    if not body:
        body = [el("tr", el("td", empty, colspan=str(len(headers)), class_="muted"))]
    return el("table", el("thead", el("tr", heads)), el("tbody", body), class_=class_)


def layout(ctx: WebContext, call: Call, title: str, content: Markup, *, current: str = "") -> Markup:
    nav = [el("a", label, href=href, class_="current" if href == current else None) for href, label in NAV]
    if call.user:
        who: Any = [el("span", "logged in as ", el("b", call.user)), " ",
                    el("form", el("button", "log out", type="submit"), method="post", action="/logout")
                    if call.via == "session" else None]
    elif ctx.logins:
        who = el("a", "log in", href="/login?next=" + urllib.parse.quote(call.local_url(), safe=""))
    else:
        who = el("span", "read-only", class_="muted")
    return el(
        "html",
        el("head", el("meta", charset="utf-8"),
           el("meta", name="viewport", content="width=device-width, initial-scale=1"),
           el("title", f"{title} · farmnet"), el("link", rel="stylesheet", href=CSS_URL),
           el("script", src=JS_URL, defer=True)),
        el("body",
           el("header", el("a", "farmnet", href="/", class_="brand"), nav, el("span", class_="spacer"),
              el("span", "", id="live-status"), who),
           el("main", content),
           el("div", id="flash")),
        lang="en")


def live_page(ctx: WebContext, call: Call, title: str, body: Markup, *, watch: str | None, current: str,
              poll_ms: int | None = None, status: int = 200) -> Reply:
    """A page whose ``#live`` part follows the farm; ``?partial=1`` gives only that part."""
    live = el("div", body, id="live", data_seq=str(ctx.farm.events.last), data_watch=watch,
              data_poll=str(poll_ms) if poll_ms else None)
    if call.arg("partial") == "1":
        return Reply(live.encode("utf-8"), status)
    return html_reply(layout(ctx, call, title, live, current=current), status)


def progress(percent: int) -> Markup:
    return el("span", el("progress", f"{percent}%", value=str(percent), max="100"), " ", f"{percent}%")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def resource_cells(render: dict[str, Any]) -> tuple[Any, Any, Any]:
    """CPU, memory and load/disk cells of a render: what it reported with its heartbeats
    (``cpu_percent``, ``mem_used_mb``, ``load_avg``, ...), else what it registered with."""
    res = render.get("resources")
    res = res if isinstance(res, dict) else {}
    cores = _number(res.get("cpu_num")) or render.get("cpus") or 0
    percent = _number(res.get("cpu_percent"))
    cpu: Any = f"{int(cores)} cores" if cores else "–"
    if percent is not None:
        cpu = el("span", el("progress", value=f"{min(100.0, percent):.0f}", max="100"),
                 f" {percent:.0f}% of {int(cores)}" if cores else f" {percent:.0f}%")
    total = _number(res.get("mem_total_mb")) or render.get("memory_mb") or 0
    used = _number(res.get("mem_used_mb"))
    memory: Any = f"{total / 1024:.0f} GB" if total else "–"
    if used is not None and total:
        memory = el("span", el("progress", value=f"{min(used, total):.0f}", max=f"{total:.0f}"),
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


def counts_text(counts: dict[str, int]) -> Markup:
    return el("span", [[state_badge(s), " ", str(counts[s]), " "] for s in JOB_STATES if counts.get(s)])


class LivePages:
    """Handlers of the live farm's pages."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    # --- shared pieces -------------------------------------------------------------------

    def job_actions(self, job: dict[str, Any], compact: bool = False) -> Markup:
        ids = {"id": [job["id"]]}
        buttons = [
            action_button("resume", "jobs", "resume", ids) if job["paused"]
            else action_button("pause", "jobs", "pause", ids),
            action_button("restart errors", "jobs", "restart_errors", ids)
            if job["counts"].get("ERR") else None,
            action_button("delete", "jobs", "delete", ids, confirm=f"Delete job {job['id']} {job['name']}?",
                          danger=True),
        ]
        if not compact:
            buttons[2:2] = [
                action_button("stop", "jobs", "stop", ids),
                action_button("restart", "jobs", "restart", ids, confirm="Restart every task of the job?"),
                action_button("skip", "jobs", "skip", ids, confirm="Skip every unfinished task?"),
                action_button("priority…", "jobs", "set_priority", ids, prompt="New priority (0-250)",
                              default=job["priority"]),
            ]
        return el("span", buttons, class_="actions")

    def jobs_table(self, jobs: list[dict[str, Any]], *, actions: bool) -> Markup:
        rows = []
        for job in jobs:
            counts = job["counts"]
            rows.append([
                el("a", str(job["id"]), href=f"/jobs/{job['id']}"),
                el("a", job["name"], href=f"/jobs/{job['id']}", class_="job-name"),
                el("a", job["user_name"], href=f"/jobs?user={urllib.parse.quote(job['user_name'])}"),
                state_badge(job["state"]),
                progress(job["progress"]),
                f"{counts.get('DON', 0) + counts.get('SKP', 0)} / {job['tasks']}",
                str(counts.get("RUN", 0)),
                str(counts.get("ERR", 0)),
                str(job["priority"]),
                fmt_time(job["time_creation"]),
                self.job_actions(job, compact=True) if actions else None,
            ])
        heads: list[Any] = [("id", "num"), "name", "user", "state", "progress", ("done", "num"),
                            ("running", "num"), ("errors", "num"), ("priority", "num"), "created"]
        if actions:
            heads.append("")
        return table(heads, [r if actions else r[:-1] for r in rows], empty="no jobs", class_="jobs")

    # --- pages ---------------------------------------------------------------------------

    async def index(self, call: Call) -> Reply:
        farm = self.ctx.farm
        counts = farm.counts()
        tasks = counts["tasks"]
        online = [r for r in farm.renders.values() if r.online]
        capacity = sum(r.capacity for r in online)
        used = sum(r.capacity_used for r in online)

        def card(n: Any, label: str, href: str | None = None) -> Markup:
            inner = [el("div", str(n), class_="n"), el("div", label, class_="l")]
            return el("a" if href else "div", inner, href=href, class_="card")

        cards = el("div", [
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
        unfinished = [j for j in farm.list_jobs() if j["state"] != "DON"]
        unfinished.sort(key=lambda j: (-j["priority"], j["time_creation"]))
        busy = [r.to_dict() for r in farm.renders.values() if r.online and r.tasks]
        body = el("div", el("h1", "Farm"), cards,
                  el("h2", "Unfinished jobs"), self.jobs_table(unfinished[:100], actions=self.ctx.logins),
                  el("h2", "Busy renders"), self.renders_table(busy, actions=False))
        return live_page(self.ctx, call, "Farm", body, watch="all", current="/")

    async def jobs(self, call: Call) -> Reply:
        user = call.arg("user")
        state = call.arg("state")
        if state is not None and state not in JOB_STATES:
            raise HTTPError(400, f"state: one of {', '.join(JOB_STATES)}")
        jobs = self.ctx.farm.list_jobs(user)
        if state is not None:
            jobs = [j for j in jobs if j["state"] == state]
        jobs.sort(key=lambda j: -j["id"])
        users = sorted(self.ctx.farm.users)
        filters = el("form", [
            el("label", "user", el("select", el("option", "(all)", value=""),
                                   [el("option", u, value=u, selected=u == user) for u in users],
                                   name="user")),
            el("label", "state", el("select", el("option", "(all)", value=""),
                                    [el("option", s, value=s, selected=s == state) for s in JOB_STATES],
                                    name="state")),
            el("button", "show", type="submit")], method="get", class_="filters")
        title = f"Jobs of {user}" if user else "Jobs"
        body = el("div", el("h1", title), filters, self.jobs_table(jobs, actions=self.ctx.logins))
        return live_page(self.ctx, call, title, body, watch="jobs", current="/jobs")

    async def job(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        farm = self.ctx.farm
        job = farm.show_job(job_id)
        offset = call.int_arg("offset", 0, 0, farm.settings.max_tasks_per_job) or 0
        info = el("dl", [[el("dt", k), el("dd", v)] for k, v in (
            ("user", el("a", job["user_name"], href=f"/jobs?user={urllib.parse.quote(job['user_name'])}")),
            ("state", state_badge(job["state"])),
            ("progress", progress(job["progress"])),
            ("tasks", counts_text(job["counts"])),
            ("priority", str(job["priority"])),
            ("created", fmt_time(job["time_creation"])),
            ("started", fmt_time(job["time_started"])),
            ("done", fmt_time(job["time_done"])),
            ("annotation", job.get("annotation") or "–"),
            ("depends on jobs", job.get("depend_mask") or "–"),
            ("hosts mask", job.get("hosts_mask") or "–"),
        )], class_="info")
        blocks_rows = []
        for b in job["blocks"]:
            blocks_rows.append([str(b["block"]), b["name"], state_badge(b["state"]), progress(b["progress"]),
                                counts_text(b["counts"]), b["service"], str(b["capacity"]), str(b["tasks"]),
                                b.get("depend_mask") or "–", ", ".join(b.get("avoided_hosts") or ()) or "–",
                                el("code", b["command"])])
        blocks = table([("#", "num"), "name", "state", "progress", "tasks", "service", ("capacity", "num"),
                        ("count", "num"), "depends on", "avoided hosts", "command"], blocks_rows,
                       class_="blocks")
        grids = []
        for b in job["blocks"]:
            tasks, total = farm.list_tasks(job_id, b["block"], offset, GRID_MAX)
            cells = [el("a", href=f"/jobs/{job_id}/{b['block']}/{t['task']}", class_=f"t s-{t['state']}",
                        title=f"{t['name']}: {t['state']}" + (f" on {t['host']}" if t["host"] else "")
                        + (f", {t['progress']}%" if t["state"] == "RUN" else ""),
                        data_state=t["state"]) for t in tasks]
            pager = []
            if offset > 0:
                pager.append(el("a", "« earlier tasks", href=f"?offset={max(0, offset - GRID_MAX)}"))
            if offset + GRID_MAX < total:
                pager.append(el("a", "later tasks »", href=f"?offset={offset + GRID_MAX}"))
            grids.append(el("div",
                            el("h2", f"Block {b['block']}: {b['name']}",
                               el("span", f" tasks {offset + 1 if tasks else 0}–{offset + len(tasks)} "
                                          f"of {total}", class_="muted")),
                            el("div", cells, class_="grid", data_block=str(b["block"])), el("p", pager)))
        legend = el("p", [[state_badge(s), " "] for s in JOB_STATES], class_="legend")
        explain = None
        if call.arg("explain") == "1":
            why = farm.explain(job_id)
            explain = el("div", el("h2", "Why is it waiting?"),
                         el("p", "; ".join(why["reasons"]) or "nothing at the job's level"),
                         table(["block", "ready", "running", "reasons", "renders refusing", "can run on"],
                               [[b["name"], str(b["ready"]), str(b["running"]),
                                 "; ".join(b["reasons"]) or "–",
                                 "; ".join(f"{n} renders: {why_}" for why_, n in b["renders"].items()) or "–",
                                 ", ".join(b["can_run_on"][:20]) or "–"] for b in why["blocks"]]))
        body = el("div",
                  el("h1", f"Job {job_id}: ", el("span", job["name"], class_="job-name")),
                  el("p", self.job_actions(job) if self.ctx.logins else None, " ",
                     el("a", "why is it waiting?", href=f"/jobs/{job_id}?explain=1")),
                  info, explain, el("h2", "Blocks"), blocks, legend, grids)
        return live_page(self.ctx, call, f"Job {job_id}", body, watch=f"job:{job_id}", current="/jobs")

    async def task(self, call: Call) -> Reply:
        job_id, block, number = int(call.groups["job"]), int(call.groups["block"]), int(call.groups["task"])
        farm = self.ctx.farm
        task = farm.task((job_id, block, number))
        data = task.to_dict()
        job = farm.job(job_id)
        spec = task.block.spec
        runs = task.starts_count
        run = call.int_arg("run", runs, 0, max(runs, 0)) or runs
        frames = spec.frames(number) if spec.numeric else None
        info = el("dl", [[el("dt", k), el("dd", v)] for k, v in (
            ("job", el("a", f"{job_id}: {job.name}", href=f"/jobs/{job_id}")),
            ("block", f"{block}: {task.block.name}"),
            ("state", state_badge(data["state"])),
            ("progress", progress(data["progress"])),
            ("frames", f"{frames[0]}–{frames[1]}" if frames else "–"),
            ("host", data["host"] or "–"),
            ("runs", str(runs)),
            ("errors", str(data["errors_count"])),
            ("started", fmt_time(data["time_started"])),
            ("done", fmt_time(data["time_done"])),
            ("command", el("code", task.command)),
        )], class_="info")
        actions = None
        if self.ctx.logins:
            f = {"job_id": job_id, "block": block, "task": [number]}
            actions = el("p", el("span", [action_button("restart", "tasks", "restart", f),
                                          action_button("skip", "tasks", "skip", f)], class_="actions"))
        output = el("p", "no output yet", class_="muted")
        run_links = None
        if runs:
            run_links = el("p", "run: ", [[el("a", str(r), href=f"?run={r}",
                                              class_="current" if r == run else None), " "]
                                          for r in range(1, runs + 1)])
            output = self.output(call, (job_id, block, number), run)
        running = data["state"] in ("RUN", "WRC") and run == runs
        body = el("div", el("h1", f"Task {task.name}"), actions, info, el("h2", f"Output of run {run}"),
                  run_links, output)
        return live_page(self.ctx, call, f"Task {job_id}/{block}/{number}", body,
                         watch=f"task:{job_id}:{block}:{number}", current="/jobs",
                         poll_ms=2000 if running else None)

    def output(self, call: Call, key: tuple[int, int, int], run: int) -> Markup:
        outputs = self.ctx.outputs
        if outputs is None:
            return el("p", "task output is not kept here", class_="muted")
        try:
            size = outputs.path(key, run).stat().st_size
        except OSError:
            size = 0
        tail = max(0, size - OUTPUT_PAGE)
        offset = call.int_arg("offset", tail, 0, max(size, 0)) or 0
        data = outputs.read(key, run, offset, OUTPUT_PAGE)
        pager = []
        if offset > 0:
            pager.append(el("a", "« earlier", href=f"?run={run}&offset={max(0, offset - OUTPUT_PAGE)}"))
        if offset + len(data) < size:
            pager.append(el("a", "later »", href=f"?run={run}&offset={offset + len(data)}"))
        note = f"bytes {offset}–{offset + len(data)} of {size}" if size else "empty"
        return el("div", el("p", note, " ", pager, class_="muted"),
                  el("pre", data.decode("utf-8", "replace"), class_="output"))

    def renders_table(self, renders: list[dict[str, Any]], *, actions: bool) -> Markup:
        rows = []
        for r in sorted(renders, key=lambda r: r["name"]):
            tasks = [[el("a", f"{k[0]}/{k[1]}/{k[2]}", href=f"/jobs/{k[0]}/{k[1]}/{k[2]}"), " "]
                     for k in r["tasks"]]
            used = r["capacity_used"] * 100 // r["capacity"] if r["capacity"] else 0
            cpu, memory, load = resource_cells(r)
            row = [el("a", r["name"], href=f"/renders#{r['name']}", id=r["name"]),
                   state_badge(r["state"], "r"), tasks or "–",
                   el("span", el("progress", value=str(used), max="100"),
                      f" {r['capacity_used']} / {r['capacity']}"),
                   str(r["max_tasks"] or "–"), cpu, memory, load, r["platform"] or "–",
                   ", ".join(r["services"]) or "all", r["owner"] or "–", fmt_time(r["time_seen"]),
                   str(r["errors_in_row"])]
            if actions:
                names = {"name": [r["name"]]}
                row.append(el("span", [
                    action_button("resume", "renders", "resume", names) if r["paused"]
                    else action_button("pause", "renders", "pause", names),
                    action_button("free", "renders", "free", names) if (r["nimby"] or r["NIMBY"])
                    else action_button("nimby", "renders", "nimby", names),
                    action_button("eject", "renders", "eject", names, confirm="Return its tasks to ready?")
                    if r["tasks"] else None,
                    action_button("heal", "renders", "heal", names) if r["sick"] else None,
                ], class_="actions"))
            rows.append(row)
        heads: list[Any] = ["name", "state", "tasks", "capacity", ("max tasks", "num"), "CPU", "memory",
                            "load, disk", "platform", "services", "owner", "last seen",
                            ("errors in a row", "num")]
        if actions:
            heads.append("")
        return table(heads, rows, empty="no renders", class_="renders")

    async def renders(self, call: Call) -> Reply:
        renders = self.ctx.farm.list_renders()
        body = el("div", el("h1", "Renders"), self.renders_table(renders, actions=self.ctx.logins))
        # Resources come with heartbeats, which are not events: look again now and then.
        return live_page(self.ctx, call, "Renders", body, watch="renders", current="/renders",
                         poll_ms=RESOURCES_POLL_MS)

    async def users(self, call: Call) -> Reply:
        rows = [[el("a", u["name"], href=f"/jobs?user={urllib.parse.quote(u['name'])}"), str(u["jobs"]),
                 str(u["running"]), str(u["running_capacity"]), str(u["priority"]),
                 str(u["max_running_tasks"]) if u["max_running_tasks"] >= 0 else "–",
                 u["jobs_solving"], u["hosts_mask"] or "–", fmt_time(u["time_registered"])]
                for u in sorted(self.ctx.farm.list_users(), key=lambda u: u["name"])]
        body = el("div", el("h1", "Users"),
                  table(["name", ("jobs", "num"), ("running", "num"), ("running capacity", "num"),
                         ("priority", "num"), ("max running", "num"), "jobs solving", "hosts mask",
                         "registered"], rows, empty="no users", class_="users"))
        return live_page(self.ctx, call, "Users", body, watch="users", current="/users")

    # --- logging in ----------------------------------------------------------------------

    def login_form(self, call: Call, next_url: str, message: str | None = None, user: str = "") -> Markup:
        if not self.ctx.logins:
            content = el("div", el("h1", "Log in"),
                         el("p", "Logins are off on this server: it has no password file "
                                 "(server.auth.users_file).", class_="banner off"))
        else:
            content = el("div", el("h1", "Log in"),
                         el("p", message, class_="error-text") if message else None,
                         el("form",
                            el("label", "user", el("input", name="user", value=user, autocomplete="username",
                                                   required=True, autofocus=True)),
                            el("label", "password", el("input", name="password", type="password",
                                                       autocomplete="current-password", required=True)),
                            el("input", type="hidden", name="next", value=next_url),
                            el("button", "log in", type="submit", id="login-submit"),
                            method="post", action="/login", class_="login"))
        return layout(self.ctx, call, "Log in", content)

    async def login_page(self, call: Call) -> Reply:
        return html_reply(self.login_form(call, safe_next(call.arg("next"))))

    async def login_post(self, call: Call) -> Reply:
        form = call.form()
        user, password = form.get("user", ""), form.get("password", "")
        next_url = safe_next(form.get("next"))
        try:
            avatar = await auth.login(self.ctx.portal, user, password)
        except auth.LoginFailed as e:
            return html_reply(self.login_form(call, next_url, str(e), user), 401)
        auth.start_session(call.request, avatar)
        return redirect(next_url)

    async def logout(self, call: Call) -> Reply:
        auth.end_session(call.request)
        return redirect("/")

    def error_page(self, call: Call, status: int, message: str) -> Markup:
        return layout(self.ctx, call, f"Error {status}",
                      el("div", el("h1", f"Error {status}"), el("p", message, class_="banner off")))


def safe_next(value: str | None) -> str:
    """Where to go after a login: a path on this site only."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if len(value) > 2000 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def asset(text: str, content_type: str) -> Callable[[Call], Any]:
    body = text.encode("utf-8")

    async def handler(call: Call) -> Reply:
        return Reply(body, 200, content_type, ((b"cache-control", b"public, max-age=86400"),))

    return handler


