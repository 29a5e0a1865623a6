"""Job descriptions: Afanasy's format, validated into immutable specs.

A job arrives as CGRU's ``af.py`` writes it (``{"job": {...}}``) or as the bare job
mapping, from JSON or YAML. Every key keeps Afanasy's name. Unknown keys give a warning,
never a crash; an invalid value gives one `JobSpecError` naming every bad key. A key af.py
writes that farmnet keeps without acting on it gives a warning saying so (`NO_EFFECT_JOB`,
`NO_EFFECT_BLOCK`, `NO_EFFECT_TASK`; doc/afanasy-keys.md).

Frames: in a numeric block, task ``i`` covers ``frames_per_task`` frames stepping by
``frames_inc`` from ``frame_first``. In a command, the first ``@#@`` becomes the task's
first frame and the second its last; the number of ``#`` is the zero padding
(``@####@`` → ``0007``). In an explicit block, every ``@#@`` of the block command is
replaced by the task's command, or the task's command is appended to a block command
without ``@#@`` (an empty block command runs the task's command as is).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from farmnet.convert import did_you_mean
from farmnet.errors import JobSpecError
from farmnet.model.blender import expand_blender_block
from farmnet.model.masks import check_mask

_FRAME_PATTERN = re.compile(r"@(#+)@")

#: Afanasy block flag bits.
FLAG_NUMERIC = 1 << 0

#: Afanasy block flag bits that farmnet does not act on, with why (a warning names them).
_FLAGS_WITHOUT_EFFECT = {
    1 << 1: ("varcapacity", "variable capacity is issue 14, later"),
    1 << 2: ("multihost", "multi-host tasks are issue 14, later"),
    1 << 3: ("masteronslave", "multi-host tasks are issue 14, later"),
    1 << 4: ("dependsubtask", "tasks_depend_mask waits for whole tasks"),
    1 << 6: ("skipexistingfiles", "renders do not check task files"),
    1 << 7: ("checkrenderedfiles", "renders do not check task files"),
    1 << 8: ("slavelostignore", "multi-host tasks are issue 14, later"),
    1 << 9: ("appendedtasks", "set by Afanasy's server only"),
    1 << 10: ("suspendnewtasks", "new tasks are ready, never suspended"),
}
_ISSUE_14 = "is issue 14, later"

#: Keys CGRU's af.py writes that farmnet keeps (the job round-trips) but does not act on:
#: key → why. Submitting one with a value other than Afanasy's default gives a warning
#: "KEY: accepted but has no effect in farmnet (why)" — nothing is silently ignored.
NO_EFFECT_JOB = {
    "pools": f"render pools {_ISSUE_14}",
    "branch": f"branches {_ISSUE_14}",
    "need_os": f"needs (need_os) {_ISSUE_14}",
    "need_properties": f"needs (need_properties) {_ISSUE_14}",
    "try_this_tasks_num": "no 'try this task first'; restart the task instead",
    "try_this_blocks_num": "no 'try this task first'; restart the task instead",
    "ppa": "no preview-pending-approval",
    "maintenance": "no maintenance jobs",
}
NO_EFFECT_BLOCK = {
    "capacity_coeff_min": f"variable capacity (capacity_coeff) {_ISSUE_14}",
    "capacity_coeff_max": f"variable capacity (capacity_coeff) {_ISSUE_14}",
    "multihost_min": f"multi-host tasks {_ISSUE_14}",
    "multihost_max": f"multi-host tasks {_ISSUE_14}",
    "multihost_max_wait": f"multi-host tasks {_ISSUE_14}",
    "multihost_service": f"multi-host tasks {_ISSUE_14}",
    "multihost_service_wait": f"multi-host tasks {_ISSUE_14}",
    "need_memory": f"needs (need_memory) {_ISSUE_14}",
    "need_hdd": f"needs (need_hdd) {_ISSUE_14}",
    "need_power": f"needs (need_power) {_ISSUE_14}",
    "need_properties": f"needs (need_properties) {_ISSUE_14}",
    "need_gpu_mem_mb": f"needs (need_gpu_mem_mb) {_ISSUE_14}",
    "need_cpu_freq_mgz": f"needs (need_cpu_freq_mgz) {_ISSUE_14}",
    "need_cpu_cores": f"needs (need_cpu_cores) {_ISSUE_14}",
    "need_cpu_freq_cores": f"needs (need_cpu_freq_cores) {_ISSUE_14}",
    "files": "no previews and no file checks",
    "file_size_min": "renders do not check task files",
    "file_size_max": "renders do not check task files",
    "parser_coeff": "progress is taken from the parser as it is",
    "custom_data": "only a job's custom_data is read (events)",
}
NO_EFFECT_TASK = {"files": "no previews and no file checks"}


def _no_effect(c: _Collector, data: Mapping[str, Any], table: Mapping[str, str], path: str) -> None:
    """Warn for every key of ``table`` given with a value that would do something in Afanasy."""
    for key, why in table.items():
        if data.get(key) not in (None, "", False, 0, -1, [], {}):
            c.warnings.append(f"{path}.{key}: accepted but has no effect in farmnet ({why})")


@attrs.frozen
class TaskSpec:
    """An explicit task: its name, the command that fills the block's ``@#@`` (or is
    appended to it), and variables laid over the block's environment."""

    name: str
    command: str
    environment: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class BlockSpec:
    name: str
    command: str = ""
    service: str = "generic"
    parser: str = "generic"
    capacity: int = 1000
    working_directory: str = ""
    environment: Mapping[str, str] = attrs.field(factory=dict)
    command_pre: str = ""
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
        """First and last frame of task ``number``. Numeric: the last task's end is snapped
        down onto the step (1-20, 3 per task, by 2: the last task is 19-19, as in Afanasy).
        Explicit: task ``n`` covers ``frames_per_task`` frames from ``n * frames_per_task``
        (what ``tasks_depend_mask`` matches), or, when negative, ``-frames_per_task`` tasks
        share one frame (sub-frame tasks: tiles of a frame)."""
        if self.tasks or self.dynamic:  # explicit (not the `numeric` property: a hot path)
            if self.frames_per_task < 0:
                frame = number // -self.frames_per_task
                return frame, frame
            start = number * self.frames_per_task
            return start, start + self.frames_per_task - 1
        per_task, inc = self.frames_per_task, self.frames_inc
        start = self.frame_first + number * per_task * inc
        end = start + (per_task - 1) * inc
        if end > self.frame_last:  # only the last task: its end snapped onto the step
            end = self.frame_last - (self.frame_last - start) % inc
        return start, end

    def tasks_covering(self, start: int, end: int) -> range:
        """Numbers of this block's tasks whose frames overlap ``start..end``."""
        count = self.tasks_count
        if self.numeric:
            if end < self.frame_first or start > self.frame_last:
                return range(0)
            span = self.frames_per_task * self.frames_inc
            first, last = (start - self.frame_first) // span, (end - self.frame_first) // span
        elif self.frames_per_task < 0:
            first, last = start * -self.frames_per_task, (end + 1) * -self.frames_per_task - 1
        else:
            first, last = start // self.frames_per_task, end // self.frames_per_task
        return range(max(0, first), min(count - 1, last) + 1)

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
            if not task_command:
                return self.command
            if "@#@" in self.command:
                return self.command.replace("@#@", task_command)
            return self.command + task_command  # Afanasy appends, with no space between
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
    #: Seconds from its creation after which the job is deleted (-1: never).
    time_life: int = -1
    #: The client's creation time (af.py writes it); 0: the server's clock.
    time_creation: int = 0
    command_pre: str = ""
    command_post: str = ""
    annotation: str = ""
    description: str = ""
    project: str = ""
    department: str = ""
    offline: bool = False
    #: Afanasy's job flags: run on nimby / NIMBY renders, on paused renders.
    ignorenimby: bool = False
    ignorepaused: bool = False
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
    "working_directory": _str, "environment": _environment, "command_pre": _str, "command_post": _str,
    "frame_first": _int, "frame_last": _int, "frames_per_task": _int,
    "frames_inc": _int, "tasks_name": _str, "sequential": _int,
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
    "hosts_mask": _regex, "hosts_mask_exclude": _regex, "time_wait": _int, "time_life": _int,
    "time_creation": _int, "command_pre": _str, "command_post": _str,
    "annotation": _str, "description": _str, "project": _str, "department": _str,
    "offline": _bool, "ignorenimby": _bool, "ignorepaused": _bool, "custom_data": _custom_data,
    "errors_retries": _int,
    "errors_avoid_host": _int, "errors_task_same_host": _int, "errors_forgive_time": _int,
}
MAX_PRIORITY = 250  # Afanasy's range is 0..250

