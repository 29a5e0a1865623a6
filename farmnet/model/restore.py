"""Restore the farm from the store at start, before anything connects: objects as stored,
then `restore_finished` derives indices and re-arms timers. Restoring publishes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farmnet.model.data import Job, Render, Task, TaskState, User
from farmnet.model.policy import USER_SETTABLE
from farmnet.model.spec import JobSpec
from farmnet.model.state import FarmState


class Restore(FarmState):
    def restore_user(self, name: str, time_registered: float, settings: Mapping[str, Any]) -> User:
        user = self.users.get(name) or User(name, time_registered)
        user.time_registered = time_registered
        for key, value in settings.items():
            if key in USER_SETTABLE:
                setattr(user, key, self.masks.compile(value) if key.startswith("hosts_mask") else value)
        self.users[name] = user
        return user

    def restore_job(self, job_id: int, spec: JobSpec, *, user_name: str, priority: int, paused: bool,
                    time_creation: float, time_started: float, time_done: float, serial: int) -> Job:
        job = self._build_job(job_id, spec, user_name, priority, time_creation, serial, paused)
        job.time_started, job.time_done = time_started, time_done
        self._place_job(job)  # type: ignore[attr-defined]  # PoolActions, in the Farm
        self.users.setdefault(user_name, User(user_name, time_creation)).jobs.add(job_id)
        self._next_job_id = max(self._next_job_id, job_id + 1)
        self._serial = max(self._serial, serial)
        return job

    def restore_task(self, task: Task, *, state: str, errors_count: int, starts_count: int,
                     progress: int, time_started: float, time_done: float, host: str,
                     render_id: int, host_errors: Mapping[str, list[float]] | None,
                     time_lost: float = 0.0) -> None:
        """A task as stored. One that was running waits for its render (WRC), from now
        on; one that was waiting already goes on waiting from ``time_lost``."""
        new = TaskState(state)
        if new is TaskState.RUN or not time_lost:  # (a store from before time_lost: from now)
            time_lost = self.clock.seconds()
        if new is TaskState.RUN:
            new = TaskState.WRC
        if new is TaskState.WRC and render_id not in self.renders:
            new = TaskState.RDY  # its render was deleted: nobody will report it
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
        task.time_lost = time_lost if new is TaskState.WRC else 0.0

    def restore_render(self, render_id: int, name: str, fields: Mapping[str, Any]) -> Render:
        render = Render(id=render_id, name=name, capacity=int(fields.get("capacity", 1100)),
                        max_tasks=int(fields.get("max_tasks", 0)),
                        services=frozenset(fields.get("services", ())),
                        services_disabled=frozenset(fields.get("services_disabled", ())))
        for key in ("owner", "nimby", "NIMBY", "paused", "sick", "platform", "cpus", "memory_mb", "wol",
                    "time_registered", "time_seen", "errors_in_row", "resources"):
            if key in fields:
                setattr(render, key, fields[key])
        trees = self.trees
        trees.put(render, trees.pools.get(fields.get("pool", "")) or trees.place(render))
        render.macs = tuple(fields.get("macs", ()))
        render.error_jobs_in_row = set(fields.get("error_jobs_in_row", ()))
        render.error_history.extend(tuple(entry) for entry in fields.get("error_history", ()))
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
                        self._wait_for_render(task, self.renders[task.render_id])
                        if block.spec.multihost_min:
                            self._multihost_restore(task)  # type: ignore[attr-defined]  # MultiHost
            if job.counts[TaskState.RDY]:
                self._ready_jobs_add(job)
            self._schedule_time_wait(job)
            self._schedule_time_life(job)
        self.jobs_generation += 1
        self.work_generation += 1

