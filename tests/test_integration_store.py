"""A store that cannot lose silently, with a real server process on 127.0.0.1: an emptied
file, a removed WAL after commits, a row with bad JSON, a truncated file, and a backup
restored (``farmnet store backup | restore | check`` as child processes)."""

from __future__ import annotations

import re
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from farmnet.client import FarmClient, connect
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.store import Store
from farmnet.server.storecheck import StoreRefused, marker_path, read_marker, write_marker
from farmnet.testing import ProcessFarm, wait_until


def small_job(name: str, annotation: str = "") -> dict[str, Any]:
    return {"job": {"name": name, "annotation": annotation, "blocks": [
        {"name": "b", "command": "true @#@", "frame_first": 1, "frame_last": 2, "parser": "none"}]}}


class StoreSafetyTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-storesafe-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        self.store = self.base / "server-store"
        self.db = self.store / "farm.sqlite"
        self.client: FarmClient | None = None
        self.addCleanup(self._close_client)

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def start(self) -> FarmClient:
        await self.farm.start_server()
        self.client = await connect(reactor, self.farm.endpoint, "anna", timeout=20)
        return self.client

    async def submit(self, count: int, annotation: str = "") -> list[int]:
        assert self.client is not None
        # A submit is answered once its transaction is committed.
        return [(await self.client.submit(small_job(f"shot{i:03d}", annotation)))[0] for i in range(count)]

    async def stop(self) -> None:
        await self._close_client()
        assert self.farm.server is not None
        await self.farm.server.stop()

    async def kill(self) -> None:
        await self._close_client()
        server = self.farm.server
        assert server is not None and server.watch is not None
        ended = server.watch.ended
        self.farm.kill(server)
        await ended

    async def refused(self) -> str:
        """Start the server on the damaged store: it must exit non-zero with one clear
        line (the path, what to do) and no traceback. Returns that line."""
        server = self.farm.spawn("server-refused", [
            "farmnet", "server", "--listen", "tcp:0:interface=127.0.0.1", "--web", "",
            "--store", str(self.store), "--config", str(self.base / "farmnet.yaml")])
        assert server.watch is not None
        reason = await server.watch.ended
        output = server.logfile.read_text(errors="replace")
        self.assertIsInstance(reason, ProcessTerminated, output)
        self.assertNotEqual(reason.exitCode, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "farmnet: store " in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(str(self.db), lines[0])
        self.assertIn("farmnet store restore", lines[0])
        return lines[0]

    async def cli(self, *args: str) -> tuple[int, str]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "store", *args, "--store", str(self.store)],
            env=self.farm.environ, path=str(self.base))
        return code, (out + err).decode()

    async def job_names(self) -> list[str]:
        assert self.client is not None
        return sorted(j["name"] for j in await self.client.jobs("anna"))

    async def test_emptied_file_is_refused(self) -> None:
        await self.start()
        await self.submit(3)
        await self.stop()
        self.db.write_bytes(b"")  # emptied, no WAL (the server checkpointed at stop)
        self.assertFalse(Path(f"{self.db}-wal").exists())
        line = await self.refused()
        self.assertIn("is empty", line)
        self.assertEqual(self.db.stat().st_size, 0)  # nothing written over it

    async def test_removed_wal_after_commits_is_detected(self) -> None:
        await self.start()
        await self.submit(5)
        await self.kill()  # the commits are in farm.sqlite-wal, not yet checkpointed
        wal = Path(f"{self.db}-wal")
        self.assertGreater(wal.stat().st_size, 0)
        wal.unlink()
        line = await self.refused()
        self.assertIn("lost", line)
        code, text = await self.cli("check")
        self.assertEqual(code, 1, text)
        self.assertIn("LOST", text)
        # The operator accepts the loss: the server starts on what is left.
        code, text = await self.cli("check", "--accept")
        self.assertEqual(code, 0, text)
        await self.start()
        self.assertLess(len(await self.job_names()), 5)

    async def test_bad_row_is_quarantined_and_the_rest_served(self) -> None:
        await self.start()
        ids = await self.submit(3)
        await self.stop()
        db = sqlite3.connect(self.db)
        db.execute("UPDATE jobs SET spec='{\"name\": \"shot001\", \"blocks\": [' WHERE id=?", (ids[1],))
        db.commit()
        db.close()
        code, text = await self.cli("check")
        self.assertEqual(code, 1, text)
        self.assertIn(f"would quarantine job {ids[1]}", text)
        await self.start()
        self.assertEqual(await self.job_names(), ["shot000", "shot002"])
        log = self.farm.server.logfile.read_text()  # type: ignore[union-attr]
        self.assertIn(f"job {ids[1]} of 'anna' cannot be loaded", log)
        self.assertIn("quarantine", log)
        await self.stop()
        db = sqlite3.connect(self.db)
        [(item, row)] = db.execute("SELECT item, row FROM quarantine WHERE source='jobs'").fetchall()
        db.close()
        self.assertIn(f"job {ids[1]}", item)
        self.assertIn("shot001", row)  # the row is kept, to repair by hand

    async def test_truncated_file_gives_a_clear_error(self) -> None:
        await self.start()
        await self.submit(40, annotation="x" * 3000)
        await self.stop()
        size = self.db.stat().st_size
        self.assertGreater(size, 100_000)
        with open(self.db, "r+b") as f:
            f.truncate(size // 3)
        line = await self.refused()
        self.assertIn("damaged", line)

    async def test_backup_while_running_and_restore(self) -> None:
        await self.start()
        await self.submit(3)
        code, text = await self.cli("backup")
        self.assertEqual(code, 0, text)
        self.assertIn("backup written", text)
        assert self.client is not None
        await self.client.submit(small_job("after-backup"))
        code, text = await self.cli("restore")
        self.assertEqual(code, 1, text)  # the server holds the store
        self.assertIn("is in use by another farmnet server (pid", text)
        await self.stop()
        code, text = await self.cli("restore")
        self.assertEqual(code, 0, text)
        self.assertTrue(any(p.name.startswith("farm.sqlite.replaced-") for p in self.store.iterdir()))
        code, text = await self.cli("check")
        self.assertEqual(code, 0, text)
        await self.start()
        self.assertEqual(await self.job_names(), ["shot000", "shot001", "shot002"])

    async def test_scheduled_backups_rotate(self) -> None:
        (self.base / "farmnet.yaml").write_text(
            "server:\n  stats:\n    enabled: false\n  store:\n    backup_interval: 0.3\n    backups: 2\n")
        await self.farm.start_server("--config", str(self.base / "farmnet.yaml"))
        self.client = await connect(reactor, self.farm.endpoint, "anna", timeout=20)
        await self.submit(2)
        backups = self.store / "backups"

        def rotated() -> bool:
            log = self.farm.server.logfile.read_text()  # type: ignore[union-attr]
            return len(re.findall(r"store backup \S+ written", log)) >= 4

        await wait_until(reactor, rotated, 30, "four scheduled backups")
        self.assertLessEqual(len([p for p in backups.iterdir() if p.suffix == ".sqlite"]), 2)


class GuardTests(SynchronousTestCase):
    """The checks at open on a store in this process (no server)."""

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-guard-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def make(self, name: str, jobs: int) -> Path:
        path = self.base / name / "farm.sqlite"
        clock = Clock()
        farm = Farm(clock)
        store = Store(clock, path, farm)
        store.load()
        store.follow()
        for i in range(jobs):
            farm.submit(parse_job(small_job(f"j{i}"))[0], "anna")
            store.write_now()
        store.close()
        return path

    def open(self, path: Path) -> Store:
        clock = Clock()
        store = Store(clock, path, Farm(clock))
        self.addCleanup(store.close)
        store.load()
        return store

    def test_another_stores_file_is_refused(self) -> None:
        ours, theirs = self.make("ours", 2), self.make("theirs", 1)
        shutil.copy(theirs, ours)
        with self.assertRaises(StoreRefused) as caught:
            self.open(ours)
        self.assertIn("belongs to another store", str(caught.exception))

    def test_a_lagging_or_missing_marker_is_written_again(self) -> None:
        path = self.make("s", 3)
        marker = read_marker(path)
        assert marker is not None
        write_marker(path, marker["store_id"], 1)  # behind: a power cut before the rename reached disk
        self.assertEqual(self.open(path).guard.generation, 3)
        marker_path(path).unlink()
        store = self.open(path)
        self.assertEqual(len([j for j in store.farm.jobs.values() if j.user_name == "anna"]), 3)
        self.assertEqual(read_marker(path), {"store_id": marker["store_id"], "generation": 3})

    def test_each_commit_moves_the_generation(self) -> None:
        path = self.make("s", 4)
        self.assertEqual(read_marker(path)["generation"], 4)  # type: ignore[index]
        db = sqlite3.connect(path)
        self.assertEqual(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone(), ("4",))
        db.close()
