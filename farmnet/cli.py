"""``farmnet``: the command line of the farm (submit, list, show, act, watch, wait).

Every command connects with the async client (`farmnet.client`) on a reactor run by
`twisted.internet.task.react`, and closes the connection itself. Server, user and
timeout come from the client section of the configuration (``--config`` or
``$FARMNET_CONFIG``), overridden by ``$FARMNET_SERVER``/``$FARMNET_USER``, overridden by
``--server``/``--user``/``--timeout``.

Exit codes: 0 success; 1 ``wait`` saw the job end in ERR; 2 the farm refused (unknown
job, permission denied, bad job file...) or a usage error; 3 the server cannot be
reached (refused, lost, or silent past the timeout); 130 interrupted. An expected
failure prints ``farmnet: <message>`` on stderr, never a traceback (a bug does print
one, and exits 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TextIO

from twisted.internet import task
from twisted.protocols import amp

import farmnet
from farmnet import errors
from farmnet.client import (
    ClientError,
    FarmClient,
    ServerUnreachable,
    connect,
    find_password,
    load_spec,
)
from farmnet.client.blender import blender_job
from farmnet.config import ClientConfig, ConfigError, default_config_path, load_config
from farmnet.server.storeadmin import add_store_commands, run_store_command
from farmnet.stats.admin import add_db_commands, run_db_command

Handler = Callable[[FarmClient, argparse.Namespace], Awaitable[int]]

EXIT_OK, EXIT_JOB_ERROR, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# --- output helpers --------------------------------------------------------------------


def _fail(message: str) -> None:
    print(f"farmnet: {message}", file=sys.stderr)


def _when(seconds: float) -> str:
    """A timestamp as people read it: the time alone when it is today."""
    if not seconds:
        return "-"
    moment = time.localtime(seconds)
    if time.strftime("%Y-%m-%d", moment) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)


def _duration(seconds: float) -> str:
    if seconds < 0:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"


def _ran(item: dict[str, Any], now: float | None = None) -> str:
    """How long a task or job has run (so far)."""
    started, done = item.get("time_started") or 0, item.get("time_done") or 0
    if not started:
        return "-"
    return _duration((done or (now or time.time())) - started)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO | None = None) -> None:
    """Aligned columns; a column holding only numbers is right-aligned."""
    out = out or sys.stdout
    raw = [list(row) for row in rows]
    cells = [[str(value) for value in row] for row in raw]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(raw) and all(isinstance(row[i], int | float) for row in raw)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    print(line(list(headers)), file=out)
    for row in cells:
        print(line(row), file=out)


def _json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    print()


def _cut(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _counts(item: dict[str, Any]) -> str:
    return " ".join(f"{state} {n}" for state, n in sorted(item.get("counts", {}).items()))


# --- commands --------------------------------------------------------------------------


async def cmd_submit(client: FarmClient, args: argparse.Namespace) -> int:
    job_id, warnings = await client.submit(args.spec)
    for warning in warnings:
        _fail(f"warning: {warning}")
    print(job_id, flush=True)
    return await _wait_job(client, job_id) if args.wait else EXIT_OK


async def cmd_jobs(client: FarmClient, args: argparse.Namespace) -> int:
    jobs = sorted(await client.jobs(args.owner), key=lambda j: j["id"])
    if args.json:
        _json(jobs)
        return EXIT_OK
    _table(["ID", "NAME", "USER", "STATE", "PRI", "DONE", "TASKS", "RUN", "DON", "ERR", "CREATED", "TIME"],
           [[j["id"], j["name"], j["user_name"], j["state"], j["priority"], f"{j['progress']}%",
             j["tasks"], j["counts"].get("RUN", 0), j["counts"].get("DON", 0), j["counts"].get("ERR", 0),
             _when(j["time_creation"]), _ran(j)] for j in jobs])
    return EXIT_OK


async def cmd_job(client: FarmClient, args: argparse.Namespace) -> int:
    job = await client.job(args.id)
    if args.json:
        _json(job)
        return EXIT_OK
    print(f"job {job['id']}  {job['name']}  (user {job['user_name']})")
    details = [
        ("state", f"{job['state']}  {job['progress']}%" + ("  paused" if job["paused"] else "")),
        ("priority", job["priority"]),
        ("tasks", f"{job['tasks']}  ({_counts(job)})"),
        ("created", _when(job["time_creation"])),
        ("started", _when(job["time_started"])),
        ("done", _when(job["time_done"])),
        ("run time", _ran(job)),
        ("depend_mask", job.get("depend_mask", "")),
        ("command_post", job.get("command_post", "")),
        ("annotation", job.get("annotation", "")),
    ]
    for label, value in details:
        if value not in ("", "-"):
            print(f"  {label:<13} {value}")
    print()
    _table(["#", "BLOCK", "SERVICE", "CAP", "TASKS", "DONE", "COUNTS", "COMMAND"],
           [[b["block"], b["name"], b["service"], b["capacity"], b["tasks"], f"{b['progress']}%",
             _counts(b), _cut(b["command"])] for b in job["blocks"]])
    return EXIT_OK


async def cmd_tasks(client: FarmClient, args: argparse.Namespace) -> int:
    tasks = await client.tasks(args.id, args.block)
    if args.json:
        _json(tasks)
        return EXIT_OK
    now = time.time()
    _table(["BLOCK", "TASK", "NAME", "STATE", "DONE", "ERRORS", "STARTS", "HOST", "STARTED", "TIME"],
           [[t["block"], t["task"], t["name"], t["state"] + (" WRN" if t.get("warning") else ""),
             f"{t['progress']}%", t["errors_count"], t["starts_count"], t["host"] or "-",
             _when(t["time_started"]), _ran(t, now)]
            for t in tasks])
    for t in tasks:  # what its parser flagged, as Afanasy shows WRN and the line in the task's log
        if t.get("warning"):
            print(f"warning: task {t['block']}.{t['task']}: {t['warning']}")
    return EXIT_OK


async def cmd_output(client: FarmClient, args: argparse.Namespace) -> int:
    data = await client.output(args.id, args.block, args.task, args.run)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return EXIT_OK


async def cmd_files(client: FarmClient, args: argparse.Namespace) -> int:
    runs = await client.output_files(args.id)
    if args.json:
        _json(runs)
        return EXIT_OK
    _table(["BLOCK", "TASK", "RUN", "FILE"],
           [[r["block"], r["task"], r["run"], path] for r in runs for path in r["paths"]])
    return EXIT_OK


async def cmd_renders(client: FarmClient, args: argparse.Namespace) -> int:
    renders = sorted(await client.renders(), key=lambda r: r["name"])
    if args.json:
        _json(renders)
        return EXIT_OK
    _table(["ID", "NAME", "STATE", "POOL", "CAPACITY", "TASKS", "CPUS", "MEMORY", "PLATFORM", "SEEN"],
           [[r["id"], r["name"], r["state"], r.get("pool") or "-", f"{r['capacity_used']}/{r['capacity']}",
             len(r["tasks"]),
             r["cpus"], f"{r['memory_mb'] // 1024} GB" if r["memory_mb"] else "-",
             _cut(r["platform"], 30) or "-", _when(r["time_seen"])] for r in renders])
    return EXIT_OK


async def cmd_users(client: FarmClient, args: argparse.Namespace) -> int:
    users = sorted(await client.users(), key=lambda u: u["name"])
    if args.json:
        _json(users)
        return EXIT_OK
    _table(["NAME", "JOBS", "RUNNING", "SINCE"],
           [[u["name"], u["jobs"], u["running"], _when(u["time_registered"])] for u in users])
    return EXIT_OK


_DONE_WORDS = {"pause": "paused", "resume": "resumed", "delete": "deleted", "restart": "restarted",
               "restart_errors": "restarted the failed tasks of", "set_priority": "set the priority of",
               "stop": "stopped", "skip": "skipped", "restart_running": "restarted the running tasks of",
               "set": "changed"}


async def cmd_action(client: FarmClient, args: argparse.Namespace) -> int:
    done = await client.action(args.ids, args.action, args.value)
    for job_id in done:
        print(f"{_DONE_WORDS[args.action]} job {job_id}")
    return EXIT_OK


def _assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """key=value words; a value that parses as JSON (5, true, {"NUKE": 1}) is taken as such."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


