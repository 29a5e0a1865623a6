"""The farm: every change to jobs, tasks, users and renders happens here.

This is where a task's life is handled: submitted (`submit`), handed to a render
(`start_task`, called by the scheduler), reported (`task_output`, `task_finished`),
retried or failed, lost with its render (`render_lost`) and re-attached
(`register_render`). Each state change goes through `_set_state`, the one place that
keeps counters right and tells observers (monitors' event log, later the store and the
statistics). No I/O: time comes from the clock passed in, and the AMP layer is told that
a render has orders through `on_orders`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from farmnet import errors
from farmnet.jobspec import JobSpec
from farmnet.server.events import EventLog
from farmnet.server.model import (
    ACTIVE,
    FINISHED,
    Block,
    Job,
    Render,
    Task,
    TaskKey,
    TaskState,
    User,
)
from farmnet.server.scheduler import Scheduler

log = Logger()

#: Observers get (what, object): ("task", Task), ("job", Job), ("job_deleted", Job),
#: ("render", Render), ("user", User).
Observer = Callable[[str, Any], None]

JOB_ACTIONS = ("pause", "resume", "delete", "restart", "restart_errors", "set_priority")


@attrs.frozen
class FarmSettings:
    """The parts of the server config the model obeys."""

    admins: frozenset[str] = frozenset()
    errors_retries: int = 3
    task_reconnect_timeout: float = 30.0
    max_tasks_per_job: int = 1_000_000


def _compile(pattern: str) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class Farm:
    def __init__(self, clock: IReactorTime, settings: FarmSettings | None = None,
                 events: EventLog | None = None) -> None:
        self.clock = clock
        self.settings = settings or FarmSettings()
        self.events = events or EventLog()
        self.jobs: dict[int, Job] = {}
        self.users: dict[str, User] = {}
        self.renders: dict[int, Render] = {}
        self.renders_by_name: dict[str, Render] = {}
        #: Unfinished jobs in solving order.
        self.queue: list[Job] = []
        #: Bumped whenever work may have become runnable, so idle renders re-solve.
        self.work_generation = 0
        self.observers: list[Observer] = []
        self.on_orders: Callable[[Render], None] = lambda render: None
        self.scheduler = Scheduler(self)
        self._next_job_id = 1
        self._next_render_id = 1
        self._serial = 0
        self._solve_call: IDelayedCall | None = None
        self._reconnect_calls: dict[int, IDelayedCall] = {}

    # --- the one place -----------------------------------------------------------------

    def _set_state(self, task: Task, state: TaskState) -> None:
        old = task.state
        if old is state:
            return
        block, job = task.block, task.block.job
        block.counts[old] -= 1
        block.counts[state] += 1
        job.counts[old] -= 1
        job.counts[state] += 1
        task.state = state
        if state is TaskState.RDY:
            block.push_ready(task)
            self.work_generation += 1
        self.events.emit("task", job_id=job.id, block=block.number, task=task.number,
                         state=state.value, host=task.host, errors_count=task.errors_count)
        self._notify("task", task)
        was_done = job.time_done
        if job.done and not was_done:
            job.time_done = self.clock.seconds()
            self._dequeue(job)
            log.info("job {job_id} {job_name} done", job_id=job.id, job_name=job.name)
            self._job_changed(job)
        elif was_done and not job.done:
            job.time_done = 0.0
            self._enqueue(job)
            self._job_changed(job)

    def _notify(self, what: str, obj: Any) -> None:
        for observer in self.observers:
            observer(what, obj)

    def _job_changed(self, job: Job) -> None:
        self.events.emit("job", job=job.to_dict())
        self._notify("job", job)

    def _enqueue(self, job: Job) -> None:
        if job not in self.queue:
            keys = [j.order_key() for j in self.queue]
            self.queue.insert(bisect.bisect(keys, job.order_key()), job)

    def _dequeue(self, job: Job) -> None:
        if job in self.queue:
            self.queue.remove(job)

    # --- permissions -------------------------------------------------------------------

    def is_admin(self, user: str) -> bool:
        return user in self.settings.admins

    def check_may_change(self, user: str, job: Job) -> None:
        """The one permission check for every mutation: the job's owner or an admin."""
        if user != job.user_name and not self.is_admin(user):
            raise errors.PermissionDenied(
                f"user {user!r} may not change job {job.id} of user {job.user_name!r}")

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
        job = Job(id=self._next_job_id, spec=spec, user_name=owner, priority=spec.priority,
                  time_creation=now, serial=self._serial, paused=spec.offline,
                  hosts_mask=_compile(spec.hosts_mask),
                  hosts_mask_exclude=_compile(spec.hosts_mask_exclude))
        self._next_job_id += 1
        for number, bspec in enumerate(spec.blocks):
            block = Block(job=job, number=number, spec=bspec, hosts_mask=_compile(bspec.hosts_mask),
                          hosts_mask_exclude=_compile(bspec.hosts_mask_exclude))
            count = bspec.tasks_count
            block.tasks = [Task(block, n) for n in range(count)]
            block.ready = list(range(count))  # ascending: already a heap
            block.counts[TaskState.RDY] = count
            job.counts[TaskState.RDY] += count
            job.blocks.append(block)
        self.jobs[job.id] = job
        u = self.users.get(owner)
        if u is None:
            u = self.users[owner] = User(owner, now)
            self.events.emit("user", user=u.to_dict())
            self._notify("user", u)
        u.jobs.add(job.id)
        self._enqueue(job)
        self.work_generation += 1
        log.info("job {job_id} {job_name} submitted by {user}: {tasks} tasks", job_id=job.id,
                 job_name=job.name, user=owner, tasks=job.tasks_total)
        self._job_changed(job)
        self.request_solve()
        return job

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
        if action not in JOB_ACTIONS:
            raise errors.InvalidAction(f"unknown job action {action!r}; one of {', '.join(JOB_ACTIONS)}")
        jobs = [self.job(i) for i in job_ids]
        for job in jobs:  # all or nothing: check every job before changing any
            self.check_may_change(user, job)
        if action == "set_priority":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 250:
                raise errors.InvalidAction(f"set_priority needs an integer 0..250, got {value!r}")
        for job in jobs:
            getattr(self, f"_{action}")(job, value)
            log.info("{user} {action} job {job_id}", user=user, action=action, job_id=job.id)
        self.request_solve()
        return [job.id for job in jobs]

    def _pause(self, job: Job, value: Any) -> None:
        job.paused = True
        self._job_changed(job)

    def _resume(self, job: Job, value: Any) -> None:
        job.paused = False
        self.work_generation += 1
        self._job_changed(job)

    def _set_priority(self, job: Job, value: int) -> None:
        self._dequeue(job)
        job.priority = value
        if not job.done:
            self._enqueue(job)
        self.work_generation += 1
        self._job_changed(job)

    def _restart(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: True)

    def _restart_errors(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: t.state is TaskState.ERR)

    def _restart_tasks(self, job: Job, which: Callable[[Task], bool]) -> None:
        for block in job.blocks:
            for task in block.tasks:
                if which(task):
                    if task.state in ACTIVE:
                        self._stop_task(task, "restarted")
                    task.errors_count = 0
                    task.progress = 0
                    self._set_state(task, TaskState.RDY)
        self._job_changed(job)

    def _delete(self, job: Job, value: Any) -> None:
        for block in job.blocks:
            for task in block.tasks:
                if task.state in ACTIVE:
                    self._stop_task(task, "job deleted")
        self._dequeue(job)
        del self.jobs[job.id]
        self.users[job.user_name].jobs.discard(job.id)
        self.events.emit("job_deleted", job_id=job.id)
        self._notify("job_deleted", job)

    # --- renders -----------------------------------------------------------------------

    def register_render(self, name: str, *, capacity: int, max_tasks: int = 0,
                        services: Iterable[str] = (), services_disabled: Iterable[str] = (),
                        platform: str = "", cpus: int = 0, memory_mb: int = 0,
                        running: Iterable[Mapping[str, int]] = ()) -> Render:
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
                    self._cancel_reconnect_timer(task)
                    self._occupy(render, task)
                    self._set_state(task, TaskState.RUN)
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

    def render_seen(self, render: Render) -> None:
        render.time_seen = self.clock.seconds()

    def render_lost(self, render: Render) -> None:
        """The render's connection is gone. Its running tasks wait for it to reconnect
        (WRC) for ``task_reconnect_timeout``, then run elsewhere."""
        if not render.online:
            return
        render.online = False
        self._drop_pending_orders(render)
        for task in list(render.tasks.values()):
            self._release(task, keep_render=True)
            self._set_state(task, TaskState.WRC)
            self._reconnect_calls[id(task)] = self.clock.callLater(
                self.settings.task_reconnect_timeout, self._reconnect_timeout, task)
        render.tasks.clear()
        render.capacity_used = 0
        log.info("render {render} offline", render=render.name)
        self._render_changed(render)

    def _reconnect_timeout(self, task: Task) -> None:
        self._reconnect_calls.pop(id(task), None)
        if task.state is TaskState.WRC:
            log.info("task {key} did not come back with its render: ready again", key=task.key)
            task.render_id = 0
            self._set_state(task, TaskState.RDY)
            self.request_solve()

    def _cancel_reconnect_timer(self, task: Task) -> None:
        call = self._reconnect_calls.pop(id(task), None)
        if call is not None and call.active():
            call.cancel()

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

    # --- a task's life on a render -----------------------------------------------------

    def start_task(self, task: Task, render: Render) -> None:
        """Hand a ready task to a render (the scheduler decided)."""
        block, job = task.block, task.block.job
        now = self.clock.seconds()
        task.starts_count += 1
        task.progress = 0
        task.host = render.name
        task.time_started, task.time_done = now, 0.0
        if not job.time_started:
            job.time_started = now
        self._occupy(render, task)
        self._set_state(task, TaskState.RUN)
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
            "max_run_time": spec.task_max_run_time,
        })

    def _occupy(self, render: Render, task: Task) -> None:
        block, job = task.block, task.block.job
        task.render_id = render.id
        render.tasks[task.key] = task
        render.capacity_used += block.spec.capacity
        block.running_capacity += block.spec.capacity
        block.running_per_host[render.id] += 1
        job.running_per_host[render.id] += 1
        self.users[job.user_name].running += 1

    def _release(self, task: Task, keep_render: bool = False) -> None:
        """Free what a running task held on its render."""
        block, job = task.block, task.block.job
        render = self.renders.get(task.render_id)
        if render is not None and render.tasks.pop(task.key, None) is not None:
            render.capacity_used -= block.spec.capacity
            render.solved_empty_at = -1
        block.running_capacity -= block.spec.capacity
        for counter in (block.running_per_host, job.running_per_host):
            counter[task.render_id] -= 1
            if counter[task.render_id] <= 0:
                del counter[task.render_id]
        self.users[job.user_name].running -= 1
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
            self.events.emit("progress", job_id=key[0], block=key[1], task=key[2],
                             progress=task.progress)
        return task

    def task_finished(self, render: Render, key: TaskKey, run: int, *, exit_code: int | None,
                      signal: int | None, time_started: float, time_done: float,
                      message: str = "") -> Task | None:
        """A task's process ended. A stale or repeated report changes nothing, so a finish
        is counted once."""
        task = self.current_task(render, key, run)
        if task is None:
            log.debug("stale finish of {key} run {run} from {render}", key=key, run=run,
                      render=render.name)
            return None
        self._cancel_reconnect_timer(task)
        self._release(task)
        task.time_started, task.time_done = time_started, time_done
        if exit_code == 0 and signal is None:
            task.progress = 100
            self._set_state(task, TaskState.DON)
        else:
            task.errors_count += 1
            retries = task.block.spec.errors_retries
            if retries < 0:
                retries = self.settings.errors_retries
            state = TaskState.RDY if task.errors_count <= retries else TaskState.ERR
            log.info("task {key} failed on {render} ({why}): {state}", key=key, render=render.name,
                     why=message or f"exit {exit_code} signal {signal}", state=state.value)
            self._set_state(task, state)
            if task.block.job.state is TaskState.ERR:
                self._job_changed(task.block.job)
        self.request_solve()
        return task

    def _stop_task(self, task: Task, reason: str) -> None:
        """Order the render to kill a running task and forget it here."""
        self._cancel_reconnect_timer(task)
        render = self.renders.get(task.render_id)
        if render is not None and render.online and task.key in render.tasks:
            self._order(render, {"order": "kill", "job_id": task.key[0], "block": task.key[1],
                                 "task": task.key[2], "run": task.starts_count, "reason": reason})
        if task.state is TaskState.RUN:
            self._release(task)
        task.render_id = 0

    def stop(self) -> None:
        """Cancel the farm's timers (the server is stopping)."""
        for call in [self._solve_call, *self._reconnect_calls.values()]:
            if call is not None and call.active():
                call.cancel()
        self._solve_call = None
        self._reconnect_calls.clear()

    # --- solving -----------------------------------------------------------------------

    def request_solve(self) -> None:
        """Solve once, soon: many changes in one reactor turn cost one solve."""
        if self._solve_call is None:
            self._solve_call = self.clock.callLater(0, self._solve)

    def _solve(self) -> None:
        self._solve_call = None
        self.scheduler.solve()

    # --- listings ----------------------------------------------------------------------

    def list_jobs(self, user: str | None = None) -> list[dict[str, Any]]:
        return [j.to_dict() for j in self.jobs.values() if user is None or j.user_name == user]

    def show_job(self, job_id: int) -> dict[str, Any]:
        job = self.job(job_id)
        data = job.to_dict()
        data["blocks"] = [b.to_dict() for b in job.blocks]
        data["depend_mask"] = job.spec.depend_mask
        data["command_post"] = job.spec.command_post
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


__all__ = ["FINISHED", "Farm", "FarmSettings", "JOB_ACTIONS"]
