"""Afanasy's own wire protocol, so CGRU's clients (af.py's ``job.send()`` and ``af.Cmd``,
afcmd, the DCC submitters) work against farmnet unchanged (doc/afanasy.md).

One request per TCP connection: the ASCII header ``AFANASY <n> JSON`` immediately followed
by n bytes of JSON; the answer is framed the same way, and the client closes once it has
read it. The server never closes first: once the answer is written the connection is
*asked* to close (the answer is the asking) through the server's `Registry` like every
other connection, and reset (SO_LINGER 0, no TIME-WAIT) if the client is still there after
``close_wait``. A request that is not complete within ``request_timeout`` (a slow or silent
sender, a length that promises more than comes) gets an error answer and the same close.

Requests (the object's one key says which): ``job`` (submit), ``get`` (jobs, renders,
users, monitors, pools, branches, in Afanasy's shapes and key names) and ``action``
(mapped onto the one action API, `farmnet.server.actions.act`, with its permission
checks). Everything else gets an error answer in Afanasy's shape ``{"info": {"kind":
"error", "text": ...}}``, never a silent success.

Who asks: Afanasy has no passwords, a request says its ``user_name``. farmnet believes it
where its AMP port would take a user without a password (no users file, a peer on this
host), or everywhere when ``trust_user_names`` is on; other requests may only read.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from farmnet import errors
from farmnet.config import AfanasyConfig, ConnectionsConfig, LimitsConfig
from farmnet.model import events as ev
from farmnet.model.catalog import known_names
from farmnet.model.data import Block, Job, Render, Task, TaskRun, TaskState, User
from farmnet.model.farm import Farm
from farmnet.model.masks import Mask
from farmnet.model.pools import Branch, Pool
from farmnet.model.scheduler import Why
from farmnet.model.spec import parse_job
from farmnet.server.actions import act
from farmnet.server.outputs import OutputStore
from farmnet.server.registry import CloseState, Connection, Registry

__all__ = ["AfanasyFactory", "AfanasyServer", "framed", "job_state"]

log = Logger()

#: ``AFANASY <n> JSON``: the longest header a sane length gives.
_HEADER = re.compile(rb"AFANASY (\d{1,12}) JSON")
_PREFIX = b"AFANASY "
_HEADER_MAX = len(b"AFANASY  JSON") + 12

#: Afanasy's state bits (``st``) and the names its JSON writes, in its order.
_STATE_BITS: tuple[tuple[str, int], ...] = (
    ("RDY", 1 << 0), ("RUN", 1 << 1), ("DON", 1 << 4), ("ERR", 1 << 5), ("SKP", 1 << 8),
    ("OFF", 1 << 9), ("WDP", 1 << 2), ("WTM", 1 << 3), ("RER", 1 << 17), ("WRC", 1 << 18),
    ("WRN", 1 << 10))
_BIT = dict(_STATE_BITS)
#: A task's farmnet state → Afanasy's state names.
_TASK_STATES: Mapping[TaskState, tuple[str, ...]] = {
    TaskState.RDY: ("RDY",), TaskState.RUN: ("RUN",), TaskState.DON: ("DON",),
    TaskState.ERR: ("ERR",), TaskState.SKP: ("DON", "SKP"), TaskState.WD: ("WDP",),
    TaskState.WT: ("WTM",), TaskState.OFF: ("OFF",), TaskState.WRC: ("WRC",)}
#: Render state bits and names (Afanasy's render.h).
_RENDER_BITS: tuple[tuple[str, int], ...] = (
    ("ONL", 1 << 0), ("NbY", 1 << 1), ("NBY", 1 << 2), ("RUN", 1 << 3), ("WFL", 1 << 5),
    ("WSL", 1 << 6), ("WWK", 1 << 7), ("PAU", 1 << 8), ("SIC", 1 << 9))
_RENDER_BIT = dict(_RENDER_BITS)
_WOL = {"falling": "WFL", "sleeping": "WSL", "waking": "WWK"}

#: Afanasy requests farmnet knows and does not serve on this port.
_UNSUPPORTED_REQUESTS = {
    "monitor": "monitors follow farmnet's events over AMP or the web site's /events",
    "user": "users are created by their first job; an admin changes them with an action",
    "reload_config": "restart the server (or systemctl reload) to read its configuration",
    "announce": "farmnet has no announcements",
    "save": "farmnet does not write files for clients",
}
#: ``get`` types farmnet answers with an error that says why.
_REFUSED_GETS = {
    "files": "farmnet does not list its server's files to clients",
    "config": "farmnet's configuration is the server's file (etc/farmnet.yaml); it is not served",
}
#: ``get jobs`` modes of one job (``ids`` with one id).
_JOB_MODES = ("progress", "log", "error_hosts", "thumbnail")
#: ``get jobs`` modes of one task (``block_ids`` and ``task_ids``) and the type Afanasy names them by.
_TASK_TYPES = {"info": "TExec", "output": "TOutput", "log": "TLog", "error_hosts": "TErrorHosts"}
_TASK_MODES = tuple(_TASK_TYPES)
_JOB_OPERATIONS = {"delete": "delete", "start": "resume", "pause": "pause", "stop": "stop",
                   "restart": "restart", "restart_errors": "restart_errors",
                   "restart_running": "restart_running", "restart_skipped": "restart_skipped",
                   "restart_done": "restart_done", "reset_error_hosts": "reset_error_hosts",
                   "skip": "skip"}
_REFUSED_JOB_OPERATIONS = {
    "restart_warnings": "farmnet's tasks have no warning state",
    "reset_trying_next_tasks": "farmnet has no tasks to try next",
}
#: Block operations on tasks (``task_ids``; none: every task) → the task action.
_BLOCK_OPERATIONS = {"skip": "skip", "done": "done", "restart": "restart",
                     "restart_errors": "restart_errors",
                     "restart_running": "restart_running", "restart_skipped": "restart_skipped",
                     "restart_done": "restart_done", "reset_error_hosts": "", "append_tasks": "",
                     "tickets": ""}
_REFUSED_BLOCK_OPERATIONS = {
    "suspend": "farmnet's tasks have no suspended state (pause the job, or skip the tasks)",
    "continue": "farmnet's tasks have no suspended state",
    "trynext": "farmnet has no tasks to try next (restart them; solving takes them in order)",
}
_RENDER_OPERATIONS = {"exit": "exit", "eject_tasks": "eject", "eject_tasks_keep_my": "eject_others",
                      "heal_sick": "heal", "wol_sleep": "sleep", "wol_wake": "wake", "delete": "delete"}
_REFUSED_RENDER_OPERATIONS = {
    "reboot": "farmnet's server does not power hosts off or reboot them (exit the render, then use the "
              "host's own tools)",
    "shutdown": "farmnet's server does not power hosts off or reboot them",
    "launch_cmd": "farmnet's server does not run commands on render hosts outside jobs",
    "farm": "a render's services are in its own configuration (render.services)",
    "tickets": "a render's tickets are in its own configuration",
}
#: Render parameters (Afanasy's names, and farmnet's) → farmnet's render setting.
_RENDER_PARAMS = {"capacity_host": "capacity", "max_tasks_host": "max_tasks", "capacity": "capacity",
                  "max_tasks": "max_tasks"}
_REFUSED_RENDER_PARAMS = {
    "user_name": "a render's owner is in its own configuration (render.owner)",
    "services": "a render's services are in its own configuration (render.services)",
    "services_disabled": "a render's services are in its own configuration",
    "power_host": "farmnet has no host power", "properties_host": "farmnet has no host properties",
}
_REFUSED_ACTIONS = {
    "monitors": "farmnet's monitors follow its events over AMP or the web site's /events",
}
#: Pool parameters an action may set (Afanasy's names are farmnet's).
_POOL_PARAMS = ("pattern", "priority", "paused", "new_nimby", "new_paused", "max_tasks_host", "capacity_host",
                "max_running_tasks", "services", "services_disabled", "tickets_host", "tickets_pool")
_REFUSED_POOL_OPERATIONS = {
    "heal_sick": "heal a pool's renders by their names (render operation heal_sick)",
    "tickets": "set a pool's tickets with params tickets_host / tickets_pool",
    "launch_cmd": "farmnet's server does not run commands on render hosts outside jobs",
    "eject_tasks": "eject a pool's renders' tasks by their names (render operation eject_tasks)",
    "exit": "exit a pool's renders by their names (render operation exit)",
    "delete_renders": "delete a pool's offline renders by their names (render operation delete)",
}
_POOL_OPERATIONS = ("add_pool", "delete", "farm")
#: The ``farm`` operation's modes (Afanasy's service list edits).
_SERVICE_MODES = ("service_add", "service_remove", "service_enable", "service_disable")
#: Branch parameters: Afanasy's name → farmnet's branch setting.
_BRANCH_PARAMS = {"priority": "priority", "max_running_tasks": "max_running_tasks",
                  "max_running_tasks_per_host": "max_running_tasks_per_host",
                  "create_childs": "create_childs",
                  "paused": "paused", "solve_method": "solving"}
#: Afanasy's ``solve_method`` names ↔ farmnet's branch ``solving``.
_SOLVE_METHODS = {"solve_order": "order", "solve_priority": "need"}
_BRANCH_OPERATIONS = ("delete", "delete_done_jobs", "pause", "start")


@attrs.frozen(slots=True)
class Framed:
    """An answer already framed (header and JSON), as bytes to write."""

    data: bytes


#: What a request is answered with: JSON data, or an answer framed already.
Answer = dict[str, Any] | Framed


class AfanasyError(Exception):
    """A request this port answers with an error (``{"info": {"kind": "error", ...}}``)."""


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def framed(answer: Any) -> tuple[bytes, bytes]:
    """An answer (or a request; bytes: JSON already) framed the Afanasy way: header, body."""
    body = answer if isinstance(answer, bytes) else _encode(answer)
    return b"AFANASY %d JSON" % len(body), body


def error_answer(text: str) -> dict[str, Any]:
    return {"info": {"kind": "error", "text": text}}


def _states(names: list[str] | tuple[str, ...]) -> tuple[int, str]:
    """``st`` bits and the ``state`` string as Afanasy writes them (each name after a space)."""
    bits = 0
    for name in names:
        bits |= _BIT[name]
    return bits, "".join(f" {name}" for name, _ in _STATE_BITS if bits & _BIT[name])


def _counts_states(counts: Mapping[TaskState, int], paused: bool, finished: bool) -> list[str]:
    names = []
    if finished:
        names.append("DON")
    if counts[TaskState.RDY]:
        names.append("RDY")
    if counts[TaskState.RUN] or counts[TaskState.WRC]:
        names.append("RUN")
    if counts[TaskState.ERR]:
        names.append("ERR")
    if counts[TaskState.SKP]:
        names.append("SKP")
    if counts[TaskState.WRC]:
        names.append("WRC")
    if paused:
        names.append("OFF")
    return names


def job_state(farm: Farm, job: Job) -> tuple[int, str]:
    """A job's ``st`` and ``state`` as Afanasy writes them."""
    names = _counts_states(job.counts, job.paused, job.done)
    shown = farm.scheduler.display_state(job)
    if shown in (TaskState.WD, TaskState.WT):  # waiting: its ready tasks are not ready yet
        names = [n for n in names if n != "RDY"]
        names.append("WDP" if shown is TaskState.WD else "WTM")
    return _states(names)


