"""Every AMP command farmnet speaks, with pinned wire names.

Direction is peer → server: the server never initiates a message to a render or a
monitor (deliveryless). A render learns its orders from the answer to its `Heartbeat`,
which the server holds until there is something to say; a monitor learns farm events
from `PollEvents`, held the same way. The one server → peer command is `Close`, sent to
tools only, when the server wants their connection gone: the peer closes first, so the
server's port keeps no TIME-WAIT sockets (renders get a ``close`` or ``reconnect`` order
in a heartbeat answer instead, monitors a ``close`` flag in a PollEvents answer).

Wire names are pinned with ``commandName`` so renaming a class never breaks a peer.
Values that can grow past AMP's 64 KiB limit use the Big* arguments.
"""

from __future__ import annotations

from twisted.protocols import amp

from farmnet import errors as err
from farmnet.messages import (
    Event,
    HostFacts,
    HostResources,
    JobDetail,
    JobRecord,
    Order,
    OutputFiles,
    RenderRecord,
    RunResources,
    TaskRecord,
    TaskRef,
    UserRecord,
)
from farmnet.protocol.arguments import BigBytes, BigJSON, BigUnicode, Typed

#: Bumped on any incompatible change of these commands.
PROTOCOL_VERSION = 1

#: Peer kinds a connection can say it is in `Hello`.
KINDS = ("render", "monitor", "tool")

#: Optional parts of protocol 1 a peer names in its `Hello` and the server answers with those
#: it speaks too (an older peer names none, an older server answers none: both keep protocol 1).
#: ``finish_orders``: the answer to a render's `TaskFinished` may carry its next orders, so a
#: render that finishes a task gets the next one in one round trip, its heartbeat left held.
FINISH_ORDERS = "finish_orders"
FEATURES = (FINISH_ORDERS,)

_COMMON = {
    err.NotAuthenticated: b"NOT_AUTHENTICATED",
    err.PermissionDenied: b"PERMISSION_DENIED",
}
_JOB = {
    **_COMMON,
    err.UnknownJob: b"UNKNOWN_JOB",
    err.UnknownTask: b"UNKNOWN_TASK",
    err.InvalidAction: b"INVALID_ACTION",
}


class Hello(amp.Command):
    """First command on every connection: who is speaking, in which protocol version."""

    commandName = b"hello"
    arguments = [
        (b"protocol", amp.Integer()),
        (b"kind", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"client", amp.Unicode(optional=True)),
        # A render's enrolment secret (the server's render_secret), when the server has one.
        (b"secret", amp.Unicode(optional=True)),
        # A tool's or monitor's password, when the server has a users_file.
        (b"password", amp.Unicode(optional=True)),
        # The optional parts of the protocol the peer speaks (`FEATURES`).
        (b"features", amp.ListOf(amp.Unicode(), optional=True)),
    ]
    response = [
        (b"protocol", amp.Integer()),
        (b"server_version", amp.Unicode()),
        (b"connection_id", amp.Integer()),
        # The most bytes one box (a command with its arguments) may have (0: no limit), so
        # that a tool can refuse a job too big in words rather than by a closed connection.
        (b"max_box_bytes", amp.Integer(optional=True)),
        # Those of the peer's features the server speaks too (absent from older servers).
        (b"features", amp.ListOf(amp.Unicode(), optional=True)),
    ]
    errors = {err.PermissionDenied: b"PERMISSION_DENIED", err.InvalidAction: b"INVALID_ACTION"}
    fatalErrors = {err.IncompatibleProtocol: b"INCOMPATIBLE_PROTOCOL"}


# --- renders ---------------------------------------------------------------------------


class RegisterRender(amp.Command):
    """A render announces itself and the tasks it is still running (after a reconnect)."""

    commandName = b"register_render"
    arguments = [
        (b"name", amp.Unicode()),
        (b"capacity", amp.Integer()),
        (b"max_tasks", amp.Integer()),
        (b"services", amp.ListOf(amp.Unicode())),
        (b"services_disabled", amp.ListOf(amp.Unicode())),
        (b"platform", amp.Unicode()),
        (b"cpus", amp.Integer()),
        (b"memory_mb", amp.Integer()),
        (b"running", Typed(list[TaskRef])),
        (b"owner", amp.Unicode(optional=True)),
        # MAC addresses, for wake-on-LAN
        (b"macs", amp.ListOf(amp.Unicode(), optional=True)),
        # What does not change while it runs: OS, properties, power, CPU MHz (block needs)
        (b"facts", Typed(HostFacts, optional=True)),
    ]
    response = [(b"render_id", amp.Integer()), (b"heartbeat_hold", amp.Float())]
    errors = {**_COMMON, err.InvalidAction: b"INVALID_ACTION"}


