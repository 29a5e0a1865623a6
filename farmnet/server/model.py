"""The farm's objects: jobs, blocks, tasks, users and renders, with Afanasy's names.

Plain data, no I/O and no behaviour beyond what can be derived. Every mutation goes
through `farmnet.server.farm.Farm`, so counters stay right and the store, statistics
and monitors see every change.

Memory matters (100,000 tasks and 1,000 renders in a few hundred MB): a task is a small
slotted object; its name and command are derived from its block's spec on demand.
"""

from __future__ import annotations

import enum
import heapq
import re
from collections import Counter
from typing import Any

import attrs

from farmnet.jobspec import BlockSpec, JobSpec


class TaskState(enum.StrEnum):
    """Afanasy's task, block and job states."""

    RDY = "RDY"  # ready
    RUN = "RUN"  # running
    DON = "DON"  # done
    ERR = "ERR"  # error, retries exhausted
    SKP = "SKP"  # skipped (counts as done)
    WD = "WD"  # waiting for dependencies
    WT = "WT"  # waiting for a time
    OFF = "OFF"  # paused
    WRC = "WRC"  # running on a render that vanished: waiting for it to reconnect


FINISHED = frozenset({TaskState.DON, TaskState.SKP})
ACTIVE = frozenset({TaskState.RUN, TaskState.WRC})

TaskKey = tuple[int, int, int]  # job id, block number, task number


@attrs.define(slots=True, eq=False, repr=False)
class Task:
    block: Block
    number: int
    state: TaskState = TaskState.RDY
    errors_count: int = 0
    #: Number of times the task was started; the current run's number.
    starts_count: int = 0
    render_id: int = 0  # 0: not on a render
    progress: int = 0
    time_started: float = 0.0
    time_done: float = 0.0
    host: str = ""  # the render of the last run

    @property
    def key(self) -> TaskKey:
        return (self.block.job.id, self.block.number, self.number)

    @property
    def name(self) -> str:
        return self.block.spec.task_name(self.number)

    @property
    def command(self) -> str:
        return self.block.spec.task_command(self.number)

    def __repr__(self) -> str:
        return f"<Task {self.key} {self.state}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.block.job.id, "block": self.block.number, "task": self.number,
            "name": self.name, "state": self.state.value, "progress": self.progress,
            "errors_count": self.errors_count, "starts_count": self.starts_count,
            "host": self.host, "time_started": self.time_started, "time_done": self.time_done,
        }


