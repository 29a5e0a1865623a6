"""Solving: which ready task goes to which render with room.

Runs when something changed (the farm coalesces requests into one solve per reactor
turn), never as a periodic scan. Finished jobs are not in the farm's queue, and a render
for which nothing fitted is skipped until new work appears (the farm's work generation),
so finished work and idle renders cost nothing.

Jobs are taken by order: higher priority first, then older. Within a job, blocks in
order, tasks in their block's order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from farmnet.server.model import Block, Job, Render, Task, TaskState

if TYPE_CHECKING:
    from farmnet.server.farm import Farm


def _limit_reached(running: int, limit: int) -> bool:
    """Afanasy's limits: negative means no limit."""
    return limit >= 0 and running >= limit


def _mask_refuses(name: str, mask, exclude) -> bool:
    if mask is not None and not mask.fullmatch(name):
        return True
    return exclude is not None and bool(exclude.fullmatch(name))


class Scheduler:
    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.assignments = 0

    def solve(self) -> int:
        """Give every render with room as many tasks as fit; returns how many started."""
        farm = self.farm
        started = 0
        for render in list(farm.renders.values()):
            if render.solved_empty_at == farm.work_generation:
                continue
            while render.has_room():
                task = self.pick(render)
                if task is None:
                    render.solved_empty_at = farm.work_generation
                    break
                farm.start_task(task, render)
                started += 1
        self.assignments += started
        return started

    def pick(self, render: Render) -> Task | None:
        for job in self.farm.queue:
            if job.paused or not job.counts[TaskState.RDY] or not self.job_allows(job, render):
                continue
            for block in job.blocks:
                if block.counts[TaskState.RDY] and self.block_allows(block, render):
                    task = block.pop_ready()
                    if task is not None:
                        return task
        return None

    def job_allows(self, job: Job, render: Render) -> bool:
        spec = job.spec
        if _limit_reached(job.counts[TaskState.RUN], spec.max_running_tasks):
            return False
        if _limit_reached(job.running_per_host[render.id], spec.max_running_tasks_per_host):
            return False
        return not _mask_refuses(render.name, job.hosts_mask, job.hosts_mask_exclude)

    def block_allows(self, block: Block, render: Render) -> bool:
        spec = block.spec
        if not render.allows(spec.service):
            return False
        if render.capacity_used + spec.capacity > render.capacity:
            return False
        if _limit_reached(block.running, spec.max_running_tasks):
            return False
        if _limit_reached(block.running_per_host[render.id], spec.max_running_tasks_per_host):
            return False
        return not _mask_refuses(render.name, block.hosts_mask, block.hosts_mask_exclude)
