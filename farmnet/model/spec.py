"""Job descriptions: Afanasy's format, validated into immutable specs.

A job arrives as CGRU's ``af.py`` writes it (``{"job": {...}}``) or as the bare job
mapping, from JSON or YAML. Every key keeps Afanasy's name. Unknown keys give a warning,
never a crash; an invalid value gives one `JobSpecError` naming every bad key.

Frames: in a numeric block, task ``i`` covers ``frames_per_task`` frames stepping by
``frames_inc`` from ``frame_first``. In a command, the first ``@#@`` becomes the task's
first frame and the second its last; the number of ``#`` is the zero padding
(``@####@`` → ``0007``). In an explicit block, every ``@#@`` of the block command is
replaced by the task's command (an empty block command runs the task's command as is).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from farmnet.convert import did_you_mean
from farmnet.errors import JobSpecError
from farmnet.model.masks import check_mask

_FRAME_PATTERN = re.compile(r"@(#+)@")

#: Afanasy block flag bits.
FLAG_NUMERIC = 1 << 0

#: Keys CGRU writes that farmnet accepts and keeps, but which have no effect yet.
_ACCEPTED_JOB = frozenset(
    {"time_creation", "folders", "branch", "time_life", "need_os", "need_properties", "ppa",
     "ignorenimby", "ignorepaused", "pools", "command_pre"}
)
_ACCEPTED_BLOCK = frozenset(
    {"flags", "capacity_coeff_min", "capacity_coeff_max", "files", "command_pre", "need_memory",
     "need_hdd", "need_power", "need_properties", "multihost_min", "multihost_max",
     "multihost_service", "multihost_max_wait", "multihost_service_wait", "file_size_min",
     "file_size_max", "custom_data", "parser_coeff"}
)


@attrs.frozen
class TaskSpec:
    """An explicit task: its name and the command that fills the block's ``@#@``."""

    name: str
    command: str


@attrs.frozen
class BlockSpec:
    name: str
    command: str = ""
    service: str = "generic"
    parser: str = "generic"
    capacity: int = 1000
    working_directory: str = ""
    environment: Mapping[str, str] = attrs.field(factory=dict)
    command_post: str = ""
    frame_first: int = 0
    frame_last: int = 0
    frames_per_task: int = 1
    frames_inc: int = 1
    tasks_name: str = ""
    tasks: tuple[TaskSpec, ...] = ()
    sequential: int = 1
    depend_mask: str = ""
    tasks_depend_mask: str = ""
    hosts_mask: str = ""
    hosts_mask_exclude: str = ""
    max_running_tasks: int = -1
    max_running_tasks_per_host: int = -1
    errors_retries: int = -1
    errors_avoid_host: int = -1
    errors_task_same_host: int = -1
    errors_forgive_time: int = -1
    task_max_run_time: int = 0
    task_min_run_time: int = 0
    task_progress_change_timeout: int = 0
    tickets: Mapping[str, int] = attrs.field(factory=dict)
    #: Tasks are appended while the farm runs (the system job's blocks); may be empty.
    dynamic: bool = False

    @property
    def numeric(self) -> bool:
        return not self.tasks and not self.dynamic

    @property
    def tasks_count(self) -> int:
        if self.tasks or self.dynamic:
            return len(self.tasks)
        span = self.frames_per_task * self.frames_inc
        return (self.frame_last - self.frame_first) // span + 1

    def frames(self, number: int) -> tuple[int, int]:
        """First and last frame of numeric task ``number``."""
        start = self.frame_first + number * self.frames_per_task * self.frames_inc
        end = min(start + (self.frames_per_task - 1) * self.frames_inc, self.frame_last)
        return start, end

    def task_name(self, number: int) -> str:
        if self.tasks:
            name = self.tasks[number].name
            return self.tasks_name.replace("@#@", name) if self.tasks_name else name
        start, end = self.frames(number)
        if self.tasks_name:
            return fill_frames(self.tasks_name, start, end)
        if start == end:
            return f"frame {start}"
        return f"frame {start}-{end}" + (f" / {self.frames_inc}" if self.frames_inc > 1 else "")

    def task_command(self, number: int) -> str:
        if self.tasks:
            task_command = self.tasks[number].command
            return self.command.replace("@#@", task_command) if self.command else task_command
        return fill_frames(self.command, *self.frames(number))