class Heartbeat(amp.Command):
    """A render's long poll: answered with orders as soon as there are any, or empty
    after the server's hold time. ``running`` lists the tasks the render runs now.

    Orders are `farmnet.messages.Order`: ``start``, ``kill``, ``exit``, ``sleep``, and
    ``close`` (this connection is replaced or dropped) or ``reconnect`` (the server is
    stopping), after which the render closes its connection first and reconnects with
    backoff."""

    commandName = b"heartbeat"
    arguments = [
        (b"render_id", amp.Integer()),
        (b"running", Typed(list[TaskRef])),
        (b"resources", Typed(HostResources, optional=True)),
    ]
    response = [(b"orders", Typed(list[Order]))]
    errors = {**_COMMON, err.NotRegistered: b"NOT_REGISTERED"}


class ReportResources(amp.Command):
    """A render's resources (free memory, disk, GPU memory, ...), sent every
    ``resources.interval`` seconds and when a task ends (unless the next heartbeat carries
    them), so block needs see fresh values while heartbeats are held."""

    commandName = b"report_resources"
    arguments = [(b"render_id", amp.Integer()), (b"resources", Typed(HostResources))]
    response: list = []
    errors = {**_COMMON, err.NotRegistered: b"NOT_REGISTERED"}


_TASK_ARGS = [
    (b"render_id", amp.Integer()),
    (b"job_id", amp.Integer()),
    (b"block", amp.Integer()),
    (b"task", amp.Integer()),
    (b"run", amp.Integer()),
]


class TaskOutput(amp.Command):
    """A chunk of a running task's output, and its progress when the parser saw one."""

    commandName = b"task_output"
    arguments = [*_TASK_ARGS, (b"data", BigBytes()), (b"progress", amp.Integer(optional=True)),
                 # Where the task's parser reads it is: frames done, percent of the current frame.
                 (b"frame", amp.Integer(optional=True)), (b"percent_frame", amp.Integer(optional=True)),
                 # A line the task's parser flagged as a warning (sent once per run).
                 (b"warning", amp.Unicode(optional=True))]
    response: list = []
    errors = {**_COMMON, err.NotRegistered: b"NOT_REGISTERED"}


class TaskFinished(amp.Command):
    """A task's process ended. The server decides DON or ERR from it, and answers once that
    is on disk. To a render that said the ``finish_orders`` feature the answer may carry its
    next orders (start and kill only, each on disk too), which its held heartbeat then does not."""

    commandName = b"task_finished"
    arguments = [
        *_TASK_ARGS,
        (b"exit_code", amp.Integer(optional=True)),
        (b"signal", amp.Integer(optional=True)),
        (b"time_started", amp.Float()),
        (b"time_done", amp.Float()),
        (b"message", BigUnicode()),
        # {"peak_memory_mb": N, ...} where the render measured it
        (b"resources", Typed(RunResources, optional=True)),
        # The task's parser found a fatal error: a failed run is not retried (Afanasy's PFE).
        (b"fatal", amp.Boolean(optional=True)),
        # the files the run wrote, as its parser read them (Blender's "Saved: '...'")
        (b"files", Typed(list[str], optional=True)),
    ]
    response = [(b"orders", Typed(list[Order], optional=True))]
    errors = {**_COMMON, err.NotRegistered: b"NOT_REGISTERED"}


# --- tools -----------------------------------------------------------------------------


class SubmitJob(amp.Command):
    """Submit a job description (CGRU's ``{"job": {...}}`` or the bare job mapping)."""

    commandName = b"submit_job"
    arguments = [(b"spec", BigJSON())]
    response = [(b"job_id", amp.Integer()), (b"warnings", BigJSON())]
    errors = {**_COMMON, err.JobSpecError: b"JOB_SPEC_ERROR"}


class ListJobs(amp.Command):
    """Every job, or one user's, with counts and progress."""

    commandName = b"list_jobs"
    arguments = [(b"user", amp.Unicode(optional=True))]
    response = [(b"jobs", Typed(list[JobRecord], structured=False))]
    errors = _COMMON


class ShowJob(amp.Command):
    """One job with its blocks."""

    commandName = b"show_job"
    arguments = [(b"job_id", amp.Integer())]
    response = [(b"job", Typed(JobDetail, structured=False))]
    errors = _JOB


