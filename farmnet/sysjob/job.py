"""Afanasy's system job: the farm's own chores run as tasks on renders.

One job of the system user with three blocks: ``postcmd`` (jobs' and blocks' pre commands,
run when a job is submitted — the job waits for them, as Afanasy runs them before the job's
first solve — and post commands, run when a job is deleted), ``events`` (JOB_CREATED, JOB_DONE, JOB_ERROR,
JOB_DELETED, RENDER_ZOMBIE, RENDER_SICK, when the custom data asks) and ``wakeonlan``
(``wolwake MAC…``, run by another render). When the server needs a command run it appends a
task; renders run it like any task (the block's service decides how); admins see and steer
the job like any other.

- ``tasksmax``: at most this many ready or running system tasks; past it, commands wait in
  a list stored with the farm's state, and none is lost.
- ``tasklife``: a system task older than this is an error.
- A task that errs past its retries is deleted, its output appended to the system job's
  log; done tasks are deleted too (when their block runs nothing, since that renumbers it).
- Restarting a system block or task resets the queue: waiting commands flow in again.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from farmnet.config import SysJobConfig
from farmnet.convert import unstructure
from farmnet.model import events as ev
from farmnet.model.data import Block, Job, Render, Task, TaskKey, TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import BlockSpec, JobSpec
from farmnet.model.views import render_errors

log = Logger()

SYSTEM_USER = "farmnet"
SYSTEM_JOB = "system"
EVENTS = ("JOB_CREATED", "JOB_DONE", "JOB_ERROR", "JOB_DELETED", "RENDER_ZOMBIE", "RENDER_SICK")
LOG_LINES = 1000
#: Afanasy's settings for system blocks.
BLOCK_SETTINGS = {"errors_retries": 9, "errors_avoid_host": 3, "errors_task_same_host": 1,
                  "errors_forgive_time": 600, "task_max_run_time": 60}


class SystemJob(service.Service):
    """Keeps the system job, its queue and its log; follows the farm as an observer."""

    def __init__(self, farm: Farm, settings: SysJobConfig,
                 read_output: Callable[[TaskKey, int], bytes] = lambda key, run: b"",
                 load_state: Callable[[str], Any] = lambda key: None,
                 save_state: Callable[[str, Any], None] = lambda key, value: None) -> None:
        self.farm = farm
        self.settings = settings
        self.read_output = read_output
        self.load_state = load_state
        self.save_state = save_state
        #: Commands waiting past tasksmax: (block name, task name, command).
        self.queue: deque[tuple[str, str, str]] = deque()
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.job: Job | None = None
        self._born: dict[int, float] = {}
        self._told: set[tuple[int, str]] = set()
        self._unsubscribe: Callable[[], None] = lambda: None
        self._check: IDelayedCall | None = None
        self._cleanup = False
        self._reasons: dict[int, str] = {}
        #: Pre command task name → the job waiting for it (not kept over a restart: a job
        #: whose pre commands were running then no longer waits for them).
        self._pre: dict[str, int] = {}

    # --- the job -----------------------------------------------------------------------

    def ensure(self) -> Job:
        """Find the system job (after a restart) or create it."""
        for job in self.farm.jobs.values():
            if job.user_name == SYSTEM_USER and job.name == SYSTEM_JOB:
                self.job = job
                break
        else:
            services = {"postcmd": self.settings.postcmd_service, "events": self.settings.events_service,
                        "wakeonlan": self.settings.wol_service}
            spec = JobSpec(name=SYSTEM_JOB, user_name=SYSTEM_USER, priority=99, blocks=tuple(
                BlockSpec(name=name, service=svc, parser="none", dynamic=True, **BLOCK_SETTINGS)
                for name, svc in services.items()))
            self.job = self.farm.submit(spec, SYSTEM_USER)  # admins steer it, as any job
        self.farm.system_job_id = self.job.id
        now = self.farm.clock.seconds()
        for block in self.job.blocks:
            for task in block.tasks:
                self._born[id(task)] = now
        state = self.load_state("sysjob") or {}
        self.queue = deque(tuple(item) for item in state.get("queue", ()))
        self.log = deque(state.get("log", ()), maxlen=LOG_LINES)
        return self.job

    def block(self, name: str) -> Block:
        assert self.job is not None
        return next(b for b in self.job.blocks if b.name == name)

    def waiting_or_running(self) -> int:
        assert self.job is not None
        c = self.job.counts
        return c[TaskState.RDY] + c[TaskState.RUN] + c[TaskState.WRC]

    def add(self, block: str, name: str, command: str) -> None:
        """Run ``command`` on a render through a system block, now or when there is room."""
        if self.queue or self.waiting_or_running() >= self.settings.tasksmax:
            self.queue.append((block, name, command))
            self._save()
            log.info("system job full: {command} waits ({count} waiting)", command=name,
                     count=len(self.queue))
            self._flow()
            return
        task = self.farm.append_task(self.block(block), name, command)
        self._born[id(task)] = self.farm.clock.seconds()

    def _flow(self) -> None:
        """Move waiting commands into tasks while there is room."""
        moved = False
        while self.queue and self.waiting_or_running() < self.settings.tasksmax:
            block, name, command = self.queue.popleft()
            task = self.farm.append_task(self.block(block), name, command)
            self._born[id(task)] = self.farm.clock.seconds()
            moved = True
        if moved:
            self._save()

    def _save(self) -> None:
        self.save_state("sysjob", {"queue": list(self.queue), "log": list(self.log)})

    # --- following the farm --------------------------------------------------------------

    def follow(self) -> None:
        """Subscribe to what makes system tasks or events (Afanasy's JOB_*/RENDER_*)."""
        bus = self.farm.bus
        self._unsubscribe = bus.subscribe_all({
            ev.TaskStateChanged: self._task_changed,
            ev.TasksRestarted: self._tasks_restarted,
            ev.JobSubmitted: self._job_submitted,
            ev.JobChanged: self._job_changed,
            ev.JobDeleted: self._job_deleted,
            ev.RenderLost: self._render_lost,
            ev.RenderSick: self._render_sick,
        })

    def _is_other(self, job: Job) -> bool:
        return self.job is not None and job is not self.job

    def _task_changed(self, event: ev.TaskStateChanged) -> None:
        if self.job is not None and event.task.block.job is self.job:
            self._system_task_changed(event.task)

    def _tasks_restarted(self, event: ev.TasksRestarted) -> None:
        job = event.block.job
        if self.job is None:
            return
        if job is self.job:
            self._flow()
        self._told -= {(job.id, "JOB_DONE"), (job.id, "JOB_ERROR")}

    def _job_submitted(self, event: ev.JobSubmitted) -> None:
        if self._is_other(event.job):
            self._pre_commands(event.job)
            self._job_event("JOB_CREATED", event.job)

    def _job_changed(self, event: ev.JobChanged) -> None:
        job = event.job
        if not self._is_other(job):
            return
        if job.done:
            self._job_event("JOB_DONE", job)
        elif job.state is TaskState.ERR:
            self._job_event("JOB_ERROR", job)

    def _job_deleted(self, event: ev.JobDeleted) -> None:
        job = event.job
        if self._is_other(job):
            self._post_commands(job)
            self._job_event("JOB_DELETED", job)
            self._told = {told for told in self._told if told[0] != job.id}

    def _render_sick(self, event: ev.RenderSick) -> None:
        if self.job is not None:
            self._render_event("RENDER_SICK", event.render)

    def _render_lost(self, event: ev.RenderLost) -> None:
        if self.job is not None and event.zombie:
            self._render_event("RENDER_ZOMBIE", event.render)

    def _system_task_changed(self, task: Task) -> None:
        if task.state is TaskState.ERR:
            output = self.read_output(task.key, task.starts_count)[-4000:].decode("utf-8", "replace")
            why = self._reasons.pop(id(task), f"failed after {task.errors_count} error(s)")
            self.log.append(f"{task.block.name} task {task.name!r} {why}, deleted; "
                            f"command: {task.command}\n{output}".rstrip())
            self._save()
        if task.state in (TaskState.DON, TaskState.SKP, TaskState.ERR):
            self._born.pop(id(task), None)
            job_id = self._pre.pop(task.name, None) if task.block.name == "postcmd" else None
            if job_id is not None:
                self.farm.command_pre_ended(job_id)
            # Not now: the farm is in the middle of this change, and removing renumbers.
            if not self._cleanup:
                self._cleanup = True
                self.farm.clock.callLater(0, self._clean)

    def _clean(self) -> None:
        self._cleanup = False
        if self.job is None:
            return
        for block in self.job.blocks:
            self.farm.remove_tasks(block, lambda t: t.state in (TaskState.DON, TaskState.SKP, TaskState.ERR))
        self._flow()

    def _pre_commands(self, job: Job) -> None:
        """Afanasy runs a job's and its blocks' command_pre when the job is registered, before
        it is solved: here they are system tasks, and the job waits until they end."""
        commands = [(f"{job.name} [{job.id}]: pre", job.spec.command_pre)] + [
            (f"{job.name} [{job.id}] block {b.number} {b.name}: pre", b.spec.command_pre) for b in job.blocks]
        commands = [(name, command) for name, command in commands if command]
        if not commands:
            return
        self.farm.hold_for_commands_pre(job, len(commands))
        for name, command in commands:
            self._pre[name] = job.id
            self.add("postcmd", name, command)

    def _post_commands(self, job: Job) -> None:
        commands = [(f"{job.name}: post", job.spec.command_post)] + [
            (f"{job.name} / {b.name}: post", b.spec.command_post) for b in job.blocks]
        for name, command in commands:
            if command:
                self.add("postcmd", name, command)

    def _event_data(self, user: str, job_data: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.settings.custom_data)
        u = self.farm.users.get(user)
        if u is not None:
            data.update(u.custom_data)
        data.update(job_data)
        return data

    def _wanted(self, data: Mapping[str, Any], event: str) -> bool:
        asked = data.get("events")
        return isinstance(asked, Mapping) and event in asked

    def _job_event(self, event: str, job: Job) -> None:
        """An event is sent when the user's or the job's custom data asks for it."""
        if (job.id, event) in self._told:
            return
        data = self._event_data(job.user_name, dict(job.spec.custom_data))
        if not self._wanted(data, event):
            return
        self._told.add((job.id, event))
        data.update({"event": event, "user": job.user_name,
                     "job": {"id": job.id, "name": job.name, "user_name": job.user_name,
                             "state": job.state.value, "time_done": job.time_done}})
        self.add("events", f"{event} {job.name}", json.dumps(data, sort_keys=True))

    def _render_event(self, event: str, render: Render) -> None:
        data = self._event_data("", {})
        if not self._wanted(data, event):
            return
        data.update({"event": event, "render": {"name": render.name, "state": render.state,
                                                "error_history": unstructure(render_errors(render))},
                     "pools": []})
        self.add("events", f"{event} {render.name}", json.dumps(data, sort_keys=True))

    # --- wake-on-LAN -------------------------------------------------------------------

    def wake(self, render: Render) -> None:
        """Append ``wolwake MAC…``: another render sends the magic packets."""
        if not render.macs:
            raise ValueError(f"render {render.name!r} reported no MAC address: it cannot be woken")
        self.add("wakeonlan", f"wake {render.name}", " ".join([self.settings.cmd_wolwake, *render.macs]))

    # --- tasklife ----------------------------------------------------------------------

    def _check_tasklife(self) -> None:
        self._check = None
        if self.job is not None:
            now = self.farm.clock.seconds()
            for block in self.job.blocks:
                for task in list(block.tasks):
                    born = self._born.get(id(task))
                    if born is not None and now - born >= self.settings.tasklife:
                        reason = f"older than tasklife {self.settings.tasklife:.0f} s"
                        self._reasons[id(task)] = reason
                        self.farm.fail_task(task, f"system task {reason}")
        self._schedule_check()

    def _schedule_check(self) -> None:
        interval = max(1.0, min(60.0, self.settings.tasklife / 4))
        self._check = self.farm.clock.callLater(interval, self._check_tasklife)

    # --- service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.ensure()
        self.follow()
        self._flow()
        self._schedule_check()

    def stopService(self) -> None:
        super().stopService()
        self._unsubscribe()
        if self._check is not None and self._check.active():
            self._check.cancel()
