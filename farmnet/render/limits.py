"""Per-task resource limits on the render: a memory cap for each task, and the memory it used.

A runaway task must not take the render's host down, and a task that runs out of memory must say so
instead of ending with a bare "signal KILL" or "exit status 1".

Which limit a task gets
-----------------------
The render's ``tasks.memory_limit_mb`` (0: none) is the host's protection, and every task gets it.  The
job format has no per-task cap: Afanasy's block ``need_memory`` is what a task needs *free* on a host to
be given it (a scheduling requirement), not a cap, so a start order carries none.

How the limit is applied (render setting ``tasks.limit_method``)
---------------------------------------------------------------
``"cgroup"``
    ``systemd-run [--user] --scope -p MemoryMax=BYTES`` in the task's exec chain: all the task's
    processes together are held to the limit, counting what they really use (resident memory and
    page cache), and the kernel kills the task's largest process when it cannot reclaim enough.
    Needs systemd as the running init (or user manager for a non-root render) and cgroup v2.
``"rlimit"``
    ``RLIMIT_AS`` (address space) set in the child just before the shell is exec'd, by util-linux
    ``prlimit --as=BYTES --`` or, without it, a two-line Python wrapper.  Each of the task's processes
    gets the limit on its own (a pipeline of three may use three times it), and it counts *virtual*
    memory, which can be much more than resident: multi-threaded programs reserve address space
    generously (glibc's malloc arenas, JVMs, GPU drivers), so give it headroom.  An allocation past the
    limit fails: Python raises MemoryError, C++ throws std::bad_alloc, C code gets NULL and usually
    dies with a message, an abort or a segfault.
``"auto"`` (the default)
    ``"cgroup"`` when a trial ``systemd-run`` scope really gets its ``MemoryMax`` (see
    :meth:`TaskLimiter.resolve`), else ``"rlimit"``.  The render logs the method it uses, once.

The chain stays ``setsid WRAPPER... /bin/sh -c COMMAND``: setsid(1), prlimit(1), ``systemd-run --scope``
and the Python wrapper all exec in place, so the task's pid is still its session and process group id.

Telling an out-of-memory end
----------------------------
A task that failed (non-zero exit or a signal; not one killed on purpose) while it had a limit is
reported as out of memory (:attr:`farmnet.render.process.TaskExit.reason`) when any of these holds:

- cgroup: the scope's ``memory.events`` counted an ``oom_kill`` (read while the task runs and once more
  when its main process exits, while the scope may still exist);
- cgroup: it was killed by SIGKILL (or its shell exited 137) with its resident peak at 90% of the limit;
- rlimit: the ``VmPeak`` of one of its processes reached 90% of the limit;
- either: the end of its output shows an allocation failure (MemoryError, std::bad_alloc, "Cannot
  allocate memory", "memory exhausted", "out of memory", ...).  A heuristic: a task that prints such a
  line for reasons of its own and fails is reported as out of memory too.

Peak memory
-----------
:class:`MemoryWatch` samples ``/proc/PID/status`` of the task's processes (found by walking
``/proc/PID/task/*/children`` from the task's pid, or by session id when the kernel lacks that file)
about every half second, whatever the limit: ``peak_memory_mb`` is the larger of the biggest total
resident size seen in one sample and the biggest ``VmHWM`` (a process's own resident peak, so spikes
between samples count) of any one process.  Processes that live less than a sample interval are not
seen, and a task that ends within the first 0.1 s has no peak at all (None).
"""

from __future__ import annotations

import math
import os
import re
import resource
import shutil
import signal as _signal
import subprocess
import sys
from collections.abc import Callable

from twisted.logger import Logger

__all__ = [
    "METHODS",
    "OUTPUT_TAIL",
    "MemoryWatch",
    "TaskLimiter",
    "oom_reason",
    "rlimit_prefix",
]

_logger = Logger(namespace="farmnet.render.limits")

#: The values of the render setting ``tasks.limit_method``.
METHODS = ("auto", "rlimit", "cgroup")

