"""What crosses the wire besides plain AMP arguments: orders, running tasks, resources.

Frozen attrs classes, turned into JSON and back by the one converter of `farmnet.convert`
(the AMP argument `farmnet.protocol.arguments.Typed` does it on both ends), so the server and
the render read the same fields and a peer that sends something else gets a clear error
naming the key. The JSON keys are those of protocol 1.

An order is one of the classes of `Order`; on the wire it is a mapping whose ``"order"`` key
names the kind (``{"order": "kill", "job_id": 3, ...}``): the class's ``order`` class
variable.
"""

from __future__ import annotations

from typing import ClassVar

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


@attrs.frozen
class StartOrder:
    """Run a task. ``max_run_time`` is the block's task_max_run_time (0: none): the server
    kills the run at that age, and the render does too should the server be away."""

    order: ClassVar[str] = "start"
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

    cpu_num: int | None = None
    cpu_percent: float | None = None
    mem_total_mb: int | None = None
    mem_used_mb: int | None = None
    swap_used_mb: int | None = None
    hdd_free_gb: float | None = None
    load_avg: list[float] | None = None


@attrs.frozen
class RunResources:
    """What a render measured of one finished run (TaskFinished.resources)."""

    peak_memory_mb: int | None = None


#: Classes whose unknown keys are ignored: a render's reports (a newer render may measure
#: more). Orders are checked for unknown keys, like user input: a key a render does not
#: know is something it would fail to obey.
LENIENT: tuple[type, ...] = (TaskRef, HostResources, RunResources)