async def cmd_set(client: FarmClient, args: argparse.Namespace) -> int:
    values = _assignments(args.values)
    if args.block is None:
        done = await client.action(args.ids, "set", values)
    else:
        done = await client.act("blocks", "update", {"job_id": args.ids[0], "block": args.block}, values)
    for job_id in done:
        print(f"changed job {job_id}")
    return EXIT_OK


async def cmd_reset_error_hosts(client: FarmClient, args: argparse.Namespace) -> int:
    if args.block is None:
        done = await client.action(args.ids, "reset_error_hosts")
    else:
        done = []
        for job_id in args.ids:
            done += await client.act("blocks", "reset_error_hosts", {"job_id": job_id, "block": args.block})
    for job_id in done:
        print(f"reset the error hosts of job {job_id}")
    return EXIT_OK


async def cmd_why(client: FarmClient, args: argparse.Namespace) -> int:
    """Why is my job waiting? The scheduler's own answer, per block."""
    why = await client.act("jobs", "explain", {"id": args.id})
    if args.json:
        _json(why)
        return EXIT_OK
    print(f"job {why['job_id']} {why['name']}: {why['state']}")
    for reason in why["reasons"]:
        print(f"  waits: {reason}")
    for block in why["blocks"]:
        print(f"  block {block['block']} {block['name']}: {block['ready']} ready, {block['running']} running")
        for reason in block["reasons"]:
            print(f"    waits: {reason}")
        for reason, count in sorted(block["renders"].items(), key=lambda kv: -kv[1]):
            print(f"    {count} render{'s' if count != 1 else ''}: {reason}")
        if block["can_run_on"]:
            print(f"    can run now on: {', '.join(block['can_run_on'])}")
    return EXIT_OK


