"""The farm's objects: jobs, blocks, tasks, users and renders, with Afanasy's names.

Plain data, no I/O and no behaviour beyond what can be derived. Every mutation goes
through `farmnet.model.farm.Farm`, so counters stay right and the store, statistics
and monitors see every change.

Memory matters (100,000 tasks and 1,000 renders in a few hundred MB): a task is a small
slotted object; its name and command are derived from its block's spec on demand.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter, deque
from typing import Any

import attrs

from farmnet.messages import Order
from farmnet.model.masks import Mask
from farmnet.model.spec import BlockSpec, JobSpec


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


@attrs.define
class TaskRun:
    """One run of a task that ended, as reported by its render: what statistics keep.
    Not changed once made; not frozen because one is made on every finish and a frozen
    ``__init__`` costs three times as much (bench/solve.py)."""

    job_id: int
    block: int
    task: int
    run: int
    job_name: str
    block_name: str
    task_name: str
    user_name: str
    host: str
    service: str
    capacity: int
    command: str
    frame_start: int
    frame_end: int
    time_started: float
    time_done: float
    exit_code: int | None
    signal: int | None
    state: str  # the task's state after this run: DON, RDY (will retry) or ERR
    errors_count: int
    message: str
    peak_memory_mb: int | None = None
    #: A multi-host run's hosts, its primary first (``host``); empty for other runs.
    hosts: tuple[str, ...] = ()


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
    #: Render name → [errors, time of the last]; None until the task first fails.
    host_errors: dict[str, list[float]] | None = None
    #: When the running task's progress last changed (progress change timeout).
    time_progress: float = 0.0
    #: WRC: when it began waiting for its render (task_reconnect_timeout counts from here,
    #: across server restarts); 0 otherwise.
    time_lost: float = 0.0
    #: The first warning its parser found in the current or last run ("": none); not stored.
    warning: str = ""
    #: Frames done and percent of the current frame in the current run, as its parser reads them.
    frame: int = 0
    percent_frame: int = 0
    #: The capacity the current run holds on its render (variable capacity: the block's times
    #: the coefficient); 0: the block's capacity.
    capacity: int = 0
    #: The current run's name, command and frames, from its start order to its run record
    #: (worked out once a run); None when the run was not started here (a restart).
    texts: tuple[str, str, int, int] | None = None

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
    hosts_mask: Mask | None = None
    hosts_mask_exclude: Mask | None = None
    #: Solving order when not plain forward: rank → task number, and its inverse.
    order: list[int] | None = None
    rank: list[int] | None = None
    #: Render name → [errors, time of the last] (errors_avoid_host).
    host_errors: dict[str, list[float]] = attrs.field(factory=dict)
    #: Blocks of this job matched by ``depend_mask`` / ``tasks_depend_mask``.
    depends_on: list[Block] = attrs.field(factory=list)
    tasks_depend_on: list[Block] = attrs.field(factory=list)
    #: Another block depends on this one: its finishing may free work.
    depends_on_me: bool = False
    #: The start orders' environment without the task's own variables, and what it was built
    #: from (block spec, job spec, owner): built once per block, not per start.
    start_environment: tuple[object, object, str, dict[str, str]] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> int:
        return self.counts.get(TaskState.RUN, 0)

    @property
    def finished(self) -> bool:
        counts = self.counts  # (.get: a Counter's missing key costs a Python call, on a hot path)
        return counts.get(TaskState.DON, 0) + counts.get(TaskState.SKP, 0) == len(self.tasks)

    def set_order(self, sequential: int) -> None:
        """Afanasy's ``sequential``: 1 forward, -1 backward, N every Nth frame first
        (then the rest), -N the same from the end, 0 from the middle out."""
        count = len(self.tasks)
        if sequential == 1:
            self.order = self.rank = None
        else:
            self.order = solving_order(self.spec, count, sequential)
            self.rank = [0] * count
            for r, n in enumerate(self.order):
                self.rank[n] = r
        self.ready = sorted(self._rank_of(t.number) for t in self.tasks if t.state is TaskState.RDY)

    def _rank_of(self, number: int) -> int:
        return number if self.rank is None else self.rank[number]

    def push_ready(self, task: Task) -> None:
        heapq.heappush(self.ready, self._rank_of(task.number))

    def pop_ready(self) -> Task | None:
        while self.ready:
            rank = heapq.heappop(self.ready)
            task = self.tasks[rank if self.order is None else self.order[rank]]
            if task.state is TaskState.RDY:
                return task
        return None


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
    hosts_mask: Mask | None = None
    hosts_mask_exclude: Mask | None = None
    #: The job's and its blocks' command_pre still running (on the system job): the job
    #: waits for them, as Afanasy runs them before the job is first solved.
    commands_pre_pending: int = 0
    #: Its branch (farmnet.model.pools.Branch), set when the farm places it.
    branch: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tasks_total(self) -> int:
        return sum(len(b.tasks) for b in self.blocks)

    @property
    def done(self) -> bool:
        counts = self.counts
        return counts.get(TaskState.DON, 0) + counts.get(TaskState.SKP, 0) == self.tasks_total

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


@attrs.define(eq=False, repr=False)
class User:
    """Created by a user's first job; an admin may set its limits and solving."""

    name: str
    time_registered: float
    jobs: set[int] = attrs.field(factory=set)
    #: The user's unfinished jobs with ready tasks, in solving order.
    ready_jobs: list[Job] = attrs.field(factory=list)
    running: int = 0
    running_capacity: int = 0
    priority: int = 99
    max_running_tasks: int = -1
    max_running_tasks_per_host: int = -1
    hosts_mask: Mask | None = None
    hosts_mask_exclude: Mask | None = None
    errors_retries: int = -1
    errors_avoid_host: int = -1
    errors_task_same_host: int = -1
    errors_forgive_time: int = -1
    #: How this user's jobs are solved: "order" (Afanasy's default) or "need".
    jobs_solving: str = "order"
    #: Merged under each job's custom data for events (e.g. {"emails": [...]}).
    custom_data: dict[str, Any] = attrs.field(factory=dict)


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
    #: Its tasks in WRC: they wait for it to come back and report them.
    waiting: dict[TaskKey, Task] = attrs.field(factory=dict)
    #: Orders waiting for the render's next (or held) heartbeat.
    orders: list[Order] = attrs.field(factory=list)
    #: The farm's work generation when a solve last found nothing for this render.
    solved_empty_at: int = -1
    owner: str = ""
    nimby: bool = False  # only its owner's jobs
    NIMBY: bool = False  # no jobs at all
    paused: bool = False
    sick: bool = False
    tickets_used: Counter[str] = attrs.field(factory=Counter)
    #: Recent errors on this host across jobs: (time, job id, block, task, user).
    error_history: deque[tuple[float, int, int, int, str]] = attrs.field(
        factory=lambda: deque(maxlen=100))
    #: Consecutive errors (no success between) and the distinct jobs they came from.
    errors_in_row: int = 0
    error_jobs_in_row: set[int] = attrs.field(factory=set)
    macs: tuple[str, ...] = ()
    #: Wake-on-LAN: "" (awake), "falling" (asked to sleep), "sleeping", "waking".
    wol: str = ""
    #: The latest resources the render reported (CPU, memory, swap, disk, load).
    resources: dict[str, Any] = attrs.field(factory=dict)
    #: Multi-host tasks this render is a host of, other than as their primary (captured while
    #: the task gathers hosts, then a secondary): farmnet/model/multihost.py.
    multihost: dict[TaskKey, Task] = attrs.field(factory=dict)
    #: What block and job needs are checked against (Afanasy's units); None: not reported.
    #: From the registration: its OS words, properties and power (config), CPU MHz.
    os: str = ""
    properties: str = ""
    power: int = -1
    cpu_mhz: int | None = None
    #: From its resources: free memory MB, free disk GB, free GPU memory MB.
    mem_free_mb: int | None = None
    hdd_free_gb: int | None = None
    gpu_mem_free_mb: int | None = None

    @property
    def cpu_num(self) -> int | None:
        return self.cpus or None

    @property
    def cpu_freq_cores(self) -> int | None:
        return None if self.cpu_mhz is None or not self.cpus else self.cpu_mhz * self.cpus
    #: Its pool (farmnet.model.pools.Pool), set when it first registers or is restored.
    pool: Any = None

    def usable(self) -> bool:
        """Online, not sick, not asleep: a paused or NIMBY render still runs the jobs that ignore
        that (ignorepaused, ignorenimby)."""
        return self.online and not (self.sick or self.wol)

    def has_room(self) -> bool:
        if not self.online or self.sick or self.wol or self.capacity_used >= self.capacity:  # usable()
            return False
        return self.max_tasks <= 0 or len(self.tasks) + len(self.multihost) < self.max_tasks

    def running_of_block(self, block: Block) -> int:
        """The block's tasks this render runs or holds as a multi-host host. Counted when a
        per-host limit asks (a render runs a few tasks), not kept on every start and finish."""
        return (sum(1 for task in self.tasks.values() if task.block is block)
                + sum(1 for task in self.multihost.values() if task.block is block))

    def running_of_job(self, job: Job) -> int:
        return sum(1 for task in self.tasks.values() if task.block.job is job)

    def running_of_user(self, name: str) -> int:
        return sum(1 for task in self.tasks.values() if task.block.job.user_name == name)

    def allows(self, service: str) -> bool:
        if service in self.services_disabled:
            return False
        return not self.services or service in self.services

    @property
    def state(self) -> str:
        """Afanasy's render states, most telling first."""
        if self.wol:
            return f"WOL {self.wol}"
        if not self.online:
            return "offline"
        flags = [name for name, on in (("sick", self.sick), ("paused", self.paused),
                                       ("NIMBY", self.NIMBY), ("nimby", self.nimby)) if on]
        flags.append("busy" if self.tasks or self.multihost else "online")
        return " ".join(flags)


