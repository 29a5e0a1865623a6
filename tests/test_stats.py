"""Statistics against a real PostgreSQL: rows, spool, outages, schema, queries, tools.

One throwaway cluster (farmnet.stats.pgtest: a temp directory, Unix socket only, fsync
off; as root it runs as postgres) serves the whole module, started on first use and
removed at exit; every test gets its own database. Tests are skipped when no PostgreSQL
server binaries are installed (scripts/test installs them on CI).
"""

from __future__ import annotations

import argparse
import atexit
import grp
import os
import pwd
import shutil
import signal
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

import attrs
import psycopg2
from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SkipTest, TestCase

import farmnet
from farmnet.config import SchedulingConfig, StatsConfig
from farmnet.model.data import Render, TaskRun
from farmnet.model.events import RunEnded
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.stats import admin, db, pgtest, schema
from farmnet.stats.db import Database, connect_once
from farmnet.stats.embedded import Cluster, ClusterError, EmbeddedPostgres, find_bin_dir
from farmnet.stats.queries import Filter, QueryError, StatsQueries
from farmnet.stats.recorder import Recorder, Rows, Writer, _clean, encode_batch
from farmnet.stats.service import StatsService
from farmnet.stats.spool import Spool
from farmnet.testing import wait_until

T0 = 1_700_000_000.0


class Shared:
    """The module's cluster, started on first use (about 1.5 s) and removed at exit."""

    cluster: ClassVar[pgtest.ThrowawayCluster | None] = None

    @classmethod
    def get(cls) -> pgtest.ThrowawayCluster:
        if cls.cluster is None:
            reason = pgtest.available()
            if reason:
                raise SkipTest(reason)
            cls.cluster = pgtest.ThrowawayCluster().start()
            atexit.register(cls.cluster.destroy)
        return cls.cluster


def tmpdir(case: TestCase, mode: int = 0o755) -> Path:
    path = Path(tempfile.mkdtemp(prefix="farmnet-stats-"))
    os.chmod(path, mode)  # the embedded PostgreSQL (the postgres user) must get in
    case.addCleanup(shutil.rmtree, path, True)
    return path


def run(n: int, *, job_id: int = 1, user: str = "anna", host: str = "r1", service: str = "generic",
        state: str = "DON", exit_code: int | None = 0, started: float = T0, seconds: float = 10.0,
        folder_job: str = "job") -> TaskRun:
    return TaskRun(job_id=job_id, block=0, task=n, run=1, job_name=folder_job, block_name="render",
                   task_name=f"frame {n}", user_name=user, host=host, service=service, capacity=1000,
                   command=f"echo {n}", frame_start=n, frame_end=n, time_started=started,
                   time_done=started + seconds, exit_code=exit_code, signal=None, state=state,
                   errors_count=0 if state == "DON" else 1, message="" if state == "DON" else "exit 1",
                   peak_memory_mb=100)


