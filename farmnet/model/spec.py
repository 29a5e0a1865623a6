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

import functools
import json
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from farmnet.convert import did_you_mean
from farmnet.errors import JobSpecError
from farmnet.model.blender import expand_blender_block
from farmnet.model.catalog import unknown_name_warning
from farmnet.model.masks import check_mask

_FRAME_PATTERN = re.compile(r"@(#+)@")

#: Afanasy block flag bits.
FLAG_NUMERIC = 1 << 0
#: Afanasy's multi-host flags (`af.Block.setMultiHost`, `setSlaveLostIgnore`).
FLAG_MULTIHOST = 1 << 2
FLAG_MASTER_ON_SLAVE = 1 << 3
FLAG_SLAVE_LOST_IGNORE = 1 << 8
#: Afanasy's TASK_MULTIHOSTMAXHOSTS.
MULTIHOST_MAX_HOSTS = 100
FLAG_VARCAPACITY = 1 << 1
#: Afanasy's skipthumbnails: the block's frames get no previews (farmnet/server/outputs.py).
FLAG_SKIP_THUMBNAILS = 1 << 5
FLAG_SKIP_EXISTING_FILES = 1 << 6
FLAG_CHECK_RENDERED_FILES = 1 << 7

#: Afanasy block flag bits that farmnet does not act on, with why (a warning names them).
_FLAGS_WITHOUT_EFFECT = {
    1 << 4: ("dependsubtask", "tasks_depend_mask waits for whole tasks"),
    1 << 9: ("appendedtasks", "set by Afanasy's server only"),
    1 << 10: ("suspendnewtasks", "new tasks are ready, never suspended"),
}

#: A block's numeric needs, in the order the scheduler checks them (Afanasy's Block::canRunOn).
NEED_KEYS = ("need_memory", "need_gpu_mem_mb", "need_cpu_freq_mgz", "need_cpu_cores", "need_cpu_freq_cores",
             "need_hdd", "need_power")

