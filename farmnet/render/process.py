"""Running one task as a child process of the render.

Each task runs as ``/bin/sh -c COMMAND`` in a session (and so a process group) of its own, so that killing
the task also kills whatever the command started: renderers like to fork helpers, and a shell pipeline is
several processes already.  On Linux ``posix_spawn`` starts the session itself (``POSIX_SPAWN_SETSID``);
elsewhere setsid(1), or a Python one-liner, execs the shell in a new session.  Its output is streamed
to a callback as it arrives and kept in a bounded log, so a runaway task cannot eat the render's memory.

A task may have a memory limit (``memory_limit_mb``), applied in its exec chain
(``[setsid] LIMITER... /bin/sh -c COMMAND``, see :mod:`farmnet.render.limits`); a task that ran out of it
ends with :attr:`TaskExit.reason` set and that reason as the last line of its output.  Its memory is
sampled while it runs, limit or not, for :attr:`TaskExit.peak_memory_mb`.
"""

from __future__ import annotations

import _signal as _raw_signal
import enum
import fcntl
import os
import shutil
import signal as _signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import process as _twisted_process
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from farmnet.render.limits import OUTPUT_TAIL, MemoryWatch, TaskLimiter, oom_reason, rlimit_prefix

__all__ = ["SPAWN_FAILED_EXIT_CODE", "TaskExit", "TaskProcess", "shell_argv"]

_logger = Logger(namespace="farmnet.render.process")

#: The exit code a task gets when it could not be started (like a shell's "command not found").
SPAWN_FAILED_EXIT_CODE = 127

_SH = "/bin/sh"
# Used when there is no setsid(1): start a new session, then become the shell, keeping the pid.
_PY_SETSID = "import os,sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
# Used when the task has a working directory: the child changes into it itself, so that a missing
# directory is a clear message in the task's output (not an exception here) and a hung network mount
# blocks the task, never the render's reactor.  The directory and command are arguments, not quoted text.
_CD_THEN_RUN = (
    'cd -- "$1" || { printf "farmnet: cannot change to working directory %s\\n" "$1" >&2; exit 127; }; '
    'exec /bin/sh -c "$2"'
)
# The smallest log that can hold a head, the skip marker and a tail.
_LOG_MIN = 256
# Memory sampling: the first sample soon after the start (to see short tasks), then at this interval.
_FIRST_SAMPLE = 0.1
_SAMPLE_INTERVAL = 0.5


@attrs.frozen
class TaskExit:
    """How a task ended, as reported to the server."""

    exit_code: int | None  # None when killed by a signal
    signal: int | None
    time_started: float  # wall-clock seconds, as reactor.seconds() gives
    time_done: float
    killed: str | None  # the kill reason, if kill() was called
    #: Why the task failed, when the render knows better than its exit status: "out of memory: task
    #: exceeded its 200 MB memory limit".  Never set for a task that succeeded or was killed.
    reason: str | None = None
    #: The most memory the task's processes used at once, in MB, as sampled; None if not measured.
    peak_memory_mb: int | None = None

    @property
    def success(self) -> bool:
        """Done with exit code 0 and not killed (a task that was killed did not finish its work)."""
        return self.exit_code == 0 and self.killed is None


def shell_argv(
    command: str,
    cwd: str | None,
    setsid: str | None,
    limit_prefix: Sequence[str] = (),
    *,
    new_session: bool = True,
) -> list[str]:
    """The argv that runs ``command`` with ``/bin/sh`` in a new session, changing into ``cwd`` first.

    ``setsid`` is the path of setsid(1), or None to use the Python fallback.  The child of spawnProcess is
    never a process group leader, so setsid(1) execs without forking and the task's pid is its pgid.
    ``limit_prefix`` (from :mod:`farmnet.render.limits`) goes between the new session and the shell; it
    must exec in place too.  ``new_session`` False: no session wrapper (the spawn makes the session).
    """
    sh_argv = [_SH, "-c", command] if cwd is None else [_SH, "-c", _CD_THEN_RUN, "farmnet-task", cwd, command]
    if not new_session:
        return [*limit_prefix, *sh_argv]
    if setsid is not None:
        return [setsid, *limit_prefix, *sh_argv]
    return [sys.executable, "-c", _PY_SETSID, *limit_prefix, *sh_argv]


