"""The farm: every change to jobs, tasks, users and renders happens here.

This is where a task's life is handled: submitted (`submit`), handed to a render
(`start_task`, called by the scheduler), reported (`task_output`, `task_finished`),
retried or failed (`_task_failed`), timed out (`_check_time_limits`), lost with its
render (`render_lost`) and re-attached (`register_render`). Each state change goes
through `_set_state`, the one place that keeps counters right and tells observers
(monitors' event log, the store, the statistics). No I/O: time comes from the clock
passed in, and the AMP layer is told that a render has orders through `on_orders`.

Actions (pause, restart, skip, nimby, ...) are here too, behind one permission check.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.jobspec import (
    BLOCK_SETTABLE,
    JOB_SETTABLE,
    MAX_PRIORITY,
    JobSpec,
    TaskSpec,
    validate_changes,
)
from farmnet.server.events import EventLog
from farmnet.server.model import (
    ACTIVE,
    FINISHED,
    Block,
    Job,
    Render,
    Task,
    TaskKey,
    TaskRun,
    TaskState,
    User,
)
from farmnet.server.scheduler import Scheduler, Why

log = Logger()

#: Observers get (what, object): ("task", Task) on every state change, ("run", TaskRun)
#: when a run ends, ("job", Job), ("job_deleted", Job), ("render", Render), ("user", User),
#: ("render_sick", Render), ("render_zombie", Render), ("job_created", Job),
#: ("tasks_restarted", Block), ("tasks_renumbered", Block).
Observer = Callable[[str, Any], None]

JOB_ACTIONS = ("pause", "resume", "stop", "delete", "restart", "restart_errors", "restart_running",
               "skip", "set_priority", "set", "set_block")
TASK_ACTIONS = ("restart", "skip")
RENDER_ACTIONS = ("nimby", "NIMBY", "free", "pause", "resume", "eject", "exit", "heal", "set", "sleep",
                  "wake")
USER_ACTIONS = ("set",)
USER_SETTABLE = {
    "priority": int, "max_running_tasks": int, "max_running_tasks_per_host": int,
    "hosts_mask": str, "hosts_mask_exclude": str, "errors_retries": int, "errors_avoid_host": int,
    "errors_task_same_host": int, "errors_forgive_time": int, "jobs_solving": str,
    "custom_data": dict,
}
ERROR_SETTINGS = ("errors_retries", "errors_avoid_host", "errors_task_same_host", "errors_forgive_time")


def _compile(pattern: str) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class Farm:
    def __init__(self, clock: IReactorTime, settings: SchedulingConfig | None = None,
                 events: EventLog | None = None) -> None:
        self.clock = clock
        self.settings = settings or SchedulingConfig()
        self.events = events or EventLog()
        self.jobs: dict[int, Job] = {}
        self.users: dict[str, User] = {}
        self.renders: dict[int, Render] = {}
        self.renders_by_name: dict[str, Render] = {}
        #: Bumped whenever work may have become runnable, so idle renders re-solve.
        self.work_generation = 0
        #: Bumped when jobs come, go, finish or change dependencies (job depend_mask cache).
        self.jobs_generation = 0
        self.tickets_used: Counter[str] = Counter()
        #: The system job (farmnet.sysjob), which users cannot delete, and how it wakes renders.
        self.system_job_id: int | None = None
        self.on_wake: Callable[[Render], None] | None = None
        #: Capacities of unfinished blocks: a render with less free is not worth a solve.
        self.block_capacities: Counter[int] = Counter()
        self.observers: list[Observer] = []
        self.on_orders: Callable[[Render], None] = lambda render: None
        self.scheduler = Scheduler(self)
        self._next_job_id = 1
        self._next_render_id = 1
        self._serial = 0
        self._solve_call: IDelayedCall | None = None
        #: Pending timers: ("reconnect"|"limits"|"wait", id) → call.
        self._timers: dict[tuple[str, int], IDelayedCall] = {}

    # --- the one place -----------------------------------------------------------------

    def _set_state(self, task: Task, state: TaskState) -> None:
        old = task.state
        if old is state:
            return
        block, job = task.block, task.block.job
        block_was_finished = block.finished
        block.counts[old] -= 1
        block.counts[state] += 1
        job.counts[old] -= 1
        job.counts[state] += 1
        task.state = state
        if state is TaskState.RDY:
            block.push_ready(task)
            self.work_generation += 1
            if job.counts[TaskState.RDY] == 1:
                self._ready_jobs_add(job)
        elif old is TaskState.RDY and job.counts[TaskState.RDY] == 0:
            self._ready_jobs_remove(job)
        if block.finished != block_was_finished:
            self._count_capacity(block.spec.capacity, -1 if block_was_finished is False else +1)
            if block.depends_on_me or job.spec.depend_mask:
                self.work_generation += 1  # blocks or jobs waiting on it may run now
        self.events.emit("task", job_id=job.id, block=block.number, task=task.number,
                         state=state.value, host=task.host, errors_count=task.errors_count)
        self._notify("task", task)
        was_done = job.time_done
        if job.done and not was_done:
            job.time_done = self.clock.seconds()
            self.jobs_generation += 1
            self.work_generation += 1
            log.info("job {job_id} {job_name} done", job_id=job.id, job_name=job.name)
            self._job_changed(job)
        elif was_done and not job.done:
            job.time_done = 0.0
            self.jobs_generation += 1
            self._job_changed(job)

    def _notify(self, what: str, obj: Any) -> None:
        for observer in self.observers:
            observer(what, obj)

    def _job_changed(self, job: Job) -> None:
        self.events.emit("job", job=self.job_dict(job))
        self._notify("job", job)

    def _count_capacity(self, capacity: int, delta: int) -> None:
        self.block_capacities[capacity] += delta
        if self.block_capacities[capacity] <= 0:
            del self.block_capacities[capacity]

    def smallest_block_capacity(self) -> int:
        """A lower bound of what any unfinished block needs on a render."""
        return min(self.block_capacities, default=0)

    def _ready_jobs_add(self, job: Job) -> None:
        jobs = self.users[job.user_name].ready_jobs
        if job not in jobs:
            bisect.insort(jobs, job, key=Job.order_key)

    def _ready_jobs_remove(self, job: Job) -> None:
        jobs = self.users[job.user_name].ready_jobs
        if job in jobs:
            jobs.remove(job)

    def setting(self, block: Block, name: str) -> Any:
        """An error setting as it applies to a block: block, else job, else user, else farm."""
        for value in (getattr(block.spec, name), getattr(block.job.spec, name),
                      getattr(self.users[block.job.user_name], name)):
            if value >= 0:
                return value
        return getattr(self.settings, name)

    def _timer(self, kind: str, ident: int, delay: float, f: Callable[..., None], *args: Any) -> None:
        self._cancel_timer(kind, ident)

        def fire() -> None:
            self._timers.pop((kind, ident), None)
            f(*args)

        self._timers[(kind, ident)] = self.clock.callLater(max(0.0, delay), fire)

    def _cancel_timer(self, kind: str, ident: int) -> None:
        call = self._timers.pop((kind, ident), None)
        if call is not None and call.active():
            call.cancel()

    def stop(self) -> None:
        """Cancel the farm's timers (the server is stopping)."""
        for call in [self._solve_call, *self._timers.values()]:
            if call is not None and call.active():
                call.cancel()
        self._solve_call = None
        self._timers.clear()

    # --- permissions -------------------------------------------------------------------

    def is_admin(self, user: str) -> bool:
        return user in self.settings.admins

    def check_may_change(self, user: str, job: Job) -> None:
        """The one permission check for every job mutation: its owner or an admin."""
        if user != job.user_name and not self.is_admin(user):
            raise errors.PermissionDenied(
                f"user {user!r} may not change job {job.id} of user {job.user_name!r}")

    def _check_admin(self, user: str, what: str) -> None:
        if not self.is_admin(user):
            raise errors.PermissionDenied(f"user {user!r} may not {what}: admins only")

    # --- jobs --------------------------------------------------------------------------

    def submit(self, spec: JobSpec, user: str) -> Job:
        owner = spec.user_name or user
        if owner != user and not self.is_admin(user):
            raise errors.PermissionDenied(f"user {user!r} may not submit jobs as {owner!r}")
        if spec.tasks_count > self.settings.max_tasks_per_job:
            raise errors.JobSpecError(
                f"job.blocks: {spec.tasks_count} tasks is more than this farm's limit of "
                f"{self.settings.max_tasks_per_job}")
        now = self.clock.seconds()
        self._serial += 1
        job = self._build_job(self._next_job_id, spec, owner, spec.priority, now, self._serial,
                              spec.offline)
        self._next_job_id += 1
        for block in job.blocks:
            self._count_capacity(block.spec.capacity, +1)
        u = self.users.get(owner)
        if u is None:
            u = self.users[owner] = User(owner, now)
            log.info("user {user} created by their first job", user=owner)
            self.events.emit("user", user=u.to_dict())
            self._notify("user", u)
        u.jobs.add(job.id)
        self._ready_jobs_add(job)
        self.jobs_generation += 1
        self.work_generation += 1
        self._schedule_time_wait(job)
        log.info("job {job_id} {job_name} submitted by {user}: {tasks} tasks", job_id=job.id,
                 job_name=job.name, user=owner, tasks=job.tasks_total)
        self._job_changed(job)
        self._notify("job_created", job)
        self.request_solve()
        return job

    def _build_job(self, job_id: int, spec: JobSpec, owner: str, priority: int, created: float,
                   serial: int, paused: bool) -> Job:
        """A job with all its tasks ready, registered in the farm (no events)."""
        job = Job(id=job_id, spec=spec, user_name=owner, priority=priority, time_creation=created,
                  serial=serial, paused=paused, hosts_mask=_compile(spec.hosts_mask),
                  hosts_mask_exclude=_compile(spec.hosts_mask_exclude))
        for number, bspec in enumerate(spec.blocks):
            block = Block(job=job, number=number, spec=bspec, hosts_mask=_compile(bspec.hosts_mask),
                          hosts_mask_exclude=_compile(bspec.hosts_mask_exclude))
            count = bspec.tasks_count
            block.tasks = [Task(block, n) for n in range(count)]
            block.counts[TaskState.RDY] = count
            block.set_order(bspec.sequential)
            job.counts[TaskState.RDY] += count
            job.blocks.append(block)
        self._link_blocks(job)
        self.jobs[job.id] = job
        return job

    def _link_blocks(self, job: Job) -> None:
        """Resolve blocks' depend_mask and tasks_depend_mask to the blocks they match."""
        for block in job.blocks:
            block.depends_on_me = False
        for block in job.blocks:
            for attr, mask in (("depends_on", block.spec.depend_mask),
                               ("tasks_depend_on", block.spec.tasks_depend_mask)):
                pattern = _compile(mask)
                matched = [b for b in job.blocks
                           if pattern is not None and b is not block and pattern.fullmatch(b.name)]
                setattr(block, attr, matched)
                for b in matched:
                    b.depends_on_me = True

    def _schedule_time_wait(self, job: Job) -> None:
        delay = job.spec.time_wait - self.clock.seconds()
        if delay > 0:
            self._timer("wait", job.id, delay, self._time_wait_over)

    def _time_wait_over(self) -> None:
        self.work_generation += 1
        self.request_solve()

    def job(self, job_id: int) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise errors.UnknownJob(f"no job {job_id}") from None

    def task(self, key: TaskKey) -> Task:
        job = self.job(key[0])
        try:
            if key[1] < 0 or key[2] < 0:
                raise IndexError
            return job.blocks[key[1]].tasks[key[2]]
        except IndexError:
            raise errors.UnknownTask(f"job {key[0]} has no block {key[1]} task {key[2]}") from None

    def job_action(self, user: str, job_ids: Iterable[int], action: str, value: Any = None) -> list[int]:
        """pause, resume, stop (pause and return running tasks to ready), delete (kills
        what runs), restart, restart_errors, restart_running, skip, set_priority N,
        set {param: value}, set_block {"block": N, param: value}."""
        if action not in JOB_ACTIONS:
            raise errors.InvalidAction(f"unknown job action {action!r}; one of {', '.join(JOB_ACTIONS)}")
        jobs = [self.job(i) for i in job_ids]
        for job in jobs:  # all or nothing: check every job before changing any
            self.check_may_change(user, job)
            if action == "delete" and job.id == self.system_job_id:
                raise errors.InvalidAction("the system job cannot be deleted")
        if action == "set_priority":
            action, value = "set", {"priority": value}
        if action == "set":
            value = self._valid_job_changes(value)
        if action == "set_block":
            value = self._valid_block_changes(jobs, value)
        for job in jobs:
            getattr(self, f"_job_{action}")(job, value)
            log.info("{user} {action} job {job_id}", user=user, action=action, job_id=job.id)
        self.request_solve()
        return [job.id for job in jobs]

    def _valid_job_changes(self, value: Any) -> dict[str, Any]:
        try:
            changes = validate_changes(value, JOB_SETTABLE, "job")
        except errors.JobSpecError as e:
            raise errors.InvalidAction(e.message) from None
        if not 0 <= changes.get("priority", 0) <= MAX_PRIORITY:
            raise errors.InvalidAction(f"job.priority: must be 0..{MAX_PRIORITY}")
        return changes

    def _valid_block_changes(self, jobs: list[Job], value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not isinstance(value.get("block"), int):
            raise errors.InvalidAction('set_block needs {"block": N, parameter: value, ...}')
        number = value["block"]
        for job in jobs:
            if not 0 <= number < len(job.blocks):
                raise errors.UnknownTask(f"job {job.id} has no block {number}")
        try:
            changes = validate_changes({k: v for k, v in value.items() if k != "block"}, BLOCK_SETTABLE,
                                       "block")
        except errors.JobSpecError as e:
            raise errors.InvalidAction(e.message) from None
        return {"block": number, **changes}

    def _job_pause(self, job: Job, value: Any) -> None:
        job.paused = True
        self._job_changed(job)

    def _job_resume(self, job: Job, value: Any) -> None:
        job.paused = False
        self.work_generation += 1
        self._job_changed(job)

    def _job_stop(self, job: Job, value: Any) -> None:
        job.paused = True
        self._restart_tasks(job, lambda t: t.state in ACTIVE, "job stopped")

    def _job_set(self, job: Job, changes: dict[str, Any]) -> None:
        if "priority" in changes:
            self._ready_jobs_remove(job)
            job.priority = changes["priority"]
            if job.counts[TaskState.RDY]:
                self._ready_jobs_add(job)
        job.spec = attrs.evolve(job.spec, **changes)
        job.hosts_mask = _compile(job.spec.hosts_mask)
        job.hosts_mask_exclude = _compile(job.spec.hosts_mask_exclude)
        self._schedule_time_wait(job)
        self.jobs_generation += 1
        self.work_generation += 1
        self._job_changed(job)

    def _job_set_block(self, job: Job, value: dict[str, Any]) -> None:
        changes = {k: v for k, v in value.items() if k != "block"}
        block = job.blocks[value["block"]]
        if not block.finished:
            self._count_capacity(block.spec.capacity, -1)
        block.spec = attrs.evolve(block.spec, **changes)
        if not block.finished:
            self._count_capacity(block.spec.capacity, +1)
        block.hosts_mask = _compile(block.spec.hosts_mask)
        block.hosts_mask_exclude = _compile(block.spec.hosts_mask_exclude)
        if "sequential" in changes:
            block.set_order(block.spec.sequential)
        self._link_blocks(job)
        self.work_generation += 1
        self._job_changed(job)

    def _job_restart(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: True, "job restarted")

    def _job_restart_errors(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: t.state is TaskState.ERR, "errors restarted")

    def _job_restart_running(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: t.state in ACTIVE, "running tasks restarted")

    def _job_skip(self, job: Job, value: Any) -> None:
        for block in job.blocks:
            for task in block.tasks:
                if task.state is not TaskState.DON:
                    self._skip_task(task)
        self._job_changed(job)

    def _restart_tasks(self, job: Job, which: Callable[[Task], bool], reason: str) -> None:
        for block in job.blocks:
            chosen = [task for task in block.tasks if which(task)]
            for task in chosen:
                self._restart_task(task, reason)
            if chosen:
                self._notify("tasks_restarted", block)
        self._job_changed(job)

    def _restart_task(self, task: Task, reason: str) -> None:
        if task.state in ACTIVE:
            self._stop_task(task, reason)
        task.errors_count = 0
        task.progress = 0
        task.host_errors = None
        self._set_state(task, TaskState.RDY)

    def _skip_task(self, task: Task) -> None:
        if task.state in ACTIVE:
            self._stop_task(task, "skipped")
        self._set_state(task, TaskState.SKP)

    def _job_delete(self, job: Job, value: Any) -> None:
        for block in job.blocks:
            for task in block.tasks:
                if task.state in ACTIVE:
                    self._stop_task(task, "job deleted")
        self._ready_jobs_remove(job)
        self._cancel_timer("wait", job.id)
        for block in job.blocks:
            if not block.finished:
                self._count_capacity(block.spec.capacity, -1)
        del self.jobs[job.id]
        self.users[job.user_name].jobs.discard(job.id)
        self.jobs_generation += 1
        self.work_generation += 1
        self.events.emit("job_deleted", job_id=job.id)
        self._notify("job_deleted", job)

    def fail_task(self, task: Task, reason: str) -> None:
        """Make a task an error now, whatever it was doing (the system job's tasklife)."""
        if task.state in FINISHED or task.state is TaskState.ERR:
            return
        log.info("task {key} is an error: {reason}", key=task.key, reason=reason)
        if task.state in ACTIVE:
            self._stop_task(task, reason)
        task.errors_count += 1
        task.time_done = self.clock.seconds()
        self._set_state(task, TaskState.ERR)
        self.request_solve()

    def append_task(self, block: Block, name: str, command: str) -> Task:
        """A new ready task at the end of an explicit block (the system job's way)."""
        if not block.spec.dynamic:
            raise errors.InvalidAction(f"block {block.name!r} does not take appended tasks")
        was_finished = block.finished
        job = block.job
        block.spec = attrs.evolve(block.spec, tasks=(*block.spec.tasks, TaskSpec(name, command)))
        task = Task(block, len(block.tasks))
        block.tasks.append(task)
        block.counts[TaskState.RDY] += 1
        job.counts[TaskState.RDY] += 1
        block.push_ready(task)
        if was_finished:
            self._count_capacity(block.spec.capacity, +1)
        if job.time_done:
            job.time_done = 0.0
            self.jobs_generation += 1
        if job.counts[TaskState.RDY] == 1:
            self._ready_jobs_add(job)
        self.work_generation += 1
        self.events.emit("task", job_id=job.id, block=block.number, task=task.number,
                         state=task.state.value, host="", errors_count=0)
        self._notify("task", task)
        self.request_solve()
        return task

    def remove_tasks(self, block: Block, which: Callable[[Task], bool]) -> int:
        """Drop finished tasks from an explicit block that runs nothing (the system job
        deletes its done and failed tasks). Tasks are renumbered, so it waits for idle."""
        if block.counts[TaskState.RUN] or block.counts[TaskState.WRC]:
            return 0
        keep = [t for t in block.tasks if not which(t)]
        removed = len(block.tasks) - len(keep)
        if not removed:
            return 0
        was_finished, job = block.finished, block.job
        for task in block.tasks:
            if which(task):
                block.counts[task.state] -= 1
                job.counts[task.state] -= 1
        block.spec = attrs.evolve(block.spec, tasks=tuple(block.spec.tasks[t.number] for t in keep))
        for number, task in enumerate(keep):
            task.number = number
        block.tasks = keep
        block.set_order(block.spec.sequential)
        if was_finished != block.finished:
            self._count_capacity(block.spec.capacity, -1 if block.finished else +1)
        self._notify("tasks_renumbered", block)
        self._job_changed(job)
        return removed

    def task_action(self, user: str, job_id: int, block: int, tasks: Iterable[int], action: str) -> list[int]:
        """restart or skip some tasks of one block."""
        if action not in TASK_ACTIONS:
            raise errors.InvalidAction(f"unknown task action {action!r}; one of {', '.join(TASK_ACTIONS)}")
        job = self.job(job_id)
        self.check_may_change(user, job)
        chosen = [self.task((job_id, block, n)) for n in tasks]
        for task in chosen:
            if action == "restart":
                self._restart_task(task, "task restarted")
                self._notify("tasks_restarted", task.block)
            else:
                self._skip_task(task)
        self._job_changed(job)
        self.request_solve()
        return [t.number for t in chosen]

    # --- users -------------------------------------------------------------------------

    def user(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise errors.InvalidAction(f"no user {name!r}: users are created by their first job") from None

    def user_action(self, user: str, names: Iterable[str], action: str, value: Any = None) -> list[str]:
        """Admins set a user's priority, limits, hosts masks, error settings and solving."""
        if action not in USER_ACTIONS:
            raise errors.InvalidAction(f"unknown user action {action!r}; one of {', '.join(USER_ACTIONS)}")
        self._check_admin(user, "change users")
        users = [self.user(n) for n in names]
        changes = self._valid_user_changes(value)
        for u in users:
            for key, val in changes.items():
                setattr(u, key, _compile(val) if key.startswith("hosts_mask") else val)
            self.events.emit("user", user=u.to_dict())
            self._notify("user", u)
        self.work_generation += 1
        self.request_solve()
        return [u.name for u in users]

    def _valid_user_changes(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not value:
            raise errors.InvalidAction("set needs a mapping of user parameters to values")
        problems, changes = [], {}
        for key, val in value.items():
            kind = USER_SETTABLE.get(key)
            if kind is None:
                problems.append(f"user.{key}: cannot be set; one of {', '.join(sorted(USER_SETTABLE))}")
            elif kind is int and (isinstance(val, bool) or not isinstance(val, int)):
                problems.append(f"user.{key}: expected an integer, got {val!r}")
            elif kind is str and not isinstance(val, str):
                problems.append(f"user.{key}: expected a string, got {val!r}")
            elif kind is dict and not isinstance(val, Mapping):
                problems.append(f"user.{key}: expected a mapping, got {val!r}")
            elif key.startswith("hosts_mask"):
                try:
                    re.compile(val)
                    changes[key] = val
                except re.error as e:
                    problems.append(f"user.{key}: invalid regular expression: {e}")
            elif key == "jobs_solving" and val not in ("order", "need"):
                problems.append("user.jobs_solving: 'order' or 'need'")
            elif key == "priority" and not 0 <= val <= MAX_PRIORITY:
                problems.append(f"user.priority: must be 0..{MAX_PRIORITY}")
            else:
                changes[key] = val
        if problems:
            raise errors.InvalidAction("; ".join(problems))
        return changes

    # --- renders -----------------------------------------------------------------------

    def register_render(self, name: str, *, capacity: int, max_tasks: int = 0,
                        services: Iterable[str] = (), services_disabled: Iterable[str] = (),
                        platform: str = "", cpus: int = 0, memory_mb: int = 0, owner: str = "",
                        macs: Iterable[str] = (), running: Iterable[Mapping[str, int]] = ()) -> Render:
        """A render (re)connects. Tasks it still runs are re-attached, not re-run; tasks
        it runs that the farm no longer wants there are killed."""
        if capacity <= 0:
            raise errors.InvalidAction(f"render capacity must be positive, got {capacity}")
        now = self.clock.seconds()
        render = self.renders_by_name.get(name)
        if render is None:
            render = Render(id=self._next_render_id, name=name, capacity=capacity,
                            max_tasks=max_tasks, services=frozenset(services),
                            services_disabled=frozenset(services_disabled))
            self._next_render_id += 1
            self.renders[render.id] = render
            self.renders_by_name[name] = render
        else:
            self._drop_pending_orders(render)
        render.capacity, render.max_tasks = capacity, max_tasks
        render.services, render.services_disabled = frozenset(services), frozenset(services_disabled)
        render.platform, render.cpus, render.memory_mb = platform, cpus, memory_mb
        render.owner = owner
        render.macs = tuple(macs) or render.macs
        render.wol = ""  # whatever it was, it is awake now
        render.online, render.time_registered, render.time_seen = True, now, now
        render.solved_empty_at = -1
        self._reattach(render, running)
        log.info("render {render} registered: capacity {capacity}, {running} running",
                 render=name, capacity=capacity, running=len(render.tasks))
        self._render_changed(render)
        self.request_solve()
        return render

    def _reattach(self, render: Render, running: Iterable[Mapping[str, int]]) -> None:
        reported = set()
        for item in running:
            key = (int(item["job_id"]), int(item["block"]), int(item["task"]))
            run = int(item["run"])
            reported.add(key)
            try:
                task = self.task(key)
            except (errors.UnknownJob, errors.UnknownTask):
                task = None
            if (task is not None and task.state in ACTIVE and task.starts_count == run
                    and task.render_id == render.id):
                if task.state is TaskState.WRC:
                    self._cancel_timer("reconnect", id(task))
                    self._occupy(render, task)
                    self._set_state(task, TaskState.RUN)
                    self._arm_time_limits(task)
            else:  # deleted, restarted or run elsewhere meanwhile
                self._order(render, {"order": "kill", "job_id": key[0], "block": key[1],
                                     "task": key[2], "run": run, "reason": "not wanted by the server"})
        for key, task in list(render.tasks.items()):
            if key not in reported:  # the render lost it (it restarted): run it again
                self._release(task)
                self._set_state(task, TaskState.RDY)

    def render(self, render_id: int) -> Render:
        try:
            return self.renders[render_id]
        except KeyError:
            raise errors.NotRegistered(f"no render {render_id}: register again") from None

    def render_named(self, name: str) -> Render:
        try:
            return self.renders_by_name[name]
        except KeyError:
            raise errors.UnknownRender(f"no render named {name!r}") from None

    def render_seen(self, render: Render, resources: Mapping[str, Any] | None = None) -> None:
        """A render spoke; ``resources`` (CPU, memory, swap, disk, load) are shown, not trusted."""
        render.time_seen = self.clock.seconds()
        if resources:
            render.resources = dict(resources)

    def render_lost(self, render: Render, zombie: bool = False) -> None:
        """The render's connection is gone, or it went silent past zombie_time (Afanasy's
        RENDER_ZOMBIE). Its running tasks wait for it to reconnect (WRC) for
        ``task_reconnect_timeout``, then run elsewhere."""
        if not render.online:
            return
        render.online = False
        if render.wol == "falling":  # it went to sleep as asked: not a zombie
            render.wol, zombie = "sleeping", False
        if zombie:
            log.warn("render {render} is a zombie: silent past zombie_time", render=render.name)
            self.events.emit("render_zombie", name=render.name)
            self._notify("render_zombie", render)
        self._drop_pending_orders(render)
        for task in list(render.tasks.values()):
            self._release(task, keep_render=True)
            self._set_state(task, TaskState.WRC)
            self._timer("reconnect", id(task), self.settings.task_reconnect_timeout,
                        self._reconnect_timeout, task)
        render.tasks.clear()
        render.capacity_used = 0
        log.info("render {render} offline", render=render.name)
        self._render_changed(render)

    def _reconnect_timeout(self, task: Task) -> None:
        if task.state is TaskState.WRC:
            log.info("task {key} did not come back with its render: ready again", key=task.key)
            task.render_id = 0
            self._set_state(task, TaskState.RDY)
            self.request_solve()

    def _drop_pending_orders(self, render: Render) -> None:
        """Undelivered start orders never reached the render: those tasks are ready again."""
        orders, render.orders = render.orders, []
        for order in orders:
            if order["order"] == "start":
                task = self.task((order["job_id"], order["block"], order["task"]))
                if task.state is TaskState.RUN and task.starts_count == order["run"]:
                    self._release(task)
                    task.starts_count -= 1
                    self._set_state(task, TaskState.RDY)

    def _render_changed(self, render: Render) -> None:
        self.events.emit("render", render=render.to_dict())
        self._notify("render", render)

    def _order(self, render: Render, order: dict[str, Any]) -> None:
        render.orders.append(order)
        self.on_orders(render)

    def take_orders(self, render: Render) -> list[dict[str, Any]]:
        orders, render.orders = render.orders, []
        return orders

    def render_action(self, user: str, names: Iterable[str], action: str, value: Any = None) -> list[str]:
        """nimby (only the owner's jobs), NIMBY (none), free (clear both), pause, resume,
        eject (its tasks back to ready), exit, heal (clear SICK), set {capacity,
        max_tasks}. The render's owner may do nimby, NIMBY, free, pause, resume and eject;
        admins everything."""
        if action not in RENDER_ACTIONS:
            raise errors.InvalidAction(
                f"unknown render action {action!r}; one of {', '.join(RENDER_ACTIONS)}")
        renders = [self.render_named(n) for n in names]
        owner_may = action in ("nimby", "NIMBY", "free", "pause", "resume", "eject", "sleep")
        for render in renders:
            if not (self.is_admin(user) or (owner_may and render.owner and render.owner == user)):
                raise errors.PermissionDenied(f"user {user!r} may not {action} render {render.name!r}")
        if action == "set":
            valid = isinstance(value, Mapping) and value and set(value) <= {"capacity", "max_tasks"} and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values())
            if not valid:
                raise errors.InvalidAction('set needs {"capacity": N, "max_tasks": N}')
        for render in renders:
            if action == "nimby":
                render.nimby, render.NIMBY = True, False
            elif action == "NIMBY":
                render.NIMBY = True
            elif action == "free":
                render.nimby = render.NIMBY = False
            elif action in ("pause", "resume"):
                render.paused = action == "pause"
            elif action == "heal":
                render.sick, render.errors_in_row = False, 0
                render.error_jobs_in_row.clear()
            elif action == "eject":
                for task in list(render.tasks.values()):
                    self._stop_task(task, f"ejected by {user}")
                    self._set_state(task, TaskState.RDY)
            elif action == "exit":
                self._order(render, {"order": "exit"})
            elif action == "sleep":
                if not render.online or render.tasks:
                    raise errors.InvalidAction(f"render {render.name!r} must be online and idle to sleep")
                render.wol = "falling"
                self._order(render, {"order": "sleep"})
            elif action == "wake":
                if render.online:
                    raise errors.InvalidAction(f"render {render.name!r} is awake")
                if self.on_wake is None:
                    raise errors.InvalidAction("this server has no system job to wake renders")
                try:
                    self.on_wake(render)
                except ValueError as e:
                    raise errors.InvalidAction(str(e)) from None
                render.wol = "waking"
            elif action == "set":
                for key, val in value.items():
                    setattr(render, key, val)
            render.solved_empty_at = -1
            log.info("{user} {action} render {render}", user=user, action=action, render=render.name)
            self._render_changed(render)
        self.request_solve()
        return [r.name for r in renders]

    def delete_renders(self, user: str, names: Iterable[str]) -> list[str]:
        """Forget offline renders (admins only)."""
        self._check_admin(user, "delete renders")
        renders = [self.render_named(n) for n in names]
        for render in renders:
            if render.online:
                raise errors.InvalidAction(f"render {render.name!r} is online: exit it first")
        for render in renders:
            del self.renders[render.id]
            del self.renders_by_name[render.name]
            self.events.emit("render_deleted", name=render.name)
        return [r.name for r in renders]

    # --- a task's life on a render -----------------------------------------------------

    def start_task(self, task: Task, render: Render) -> None:
        """Hand a ready task to a render (the scheduler decided)."""
        block, job = task.block, task.block.job
        now = self.clock.seconds()
        task.starts_count += 1
        task.progress = 0
        task.host = render.name
        task.time_started, task.time_done, task.time_progress = now, 0.0, now
        if not job.time_started:
            job.time_started = now
        self._occupy(render, task)
        self._set_state(task, TaskState.RUN)
        self._arm_time_limits(task)
        spec = block.spec
        frame_start, frame_end = spec.frames(task.number) if spec.numeric else (0, 0)
        env = dict(spec.environment)
        env.update({
            "FARMNET_JOB_ID": str(job.id), "FARMNET_JOB_NAME": job.name,
            "FARMNET_BLOCK": str(block.number), "FARMNET_BLOCK_NAME": block.name,
            "FARMNET_TASK": str(task.number), "FARMNET_TASK_NAME": task.name,
            "FARMNET_USER": job.user_name, "FARMNET_RUN": str(task.starts_count),
            "FARMNET_FRAME_START": str(frame_start), "FARMNET_FRAME_END": str(frame_end),
        })
        self._order(render, {
            "order": "start", "job_id": job.id, "block": block.number, "task": task.number,
            "run": task.starts_count, "name": task.name, "command": task.command,
            "working_directory": spec.working_directory, "environment": env,
            "service": spec.service, "parser": spec.parser, "capacity": spec.capacity,
            "frame_start": frame_start, "frame_end": frame_end,
        })

    def _arm_time_limits(self, task: Task) -> None:
        """task_max_run_time and task_progress_change_timeout: the server kills, the run
        is an error."""
        spec = task.block.spec
        now = self.clock.seconds()
        deadlines = []
        if spec.task_max_run_time > 0:
            deadlines.append(task.time_started + spec.task_max_run_time)
        if spec.task_progress_change_timeout > 0:
            deadlines.append(task.time_progress + spec.task_progress_change_timeout)
        if deadlines:
            self._timer("limits", id(task), min(deadlines) - now, self._check_time_limits, task,
                        task.starts_count)

    def _check_time_limits(self, task: Task, run: int) -> None:
        if task.state is not TaskState.RUN or task.starts_count != run:
            return
        spec, now = task.block.spec, self.clock.seconds()
        reason = None
        if spec.task_max_run_time > 0 and now - task.time_started >= spec.task_max_run_time:
            reason = f"task_max_run_time of {spec.task_max_run_time} s exceeded"
        elif (spec.task_progress_change_timeout > 0
              and now - task.time_progress >= spec.task_progress_change_timeout):
            timeout = spec.task_progress_change_timeout
            reason = f"no progress change for task_progress_change_timeout {timeout} s"
        if reason is None:
            self._arm_time_limits(task)
            return
        log.info("task {key} killed: {reason}", key=task.key, reason=reason)
        render = self.renders[task.render_id]
        self._order(render, {"order": "kill", "job_id": task.key[0], "block": task.key[1],
                             "task": task.key[2], "run": run, "reason": reason})
        self._release(task)
        task.time_done = now
        self._task_failed(task, render, reason)
        self._notify("run", self._run_record(task, None, None, reason, None))
        self.request_solve()

    def _occupy(self, render: Render, task: Task) -> None:
        block, job = task.block, task.block.job
        user = self.users[job.user_name]
        task.render_id = render.id
        render.tasks[task.key] = task
        render.capacity_used += block.spec.capacity
        block.running_capacity += block.spec.capacity
        block.running_per_host[render.id] += 1
        job.running_per_host[render.id] += 1
        user.running += 1
        user.running_capacity += block.spec.capacity
        user.running_per_host[render.id] += 1
        for name, count in block.spec.tickets.items():
            self.tickets_used[name] += count
            render.tickets_used[name] += count

    def _release(self, task: Task, keep_render: bool = False) -> None:
        """Free what a running task held on its render."""
        block, job = task.block, task.block.job
        user = self.users[job.user_name]
        self._cancel_timer("limits", id(task))
        render = self.renders.get(task.render_id)
        if render is not None and render.tasks.pop(task.key, None) is not None:
            render.capacity_used -= block.spec.capacity
            render.solved_empty_at = -1
        if render is not None:
            for name, count in block.spec.tickets.items():
                render.tickets_used[name] -= count
        for name, count in block.spec.tickets.items():
            self.tickets_used[name] -= count
        block.running_capacity -= block.spec.capacity
        user.running -= 1
        user.running_capacity -= block.spec.capacity
        for counter in (block.running_per_host, job.running_per_host, user.running_per_host):
            counter[task.render_id] -= 1
            if counter[task.render_id] <= 0:
                del counter[task.render_id]
        self.work_generation += 1  # limits and tickets freed: blocked work may fit now
        if not keep_render:
            task.render_id = 0

    def current_task(self, render: Render, key: TaskKey, run: int) -> Task | None:
        """The task a report is about, if the report is about its current run."""
        try:
            task = self.task(key)
        except (errors.UnknownJob, errors.UnknownTask):
            return None
        if task.state not in ACTIVE or task.starts_count != run or task.render_id != render.id:
            return None
        return task

    def task_output(self, render: Render, key: TaskKey, run: int, progress: int | None) -> Task | None:
        """A running task reported output; returns the task if the report is current."""
        task = self.current_task(render, key, run)
        if task is not None and progress is not None and progress != task.progress:
            task.progress = max(0, min(100, progress))
            task.time_progress = self.clock.seconds()
            self.events.emit("progress", job_id=key[0], block=key[1], task=key[2],
                             progress=task.progress)
        return task

    def task_finished(self, render: Render, key: TaskKey, run: int, *, exit_code: int | None,
                      signal: int | None, time_started: float, time_done: float,
                      message: str = "", peak_memory_mb: int | None = None) -> Task | None:
        """A task's process ended. A stale or repeated report changes nothing, so a finish
        is counted once."""
        task = self.current_task(render, key, run)
        if task is None:
            log.debug("stale finish of {key} run {run} from {render}", key=key, run=run,
                      render=render.name)
            return None
        self._cancel_timer("reconnect", id(task))
        self._release(task)
        task.time_started, task.time_done = time_started, time_done
        min_run = task.block.spec.task_min_run_time
        if exit_code == 0 and signal is None and min_run > 0 and time_done - time_started < min_run:
            message = f"finished in {time_done - time_started:.1f} s, under task_min_run_time {min_run} s"
            exit_code = None
        if exit_code == 0 and signal is None:
            task.progress = 100
            render.errors_in_row = 0
            render.error_jobs_in_row.clear()
            self._set_state(task, TaskState.DON)
        else:
            self._task_failed(task, render, message or f"exit {exit_code} signal {signal}")
        self._notify("run", self._run_record(task, exit_code, signal, message, peak_memory_mb))
        self.request_solve()
        return task

    def _task_failed(self, task: Task, render: Render, why: str) -> None:
        """An error: count it against the task, the block and the host; retry or ERR."""
        block, job = task.block, task.block.job
        now = self.clock.seconds()
        task.errors_count += 1
        if task.host_errors is None:
            task.host_errors = {}
        for table in (block.host_errors, task.host_errors):
            entry = table.setdefault(render.name, [0, now])
            entry[0] += 1
            entry[1] = now
        render.error_history.append((now, job.id, block.number, task.number, job.user_name))
        render.errors_in_row += 1
        render.error_jobs_in_row.add(job.id)
        sick_after = self.settings.sick_errors_count
        if sick_after > 0 and not render.sick and len(render.error_jobs_in_row) >= sick_after:
            render.sick = True
            log.warn("render {render} is SICK: {count} errors in a row from different jobs",
                     render=render.name, count=render.errors_in_row)
            self._render_changed(render)
            self._notify("render_sick", render)
        retries = self.setting(block, "errors_retries")
        state = TaskState.RDY if task.errors_count <= retries else TaskState.ERR
        log.info("task {key} failed on {render} ({why}): {state}", key=task.key, render=render.name,
                 why=why, state=state.value)
        self._set_state(task, state)
        if job.state is TaskState.ERR:
            self._job_changed(job)

    def _run_record(self, task: Task, exit_code: int | None, signal: int | None, message: str,
                    peak_memory_mb: int | None) -> TaskRun:
        block, job = task.block, task.block.job
        frames = block.spec.frames(task.number) if block.spec.numeric else (0, 0)
        return TaskRun(
            job_id=job.id, block=block.number, task=task.number, run=task.starts_count,
            job_name=job.name, block_name=block.name, task_name=task.name, user_name=job.user_name,
            host=task.host, service=block.spec.service, capacity=block.spec.capacity,
            command=task.command, frame_start=frames[0], frame_end=frames[1],
            time_started=task.time_started, time_done=task.time_done, exit_code=exit_code,
            signal=signal, state=task.state.value, errors_count=task.errors_count,
            message=message, peak_memory_mb=peak_memory_mb)

    def _stop_task(self, task: Task, reason: str) -> None:
        """Order the render to kill a running task and forget it here."""
        self._cancel_timer("reconnect", id(task))
        render = self.renders.get(task.render_id)
        if render is not None and render.online and task.key in render.tasks:
            self._order(render, {"order": "kill", "job_id": task.key[0], "block": task.key[1],
                                 "task": task.key[2], "run": task.starts_count, "reason": reason})
        if task.state is TaskState.RUN:
            self._release(task)
        task.render_id = 0

    # --- restoring from the store (at start, before anything connects) ---------------

    def restore_user(self, name: str, time_registered: float, settings: Mapping[str, Any]) -> User:
        user = self.users.get(name) or User(name, time_registered)
        user.time_registered = time_registered
        for key, value in settings.items():
            if key in USER_SETTABLE:
                setattr(user, key, _compile(value) if key.startswith("hosts_mask") else value)
        self.users[name] = user
        return user

    def restore_job(self, job_id: int, spec: JobSpec, *, user_name: str, priority: int, paused: bool,
                    time_creation: float, time_started: float, time_done: float, serial: int) -> Job:
        job = self._build_job(job_id, spec, user_name, priority, time_creation, serial, paused)
        job.time_started, job.time_done = time_started, time_done
        self.users.setdefault(user_name, User(user_name, time_creation)).jobs.add(job_id)
        self._next_job_id = max(self._next_job_id, job_id + 1)
        self._serial = max(self._serial, serial)
        return job

    def restore_task(self, task: Task, *, state: str, errors_count: int, starts_count: int,
                     progress: int, time_started: float, time_done: float, host: str,
                     render_id: int, host_errors: Mapping[str, list[float]] | None) -> None:
        """A task as stored. One that was running waits for its render (WRC)."""
        new = TaskState(state)
        if new is TaskState.RUN:
            new = TaskState.WRC
        block, job = task.block, task.block.job
        for counts in (block.counts, job.counts):
            counts[task.state] -= 1
            counts[new] += 1
        task.state = new
        task.errors_count, task.starts_count, task.progress = errors_count, starts_count, progress
        task.time_started, task.time_done, task.host = time_started, time_done, host
        task.host_errors = dict(host_errors) if host_errors else None
        if task.host_errors:
            for name, (count, when) in task.host_errors.items():
                entry = block.host_errors.setdefault(name, [0, when])
                entry[0] += count
                entry[1] = max(entry[1], when)
        task.render_id = render_id if new is TaskState.WRC else 0

    def restore_render(self, render_id: int, name: str, fields: Mapping[str, Any]) -> Render:
        render = Render(id=render_id, name=name, capacity=int(fields.get("capacity", 1100)),
                        max_tasks=int(fields.get("max_tasks", 0)),
                        services=frozenset(fields.get("services", ())),
                        services_disabled=frozenset(fields.get("services_disabled", ())))
        for key in ("owner", "nimby", "NIMBY", "paused", "sick", "platform", "cpus", "memory_mb", "wol"):
            if key in fields:
                setattr(render, key, fields[key])
        render.macs = tuple(fields.get("macs", ()))
        self.renders[render_id] = render
        self.renders_by_name[name] = render
        self._next_render_id = max(self._next_render_id, render_id + 1)
        return render

    def restore_finished(self) -> None:
        """Derived state after a load: solving order, ready lists, capacities, timers."""
        for job in self.jobs.values():
            for block in job.blocks:
                block.set_order(block.spec.sequential)
                if not block.finished:
                    self._count_capacity(block.spec.capacity, +1)
                for task in block.tasks:
                    if task.state is TaskState.WRC:
                        self._timer("reconnect", id(task), self.settings.task_reconnect_timeout,
                                    self._reconnect_timeout, task)
            if job.counts[TaskState.RDY]:
                self._ready_jobs_add(job)
            self._schedule_time_wait(job)
        self.jobs_generation += 1
        self.work_generation += 1

    # --- solving -----------------------------------------------------------------------

    def request_solve(self) -> None:
        """Solve once, soon: many changes in one reactor turn cost one solve."""
        if self._solve_call is None:
            self._solve_call = self.clock.callLater(0, self._solve)

    def _solve(self) -> None:
        self._solve_call = None
        self.scheduler.solve()

    def explain(self, job_id: int) -> dict[str, Any]:
        """Why is my job waiting? (see `Scheduler.explain`)"""
        return self.scheduler.explain(self.job(job_id))

    # --- listings ----------------------------------------------------------------------

    def job_dict(self, job: Job) -> dict[str, Any]:
        data = job.to_dict()
        data["state"] = self.scheduler.display_state(job).value
        return data

    def list_jobs(self, user: str | None = None) -> list[dict[str, Any]]:
        return [self.job_dict(j) for j in self.jobs.values() if user is None or j.user_name == user]

    def show_job(self, job_id: int) -> dict[str, Any]:
        job = self.job(job_id)
        data = self.job_dict(job)
        data["blocks"] = [b.to_dict() for b in job.blocks]
        for block, entry in zip(job.blocks, data["blocks"], strict=True):
            waits = self.scheduler.block_waits(block) is Why.BLOCK_DEPENDS
            entry["state"] = TaskState.WD.value if waits else block_state(block).value
        for key in ("depend_mask", "depend_mask_global", "command_post", "max_running_tasks",
                    "max_running_tasks_per_host", "hosts_mask", "hosts_mask_exclude", "time_wait"):
            data[key] = getattr(job.spec, key)
        data["custom_data"] = dict(job.spec.custom_data)
        return data

    def list_tasks(self, job_id: int, block: int | None, offset: int, limit: int) -> tuple[list, int]:
        job = self.job(job_id)
        if block is not None and not 0 <= block < len(job.blocks):
            raise errors.UnknownTask(f"job {job_id} has no block {block}")
        blocks = job.blocks if block is None else [job.blocks[block]]
        total = sum(len(b.tasks) for b in blocks)
        out: list[dict[str, Any]] = []
        skip = max(0, offset)
        for b in blocks:
            if skip >= len(b.tasks):
                skip -= len(b.tasks)
                continue
            for task in b.tasks[skip:skip + limit - len(out)]:
                out.append(task.to_dict())
            skip = 0
            if len(out) >= limit:
                break
        return out, total

    def list_renders(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.renders.values()]

    def list_users(self) -> list[dict[str, Any]]:
        return [u.to_dict() for u in self.users.values()]

    def counts(self) -> dict[str, Any]:
        tasks: dict[str, int] = {}
        for job in self.jobs.values():
            for state, n in job.counts.items():
                tasks[state.value] = tasks.get(state.value, 0) + n
        online = sum(1 for r in self.renders.values() if r.online)
        busy = sum(1 for r in self.renders.values() if r.online and r.tasks)
        return {"jobs": len(self.jobs), "tasks": tasks, "renders_online": online,
                "renders_busy": busy, "renders_offline": len(self.renders) - online}


def block_state(block: Block) -> TaskState:
    c = block.counts
    if block.finished:
        return TaskState.DON
    if c[TaskState.RUN] or c[TaskState.WRC]:
        return TaskState.RUN
    if c[TaskState.RDY]:
        return TaskState.RDY
    return TaskState.ERR if c[TaskState.ERR] else TaskState.WD


__all__ = ["Farm", "JOB_ACTIONS", "RENDER_ACTIONS", "TASK_ACTIONS", "USER_ACTIONS",
           "ERROR_SETTINGS"]