async def cmd_task(client: FarmClient, args: argparse.Namespace) -> int:
    done = await client.act("tasks", args.action, {"job_id": args.id, "block": args.block,
                                                   "task": args.tasks})
    print(f"{args.action}: job {args.id} block {args.block} tasks {' '.join(map(str, done))}")
    return EXIT_OK


async def cmd_render(client: FarmClient, args: argparse.Namespace) -> int:
    names, pairs = args.names, args.values or []
    action = args.action.replace("-", "_")
    if action in ("set", "update"):  # `render set r1 r2 capacity=2000`, or `render update r1 --set ...`
        action = "update"
        pairs = [*pairs, *(n for n in names if "=" in n)]
        names = [n for n in names if "=" not in n]
        if not pairs or not names:
            raise ValueError("farmnet render set NAME... KEY=VALUE...: give names and at least one KEY=VALUE")
    elif pairs:
        raise ValueError(f"farmnet render {args.action}: takes no KEY=VALUE")
    done = await client.act("renders", action, {"name": names}, _assignments(pairs) if pairs else None)
    print(f"{args.action}: {' '.join(done)}")
    return EXIT_OK


async def cmd_user(client: FarmClient, args: argparse.Namespace) -> int:
    if args.action == "delete":
        if args.values:
            raise SystemExit("farmnet user delete NAME...: takes no KEY=VALUE")
        done = await client.act("users", "delete", {"name": args.names})
        print(f"deleted: {' '.join(done)}")
        return EXIT_OK
    if not args.values:
        raise SystemExit("farmnet user set NAME KEY=VALUE...: give at least one KEY=VALUE")
    done = await client.act("users", "update", {"name": args.names[:1]}, _assignments(args.values))
    print(f"changed: {' '.join(done)}")
    return EXIT_OK


def _limit(value: int) -> str:
    return "-" if value < 0 else str(value)