class PgTestCase(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.cluster = Shared.get()
        self.dsn = await self.cluster.create_database(reactor)
        self.addCleanup(self._drop)

    async def _drop(self) -> None:
        try:
            await self.cluster.drop_database(reactor, self.dsn)
        except Exception:
            pass  # a test that stopped the cluster: the database goes with the cluster

    async def connect(self, upgrade: bool = True) -> Database:
        database = await connect_once(reactor, self.dsn)
        self.addCleanup(database.close)
        if upgrade:
            await schema.upgrade(database)
        return database

    async def count(self, sql: str = "SELECT count(*) AS n FROM tasks", params: Any = None) -> int:
        database = await connect_once(reactor, self.dsn)
        try:
            return int((await database.query(sql, params))[0]["n"])
        finally:
            database.close()

    def writer(self, recorder: Recorder, *, dsn: str | None = None, spool_dir: Path | None = None,
               batch_rows: int = 500, flush: float = 0.05, max_bytes: int = 64 << 20) -> Writer:
        async def prepare(database: Database) -> None:
            await schema.upgrade(database)

        database = Database(reactor, dsn or self.dsn, reconnect_max_delay=0.3, on_connect=prepare)
        self.addCleanup(database.close)
        spool = Spool(spool_dir or tmpdir(self), max_bytes)
        writer = Writer(reactor, database, recorder, spool, batch_rows=batch_rows, flush_interval=flush,
                        on_schema_missing=lambda: prepare(database))
        writer.start()
        self.addCleanup(writer.stop, 2.0)
        defer.ensureDeferred(database.start())
        return writer


class FarmDriver:
    """A real Farm on the real reactor; the test plays the render."""

    def __init__(self, case: TestCase) -> None:
        self.farm = Farm(reactor, SchedulingConfig(errors_retries=1))
        case.addCleanup(self.farm.stop)
        self.clock = 0.0

    async def tick(self) -> None:
        await task.deferLater(reactor, 0, lambda: None)

    async def render(self, name: str) -> Render:
        render = self.farm.register_render(name, capacity=1000, cpus=8, memory_mb=16384, platform="linux")
        await self.tick()
        return render

    async def submit(self, doc: dict[str, Any], user: str = "anna") -> Any:
        spec, _ = parse_job(doc)
        job = self.farm.submit(spec, user)
        await self.tick()
        return job

    async def play(self, render: Render, fail: Collection[tuple[int, int]] = ()) -> int:
        """Finish every task handed to ``render`` (failing (task, run) pairs in ``fail``)
        until nothing more comes; returns how many runs ended."""
        ended = 0
        while True:
            await self.tick()
            orders = [o for o in self.farm.take_orders(render) if o.order == "start"]
            if not orders:
                return ended
            for order in orders:
                key = (order.job_id, order.block, order.task)
                failed = (order.task, order.run) in fail
                self.clock += 10
                self.farm.task_finished(render, key, order.run, exit_code=1 if failed else 0, signal=None,
                                        time_started=T0 + self.clock, time_done=T0 + self.clock + 7.5,
                                        message="boom" if failed else "", peak_memory_mb=512)
                ended += 1


def job_doc(name: str = "shot010", frames: int = 3, **extra: Any) -> dict[str, Any]:
    block = {"name": "render", "command": "render -f @####@", "frame_first": 1, "frame_last": frames,
             "service": "blender", "capacity": 1000, "working_directory": "/proj/shot010"}
    block.update(extra.pop("block", {}))
    return {"job": {"name": name, "blocks": [block], **extra}}


class SchemaTests(PgTestCase):
    async def test_fresh_then_idempotent(self) -> None:
        database = await self.connect(upgrade=False)
        self.assertEqual(await schema.current_version(database), 0)
        self.assertEqual(await schema.upgrade(database), (0, schema.LATEST))
        self.assertEqual(await schema.upgrade(database), (schema.LATEST, schema.LATEST))
        rows = await database.query("SELECT version FROM schema_version ORDER BY version")
        self.assertEqual([r["version"] for r in rows], [m.version for m in schema.MIGRATIONS])

    async def test_upgrade_from_an_older_version_keeps_rows(self) -> None:
        database = await self.connect(upgrade=False)
        self.assertEqual(await schema.upgrade(database, schema.MIGRATIONS[:1]), (0, 1))
        await database.execute("INSERT INTO tasks (job_id, job_name, user_name) VALUES (%s, %s, %s)",
                               (7, "old", "anna"))
        self.assertEqual(await schema.upgrade(database), (1, schema.LATEST))
        rows = await database.query("SELECT job_name FROM tasks")
        self.assertEqual(rows, [{"job_name": "old"}])
        indexes = await database.query("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")
        self.assertIn("tasks_user_time", {r["indexname"] for r in indexes})
        # The batch statement works on the upgraded schema.
        batch = encode_batch("b1", [_task_row(1)], [], [])
        await database.execute(schema.BATCH_INSERT, ("[" + batch.line + "]",))
        self.assertEqual(await self.count(), 2)

    async def test_newer_database_is_refused(self) -> None:
        database = await self.connect()
        await database.execute("INSERT INTO schema_version (version) VALUES (%s)", (schema.LATEST + 1,))
        with self.assertRaises(schema.SchemaTooNew):
            await schema.upgrade(database)

    async def test_batch_written_twice_is_stored_once(self) -> None:
        database = await self.connect()
        log = [T0, "anna", "job_created", "j", 1, ""]
        batch = encode_batch("same", [_task_row(1), _task_row(2)], [], [log])
        payload = "[" + batch.line + "]"
        await database.execute(schema.BATCH_INSERT, (payload,))
        await database.execute(schema.BATCH_INSERT, (payload,))
        await database.execute(schema.BATCH_INSERT, ("[" + batch.line + "," + batch.line + "]",))
        self.assertEqual(await self.count(), 2)
        self.assertEqual(await self.count("SELECT count(*) AS n FROM logs"), 1)


def _task_row(n: int) -> list[Any]:
    r = run(n)
    return [r.job_id, r.job_name, r.block, r.block_name, r.task, r.task_name, r.run, r.user_name, r.host,
            r.service, r.capacity, r.command, r.frame_start, r.frame_end, r.time_started, r.time_done,
            r.exit_code, r.signal, r.state, r.errors_count, r.message, r.peak_memory_mb, "/f"]


class RecorderTests(PgTestCase):
    """A real Farm driven in-process; rows checked in the database."""

    async def setUp(self) -> None:
        await super().setUp()
        self.driver = FarmDriver(self)
        self.recorder = Recorder(reactor)
        self.recorder.attach(self.driver.farm)
        self.addCleanup(self.recorder.detach)
        self.writer = self.writer(self.recorder)
        await wait_until(reactor, lambda: self.writer.db.ready, 20, "connected")
        self.database = await self.connect(upgrade=False)

    async def written(self, table: str, n: int) -> list[dict[str, Any]]:
        await wait_until(reactor, lambda: self._at_least(table, n), 20, f"{n} rows in {table}")
        return await self.database.query(f"SELECT * FROM {table} ORDER BY id")

    async def _at_least(self, table: str, n: int) -> bool:
        return await self.count(f"SELECT count(*) AS n FROM {table}") >= n

    async def test_task_rows(self) -> None:
        render = await self.driver.render("r1")
        job = await self.driver.submit(job_doc(frames=2, folders={"output": "/proj/shot010/render"}))
        self.assertEqual(await self.driver.play(render, fail={(0, 1)}), 3)
        self.assertTrue(job.done)
        rows = await self.written("tasks", 3)
        first, retry, second = sorted(rows, key=lambda r: (r["task"], r["run"]))
        self.assertEqual(
            (first["task"], first["run"], first["state"], first["exit_code"], first["errors_count"]),
            (0, 1, "RDY", 1, 1))
        self.assertEqual(first["message"], "boom")
        self.assertEqual((retry["task"], retry["run"], retry["state"], retry["exit_code"]), (0, 2, "DON", 0))
        for row in rows:
            self.assertEqual(row["job_id"], job.id)
            self.assertEqual((row["job_name"], row["block_name"], row["user_name"], row["host"]),
                             ("shot010", "render", "anna", "r1"))
            self.assertEqual((row["service"], row["capacity"], row["peak_memory_mb"]), ("blender", 1000, 512))
            self.assertEqual(row["folder"], "/proj/shot010/render")
            self.assertAlmostEqual(row["run_time"], 7.5)
            self.assertAlmostEqual((row["time_done"] - row["time_started"]).total_seconds(), 7.5)
        self.assertEqual((second["task_name"], second["command"], second["frame_start"], second["frame_end"]),
                         ("frame 2", "render -f 0002", 2, 2))

    async def test_a_multi_host_run_keeps_every_host(self) -> None:
        r1, r2 = await self.driver.render("r1"), await self.driver.render("r2")
        await self.driver.submit(job_doc(frames=1, block={"multihost_min": 2}))
        self.assertEqual(await self.driver.play(r2), 0)  # r2 is a secondary: no start order
        self.assertEqual(await self.driver.play(r1), 1)
        [row] = await self.written("tasks", 1)
        self.assertEqual((row["host"], row["hosts"], row["state"]), ("r1", "r1 r2", "DON"))
        queries = StatsQueries(self.database)
        [shown] = await queries.tasks()
        self.assertEqual((shown["host"], shown["hosts"]), ("r1", "r1 r2"))

    async def test_folder_falls_back_to_working_directory(self) -> None:
        render = await self.driver.render("r1")
        await self.driver.submit(job_doc(frames=1))
        await self.driver.play(render)
        [row] = await self.written("tasks", 1)
        self.assertEqual(row["folder"], "/proj/shot010")

    async def test_job_row_at_done(self) -> None:
        render = await self.driver.render("r1")
        job = await self.driver.submit(job_doc(frames=3, project="film", department="fx"), user="bob")
        await self.driver.play(render, fail={(1, 1)})
        [row] = await self.written("jobs", 1)
        self.assertEqual((row["job_id"], row["job_name"], row["user_name"], row["reason"], row["state"]),
                         (job.id, "shot010", "bob", "done", "DON"))
        self.assertEqual((row["tasks_quantity"], row["tasks_done"], row["tasks_error"]), (3, 3, 0))
        self.assertEqual((row["runs"], row["errors_count"], row["blocks"]), (4, 1, 1))
        self.assertAlmostEqual(row["run_time_sum"], 4 * 7.5)
        self.assertAlmostEqual(row["capacity_time_sum"], 4 * 7.5 * 1000)
        self.assertEqual((row["service"], row["folder"], row["project"], row["department"]),
                         ("blender", "/proj/shot010", "film", "fx"))
        self.assertIsNotNone(row["time_done"])
        # Deleting a job already recorded as done adds no second row.
        self.driver.farm.job_action("bob", [job.id], "delete")
        await self.written("logs", 5)  # user_added, render_online, job_created, job_done, job_deleted
        self.assertEqual(await self.count("SELECT count(*) AS n FROM jobs"), 1)

    async def test_job_row_at_delete_when_not_done(self) -> None:
        render = await self.driver.render("r1")
        job = await self.driver.submit(job_doc(frames=5))
        orders = self.driver.farm.take_orders(render)
        self.assertEqual(len(orders), 1)
        self.driver.farm.task_finished(render, (job.id, 0, 0), 1, exit_code=0, signal=None,
                                       time_started=T0, time_done=T0 + 3)
        self.driver.farm.job_action("anna", [job.id], "delete")
        [row] = await self.written("jobs", 1)
        self.assertEqual((row["reason"], row["tasks_quantity"], row["tasks_done"], row["runs"]),
                         ("deleted", 5, 1, 1))
        self.assertIsNone(row["time_done"])

    async def test_logs(self) -> None:
        render = await self.driver.render("r1")
        job = await self.driver.submit(job_doc(frames=1))
        await self.driver.play(render)
        self.driver.farm.render_lost(render, zombie=True)
        self.driver.farm.job_action("anna", [job.id], "delete")
        await self.driver.render("r1")  # back online
        rows = await self.written("logs", 8)
        events = [(r["type"], r["subject"], r["object"]) for r in rows]
        self.assertEqual(sorted(events), sorted([
            ("render_online", "r1", "r1"), ("user_added", "anna", "anna"),
            ("job_created", "anna", "shot010"), ("job_done", "anna", "shot010"),
            ("render_zombie", "r1", "r1"), ("render_offline", "r1", "r1"), ("job_deleted", "anna", "shot010"),
            ("render_online", "r1", "r1")]))
        created = next(r for r in rows if r["type"] == "job_created")
        self.assertEqual(created["object_id"], job.id)
        self.assertIn("1 tasks", created["info"])


class OutageTests(PgTestCase):
    timeout = 90

    async def test_database_stopped_mid_run_loses_and_duplicates_nothing(self) -> None:
        recorder = Recorder(reactor, full_rows=100)
        writer = self.writer(recorder, batch_rows=100, flush=0.05)
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        produced = 0

        def produce() -> None:
            nonlocal produced
            for _ in range(20):
                recorder.record_run(run(produced))
                produced += 1

        loop = task.LoopingCall(produce)
        loop.clock = reactor
        loop.start(0.01)
        try:
            await wait_until(reactor, lambda: writer.rows_written >= 500, 20, "rows written")
            await self.cluster.stop_async(reactor)
            await wait_until(reactor, lambda: writer.rows_spooled >= 1000, 20, "rows spooled")
            self.assertFalse(writer.db.ready)
            await self.cluster.start_async(reactor)
            await wait_until(reactor, lambda: writer.db.ready, 20, "reconnected")
            await task.deferLater(reactor, 0.3, lambda: None)  # keep producing while draining
        finally:
            loop.stop()
        await wait_until(reactor, lambda: writer.pending == 0, 30, "everything written")
        database = await self.connect(upgrade=False)
        [rows] = await database.query("SELECT count(*) AS n, count(DISTINCT task) AS tasks, min(task) AS low,"
                                      " max(task) AS high FROM tasks")
        self.assertEqual(rows, {"n": produced, "tasks": produced, "low": 0, "high": produced - 1})
        self.assertEqual(writer.rows_lost + writer.rows_refused, 0)

    async def test_answer_lost_after_commit_is_not_duplicated(self) -> None:
        """A COPY committed whose answer is lost: the batch is spooled too, and its id in the
        ledger makes the second write (from the spool) a no-op."""
        recorder = Recorder(reactor)
        writer = self.writer(recorder, flush=0.05)
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        real = writer._copy
        lost = []

        def commit_then_lose(*args: Any) -> bool:
            written = real(*args)
            if not lost:
                lost.append(True)
                raise psycopg2.OperationalError("test: the answer is lost")
            return written

        self.patch(writer, "_copy", commit_then_lose)
        for n in range(10):
            recorder.record_run(run(n))
        await wait_until(reactor, lambda: lost and writer.pending == 0 and writer.db.ready, 20, "written")
        self.assertEqual(await self.count(), 10)
        self.assertEqual(writer.rows_lost + writer.rows_refused, 0)

    async def test_answer_lost_after_commit_from_the_spool_is_not_duplicated(self) -> None:
        """The same for a batch written back from the spool."""
        recorder = Recorder(reactor)
        writer = self.writer(recorder, flush=0.05)
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        real_copy, real_copy_spooled = writer._copy, writer._copy_spooled
        failed, lost = [], []

        def fail_once(*args: Any) -> bool:  # before anything is sent: the batch goes to the spool
            if not failed:
                failed.append(True)
                raise psycopg2.OperationalError("test: connection lost")
            return real_copy(*args)

        def commit_then_lose(lines: list[bytes]) -> int:
            written = real_copy_spooled(lines)
            if not lost:
                lost.append(True)
                raise psycopg2.OperationalError("test: the answer is lost")
            return written

        self.patch(writer, "_copy", fail_once)
        self.patch(writer, "_copy_spooled", commit_then_lose)
        for n in range(10):
            recorder.record_run(run(n))
        await wait_until(reactor, lambda: lost and writer.pending == 0 and writer.db.ready, 20, "written")
        self.assertEqual(await self.count(), 10)

    async def test_write_stuck_mid_batch_is_cancelled_and_spooled(self) -> None:
        """A COPY that hangs inside PostgreSQL (here: the table locked by another session) is
        cancelled after write_timeout; its rows wait in the spool and arrive once when the
        database can take them again, with the batches behind them."""
        recorder = Recorder(reactor, full_rows=50)
        writer = self.writer(recorder, batch_rows=50, flush=0.05)
        writer.write_timeout = 0.5
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        locker = psycopg2.connect(self.dsn)
        self.addCleanup(locker.close)
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
        for n in range(120):
            recorder.record_run(run(n))
        await wait_until(reactor, lambda: writer.rows_spooled > 0, 20, "a batch spooled")
        self.assertEqual(writer.rows_written, 0)
        locker.rollback()
        for n in range(120, 150):
            recorder.record_run(run(n))
        await wait_until(reactor, lambda: writer.db.ready and writer.pending == 0, 30, "everything written")
        database = await self.connect(upgrade=False)
        [rows] = await database.query("SELECT count(*) AS n, count(DISTINCT task) AS tasks FROM tasks")
        self.assertEqual(rows, {"n": 150, "tasks": 150})
        self.assertEqual(writer.rows_lost + writer.rows_refused, 0)

    async def test_database_stopped_mid_batch_loses_and_duplicates_nothing(self) -> None:
        """PostgreSQL stopped while a COPY's rows are in the staging table, its INSERT waiting
        for a lock: the transaction is gone with the server; the rows go to the spool and
        arrive once when it is back, with those behind them."""
        recorder = Recorder(reactor, full_rows=50)
        writer = self.writer(recorder, batch_rows=50, flush=0.05)
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        locker = psycopg2.connect(self.dsn)
        self.addCleanup(locker.close)
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
        for n in range(80):
            recorder.record_run(run(n))

        async def waiting_for_the_lock() -> bool:
            with locker.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                return bool(cursor.fetchone()[0])

        await wait_until(reactor, waiting_for_the_lock, 20, "a write waiting for the lock")
        await self.cluster.stop_async(reactor)
        for n in range(80, 120):
            recorder.record_run(run(n))
        await wait_until(reactor, lambda: writer.rows_spooled >= 100, 20, "rows spooled")
        self.assertEqual(writer.rows_written, 0)
        await self.cluster.start_async(reactor)
        await wait_until(reactor, lambda: writer.db.ready and writer.pending == 0, 30, "everything written")
        database = await self.connect(upgrade=False)
        [rows] = await database.query("SELECT count(*) AS n, count(DISTINCT task) AS tasks FROM tasks")
        self.assertEqual(rows, {"n": 120, "tasks": 120})
        self.assertEqual(writer.rows_lost + writer.rows_refused, 0)

    async def test_a_role_that_cannot_copy_still_writes(self) -> None:
        """Without the TEMPORARY privilege the COPY path has no staging tables: every batch goes
        by a JSON statement instead, nothing lost, and the log says so once."""
        name = db.dsn_field(self.dsn, "dbname")
        role = f"{name}_no_temp"
        admin_db = await connect_once(reactor, self.cluster.dsn("postgres"))
        self.addCleanup(admin_db.close)

        async def drop() -> None:
            await admin_db.execute(f"DROP DATABASE IF EXISTS {db.quote_ident(name)} WITH (FORCE)")
            await admin_db.execute(f"DROP ROLE IF EXISTS {db.quote_ident(role)}")

        await admin_db.execute(f"CREATE ROLE {db.quote_ident(role)} LOGIN")
        self.addCleanup(drop)
        await admin_db.execute(f"ALTER DATABASE {db.quote_ident(name)} OWNER TO {db.quote_ident(role)}")
        await admin_db.execute(
            f"REVOKE TEMPORARY ON DATABASE {db.quote_ident(name)} FROM PUBLIC, {db.quote_ident(role)}")
        dsn = db.make_dsn(**{**db.parse_dsn(self.dsn), "user": role})
        recorder = Recorder(reactor)
        writer = self.writer(recorder, dsn=dsn, batch_rows=10)
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        for n in range(35):
            recorder.record_run(run(n))
        await wait_until(reactor, lambda: writer.pending == 0 and writer.rows_written == 35, 20, "written")
        self.assertIn("permission denied", writer._copy_refusal)
        self.assertEqual(await self.count(), 35)

    async def test_copy_and_json_write_the_same_values(self) -> None:
        """Values COPY's text format must escape (tab, newline, CR, backslash, a literal \\N,
        NUL, NULL next to the string "None", NaN) arrive as the JSON way writes them."""
        texts = ["a\tb", "two\nlines", "cr\r", "C:\\Nuke\\shot", "\\N", "None", "", "naïve ✓",
                 "nul\x00here", "info nan inf"]
        rows = []
        for n, text in enumerate(texts):
            row = _task_row(n)
            row[20] = text  # message
            row[22] = None if n % 2 else text  # folder
            if n == 3:
                row[15] = float("nan")
            rows.append(tuple(row) + (None,))
        database = await self.connect()
        copier = db.CopyConnection(self.dsn, setup=schema.COPY_SETUP)
        self.addCleanup(copier.close)
        batch = Rows("copy", rows, [], [[T0, "anna", "job_created", "j\tx", 1, "\\"]])
        batches = [(batch.id, batch.rows, batch.copy_tables())]
        written = await threads.deferToThread(copier.run, lambda cursor: schema.copy_batches(cursor, batches))
        self.assertEqual(written, 1)
        twice = batches * 2
        again = await threads.deferToThread(copier.run, lambda cursor: schema.copy_batches(cursor, twice))
        self.assertEqual(again, 0)  # the ledger has it
        line = encode_batch("json", [[_clean(v) for v in row] for row in rows], [], batch.logs).line
        await database.execute(schema.BATCH_INSERT, ("[" + line + "]",))
        columns = "task, message, folder, time_done, run_time, hosts"
        select = f"SELECT {columns} FROM tasks WHERE id {{}} %s ORDER BY id"
        copied = await database.query(select.format("<="), (len(rows),))
        via_json = await database.query(select.format(">"), (len(rows),))
        self.assertEqual(copied, via_json)
        self.assertEqual([r["message"] for r in copied], [t.replace("\x00", "") for t in texts])
        self.assertIsNone(copied[3]["time_done"])
        self.assertEqual(await self.count("SELECT count(DISTINCT info || object) AS n FROM logs"), 1)

    async def test_spool_survives_a_restart_and_a_truncated_line(self) -> None:
        spool_dir = tmpdir(self)
        first = Recorder(reactor)
        dead = db.make_dsn(host=str(tmpdir(self)), dbname="nowhere", user="postgres")
        writer = self.writer(first, dsn=dead, spool_dir=spool_dir, batch_rows=30)
        for n in range(100):
            first.record_run(run(n))
        await wait_until(reactor, lambda: writer.rows_spooled == 100, 20, "spooled")
        await writer.stop(2.0)
        writer.db.close()
        segments = sorted(spool_dir.glob("*.jsonl"))
        with segments[-1].open("ab") as f:
            f.write(encode_batch("torn", [_task_row(999)], [], []).line.encode()[:40])
        second = Recorder(reactor)
        again = self.writer(second, spool_dir=spool_dir)
        second.record_run(run(100))  # a new row waits behind the spooled ones
        await wait_until(reactor, lambda: again.db.ready and again.pending == 0, 20, "spool written")
        self.assertEqual(await self.count("SELECT count(DISTINCT task) AS n FROM tasks"), 101)
        self.assertEqual(await self.count(), 101)
        self.assertEqual(list(spool_dir.glob("*.jsonl")), [])


    async def test_refused_rows_are_dropped_alone(self) -> None:
        """A damaged spooled line is refused (and counted) without holding up the others;
        a NUL character, which PostgreSQL text cannot hold, is cleaned out."""
        spool_dir = tmpdir(self)
        good = encode_batch("good", [_task_row(1)], [], []).line
        damaged = good.replace('"id":"good"', '"id":"bad"').replace("]]", "]")  # not JSON any more
        (spool_dir / "00000001.jsonl").write_text(damaged + "\n" + good + "\n")
        recorder = Recorder(reactor)
        writer = self.writer(recorder, spool_dir=spool_dir)
        recorder.record_run(attrs.evolve(run(2), message="bad\x00byte"))
        # The spool is read after the connection: wait for both good rows, not an empty queue.
        await wait_until(reactor, lambda: writer.db.ready and writer.pending == 0 and writer.rows_written >= 2
                         and writer.rows_refused == 1, 20, "written")
        database = await self.connect(upgrade=False)
        rows = await database.query("SELECT task, message FROM tasks ORDER BY task")
        self.assertEqual(rows, [{"task": 1, "message": ""}, {"task": 2, "message": "badbyte"}])
        self.assertEqual(writer.rows_refused, 1)

    async def test_tables_dropped_while_running_are_created_again(self) -> None:
        recorder = Recorder(reactor)
        writer = self.writer(recorder)
        await wait_until(reactor, lambda: writer.db.ready, 20, "connected")
        await admin.db_reset(reactor, self.dsn)
        database = await self.connect(upgrade=False)
        await schema.drop_all(database)
        recorder.record_run(run(1))
        await wait_until(reactor, lambda: writer.pending == 0 and writer.rows_written == 1, 20, "written")
        self.assertEqual(await self.count(), 1)

    async def test_stop_with_the_database_down_keeps_rows_on_disk(self) -> None:
        spool_dir = tmpdir(self)
        recorder = Recorder(reactor)
        writer = self.writer(recorder, dsn=db.make_dsn(host=str(tmpdir(self)), dbname="x", user="postgres"),
                             spool_dir=spool_dir, flush=30.0)
        for n in range(5):
            recorder.record_run(run(n))
        await writer.stop(1.0)
        self.assertEqual((recorder.count, writer.rows_spooled), (0, 5))
        spool = Spool(spool_dir, 1 << 20)
        self.assertEqual(spool.open(), 5)
        spool.close()


class QueryTests(PgTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.database = await self.connect()
        tasks = []
        for n in range(40):
            r = run(n, user=("anna", "bob")[n % 2], host=f"r{n % 4}", service=("blender", "nuke")[n % 3 == 0],
                    state="DON" if n % 5 else "ERR", exit_code=0 if n % 5 else 1, started=T0 + n * 60,
                    seconds=30.0)
            row = _task_row(n)
            row[7], row[8], row[9], row[18], row[16] = r.user_name, r.host, r.service, r.state, r.exit_code
            row[14], row[15] = r.time_started, r.time_done
            row[22] = f"/proj/{'ab'[n % 2]}/shot{n % 3}"
            tasks.append(row)
        jobs = [[1, "j1", "anna", "ws1", "blender", "/proj/a/shot0", "film", "fx", 50, 1, 20, 20, 0, 20, 0,
                 600.0, 6e5, T0, T0, T0 + 3600, "DON", "done", T0 + 3600]]
        logs = [[T0 + i, "anna", "job_created", f"j{i}", i, "x"] for i in range(5)]
        batch = encode_batch("seed", tasks, jobs, logs)
        await self.database.execute(schema.BATCH_INSERT, ("[" + batch.line + "]",))
        self.queries = StatsQueries(self.database)

    async def test_tasks_table(self) -> None:
        rows = await self.queries.tasks_table("user", order="key")
        self.assertEqual([(r["key"], r["runs"], r["done"], r["errors"]) for r in rows],
                         [("anna", 20, 16, 4), ("bob", 20, 16, 4)])
        self.assertAlmostEqual(rows[0]["run_time_sum"], 600.0)
        rows = await self.queries.tasks_table("folder", Filter(folder="/proj/a"), depth=2, order="key")
        self.assertEqual([(r["key"], r["runs"]) for r in rows], [("/proj/a", 20)])
        rows = await self.queries.tasks_table("host", Filter(since=T0, until=T0 + 10 * 60))
        self.assertEqual(sum(r["runs"] for r in rows), 10)

    async def test_per_interval_and_run_time_and_errors(self) -> None:
        rows = await self.queries.tasks_per_interval("hour", by="user")
        self.assertEqual(sum(r["runs"] for r in rows), 40)
        rows = await self.queries.run_time("service")
        self.assertTrue(all(r["average"] == 30.0 for r in rows))
        rows = await self.queries.errors("user")
        self.assertEqual({r["key"]: r["errors"] for r in rows}, {"anna": 4, "bob": 4})
        failed = await self.queries.tasks(Filter(user="anna"), errors_only=True)
        self.assertEqual(len(failed), 4)

    async def test_utilisation_and_jobs_and_logs(self) -> None:
        rows = await self.queries.render_utilisation(Filter(since=T0, until=T0 + 40 * 60))
        self.assertEqual({r["host"] for r in rows}, {"r0", "r1", "r2", "r3"})
        for row in rows:
            self.assertAlmostEqual(row["busy"], 10 * 30.0)
            self.assertAlmostEqual(row["utilisation"], 300.0 / 2400.0)
        # Clipped: a window ending 10 s into the first run.
        [row] = await self.queries.render_utilisation(Filter(since=T0 - 100, until=T0 + 10))
        self.assertAlmostEqual(row["busy"], 10.0)
        [job] = await self.queries.jobs_table("project")
        self.assertEqual((job["key"], job["jobs"], job["tasks_done"]), ("film", 1, 20))
        self.assertEqual(len(await self.queries.jobs(Filter(user="anna"))), 1)
        logs = await self.queries.logs(types=["job_created"], limit=3)
        self.assertEqual([r["object"] for r in logs], ["j4", "j3", "j2"])

    async def test_sql_injection_is_harmless(self) -> None:
        evil = ["x'; DROP TABLE tasks; --", "' OR '1'='1", "anna' --", '"; DROP TABLE jobs; --',
                "1); DELETE FROM logs; --", "%", "\\", "_"]
        for text in evil:
            for field in ("user", "service", "host", "folder"):
                f = Filter(**{field: text})
                for call in (self.queries.tasks_table("user", f), self.queries.jobs_table("user", f),
                             self.queries.tasks(f), self.queries.jobs(f),
                             self.queries.tasks_per_interval("day", f), self.queries.run_time("host", f),
                             self.queries.errors("user", f), self.queries.render_utilisation(f)):
                    self.assertEqual(await call, [], f"{field}={text!r}")
                logs = await self.queries.logs(f)  # events have no service or folder: ignored
                self.assertEqual(len(logs), 0 if field in ("user", "host") else 5)
            self.assertEqual(await self.queries.logs(subject=text), [])
            q = self.queries
            for method, args, kwargs in (
                    (q.tasks_table, (text,), {}), (q.jobs_table, (text,), {}), (q.run_time, (text,), {}),
                    (q.errors, (text,), {}), (q.tasks_table, ("user",), {"order": text}),
                    (q.jobs_table, ("user",), {"order": text}), (q.tasks_per_interval, (text,), {}),
                    (q.tasks_per_interval, ("day",), {"by": text}), (q.logs, (), {"types": [text]}),
                    (q.tasks, (Filter(since=text),), {}), (q.tasks, (Filter(until=text),), {}),
                    (q.tasks, (Filter(job_id=text),), {}), (q.tasks, (), {"limit": text}),
                    (q.jobs, (), {"offset": text}), (q.tasks_table, ("folder",), {"depth": text})):
                with self.assertRaises(QueryError, msg=f"{method.__name__} {args} {kwargs}"):
                    await method(*args, **kwargs)
        self.assertEqual(await self.count(), 40, "tasks intact")
        self.assertEqual(await self.count("SELECT count(*) AS n FROM jobs"), 1)
        self.assertEqual(await self.count("SELECT count(*) AS n FROM logs"), 5)

    async def test_folder_prefix_escapes_like_wildcards(self) -> None:
        self.assertEqual(await self.queries.tasks(Filter(folder="/proj/_")), [])
        self.assertEqual(len(await self.queries.tasks(Filter(folder="/proj/a/"), limit=100)), 20)


class AdminTests(PgTestCase):
    async def test_db_check_working(self) -> None:
        message = await admin.db_check(reactor, self.dsn)
        self.assertTrue(message.startswith("Database connection is working"), message)
        self.assertIn("no statistics tables yet", message)

    async def test_db_check_dead_dsn_prints_the_error(self) -> None:
        dead = db.make_dsn(host=str(tmpdir(self)), dbname="nowhere", user="postgres")
        message = await admin.db_check(reactor, dead)
        self.assertTrue(message.startswith("Database connection failed: "), message)
        self.assertIn("No such file or directory", message)
        wrong_db = self.cluster.dsn("no_such_database")
        message = await admin.db_check(reactor, wrong_db)
        self.assertIn('database "no_such_database" does not exist', message)

    async def test_db_reset(self) -> None:
        database = await self.connect()
        await database.execute("INSERT INTO logs (subject) VALUES ('x')")
        await admin.db_reset(reactor, self.dsn)
        self.assertEqual(await self.count("SELECT count(*) AS n FROM logs"), 0)
        self.assertEqual(await schema.current_version(database), schema.LATEST)

    def test_cli(self) -> None:
        """The `farmnet db` commands (run_db_command runs its own reactor: a subprocess)."""
        # Parsing only here; running needs a stopped reactor (see test_cli_subprocess).
        parser = argparse.ArgumentParser(prog="farmnet")
        admin.add_db_commands(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["db", "--dsn", "host=/x", "reset", "--yes"])
        self.assertEqual((args.command, args.db_command, args.yes, args.dsn),
                         ("db", "reset", True, "host=/x"))
        args = parser.parse_args(["db", "check"])
        self.assertIs(args.run, admin.run_db_command)

    async def test_cli_subprocess(self) -> None:
        from twisted.internet.utils import getProcessOutputAndValue

        code = ("import sys; from farmnet.stats import admin; import argparse;"
                "p = argparse.ArgumentParser(); admin.add_db_commands(p.add_subparsers(dest='command'));"
                "a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))")
        env = {**os.environ, "PYTHONPATH": str(Path(farmnet.__file__).resolve().parent.parent)}
        env.pop("FARMNET_CONFIG", None)
        python = sys.executable
        out, err, rc = await getProcessOutputAndValue(
            python, ["-c", code, "db", "--dsn", self.dsn, "check"], env=env)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"Database connection is working", out)
        out, err, rc = await getProcessOutputAndValue(
            python, ["-c", code, "db", "--dsn", self.dsn, "reset"], env=env, stdinBytes=b"n\n")
        self.assertEqual(rc, 1)
        self.assertTrue(out.rstrip().endswith(b"Nothing done."), out)
        out, err, rc = await getProcessOutputAndValue(
            python, ["-c", code, "db", "--dsn", self.dsn, "reset", "--yes"], env=env)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"Statistics tables created", out)
        dead = db.make_dsn(host=str(tmpdir(self)), dbname="x", user="postgres")
        out, err, rc = await getProcessOutputAndValue(
            python, ["-c", code, "db", "--dsn", dead, "check"], env=env)
        self.assertEqual(rc, 3)
        self.assertIn(b"Database connection failed", err)