_MB = 1 << 20
#: Reaching this share of the limit counts as having hit it (see the module docstring).
_NEAR = 0.9
#: An allocation failure near the end of a task's output.
_OOM_TEXT = re.compile(
    rb"MemoryError|OutOfMemory|out of memory|cannot allocate memory|memory exhausted|bad_alloc"
    rb"|failed to allocate|\bENOMEM\b",
    re.IGNORECASE,
)
#: How much of the end of the output is searched for ``_OOM_TEXT``.
OUTPUT_TAIL = 4096
# Used when there is no prlimit(1): set RLIMIT_AS, then become the next program, keeping the pid.
_PY_RLIMIT = (
    "import os,resource,sys; n=int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_AS,(n,n)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
# The systemd probe: in a trial scope with MemoryMax=1 GiB, print the scope's memory.max.
_PROBE_BYTES = 1 << 30
_PROBE_SCRIPT = 'read -r line < /proc/self/cgroup; cat "/sys/fs/cgroup${line#0::}/memory.max"'
_PROBE_TIMEOUT = 10.0


def _limit_bytes(limit_mb: int) -> int:
    """``limit_mb`` in bytes, lowered to the render's own hard RLIMIT_AS (which a child cannot raise)."""
    wanted = limit_mb * _MB
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def rlimit_prefix(limit_mb: int, tool_path: str | None = None) -> list[str]:
    """The argv prefix that runs the rest of an argv with RLIMIT_AS at ``limit_mb`` MB (none for 0)."""
    if limit_mb <= 0:
        return []
    limit = _limit_bytes(limit_mb)
    prlimit = shutil.which("prlimit", path=tool_path or os.defpath)
    if prlimit is not None:
        return [prlimit, f"--as={limit}", "--"]
    return [sys.executable, "-c", _PY_RLIMIT, str(limit)]


def _cgroup_prefix(systemd_run: str, user: bool, limit_mb: int) -> list[str]:
    # --collect: a scope whose task was OOM-killed ends "failed"; do not leave one loaded per such task.
    return [
        systemd_run,
        *(["--user"] if user else []),
        "--scope",
        "--quiet",
        "--collect",
        "-p",
        f"MemoryMax={limit_mb * _MB}",
        "--",
    ]


def oom_reason(limit_mb: int) -> str:
    """The reason a task that ran out of memory is given."""
    return f"out of memory: task exceeded its {limit_mb} MB memory limit"


class TaskLimiter:
    """How this render applies memory limits: one per render, made from its ``tasks.limit_method``.

    The method is settled once, on the first :meth:`resolve` (the render should call it when it starts:
    probing systemd runs a few short commands, blocking for up to seconds on a broken D-Bus), and logged
    then.  ``tool_path`` is the PATH that prlimit, systemctl and systemd-run are looked up on (the
    render's own, never a job's).  ``probe`` replaces the systemd probe (tests): it returns None when
    cgroup limits work, else why not.
    """

    def __init__(
        self,
        method: str = "auto",
        *,
        tool_path: str | None = None,
        probe: Callable[[], str | None] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"task_limit_method must be one of {', '.join(METHODS)}, not {method!r}")
        self.requested = method
        self._tool_path = tool_path or os.defpath
        self._probe = probe if probe is not None else self._probe_systemd
        self._user = os.geteuid() != 0
        self._method: str | None = None

    @property
    def method(self) -> str:
        """``"rlimit"`` or ``"cgroup"``: what limits are applied with (resolved on first use)."""
        return self.resolve()

    def resolve(self) -> str:
        """Settle the method (once) and log it; returns ``"rlimit"`` or ``"cgroup"``."""
        if self._method is not None:
            return self._method
        if self.requested == "rlimit":
            self._method = "rlimit"
            _logger.info("task memory limits: RLIMIT_AS per process (tasks.limit_method: rlimit)")
            return self._method
        problem = self._probe()
        if problem is None:
            self._method = "cgroup"
            _logger.info(
                "task memory limits: cgroup MemoryMax through systemd-run {mode} scopes "
                "(tasks.limit_method: {requested})",
                mode="--user" if self._user else "system",
                requested=self.requested,
            )
        else:
            self._method = "rlimit"
            emit = _logger.warn if self.requested == "cgroup" else _logger.info
            emit(
                "task memory limits: RLIMIT_AS per process; cgroup limits unusable: {problem} "
                "(tasks.limit_method: {requested})",
                problem=problem,
                requested=self.requested,
            )
        return self._method

    def prefix(self, limit_mb: int) -> tuple[str | None, list[str]]:
        """The method (None: no limit) and the argv prefix, to go between setsid and the shell, that hold
        a task to ``limit_mb`` MB (0: none)."""
        if limit_mb <= 0:
            return None, []
        if self.resolve() == "cgroup":
            systemd_run = shutil.which("systemd-run", path=self._tool_path)
            if systemd_run is not None:
                return "cgroup", _cgroup_prefix(systemd_run, self._user, limit_mb)
            _logger.warn("systemd-run is gone from PATH: RLIMIT_AS for this task")
        return "rlimit", rlimit_prefix(limit_mb, self._tool_path)

    def _probe_systemd(self) -> str | None:
        """None when a transient scope really gets its MemoryMax, else what is missing."""
        systemctl = shutil.which("systemctl", path=self._tool_path)
        systemd_run = shutil.which("systemd-run", path=self._tool_path)
        if systemctl is None or systemd_run is None:
            return "no systemctl/systemd-run on PATH"
        if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            return "no cgroup v2 hierarchy at /sys/fs/cgroup"
        user = ["--user"] if self._user else []
        try:
            state = subprocess.run(
                [systemctl, *user, "is-system-running"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"systemctl is-system-running failed: {e}"
        status = state.stdout.strip() or state.stderr.strip() or f"exit status {state.returncode}"
        if status not in ("running", "degraded"):
            return f"systemd{' user manager' if user else ''} is {status!r}"
        try:
            probe_argv = _cgroup_prefix(systemd_run, self._user, _PROBE_BYTES // _MB)
            trial = subprocess.run(
                [*probe_argv, "/bin/sh", "-c", _PROBE_SCRIPT],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"trial systemd-run scope failed: {e}"
        if trial.returncode != 0 or trial.stdout.strip() != str(_PROBE_BYTES):
            said = (trial.stderr.strip() or trial.stdout.strip()).splitlines()
            return (
                f"a trial systemd-run scope did not get MemoryMax (exit status {trial.returncode}"
                + (f": {said[-1]}" if said else "")
                + "; is the memory controller delegated?)"
            )
        return None


def _read_status(proc: str, pid: int) -> tuple[int, int, int] | None:
    """VmRSS, VmHWM and VmPeak of ``pid`` in bytes; None for a process that is gone or a zombie."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            data = f.read()
    except OSError:
        return None
    values = {b"VmRSS:": 0, b"VmHWM:": 0, b"VmPeak:": 0}
    found = False
    for line in data.splitlines():
        key = line[:7].rstrip()
        if key in values:
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                values[key] = int(fields[1]) * 1024  # "VmRSS:   1234 kB"
                found = True
    if not found:
        return None
    return values[b"VmRSS:"], values[b"VmHWM:"], values[b"VmPeak:"]


def _unified_cgroup(proc: str, pid: int | str) -> str | None:
    """The cgroup v2 path of ``pid`` ("/user.slice/..."), or None."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


class MemoryWatch:
    """Samples the memory of one task's processes: :attr:`peak_bytes`, :attr:`vm_peak_bytes` and, for a
    task in a systemd scope (``cgroup``), :attr:`oom_kills`.

    ``pid`` is the task's pid, which is also its session id.  The owner calls :meth:`sample` every
    half second or so while that process lives (never after it is reaped: its pid may be reused), and
    :meth:`finish` once it has exited.  Reading a few small /proc files per process, it is cheap.
    """

    def __init__(
        self,
        pid: int,
        *,
        cgroup: bool = False,
        proc: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
    ) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self.vm_peak_bytes = 0
        self.oom_kills = 0
        self.samples = 0
        self._proc = proc
        self._cgroup_root = cgroup_root
        self._by_session = False
        self._cgroup = cgroup
        self._cgroup_dir: str | None = None
        self._render_cgroup = _unified_cgroup(proc, "self") if cgroup else None

    @property
    def peak_mb(self) -> int | None:
        """The peak in whole MB (rounded up), or None when nothing was measured."""
        return math.ceil(self.peak_bytes / _MB) if self.peak_bytes > 0 else None

    def sample(self) -> None:
        total_rss = 0
        for pid in self._members():
            status = _read_status(self._proc, pid)
            if status is None:
                continue
            rss, hwm, vm_peak = status
            total_rss += rss
            self.peak_bytes = max(self.peak_bytes, hwm)
            self.vm_peak_bytes = max(self.vm_peak_bytes, vm_peak)
        self.peak_bytes = max(self.peak_bytes, total_rss)
        self.samples += 1
        if self._cgroup:
            if self._cgroup_dir is None:
                self._find_cgroup()
            self._read_events()

    def finish(self) -> None:
        """The main process has exited: read the scope's OOM count a last time, if it is still there."""
        if self._cgroup:
            self._read_events()

    def out_of_memory(self, limit_mb: int, exit_code: int | None, signal: int | None, tail: bytes) -> bool:
        """Whether a task with this watch that failed like this hit its limit (see the module docstring)."""
        if limit_mb <= 0 or (exit_code == 0 and signal is None):
            return False
        near = _NEAR * limit_mb * _MB
        if self._cgroup:
            if self.oom_kills > 0:
                return True
            if (signal == _signal.SIGKILL or exit_code == 128 + _signal.SIGKILL) and self.peak_bytes >= near:
                return True
        elif self.vm_peak_bytes >= near:
            return True
        return _OOM_TEXT.search(tail) is not None

    # -- internals -------------------------------------------------------------------------------------

    def _members(self) -> list[int]:
        """The task's processes: its pid and every descendant (or every process of its session)."""
        if self._by_session:
            return self._session_members()
        members: list[int] = []
        stack = [self.pid]
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            members.append(pid)
            try:
                threads = os.listdir(f"{self._proc}/{pid}/task")
            except OSError:
                continue  # gone meanwhile
            for tid in threads:
                try:
                    with open(f"{self._proc}/{pid}/task/{tid}/children", "rb") as f:
                        stack.extend(int(child) for child in f.read().split())
                except FileNotFoundError:
                    if os.path.isdir(f"{self._proc}/{pid}/task/{tid}"):
                        # The kernel has no children files (CONFIG_PROC_CHILDREN): use sessions.
                        self._by_session = True
                        return self._session_members()
                except (OSError, ValueError):
                    pass
        return members

    def _session_members(self) -> list[int]:
        members = []
        try:
            names = os.listdir(self._proc)
        except OSError:
            return [self.pid]
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(f"{self._proc}/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp session ...": the comm may hold anything but its last ")".
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 3 and fields[3] == str(self.pid).encode():
                members.append(int(name))
        return members

    def _find_cgroup(self) -> None:
        # Until systemd-run has moved itself into its scope, the task is still in the render's cgroup.
        path = _unified_cgroup(self._proc, self.pid)
        if path and path != self._render_cgroup and path.endswith(".scope"):
            self._cgroup_dir = self._cgroup_root + path

    def _read_events(self) -> None:
        if self._cgroup_dir is None:
            return
        try:
            with open(f"{self._cgroup_dir}/memory.events", "rb") as f:
                for line in f:
                    name, _, count = line.partition(b" ")
                    if name == b"oom_kill" and count.strip().isdigit():
                        self.oom_kills = max(self.oom_kills, int(count))
        except OSError:
            pass  # the scope is gone with its last process