@attrs.define(eq=False, repr=False)
class Block:
    job: Job
    number: int
    spec: BlockSpec
    tasks: list[Task] = attrs.field(factory=list)
    counts: Counter[TaskState] = attrs.field(factory=Counter)
    #: Numbers of tasks that may be ready, in solving order; stale entries are skipped.
    ready: list[int] = attrs.field(factory=list)
    running_capacity: int = 0
    running_per_host: Counter[int] = attrs.field(factory=Counter)
    hosts_mask: re.Pattern[str] | None = None
    hosts_mask_exclude: re.Pattern[str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> int:
        return self.counts[TaskState.RUN]

    def push_ready(self, task: Task) -> None:
        heapq.heappush(self.ready, task.number)

    def pop_ready(self) -> Task | None:
        while self.ready:
            task = self.tasks[heapq.heappop(self.ready)]
            if task.state is TaskState.RDY:
                return task
        return None

    def to_dict(self) -> dict[str, Any]:
        total = len(self.tasks)
        done = self.counts[TaskState.DON] + self.counts[TaskState.SKP]
        return {
            "block": self.number, "name": self.name, "service": self.spec.service,
            "capacity": self.spec.capacity, "tasks": total, "numeric": self.spec.numeric,
            "counts": {s.value: n for s, n in self.counts.items() if n},
            "progress": done * 100 // total if total else 100,
            "command": self.spec.command, "depend_mask": self.spec.depend_mask,
        }


@attrs.define(eq=False, repr=False)
class Job:
    id: int
    spec: JobSpec
    user_name: str
    priority: int
    time_creation: float
    #: Submission order, the tie-break after priority and creation time.
    serial: int
    paused: bool = False
    time_started: float = 0.0
    time_done: float = 0.0
    blocks: list[Block] = attrs.field(factory=list)
    counts: Counter[TaskState] = attrs.field(factory=Counter)
    running_per_host: Counter[int] = attrs.field(factory=Counter)
    hosts_mask: re.Pattern[str] | None = None
    hosts_mask_exclude: re.Pattern[str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tasks_total(self) -> int:
        return sum(len(b.tasks) for b in self.blocks)

    @property
    def done(self) -> bool:
        return self.counts[TaskState.DON] + self.counts[TaskState.SKP] == self.tasks_total

    @property
    def state(self) -> TaskState:
        c = self.counts
        if self.done:
            return TaskState.DON
        if self.paused:
            return TaskState.OFF
        if c[TaskState.RUN] or c[TaskState.WRC]:
            return TaskState.RUN
        if c[TaskState.RDY]:
            return TaskState.RDY
        if c[TaskState.ERR]:
            return TaskState.ERR
        if c[TaskState.WT]:
            return TaskState.WT
        return TaskState.WD

    def order_key(self) -> tuple[int, float, int]:
        """Solving by order: higher priority first, then older."""
        return (-self.priority, self.time_creation, self.serial)

    def to_dict(self) -> dict[str, Any]:
        total = self.tasks_total
        done = self.counts[TaskState.DON] + self.counts[TaskState.SKP]
        return {
            "id": self.id, "name": self.name, "user_name": self.user_name,
            "priority": self.priority, "state": self.state.value, "paused": self.paused,
            "tasks": total, "counts": {s.value: n for s, n in self.counts.items() if n},
            "progress": done * 100 // total if total else 100,
            "time_creation": self.time_creation, "time_started": self.time_started,
            "time_done": self.time_done, "blocks": len(self.blocks),
            "annotation": self.spec.annotation,
        }


@attrs.define(eq=False, repr=False)
class User:
    name: str
    time_registered: float
    jobs: set[int] = attrs.field(factory=set)
    running: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "jobs": len(self.jobs), "running": self.running,
                "time_registered": self.time_registered}


@attrs.define(eq=False, repr=False)
class Render:
    id: int
    name: str
    capacity: int
    max_tasks: int
    services: frozenset[str]
    services_disabled: frozenset[str]
    platform: str = ""
    cpus: int = 0
    memory_mb: int = 0
    online: bool = False
    time_registered: float = 0.0
    time_seen: float = 0.0
    capacity_used: int = 0
    tasks: dict[TaskKey, Task] = attrs.field(factory=dict)
    #: Orders waiting for the render's next (or held) heartbeat.
    orders: list[dict[str, Any]] = attrs.field(factory=list)
    #: The farm's work generation when a solve last found nothing for this render.
    solved_empty_at: int = -1

    def has_room(self) -> bool:
        if not self.online or self.capacity_used >= self.capacity:
            return False
        return self.max_tasks <= 0 or len(self.tasks) < self.max_tasks

    def allows(self, service: str) -> bool:
        if service in self.services_disabled:
            return False
        return not self.services or service in self.services

    @property
    def state(self) -> str:
        if not self.online:
            return "offline"
        return "busy" if self.tasks else "online"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "state": self.state, "online": self.online,
            "capacity": self.capacity, "capacity_used": self.capacity_used,
            "max_tasks": self.max_tasks, "services": sorted(self.services),
            "services_disabled": sorted(self.services_disabled), "platform": self.platform,
            "cpus": self.cpus, "memory_mb": self.memory_mb,
            "tasks": [list(k) for k in self.tasks], "time_seen": self.time_seen,
        }