class ServiceTests(PgTestCase):
    timeout = 90

    def service(self, farm: Farm, **kw: Any) -> StatsService:
        """A service on a fresh store; ``kw`` are StatsConfig fields."""
        base = {"dsn": self.dsn, "flush_interval": 0.05, "reconnect_max_delay": 0.3}
        return StatsService(reactor, StatsConfig(**{**base, **kw}), tmpdir(self), farm)

    async def test_rows_flow_and_stop_flushes(self) -> None:
        driver = FarmDriver(self)
        service = self.service(driver.farm, flush_interval=30.0)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        await wait_until(reactor, lambda: service.db is not None and service.db.ready, 20, "connected")
        self.assertTrue(service.status.startswith("on: "), service.status)
        render = await driver.render("r1")
        await driver.submit(job_doc(frames=4))
        await driver.play(render)
        self.assertEqual(service.recorder.count, 4 + 1 + 4, "rows wait for the 30 s flush")
        await service.stopService()  # writes them now
        self.assertEqual(await self.count(), 4)
        self.assertEqual(await self.count("SELECT count(*) AS n FROM jobs"), 1)
        self.assertEqual(service.status, "stopped")
        self.assertEqual(driver.farm.bus.subscribers(RunEnded), [])

    async def test_queries_through_the_service(self) -> None:
        driver = FarmDriver(self)
        service = self.service(driver.farm)
        service.startService()
        self.addCleanup(service.stopService)
        render = await driver.render("r1")
        await driver.submit(job_doc(frames=2))
        await driver.play(render)
        await wait_until(reactor, lambda: service.reader is not None and service.reader.ready, 20, "reader")
        assert service.queries is not None
        rows = await wait_until(reactor, lambda: service.queries.tasks_table("user"), 20, "rows queryable")
        self.assertEqual(rows[0]["runs"], 2)

    def test_off_switch(self) -> None:
        farm = Farm(reactor)
        service = self.service(farm, enabled=False)
        service.startService()
        self.assertEqual(farm.bus.subscribers(RunEnded), [])
        self.assertIn("server.stats.enabled: false", service.status)
        self.assertFalse(service.enabled)
        return service.stopService()

    def test_no_binaries_turns_statistics_off(self) -> None:
        farm = Farm(reactor)
        service = self.service(farm, dsn="", pg_bin=str(tmpdir(self)))
        service.startService()
        self.assertEqual(farm.bus.subscribers(RunEnded), [])
        self.assertTrue(service.status.startswith("off: no PostgreSQL server programs"), service.status)
        return service.stopService()