def _ignored_signals() -> list[int]:
    """The signals this process ignores (the child gets them back at their default), as Twisted's spawn
    finds them, read through the C module: ``signal.getsignal`` makes an enum of every answer, 30 times
    slower, and this runs for every task."""
    return [sig for sig in range(1, _signal.NSIG) if _raw_signal.getsignal(sig) == _signal.SIG_IGN]


class _SessionProcess(_twisted_process.Process):
    """Twisted's process, whose child ``posix_spawn`` makes the leader of a new session (Linux's
    ``POSIX_SPAWN_SETSID``): no setsid(1) to exec before the shell, one exec less for every task.  The
    child's stderr is its stdout (one pipe to read and close for every task, not two; the task's output
    is one stream either way, and now in the order it was written).

    Everything else is as Twisted's own posix_spawn path does it (its helpers list the open descriptors
    and close the inheritable ones the child is not given).
    """

    def _trySpawnInsteadOfFork(
        self, path: Any, uid: Any, gid: Any, executable: str, args: list[str], environment: Any, kwargs: Any
    ) -> bool:
        fd_state = []
        for fd in _twisted_process._listOpenFDs():
            try:
                fd_state.append((fd, fcntl.fcntl(fd, fcntl.F_GETFD)))
            except OSError:
                pass
        actions = _twisted_process._getFileActions(
            fd_state, kwargs["fdmap"], doClose=os.POSIX_SPAWN_CLOSE, doDup2=os.POSIX_SPAWN_DUP2
        )
        actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=actions,
            setsigdef=_ignored_signals(),
            setsid=True,
        )
        self.status = -1
        return True


def _spawns_sessions(reactor: object) -> bool:
    """Whether tasks on ``reactor`` can start as :class:`_SessionProcess` (Linux, a real posix reactor,
    the Twisted helpers it builds on)."""
    return (
        sys.platform == "linux"
        and isinstance(reactor, PosixReactorBase)
        and hasattr(os, "posix_spawnp")
        and hasattr(_twisted_process.Process, "_trySpawnInsteadOfFork")
        and hasattr(_twisted_process, "_listOpenFDs")
        and hasattr(_twisted_process, "_getFileActions")
    )