async def cmd_pools(client: FarmClient, args: argparse.Namespace) -> int:
    pools = await client.act("pools", "list")
    if args.json:
        _json(pools)
        return EXIT_OK
    _table(["POOL", "PATTERN", "PRI", "RENDERS", "BUSY", "RUN", "MAX", "SERVICES", "DISABLED", "STATE"],
           [[p["path"], p["pattern"] or "-", p["priority"], len(p["renders"]), p["renders_busy"],
             p["running"], _limit(p["max_running_tasks"]), ",".join(p["services"]) or "-",
             ",".join(p["services_disabled"]) or "-", "paused" if p["paused"] else "-"] for p in pools])
    return EXIT_OK


async def cmd_branches(client: FarmClient, args: argparse.Namespace) -> int:
    branches = await client.act("branches", "list")
    if args.json:
        _json(branches)
        return EXIT_OK
    _table(["BRANCH", "PRI", "SOLVING", "JOBS", "RUN", "MAX", "MAX/HOST", "CHILDS", "STATE"],
           [[b["path"], b["priority"], b["solving"], len(b["jobs"]), b["running"],
             _limit(b["max_running_tasks"]), _limit(b["max_running_tasks_per_host"]),
             "create" if b["create_childs"] else "-", "paused" if b["paused"] else "-"] for b in branches])
    return EXIT_OK


async def cmd_pool(client: FarmClient, args: argparse.Namespace) -> int:
    """create/set/delete a pool, move renders into it, reassign renders by the patterns."""
    words, action = args.words, args.action
    if action in ("create", "set"):
        values = _assignments(words) if words else None
        for key in ("services", "services_disabled"):  # services=nuke,maya
            if values and isinstance(values.get(key), str):
                values[key] = [name for name in values[key].split(",") if name]
        if action == "set" and not values:
            raise ValueError("farmnet pool set PATH KEY=VALUE...: give at least one KEY=VALUE")
        done = await client.act("pools", "create" if action == "create" else "update", {"path": args.path},
                                values)
    elif action == "delete":
        if words:
            raise ValueError("farmnet pool delete PATH: takes nothing more")
        done = await client.act("pools", "delete", {"path": args.path})
    else:  # move / reassign: render names
        if action == "move" and not words:
            raise ValueError("farmnet pool move PATH RENDER...: name the renders to move")
        done = await client.act("pools", action, {"path": args.path}, {"renders": words} if words else None)
    print(f"{action}: {' '.join(done)}")
    return EXIT_OK


async def cmd_branch(client: FarmClient, args: argparse.Namespace) -> int:
    """create/set/delete a branch, move jobs into it."""
    words, action = args.words, args.action
    if action in ("create", "set"):
        values = _assignments(words) if words else None
        if action == "set" and not values:
            raise ValueError("farmnet branch set PATH KEY=VALUE...: give at least one KEY=VALUE")
        done = await client.act("branches", "create" if action == "create" else "update",
                                {"path": args.path}, values)
    elif action == "delete":
        if words:
            raise ValueError("farmnet branch delete PATH: takes nothing more")
        done = await client.act("branches", "delete", {"path": args.path})
    else:
        try:
            ids = [int(w) for w in words]
        except ValueError:
            raise ValueError("farmnet branch move PATH JOB_ID...: job ids are numbers") from None
        if not ids:
            raise ValueError("farmnet branch move PATH JOB_ID...: name the jobs to move")
        done = await client.act("branches", "move", {"path": args.path}, {"jobs": ids})
    print(f"{action}: {' '.join(map(str, done))}")
    return EXIT_OK


async def cmd_act(client: FarmClient, args: argparse.Namespace) -> int:
    """The one action API, raw: for scripts."""
    _json(await client.act(args.item, args.action, json.loads(args.filters or "{}"),
                           json.loads(args.values) if args.values else None))
    return EXIT_OK


async def cmd_watch(client: FarmClient, args: argparse.Namespace) -> int:
    async for event in client.events():
        print(json.dumps(event, ensure_ascii=False) if args.json else _describe_event(event), flush=True)
    return EXIT_OK