class EmbeddedTests(TestCase):
    """The server's own PostgreSQL, in a temporary store (as root: run as postgres)."""

    timeout = 90

    def setUp(self) -> None:
        reason = pgtest.available()
        if reason:
            raise SkipTest(reason)

    async def test_embedded_start_stop(self) -> None:
        store = tmpdir(self)
        embedded = EmbeddedPostgres.for_store(store / "postgresql", find_bin_dir())  # type: ignore[arg-type]
        await embedded.start(reactor)
        try:
            database = await connect_once(reactor, embedded.dsn)
            rows = await database.query("SELECT current_setting('listen_addresses') AS listen, "
                                        "current_database() AS name")
            database.close()
            self.assertEqual(rows, [{"listen": "", "name": "farmnet"}])
            if os.geteuid() == 0:
                self.assertEqual((store / "postgresql").stat().st_uid, pwd_uid("postgres"))
            await embedded.start(reactor)  # already running: kept
        finally:
            await embedded.stop(reactor)
        self.assertFalse(await embedded.cluster.is_running(reactor))
        self.assertFalse((store / "postgresql" / ".s.PGSQL.5432").exists())

    async def test_service_with_embedded_postgres(self) -> None:
        store = tmpdir(self, mode=0o700)  # as the server makes it: root's alone
        farm = Farm(reactor)
        self.addCleanup(farm.stop)
        service = StatsService(reactor, StatsConfig(flush_interval=0.05), store, farm)
        service.startService()
        self.assertIn("starting the embedded PostgreSQL", service.status)
        farm.register_render("r1", capacity=1000)  # recorded while PostgreSQL starts
        try:
            await wait_until(reactor, lambda: service.db is not None and service.db.ready, 60, "embedded up")
            await wait_until(reactor, lambda: service.writer is not None and service.writer.rows_written >= 1,
                             20, "the render_online row written")
        finally:
            await service.stopService()
        self.assertFalse(await EmbeddedPostgres.for_store(store / "postgresql", find_bin_dir())  # type: ignore[arg-type]
                         .cluster.is_running(reactor))
        if os.geteuid() == 0:  # the store let the postgres group in, to search only
            mode = store.stat().st_mode & 0o777
            self.assertEqual((mode, store.stat().st_gid), (0o710, pwd.getpwnam("postgres").pw_gid))


    async def test_embedded_postgres_gone_is_started_again(self) -> None:
        """A server that finds its embedded PostgreSQL gone (killed under it) starts it again,
        and the rows recorded meanwhile reach it."""
        store = tmpdir(self, mode=0o700)
        farm = Farm(reactor)
        self.addCleanup(farm.stop)
        config = StatsConfig(flush_interval=0.05, reconnect_max_delay=0.5)
        service = StatsService(reactor, config, store, farm)
        service.embedded_check_interval = 0.5
        service.startService()
        try:
            await wait_until(reactor, lambda: service.db is not None and service.db.ready, 60, "embedded up")
            assert service.embedded is not None and service.writer is not None
            pid = int((store / "postgresql" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # the postmaster, as the OOM killer would
            await wait_until(reactor, lambda: service.db is not None and not service.db.ready, 30,
                             "the writer to notice")
            farm.register_render("r1", capacity=1000)  # recorded while the database is gone
            await wait_until(reactor, lambda: service.db is not None and service.db.ready, 90,
                             "the embedded PostgreSQL started again")
            await wait_until(reactor, lambda: service.writer is not None and service.writer.rows_written >= 1,
                             30, "the row recorded meanwhile written")
            new_pid = int((store / "postgresql" / "postmaster.pid").read_text().split()[0])
            self.assertNotEqual(new_pid, pid)
        finally:
            await service.stopService()

    def test_unreachable_directory_is_a_clear_error(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("as root only (the cluster then runs as postgres)")
        base = tmpdir(self, mode=0o700)
        os.chown(base, 0, grp.getgrnam("nogroup").gr_gid)  # not root:root: not ours to change
        cluster = Cluster(base / "pg", find_bin_dir() or Path("/"), run_as="postgres")
        error = self.assertRaises(ClusterError, cluster.make_reachable)
        self.assertIn(f"the postgres user cannot reach {base}", str(error))
        self.assertEqual(base.stat().st_mode & 0o777, 0o700, "left as it was")


def pwd_uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid

