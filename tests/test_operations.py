"""What operators do, against real server processes: a second start on the same store, a port
in use, an endpoint that is not one. Each must fail loudly (non-zero, one line) and leave
the running farm exactly as it was."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from farmnet.client import connect
from farmnet.server.storelock import StoreInUse, StoreLock
from farmnet.stats.embedded import find_bin_dir
from farmnet.testing import ProcessFarm, twistd_argv


def _child_env(base: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMNET_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent.parent),
                                                      env.get("PYTHONPATH")) if p)
    return env


class StoreLockTests(SynchronousTestCase):
    def test_one_holder_and_the_pid_shown(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="farmnet-lock-"))
        self.addCleanup(shutil.rmtree, base, True)
        first, second = StoreLock(base / "store"), StoreLock(base / "store")
        first.acquire()
        with self.assertRaises(StoreInUse) as caught:
            second.acquire()
        self.assertIn(f"pid {os.getpid()}", str(caught.exception))
        self.assertIn(str(base / "store"), str(caught.exception))
        first.release()
        second.acquire()  # free again
        second.release()


class OperatorTests(TestCase):
    timeout = 180

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-ops-")
        self.addCleanup(shutil.rmtree, self.base, True)
        os.chmod(self.base, 0o711)  # the embedded PostgreSQL runs as postgres when we are root
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)

    async def twistd(self, *args: str) -> tuple[int, str]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [*twistd_argv()[1:], "-n", "--pidfile=", *args], env=_child_env(self.base),
            path=self.base)
        return code, (out + err).decode(errors="replace")

    async def test_a_second_server_on_the_same_store_leaves_the_first_alone(self) -> None:
        """The second start stops before it touches the store or the first farm's embedded
        PostgreSQL (it used to stop that database on its way out)."""
        config = Path(self.base) / "stats.yaml"
        embedded = find_bin_dir() is not None
        config.write_text("server:\n  stats:\n    enabled: true\n" if embedded else
                          "server:\n  stats:\n    enabled: false\n")
        await self.farm.start_server("--config", str(config))
        client = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(client.close)
        job_id, _ = await client.submit({"name": "kept", "blocks": [{"name": "b", "command": "true"}]})
        store = Path(self.base) / "server-store"
        postmaster = store / "postgresql" / "postmaster.pid"
        server = self.farm.server
        assert server is not None
        if embedded:
            for _ in range(1200):
                if "embedded PostgreSQL running" in server.logfile.read_text():
                    break
                await _sleep(0.05)
            self.assertTrue(postmaster.exists(), server.tail())
            pg_pid = int(postmaster.read_text().split()[0])

        code, output = await self.twistd("farmnet", "server", "--config", str(config), "--listen",
                                         "tcp:0:interface=127.0.0.1", "--web", "", "--afanasy", "",
                                         "--store", str(store))
        self.assertEqual(code, 1, output)
        self.assertIn(f"farmnet server: the store {store} is in use by another farmnet server "
                      f"(pid {server.pid})", output)
        self.assertNotIn("Traceback", output)
        # The first farm goes on, its database included.
        self.assertEqual((await client.job(job_id))["name"], "kept")
        if embedded:
            self.assertEqual(int(postmaster.read_text().split()[0]), pg_pid)
            os.kill(pg_pid, 0)  # still running

    async def test_a_port_in_use_exits_1_in_one_line(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await self.twistd("farmnet", "server", "--listen", f"tcp:{port}:interface=127.0.0.1",
                                         "--web", "", "--afanasy", "",
                                         "--store", os.path.join(self.base, "s"))
        self.assertEqual(code, 1, output)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1: Couldn't listen on "
                      f"127.0.0.1:{port}: [Errno 98] Address already in use.", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("farmnet server running", output)

    async def test_endpoints_are_config_errors_all_at_once(self) -> None:
        code, output = await self.twistd("farmnet", "server", "--listen", "tcp:abc", "--web",
                                         "http://127.0.0.1:47302", "--afanasy", "",
                                         "--store", os.path.join(self.base, "s"))
        self.assertNotEqual(code, 0)
        self.assertIn("server.listen: 'tcp:abc' is not an endpoint", output)
        self.assertIn("server.web.listen: 'http://127.0.0.1:47302' is not an endpoint", output)
        self.assertNotIn("Traceback", output)
        self.assertFalse(os.path.exists(os.path.join(self.base, "s")))  # nothing made


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
