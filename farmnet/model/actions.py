"""Actions on jobs, tasks, users and renders (pause, restart, skip, set, nimby, eject, ...):
each checks permissions and input first, for all items, then changes all of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from farmnet import errors
from farmnet.messages import ExitOrder, SleepOrder
from farmnet.model.data import ACTIVE, FINISHED, Block, Job, Task, TaskState
from farmnet.model.events import (
    ErrorHostsReset,
    JobDeleted,
    RenderDeleted,
    TasksRenumbered,
    TasksRestarted,
    UserChanged,
    UserDeleted,
)
from farmnet.model.lifecycle import TaskLife
from farmnet.model.policy import JOB_ACTIONS, RENDER_ACTIONS, TASK_ACTIONS, USER_ACTIONS, Policy
from farmnet.model.spec import BlockSpec, TaskSpec

log = Logger()

#: Task actions that restart only the chosen tasks in these states.
_RESTART_WHICH = {"restart_errors": frozenset({TaskState.ERR}), "restart_running": ACTIVE,
                  "restart_skipped": frozenset({TaskState.SKP}), "restart_done": FINISHED}


class Actions(TaskLife, Policy):
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
        if action == "reset_error_hosts" and value is not None:
            value = self._valid_block_choice(jobs, value)
        for job in jobs:
            getattr(self, f"_job_{action}")(job, value)
            log.info("{user} {action} job {job_id}", user=user, action=action, job_id=job.id)
        self.request_solve()
        return [job.id for job in jobs]

    def _job_pause(self, job: Job, value: Any) -> None:
        job.paused = True
        self._multihost_end_job(job, "job paused")  # type: ignore[attr-defined]  # MultiHost, mixed in
        self._job_changed(job)

    def _job_resume(self, job: Job, value: Any) -> None:
        job.paused = False
        self.work_generation += 1
        self._job_changed(job)

    def _job_stop(self, job: Job, value: Any) -> None:
        job.paused = True
        self._multihost_end_job(job, "job stopped")  # type: ignore[attr-defined]
        self._restart_tasks(job, lambda t: t.state in ACTIVE, "job stopped")

    def _job_set(self, job: Job, changes: dict[str, Any]) -> None:
        if "priority" in changes:
            self._ready_jobs_remove(job)
            job.priority = changes["priority"]
            if job.counts[TaskState.RDY]:
                self._ready_jobs_add(job)
        job.spec = attrs.evolve(job.spec, **changes)
        job.hosts_mask = self.masks.compile(job.spec.hosts_mask)
        job.hosts_mask_exclude = self.masks.compile(job.spec.hosts_mask_exclude)
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
        block.hosts_mask = self.masks.compile(block.spec.hosts_mask)
        block.hosts_mask_exclude = self.masks.compile(block.spec.hosts_mask_exclude)
        if "sequential" in changes:
            block.set_order(block.spec.sequential)
        self._link_blocks(job)
        self._blocks_to_spec(job)
        self.work_generation += 1
        self._job_changed(job)

    def _blocks_to_spec(self, job: Job) -> None:
        """The job's spec takes its blocks' specs again: the store keeps the job's spec, so a
        block's changed parameters or appended tasks survive a restart."""
        job.spec = attrs.evolve(job.spec, blocks=tuple(b.spec for b in job.blocks))

    def _job_restart(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: True, "job restarted")

    def _job_restart_errors(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: t.state is TaskState.ERR, "errors restarted")

    def _job_restart_running(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: t.state in ACTIVE, "running tasks restarted")

    def _job_restart_skipped(self, job: Job, value: Any) -> None:
        self._restart_tasks(job, lambda t: t.state is TaskState.SKP, "skipped tasks restarted")

    def _job_restart_done(self, job: Job, value: Any) -> None:
        """Afanasy's "done" includes skipped tasks (a skipped task is done and skipped)."""
        self._restart_tasks(job, lambda t: t.state in FINISHED, "done tasks restarted")

    def _job_reset_error_hosts(self, job: Job, value: Any) -> None:
        """Afanasy's "reset error hosts": the job's blocks (or block ``value["block"]``)
        forget which renders they failed on, so ``errors_avoid_host`` and
        ``errors_task_same_host`` no longer keep them off those renders."""
        blocks = job.blocks
        if isinstance(value, Mapping) and "block" in value:
            blocks = [job.blocks[value["block"]]]
        for block in blocks:
            self._forget_error_hosts(block, None)
        self.work_generation += 1
        self._job_changed(job)

    def _forget_error_hosts(self, block: Block, render: str | None) -> None:
        """Clear the error-host records of ``block`` and its tasks: all, or one render's."""
        tasks = tuple(t for t in block.tasks if t.host_errors and (render is None or render in t.host_errors))
        if render is None:
            block.host_errors.clear()
        else:
            block.host_errors.pop(render, None)
        for task in tasks:
            if render is None:
                task.host_errors = None
            else:
                assert task.host_errors is not None
                del task.host_errors[render]
                task.host_errors = task.host_errors or None
        if tasks:
            self.bus.publish(ErrorHostsReset(block, tasks))

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
                self.bus.publish(TasksRestarted(block))
        self._job_changed(job)

    def _job_delete(self, job: Job, value: Any) -> None:
        for block in job.blocks:
            for task in block.tasks:
                if task.state in ACTIVE:
                    self._stop_task(task, "job deleted")
        self._multihost_end_job(job, "job deleted")  # type: ignore[attr-defined]
        self._ready_jobs_remove(job)
        self._cancel_timer("wait", job.id)
        self._cancel_timer("life", job.id)
        if job.spec.ignorenimby or job.spec.ignorepaused:
            self.jobs_ignoring_states -= 1
        for block in job.blocks:
            if not block.finished:
                self._count_capacity(block.spec.capacity, -1)
        del self.jobs[job.id]
        self._forget_job(job)  # type: ignore[attr-defined]  # PoolActions, in the Farm
        self.users[job.user_name].jobs.discard(job.id)
        self.jobs_generation += 1
        self.work_generation += 1
        self.bus.publish(JobDeleted(job))

    def task_action(self, user: str, job_id: int, block: int, tasks: Iterable[int], action: str) -> list[int]:
        """restart, skip or set done some tasks of one block; restart_errors, restart_running,
        restart_skipped and restart_done restart those of them in that state (Afanasy's
        block operations). Returns the tasks acted on."""
        if action not in TASK_ACTIONS:
            raise errors.InvalidAction(f"unknown task action {action!r}; one of {', '.join(TASK_ACTIONS)}")
        job = self.job(job_id)
        self.check_may_change(user, job)
        chosen = [self.task((job_id, block, n)) for n in tasks]
        wanted = _RESTART_WHICH.get(action)
        if wanted is not None:
            chosen = [t for t in chosen if t.state in wanted]
        restarted = False
        for task in chosen:
            if action == "skip":
                if task.state is not TaskState.DON:
                    self._skip_task(task)
            elif action == "done":
                self._task_done(task, user)
            else:
                self._restart_task(task, "task restarted")
                restarted = True
        if restarted:
            self.bus.publish(TasksRestarted(chosen[0].block))
        self._job_changed(job)
        self.request_solve()
        return [t.number for t in chosen]

    def _task_done(self, task: Task, user: str) -> None:
        """Afanasy's "set done": the task counts as done without (more) running."""
        if task.state is TaskState.DON:
            return
        if task.state in ACTIVE:
            self._stop_task(task, f"set done by {user}")
        task.progress = 100
        task.time_done = self.clock.seconds()
        self._set_state(task, TaskState.DON)

    def append_tasks(self, user: str, job_id: int, block: int, tasks: Iterable[TaskSpec]) -> list[int]:
        """Afanasy's append_tasks: new ready tasks at the end of an explicit block."""
        job = self.job(job_id)
        self.check_may_change(user, job)
        if job.id == self.system_job_id:
            raise errors.InvalidAction("the system job takes no appended tasks")
        if not 0 <= block < len(job.blocks):
            raise errors.UnknownTask(f"job {job_id} has no block {block}")
        chosen = job.blocks[block]
        tasks = list(tasks)
        if chosen.spec.numeric:
            raise errors.InvalidAction(
                f"block {chosen.name!r} is numeric: tasks are appended to explicit blocks")
        if not tasks:
            raise errors.InvalidAction("no tasks to append")
        if job.tasks_total + len(tasks) > self.settings.max_tasks_per_job:
            raise errors.InvalidAction(f"{job.tasks_total + len(tasks)} tasks is more than this farm's limit "
                                       f"of {self.settings.max_tasks_per_job} per job")
        first = len(chosen.tasks)
        for spec in tasks:
            self._append_task(chosen, spec)
        self._blocks_to_spec(job)
        log.info("{user} appended {count} tasks to job {job_id} block {block}", user=user, count=len(tasks),
                 job_id=job_id, block=block)
        self._job_changed(job)
        return list(range(first, len(chosen.tasks)))

    def append_blocks(self, user: str, job_id: int, blocks: Iterable[BlockSpec]) -> list[int]:
        """Afanasy's append_blocks: new blocks, all their tasks ready, at the end of a job."""
        job = self.job(job_id)
        self.check_may_change(user, job)
        if job.id == self.system_job_id:
            raise errors.InvalidAction("the system job takes no appended blocks")
        specs = list(blocks)
        if not specs:
            raise errors.InvalidAction("no blocks to append")
        total = job.tasks_total + sum(b.tasks_count for b in specs)
        if total > self.settings.max_tasks_per_job:
            raise errors.InvalidAction(f"{total} tasks is more than this farm's limit of "
                                       f"{self.settings.max_tasks_per_job} per job")
        first = len(job.blocks)
        job.spec = attrs.evolve(job.spec, blocks=(*job.spec.blocks, *specs))
        for bspec in specs:
            self._add_block(job, bspec)
            self._count_capacity(bspec.capacity, +1)
        self._link_blocks(job)
        if job.time_done:
            job.time_done = 0.0
        self._ready_jobs_add(job)
        self.jobs_generation += 1
        self.work_generation += 1
        for block in job.blocks[first:]:
            self.bus.publish(TasksRenumbered(block))  # the store writes the new blocks' tasks
        log.info("{user} appended {count} blocks to job {job_id}", user=user, count=len(specs), job_id=job_id)
        self._job_changed(job)
        self.request_solve()
        return list(range(first, len(job.blocks)))

    def user_action(self, user: str, names: Iterable[str], action: str, value: Any = None) -> list[str]:
        """Admins set a user's priority, limits, hosts masks, error settings and solving, or
        delete users who have no jobs (a user comes back with their next job)."""
        if action not in USER_ACTIONS:
            raise errors.InvalidAction(f"unknown user action {action!r}; one of {', '.join(USER_ACTIONS)}")
        self._check_admin(user, "change users")
        users = [self.user(n) for n in names]
        if action == "delete":
            for u in users:
                if u.jobs:
                    raise errors.InvalidAction(f"user {u.name!r} has {len(u.jobs)} jobs: delete them first")
            for u in users:
                del self.users[u.name]
                log.info("{user} deleted user {name}", user=user, name=u.name)
                self.bus.publish(UserDeleted(u))
            return [u.name for u in users]
        changes = self._valid_user_changes(value)
        for u in users:
            for key, val in changes.items():
                setattr(u, key, self.masks.compile(val) if key.startswith("hosts_mask") else val)
            self.bus.publish(UserChanged(u))
        self.work_generation += 1
        self.request_solve()
        return [u.name for u in users]

    def render_action(self, user: str, names: Iterable[str], action: str, value: Any = None) -> list[str]:
        """nimby (only the owner's jobs), NIMBY (none), free (clear both), pause, resume,
        eject (its tasks back to ready), exit, heal (clear SICK), set {capacity,
        max_tasks}. The render's owner may do nimby, NIMBY, free, pause, resume and eject;
        admins everything."""
        if action not in RENDER_ACTIONS:
            raise errors.InvalidAction(
                f"unknown render action {action!r}; one of {', '.join(RENDER_ACTIONS)}")
        renders = [self.render_named(n) for n in names]
        owner_may = action in ("nimby", "NIMBY", "free", "pause", "resume", "eject", "eject_others", "sleep")
        for render in renders:
            if not (self.is_admin(user) or (owner_may and render.owner and render.owner == user)):
                raise errors.PermissionDenied(f"user {user!r} may not {action} render {render.name!r}")
        if action == "set":
            value = self._valid_render_changes(value)
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
            elif action in ("eject", "eject_others"):  # eject_others keeps the acting user's tasks
                for task in list(render.tasks.values()):
                    if action == "eject_others" and task.block.job.user_name == user:
                        continue
                    self._stop_task(task, f"ejected by {user}")
                    self._set_state(task, TaskState.RDY)
                self._multihost_eject(render, f"ejected by {user}")  # type: ignore[attr-defined]
            elif action == "exit":
                self._order(render, ExitOrder())
            elif action == "sleep":
                if not render.online or render.tasks or render.multihost:
                    raise errors.InvalidAction(f"render {render.name!r} must be online and idle to sleep")
                render.wol = "falling"
                self._order(render, SleepOrder())
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
            elif action == "reset_error_hosts":  # every block forgets this render's errors
                for job in self.jobs.values():
                    if any(render.name in block.host_errors for block in job.blocks):
                        for block in job.blocks:
                            self._forget_error_hosts(block, render.name)
                        self._job_changed(job)
                self.work_generation += 1
            render.solved_empty_at = -1
            self.renders_to_visit.add(render.id)
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
            for task in list(render.waiting.values()):  # it will not come back for them
                self._waited_in_vain(task)
            del self.renders[render.id]
            del self.renders_by_name[render.name]
            self._forget_render(render)  # type: ignore[attr-defined]  # PoolActions, in the Farm
            self.bus.publish(RenderDeleted(render))
        return [r.name for r in renders]