@attrs.define(eq=False, repr=False)
class MultiRun:
    """A multi-host task's hosts (farmnet/model/multihost.py): captured while it gathers, then
    its primary and secondaries for one run."""

    task: Task
    #: Captured renders in the order they came; once started, the secondaries.
    hosts: list[Render] = attrs.field(factory=list)
    #: The render that runs the task's command (the first captured); None while gathering.
    master: Render | None = None
    #: When the last host was captured (multihost_max_wait counts from there).
    time_last_added: float = 0.0
    #: Secondaries named by the store that have not re-registered since the server started.
    pending: set[str] = attrs.field(factory=set)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.hosts] + sorted(self.pending)


def solving_order(spec: BlockSpec, count: int, sequential: int) -> list[int]:
    """Task numbers in the order Afanasy's ``sequential`` solves them."""
    if sequential == 1:
        return list(range(count))
    if sequential == -1:
        return list(range(count - 1, -1, -1))
    if sequential == 0:  # middle out: halves, then quarters, ...
        order, seen = [], set()
        for n in (0, count - 1):
            if n not in seen:
                seen.add(n)
                order.append(n)
        parts = 2
        while len(order) < count and parts <= 2 * count:
            for i in range(1, parts, 2):
                n = i * (count - 1) // parts
                if n not in seen:
                    seen.add(n)
                    order.append(n)
            parts *= 2
        order.extend(n for n in range(count) if n not in seen)
        return order
    step = abs(sequential)
    frames = [spec.frames(n)[0] if spec.numeric else n for n in range(count)]
    every = [n for n in range(count) if frames[n] % step == 0]
    if sequential > 1:
        taken = dict.fromkeys([0, count - 1, *every])
        return [*taken, *(n for n in range(count) if n not in taken)]
    every.reverse()
    chosen = set(every)
    return every + [n for n in range(count - 1, -1, -1) if n not in chosen]