async def cmd_wait(client: FarmClient, args: argparse.Namespace) -> int:
    return await _wait_job(client, args.id)


def _describe_event(event: dict[str, Any]) -> str:
    """One line a person can read: local time, what happened to what."""
    kind = event.get("kind")
    stamp = time.strftime("%H:%M:%S")
    key = f"{event.get('job_id')}/{event.get('block')}/{event.get('task')}"
    if kind == "job":
        j = event["job"]
        text = f"job {j['id']} {j['name']!r} ({j['user_name']}): {j['state']} {j['progress']}%"
    elif kind == "task":
        text = f"task {key}: {event['state']}"
        if event.get("host"):
            text += f" on {event['host']}"
        if event.get("errors_count"):
            text += f" ({event['errors_count']} errors)"
    elif kind == "progress":
        text = f"task {key}: {event['progress']}%"
    elif kind == "job_deleted":
        text = f"job {event['job_id']} deleted"
    elif kind == "render":
        r = event["render"]
        text = f"render {r['name']}: {r['state']}"
    elif kind == "user":
        text = f"user {event['user']['name']} appeared"
    elif kind == "pool":
        p = event["pool"]
        text = (f"pool {p['path']}: {len(p['renders'])} renders, {p['running']} running"
                + (", paused" if p["paused"] else ""))
    elif kind == "branch":
        b = event["branch"]
        text = (f"branch {b['path']}: {len(b['jobs'])} jobs, {b['running']} running"
                + (", paused" if b["paused"] else ""))
    elif kind in ("pool_deleted", "branch_deleted"):
        text = f"{kind.removesuffix('_deleted')} {event['path']} deleted"
    elif kind == "reset":
        text = "events were missed: reload the farm's state"
    else:
        text = f"{kind} {json.dumps({k: v for k, v in event.items() if k not in ('kind', 'seq')})}"
    return f"{stamp} {text}"