class ListTasks(amp.Command):
    """A page of a job's tasks (a job may have 100,000: ask in pages)."""

    commandName = b"list_tasks"
    arguments = [
        (b"job_id", amp.Integer()),
        (b"block", amp.Integer(optional=True)),
        (b"offset", amp.Integer()),
        (b"limit", amp.Integer()),
    ]
    response = [(b"tasks", Typed(list[TaskRecord], structured=False)), (b"total", amp.Integer())]
    errors = _JOB


class GetTaskOutput(amp.Command):
    """Read a task run's output from ``offset``, at most ``limit`` bytes a call.
    ``run`` 0 means the latest run; a run the task never had is UNKNOWN_TASK."""

    commandName = b"get_task_output"
    arguments = [
        (b"job_id", amp.Integer()),
        (b"block", amp.Integer()),
        (b"task", amp.Integer()),
        (b"run", amp.Integer()),
        (b"offset", amp.Integer()),
        (b"limit", amp.Integer()),
    ]
    response = [
        (b"data", BigBytes()),
        (b"run", amp.Integer()),
        (b"next_offset", amp.Integer()),
        (b"complete", amp.Boolean()),
    ]
    errors = _JOB


class ListOutputFiles(amp.Command):
    """The files a job's tasks wrote (rendered frames): each task's latest run that wrote any."""

    commandName = b"list_output_files"
    arguments = [(b"job_id", amp.Integer())]
    response = [(b"files", Typed(list[OutputFiles], structured=False))]
    errors = _JOB


class ListRenders(amp.Command):
    """Every render with its state, capacity, tasks and resources."""

    commandName = b"list_renders"
    arguments: list = []
    response = [(b"renders", Typed(list[RenderRecord], structured=False))]
    errors = _COMMON


class ListUsers(amp.Command):
    """Every user with their settings and running counts."""

    commandName = b"list_users"
    arguments: list = []
    response = [(b"users", Typed(list[UserRecord], structured=False))]
    errors = _COMMON


class JobAction(amp.Command):
    """pause, resume, delete, restart, restart_errors, set_priority (``value``),
    reset_error_hosts (``value`` none or ``{"block": N}``)."""

    commandName = b"job_action"
    arguments = [
        (b"job_ids", amp.ListOf(amp.Integer())),
        (b"action", amp.Unicode()),
        (b"value", BigJSON(optional=True)),
    ]
    response = [(b"done", amp.ListOf(amp.Integer()))]
    errors = _JOB


class Act(amp.Command):
    """The one action API: ``item`` (jobs, blocks, tasks, renders, users), ``action``
    (list, show, update, delete, and each item's own), ``filters`` naming what to act
    on, ``values`` for updates. See `farmnet.server.actions`."""

    commandName = b"act"
    arguments = [
        (b"item", amp.Unicode()),
        (b"action", amp.Unicode()),
        (b"filters", BigJSON(optional=True)),
        (b"values", BigJSON(optional=True)),
    ]
    response = [(b"result", BigJSON())]
    errors = {**_JOB, err.UnknownRender: b"UNKNOWN_RENDER"}


# --- monitors --------------------------------------------------------------------------


class PollEvents(amp.Command):
    """A monitor's long poll for farm events after sequence number ``after``.

    Held until there is an event after ``after`` or the hold time passes. ``reset`` is
    true when the events after ``after`` are no longer kept: reload the farm, then poll
    from ``last``. ``after`` of -1 answers at once with the current ``last``
    (subscribing)."""

    commandName = b"poll_events"
    arguments = [(b"after", amp.Integer()), (b"limit", amp.Integer(optional=True))]
    response = [
        (b"events", Typed(list[Event], structured=False)),
        (b"last", amp.Integer()),
        (b"reset", amp.Boolean()),
        # True when the server wants this connection closed (shutdown, idle): close it,
        # and poll again from ``last`` on a new connection if still interested.
        (b"close", amp.Boolean(optional=True)),
    ]
    errors = _COMMON


# --- server → tool ---------------------------------------------------------------------


class Close(amp.Command):
    """The server asks a tool to close its connection (idle, shutdown, eject): the tool
    answers, then closes its transport, so the close is the client's (no TIME-WAIT on
    the server's port). A tool that does not is reset after the server's close_wait."""

    commandName = b"close"
    arguments = [(b"reason", amp.Unicode(optional=True))]
    response: list = []
