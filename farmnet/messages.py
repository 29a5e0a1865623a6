"""What crosses the wire besides plain AMP arguments: orders, running tasks, resources,
listings and monitor events.

Frozen attrs classes, turned into JSON and back by the one converter of `farmnet.convert`
(the AMP argument `farmnet.protocol.arguments.Typed` does it on both ends), so the server and
the render read the same fields and a peer that sends something else gets a clear error
naming the key. The JSON keys are those of protocol 1.

Listings (`JobRecord`, `JobDetail` with its `BlockRecord`s, `TaskRecord`, `RenderRecord`,
`UserRecord`, `PoolRecord`, `BranchRecord`) and monitor events (`Event`) are snapshots the
farm's views and its event log build; their field order is the JSON's key order, so the
bytes are those protocol 1 peers, the web's JavaScript and users' scripts read.

An order is one of the classes of `Order`; on the wire it is a mapping whose ``"order"`` key
names the kind (``{"order": "kill", "job_id": 3, ...}``): the class's ``order`` class
variable.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs


@attrs.frozen
class TaskRef:
    """One run of a task: what a render says it runs (RegisterRender, Heartbeat)."""

    job_id: int
    block: int
    task: int
    run: int

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.job_id, self.block, self.task)


@attrs.define
class StartOrder:
    """Run a task. ``max_run_time`` is the block's task_max_run_time (0: none): the server
    kills the run at that age, and the render does too should the server be away.
    Not changed once made; not frozen because one is made on every start and a frozen
    ``__init__`` costs three times as much (bench/solve.py)."""

    order: ClassVar[str] = "start"
    #: Keys sent only when they differ from their defaults, so that a render that does not know
    #: them (it refuses unknown keys) still runs every task that does not use them.
    SENT_WHEN_SET: ClassVar[tuple[str, ...]] = (
        "hosts", "capacity_coeff", "parser_coeff", "files", "file_size_min", "file_size_max",
        "check_rendered_files", "skip_existing_files")
    job_id: int
    block: int
    task: int
    run: int
    name: str
    command: str
    working_directory: str = ""
    environment: dict[str, str] = attrs.field(factory=dict)
    service: str = "generic"
    parser: str = ""
    capacity: int = 0
    frame_start: int = 0
    frame_end: int = 0
    max_run_time: int = 0
    #: A multi-host task's primary: its hosts, for the command's ``@AF_HOSTS@`` (the service formats them).
    hosts: tuple[str, ...] = ()
    #: The step between the task's frames (its parser counts ``(end - start) // inc + 1`` frames).
    frames_inc: int = 1
    #: Variable capacity: the coefficient the task got (``capacity`` is the block's times it); 0: none.
    capacity_coeff: int = 0
    #: The block's parser_coeff, for the parser (Afanasy hands it over; built-in parsers ignore it).
    parser_coeff: int = 1
    #: The task's output files (paths relative to working_directory) and the render's checks of
    #: them: after a successful run (checkrenderedfiles), before it (skipexistingfiles).
    files: tuple[str, ...] = ()
    file_size_min: int = -1
    file_size_max: int = -1
    check_rendered_files: bool = False
    skip_existing_files: bool = False

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.job_id, self.block, self.task)

    def ref(self) -> TaskRef:
        return TaskRef(self.job_id, self.block, self.task, self.run)


@attrs.frozen
class KillOrder:
    """Kill one run of a task (a render ignores it for another run)."""

    order: ClassVar[str] = "kill"
    job_id: int
    block: int
    task: int
    run: int
    reason: str = ""

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.job_id, self.block, self.task)


@attrs.frozen
class ExitOrder:
    """Stop the render process (an admin's ``exit``)."""

    order: ClassVar[str] = "exit"


@attrs.frozen
class SleepOrder:
    """Run the wake-on-LAN sleep command, then leave until woken."""

    order: ClassVar[str] = "sleep"


@attrs.frozen
class CloseOrder:
    """This connection is replaced or dropped: close it first, then reconnect with backoff."""

    order: ClassVar[str] = "close"
    reason: str = ""


@attrs.frozen
class ReconnectOrder:
    """The server is stopping: close first, then reconnect with backoff."""

    order: ClassVar[str] = "reconnect"
    reason: str = ""


Order = StartOrder | KillOrder | ExitOrder | SleepOrder | CloseOrder | ReconnectOrder
ORDER_CLASSES: tuple[type, ...] = (StartOrder, KillOrder, ExitOrder, SleepOrder, CloseOrder, ReconnectOrder)


@attrs.frozen
class HostResources:
    """A render's snapshot of its machine (Heartbeat.resources), names after Afanasy's; shown,
    not trusted. A key the render could not measure is None."""

    #: Keys listings show only when measured (listings before them stay as they were).
    SHOWN_WHEN_SET: ClassVar[tuple[str, ...]] = (
        "mem_free_mb", "swap_total_mb", "gpu_mem_total_mb", "gpu_mem_used_mb")
    cpu_num: int | None = None
    cpu_percent: float | None = None
    mem_total_mb: int | None = None
    mem_used_mb: int | None = None
    swap_used_mb: int | None = None
    hdd_free_gb: float | None = None
    load_avg: list[float] | None = None
    #: Memory available to new processes (Afanasy's mem_free_mb: MemAvailable); need_memory reads it.
    mem_free_mb: int | None = None
    swap_total_mb: int | None = None
    #: The GPU (nvidia-smi; None without one): total and used memory, summed over its GPUs.
    gpu_mem_total_mb: int | None = None
    gpu_mem_used_mb: int | None = None


@attrs.frozen
class HostFacts:
    """What a render tells once, when it registers (RegisterRender.facts): what does not change
    while it runs. ``os`` is Afanasy's platform words ("unix linux 64 debian 12"); ``properties``
    and ``power`` come from the render's config (need_properties, need_power read them);
    ``cpu_mhz`` is the CPU's highest frequency."""

    os: str = ""
    cpu_mhz: int | None = None
    properties: str = ""
    power: int = -1


@attrs.frozen
class RunResources:
    """What a render measured of one finished run (TaskFinished.resources)."""

    peak_memory_mb: int | None = None




# --- listings ------------------------------------------------------------------------------
# Slotted and mutable (a listing of 10,000 jobs builds 10,000 of them: a frozen class's
# __init__ costs twice as much); nothing changes one after it is built.


@attrs.define
class JobRecord:
    """A job in a listing (`list_jobs`, the ``job`` event). ``state`` is the shown state
    (WD while a depend mask waits); ``counts`` has the task states with at least one task."""

    id: int
    name: str
    user_name: str
    priority: int
    state: str
    paused: bool
    tasks: int
    counts: dict[str, int]
    progress: int
    time_creation: float
    time_started: float
    time_done: float
    blocks: int
    annotation: str
    #: Its branch's path (doc/pools.md).
    branch: str = ""


@attrs.define
class BlockRecord:
    """A block of a `JobDetail`; ``avoided_hosts`` are the renders its errors avoid."""

    block: int
    name: str
    service: str
    capacity: int
    tasks: int
    numeric: bool
    counts: dict[str, int]
    progress: int
    command: str
    depend_mask: str
    tasks_depend_mask: str
    avoided_hosts: list[str]
    state: str


@attrs.define
class JobDetail:
    """One job with its blocks and settings (`show_job`): a `JobRecord`'s keys, ``blocks``
    as the list of `BlockRecord`, then the job's settings."""

    id: int
    name: str
    user_name: str
    priority: int
    state: str
    paused: bool
    tasks: int
    counts: dict[str, int]
    progress: int
    time_creation: float
    time_started: float
    time_done: float
    blocks: list[BlockRecord]
    annotation: str
    depend_mask: str
    depend_mask_global: str
    command_pre: str
    command_post: str
    max_running_tasks: int
    max_running_tasks_per_host: int
    hosts_mask: str
    hosts_mask_exclude: str
    time_wait: int
    time_life: int
    host_name: str
    description: str
    project: str
    department: str
    custom_data: dict[str, Any]
    branch: str = ""


@attrs.define
class TaskRecord:
    """A task in a listing (`list_tasks`, tasks show); times of its last run."""

    job_id: int
    block: int
    task: int
    name: str
    state: str
    progress: int
    errors_count: int
    starts_count: int
    host: str
    time_started: float
    time_done: float
    #: The first line its parser flagged as a warning in its last run ("": none; Afanasy's WRN).
    warning: str = ""
    #: Frames of the running task done, and percent of the current frame, as its parser reads them.
    frame: int = 0
    percent_frame: int = 0


@attrs.frozen
class OutputFiles:
    """The files one task run wrote (``list_output_files``): paths as the render's parser read them
    (Blender's ``Saved: '...'``), on the hosts' shared storage."""

    block: int
    task: int
    run: int
    paths: tuple[str, ...]


@attrs.define
class RenderError:
    """One recent error on a render (its ``error_history``)."""

    time: float
    job_id: int
    block: int
    task: int
    user: str


@attrs.define
class RenderRecord:
    """A render in a listing (`list_renders`, the ``render`` event). ``tasks`` are the keys
    (job id, block, task) it runs; ``resources`` what it last reported (`HostResources`'
    keys, ``{}`` before its first heartbeat)."""

    id: int
    name: str
    state: str
    online: bool
    capacity: int
    capacity_used: int
    max_tasks: int
    services: list[str]
    services_disabled: list[str]
    platform: str
    cpus: int
    memory_mb: int
    tasks: list[tuple[int, int, int]]
    time_seen: float
    owner: str
    nimby: bool
    NIMBY: bool
    paused: bool
    sick: bool
    tickets_used: dict[str, int]
    errors_in_row: int
    macs: list[str]
    wol: str
    resources: dict[str, Any]
    error_history: list[RenderError]
    #: Its pool's path (doc/pools.md).
    pool: str = ""


@attrs.define
class UserRecord:
    """A user in a listing (`list_users`, the ``user`` event); masks as patterns, "" for none."""

    name: str
    jobs: int
    running: int
    running_capacity: int
    priority: int
    max_running_tasks: int
    max_running_tasks_per_host: int
    hosts_mask: str
    hosts_mask_exclude: str
    errors_retries: int
    errors_avoid_host: int
    errors_task_same_host: int
    errors_forgive_time: int
    jobs_solving: str
    custom_data: dict[str, Any]
    time_registered: float


@attrs.define
class PoolRecord:
    """A render pool in a listing (`list_pools`): its settings (Afanasy's keys; -1: from the
    parent), its sub-pools and renders, and what runs on them now."""

    path: str
    parent: str
    pools: list[str]
    renders: list[str]
    renders_online: int
    renders_busy: int
    pattern: str
    services: list[str]
    services_disabled: list[str]
    tickets_host: dict[str, int]
    tickets_pool: dict[str, int]
    max_tasks_host: int
    capacity_host: int
    max_running_tasks: int
    priority: int
    paused: bool
    new_nimby: bool
    new_paused: bool
    running: int
    running_capacity: int
    tickets_used: dict[str, int]
    time_creation: float


@attrs.define
class BranchRecord:
    """A job branch in a listing (`list_branches`): settings, sub-branches, job ids, and the
    tasks its jobs (and its sub-branches' jobs) run now."""

    path: str
    parent: str
    branches: list[str]
    jobs: list[int]
    priority: int
    max_running_tasks: int
    max_running_tasks_per_host: int
    solving: str
    create_childs: bool
    paused: bool
    running: int
    running_capacity: int
    time_creation: float


# --- monitor events ------------------------------------------------------------------------
# ``seq`` (the event log's sequence number) and ``kind`` come first on the wire: ``kind`` is a
# field that is not an argument of __init__, so each class has its one kind.


@attrs.define
class TaskEvent:
    """A task changed state."""

    seq: int
    kind: Literal["task"] = attrs.field(default="task", init=False)
    job_id: int
    block: int
    task: int
    state: str
    host: str
    errors_count: int


@attrs.define
class ProgressEvent:
    """A running task reported a new progress percentage."""

    seq: int
    kind: Literal["progress"] = attrs.field(default="progress", init=False)
    job_id: int
    block: int
    task: int
    progress: int


@attrs.define
class JobEvent:
    """A job was submitted or changed (settings, flags, counters, state)."""

    seq: int
    kind: Literal["job"] = attrs.field(default="job", init=False)
    job: JobRecord


@attrs.define
class JobDeletedEvent:
    seq: int
    kind: Literal["job_deleted"] = attrs.field(default="job_deleted", init=False)
    job_id: int


@attrs.define
class UserEvent:
    """A user was created (by its first job) or changed."""

    seq: int
    kind: Literal["user"] = attrs.field(default="user", init=False)
    user: UserRecord


@attrs.define
class UserDeletedEvent:
    seq: int
    kind: Literal["user_deleted"] = attrs.field(default="user_deleted", init=False)
    name: str


@attrs.define
class RenderEvent:
    """A render registered, changed, fell sick or went offline."""

    seq: int
    kind: Literal["render"] = attrs.field(default="render", init=False)
    render: RenderRecord


@attrs.define
class PoolEvent:
    """A pool was created or changed, or renders moved in or out of it."""

    seq: int
    kind: Literal["pool"] = attrs.field(default="pool", init=False)
    pool: PoolRecord


@attrs.define
class PoolDeletedEvent:
    seq: int
    kind: Literal["pool_deleted"] = attrs.field(default="pool_deleted", init=False)
    path: str


@attrs.define
class BranchEvent:
    """A branch was created (by a job or an admin) or changed, or jobs moved."""

    seq: int
    kind: Literal["branch"] = attrs.field(default="branch", init=False)
    branch: BranchRecord


@attrs.define
class BranchDeletedEvent:
    seq: int
    kind: Literal["branch_deleted"] = attrs.field(default="branch_deleted", init=False)
    path: str


@attrs.define
class RenderZombieEvent:
    """A render went silent past zombie_time (a ``render`` event follows)."""

    seq: int
    kind: Literal["render_zombie"] = attrs.field(default="render_zombie", init=False)
    name: str


@attrs.define
class RenderDeletedEvent:
    seq: int
    kind: Literal["render_deleted"] = attrs.field(default="render_deleted", init=False)
    name: str


Event = (TaskEvent | ProgressEvent | JobEvent | JobDeletedEvent | UserEvent | UserDeletedEvent | RenderEvent
         | RenderZombieEvent | RenderDeletedEvent | PoolEvent | PoolDeletedEvent | BranchEvent
         | BranchDeletedEvent)
EVENT_CLASSES: tuple[type, ...] = (TaskEvent, ProgressEvent, JobEvent, JobDeletedEvent, UserEvent,
                                   UserDeletedEvent, RenderEvent, RenderZombieEvent, RenderDeletedEvent,
                                   PoolEvent, PoolDeletedEvent, BranchEvent, BranchDeletedEvent)
RECORD_CLASSES: tuple[type, ...] = (JobRecord, BlockRecord, JobDetail, TaskRecord, RenderError, RenderRecord,
                                    UserRecord, PoolRecord, BranchRecord)

#: Classes whose unknown keys are ignored: a render's reports (a newer render may measure
#: more), listings and events (a newer server may show more). Orders are checked for unknown
#: keys, like user input: a key a render does not know is something it would fail to obey.
LENIENT: tuple[type, ...] = (TaskRef, HostResources, HostFacts, RunResources, *RECORD_CLASSES, *EVENT_CLASSES)