class _ProgressBar:
    """A job's progress on stderr: one redrawn line on a terminal, else a line per change."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def update(self, job: dict[str, Any]) -> None:
        counts = job["counts"]
        done = job["progress"] * self.WIDTH // 100
        text = (f"job {job['id']} [{'#' * done}{'.' * (self.WIDTH - done)}] {job['progress']:3d}%  "
                f"RUN {counts.get('RUN', 0)}  DON {counts.get('DON', 0)}  ERR {counts.get('ERR', 0)}"
                f"  of {job['tasks']}  {job['state']}")
        if text == self.last:
            return
        if self.tty:
            self.out.write("\r" + text.ljust(len(self.last)))
        else:
            self.out.write(text + "\n")
        self.out.flush()
        self.last = text

    def finish(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


async def _wait_job(client: FarmClient, job_id: int) -> int:
    bar = _ProgressBar(sys.stderr)
    try:
        job = await client.wait(job_id, on_progress=bar.update)
    finally:
        bar.finish()
    if job["state"] == "DON":
        return EXIT_OK
    _fail(f"job {job_id} ended in error: {_counts(job)}")
    return EXIT_JOB_ERROR


# --- arguments -------------------------------------------------------------------------


def _connection_options(user_help: str) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--server", metavar="ENDPOINT",
                       help="server: HOST[:PORT] (port 51100 by default), or a Twisted endpoint such as "
                            "tls:farm.example.com:51100; several servers on one PostgreSQL store "
                            "comma-separated (default: $FARMNET_SERVER, else the config)")
    group.add_argument("--user", metavar="NAME", help=user_help)
    group.add_argument("--config", metavar="FILE", help="config file (default: $FARMNET_CONFIG)")
    group.add_argument("--timeout", metavar="SECONDS", type=float, help="seconds to wait for the server")
    group.add_argument("--password-file", metavar="FILE",
                       help="file whose first line is your password, for a server with a users file "
                            "(default: $FARMNET_PASSWORD, else the config's password_file)")
    return options


def build_parser() -> argparse.ArgumentParser:
    acting = _connection_options("act as this user (default: $FARMNET_USER, else the config, "
                                 "else your login)")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(prog="farmnet", description="Talk to a farmnet render farm.")
    parser.add_argument("--version", action="version", version=f"farmnet {farmnet.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_db_commands(sub)
    add_store_commands(sub)

    def command(name: str, handler: Handler, help: str, lists: bool = False,
                **defaults: Any) -> argparse.ArgumentParser:
        parents = [acting, listing] if lists else [acting]
        p = sub.add_parser(name, parents=parents, help=help, description=help)
        p.set_defaults(handler=handler, **defaults)
        return p

    p = command("submit", cmd_submit, "submit a job file (YAML or JSON, af.py's format too); "
                "prints the job id")
    p.add_argument("file", help="the job file")
    p.add_argument("--wait", action="store_true", help="then wait for the job, as `farmnet wait`")
    p = command("jobs", cmd_jobs, "list jobs", lists=True)
    p.add_argument("--owner", metavar="NAME", help="only this user's jobs (default: every user's)")
    p = command("job", cmd_job, "show a job and its blocks", lists=True)
    p.add_argument("id", type=int)
    p = command("tasks", cmd_tasks, "list a job's tasks", lists=True)
    p.add_argument("id", type=int)
    p.add_argument("--block", type=int, metavar="N", help="only block N")
    p = command("output", cmd_output, "print a task's output (raw bytes)")
    p.add_argument("id", type=int)
    p.add_argument("block", type=int)
    p.add_argument("task", type=int)
    p.add_argument("--run", type=int, default=0, metavar="N", help="which run (default: the latest)")
    p = command("files", cmd_files, "list the files a job's tasks wrote (rendered frames)", lists=True)
    p.add_argument("id", type=int)
    p = command("blender", cmd_submit, "submit a Blender job: render a .blend file's frames; "
                "prints the job id")
    p.add_argument("file", help="the .blend file (a path the renders can read)")
    p.add_argument("--frames", required=True, metavar="FIRST-LAST", help="frames to render, e.g. 1-24")
    p.add_argument("--chunk", type=int, default=1, metavar="N", help="frames per task (default 1)")
    p.add_argument("-o", "--output", default="", metavar="PATTERN",
                   help="output path pattern, #### the frame (default: the file's)")
    p.add_argument("--format", default="", help="image format, e.g. PNG, OPEN_EXR (default: the file's)")
    p.add_argument("--engine", default="", help="CYCLES, BLENDER_EEVEE_NEXT, ... (default: the file's)")
    p.add_argument("--samples", type=int, default=0, metavar="N", help="render samples (default: the file's)")
    p.add_argument("--scene", default="", help="scene to render (default: the file's active scene)")
    p.add_argument("--camera", default="", help="camera object (default: the scene's)")
    p.add_argument("--view-layer", default="", metavar="NAME", help="render only this view layer")
    p.add_argument("--name", default="", help="job name (default: the file's name)")
    p.add_argument("--priority", type=int, metavar="N", help="job priority (0..250)")
    p.add_argument("--wait", action="store_true", help="then wait for the job, as `farmnet wait`")
    command("renders", cmd_renders, "list renders", lists=True)
    command("users", cmd_users, "list users", lists=True)
    for name, action, what in (
            ("pause", "pause", "pause jobs: no new task starts"),
            ("resume", "resume", "resume paused jobs"),
            ("delete", "delete", "delete jobs (their running tasks are killed)"),
            ("restart", "restart", "restart every task of jobs"),
            ("restart-errors", "restart_errors", "restart the failed tasks of jobs"),
            ("restart-running", "restart_running", "restart the running tasks of jobs"),
            ("stop", "stop", "pause jobs and return their running tasks to ready"),
            ("skip", "skip", "skip every unfinished task of jobs")):
        p = command(name, cmd_action, what, action=action, value=None)
        p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p = command("reset-error-hosts", cmd_reset_error_hosts,
                "jobs (or, with --block, one block) forget the renders they failed on, "
                "and may run there again")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--block", type=int, metavar="N", help="only block N")
    p = command("priority", cmd_action, "set a job's priority (0..250)", action="set_priority")
    p.add_argument("ids", type=int, nargs=1, metavar="ID")
    p.add_argument("value", type=int, metavar="VALUE")
    p = command("set", cmd_set, "change job (or, with --block, block) parameters: key=value ...")
    p.add_argument("ids", type=int, nargs=1, metavar="ID")
    p.add_argument("values", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--block", type=int, metavar="N", help="change block N instead of the job")
    p = command("why", cmd_why, "why is a job waiting? (the scheduler's own answer)", lists=True)
    p.add_argument("id", type=int)
    p = command("task", cmd_task, "restart or skip tasks of a block")
    p.add_argument("action", choices=["restart", "skip"])
    p.add_argument("id", type=int)
    p.add_argument("block", type=int)
    p.add_argument("tasks", type=int, nargs="+", metavar="TASK")
    p = command("render", cmd_render, "act on renders: nimby (only the owner's jobs), NIMBY (none), "
                "free, pause, resume, eject (tasks back to ready), exit, heal (clear SICK), sleep, wake, "
                "reset-error-hosts (jobs may run there again), set NAME KEY=VALUE..., delete")
    p.add_argument("action", choices=["nimby", "NIMBY", "free", "pause", "resume", "eject", "exit",
                                      "heal", "sleep", "wake", "reset-error-hosts", "set", "update",
                                      "delete"])
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="render names; with set, NAME then KEY=VALUE (capacity=N max_tasks=N)")
    p.add_argument("--set", dest="values", nargs="+", metavar="KEY=VALUE",
                   help="with update: capacity=N max_tasks=N")
    p = command("user", cmd_user, "change users (admins): set NAME priority, limits, hosts masks, "
                "errors_*; delete NAME (a user without jobs)")
    p.add_argument("action", choices=["set", "delete"])
    p.add_argument("names", nargs=1, metavar="NAME")
    p.add_argument("values", nargs="*", metavar="KEY=VALUE")
    command("pools", cmd_pools, "list render pools", lists=True)
    p = command("pool", cmd_pool, "change render pools (admins): create PATH [KEY=VALUE...], set PATH "
                "KEY=VALUE..., delete PATH, move PATH RENDER..., reassign PATH [RENDER...] (by the patterns)")
    p.add_argument("action", choices=["create", "set", "delete", "move", "reassign"])
    p.add_argument("path", metavar="PATH", help="the pool, e.g. /farm/gpu")
    p.add_argument("words", nargs="*", metavar="KEY=VALUE|RENDER",
                   help="settings (pattern, services, services_disabled, tickets_host, tickets_pool, "
                        "max_tasks_host, capacity_host, max_running_tasks, priority, paused, new_nimby, "
                        "new_paused), or render names")
    command("branches", cmd_branches, "list job branches", lists=True)
    p = command("branch", cmd_branch, "change job branches (admins): create PATH [KEY=VALUE...], set PATH "
                "KEY=VALUE..., delete PATH, move PATH JOB_ID...")
    p.add_argument("action", choices=["create", "set", "delete", "move"])
    p.add_argument("path", metavar="PATH", help="the branch, e.g. /projects/film")
    p.add_argument("words", nargs="*", metavar="KEY=VALUE|JOB_ID",
                   help="settings (priority, max_running_tasks, max_running_tasks_per_host, solving, "
                        "create_childs, paused), or job ids")
    p = command("act", cmd_act, "the one action API: ITEM ACTION [--filters JSON] [--values JSON]")
    p.add_argument("item", choices=["jobs", "blocks", "tasks", "renders", "users", "pools", "branches"])
    p.add_argument("action")
    p.add_argument("--filters", help='e.g. \'{"id": 3}\'')
    p.add_argument("--values", help="JSON")
    command("watch", cmd_watch, "print farm events as they happen, until Ctrl-C", lists=True)
    p = command("wait", cmd_wait, "wait for a job to end: exit 0 when done, 1 when in error")
    p.add_argument("id", type=int)
    return parser


def _blender_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job `farmnet blender` submits (the server checks its values)."""
    first, dash, last = args.frames.partition("-")
    try:
        frames = int(first), int(last) if dash else int(first)
    except ValueError:
        raise ClientError(f"--frames: expected FIRST-LAST (e.g. 1-24) or one frame, "
                          f"got {args.frames!r}") from None
    # Absolute paths: the renders run elsewhere (a shared path reads the same there); "//" is
    # Blender's "beside the .blend file".
    output = args.output
    if output and not output.startswith("/"):
        output = os.path.join(os.getcwd(), output)
    return blender_job(os.path.abspath(args.file), *frames, chunk=args.chunk, output=output,
                       format=args.format, engine=args.engine, samples=args.samples, scene=args.scene,
                       camera=args.camera, view_layer=args.view_layer, name=args.name,
                       priority=args.priority)


