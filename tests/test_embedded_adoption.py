"""A server that starts after a crash deals with its embedded PostgreSQL knowingly: a
cluster left running by a kill -9'd server is adopted (one postgres, statistics work, a
log line says so), and a stale ``postmaster.pid`` naming another program is removed."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from farmnet.client import connect
from farmnet.stats import pgtest
from farmnet.stats.db import connect_once
from farmnet.stats.embedded import Cluster, Postmaster, _is_postmaster_of, find_bin_dir
from farmnet.testing import ProcessFarm, wait_until


def postmasters_of(datadir: Path) -> list[int]:
    """Pids of every running postgres postmaster of ``datadir``."""
    return [p.pid for p in psutil.process_iter() if _is_postmaster_of(p.pid, datadir)
            and "-D" in _cmdline(p)]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def base_dir(case: TestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="farmnet-adopt-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


class AdoptionTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        reason = pgtest.available()
        if reason:
            raise SkipTest(reason)

    async def wait_for_log(self, farm: ProcessFarm, text: str, after: int = 0) -> str:
        log = farm.base / "server.log"

        def found() -> str | None:
            content = log.read_text(errors="replace")[after:]
            return content if text in content else None

        return await wait_until(reactor, found, 90, f"{text!r} in the server's log")

    async def logs_rows(self, dsn: str) -> int:
        """job_created rows in the statistics; 0 until the server has made its tables."""
        database = await connect_once(reactor, dsn)
        try:
            rows = await database.query("SELECT count(*) AS n FROM pg_tables WHERE tablename = 'logs'")
            if not rows[0]["n"]:
                return 0
            rows = await database.query("SELECT count(*) AS n FROM logs WHERE type = 'job_created'")
        finally:
            database.close()
        return int(rows[0]["n"])

    async def test_kill_9_then_start_adopts_the_cluster(self) -> None:
        base = base_dir(self)
        datadir = base / "server-store" / "postgresql"
        cluster = Cluster(datadir, find_bin_dir())  # type: ignore[arg-type]
        self.addCleanup(cluster.stop_blocking)  # last: whatever the test left running
        config = base / "server.yaml"
        config.write_text("server:\n  stats:\n    flush_interval: 0.05\n")
        farm = ProcessFarm(reactor, base)
        self.addCleanup(farm.stop)
        await farm.start_server("--config", str(config))
        await self.wait_for_log(farm, "embedded PostgreSQL running")
        first = Postmaster.read(cluster.pid_file)
        assert first is not None

        server = farm.server
        assert server is not None and server.watch is not None
        farm.kill(server)
        await server.watch.ended
        self.assertTrue(psutil.pid_exists(first.pid), "kill -9 of the server leaves its PostgreSQL running")

        size = (base / "server.log").stat().st_size
        await farm.start_server("--config", str(config))
        text = await self.wait_for_log(farm, "embedded PostgreSQL running", size)
        self.assertIn(f"adopting PostgreSQL (pid {first.pid}) left running in {datadir}", text)
        self.assertIn("(adopted)", text)
        self.assertEqual(postmasters_of(datadir), [first.pid])  # one postgres, the same

        client = await connect(reactor, farm.endpoint, "anna", timeout=20)
        self.addCleanup(client.aclose)
        await client.submit({"job": {"name": "after", "blocks": [{"name": "b", "command": "true"}]}})
        dsn = cluster.dsn()
        await wait_until(reactor, lambda: self.logs_rows(dsn), 30, "the new job's statistics row")

        await client.aclose()
        await farm.stop()  # a graceful stop stops the adopted cluster too
        self.assertEqual(postmasters_of(datadir), [])

    async def test_stale_pid_file_naming_another_program_is_removed(self) -> None:
        base = base_dir(self)
        os.chmod(base, 0o755)  # the cluster may run as postgres
        cluster = Cluster(base / "pg", find_bin_dir(), nosync=True)  # type: ignore[arg-type]
        self.addCleanup(cluster.stop_blocking)
        cluster.start_blocking()
        postmaster = Postmaster.read(cluster.pid_file)
        assert postmaster is not None
        os.kill(postmaster.pid, signal.SIGKILL)  # as a crash would: postmaster.pid stays

        def all_gone() -> bool:  # reaped too: its socket's lock file names it as well
            return not psutil.pid_exists(postmaster.pid) and not [
                p for p in psutil.process_iter() if _cwd(p) == str(cluster.datadir)]

        await wait_until(reactor, all_gone, 30, "the killed cluster's processes to end")
        # The pid is now another program's (pid reuse): pg_ctl would call the cluster running.
        other = await _spawn_sleeper(self)
        lines = cluster.pid_file.read_text().splitlines()
        cluster.pid_file.write_text("\n".join([str(other), *lines[1:]]) + "\n")

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertEqual(await cluster.start(reactor), "started")
        self.assertTrue(any("removing the stale" in e.get("log_format", "") and e.get("pid") == other
                            for e in logged))
        database = await connect_once(reactor, cluster.dsn("postgres"))
        self.assertEqual(await database.query("SELECT 1 AS one"), [{"one": 1}])
        database.close()
        self.assertTrue(psutil.pid_exists(other), "the other program is left alone")
        await cluster.stop(reactor)


def _cwd(process: psutil.Process) -> str:
    try:
        return process.cwd()
    except psutil.Error:
        return ""


async def _spawn_sleeper(case: TestCase) -> int:
    from twisted.internet.protocol import ProcessProtocol

    proto = ProcessProtocol()
    transport = reactor.spawnProcess(proto, "/bin/sleep", ["sleep", "60"], env={})

    def stop() -> None:
        try:
            os.kill(transport.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass

    case.addCleanup(stop)
    await deferLater(reactor, 0.05)
    return int(transport.pid)


class RestartTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = pgtest.available()
        if reason:
            raise SkipTest(reason)

    async def test_cluster_left_running_elsewhere_is_restarted(self) -> None:
        """Left running on another port than the settings now say: stopped, started again."""
        base = base_dir(self)
        os.chmod(base, 0o755)
        old = Cluster(base / "pg", find_bin_dir(), port=5433, nosync=True)  # type: ignore[arg-type]
        self.addCleanup(old.stop_blocking)
        old.start_blocking()
        before = Postmaster.read(old.pid_file)
        assert before is not None
        cluster = Cluster(base / "pg", find_bin_dir(), nosync=True)  # type: ignore[arg-type]
        self.addCleanup(cluster.stop_blocking)
        self.assertEqual(await cluster.start(reactor), "restarted")
        after = Postmaster.read(cluster.pid_file)
        assert after is not None
        self.assertNotEqual(after.pid, before.pid)
        self.assertEqual(after.port, 5432)
        self.assertEqual(postmasters_of(cluster.datadir), [after.pid])
        database = await connect_once(reactor, cluster.dsn("postgres"))
        self.assertEqual(await database.query("SELECT current_setting('port') AS port"), [{"port": "5432"}])
        database.close()
        await cluster.stop(reactor)