def _int_time(seconds: float) -> int:
    return int(seconds)


def _put(out: dict[str, Any], key: str, value: Any, unset: Any) -> None:
    """Afanasy writes a key only when it is not its default."""
    if value != unset:
        out[key] = value


def block_json(farm: Farm, block: Block, full: bool) -> dict[str, Any]:
    spec, counts, total = block.spec, block.counts, len(block.tasks)
    out: dict[str, Any] = {}
    if full:
        if not spec.numeric:
            out["tasks"] = [{"name": t.name, "command": t.command} for t in spec.tasks]
        out["command"] = spec.command
        out["tasks_name"] = spec.tasks_name
        _put(out, "parser", spec.parser, "")
        _put(out, "working_directory", spec.working_directory, "")
        _put(out, "cmd_post", spec.command_post, "")
        if spec.environment:
            out["environment"] = dict(spec.environment)
    out.update(name=spec.name, service=spec.service, capacity=spec.capacity, flags=1 if spec.numeric else 0,
               tasks_num=total, frame_first=spec.frame_first, frame_last=spec.frame_last,
               frames_per_task=spec.frames_per_task, frames_inc=spec.frames_inc)
    _put(out, "sequential", spec.sequential, 1)
    for key in ("max_running_tasks", "max_running_tasks_per_host", "errors_retries", "errors_avoid_host",
                "errors_task_same_host", "errors_forgive_time"):
        _put(out, key, getattr(spec, key), -1)
    for key in ("task_progress_change_timeout", "task_max_run_time", "task_min_run_time"):
        _put(out, key, getattr(spec, key), 0)
    for key in ("depend_mask", "tasks_depend_mask", "hosts_mask", "hosts_mask_exclude"):
        _put(out, key, getattr(spec, key), "")
    if spec.tickets:
        out["tickets"] = dict(spec.tickets)
    out["block_num"] = block.number
    names = _counts_states(counts, False, block.finished)
    if not block.finished and farm.scheduler.block_waits(block) is Why.BLOCK_DEPENDS:
        names = [n for n in names if n != "RDY"]
        names.append("WDP")
    out["st"], out["state"] = _states(names)
    out["job_id"] = block.job.id
    done = counts[TaskState.DON] + counts[TaskState.SKP]
    _put(out, "running_tasks_counter", counts[TaskState.RUN], 0)
    _put(out, "running_capacity_total", block.running_capacity, 0)
    _put(out, "p_percentage", done * 100 // total if total else 100, 0)
    _put(out, "p_avoid_hosts", len(block.host_errors), 0)
    for key, state in (("p_tasks_ready", TaskState.RDY), ("p_tasks_error", TaskState.ERR),
                       ("p_tasks_skipped", TaskState.SKP), ("p_tasks_waitrec", TaskState.WRC),
                       ("p_tasks_waitdep", TaskState.WD)):
        _put(out, key, counts[state], 0)
    _put(out, "p_tasks_done", done, 0)
    return out


def job_json(farm: Farm, job: Job, full: bool) -> dict[str, Any]:
    """A job as Afanasy's ``get jobs`` writes it (``full``: with commands and explicit tasks)."""
    spec = job.spec
    out: dict[str, Any] = {"name": job.name, "id": job.id, "priority": job.priority}
    _put(out, "annotation", spec.annotation, "")
    _put(out, "max_running_tasks", spec.max_running_tasks, -1)
    _put(out, "max_running_tasks_per_host", spec.max_running_tasks_per_host, -1)
    _put(out, "hosts_mask", spec.hosts_mask, "")
    _put(out, "hosts_mask_exclude", spec.hosts_mask_exclude, "")
    running = job.counts[TaskState.RUN]
    _put(out, "running_tasks_num", running, 0)
    out.update(serial=job.serial, user_name=job.user_name, host_name=spec.host_name)
    out["st"], out["state"] = job_state(farm, job)
    for key in ("command_post", "description", "project", "department"):
        _put(out, key, getattr(spec, key), "")
    out["time_creation"] = _int_time(job.time_creation)
    _put(out, "time_wait", spec.time_wait, 0)
    _put(out, "time_started", _int_time(job.time_started), 0)
    _put(out, "time_done", _int_time(job.time_done), 0)
    _put(out, "tasks_ready", job.counts[TaskState.RDY], 0)
    _put(out, "tasks_error", job.counts[TaskState.ERR], 0)
    _put(out, "depend_mask", spec.depend_mask, "")
    _put(out, "depend_mask_global", spec.depend_mask_global, "")
    if job.branch is not None:
        out["branch"] = job.branch.path
    out["blocks"] = [block_json(farm, b, full) for b in job.blocks]
    return out


def task_progress(task: Task) -> dict[str, Any]:
    """One task of Afanasy's ``job_progress`` (its short keys)."""
    names = _TASK_STATES[task.state]
    if task.state is TaskState.RDY and task.errors_count:
        names = ("RDY", "RER")
    if task.warning:  # its parser flagged a warning (Afanasy's WRN)
        names = (*names, "WRN")
    st, state = _states(names)
    out: dict[str, Any] = {"state": state, "st": st}
    progress = 100 if task.state in (TaskState.DON, TaskState.SKP) else task.progress
    _put(out, "per", progress, 0)
    if task.state is TaskState.RUN:
        _put(out, "frm", task.frame, 0)
        _put(out, "pfr", task.percent_frame, 0)
    _put(out, "str", task.starts_count, 0)
    _put(out, "err", task.errors_count, 0)
    _put(out, "tst", _int_time(task.time_started), 0)
    _put(out, "tdn", _int_time(task.time_done), 0)
    _put(out, "hst", task.host, "")
    return out


def job_progress(job: Job) -> dict[str, Any]:
    return {"job_progress": {"id": job.id,
                             "progress": [[task_progress(t) for t in b.tasks] for b in job.blocks]}}


def task_exec_json(task: Task) -> dict[str, Any]:
    """What a task runs, as Afanasy's task ``info`` (its ``exec``) writes it."""
    block, job = task.block, task.block.job
    spec = block.spec
    out: dict[str, Any] = {"name": task.name, "service": spec.service, "capacity": spec.capacity,
                           "time_start": _int_time(task.time_started), "user_name": job.user_name,
                           "block_name": block.name, "job_name": job.name, "job_id": job.id,
                           "block_num": block.number, "task_num": task.number,
                           "command_block": spec.command,
                           "command_task": "" if spec.numeric else spec.tasks[task.number].command,
                           "command": task.command}
    if spec.numeric:
        first, last = spec.frames(task.number)
        out.update(frame_start=first, frame_finish=last, frames_inc=spec.frames_inc,
                   frames_num=last - first + 1)
    _put(out, "parser", spec.parser, "")
    _put(out, "working_directory", spec.working_directory, "")
    environment = dict(spec.environment)
    if not spec.numeric:
        environment.update(spec.tasks[task.number].environment)
    if environment:
        out["environment"] = environment
    if spec.tickets:
        out["tickets"] = dict(spec.tickets)
    return out


def _error_hosts(blocks: Iterable[Block]) -> list[str]:
    """Afanasy's job ``error_hosts``: each block's renders that failed it."""
    lines = []
    for block in blocks:
        for host, (count, last) in block.host_errors.items():
            lines.append(f"{block.name}: {host}: {count} errors, last {_when(last)}")
    return lines


def _task_error_hosts(task: Task) -> list[str]:
    if not task.host_errors:
        return ["The task has no error hosts."]
    return [f"{host}: {count} errors, last {_when(last)}" for host, (count, last) in task.host_errors.items()]


def monitor_json(conn: Connection) -> dict[str, Any]:
    """One of farmnet's connected monitors, with Afanasy's monitor keys."""
    return {"name": f"{conn.identity}@{conn.address}", "id": conn.id, "user_name": conn.identity,
            "host_name": conn.address, "engine": "farmnet", "time_launch": _int_time(conn.opened),
            "time_register": _int_time(conn.opened), "time_activity": _int_time(conn.last_active),
            "address": {"ip": conn.address, "port": conn.port}}


def render_state(render: Render) -> tuple[int, str]:
    names = ["ONL"] if render.online else []
    if render.nimby:
        names.append("NbY")
    if render.NIMBY:
        names.append("NBY")
    if render.tasks:
        names.append("RUN")
    if render.wol in _WOL:
        names.append(_WOL[render.wol])
    if render.paused:
        names.append("PAU")
    if render.sick:
        names.append("SIC")
    bits = 0
    for name in names:
        bits |= _RENDER_BIT[name]
    shown = "".join(f" {name}" for name, bit in _RENDER_BITS if bits & bit)
    return bits, shown if render.online else " OFF" + shown


def _host_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """farmnet's resource snapshot under Afanasy's names (what the render measured)."""
    out: dict[str, Any] = {}
    for key in ("cpu_num", "mem_total_mb", "swap_used_mb", "hdd_free_gb"):
        if resources.get(key) is not None:
            out[key] = resources[key]
    if resources.get("mem_total_mb") is not None and resources.get("mem_used_mb") is not None:
        out["mem_free_mb"] = resources["mem_total_mb"] - resources["mem_used_mb"]
    if resources.get("cpu_percent") is not None:
        out["cpu_idle"] = int(100 - resources["cpu_percent"])
    if resources.get("load_avg"):
        out["cpu_loadavg"] = [int(v) for v in resources["load_avg"]]
    return out


def render_json(render: Render, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if render.tasks:
        out["tasks_percents"] = [t.progress for t in render.tasks.values()]
    if mode == "resources":
        out.update(id=render.id, host_name=render.name)
        if render.online:
            out["host_resources"] = _host_resources(render.resources)
        return out
    out.update(name=render.name, id=render.id, user_name=render.owner,
               time_register=_int_time(render.time_registered), time_update=_int_time(render.time_seen),
               os=render.platform)
    out["st"], out["state"] = render_state(render)
    out["capacity_used"] = render.capacity_used
    if render.tasks:
        out["tasks"] = [{"name": t.name, "service": t.block.spec.service, "capacity": t.block.spec.capacity,
                         "time_start": _int_time(t.time_started), "user_name": t.block.job.user_name,
                         "block_name": t.block.name, "job_name": t.block.job.name,
                         "job_id": t.block.job.id, "block_num": t.block.number, "task_num": t.number}
                        for t in render.tasks.values()]
    if render.services:
        out["services"] = sorted(render.services)
    if render.services_disabled:
        out["services_disabled"] = sorted(render.services_disabled)
    out["capacity_host"] = render.capacity
    out["max_tasks_host"] = render.max_tasks
    if render.pool is not None:
        out["pool"] = render.pool.path
    return out


def _pool_state(pool: Pool) -> tuple[int, str]:
    """A pool's ``st`` and ``state``: Afanasy's busy (RUN) and paused (PAU) bits."""
    bits = (1 if pool.running else 0) | (2 if pool.paused else 0)
    return bits, "".join(name for bit, name in ((1, " RUN"), (2, " PAU")) if bits & bit)


def pool_json(pool: Pool) -> dict[str, Any]:
    """A pool as Afanasy 3's ``get pools`` writes it (farmnet's pools have no ids: the
    name is the path)."""
    renders = pool.renders
    out: dict[str, Any] = {"name": pool.path, "priority": pool.priority}
    _put(out, "pattern", pool.pattern, "")
    out.update(parent=pool.parent.path if pool.parent else "", time_creation=_int_time(pool.time_creation),
               pools_total=len(pool.children), renders_total=len(renders),
               renders_busy=sum(1 for r in renders if r.tasks),
               renders_ready=sum(1 for r in renders if r.online and not r.tasks and not r.paused
                                 and not r.nimby and not r.NIMBY and not r.sick),
               renders_online=sum(1 for r in renders if r.online),
               renders_offline=sum(1 for r in renders if not r.online),
               renders_nimby=sum(1 for r in renders if r.nimby or r.NIMBY),
               renders_paused=sum(1 for r in renders if r.paused),
               renders_sick=sum(1 for r in renders if r.sick))
    out["st"], out["state"] = _pool_state(pool)
    _put(out, "run_tasks", pool.running, 0)
    _put(out, "run_capacity", pool.running_capacity, 0)
    _put(out, "new_nimby", pool.new_nimby, False)
    _put(out, "new_paused", pool.new_paused, False)
    if pool.services:
        out["services"] = list(pool.services)
    if pool.services_disabled:
        out["services_disabled"] = list(pool.services_disabled)
    if pool.tickets_pool:  # [count, usage], as Afanasy's first two
        out["tickets_pool"] = {k: [v, pool.tickets_used.get(k, 0)] for k, v in pool.tickets_pool.items()}
    if pool.tickets_host:  # their usage is each render's: 0 here
        out["tickets_host"] = {k: [v, 0] for k, v in pool.tickets_host.items()}
    _put(out, "capacity_host", pool.capacity_host, -1)
    _put(out, "max_tasks_host", pool.max_tasks_host, -1)
    _put(out, "max_running_tasks", pool.max_running_tasks, -1)
    return out


def branch_json(farm: Farm, branch: Branch) -> dict[str, Any]:
    """A branch as Afanasy 3's ``get branches`` writes it (the name is the path; its jobs
    are the ones directly in it)."""
    jobs = sorted(branch.jobs, key=lambda j: j.id)
    out: dict[str, Any] = {"name": branch.path, "priority": branch.priority}
    _put(out, "create_childs", branch.create_childs, False)
    _put(out, "paused", branch.paused, False)
    out["time_creation"] = _int_time(branch.time_creation)
    out["parent"] = branch.parent.path if branch.parent else ""
    _put(out, "branches_total", len(branch.children), 0)
    _put(out, "jobs_total", len(jobs), 0)
    _put(out, "jobs_running", sum(1 for j in jobs if j.counts[TaskState.RUN]), 0)
    _put(out, "jobs_done", sum(1 for j in jobs if j.done), 0)
    _put(out, "jobs_ready", sum(1 for j in jobs if j.counts[TaskState.RDY]), 0)
    _put(out, "jobs_error", sum(1 for j in jobs if j.counts[TaskState.ERR]), 0)
    _put(out, "tasks_ready", sum(j.counts[TaskState.RDY] for j in jobs), 0)
    _put(out, "tasks_error", sum(j.counts[TaskState.ERR] for j in jobs), 0)
    active = [j for j in jobs if not j.done and not j.paused
              and (j.counts[TaskState.RDY] or j.counts[TaskState.RUN])]
    out["active_jobs"] = []
    users: dict[str, dict[str, Any]] = {}
    for job in active:
        running = job.counts[TaskState.RUN]
        capacity = sum(b.running_capacity for b in job.blocks)
        one: dict[str, Any] = {"id": job.id, "name": job.name, "user_name": job.user_name}
        one["st"], one["state"] = job_state(farm, job)
        _put(one, "running_tasks_num", running, 0)
        _put(one, "running_capacity_total", capacity, 0)
        out["active_jobs"].append(one)
        user = users.setdefault(job.user_name, {"name": job.user_name})
        user["running_tasks_num"] = user.get("running_tasks_num", 0) + running
        user["running_capacity_total"] = user.get("running_capacity_total", 0) + capacity
    out["active_users"] = [{k: v for k, v in u.items() if v != 0} for u in users.values()]
    _put(out, "max_running_tasks", branch.max_running_tasks, -1)
    _put(out, "max_running_tasks_per_host", branch.max_running_tasks_per_host, -1)
    out["solve_method"] = "solve_priority" if branch.solving == "need" else "solve_order"
    _put(out, "running_tasks_num", branch.running, 0)
    _put(out, "running_capacity_total", branch.running_capacity, 0)
    return out


def user_json(user: User) -> dict[str, Any]:
    out: dict[str, Any] = {"name": user.name, "priority": user.priority}
    _put(out, "max_running_tasks", user.max_running_tasks, -1)
    _put(out, "max_running_tasks_per_host", user.max_running_tasks_per_host, -1)
    _put(out, "hosts_mask", user.hosts_mask.pattern if user.hosts_mask else "", "")
    _put(out, "hosts_mask_exclude", user.hosts_mask_exclude.pattern if user.hosts_mask_exclude else "", "")
    _put(out, "running_tasks_num", user.running, 0)
    _put(out, "running_capacity_total", user.running_capacity, 0)
    out["time_register"] = _int_time(user.time_registered)
    for key in ("errors_retries", "errors_avoid_host", "errors_task_same_host", "errors_forgive_time"):
        out[key] = getattr(user, key)
    _put(out, "jobs_num", len(user.jobs), 0)
    return out


class JobListCache:
    """``get jobs`` answers (af.Cmd().getJobList(), what pipeline tools poll) from each
    job's JSON kept encoded until the farm says the job changed: its task states, its
    settings, renumbered tasks. A job whose shown state depends on the clock or on other
    jobs (time_wait, depend masks) is written afresh every time."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self._jobs: dict[int, bytes] = {}
        #: The whole unfiltered answer, while nothing changed and no job is written afresh.
        self._whole: Framed | None = None
        #: Each job's ``job_progress`` answer (af.Cmd().getJobProgress(), what a submitter
        #: polls while it waits), framed, until a task of the job changes.
        self._progress: dict[int, Framed] = {}
        self.close = farm.bus.subscribe_all({
            ev.TaskStateChanged: lambda e: self._changed(e.task.block.job),
            ev.TaskProgressed: lambda e: self._progress.pop(e.task.block.job.id, None),
            (ev.TasksRestarted, ev.ErrorHostsReset, ev.TasksRenumbered): lambda e: self._changed(e.block.job),
            (ev.JobSubmitted, ev.JobChanged, ev.JobDeleted): lambda e: self._changed(e.job),
        })

    def _changed(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._progress.pop(job.id, None)
        self._whole = None

    def progress(self, job: Job) -> Framed:
        answer = self._progress.get(job.id)
        if answer is None:
            header, body = framed(job_progress(job))
            answer = self._progress[job.id] = Framed(header + body)
        return answer

    def answer(self, jobs: list[Job] | None) -> Framed:
        """``{"jobs": [...]}`` of ``jobs`` (None: every job), encoded and framed."""
        if jobs is None and self._whole is not None:
            return self._whole
        every = jobs is None
        fresh = False
        parts = []
        for job in self.farm.jobs.values() if jobs is None else jobs:
            spec = job.spec
            if spec.time_wait or spec.depend_mask or spec.depend_mask_global:
                fresh = True
                parts.append(_encode(job_json(self.farm, job, False)))
                continue
            part = self._jobs.get(job.id)
            if part is None:
                part = self._jobs[job.id] = _encode(job_json(self.farm, job, False))
            parts.append(part)
        body = b'{"jobs":[' + b",".join(parts) + b"]}"
        whole = Framed(b"AFANASY %d JSON" % len(body) + body)
        if every and not fresh:
            self._whole = whole
        return whole


def _when(seconds: float) -> str:
    """A log line's time as Afanasy writes it (local time)."""
    return time.strftime("%a %d %b %H:%M.%S %Y", time.localtime(seconds))


def _where(block: int, task: int) -> str:
    if block < 0:
        return ""
    return f"block[{block}]: " if task < 0 else f"task[{block}][{task}]: "


def _message(kind: str, name: str, lines: Iterable[str]) -> dict[str, Any]:
    """Afanasy's answer carrying lines of text: ``{"message": {name, type, list}}``."""
    return {"message": {"name": name, "type": kind, "list": list(lines)}}


class ObjectLogs:
    """Afanasy's ``log`` of each job, render and user, and each render's ``tasks_log``:
    what farmnet's events said about it, newest last, the last ``keep`` lines each (the
    lines of a task's log are its job's lines about that task). Kept while the object
    is; actions asked on the Afanasy port add who asked."""

    def __init__(self, farm: Farm, keep: int = 200) -> None:
        self.farm = farm
        self.keep = keep
        #: job id → (time, block, task, what); block and task -1 for the job itself. A run's
        #: end is kept as it came (its start is in it) and written out when asked: runs end
        #: all the time, the reading is rare. A running task's start is read from the task.
        self.jobs: dict[int, deque[tuple[float, int, int, str | TaskRun]]] = {}
        self.renders: dict[str, deque[str]] = {}
        self.render_tasks: dict[str, deque[TaskRun]] = {}
        self.users: dict[str, deque[str]] = {}
        self.close = farm.bus.subscribe_all({
            ev.JobSubmitted: self._submitted,
            ev.JobDeleted: self._deleted,
            ev.RunEnded: self._run_ended,
            ev.TasksRestarted: lambda e: self.job(e.block.job.id, f"block[{e.block.name}]: tasks restarted"),
            ev.ErrorHostsReset: lambda e: self.job(e.block.job.id,
                                                   f"block[{e.block.name}]: error hosts reset"),
            ev.RenderRegistered: lambda e: self.render(e.render.name, "registered (online)"),
            ev.RenderLost: lambda e: self.render(e.render.name, "zombie: silent past zombie_time" if e.zombie
                                                 else "offline"),
            ev.RenderSick: lambda e: self.render(e.render.name, "SICK: errors in a row from different jobs"),
            ev.RenderDeleted: lambda e: (self.renders.pop(e.render.name, None),
                                         self.render_tasks.pop(e.render.name, None)),
            ev.UserChanged: lambda e: self.user(e.user.name, "settings changed"),
            ev.UserDeleted: lambda e: self.users.pop(e.user.name, None),
        })

    def _lines(self, table: dict[Any, deque[Any]], key: Any) -> deque[Any]:
        lines = table.get(key)
        if lines is None:
            lines = table[key] = deque(maxlen=self.keep)
        return lines

    def job(self, job_id: int, what: str | TaskRun, block: int = -1, task: int = -1) -> None:
        if job_id in self.farm.jobs:
            self._lines(self.jobs, job_id).append((self.farm.clock.seconds(), block, task, what))

    def render(self, name: str, text: str) -> None:
        self._lines(self.renders, name).append(f"{_when(self.farm.clock.seconds())}: {text}")

    def user(self, name: str, text: str) -> None:
        self._lines(self.users, name).append(f"{_when(self.farm.clock.seconds())}: {text}")

    def _submitted(self, e: ev.JobSubmitted) -> None:
        job = e.job
        self.job(job.id, f"submitted by {job.user_name}: {job.tasks_total} tasks in {len(job.blocks)} blocks")
        self.user(job.user_name, f"job {job.id} {job.name!r} submitted")

    def _deleted(self, e: ev.JobDeleted) -> None:
        self.jobs.pop(e.job.id, None)
        self.user(e.job.user_name, f"job {e.job.id} {e.job.name!r} deleted")

    def _run_ended(self, e: ev.RunEnded) -> None:
        """At every run's end: kept as it came, two appends."""
        run = e.run
        lines = self.jobs.get(run.job_id)
        if lines is None:
            if run.job_id not in self.farm.jobs:
                return
            lines = self._lines(self.jobs, run.job_id)
        lines.append((self.farm.clock.seconds(), run.block, run.task, run))
        runs = self.render_tasks.get(run.host)
        if runs is None:
            runs = self._lines(self.render_tasks, run.host)
        runs.append(run)

    def job_lines(self, job: Job) -> list[str]:
        running = [t for b in job.blocks if b.counts[TaskState.RUN]
                   for t in b.tasks if t.state is TaskState.RUN]
        return self._written(self.jobs.get(job.id, ()), running, True)

    def task_lines(self, task: Task) -> list[str]:
        block, number = task.block.number, task.number
        lines = [line for line in self.jobs.get(task.block.job.id, ())
                 if (line[1], line[2]) == (block, number)]
        return self._written(lines, [task] if task.state is TaskState.RUN else [], False)

    @staticmethod
    def _written(lines: Iterable[tuple[float, int, int, str | TaskRun]], running: list[Task],
                 where: bool) -> list[str]:
        """Log lines in the order the server saw them: each ended run's start (as the render
        timed it) and end, then the starts of the tasks running now."""
        timed: list[tuple[float, int, int, str]] = []
        for t, b, n, what in lines:
            if isinstance(what, str):
                timed.append((t, b, n, what))
            else:
                timed.append((what.time_started, b, n, f"started on {what.host} (run {what.run})"))
                text = f"run {what.run} on {what.host}: {what.state}, {_how(what)}"
                timed.append((t, b, n, f"{text}: {what.message}" if what.message else text))
        for task in running:
            timed.append((task.time_started, task.block.number, task.number,
                          f"started on {task.host} (run {task.starts_count})"))
        return [f"{_when(t)}: {_where(b, n) if where else ''}{text}" for t, b, n, text in timed]

    def render_task_lines(self, name: str) -> list[str]:
        lines = []
        for run in self.render_tasks.get(name, ()):
            took = max(0, int(run.time_done - run.time_started))
            lines.append(f"{_when(run.time_done)}: {run.job_name}[{run.block_name}][{run.task_name}] "
                         f"({run.user_name}) run {run.run}: {run.state} after {took} s, {_how(run)}")
        return lines


def _how(run: TaskRun) -> str:
    if run.exit_code is not None:
        return f"exit code {run.exit_code}"
    return f"signal {run.signal}" if run.signal is not None else "no exit code"


# --- reading requests ----------------------------------------------------------------


def _ids(data: Mapping[str, Any], key: str = "ids") -> list[int] | None:
    """An optional list of integer ids; None when absent or empty."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise AfanasyError(f'"{key}" must be a list of integers, got {json.dumps(value)[:100]}')
    return value or None


def _string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise AfanasyError(f'"{key}" must be a string, got {json.dumps(value)[:100]}')
    return value


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise AfanasyError(f'"{key}" must be an object, got {json.dumps(value)[:100]}')
    return value


class AfanasyServer:
    """What every Afanasy connection shares: the farm, its own registry of connections
    (its limits and client-first close) and who may do what."""

    def __init__(self, reactor: IReactorTime, farm: Farm, config: AfanasyConfig | None = None, *,
                 connections: ConnectionsConfig | None = None, limits: LimitsConfig | None = None,
                 users_file: str = "", public: bool = True,
                 durable: Callable[[], defer.Deferred[None]] | None = None,
                 outputs: OutputStore | None = None, output_readers: str = "public",
                 monitors: Callable[[], Iterable[Connection]] = tuple) -> None:
        connections = connections or ConnectionsConfig()
        self.reactor = reactor
        self.farm = farm
        self.config = config or AfanasyConfig()
        self.has_passwords = bool(users_file)
        #: Anyone may read what the farm shows (web.public); else only trusted user names.
        self.public_reads = public or not users_file
        self.durable = durable or (lambda: defer.succeed(None))
        self.job_lists = JobListCache(farm)
        self.logs = ObjectLogs(farm)
        #: Task output as the AMP server keeps it, and who may read it (server.auth.outputs).
        self.outputs = outputs
        self.output_readers = output_readers
        #: farmnet's connected monitors (the AMP server's), for ``get monitors``.
        self.monitors = monitors
        #: Connections without a whole request are timed by their protocol (request_timeout).
        self.registry = Registry(reactor, limits=limits, close_wait=connections.close_wait,
                                 idle_timeout=0, zombie_time=connections.zombie_time, keepalive=False)

    @property
    def max_request_bytes(self) -> int:
        return self.registry.limits.max_box_bytes

    async def shutdown(self, reason: str = "the server is stopping") -> None:
        """Refuse new connections, ask the open ones to close; returns once all are gone."""
        self.registry.accepting = False
        self.job_lists.close()
        self.logs.close()
        await self.registry.close_all(reason)

    def _mask(self, pattern: str) -> Mask:
        """Afanasy's name masks: regular expressions matching the whole name, matched by
        RE2 as the farm's masks are (no pattern can stall the server)."""
        try:
            mask = self.farm.masks.compile(pattern)
        except ValueError as e:
            raise AfanasyError(f"name pattern: {e}") from None
        assert mask is not None  # only asked for non-empty patterns
        return mask

    # --- who asks ------------------------------------------------------------------------

    def user_for_change(self, conn: Connection, data: Mapping[str, Any], what: str) -> str:
        """The user a submit or an action acts as: its ``user_name``, where it is believed."""
        user = _string(data, "user_name")
        if not user:
            raise AfanasyError(f'{what} needs a non-empty "user_name" string')
        if self.config.trust_user_names:
            return user
        if self.has_passwords:
            raise AfanasyError(
                f"{what} refused: this farm has passwords (auth.users_file) and Afanasy's protocol has none; "
                "use the farmnet command or the web site, or set server.afanasy.trust_user_names")
        if not conn.local:
            raise AfanasyError(
                f"{what} refused: without a users file this farm takes Afanasy's user names from its own "
                "host only; set server.afanasy.trust_user_names to take them from every host")
        return user

    # --- requests ------------------------------------------------------------------------

    def answer(self, conn: Connection, body: bytes) -> Answer | defer.Deferred[Answer]:
        """The answer to one request: at once for a ``get`` (what tools poll: no Deferred
        on that path), a Deferred for a submit or an action (they wait for the store).
        Never raises, never fails."""
        try:
            kind, data = self._request(body)
            if kind == "get":
                if not (self.public_reads or self.config.trust_user_names):
                    raise AfanasyError("reading refused: this farm shows itself to logged-in users only "
                                       "(web.public: false) and Afanasy's protocol has no passwords")
                return self._get(conn, data)
        except Exception as e:
            return self._error(conn, e)
        change = self._submit(conn, data) if kind == "job" else self._action(conn, data)
        return defer.ensureDeferred(change).addErrback(lambda f: self._error(conn, f.value))

    def _error(self, conn: Connection, e: BaseException) -> dict[str, Any]:
        if isinstance(e, AfanasyError):
            return error_answer(str(e))
        if isinstance(e, errors.FarmError):
            return error_answer(e.message)
        log.failure("Afanasy request from {peer} failed", Failure(e), peer=conn.label)
        return error_answer("internal error: see the server's log")

    def _request(self, body: bytes) -> tuple[str, dict[str, Any]]:
        """The request's one key and its object."""
        if body.startswith(b"\xef\xbb\xbf"):  # a BOM, as Windows editors write
            body = body[3:]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AfanasyError(f"the request is not UTF-8: {e}") from None
        try:
            request = json.loads(text)
        except ValueError as e:
            raise AfanasyError(f"the request is not JSON: {e}") from None
        if not isinstance(request, dict) or len(request) != 1:
            raise AfanasyError('a request is a JSON object with one key: "job", "get" or "action"')
        [(kind, data)] = request.items()
        if kind in _UNSUPPORTED_REQUESTS:
            raise AfanasyError(f"farmnet does not support Afanasy's {kind!r} request: "
                               f"{_UNSUPPORTED_REQUESTS[kind]}")
        if kind not in ("job", "get", "action"):
            raise AfanasyError(f'unknown request {kind!r}: farmnet serves "job", "get" and "action"')
        if not isinstance(data, dict):
            raise AfanasyError(f'"{kind}" must be an object')
        return kind, data

    async def _submit(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        """Answered as Afanasy answers a job: its id and serial, with ``error`` if refused."""
        try:
            user = self.user_for_change(conn, data, "submitting a job")
            spec, warnings = parse_job(data, self.farm.settings.max_tasks_per_job,
                                       **known_names(self.farm.settings))
            job = self.farm.submit(spec, user)
        except AfanasyError as e:
            return {"id": 0, "serial": 0, "error": str(e)}
        except errors.FarmError as e:
            return {"id": 0, "serial": 0, "error": e.message}
        await self.durable()
        answer: dict[str, Any] = {"id": job.id, "serial": job.serial}
        if warnings:
            answer["warnings"] = warnings
        return answer

    # --- get -----------------------------------------------------------------------------

    def _get(self, conn: Connection, data: dict[str, Any]) -> Answer:
        kind = _string(data, "type")
        mode = data.get("mode", "")
        if isinstance(mode, list) and kind == "jobs" and data.get("block_ids"):
            mode = ""  # the web GUI's blocks request: one mode per block, all answered in full
        elif not isinstance(mode, str):
            raise AfanasyError(f'"mode" must be a string, got {json.dumps(mode)[:100]}')
        if kind == "jobs":
            return self._get_jobs(conn, data, mode)
        if kind == "renders":
            return self._get_renders(data, mode)
        if kind == "users":
            return self._get_users(data, mode)
        if kind == "monitors":
            return self._get_monitors(data, mode)
        if kind in ("pools", "branches"):
            return self._get_trees(kind, data, mode)
        if kind in _REFUSED_GETS:
            raise AfanasyError(f"Invalid get type = {kind!r}: {_REFUSED_GETS[kind]}")
        raise AfanasyError(f"Invalid get type = {kind!r}: farmnet serves jobs, renders, users, monitors, "
                           "pools and branches")

    def _one_job(self, ids: list[int] | None, what: str) -> Job:
        if ids is None or len(ids) != 1:
            raise AfanasyError(f'get jobs {what} needs "ids" with one job id')
        job = self.farm.jobs.get(ids[0])
        if job is None:
            raise AfanasyError("Invalid ID")
        return job

    def _get_jobs(self, conn: Connection, data: dict[str, Any], mode: str) -> Answer:
        if data.get("uids") not in (None, []):
            raise AfanasyError('get jobs by "uids" is not supported by farmnet: its users have no ids, '
                               'ask by "users" (user names)')
        ids = _ids(data)
        farm = self.farm
        block_ids = _ids(data, "block_ids")
        if block_ids is not None and block_ids[0] != -1:
            job = self._one_job(ids, "of blocks or tasks")
            for number in block_ids:
                if not 0 <= number < len(job.blocks):
                    raise AfanasyError(f"Invalid block number: {number}")
            task_ids = _ids(data, "task_ids")
            if task_ids is not None and task_ids[0] != -1:
                return self._get_task(conn, data, job, block_ids[0], task_ids[0], mode)
            return {"blocks": [block_json(farm, job.blocks[b], True) for b in block_ids]}
        if mode == "output":
            raise AfanasyError('get jobs mode "output" needs "ids", "block_ids" and "task_ids" with one each')
        if mode in _JOB_MODES:
            job = self._one_job(ids, f"mode {mode!r}")
            if mode == "progress":
                return self.job_lists.progress(job)
            if mode == "log":
                return _message("log", job.name, self.logs.job_lines(job))
            if mode == "error_hosts":
                return _message("error_hosts", job.name, _error_hosts(job.blocks))
            raise AfanasyError('get jobs mode "thumbnail" is not supported by farmnet: '
                               "it keeps no thumbnails")
        if mode not in ("", "full"):
            raise AfanasyError(f"get jobs mode {mode!r} is not supported by farmnet: it serves the list, "
                               f"full, {', '.join(_JOB_MODES[:-1])}, and for a task (block_ids, task_ids) "
                               f"{', '.join(_TASK_MODES)}")
        jobs = self._jobs_asked(data, ids)
        if mode == "full":
            return {"jobs": [job_json(farm, j, True) for j in (farm.jobs.values() if jobs is None else jobs)]}
        return self.job_lists.answer(jobs)

    def _get_task(self, conn: Connection, data: Mapping[str, Any], job: Job, block: int, number: int,
                  mode: str) -> dict[str, Any]:
        """One task in Afanasy's ``{"task": {...}}`` (info, log, error_hosts, output)."""
        tasks = job.blocks[block].tasks
        if not 0 <= number < len(tasks):
            raise AfanasyError("Invalid block/task number.")
        task = tasks[number]
        if mode not in _TASK_MODES:
            raise AfanasyError(f"get jobs of a task: mode {mode!r} is not supported by farmnet: it serves "
                               f"{', '.join(_TASK_MODES)} (no stored task files: farmnet keeps none)")
        out: dict[str, Any] = {"type": _TASK_TYPES[mode], "render_id": task.render_id, "job_name": job.name,
                               "block_name": task.block.name, "task_name": task.name,
                               "service": task.block.spec.service, "parser": task.block.spec.parser,
                               "pos": {"job": job.id, "block": block, "task": number, "number": 0},
                               "progress": task_progress(task)}
        if mode == "info":
            out["exec"] = task_exec_json(task)
            out["data"] = ""
        elif mode == "log":
            out["data"] = "\n".join(self.logs.task_lines(task))
        elif mode == "error_hosts":
            out["data"] = "\n".join(_task_error_hosts(task))
        else:
            run = data.get("number", 0)
            if not isinstance(run, int) or isinstance(run, bool) or run < 0:
                raise AfanasyError('"number" (the run whose output to read) must be a non-negative integer')
            run = run or task.starts_count
            out["pos"]["number"] = run
            out["data"] = self._task_output(conn, data, task, run)
        return {"task": out}

    def _task_output(self, conn: Connection, data: Mapping[str, Any], task: Task, run: int) -> str:
        """A run's output as the server keeps it (a running task's too: it streams in)."""
        if self.outputs is None:
            raise AfanasyError("this server keeps no task output")
        if self.output_readers != "public":
            user = self.user_for_change(conn, data, "reading task output")
            self.farm.check_may_read_output(user, task.block.job, self.output_readers)
        if not task.starts_count:
            return "ERROR: the task has not run yet"
        if run > task.starts_count:
            return f"ERROR: the task has run {task.starts_count} times: no run {run}"
        return self.outputs.read(task.key, run, 0, self.outputs.max_bytes + 1024).decode("utf-8", "replace")

    def _jobs_asked(self, data: dict[str, Any], ids: list[int] | None) -> list[Job] | None:
        """The jobs ``ids``, ``serials``, ``users`` and ``mask`` ask for; None: every job."""
        farm = self.farm
        if ids is not None:
            return [farm.jobs[i] for i in ids if i in farm.jobs]
        jobs: list[Job] | None = None
        serials = _ids(data, "serials")
        if serials is not None:
            wanted = set(serials)
            jobs = [j for j in farm.jobs.values() if j.serial in wanted]
        users = data.get("users")
        if users not in (None, []):
            if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
                raise AfanasyError('"users" must be a list of user names')
            jobs = [j for j in (farm.jobs.values() if jobs is None else jobs) if j.user_name in users]
        mask = _string(data, "mask")
        if mask:
            pattern = self._mask(mask)
            jobs = [j for j in (farm.jobs.values() if jobs is None else jobs) if pattern.fullmatch(j.name)]
        return jobs

    def _one_render(self, data: Mapping[str, Any], mode: str) -> Render:
        ids = _ids(data)
        if ids is None or len(ids) != 1:
            raise AfanasyError(f'get renders mode {mode!r} needs "ids" with one render id')
        render = self.farm.renders.get(ids[0])
        if render is None:
            raise AfanasyError("Invalid ID")
        return render

    def _get_renders(self, data: dict[str, Any], mode: str) -> dict[str, Any]:
        if mode == "full":
            render = self._one_render(data, mode)
            full: dict[str, Any] = {"name": render.name, "id": render.id, "render": render_json(render, ""),
                                    "custom_data": ""}
            if render.online:
                full["host_resources"] = _host_resources(render.resources)
            return {"object": full}
        if mode == "log":
            render = self._one_render(data, mode)
            return _message("log", render.name, self.logs.renders.get(render.name, ()))
        if mode == "tasks_log":
            render = self._one_render(data, mode)
            return _message("tasks_log", render.name,
                            self.logs.render_task_lines(render.name) or ["No tasks execution."])
        if mode not in ("", "resources"):
            raise AfanasyError(f"get renders mode {mode!r} is not supported by farmnet: "
                               "it serves the list, full, resources, log and tasks_log")
        ids = _ids(data)
        renders = list(self.farm.renders.values())
        if ids is not None:
            renders = [self.farm.renders[i] for i in ids if i in self.farm.renders]
        else:
            mask = _string(data, "mask")
            if mask:
                pattern = self._mask(mask)
                renders = [r for r in renders if pattern.fullmatch(r.name)]
        return {"renders": [render_json(r, mode) for r in renders]}

    def _get_users(self, data: dict[str, Any], mode: str) -> dict[str, Any]:
        if _ids(data) is not None:
            raise AfanasyError('farmnet\'s users have no ids: ask by "mask" (a user name pattern)')
        users = list(self.farm.users.values())
        mask = _string(data, "mask")
        if mask:
            pattern = self._mask(mask)
            users = [u for u in users if pattern.fullmatch(u.name)]
        if mode == "log":
            if len(users) != 1:
                raise AfanasyError(f'get users mode "log" needs a "mask" naming one user '
                                   f"({len(users)} match)")
            return _message("log", users[0].name, self.logs.users.get(users[0].name, ()))
        if mode:
            raise AfanasyError(f"get users mode {mode!r} is not supported by farmnet: it serves the list "
                               "and log (jobs_order: farmnet orders a user's jobs by priority and age, "
                               "not by hand)")
        return {"users": [user_json(u) for u in users]}

    def _get_monitors(self, data: dict[str, Any], mode: str) -> dict[str, Any]:
        if mode:
            raise AfanasyError(f"get monitors mode {mode!r} is not supported by farmnet: its monitors follow "
                               "the farm's events over AMP (PollEvents) or the web site's /events")
        connections = list(self.monitors())
        ids = _ids(data)
        if ids is not None:
            connections = [c for c in connections if c.id in ids]
        mask = _string(data, "mask")
        if mask:
            pattern = self._mask(mask)
            connections = [c for c in connections if pattern.fullmatch(f"{c.identity}@{c.address}")]
        return {"monitors": [monitor_json(c) for c in connections]}

    def _tree_paths(self, kind: str, data: Mapping[str, Any], everything: bool) -> list[str]:
        """The pools' or branches' paths a request names by ``mask`` (the whole path);
        ``everything``: none named is all of them."""
        if _ids(data) is not None:
            raise AfanasyError(f'farmnet\'s {kind} have no ids: name them by "mask" (a path pattern)')
        tree = self.farm.trees.pools if kind == "pools" else self.farm.trees.branches
        mask = _string(data, "mask")
        if not mask:
            if everything:
                return sorted(tree)
            raise AfanasyError(f'an action on {kind} needs a "mask" (a path pattern)')
        pattern = self._mask(mask)
        paths = sorted(p for p in tree if pattern.fullmatch(p))
        if not paths and not everything:
            raise AfanasyError(f"{kind}: No node matches {mask!r} found.")
        return paths

    def _get_trees(self, kind: str, data: Mapping[str, Any], mode: str) -> dict[str, Any]:
        if mode:
            raise AfanasyError(f"get {kind} mode {mode!r} is not supported by farmnet: it serves the list")
        trees = self.farm.trees
        paths = self._tree_paths(kind, data, everything=True)
        if kind == "pools":
            return {"pools": [pool_json(trees.pools[p]) for p in paths]}
        return {"branches": [branch_json(self.farm, trees.branches[p]) for p in paths]}

    # --- action --------------------------------------------------------------------------

    async def _action(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        kind = _string(data, "type")
        if not kind:
            raise AfanasyError('an action needs a "type": jobs, renders or users')
        if kind in _REFUSED_ACTIONS:
            raise AfanasyError(f"Action type {kind!r} is not supported by farmnet: {_REFUSED_ACTIONS[kind]}")
        if kind not in ("jobs", "renders", "users", "pools", "branches"):
            raise AfanasyError(f"Action has unknown type: {kind!r}: farmnet acts on jobs, renders, users, "
                               "pools and branches")
        ids, mask = _ids(data), _string(data, "mask")
        if ids is None and not mask:
            raise AfanasyError("JSON action should have nodes ids or mask to operate with.")
        operation, params = _mapping(data, "operation"), _mapping(data, "params")
        if operation is None and not params:
            raise AfanasyError('an action needs an "operation" or "params"')
        user = self.user_for_change(conn, data, "an action")
        who = f"{user}@{_string(data, 'host_name') or conn.address}"
        if kind == "jobs":
            done = self._act_jobs(user, who, ids, mask, data, operation, params)
        elif kind == "renders":
            done = self._act_renders(user, who, ids, mask, operation, params)
        elif kind == "pools":
            done = self._act_pools(user, self._tree_paths(kind, data, everything=False), operation, params)
        elif kind == "branches":
            done = self._act_branches(user, self._tree_paths(kind, data, everything=False), operation, params)
        else:
            done = self._act_users(user, who, ids, mask, operation, params)
        await self.durable()
        if isinstance(done, dict):
            return {"object": done}
        return {"info": {"kind": "log", "text": done}}

    def _job_ids(self, ids: list[int] | None, mask: str) -> list[int]:
        if ids is not None:
            return ids
        pattern = self._mask(mask)
        found = [j.id for j in self.farm.jobs.values() if pattern.fullmatch(j.name)]
        if not found:
            raise AfanasyError(f"jobs: No node matches {mask!r} found.")
        return found

    def _act_jobs(self, user: str, who: str, ids: list[int] | None, mask: str, data: Mapping[str, Any],
                  operation: Mapping[str, Any] | None, params: Mapping[str, Any] | None
                  ) -> str | dict[str, Any]:
        job_ids = self._job_ids(ids, mask)
        if "block_ids" in data or "block_mask" in data:
            return self._act_blocks(user, who, job_ids, data, operation, params)
        farm = self.farm
        if operation is not None:
            op = _string(operation, "type")
            if op == "append_blocks":
                return self._append_blocks(user, who, job_ids, operation)
            if op == "restart_pause":
                act(farm, user, "jobs", "restart", {"id": job_ids})
                act(farm, user, "jobs", "pause", {"id": job_ids})
            elif op in _JOB_OPERATIONS:
                act(farm, user, "jobs", _JOB_OPERATIONS[op], {"id": job_ids})
            elif op in _REFUSED_JOB_OPERATIONS:
                raise AfanasyError(f"job operation {op!r} is not supported by farmnet: "
                                   f"{_REFUSED_JOB_OPERATIONS[op]}")
            else:
                known = sorted([*_JOB_OPERATIONS, "restart_pause", "append_blocks"])
                raise AfanasyError(f"Unknown operation: {op!r}: farmnet's job operations are "
                                   f"{', '.join(known)}")
            self._note_jobs(job_ids, f"{who}: {op}")
            return f"jobs {_list(job_ids)}: {op}"
        assert params is not None
        act(farm, user, "jobs", "update", {"id": job_ids}, dict(params))
        self._note_jobs(job_ids, f"{who}: set {', '.join(params)}")
        return f"jobs {_list(job_ids)}: set {', '.join(params)}"

    def _note_jobs(self, job_ids: Iterable[int], text: str, block: int = -1) -> None:
        for job_id in job_ids:
            self.logs.job(job_id, text, block)

    def _append_blocks(self, user: str, who: str, job_ids: list[int], operation: Mapping[str, Any]
                       ) -> dict[str, Any]:
        """af.Cmd().appendBlocks(): answered as Afanasy does, ``{"object": {"block_ids": [...]}}``."""
        if len(job_ids) != 1:
            raise AfanasyError("append_blocks acts on one job: give one id")
        blocks = operation.get("blocks")
        if not isinstance(blocks, list):
            raise AfanasyError("Operation requires blocks array.")
        if not blocks:
            raise AfanasyError("Operation blocks array has zero size.")
        answer = act(self.farm, user, "jobs", "append_blocks", {"id": job_ids[0]}, blocks)
        self._note_jobs(job_ids, f"{who}: appended blocks {_list(answer['block_ids'])}")
        out = {"block_ids": answer["block_ids"]}
        if answer["warnings"]:
            out["warnings"] = answer["warnings"]
        return out

    def _act_blocks(self, user: str, who: str, job_ids: list[int], data: Mapping[str, Any],
                    operation: Mapping[str, Any] | None, params: Mapping[str, Any] | None
                    ) -> str | dict[str, Any]:
        farm, done = self.farm, []
        block_ids = _ids(data, "block_ids")
        block_mask = _string(data, "block_mask")
        pattern = self._mask(block_mask) if block_mask else None
        op = _string(operation, "type") if operation is not None else ""
        if operation is not None and op not in _BLOCK_OPERATIONS:
            if op in _REFUSED_BLOCK_OPERATIONS:
                raise AfanasyError(f"block operation {op!r} is not supported by farmnet: "
                                   f"{_REFUSED_BLOCK_OPERATIONS[op]}")
            raise AfanasyError(f"Unknown operation: {op!r}: farmnet's block operations are "
                               f"{', '.join(sorted(_BLOCK_OPERATIONS))}")
        if operation is not None and _string(operation, "mode"):
            raise AfanasyError(f"block operation mode {_string(operation, 'mode')!r} is not supported by "
                               "farmnet (affect_depends: act on the tasks depended on by their own ids)")
        chosen: list[tuple[int, int]] = []
        for job_id in job_ids:
            job = farm.job(job_id)
            if pattern is not None:
                numbers = [b.number for b in job.blocks if pattern.fullmatch(b.name)]
            elif block_ids is None:
                numbers = []
            else:
                numbers = list(range(len(job.blocks))) if block_ids == [-1] else block_ids
            if not numbers:
                raise AfanasyError('"block_ids" array does not contain any integers or invalid "block_mask"')
            for number in numbers:
                if not 0 <= number < len(job.blocks):
                    raise AfanasyError(f"Invalid block number: {number}")
            chosen.extend((job_id, number) for number in numbers)
        if op == "append_tasks":
            if len(chosen) != 1:
                raise AfanasyError("append_tasks acts on one block of one job")
            tasks = operation.get("tasks") if operation is not None else None
            if not isinstance(tasks, list):
                raise AfanasyError("Operation requires tasks array.")
            [(job_id, number)] = chosen
            answer = act(farm, user, "blocks", "append_tasks", {"job_id": job_id, "block": number}, tasks)
            self._note_jobs([job_id], f"{who}: appended tasks {_list(answer['task_ids'])}", number)
            return {"task_ids": answer["task_ids"]}
        for job_id, number in chosen:
            where = {"job_id": job_id, "block": number}
            if operation is None:
                assert params is not None
                act(farm, user, "blocks", "update", where, dict(params))
            elif op == "reset_error_hosts":
                act(farm, user, "blocks", "reset_error_hosts", where)
            elif op == "tickets":
                tickets = self._tickets(job_id, number, operation)
                act(farm, user, "blocks", "update", where, {"tickets": tickets})
            else:
                block = farm.job(job_id).blocks[number]
                task_ids = _ids(operation, "task_ids")  # type: ignore[arg-type]
                tasks = task_ids if task_ids is not None else list(range(len(block.tasks)))
                for t in tasks:
                    if not 0 <= t < len(block.tasks):
                        raise AfanasyError(f"Invalid operation task numer = {t}")
                act(farm, user, "tasks", _BLOCK_OPERATIONS[op], {**where, "task": tasks})
            done.append(f"{job_id}.{number}")
        what = op or "set " + ", ".join(params or {})
        for job_id, number in chosen:
            self.logs.job(job_id, f"{who}: {what}", number)
        return f"blocks {', '.join(done)}: {what}"

    def _tickets(self, job_id: int, number: int, operation: Mapping[str, Any]) -> dict[str, int]:
        """Afanasy's block ``tickets`` operation: one ticket's count set (-1: removed)."""
        name, count = operation.get("name"), operation.get("count")
        if not isinstance(name, str) or not name:
            raise AfanasyError("Ticket 'name' string is not specified.")
        if not isinstance(count, int) or isinstance(count, bool):
            raise AfanasyError("Ticket 'count' integer is not specified.")
        tickets = dict(self.farm.job(job_id).blocks[number].spec.tickets)
        if count < 0:
            tickets.pop(name, None)
        else:
            tickets[name] = count
        return tickets

    def _render_names(self, ids: list[int] | None, mask: str) -> list[str]:
        renders = self.farm.renders
        if ids is not None:
            missing = [i for i in ids if i not in renders]
            if missing:
                raise AfanasyError(f"Action node ID not found: {missing[0]}.")
            return [renders[i].name for i in ids]
        pattern = self._mask(mask)
        names = [r.name for r in renders.values() if pattern.fullmatch(r.name)]
        if not names:
            raise AfanasyError(f"renders: No node matches {mask!r} found.")
        return names

    def _act_renders(self, user: str, who: str, ids: list[int] | None, mask: str,
                     operation: Mapping[str, Any] | None, params: Mapping[str, Any] | None) -> str:
        farm, done = self.farm, []
        steps: list[tuple[str, Any]] = []  # checked whole before anything is done
        settable = {}
        for key, value in (params or {}).items():
            if key in ("nimby", "NIMBY", "paused"):
                if not isinstance(value, bool):
                    raise AfanasyError(f'"{key}" must be true or false')
                if key == "paused":
                    steps.append(("pause" if value else "resume", None))
                else:
                    steps.append((key if value else "free", None))
            elif key in _RENDER_PARAMS:
                settable[_RENDER_PARAMS[key]] = value
            elif key in _REFUSED_RENDER_PARAMS:
                raise AfanasyError(f"render parameter {key!r} is not supported by farmnet: "
                                   f"{_REFUSED_RENDER_PARAMS[key]}")
            else:
                raise AfanasyError(f"render parameter {key!r} is not supported by farmnet: it sets nimby, "
                                   f"NIMBY, paused, {', '.join(_RENDER_PARAMS)}")
        if settable:
            steps.append(("update", settable))
        if operation is not None:
            op = _string(operation, "type")
            if op in _RENDER_OPERATIONS:
                steps.append((_RENDER_OPERATIONS[op], None))
            elif op == "set_pool":
                pool = _string(operation, "name")
                if not pool:
                    raise AfanasyError('set_pool needs the pool\'s path as a non-empty "name" string')
                steps.insert(0, ("set_pool", self.farm.trees.pool(pool).path))  # first: admins only
            elif op == "reassign_pool":
                steps.insert(0, ("reassign_pool", None))
            elif op in _REFUSED_RENDER_OPERATIONS:
                raise AfanasyError(f"render operation {op!r} is not supported by farmnet: "
                                   f"{_REFUSED_RENDER_OPERATIONS[op]}")
            else:
                raise AfanasyError(f"Unknown operation: {op!r}: farmnet's render operations are "
                                   f"{', '.join(sorted(_RENDER_OPERATIONS))}")
        names = self._render_names(ids, mask)
        for action, values in steps:
            if action == "set_pool":
                act(farm, user, "pools", "move", {"path": values}, {"renders": names})
                action = f"set_pool {values}"
            elif action == "reassign_pool":  # placed again by the pools' patterns
                act(farm, user, "pools", "reassign", {"path": "/"}, {"renders": names})
            else:
                act(farm, user, "renders", action, {"name": names}, values)
            done.append(action)
        for name in names:
            self.logs.render(name, f"{who}: {', '.join(done)}")
        return f"renders {', '.join(names)}: {', '.join(done)}"

    def _act_users(self, user: str, who: str, ids: list[int] | None, mask: str,
                   operation: Mapping[str, Any] | None, params: Mapping[str, Any] | None) -> str:
        if ids is not None:
            raise AfanasyError('farmnet\'s users have no ids: name them by "mask"')
        pattern = self._mask(mask)
        names = [u for u in self.farm.users if pattern.fullmatch(u)]
        if not names:
            raise AfanasyError(f"users: No node matches {mask!r} found.")
        if operation is not None:
            op = _string(operation, "type")
            if op.startswith("move_jobs_"):
                raise AfanasyError(f"user operation {op!r} is not supported by farmnet: it orders a user's "
                                   "jobs by priority and age (set a job's priority to move it)")
            if op != "delete":
                raise AfanasyError(f"Unknown operation: {op!r}: farmnet's user operation is delete")
            act(self.farm, user, "users", "delete", {"name": names})
            return f"users {', '.join(names)}: delete"
        act(self.farm, user, "users", "update", {"name": names}, dict(params or {}))
        for name in names:
            self.logs.user(name, f"{who}: set {', '.join(params or {})}")
        return f"users {', '.join(names)}: set {', '.join(params or {})}"


    def _act_pools(self, user: str, paths: list[str], operation: Mapping[str, Any] | None,
                   params: Mapping[str, Any] | None) -> str:
        farm = self.farm
        if operation is None:
            assert params is not None
            unknown = [k for k in params if k not in _POOL_PARAMS]
            if unknown:
                raise AfanasyError(f"pool parameter {unknown[0]!r} is not supported by farmnet: it sets "
                                   f"{', '.join(_POOL_PARAMS)}")
            for path in paths:
                act(farm, user, "pools", "update", {"path": path}, dict(params))
            return f"pools {', '.join(paths)}: set {', '.join(params)}"
        op = _string(operation, "type")
        if op in _REFUSED_POOL_OPERATIONS:
            raise AfanasyError(f"pool operation {op!r} is not supported by farmnet: "
                               f"{_REFUSED_POOL_OPERATIONS[op]}")
        if op not in _POOL_OPERATIONS:
            raise AfanasyError(f"Unknown operation: {op!r}: farmnet's pool operations are "
                               f"{', '.join(_POOL_OPERATIONS)}")
        if op == "delete":
            for path in sorted(paths, key=len, reverse=True):  # sub-pools first
                act(farm, user, "pools", "delete", {"path": path})
            return f"pools {', '.join(paths)}: delete"
        if len(paths) != 1:
            raise AfanasyError(f"pool operation {op!r} acts on one pool ({len(paths)} match)")
        [path] = paths
        if op == "add_pool":
            name = _string(operation, "name")
            if not name or "/" in name:
                raise AfanasyError("add_pool operation should have a new pool's name string "
                                   "(one part of a path, without \"/\")")
            [added] = act(farm, user, "pools", "create", {"path": path.rstrip("/") + "/" + name})
            return f"Pool '{added}' added to pool '{path}'"
        key, services = self._pool_services(farm.trees.pools[path], operation)
        act(farm, user, "pools", "update", {"path": path}, {key: services})
        return f"pool {path}: {key} {', '.join(services) or '(none)'}"

    def _pool_services(self, pool: Pool, operation: Mapping[str, Any]) -> tuple[str, list[str]]:
        """Afanasy's ``farm`` operation: the pool's services or disabled services as they become."""
        mode = _string(operation, "mode")
        if mode not in _SERVICE_MODES:
            raise AfanasyError(f"Service operation mode is not set or unknown ({mode!r}): valid modes are "
                               f"{', '.join(_SERVICE_MODES)}")
        services, disabled = list(pool.services), list(pool.services_disabled)
        if mode == "service_add":
            name = _string(operation, "name")
            if not name:
                raise AfanasyError('service_add needs the service\'s "name"')
            if name in services:
                raise AfanasyError(f"Service {name!r} already exists.")
            return "services", [*services, name]
        mask = _string(operation, "mask")
        if not mask:
            raise AfanasyError(f'{mode} needs a "mask" (a service name pattern)')
        pattern = self._mask(mask)
        if mode == "service_enable":
            kept = [s for s in disabled if not pattern.fullmatch(s)]
            if len(kept) == len(disabled):
                raise AfanasyError(f"no disabled service of pool {pool.path!r} matches {mask!r}")
            return "services_disabled", kept
        matched = [s for s in services if pattern.fullmatch(s)]
        if not matched:
            raise AfanasyError(f"no service of pool {pool.path!r} matches {mask!r}")
        if mode == "service_remove":
            return "services", [s for s in services if s not in matched]
        return "services_disabled", [*disabled, *(s for s in matched if s not in disabled)]

    def _act_branches(self, user: str, paths: list[str], operation: Mapping[str, Any] | None,
                      params: Mapping[str, Any] | None) -> str:
        farm = self.farm
        if operation is None:
            assert params is not None
            values: dict[str, Any] = {}
            for key, value in params.items():
                if key not in _BRANCH_PARAMS:
                    raise AfanasyError(f"branch parameter {key!r} is not supported by farmnet: it sets "
                                       f"{', '.join(_BRANCH_PARAMS)}")
                if key == "solve_method":
                    if value not in _SOLVE_METHODS:
                        raise AfanasyError(f'"solve_method" is one of {", ".join(_SOLVE_METHODS)}, '
                                           f"got {json.dumps(value)[:100]}")
                    value = _SOLVE_METHODS[value]
                values[_BRANCH_PARAMS[key]] = value
            for path in paths:
                act(farm, user, "branches", "update", {"path": path}, values)
            return f"branches {', '.join(paths)}: set {', '.join(params)}"
        op = _string(operation, "type")
        if op not in _BRANCH_OPERATIONS:
            raise AfanasyError(f"Unknown operation: {op!r}: farmnet's branch operations are "
                               f"{', '.join(_BRANCH_OPERATIONS)}")
        if op == "delete":
            for path in sorted(paths, key=len, reverse=True):  # sub-branches first
                act(farm, user, "branches", "delete", {"path": path})
        elif op == "delete_done_jobs":
            done = sorted(j.id for p in paths for j in farm.trees.branches[p].jobs if j.done)
            if done:
                act(farm, user, "jobs", "delete", {"id": done})
            return f"branches {', '.join(paths)}: deleted done jobs {_list(done) or '(none)'}"
        else:
            for path in paths:
                act(farm, user, "branches", "update", {"path": path}, {"paused": op == "pause"})
        return f"branches {', '.join(paths)}: {op}"


_HEADER_REST = re.compile(rb"\d{0,12}|\d{1,12} (J(S(O)?)?)?")


def _could_be_header(head: bytes) -> bool:
    """``head`` is the start of a header that is still arriving."""
    prefix = head[:len(_PREFIX)]
    return _PREFIX.startswith(prefix) and (len(head) <= len(_PREFIX) or
                                           _HEADER_REST.fullmatch(head[len(_PREFIX):]) is not None)


def _list(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)


class AfanasyProtocol(Protocol):
    """One request, one answer; the client closes (or is reset after close_wait)."""

    def __init__(self, server: AfanasyServer) -> None:
        self.server = server
        self.conn: Connection | None = None
        self._buffer = bytearray()
        self._length: int | None = None
        #: The whole request arrived (it is being answered, or was).
        self._requested = False
        self._answered = False
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.conn = self.server.registry.add(self, self.transport.getPeer())
        if self.conn is not None:
            self._timeout = self.server.reactor.callLater(self.server.config.request_timeout, self._too_slow)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timeout()
        if self.conn is not None:
            self.server.registry.removed(self.conn)

    def _stop_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def _too_slow(self) -> None:
        self._timeout = None
        if not self._requested:
            self._refuse(f"no whole request within {self.server.config.request_timeout:g} s")

    def ask_to_close(self, order: str, reason: str) -> None:
        """The answer asks the client to close; one that has not sent its whole request
        (the server is stopping) gets an error saying why instead."""
        if not self._requested:
            self._requested = True
            self._stop_timeout()
            self._send(error_answer(reason))

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.state is CloseState.CLOSED:
            return
        conn.bytes_in += len(data)
        self.server.registry.bytes_in += len(data)
        if self._requested:
            return  # after the request: nothing more is read
        buffer = self._buffer
        buffer += data
        if self._length is None:
            match = _HEADER.match(buffer)
            if match is None:
                if len(buffer) >= _HEADER_MAX or not _could_be_header(bytes(buffer)):
                    self._refuse("not Afanasy's framing: a request is 'AFANASY <length> JSON' "
                                 "followed by that many bytes of JSON")
                return
            length = int(match.group(1))
            limit = self.server.max_request_bytes
            if limit and length > limit:
                self._refuse(f"a request of {length} bytes is more than this server takes "
                             f"({limit}, limits.max_box_bytes)")
                return
            self._length = length
            del buffer[:match.end()]
        if len(buffer) < self._length:
            return
        if len(buffer) > self._length:
            self._refuse(f"the request is longer than its header says ({self._length} bytes)")
            return
        body = bytes(buffer)
        self._buffer = bytearray()
        self._requested = True
        self._stop_timeout()
        self.server.registry.box_received(conn)
        conn.pending += 1
        answer = self.server.answer(conn, body)
        if isinstance(answer, defer.Deferred):
            answer.addCallback(self._answered_with)
        else:
            self._answered_with(answer)

    def _answered_with(self, answer: Answer) -> None:
        assert self.conn is not None
        self.conn.pending -= 1
        self._send(answer)

    def _refuse(self, reason: str) -> None:
        """Bad framing: an error answer, then the usual client-first close."""
        conn = self.conn
        assert conn is not None
        log.warn("Afanasy request from {peer} refused: {reason}", peer=conn.label, reason=reason)
        self._requested = True
        self._stop_timeout()
        self._buffer = bytearray()
        self._send(error_answer(reason))

    def _send(self, answer: Answer) -> None:
        conn = self.conn
        if conn is None or conn.state is CloseState.CLOSED or self._answered:
            return
        self._answered = True
        if isinstance(answer, Framed):
            data = answer.data  # framed once, kept: written without a copy
        else:
            header, body = framed(answer)
            data = header + body
        size = len(data)
        conn.bytes_out += size
        self.server.registry.bytes_out += size
        transport = getattr(self.transport, "transport", self.transport)  # under ClientFirstConnection
        if size > getattr(transport, "SEND_LIMIT", size):
            # One send call for the whole answer (the kernel takes what its buffer holds), not
            # one reactor turn per 128 KiB: a job list is hundreds of kB.
            transport.SEND_LIMIT = size
        self.transport.write(data)
        # The answer asks the client to close; reset it if it has not after close_wait.
        self.server.registry.close(conn, "answered", quiet=True)


class AfanasyFactory(Factory):
    noisy = False

    def __init__(self, server: AfanasyServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> AfanasyProtocol:
        proto = AfanasyProtocol(self.server)
        proto.factory = self
        return proto