@attrs.frozen
class JobSpec:
    name: str
    blocks: tuple[BlockSpec, ...]
    user_name: str = ""
    host_name: str = ""
    priority: int = 99
    depend_mask: str = ""
    depend_mask_global: str = ""
    max_running_tasks: int = -1
    max_running_tasks_per_host: int = -1
    hosts_mask: str = ""
    hosts_mask_exclude: str = ""
    time_wait: int = 0
    command_post: str = ""
    annotation: str = ""
    description: str = ""
    project: str = ""
    department: str = ""
    offline: bool = False
    errors_retries: int = -1
    errors_avoid_host: int = -1
    errors_task_same_host: int = -1
    errors_forgive_time: int = -1
    custom_data: Mapping[str, Any] = attrs.field(factory=dict)
    #: The accepted, not yet effective keys, kept so the job round-trips.
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def tasks_count(self) -> int:
        return sum(b.tasks_count for b in self.blocks)


def fill_frames(pattern: str, start: int, end: int) -> str:
    """Afanasy's fillNumbers: first ``@#@`` → start, second → end, then alternate."""
    numbers = iter([start, end] * (pattern.count("@") // 2 + 1))
    return _FRAME_PATTERN.sub(lambda m: str(next(numbers)).zfill(len(m.group(1))), pattern)


# --- parsing ---------------------------------------------------------------------------


class _Collector:
    """Gathers every error and warning of one spec, each with its key path."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def get(self, data: Mapping[str, Any], key: str, path: str, kind: Callable[[Any], Any],
            default: Any) -> Any:
        if key not in data or data[key] is None:
            return default
        try:
            return kind(data[key])
        except (TypeError, ValueError) as e:
            self.errors.append(f"{path}.{key}: {e}")
            return default


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"expected true or false, got {value!r}")


def _regex(value: Any) -> str:
    return check_mask(_str(value))


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {_str(k): _str(v) for k, v in value.items()}
    if isinstance(value, str):  # Afanasy also accepts "A=1;B=2"
        env = {}
        for item in filter(None, value.split(";")):
            key, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"expected NAME=VALUE, got {item!r}")
            env[key.strip()] = val
        return env
    raise TypeError(f"expected a mapping of names to values, got {type(value).__name__}")


def _tickets(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of ticket names to counts, got {type(value).__name__}")
    return {_str(k): _int(v) for k, v in value.items()}


def _custom_data(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def _at_least(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = _int(value)
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return check


_BLOCK_FIELDS: dict[str, Callable[[Any], Any]] = {
    "command": _str, "service": _str, "parser": _str, "capacity": _at_least(1),
    "working_directory": _str, "environment": _environment, "command_post": _str,
    "frame_first": _int, "frame_last": _int, "frames_per_task": _at_least(1),
    "frames_inc": _at_least(1), "tasks_name": _str, "sequential": _int,
    "depend_mask": _regex, "tasks_depend_mask": _regex, "hosts_mask": _regex,
    "hosts_mask_exclude": _regex, "max_running_tasks": _int, "max_running_tasks_per_host": _int,
    "errors_retries": _int, "errors_avoid_host": _int, "errors_task_same_host": _int,
    "errors_forgive_time": _int, "task_max_run_time": _at_least(0),
    "task_min_run_time": _at_least(0), "task_progress_change_timeout": _at_least(0),
    "tickets": _tickets, "dynamic": _bool,
}
_JOB_FIELDS: dict[str, Callable[[Any], Any]] = {
    "user_name": _str, "host_name": _str, "priority": _at_least(0), "depend_mask": _regex,
    "depend_mask_global": _regex, "max_running_tasks": _int, "max_running_tasks_per_host": _int,
    "hosts_mask": _regex, "hosts_mask_exclude": _regex, "time_wait": _int, "command_post": _str,
    "annotation": _str, "description": _str, "project": _str, "department": _str,
    "offline": _bool, "custom_data": _custom_data, "errors_retries": _int,
    "errors_avoid_host": _int, "errors_task_same_host": _int, "errors_forgive_time": _int,
}
MAX_PRIORITY = 250  # Afanasy's range is 0..250

#: What `set` may change on a running job / block, with the same validation as a submit.
JOB_SETTABLE = frozenset(_JOB_FIELDS) - {"user_name", "host_name", "offline", "custom_data"}
BLOCK_SETTABLE = frozenset(
    {"capacity", "max_running_tasks", "max_running_tasks_per_host", "hosts_mask", "hosts_mask_exclude",
     "depend_mask", "tasks_depend_mask", "errors_retries", "errors_avoid_host", "errors_task_same_host",
     "errors_forgive_time", "task_max_run_time", "task_min_run_time", "task_progress_change_timeout",
     "service", "parser", "tickets", "sequential"})


def validate_changes(changes: Any, settable: frozenset[str], path: str) -> dict[str, Any]:
    """Check a `set` action's values with the submit validators; names every bad key."""
    if not isinstance(changes, Mapping) or not changes:
        raise JobSpecError(f"{path}: expected a mapping of parameters to values")
    fields = {**_JOB_FIELDS, **_BLOCK_FIELDS} if path == "block" else _JOB_FIELDS
    c = _Collector()
    out = {}
    for key in changes:
        if key not in settable:
            hint = did_you_mean(key, sorted(settable)) or f"; one of {', '.join(sorted(settable))}"
            c.errors.append(f"{path}.{key}: cannot be set{hint}")
            continue
        kind = _BLOCK_FIELDS[key] if path == "block" else fields[key]
        out[key] = c.get(changes, key, path, kind, None)
    if c.errors:
        raise JobSpecError("invalid values: " + "; ".join(c.errors))
    return out


def parse_job(document: Any, max_tasks: int = 1_000_000) -> tuple[JobSpec, list[str]]:
    """Validate a job description; return the spec and its warnings.

    Raises `JobSpecError` naming every invalid key at once.
    """
    c = _Collector()
    if isinstance(document, Mapping) and set(document) == {"job"}:
        document = document["job"]
    if not isinstance(document, Mapping):
        raise JobSpecError(f"job: expected a mapping, got {type(document).__name__}")

    name = c.get(document, "name", "job", _str, "")
    if not name.strip():
        c.errors.append("job.name: a job needs a non-empty name")
    values = {k: c.get(document, k, "job", kind, None) for k, kind in _JOB_FIELDS.items()}
    if values["priority"] is not None and values["priority"] > MAX_PRIORITY:
        c.errors.append(f"job.priority: must be at most {MAX_PRIORITY}, got {values['priority']}")

    raw_blocks = document.get("blocks")
    blocks: list[BlockSpec] = []
    if not isinstance(raw_blocks, list) or not raw_blocks:
        c.errors.append("job.blocks: a job needs a non-empty list of blocks")
    else:
        for i, raw in enumerate(raw_blocks):
            block = _parse_block(c, raw, f"job.blocks[{i}]")
            if block is not None:
                blocks.append(block)
    names = [b.name for b in blocks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.errors.append(f"job.blocks: block name {dup!r} is used twice")
    total = sum(b.tasks_count for b in blocks)
    if total > max_tasks:
        c.errors.append(f"job.blocks: {total} tasks is more than this farm's limit of {max_tasks}")

    for key in document:
        if key not in _JOB_FIELDS and key not in _ACCEPTED_JOB and key not in ("name", "blocks"):
            hint = did_you_mean(str(key), [*_JOB_FIELDS, "name", "blocks"])
            c.warnings.append(f"job.{key}: unknown key, ignored{hint}")
    if c.errors:
        raise JobSpecError("invalid job: " + "; ".join(c.errors))

    extra = {k: document[k] for k in _ACCEPTED_JOB if k in document and k not in _JOB_FIELDS}
    given = {k: v for k, v in values.items() if v is not None}
    return JobSpec(name=name, blocks=tuple(blocks), extra=extra, **given), c.warnings


def _parse_block(c: _Collector, raw: Any, path: str) -> BlockSpec | None:
    if not isinstance(raw, Mapping):
        c.errors.append(f"{path}: expected a mapping, got {type(raw).__name__}")
        return None
    errors_before = len(c.errors)
    name = c.get(raw, "name", path, _str, "")
    if not name:
        c.errors.append(f"{path}.name: a block needs a name")
    values = {k: c.get(raw, k, path, kind, None) for k, kind in _BLOCK_FIELDS.items()}
    tasks = _parse_tasks(c, raw.get("tasks"), path)
    flags = c.get(raw, "flags", path, _int, 0)
    numeric = not tasks and not values["dynamic"]
    if numeric:
        if raw.get("tasks") is not None:
            c.errors.append(f"{path}.tasks: an explicit block needs at least one task")
        elif not values["command"]:
            c.errors.append(f"{path}.command: a numeric block needs a command")
        first = values["frame_first"] or 0
        last = values["frame_last"] if values["frame_last"] is not None else first
        if last < first:
            c.errors.append(f"{path}.frame_last: {last} is before frame_first {first}")
        values["frame_first"], values["frame_last"] = first, last
    elif flags & FLAG_NUMERIC:
        c.warnings.append(f"{path}.flags: numeric flag set on a block with explicit tasks; tasks win")
    for key in raw:
        if key not in _BLOCK_FIELDS and key not in _ACCEPTED_BLOCK and key not in ("name", "tasks"):
            hint = did_you_mean(str(key), [*_BLOCK_FIELDS, "name", "tasks"])
            c.warnings.append(f"{path}.{key}: unknown key, ignored{hint}")
    if len(c.errors) > errors_before:
        return None
    given = {k: v for k, v in values.items() if v is not None}
    return BlockSpec(name=name, tasks=tasks, **given)


def _parse_tasks(c: _Collector, raw: Any, path: str) -> tuple[TaskSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.errors.append(f"{path}.tasks: expected a list, got {type(raw).__name__}")
        return ()
    tasks = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            c.errors.append(f"{path}.tasks[{i}]: expected a mapping, got {type(item).__name__}")
            continue
        name, command = item.get("name", str(i)), item.get("command", "")
        if not isinstance(name, str | int) or not isinstance(command, str):
            c.errors.append(f"{path}.tasks[{i}]: name and command must be strings")
            continue
        tasks.append(TaskSpec(str(name), command))
    return tuple(tasks)


def job_to_document(spec: JobSpec) -> dict[str, Any]:
    """The spec back as Afanasy's job mapping (what the store keeps)."""
    doc = attrs.asdict(spec, recurse=False)
    doc.pop("extra")
    doc.update(spec.extra)
    doc["custom_data"] = dict(spec.custom_data)
    doc["blocks"] = [_block_to_document(b) for b in spec.blocks]
    return doc


def _block_to_document(block: BlockSpec) -> dict[str, Any]:
    doc = attrs.asdict(block, recurse=False)
    doc["environment"] = dict(block.environment)
    doc["tickets"] = dict(block.tickets)
    if not block.numeric:
        doc["tasks"] = [{"name": t.name, "command": t.command} for t in block.tasks]
        for key in ("frame_first", "frame_last", "frames_per_task", "frames_inc"):
            del doc[key]
    else:
        del doc["tasks"]
    return doc