class _BoundedLog:
    """The first ``max_bytes // 4`` bytes of output and the most recent ones, up to ``max_bytes`` in all.

    The head usually says what ran (versions, scene, settings), the tail why it ended.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._head_max = max_bytes // 4
        self._head = bytearray()
        # Everything after the head that may still be shown; trimmed lazily to at most twice its useful
        # size so that appending stays cheap however much the task prints.
        self._tail = bytearray()
        self._tail_keep = max_bytes - self._head_max
        self.total = 0

    def append(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_max - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 2 * self._tail_keep:
                del self._tail[: len(self._tail) - self._tail_keep]

    def tail(self, size: int) -> bytes:
        """The last ``size`` bytes of output kept (at most)."""
        return (bytes(self._head[-size:]) + bytes(self._tail[-size:]))[-size:]

    def value(self) -> bytes:
        if self.total <= self._max:
            return bytes(self._head + self._tail)
        # The marker's length depends on the count it shows, which depends on how much tail fits beside
        # it: settle it in a few rounds (the digit count changes at most once or twice).
        shown = self._tail_keep
        marker = b""
        for _ in range(4):
            skipped = self.total - len(self._head) - shown
            marker = b"\n[... %d bytes skipped ...]\n" % skipped
            new_shown = max(0, min(len(self._tail), self._max - len(self._head) - len(marker)))
            if new_shown == shown:
                break
            shown = new_shown
        tail = self._tail[len(self._tail) - shown :] if shown else b""
        return bytes(self._head) + marker + bytes(tail)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    ENDING = "ending"  # could not start; done fires on the next reactor turn
    ENDED = "ended"


class _TaskProtocol(ProcessProtocol):
    """Forwards the child's events to its TaskProcess (which keeps the Protocol methods off its API)."""

    def __init__(self, owner: TaskProcess) -> None:
        self._owner = owner

    def connectionMade(self) -> None:
        self._owner._spawned(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._owner._output(data)

    def processExited(self, reason: Failure) -> None:
        self._owner._exited()

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended(reason)


class TaskProcess:
    """One task's child process: start it, stream and keep its output, kill it, learn how it ended.

    ``env`` is the whole environment of the child (normally the render's ``os.environ``, passed in);
    ``extra_env`` is laid over it (the job's and task's variables).  ``cwd`` None or empty means the
    render's own working directory.

    ``done`` fires with a :class:`TaskExit` once the process has ended *and* all its output has been
    delivered to ``on_output``; it never fails.

    After the main process exits, anything it left running in its session that still holds the output
    open gets ``drain_timeout`` seconds to finish, then is killed, so one stray background job cannot keep
    a task running forever.

    ``memory_limit_mb`` (0: none) caps the task's memory, by the method of ``limiter`` (the render's
    :class:`~farmnet.render.limits.TaskLimiter`; None: RLIMIT_AS).
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        command: str,
        *,
        env: Mapping[str, str],
        cwd: str | None,
        on_output: Callable[[bytes], None],
        log_max: int = 1 << 20,
        kill_grace: float = 10.0,
        clock: IReactorTime | None = None,
        extra_env: Mapping[str, str] | None = None,
        drain_timeout: float = 5.0,
        memory_limit_mb: int = 0,
        limiter: TaskLimiter | None = None,
    ) -> None:
        if log_max < _LOG_MIN:
            raise ValueError(f"log_max must be at least {_LOG_MIN} bytes, not {log_max}")
        if memory_limit_mb < 0:
            raise ValueError(f"memory_limit_mb must be >= 0, not {memory_limit_mb}")
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.command = command
        self._env = {**env, **(extra_env or {})}
        # setsid(1) is looked up on the render's PATH, not on one a job may have set.
        self._tool_path = env.get("PATH") or os.defpath
        self._cwd = cwd or None
        self._on_output = on_output
        self._log = _BoundedLog(log_max)
        self._kill_grace = kill_grace
        self._drain_timeout = drain_timeout
        self.memory_limit_mb = memory_limit_mb
        self._limiter = limiter
        self._limit_method: str | None = None  # "rlimit" or "cgroup" once started with a limit
        self._watch: MemoryWatch | None = None
        self._sample_timer: IDelayedCall | None = None
        self._ends_with_newline = True
        self.done: Deferred[TaskExit] = Deferred()
        self.pid: int | None = None
        self._state = _State.NEW
        self._reaped = False  # the main process has exited; its pid may now belong to someone else
        self._killed: str | None = None
        self._time_started: float | None = None
        self._kill_timer: IDelayedCall | None = None
        self._drain_timer: IDelayedCall | None = None
        self._transport: Any = None
        self._output_paused = False

    @property
    def running(self) -> bool:
        """True from a successful start until the process has ended."""
        return self._state is _State.RUNNING

    @property
    def log(self) -> bytes:
        """The kept output: all of it, or its head, a ``[... N bytes skipped ...]`` line and its tail."""
        return self._log.value()

    @property
    def output_size(self) -> int:
        """How many bytes of output the task has produced in all (kept or not)."""
        return self._log.total

    def start(self) -> None:
        """Spawn the process.  Failing to start ends the task through ``done``; it never raises."""
        if self._state is not _State.NEW:
            _logger.warn("task {pid} already started (or killed before start)", pid=self.pid)
            return
        self._time_started = self._clock.seconds()
        if self._limiter is not None:
            self._limit_method, prefix = self._limiter.prefix(self.memory_limit_mb)
        else:
            prefix = rlimit_prefix(self.memory_limit_mb, self._tool_path)
            self._limit_method = "rlimit" if prefix else None
        try:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                try:
                    self._spawn(prefix, devnull, sessions=_spawns_sessions(self._reactor))
                except NotImplementedError:  # a Python whose posix_spawn cannot make sessions
                    self._spawn(prefix, devnull, sessions=False)
            finally:
                os.close(devnull)
        except Exception as e:
            _logger.failure("task could not start: {command!r}", command=self.command)
            if self._state is not _State.NEW:
                return  # raised after the process was started: its end will be reported as usual
            self._state = _State.ENDING
            message = f"farmnet: cannot start the task: {type(e).__name__}: {e}\n".encode(errors="replace")
            self._clock.callLater(0, self._spawn_failed, message)
            return

    def _spawn(self, limit_prefix: list[str], stdin: int, *, sessions: bool) -> None:
        """Start the child: the session made by posix_spawn (``sessions``), else by setsid(1) or the
        Python wrapper, both exec'ing the shell in place."""
        setsid = None if sessions else shutil.which("setsid", path=self._tool_path)
        argv = shell_argv(self.command, self._cwd, setsid, limit_prefix, new_session=not sessions)
        if sessions:
            # What reactor.spawnProcess does on posix, with the session made by the spawn (and the
            # child's fd 2 made a copy of 1 by it).
            child_fds: dict[int, int | str] = {0: stdin, 1: "r"}
            _SessionProcess(
                self._reactor, argv[0], argv, self._env, None, _TaskProtocol(self), None, None, child_fds
            )
        else:
            self._reactor.spawnProcess(
                _TaskProtocol(self),
                argv[0],
                argv,
                env=self._env,
                path=None,
                childFDs={0: stdin, 1: "r", 2: "r"},
            )

    def kill(self, reason: str) -> None:
        """Stop the task: SIGTERM to its process group, SIGKILL ``kill_grace`` seconds later if needed.

        Only the first call counts (its reason is the one recorded).  Killing a task that was never
        started ends it at once.
        """
        if self._killed is not None or self._state in (_State.ENDING, _State.ENDED):
            return
        self._killed = reason
        if self._state is _State.NEW:
            now = self._clock.seconds()
            self._time_started = now
            self._finish(TaskExit(None, None, now, now, reason))
            return
        _logger.info("killing task pid {pid}: {reason}", pid=self.pid, reason=reason)
        self._signal_group(_signal.SIGTERM)
        self._kill_timer = self._clock.callLater(self._kill_grace, self._kill_hard)

    def pause_output(self) -> None:
        """Stop reading the task's output (its reader is behind): the pipe fills and the task waits
        on its writes, so it slows down instead of its output being dropped."""
        if self._output_paused or self._state is not _State.RUNNING or self._transport is None:
            return
        self._output_paused = True
        self._transport.pauseProducing()
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()  # output left unread is ours to wait for, not a stray's
        self._drain_timer = None

    def resume_output(self) -> None:
        """Read the task's output again."""
        if not self._output_paused:
            return
        self._output_paused = False
        if self._state is not _State.RUNNING:
            return
        self._transport.resumeProducing()
        if self._reaped and self._drain_timer is None:
            self._drain_timer = self._clock.callLater(self._drain_timeout, self._drain_expired)

    @property
    def output_paused(self) -> bool:
        return self._output_paused

    # -- internals -------------------------------------------------------------------------------------

    def _spawned(self, transport: Any) -> None:
        """Called from inside spawnProcess, before the child can be reaped (which may happen right away,
        still inside spawnProcess: the exit must then find the task running)."""
        self._transport = transport
        self.pid = transport.pid
        self._state = _State.RUNNING
        self._watch = MemoryWatch(self.pid, cgroup=self._limit_method == "cgroup")
        self._sample_timer = self._clock.callLater(_FIRST_SAMPLE, self._sample)

    def _sample(self) -> None:
        """Measure the task's memory; again later while its main process lives."""
        self._sample_timer = None
        if self._state is not _State.RUNNING or self._reaped or self._watch is None:
            return
        try:
            self._watch.sample()
        except Exception:
            _logger.failure("measuring the memory of task pid {pid} failed", pid=self.pid)
            return
        self._sample_timer = self._clock.callLater(_SAMPLE_INTERVAL, self._sample)

    def _kill_hard(self) -> None:
        """The task ignored SIGTERM for ``kill_grace`` seconds."""
        self._kill_timer = None
        if self._state is not _State.RUNNING:
            return
        _logger.warn(
            "task pid {pid} still running {grace}s after SIGTERM, sending SIGKILL",
            pid=self.pid,
            grace=self._kill_grace,
        )
        self._signal_group(_signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        """Signal the task's process group (its pgid is its pid)."""
        assert self.pid is not None
        try:
            os.killpg(self.pid, sig)
            return
        except ProcessLookupError:
            pass
        except PermissionError:
            _logger.warn("not allowed to signal task group {pid}", pid=self.pid)
            return
        # No such group: the child has not called setsid() yet (signal it alone), or it has exited and
        # nothing is left in its group (its pid may belong to another process by now: leave it be).
        if not self._reaped:
            try:
                os.kill(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _output(self, data: bytes) -> None:
        if not data:
            return
        self._ends_with_newline = data.endswith(b"\n")
        self._log.append(data)
        try:
            self._on_output(data)
        except Exception:
            _logger.failure("on_output failed for task pid {pid}", pid=self.pid)

    def _exited(self) -> None:
        """The main process is gone; its output may still be open (held by processes it started)."""
        self._reaped = True
        self._stop_sampling()
        if self._watch is not None:
            self._watch.finish()
        if self._state is _State.RUNNING and not self._output_paused:
            self._drain_timer = self._clock.callLater(self._drain_timeout, self._drain_expired)

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self._state is not _State.RUNNING:
            return
        _logger.warn(
            "task pid {pid} exited {timeout}s ago but its output is still open: killing what it left behind",
            pid=self.pid,
            timeout=self._drain_timeout,
        )
        self._signal_group(_signal.SIGKILL)
        # Processes that left the session are out of reach: stop listening to them.
        self._transport.loseConnection()

    def _stop_sampling(self) -> None:
        if self._sample_timer is not None and self._sample_timer.active():
            self._sample_timer.cancel()
        self._sample_timer = None

    def _ended(self, reason: Failure) -> None:
        for timer in (self._kill_timer, self._drain_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._kill_timer = self._drain_timer = None
        self._stop_sampling()
        exit_code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        why: str | None = None
        peak_mb: int | None = None
        if self._watch is not None:
            peak_mb = self._watch.peak_mb
            if self._killed is None and self._watch.out_of_memory(
                self.memory_limit_mb, exit_code, sig, self._log.tail(OUTPUT_TAIL)
            ):
                why = oom_reason(self.memory_limit_mb)
                _logger.info("task pid {pid}: {reason}", pid=self.pid, reason=why)
                # In the task's own output too, so that the server's copy of it says why.
                self._output(b"%sfarmnet: %s\n" % (b"" if self._ends_with_newline else b"\n", why.encode()))
        assert self._time_started is not None
        result = TaskExit(
            exit_code, sig, self._time_started, self._clock.seconds(), self._killed, why, peak_mb
        )
        self._finish(result)

    def _spawn_failed(self, message: bytes) -> None:
        self._output(message)
        assert self._time_started is not None
        self._finish(
            TaskExit(SPAWN_FAILED_EXIT_CODE, None, self._time_started, self._clock.seconds(), self._killed)
        )

    def _finish(self, result: TaskExit) -> None:
        self._state = _State.ENDED
        self.done.callback(result)
