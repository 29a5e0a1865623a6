"""Read views: jobs, blocks, tasks, renders and users as the records (`farmnet.messages`)
that listings, monitor events, the web site and the action API show; the one converter
turns them into JSON at the edges. Reading never changes the farm."""

from __future__ import annotations

from typing import Any

from farmnet import errors
from farmnet.messages import (
    BlockRecord,
    JobDetail,
    JobRecord,
    RenderError,
    RenderRecord,
    TaskRecord,
    UserRecord,
)
from farmnet.model.data import Block, Job, Render, Task, TaskState, User
from farmnet.model.listing import JobListing, JobQuery, JobRow
from farmnet.model.scheduler import Why
from farmnet.model.state import FarmState


class Views(FarmState):
    def explain(self, job_id: int) -> dict[str, Any]:
        """Why is my job waiting? (see `Scheduler.explain`)"""
        return self.scheduler.explain(self.job(job_id))

    def job_record(self, job: Job) -> JobRecord:
        total = job.tasks_total
        counts = job.counts
        return JobRecord(
            job.id, job.spec.name, job.user_name, job.priority, self.scheduler.display_state(job).value,
            job.paused, total, {s.value: n for s, n in counts.items() if n},
            (counts[TaskState.DON] + counts[TaskState.SKP]) * 100 // total if total else 100,
            job.time_creation, job.time_started, job.time_done, len(job.blocks), job.spec.annotation,
            job.branch.path if job.branch is not None else "")

    def list_jobs(self, user: str | None = None) -> list[JobRecord]:
        record = self.job_record
        if user is None:
            return [record(j) for j in self.jobs.values()]
        return [record(j) for j in self.jobs.values() if j.user_name == user]

    def job_listing(self) -> JobListing:
        """The jobs' sorted, filtered pages (made at the first call, then kept up to date)."""
        listing: JobListing | None = getattr(self, "_job_listing", None)
        if listing is None:
            listing = self._job_listing = JobListing(self)  # type: ignore[arg-type]
        return listing

    def query_jobs(self, query: JobQuery) -> tuple[list[JobRow], int]:
        """A page of jobs, sorted and filtered, and how many match (`JobListing.query`)."""
        return self.job_listing().query(query)

    def show_job(self, job_id: int) -> JobDetail:
        job = self.job(job_id)
        row = self.job_record(job)
        spec = job.spec
        return JobDetail(
            row.id, row.name, row.user_name, row.priority, row.state, row.paused, row.tasks, row.counts,
            row.progress, row.time_creation, row.time_started, row.time_done,
            [self.block_record(b) for b in job.blocks], row.annotation, spec.depend_mask,
            spec.depend_mask_global, spec.command_pre, spec.command_post, spec.max_running_tasks,
            spec.max_running_tasks_per_host, spec.hosts_mask, spec.hosts_mask_exclude, spec.time_wait,
            spec.time_life, spec.host_name, spec.description, spec.project, spec.department,
            dict(spec.custom_data), row.branch)

    def block_record(self, block: Block) -> BlockRecord:
        total = len(block.tasks)
        counts = block.counts
        spec = block.spec
        waits = self.scheduler.block_waits(block) is Why.BLOCK_DEPENDS
        return BlockRecord(
            block.number, spec.name, spec.service, spec.capacity, total, spec.numeric,
            {s.value: n for s, n in counts.items() if n},
            (counts[TaskState.DON] + counts[TaskState.SKP]) * 100 // total if total else 100,
            spec.command, spec.depend_mask, spec.tasks_depend_mask, sorted(block.host_errors),
            TaskState.WD.value if waits else block_state(block).value)

    def list_tasks(self, job_id: int, block: int | None, offset: int,
                   limit: int) -> tuple[list[TaskRecord], int]:
        job = self.job(job_id)
        if block is not None and not 0 <= block < len(job.blocks):
            raise errors.UnknownTask(f"job {job_id} has no block {block}")
        blocks = job.blocks if block is None else [job.blocks[block]]
        total = sum(len(b.tasks) for b in blocks)
        out: list[TaskRecord] = []
        skip = max(0, offset)
        for b in blocks:
            if skip >= len(b.tasks):
                skip -= len(b.tasks)
                continue
            out.extend(task_record(task) for task in b.tasks[skip:skip + limit - len(out)])
            skip = 0
            if len(out) >= limit:
                break
        return out, total

    def list_renders(self) -> list[RenderRecord]:
        return [render_record(r) for r in self.renders.values()]

    def list_users(self) -> list[UserRecord]:
        return [user_record(u) for u in self.users.values()]

    def counts(self) -> dict[str, Any]:
        tasks: dict[str, int] = {}
        for job in self.jobs.values():
            for state, n in job.counts.items():
                if not n:
                    continue
                tasks[state.value] = tasks.get(state.value, 0) + n
        online = busy = 0  # one pass: the statistics line asks every log_stats_interval
        for r in self.renders.values():
            if r.online:
                online += 1
                if r.tasks or r.multihost:
                    busy += 1
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




def task_record(task: Task) -> TaskRecord:
    block = task.block
    return TaskRecord(block.job.id, block.number, task.number, task.name, task.state.value, task.progress,
                      task.errors_count, task.starts_count, task.host, task.time_started, task.time_done,
                      task.warning, task.frame, task.percent_frame)


def render_record(render: Render) -> RenderRecord:
    r = render
    return RenderRecord(
        r.id, r.name, r.state, r.online, r.capacity, r.capacity_used, r.max_tasks, sorted(r.services),
        sorted(r.services_disabled), r.platform, r.cpus, r.memory_mb, [*r.tasks, *r.multihost], r.time_seen,
        r.owner, r.nimby, r.NIMBY, r.paused, r.sick, dict(r.tickets_used), r.errors_in_row, list(r.macs),
        r.wol, dict(r.resources), render_errors(r), r.pool.path if r.pool is not None else "")


def render_errors(render: Render) -> list[RenderError]:
    """The render's recent errors, oldest first."""
    return [RenderError(*entry) for entry in render.error_history]


def user_record(user: User) -> UserRecord:
    u = user
    return UserRecord(
        u.name, len(u.jobs), u.running, u.running_capacity, u.priority, u.max_running_tasks,
        u.max_running_tasks_per_host, u.hosts_mask.pattern if u.hosts_mask else "",
        u.hosts_mask_exclude.pattern if u.hosts_mask_exclude else "", u.errors_retries, u.errors_avoid_host,
        u.errors_task_same_host, u.errors_forgive_time, u.jobs_solving, dict(u.custom_data),
        u.time_registered)