def _client_config(args: argparse.Namespace) -> ClientConfig:
    flags = {"server": args.server, "user": args.user, "timeout": args.timeout}
    path = args.config or default_config_path(os.environ)
    return load_config(path, os.environ, overrides={"client": flags}).client


# --- running ---------------------------------------------------------------------------


async def _run(reactor: Any, args: argparse.Namespace, config: ClientConfig) -> None:
    """Connect, run the command, close; the exit code leaves through SystemExit (react)."""
    interrupted = False

    def on_shutdown() -> None:  # Ctrl-C: the reactor stops under the command
        nonlocal interrupted
        interrupted = True
        if client is not None:
            client.reconnect = 0  # the connection ends because we stop: do not dial again

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    client: FarmClient | None = None
    try:
        password = find_password(args.password_file, config.password_file)
        client = await connect(reactor, config.server, config.user, timeout=config.timeout,
                               password=password, ca=config.ca, reconnect=config.reconnect,
                               on_reconnect=lambda text: print(f"farmnet: {text}", file=sys.stderr,
                                                               flush=True))
        code = await args.handler(client, args)
    except Exception as e:
        code = EXIT_INTERRUPTED if interrupted else _exit_code(e)
    finally:
        if client is not None and not interrupted:
            await client.aclose()
    raise SystemExit(code)