#: What `set` may change on a running job / block, with the same validation as a submit.
JOB_SETTABLE = frozenset(_JOB_FIELDS) - {"user_name", "host_name", "offline", "custom_data", "time_life",
                                         "time_creation", "command_pre", "ignorenimby", "ignorepaused"}
#: Job keys kept in `JobSpec.extra` that do have an effect: ``folders`` (statistics group by it).
_KEPT_JOB = frozenset({"folders"})
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
    total = sum(b.tasks_count for b in blocks)
    if total > max_tasks:
        c.errors.append(f"job.blocks: {total} tasks is more than this farm's limit of {max_tasks}")

    known = [*_JOB_FIELDS, *NO_EFFECT_JOB, *_KEPT_JOB, "name", "blocks"]
    for key in document:
        if key not in known:
            c.warnings.append(f"job.{key}: unknown key, ignored{did_you_mean(str(key), known)}")
    _no_effect(c, document, NO_EFFECT_JOB, "job")
    if c.errors:
        raise JobSpecError("invalid job: " + "; ".join(c.errors))

    extra = {k: document[k] for k in (*NO_EFFECT_JOB, *_KEPT_JOB) if k in document}
    given = {k: v for k, v in values.items() if v is not None}
    return JobSpec(name=name, blocks=tuple(blocks), extra=extra, **given), c.warnings


