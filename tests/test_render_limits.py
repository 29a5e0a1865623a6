"""Tests for per-task memory limits (farmnet.render.limits, and TaskProcess with a limit): real child
processes on the real reactor, plus fake /proc and cgroup trees for the parts no sandbox can show."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from farmnet.render import limits
from farmnet.render.limits import MemoryWatch, TaskLimiter, oom_reason, rlimit_prefix
from farmnet.render.process import TaskExit, TaskProcess, shell_argv

_T = 20.0  # the bound on every wait in these tests
_PY = shlex.quote(sys.executable)
_MB = 1 << 20


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def _address_space_limit(output: bytes) -> bytes:
    """The "Max address space" soft limit from a /proc/self/limits dump."""
    for line in output.splitlines():
        if line.startswith(b"Max address space"):
            return line.split()[3]
    raise AssertionError(f"no address space line in {output!r}")


class LimitedTaskTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.chunks: list[bytes] = []
        self.procs: list[TaskProcess] = []

    def tearDown(self) -> None:
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

    def assert_out_of_memory(self, p: TaskProcess, result: TaskExit, limit_mb: int) -> None:
        self.assertFalse(result.success)
        self.assertIsNone(result.killed)
        self.assertEqual(result.reason, oom_reason(limit_mb))
        self.assertIn("out of memory", result.reason or "")
        line = b"farmnet: " + oom_reason(limit_mb).encode() + b"\n"
        # The last line of the task's output, streamed and kept both.
        self.assertTrue(self.output.endswith(line), self.output[-500:])
        self.assertTrue(p.log.endswith(line))

    async def test_python_past_its_limit(self) -> None:
        p, result = await self.run_task(f'{_PY} -c "x = bytearray(500 * 1024 * 1024)"', memory_limit_mb=100)
        self.assertEqual(result.exit_code, 1)
        self.assertIn(b"MemoryError", self.output)
        self.assert_out_of_memory(p, result, 100)

    async def test_shell_pipeline_past_its_limit(self) -> None:
        # tail keeps the whole (newline-free) "line" in memory.
        p, result = await self.run_task("head -c 600M /dev/zero | tail", memory_limit_mb=100)
        self.assertNotEqual(result.exit_code, 0)
        self.assert_out_of_memory(p, result, 100)

    async def test_output_without_final_newline(self) -> None:
        p, result = await self.run_task("printf 'std::bad_alloc'; exit 3", memory_limit_mb=100)
        self.assertEqual(result.exit_code, 3)
        self.assert_out_of_memory(p, result, 100)
        # The reason is a line of its own.
        self.assertEqual(self.output, b"std::bad_alloc\nfarmnet: " + oom_reason(100).encode() + b"\n")

    async def test_address_space_peak_near_limit(self) -> None:
        # The task dies by a signal after using most of its address space, with nothing said.
        command = (
            f"{_PY} -c \"import os, signal, time; x = b'x' * (176 << 20); time.sleep(0.7); "
            'os.kill(os.getpid(), signal.SIGSEGV)"'
        )
        p, result = await self.run_task(command, memory_limit_mb=200)
        # The shell may have exec'd python (the signal is the task's) or waited for it (exit 128 + 11).
        self.assertIn(
            (result.signal, result.exit_code), [(signal.SIGSEGV, None), (None, 128 + signal.SIGSEGV)]
        )
        self.assert_out_of_memory(p, result, 200)

    async def test_within_limit_succeeds(self) -> None:
        p, result = await self.run_task(
            f"{_PY} -c \"x = b'x' * (20 << 20); print('ok')\"", memory_limit_mb=300
        )
        self.assertTrue(result.success)
        self.assertIsNone(result.reason)
        self.assertEqual(self.output, b"ok\n")

    async def test_limit_really_set(self) -> None:
        _, result = await self.run_task("cat /proc/self/limits", memory_limit_mb=123)
        self.assertTrue(result.success)
        self.assertEqual(_address_space_limit(self.output), str(123 * _MB).encode())

    async def test_python_wrapper_without_prlimit(self) -> None:
        # A PATH with setsid(1) but no prlimit(1): the Python wrapper sets the limit.
        tmp = tempfile.TemporaryDirectory(prefix="farmnet-test-")
        self.addCleanup(tmp.cleanup)
        tools = tmp.name
        setsid = limits.shutil.which("setsid")
        if setsid is None:
            self.skipTest("no setsid(1)")
        os.symlink(setsid, os.path.join(tools, "setsid"))
        self.assertIsNone(limits.shutil.which("prlimit", path=tools))
        self.assertEqual(rlimit_prefix(77, tools)[:2], [sys.executable, "-c"])
        p = self.make("exec /bin/cat /proc/self/limits", env={"PATH": tools}, memory_limit_mb=77)
        p.start()
        result = await p.done.addTimeout(_T, reactor)
        self.assertTrue(result.success, self.output)
        self.assertEqual(_address_space_limit(self.output), str(77 * _MB).encode())
        self.chunks.clear()
        p, result = await self.run_task(
            f'{_PY} -c "x = bytearray(500 * 1024 * 1024)"', env={"PATH": tools}, memory_limit_mb=100
        )
        self.assert_out_of_memory(p, result, 100)

    async def test_no_limit_unchanged(self) -> None:
        _, result = await self.run_task("cat /proc/self/limits")
        self.assertTrue(result.success)
        self.assertIsNone(result.reason)
        self.assertEqual(_address_space_limit(self.output), b"unlimited")

    async def test_no_limit_failure_has_no_reason(self) -> None:
        _, result = await self.run_task(f'{_PY} -c "raise MemoryError"')
        self.assertEqual(result.exit_code, 1)
        self.assertIsNone(result.reason)
        self.assertNotIn(b"farmnet:", self.output)

    async def test_killed_task_has_no_reason(self) -> None:
        p = self.make("echo MemoryError; sleep 30", memory_limit_mb=100)
        p.start()
        deadline = time.monotonic() + _T
        while b"MemoryError" not in self.output and time.monotonic() < deadline:
            await _sleep(0.02)
        p.kill("test over")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.killed, "test over")
        self.assertIsNone(result.reason)
        self.assertEqual(self.output, b"MemoryError\n")

    async def test_peak_memory(self) -> None:
        _, result = await self.run_task(
            f"{_PY} -c \"import time; x = b'x' * (50 << 20); time.sleep(1)\"", memory_limit_mb=0
        )
        self.assertTrue(result.success)
        assert result.peak_memory_mb is not None
        self.assertGreaterEqual(result.peak_memory_mb, 50)
        self.assertLess(result.peak_memory_mb, 500)

    async def test_peak_memory_counts_children(self) -> None:
        # Two processes of 40 MB at once, under a shell.
        child = f"{_PY} -c \"import time; x = b'x' * (40 << 20); time.sleep(1.5)\""
        _, result = await self.run_task(f"{child} & {child}; wait")
        self.assertTrue(result.success, self.output)
        assert result.peak_memory_mb is not None
        self.assertGreaterEqual(result.peak_memory_mb, 80)

    async def test_pgid_is_pid_with_limit(self) -> None:
        p = self.make("sleep 10; exit 0", memory_limit_mb=200)
        p.start()
        assert p.pid is not None
        deadline = time.monotonic() + _T
        while os.getpgid(p.pid) != p.pid and time.monotonic() < deadline:
            await _sleep(0.01)
        self.assertEqual(os.getpgid(p.pid), p.pid)
        self.assertEqual(os.getsid(p.pid), p.pid)
        # setsid and prlimit have exec'd the shell in place: the task's pid is the shell's.
        cmdline = Path(f"/proc/{p.pid}/cmdline")
        while not cmdline.read_bytes().startswith(b"/bin/sh\0") and time.monotonic() < deadline:
            await _sleep(0.01)
        self.assertEqual(cmdline.read_bytes(), b"/bin/sh\0-c\0sleep 10; exit 0\0")
        p.kill("test over")
        result = await p.done.addTimeout(_T, reactor)
        self.assertEqual(result.signal, signal.SIGTERM)
        self.assertIsNone(result.reason)

    async def test_limiter_rlimit(self) -> None:
        limiter = TaskLimiter("rlimit", tool_path=os.environ.get("PATH"))
        p, result = await self.run_task(
            f'{_PY} -c "x = bytearray(500 * 1024 * 1024)"', memory_limit_mb=100, limiter=limiter
        )
        self.assertEqual(limiter.method, "rlimit")
        self.assert_out_of_memory(p, result, 100)

    async def test_cgroup_out_of_memory(self) -> None:
        """Only where systemd can really make a scope with MemoryMax (never in a plain container)."""
        limiter = TaskLimiter("cgroup", tool_path=os.environ.get("PATH"))
        if limiter.resolve() != "cgroup":
            raise unittest.SkipTest("systemd-run scopes with MemoryMax are not available here")
        # Touched memory (a cgroup counts resident memory, not address space).
        p, result = await self.run_task(
            f"{_PY} -c \"x = b'x' * (400 << 20)\"", memory_limit_mb=100, limiter=limiter
        )
        self.assert_out_of_memory(p, result, 100)


class ArgvTests(unittest.SynchronousTestCase):
    def test_shell_argv_prefix(self) -> None:
        prefix = ["/usr/bin/prlimit", "--as=1048576", "--"]
        self.assertEqual(
            shell_argv("echo hi", None, "/usr/bin/setsid", prefix),
            ["/usr/bin/setsid", *prefix, "/bin/sh", "-c", "echo hi"],
        )
        argv = shell_argv("echo hi", None, None, prefix)
        self.assertEqual(argv[3:6], prefix)
        self.assertEqual(shell_argv("x", None, "/s", ()), shell_argv("x", None, "/s"))

    def test_rlimit_prefix(self) -> None:
        self.assertEqual(rlimit_prefix(0), [])
        prlimit = limits.shutil.which("prlimit")
        if prlimit is None:
            self.skipTest("no prlimit(1)")
        self.assertEqual(rlimit_prefix(10, os.path.dirname(prlimit)), [prlimit, f"--as={10 * _MB}", "--"])

    def test_no_limit_spawns_as_before(self) -> None:
        spawned: list[list[str]] = []

        class Reactor:
            def spawnProcess(self, proto: Any, executable: str, args: list[str], **kw: Any) -> None:
                spawned.append(args)
                raise OSError("recorded")

        clock = task.Clock()
        for limit in (0, 64):
            p = TaskProcess(
                Reactor(),
                "x",
                env={"PATH": os.defpath},
                cwd=None,
                on_output=lambda d: None,
                clock=clock,
                memory_limit_mb=limit,
            )
            p.start()
            clock.advance(0)
            self.assertEqual(self.successResultOf(p.done).reason, None)
        self.flushLoggedErrors(OSError)
        without, with_limit = spawned
        self.assertEqual(without[1:], ["/bin/sh", "-c", "x"])
        self.assertEqual(with_limit[-3:], ["/bin/sh", "-c", "x"])
        self.assertGreater(len(with_limit), len(without))

    def test_negative_limit_refused(self) -> None:
        self.assertRaises(
            ValueError, TaskProcess, None, "x", env={}, cwd=None, on_output=len, memory_limit_mb=-1
        )


class LimiterTests(unittest.SynchronousTestCase):
    def test_bad_method(self) -> None:
        self.assertRaises(ValueError, TaskLimiter, "ulimit")

    def test_auto_falls_back_and_logs_once(self) -> None:
        calls: list[int] = []

        def probe() -> str | None:
            calls.append(1)
            return "no systemd here"

        limiter = TaskLimiter("auto", probe=probe)
        self.assertEqual(limiter.resolve(), "rlimit")
        self.assertEqual(limiter.method, "rlimit")
        method, prefix = limiter.prefix(50)
        self.assertEqual(method, "rlimit")
        self.assertTrue(prefix)
        self.assertEqual(limiter.prefix(0), (None, []))
        self.assertEqual(calls, [1])

    def test_cgroup_when_usable(self) -> None:
        limiter = TaskLimiter("auto", probe=lambda: None, tool_path=os.environ.get("PATH"))
        self.assertEqual(limiter.resolve(), "cgroup")
        if limits.shutil.which("systemd-run") is None:
            self.assertEqual(limiter.prefix(50)[0], "rlimit")  # systemd-run missing: per task fallback
            return
        method, prefix = limiter.prefix(50)
        self.assertEqual(method, "cgroup")
        self.assertIn("--scope", prefix)
        self.assertIn(f"MemoryMax={50 * _MB}", prefix)
        self.assertEqual(prefix[-1], "--")
        self.assertEqual("--user" in prefix, os.geteuid() != 0)

    def test_rlimit_never_probes(self) -> None:
        limiter = TaskLimiter("rlimit", probe=lambda: self.fail("probed"))
        self.assertEqual(limiter.resolve(), "rlimit")

    def test_real_probe_answers(self) -> None:
        """The real probe says yes or why not, and never raises (in CI: why not)."""
        limiter = TaskLimiter("auto", tool_path=os.environ.get("PATH"))
        problem = limiter._probe_systemd()
        self.assertEqual(limiter.resolve(), "cgroup" if problem is None else "rlimit")

    def test_probe_without_tools(self) -> None:
        empty = tempfile.mkdtemp(prefix="farmnet-test-")
        self.addCleanup(os.rmdir, empty)
        limiter = TaskLimiter("cgroup", tool_path=empty)
        self.assertEqual(limiter._probe_systemd(), "no systemctl/systemd-run on PATH")
        self.assertEqual(limiter.resolve(), "rlimit")


class MemoryWatchTests(unittest.SynchronousTestCase):
    """The /proc and cgroup parsing, on fake trees."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="farmnet-test-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)
        self.proc = self.root / "proc"
        self.cgroup = self.root / "cgroup"
        self.write("proc/self/cgroup", "0::/system.slice/farmnet-render.service\n")

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def process(
        self, pid: int, rss_kb: int, hwm_kb: int, peak_kb: int, children: str = "", session: int = 100
    ) -> None:
        self.write(
            f"proc/{pid}/status",
            f"Name:\tx\nVmPeak:\t{peak_kb} kB\nVmSize:\t1 kB\nVmHWM:\t{hwm_kb} kB\nVmRSS:\t{rss_kb} kB\n",
        )
        self.write(f"proc/{pid}/task/{pid}/children", children)
        self.write(f"proc/{pid}/stat", f"{pid} (a) b) S 1 {session} {session} 0 -1\n")
        self.write(f"proc/{pid}/cgroup", "0::/user.slice/run-r1.scope\n")

    def test_tree_peak(self) -> None:
        self.process(100, rss_kb=10 * 1024, hwm_kb=30 * 1024, peak_kb=50 * 1024, children="101 102 ")
        self.process(101, rss_kb=25 * 1024, hwm_kb=25 * 1024, peak_kb=60 * 1024)
        self.process(102, rss_kb=20 * 1024, hwm_kb=20 * 1024, peak_kb=40 * 1024)
        self.process(200, rss_kb=999 * 1024, hwm_kb=999 * 1024, peak_kb=999 * 1024)  # not the task's
        watch = MemoryWatch(100, proc=str(self.proc), cgroup_root=str(self.cgroup))
        self.assertIsNone(watch.peak_mb)
        watch.sample()
        self.assertEqual(watch.peak_mb, 55)  # 10 + 25 + 20 at once beats any one HWM (30)
        self.assertEqual(watch.vm_peak_bytes, 60 * _MB)
        # Later: a process's own peak (its HWM) counts although it was never sampled at it.
        self.process(100, rss_kb=1024, hwm_kb=70 * 1024, peak_kb=80 * 1024)
        watch.sample()
        self.assertEqual(watch.peak_mb, 70)
        self.assertEqual(watch.samples, 2)

    def test_session_fallback(self) -> None:
        self.process(100, rss_kb=10 * 1024, hwm_kb=10 * 1024, peak_kb=10 * 1024)
        self.process(101, rss_kb=5 * 1024, hwm_kb=5 * 1024, peak_kb=5 * 1024)
        self.process(300, rss_kb=500 * 1024, hwm_kb=500 * 1024, peak_kb=500 * 1024, session=300)
        os.unlink(self.proc / "100" / "task" / "100" / "children")  # no CONFIG_PROC_CHILDREN
        watch = MemoryWatch(100, proc=str(self.proc))
        watch.sample()
        self.assertEqual(watch.peak_mb, 15)

    def test_gone_process(self) -> None:
        watch = MemoryWatch(100, proc=str(self.proc))
        watch.sample()
        self.assertIsNone(watch.peak_mb)
        self.assertFalse(watch.out_of_memory(100, 1, None, b""))

    def test_cgroup_oom_kill(self) -> None:
        self.process(100, rss_kb=1024, hwm_kb=1024, peak_kb=1024)
        self.write(
            "cgroup/user.slice/run-r1.scope/memory.events", "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n"
        )
        watch = MemoryWatch(100, cgroup=True, proc=str(self.proc), cgroup_root=str(self.cgroup))
        watch.sample()
        self.assertEqual(watch.oom_kills, 0)
        self.assertFalse(watch.out_of_memory(100, 1, None, b""))
        self.write("cgroup/user.slice/run-r1.scope/memory.events", "max 30\noom 2\noom_kill 1\n")
        watch.finish()
        self.assertEqual(watch.oom_kills, 1)
        self.assertTrue(watch.out_of_memory(100, 137, None, b""))
        self.assertFalse(watch.out_of_memory(100, 0, None, b""))  # it succeeded all the same
        self.assertFalse(watch.out_of_memory(0, 1, None, b""))  # no limit, no verdict
        # Once the scope is gone there is nothing to read, and what was read stays.
        os.unlink(self.cgroup / "user.slice" / "run-r1.scope" / "memory.events")
        watch.finish()
        self.assertEqual(watch.oom_kills, 1)

    def test_cgroup_not_yet_in_scope(self) -> None:
        # systemd-run has not moved itself into its scope yet: the render's cgroup is not the task's.
        self.process(100, rss_kb=1024, hwm_kb=1024, peak_kb=1024)
        self.write("proc/100/cgroup", "0::/system.slice/farmnet-render.service\n")
        self.write("cgroup/system.slice/farmnet-render.service/memory.events", "oom_kill 5\n")
        watch = MemoryWatch(100, cgroup=True, proc=str(self.proc), cgroup_root=str(self.cgroup))
        watch.sample()
        self.assertEqual(watch.oom_kills, 0)

    def test_cgroup_sigkill_near_limit(self) -> None:
        self.process(100, rss_kb=95 * 1024, hwm_kb=95 * 1024, peak_kb=4000 * 1024)
        watch = MemoryWatch(100, cgroup=True, proc=str(self.proc), cgroup_root=str(self.cgroup))
        watch.sample()
        self.assertTrue(watch.out_of_memory(100, None, signal.SIGKILL, b""))
        self.assertTrue(watch.out_of_memory(100, 137, None, b""))
        self.assertFalse(watch.out_of_memory(100, None, signal.SIGTERM, b""))
        self.assertFalse(watch.out_of_memory(200, None, signal.SIGKILL, b""))
        # A big address space means nothing under a cgroup.
        self.assertFalse(watch.out_of_memory(1000, 1, None, b""))

    def test_output_patterns(self) -> None:
        watch = MemoryWatch(100, proc=str(self.proc))
        for text in (
            b"Traceback...\nMemoryError\n",
            b"terminate called after throwing an instance of 'std::bad_alloc'\n",
            b"tail: memory exhausted\n",
            b"mmap: Cannot allocate memory\n",
            b"Exception in thread main java.lang.OutOfMemoryError: Java heap space\n",
            b"Fatal: out of memory\n",
        ):
            self.assertTrue(watch.out_of_memory(100, 1, None, text), text)
        self.assertFalse(watch.out_of_memory(100, 1, None, b"Segmentation fault\n"))
