"""Tests for farmnet.render.process: real child processes on the real reactor (plus a fake clock where
no process is involved)."""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial import unittest

from farmnet.render import process as process_module
from farmnet.render.process import TaskExit, TaskProcess, _BoundedLog, shell_argv

_T = 10.0  # the bound on every wait in these tests


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    # "pid (comm) S ...": the state follows the last ")".
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class TaskProcessTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.chunks: list[bytes] = []
        self.procs: list[TaskProcess] = []

    def tearDown(self) -> None:
        # Leave no process behind, whatever a test did.
        for p in self.procs:
            if p.running and p.pid is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass

    def make(self, command: str, **kw: Any) -> TaskProcess:
        kw.setdefault("env", dict(os.environ))
        kw.setdefault("cwd", None)
        kw.setdefault("on_output", self.chunks.append)
        p = TaskProcess(reactor, command, **kw)
        self.procs.append(p)
        return p

    async def run_task(self, command: str, **kw: Any) -> tuple[TaskProcess, TaskExit]:
        p = self.make(command, **kw)
        p.start()
        result = await p.done.addTimeout(_T, reactor)
        return p, result

    @property
    def output(self) -> bytes:
        return b"".join(self.chunks)

    async def wait_for_output(self, pattern: bytes) -> re.Match[bytes]:
        deadline = time.monotonic() + _T
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output)
            if m:
                return m
            await _sleep(0.02)
        self.fail(f"no {pattern!r} in output {self.output!r}")

    async def test_echo_success(self) -> None:
        p, result = await self.run_task("echo hello")
        self.assertEqual(self.output, b"hello\n")
        self.assertEqual(p.log, b"hello\n")
        self.assertEqual(result.exit_code, 0)
        self.assertIsNone(result.signal)
        self.assertIsNone(result.killed)
        self.assertTrue(result.success)
        self.assertLessEqual(result.time_started, result.time_done)
        self.assertFalse(p.running)

    async def test_paused_output_holds_the_task_and_loses_nothing(self) -> None:
        """While its reader is paused the task waits on a full pipe (not killed as a stray when
        its output stays open past drain_timeout); resumed, every byte arrives, then done."""
        size = 1 << 20  # far more than a pipe holds
        # The main process exits at once; what it started holds the output.
        p = self.make(f"(head -c {size} /dev/zero; echo end) &", drain_timeout=1.0)
        p.start()
        p.pause_output()
        self.assertTrue(p.output_paused)
        await _sleep(2.0)
        self.assertLess(len(self.output), size)  # at most what was read before the pause
        self.assertFalse(p.done.called)
        p.resume_output()
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual((result.exit_code, result.killed), (0, None))
        self.assertEqual(self.output, b"\0" * size + b"end\n")

    async def test_stdout_and_stderr_captured(self) -> None:
        _, result = await self.run_task("echo out; sleep 0.1; echo err >&2; sleep 0.1; echo out2")
        self.assertEqual(self.output, b"out\nerr\nout2\n")
        self.assertTrue(result.success)

    async def test_stdin_is_empty(self) -> None:
        _, result = await self.run_task("cat; echo end")
        self.assertEqual(self.output, b"end\n")
        self.assertTrue(result.success)

    async def test_exit_code(self) -> None:
        _, result = await self.run_task("exit 3")
        self.assertEqual(result.exit_code, 3)
        self.assertIsNone(result.signal)
        self.assertFalse(result.success)

    async def test_env_and_extra_env(self) -> None:
        env = {"PATH": os.environ.get("PATH", os.defpath), "FARMNET_A": "base", "FARMNET_B": "base"}
        _, result = await self.run_task(
            'echo "$FARMNET_A $FARMNET_B"; echo "${HOME-unset}"',
            env=env,
            extra_env={"FARMNET_B": "extra $x 'q'"},
        )
        # Only what was passed in reaches the child: HOME is not in env.
        self.assertEqual(self.output, b"base extra $x 'q'\nunset\n")
        self.assertTrue(result.success)

    def make_dir(self, name: str) -> str:
        """A fresh directory (a real path, without symlinks) named ``name``, removed after the test.

        Not trial's mktemp(): under pytest that would write into the checkout.
        """
        tmp = tempfile.TemporaryDirectory(prefix="farmnet-test-")
        self.addCleanup(tmp.cleanup)
        d = os.path.join(os.path.realpath(tmp.name), name)
        os.makedirs(d)
        return d

    async def test_cwd(self) -> None:
        d = self.make_dir("with space 'and quote'")
        _, result = await self.run_task("pwd -P", cwd=d)
        self.assertEqual(self.output, d.encode() + b"\n")
        self.assertTrue(result.success)

    async def test_no_cwd_is_render_cwd(self) -> None:
        here = os.path.realpath(os.getcwd()).encode()  # noqa: ASYNC240 (a test, not the reactor)
        _, result = await self.run_task("pwd -P", cwd=None)
        self.assertEqual(self.output, here + b"\n")
        self.assertTrue(result.success)

    async def test_bad_cwd(self) -> None:
        bad = os.path.join(self.make_dir("parent"), "missing")
        p = self.make("echo should-not-run", cwd=bad)
        p.start()  # must not raise
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.exit_code, 127)
        self.assertFalse(result.success)
        self.assertIn(b"farmnet: cannot change to working directory " + bad.encode(), p.log)
        self.assertIn(b"farmnet: cannot change to working directory", self.output)
        self.assertNotIn(b"should-not-run", self.output)

    async def test_spawn_exception_ends_task(self) -> None:
        # A NUL byte in the environment makes spawnProcess itself raise.
        p = self.make("echo hi", env={"BAD": "a\0b"})
        p.start()
        self.assertFalse(p.running)
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.exit_code, 127)
        self.assertIn(b"farmnet: cannot start the task", p.log)
        self.flushLoggedErrors(ValueError)

    async def test_pgid_is_pid(self) -> None:
        p = self.make("sleep 5")
        p.start()
        assert p.pid is not None
        # setsid(1) execs in place; give it a moment to have done so.
        deadline = time.monotonic() + _T
        while os.getpgid(p.pid) != p.pid and time.monotonic() < deadline:
            await _sleep(0.01)
        self.assertEqual(os.getpgid(p.pid), p.pid)
        self.assertEqual(os.getsid(p.pid), p.pid)
        p.kill("test over")
        await p.done.addTimeout(_T, reactor)

    async def test_session_made_by_the_spawn(self) -> None:
        # On Linux posix_spawn makes the session: it is there when start() returns, the shell is the
        # task's pid at once (no setsid(1) exec'd first), and killing the group kills what it started.
        if not process_module._spawns_sessions(reactor):
            self.skipTest("posix_spawn does not make sessions here")
        p = self.make("sleep 30 & echo started; wait")
        p.start()
        assert p.pid is not None
        self.assertEqual(os.getsid(p.pid), p.pid)
        self.assertEqual(os.getpgid(p.pid), p.pid)
        await self.wait_for_output(b"started")  # the exec is over: its cmdline is readable
        self.assertEqual(Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[0], b"/bin/sh")
        p.kill("test over")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.signal, signal.SIGTERM)

    async def test_kill(self) -> None:
        p = self.make("sleep 30")
        p.start()
        self.assertTrue(p.running)
        await _sleep(0.1)
        t0 = time.monotonic()
        p.kill("user request")
        p.kill("second reason is ignored")
        result = await p.done.addTimeout(_T, reactor)
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertEqual(result.killed, "user request")
        self.assertIsNone(result.exit_code)
        self.assertEqual(result.signal, signal.SIGTERM)
        self.assertFalse(result.success)
        p.kill("after the end")  # harmless

    async def test_kill_right_after_start(self) -> None:
        # Possibly before setsid has run: the process itself is signalled.
        p = self.make("sleep 30")
        p.start()
        p.kill("at once")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.killed, "at once")
        self.assertFalse(result.success)

    async def test_kill_ignoring_sigterm(self) -> None:
        p = self.make("trap '' TERM; echo ready; sleep 30", kill_grace=0.3)
        p.start()
        await self.wait_for_output(b"ready")
        t0 = time.monotonic()
        p.kill("timeout")
        result = await p.done.addTimeout(_T, reactor)
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 2.0)
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertEqual(result.killed, "timeout")

    async def test_kill_reaches_grandchild(self) -> None:
        p = self.make("sleep 30 & echo grandchild $!; wait")
        p.start()
        m = await self.wait_for_output(rb"grandchild (\d+)")
        grandchild = int(m.group(1))
        self.assertTrue(_alive(grandchild))
        p.kill("stop")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.killed, "stop")
        deadline = time.monotonic() + _T
        while _alive(grandchild) and time.monotonic() < deadline:
            await _sleep(0.02)
        self.assertFalse(_alive(grandchild))

    async def test_kill_before_start(self) -> None:
        p = self.make("echo never")
        p.kill("cancelled")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.killed, "cancelled")
        self.assertIsNone(result.exit_code)
        p.start()  # ignored
        self.assertIsNone(p.pid)
        self.assertEqual(self.output, b"")

    async def test_stray_background_job_does_not_hold_the_task(self) -> None:
        # The shell exits at once, but the sleep it left holds the output open.
        p = self.make("sleep 30 & echo stray $!", drain_timeout=0.3)
        p.start()
        t0 = time.monotonic()
        result = await p.done.addTimeout(_T, reactor)
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertEqual(result.exit_code, 0)
        self.assertIsNone(result.killed)
        stray = int(re.search(rb"stray (\d+)", self.output).group(1))  # type: ignore[union-attr]
        deadline = time.monotonic() + _T
        while _alive(stray) and time.monotonic() < deadline:
            await _sleep(0.02)
        self.assertFalse(_alive(stray))

    async def test_big_output_bounded_log(self) -> None:
        log_max = 64 * 1024
        # 5 MB: a head line, 5 MB of dots, a tail line.
        p, result = await self.run_task(
            "echo HEAD-START; head -c 5000000 /dev/zero | tr '\\0' '.'; echo; echo TAIL-END",
            log_max=log_max,
        )
        self.assertTrue(result.success)
        self.assertEqual(len(self.output), len(b"HEAD-START\n") + 5_000_000 + len(b"\nTAIL-END\n"))
        self.assertEqual(p.output_size, len(self.output))
        log = p.log
        self.assertLessEqual(len(log), log_max)
        self.assertGreater(len(log), log_max - 100)
        self.assertTrue(log.startswith(b"HEAD-START\n"))
        self.assertTrue(log.endswith(b"\nTAIL-END\n"))
        m = re.search(rb"\n\[\.\.\. (\d+) bytes skipped \.\.\.\]\n", log)
        assert m is not None
        head = log[: m.start()]
        tail = log[m.end() :]
        self.assertEqual(len(head), log_max // 4)
        self.assertEqual(len(head) + int(m.group(1)) + len(tail), len(self.output))
        self.assertEqual(self.output[: len(head)], head)
        self.assertEqual(self.output[-len(tail) :], tail)

    async def test_on_output_error_does_not_break_task(self) -> None:
        def broken(data: bytes) -> None:
            raise RuntimeError("boom")

        p, result = await self.run_task("echo a; echo b", on_output=broken)
        self.assertTrue(result.success)
        self.assertEqual(p.log, b"a\nb\n")
        self.flushLoggedErrors(RuntimeError)

    async def test_setsid_tool_without_posix_spawn_sessions(self) -> None:
        # Where posix_spawn cannot make the session (not Linux): setsid(1) execs the shell in one.
        if process_module.shutil.which("setsid") is None:
            self.skipTest("no setsid(1)")
        self.patch(process_module, "_spawns_sessions", lambda reactor: False)
        p = self.make("echo via setsid; sleep 30")
        p.start()
        await self.wait_for_output(b"via setsid")
        assert p.pid is not None
        self.assertEqual(os.getsid(p.pid), p.pid)
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        self.assertEqual(cmdline, b"/bin/sh\0-c\0echo via setsid; sleep 30\0")
        p.kill("done")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.signal, signal.SIGTERM)

    async def test_posix_spawn_without_sessions(self) -> None:
        # A Python whose posix_spawn has no setsid (it raises NotImplementedError for it): the task
        # starts the other way, in a session all the same.
        real_spawn = os.posix_spawnp

        def spawn_without_setsid(*args: Any, setsid: bool = False, **kw: Any) -> int:
            if setsid:
                raise NotImplementedError("The setsid parameter is not supported on this platform")
            return real_spawn(*args, **kw)

        self.patch(process_module.os, "posix_spawnp", spawn_without_setsid)
        p, result = await self.run_task("cut -d' ' -f6 /proc/$$/stat; echo $$")
        self.assertTrue(result.success)
        sid, pid = p.log.split()
        self.assertEqual(sid, pid)
        self.assertEqual(int(pid), p.pid)

    async def test_python_setsid_fallback(self) -> None:
        self.patch(process_module, "_spawns_sessions", lambda reactor: False)
        self.patch(process_module.shutil, "which", lambda *a, **kw: None)
        p = self.make("echo via python; sleep 30")
        p.start()
        await self.wait_for_output(b"via python")
        assert p.pid is not None
        self.assertEqual(os.getpgid(p.pid), p.pid)
        p.kill("done")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.killed, "done")
        self.assertEqual(result.signal, signal.SIGTERM)