def _parse_block(c: _Collector, raw: Any, path: str) -> BlockSpec | None:
    if not isinstance(raw, Mapping):
        c.errors.append(f"{path}: expected a mapping, got {type(raw).__name__}")
        return None
    errors_before = len(c.errors)
    raw, blender_errors = expand_blender_block(raw, path)  # the Blender job type (farmnet.model.blender)
    c.errors.extend(blender_errors)
    name = c.get(raw, "name", path, _str, "")
    if not name:
        c.errors.append(f"{path}.name: a block needs a name")
    values = {k: c.get(raw, k, path, kind, None) for k, kind in _BLOCK_FIELDS.items()}
    tasks = _parse_tasks(c, raw.get("tasks"), path)
    flags = c.get(raw, "flags", path, _int, 0)
    numeric = not tasks and not values["dynamic"]
    per_task, inc = values["frames_per_task"], values["frames_inc"]
    if inc is not None and inc < 1:
        c.warnings.append(f"{path}.frames_inc: {inc} is taken as 1, as Afanasy does")
        values["frames_inc"] = 1
    if per_task == 0 or (numeric and per_task is not None and per_task < 0):
        why = "a numeric block's tasks have at least one frame" if per_task else "0 frames per task"
        c.warnings.append(f"{path}.frames_per_task: {per_task} is taken as 1, as Afanasy does ({why})")
        values["frames_per_task"] = 1
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
    for bit, (flag, why) in _FLAGS_WITHOUT_EFFECT.items():
        if flags & bit:
            c.warnings.append(f"{path}.flags: {flag} accepted but has no effect in farmnet ({why})")
    known = [*_BLOCK_FIELDS, *NO_EFFECT_BLOCK, "flags", "name", "tasks"]
    for key in raw:
        if key not in known:
            c.warnings.append(f"{path}.{key}: unknown key, ignored{did_you_mean(str(key), known)}")
    _no_effect(c, raw, NO_EFFECT_BLOCK, path)
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
        environment = c.get(item, "environment", f"{path}.tasks[{i}]", _environment, {})
        known = ["name", "command", "environment", *NO_EFFECT_TASK]
        for key in item:
            if key not in known:
                c.warnings.append(f"{path}.tasks[{i}].{key}: unknown key, ignored"
                                  f"{did_you_mean(str(key), known)}")
        _no_effect(c, item, NO_EFFECT_TASK, f"{path}.tasks[{i}]")
        tasks.append(TaskSpec(str(name), command, environment))
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
        doc["tasks"] = [{"name": t.name, "command": t.command, "environment": dict(t.environment)}
                        for t in block.tasks]
        for key in ("frame_first", "frame_last", "frames_inc"):
            del doc[key]
    else:
        del doc["tasks"]
    return doc