def _exit_code(e: Exception) -> int:
    """Report an expected failure in one line and choose the exit code."""
    if isinstance(e, errors.FarmError):
        _fail(e.message or type(e).__name__)
        return EXIT_REFUSED
    if isinstance(e, ServerUnreachable):
        _fail(str(e))
        return EXIT_UNREACHABLE
    if isinstance(e, ClientError | json.JSONDecodeError | ValueError):  # the user's words are off
        _fail(str(e))
        return EXIT_REFUSED
    if isinstance(e, RecursionError):  # JSON given on the command line
        _fail("the input is nested too deeply")
        return EXIT_REFUSED
    if isinstance(e, amp.RemoteAmpError):  # an undeclared error on the server: its bug
        _fail(f"the server failed: {e}")
        return EXIT_REFUSED
    if isinstance(e, BrokenPipeError):  # `farmnet watch | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    # A bug: show it (react would only log it, and nobody reads that log).
    traceback.print_exception(e)
    return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, load the configuration, run one command."""
    args = build_parser().parse_args(argv)
    if args.command == "db":
        return run_db_command(args)
    if args.command == "store":
        return run_store_command(args)
    try:
        config = _client_config(args)
    except ConfigError as e:
        _fail(str(e))
        return EXIT_REFUSED
    if args.command in ("submit", "blender"):
        try:  # before connecting: a broken file needs no server
            args.spec = load_spec(args.file) if args.command == "submit" else _blender_spec(args)
        except ClientError as e:
            _fail(str(e))
            return EXIT_REFUSED
    try:
        task.react(_run, (args, config))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_REFUSED
    return EXIT_OK  # not reached: react always exits


if __name__ == "__main__":
    sys.exit(main())