class _FakeTransport:
    """Enough of a Twisted process transport for TaskProcess."""

    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class _FakeReactor:
    """spawnProcess connects the protocol like Twisted does, and can reap the child at once, inside
    spawnProcess, as Twisted does when the child has already exited."""

    def __init__(self, exit_at_once: bool = False) -> None:
        self.exit_at_once = exit_at_once
        self.proto: Any = None
        self.transport = _FakeTransport(4242)

    def spawnProcess(self, proto: Any, *args: Any, **kw: Any) -> _FakeTransport:
        self.proto = proto
        proto.makeConnection(self.transport)
        if self.exit_at_once:
            self.transport.pid = None
            proto.processExited(Failure(ProcessDone(0)))
        return self.transport


class FakeClockTests(unittest.TestCase):
    """Kill, drain and spawn-failure logic, with a fake clock and a fake process."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.sent: list[tuple[int, int]] = []
        self.patch(process_module.os, "killpg", lambda pid, sig: self.sent.append((pid, sig)))

    def test_kill_escalates_on_the_given_clock(self) -> None:
        p = TaskProcess(
            _FakeReactor(), "x", env={}, cwd=None, on_output=lambda d: None, kill_grace=3, clock=self.clock
        )
        p.start()
        self.assertTrue(p.running)
        self.assertEqual(p.pid, 4242)
        p.kill("why")
        self.assertEqual(self.sent, [(4242, signal.SIGTERM)])
        self.clock.advance(2.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.sent, [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        self.assertNoResult(p.done)

    def test_exit_inside_spawn_process_still_drains(self) -> None:
        # Regression: the child was reaped inside spawnProcess, before start() had marked the task
        # running, so the drain timer never started and a stray background job held the task.
        reactor_ = _FakeReactor(exit_at_once=True)
        p = TaskProcess(
            reactor_, "x", env={}, cwd=None, on_output=lambda d: None, drain_timeout=2, clock=self.clock
        )
        p.start()
        self.assertTrue(p.running)
        self.assertEqual(p.pid, 4242)  # kept although the transport forgot it
        self.clock.advance(2)
        self.assertEqual(self.sent, [(4242, signal.SIGKILL)])
        self.assertTrue(reactor_.transport.lost)
        reactor_.proto.processEnded(Failure(ProcessDone(0)))
        result = self.successResultOf(p.done)
        self.assertEqual((result.exit_code, result.signal, result.killed), (0, None, None))
        self.assertTrue(result.success)

    def test_drain_timer_cancelled_when_output_closes(self) -> None:
        reactor_ = _FakeReactor(exit_at_once=True)
        p = TaskProcess(
            reactor_, "x", env={}, cwd=None, on_output=lambda d: None, drain_timeout=2, clock=self.clock
        )
        p.start()
        reactor_.proto.processEnded(Failure(ProcessTerminated(5)))
        self.assertEqual(self.successResultOf(p.done).exit_code, 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sent, [])

    def test_spawn_failure_fires_on_next_turn(self) -> None:
        clock = task.Clock()
        clock.advance(100)

        class FailingReactor:
            def spawnProcess(self, *args: Any, **kw: Any) -> None:
                raise OSError("no fork for you")

        out: list[bytes] = []
        p = TaskProcess(FailingReactor(), "x", env={}, cwd=None, on_output=out.append, clock=clock)
        p.start()
        self.assertNoResult(p.done)
        p.kill("ignored: already failing")
        clock.advance(0)
        result = self.successResultOf(p.done)
        self.assertEqual(result, TaskExit(127, None, 100.0, 100.0, None))
        self.assertIn(b"no fork for you", b"".join(out))
        self.flushLoggedErrors(OSError)


class BoundedLogTests(unittest.TestCase):
    def test_small_output_kept_whole(self) -> None:
        log = _BoundedLog(1000)
        for _ in range(10):
            log.append(b"x" * 100)
        self.assertEqual(log.value(), b"x" * 1000)

    def test_head_marker_tail(self) -> None:
        log = _BoundedLog(1000)
        data = bytes(range(256)) * 100
        for i in range(0, len(data), 77):
            log.append(data[i : i + 77])
        v = log.value()
        self.assertLessEqual(len(v), 1000)
        m = re.search(rb"\n\[\.\.\. (\d+) bytes skipped \.\.\.\]\n", v)
        assert m is not None
        self.assertEqual(v[: m.start()], data[:250])
        tail = v[m.end() :]
        self.assertEqual(tail, data[-len(tail) :])
        self.assertEqual(250 + int(m.group(1)) + len(tail), len(data))
        self.assertEqual(len(v), 1000)

    def test_just_over_the_limit(self) -> None:
        log = _BoundedLog(256)
        log.append(b"a" * 257)
        v = log.value()
        self.assertLessEqual(len(v), 256)
        self.assertIn(b"bytes skipped", v)

    def test_minimum(self) -> None:
        self.assertRaises(
            ValueError, TaskProcess, reactor, "x", env={}, cwd=None, on_output=print, log_max=10
        )


class ShellArgvTests(unittest.TestCase):
    def test_setsid(self) -> None:
        self.assertEqual(
            shell_argv("echo hi", None, "/usr/bin/setsid"), ["/usr/bin/setsid", "/bin/sh", "-c", "echo hi"]
        )

    def test_cwd_is_an_argument_not_text(self) -> None:
        argv = shell_argv("echo hi", "/tmp/a'b", "/usr/bin/setsid")
        self.assertEqual(argv[-2:], ["/tmp/a'b", "echo hi"])

    def test_python_fallback(self) -> None:
        argv = shell_argv("echo hi", None, None)
        self.assertEqual(argv[1], "-c")
        self.assertEqual(argv[3:], ["/bin/sh", "-c", "echo hi"])