#: Keys CGRU's af.py writes that farmnet keeps (the job round-trips) but does not act on:
#: key → why. Submitting one with a value other than Afanasy's default gives a warning
#: "KEY: accepted but has no effect in farmnet (why)" — nothing is silently ignored.
NO_EFFECT_JOB = {
    "try_this_tasks_num": "no 'try this task first'; restart the task instead",
    "try_this_blocks_num": "no 'try this task first'; restart the task instead",
    "ppa": "no preview-pending-approval",
    "maintenance": "no maintenance jobs",
}
NO_EFFECT_BLOCK = {
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
    #: Multi-host tasks (Afanasy's ``setMultiHost``): each task takes multihost_min..max renders
    #: (0: an ordinary block); doc/jobs.md "Multi-host tasks".
    multihost_min: int = 0
    multihost_max: int = 0
    multihost_max_wait: int = 0
    multihost_service: str = ""
    multihost_service_wait: int = 0
    #: Flag ``masteronslave``: the primary's host is in its own hosts list.
    multihost_master_on_slave: bool = False
    #: Flag ``slavelostignore``: a lost secondary does not restart the task while one is left.
    multihost_slave_lost_ignore: bool = False
    #: Afanasy's block flags (numeric, varcapacity, skipexistingfiles, checkrenderedfiles, ...).
    flags: int = 0
    #: Needs (Afanasy's units): free memory MB, free disk GB (the render's disk_path), the render's
    #: power, free GPU memory MB, CPU MHz, CPU cores, MHz x cores; -1: none. need_properties: any
    #: of its words (split on ``|;,: ``) is in the render's properties.
    need_memory: int = -1
    need_hdd: int = -1
    need_power: int = -1
    need_gpu_mem_mb: int = -1
    need_cpu_freq_mgz: int = -1
    need_cpu_cores: int = -1
    need_cpu_freq_cores: int = -1
    need_properties: str = ""
    #: Variable capacity (the varcapacity flag): a task takes capacity x coeff, coeff the render's
    #: free capacity // capacity, at least capacity_coeff_min, at most capacity_coeff_max (0: no bound).
    capacity_coeff_min: int = 0
    capacity_coeff_max: int = 0
    #: Output files (``@#@`` filled per frame), relative to working_directory; their size bounds
    #: in bytes (-1: none), checked by the render with checkrenderedfiles / skipexistingfiles.
    files: tuple[str, ...] = ()
    file_size_min: int = -1
    file_size_max: int = -1
    #: Handed to the task's parser (Afanasy's parser_coeff); the built-in parsers do not use it.
    parser_coeff: int = 1

    @functools.cached_property
    def _command_parts(self) -> FrameParts:
        return frame_parts(self.command)

    @functools.cached_property
    def _tasks_name_parts(self) -> FrameParts:
        return frame_parts(self.tasks_name)

    @functools.cached_property
    def need_properties_words(self) -> tuple[str, ...]:
        return find_words(self.need_properties)

    @functools.cached_property
    def needs(self) -> tuple[tuple[str, int], ...]:
        """The numeric needs that are set, as (key, value): what the scheduler checks."""
        return tuple((key, value) for key in NEED_KEYS if (value := getattr(self, key)) > 0)

    @property
    def variable_capacity(self) -> bool:
        return bool(self.flags & FLAG_VARCAPACITY)

    @property
    def capacity_min(self) -> int:
        """The least capacity a task of this block takes (Afanasy's getCapMinResult)."""
        if self.variable_capacity and self.capacity_coeff_min > 0:
            return self.capacity * self.capacity_coeff_min
        return self.capacity

    def capacity_coeff(self, free: int) -> int:
        """The coefficient a task takes on a render with ``free`` capacity (0: not variable)."""
        if not self.variable_capacity:
            return 0
        coeff = free // self.capacity
        if self.capacity_coeff_max > 0:
            coeff = min(coeff, self.capacity_coeff_max)
        return max(coeff, self.capacity_coeff_min, 1)

    def task_files(self, number: int) -> list[str]:
        """The task's output files: every block file with ``@#@`` filled for each of its
        frames (Afanasy's processFilesPattern)."""
        if not self.files:
            return []
        start, end = self.frames(number)
        step = self.frames_inc if self.numeric else 1
        return [fill_frames(pattern, frame, frame) for pattern in self.files
                for frame in range(start, end + 1, step)]

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
        return self._frames_name(*self.frames(number))

    def _frames_name(self, start: int, end: int) -> str:
        if self.tasks_name:
            return fill_parts(self._tasks_name_parts, start, end)
        if start == end:
            return f"frame {start}"
        return f"frame {start}-{end}" + (f" / {self.frames_inc}" if self.frames_inc > 1 else "")

    def task_texts(self, number: int) -> tuple[str, str, int, int]:
        """The task's name, command, first and last frame (0, 0 unless numeric), the frames
        worked out once: every start order and run record needs them all."""
        if self.tasks or self.dynamic:
            return self.task_name(number), self.task_command(number), 0, 0
        # `frames`, `_frames_name` and `fill_parts` written out for the usual block (a call
        # each saved on every start).
        per_task, inc = self.frames_per_task, self.frames_inc
        start = self.frame_first + number * per_task * inc
        end = start + (per_task - 1) * inc
        if end > self.frame_last:
            end = self.frame_last - (self.frame_last - start) % inc
        texts, pads = self._command_parts
        command = (texts[0] + str(start).zfill(pads[0]) + texts[1] if len(pads) == 1
                   else fill_parts(self._command_parts, start, end))
        if self.tasks_name:
            return fill_parts(self._tasks_name_parts, start, end), command, start, end
        if start == end:
            return f"frame {start}", command, start, end
        return self._frames_name(start, end), command, start, end

    def task_command(self, number: int) -> str:
        if self.tasks:
            task_command = self.tasks[number].command
            if not task_command:
                return self.command
            if "@#@" in self.command:
                return self.command.replace("@#@", task_command)
            return self.command + task_command  # Afanasy appends, with no space between
        return fill_parts(self._command_parts, *self.frames(number))


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
    #: Afanasy's job needs: any word of need_os (split on ``|;,: ``) is in the render's OS
    #: ("unix linux 64 debian 12"); any word of need_properties is in its properties.
    need_os: str = ""
    need_properties: str = ""
    errors_retries: int = -1
    errors_avoid_host: int = -1
    errors_task_same_host: int = -1
    errors_forgive_time: int = -1
    custom_data: Mapping[str, Any] = attrs.field(factory=dict)
    #: Afanasy's per-pool job settings: pool path (or part of one) → value; -100 or less keeps
    #: the job out of the pools it matches, 100 or more keeps it in them (farmnet.model.pools).
    pools: Mapping[str, int] = attrs.field(factory=dict)
    #: The accepted, not yet effective keys, kept so the job round-trips.
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def tasks_count(self) -> int:
        return sum(b.tasks_count for b in self.blocks)

    @functools.cached_property
    def need_os_words(self) -> tuple[str, ...]:
        return find_words(self.need_os)

    @functools.cached_property
    def need_properties_words(self) -> tuple[str, ...]:
        return find_words(self.need_properties)


def fill_frames(pattern: str, start: int, end: int) -> str:
    """Afanasy's fillNumbers: first ``@#@`` → start, second → end, then alternate."""
    return fill_parts(frame_parts(pattern), start, end)


FrameParts = tuple[tuple[str, ...], tuple[int, ...]]


def frame_parts(pattern: str) -> FrameParts:
    """A pattern cut at its ``@#@``: the text around them and the padding of each (a block
    keeps its command's, so filling a task's frames costs no regular expression)."""
    pieces = _FRAME_PATTERN.split(pattern)
    return tuple(pieces[0::2]), tuple(len(hashes) for hashes in pieces[1::2])


def fill_parts(parts: FrameParts, start: int, end: int) -> str:
    texts, pads = parts
    if not pads:
        return texts[0]
    if len(pads) == 1:  # the usual command, "render -f @####@": no list to join
        return texts[0] + str(start).zfill(pads[0]) + texts[1]
    out = [texts[0]]
    for i, pad in enumerate(pads):
        out.append(str(end if i % 2 else start).zfill(pad))
        out.append(texts[i + 1])
    return "".join(out)


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


def _files(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # one file
        return (value,) if value else ()
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of file names, got {type(value).__name__}")
    return tuple(_str(item) for item in value)


def afanasy_find(pattern: str, text: str) -> bool:
    """Afanasy's "find, contain" masks (need_os, need_properties): true when the pattern is empty
    or any of its words (split on ``|;,: ``) is in ``text``."""
    return words_found(find_words(pattern), text)


def find_words(pattern: str) -> tuple[str, ...]:
    return tuple(word for word in _FIND_SEPARATORS.split(pattern) if word)


def words_found(words: tuple[str, ...], text: str) -> bool:
    if not words:
        return True
    for word in words:  # a loop, not any(): it runs for every job and render a solve looks at
        if word in text:
            return True
    return False


_FIND_SEPARATORS = re.compile(r"[|;,: ]")


def _pools(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of pool paths to numbers, got {type(value).__name__}")
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
    "tickets": _tickets, "dynamic": _bool, "flags": _int,
    "multihost_min": _at_least(0), "multihost_max": _at_least(0), "multihost_max_wait": _at_least(0),
    "multihost_service": _str, "multihost_service_wait": _at_least(0),
    "multihost_master_on_slave": _bool, "multihost_slave_lost_ignore": _bool,
    **dict.fromkeys(NEED_KEYS, _int), "need_properties": _str,
    "capacity_coeff_min": _int, "capacity_coeff_max": _int, "files": _files,
    "file_size_min": _int, "file_size_max": _int, "parser_coeff": _int,
}
_JOB_FIELDS: dict[str, Callable[[Any], Any]] = {
    "user_name": _str, "host_name": _str, "priority": _at_least(0), "depend_mask": _regex,
    "depend_mask_global": _regex, "max_running_tasks": _int, "max_running_tasks_per_host": _int,
    "hosts_mask": _regex, "hosts_mask_exclude": _regex, "time_wait": _int, "time_life": _int,
    "time_creation": _int, "command_pre": _str, "command_post": _str,
    "annotation": _str, "description": _str, "project": _str, "department": _str,
    "offline": _bool, "ignorenimby": _bool, "ignorepaused": _bool, "custom_data": _custom_data,
    "need_os": _str, "need_properties": _str,
    "errors_retries": _int,
    "errors_avoid_host": _int, "errors_task_same_host": _int, "errors_forgive_time": _int,
    "pools": _pools,
}
MAX_PRIORITY = 250  # Afanasy's range is 0..250

#: What `set` may change on a running job / block, with the same validation as a submit.
JOB_SETTABLE = frozenset(_JOB_FIELDS) - {"user_name", "host_name", "offline", "custom_data", "time_life",
                                         "time_creation", "command_pre", "ignorenimby", "ignorepaused"}
#: Job keys kept in `JobSpec.extra` that do have an effect: ``folders`` (statistics group by it),
#: ``branch`` (the job's branch, farmnet.model.pools).
_KEPT_JOB = frozenset({"folders", "branch"})
BLOCK_SETTABLE = frozenset(
    {"capacity", "max_running_tasks", "max_running_tasks_per_host", "hosts_mask", "hosts_mask_exclude",
     "depend_mask", "tasks_depend_mask", "errors_retries", "errors_avoid_host", "errors_task_same_host",
     "errors_forgive_time", "task_max_run_time", "task_min_run_time", "task_progress_change_timeout",
     "service", "parser", "tickets", "sequential", *NEED_KEYS, "need_properties"})


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


def parse_job(document: Any, max_tasks: int = 1_000_000, *, known_services: Collection[str] | None = None,
              known_parsers: Collection[str] | None = None) -> tuple[JobSpec, list[str]]:
    """Validate a job description; return the spec and its warnings.

    Raises `JobSpecError` naming every invalid key at once.  With ``known_services`` /
    ``known_parsers`` (what the farm's renders run), a block naming another gets a warning: its
    tasks run with the generic service or parser.
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
    for i, block in enumerate(blocks):
        _unknown_names(c, block, f"job.blocks[{i}]", known_services, known_parsers)
    if c.errors:
        raise JobSpecError("invalid job: " + "; ".join(c.errors))

    extra = {k: document[k] for k in (*NO_EFFECT_JOB, *_KEPT_JOB) if k in document}
    given = {k: v for k, v in values.items() if v is not None}
    return JobSpec(name=name, blocks=tuple(blocks), extra=extra, **given), c.warnings


def _unknown_names(c: _Collector, block: BlockSpec, path: str, services: Collection[str] | None,
                   parsers: Collection[str] | None) -> None:
    for kind, name, known in (("service", block.service, services), ("parser", block.parser, parsers)):
        if known is None:
            continue
        warning = unknown_name_warning(block.name, kind, name, known, did_you_mean(name, sorted(known)))
        if warning is not None:
            c.warnings.append(f"{path}.{kind}: {warning}")


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
    _variable_capacity_and_files(c, values, flags, path)
    for bit, (flag, why) in _FLAGS_WITHOUT_EFFECT.items():
        if flags & bit:
            c.warnings.append(f"{path}.flags: {flag} accepted but has no effect in farmnet ({why})")
    _multihost(c, values, flags, path)
    known = [*_BLOCK_FIELDS, *NO_EFFECT_BLOCK, "flags", "name", "tasks"]
    for key in raw:
        if key not in known:
            c.warnings.append(f"{path}.{key}: unknown key, ignored{did_you_mean(str(key), known)}")
    _no_effect(c, raw, NO_EFFECT_BLOCK, path)
    if len(c.errors) > errors_before:
        return None
    given = {k: v for k, v in values.items() if v is not None}
    return BlockSpec(name=name, tasks=tasks, **given)


def _multihost(c: _Collector, values: dict[str, Any], flags: int, path: str) -> None:
    """Afanasy's multi-host settings: the ``multihost`` flag (af.py's ``setMultiHost``) or, in a
    YAML job, ``multihost_min`` alone makes a block multi-host; checked as ``setMultiHost`` does."""
    if flags & FLAG_MASTER_ON_SLAVE:
        values["multihost_master_on_slave"] = True
    if flags & FLAG_SLAVE_LOST_IGNORE:
        values["multihost_slave_lost_ignore"] = True
    low, high = values["multihost_min"] or 0, values["multihost_max"]
    if not flags & FLAG_MULTIHOST and not low:
        for key in ("multihost_max", "multihost_max_wait", "multihost_service", "multihost_service_wait",
                    "multihost_master_on_slave", "multihost_slave_lost_ignore"):
            if values[key]:
                c.warnings.append(f"{path}.{key}: the block is not multi-host (no multihost flag, no "
                                  f"multihost_min): ignored")
                values[key] = None
        return
    if low < 1:
        c.errors.append(f"{path}.multihost_min: a multi-host block needs at least 1 host, got {low}")
        return
    high = low if high is None else high
    if high < low:
        c.errors.append(f"{path}.multihost_max: {high} is less than multihost_min {low}")
    elif high > MULTIHOST_MAX_HOSTS:
        c.errors.append(f"{path}.multihost_max: at most {MULTIHOST_MAX_HOSTS} hosts (Afanasy's limit), "
                        f"got {high}")
    values["multihost_max"] = high
    if values["multihost_master_on_slave"] and values["multihost_service"]:
        c.warnings.append(f"{path}.flags: masteronslave is dropped: a block with a multihost_service "
                          f"cannot run its primary on a secondary host, as in Afanasy")
        values["multihost_master_on_slave"] = None


def _variable_capacity_and_files(c: _Collector, values: dict[str, Any], flags: int, path: str) -> None:
    """Afanasy turns variable capacity on when either coefficient is given (negatives taken as
    0), and checks files only with the checkrenderedfiles or skipexistingfiles flag."""
    given = [values[k] for k in ("capacity_coeff_min", "capacity_coeff_max") if values[k] is not None]
    if any(v != -1 for v in given):
        flags |= FLAG_VARCAPACITY
        for key in ("capacity_coeff_min", "capacity_coeff_max"):
            values[key] = max(0, values[key] or 0)
    values["flags"] = flags
    checking = flags & (FLAG_CHECK_RENDERED_FILES | FLAG_SKIP_EXISTING_FILES)
    if checking and not values["files"]:
        c.warnings.append(f"{path}.flags: checkrenderedfiles/skipexistingfiles without files check nothing")
    if not checking:  # files without a checking flag are still the task's previews (doc/web.md)
        for key in ("file_size_min", "file_size_max"):
            if values[key] not in (None, -1, 0):
                c.warnings.append(f"{path}.{key}: accepted but has no effect in farmnet (sizes are checked "
                                  "only with the checkrenderedfiles or skipexistingfiles flag)")


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
