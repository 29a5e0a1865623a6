"""Read views: jobs, tasks, renders and users as the plain dicts that listings, monitors,
the web site and the action API show. Reading never changes the farm."""

from __future__ import annotations

from typing import Any

from farmnet import errors
from farmnet.model.data import Block, Job, TaskState
from farmnet.model.scheduler import Why
from farmnet.model.state import FarmState


class Views(FarmState):
    def explain(self, job_id: int) -> dict[str, Any]:
        """Why is my job waiting? (see `Scheduler.explain`)"""
        return self.scheduler.explain(self.job(job_id))

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
        for key in ("depend_mask", "depend_mask_global", "command_pre", "command_post", "max_running_tasks",
                    "max_running_tasks_per_host", "hosts_mask", "hosts_mask_exclude", "time_wait",
                    "time_life", "host_name", "description", "project", "department"):
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
                if not n:
                    continue
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


