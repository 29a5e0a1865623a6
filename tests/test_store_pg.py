"""The farm's state on PostgreSQL (a throwaway cluster): what the farm was is what it loads,
acknowledgements wait for the commit, a database that goes away stops them, the lock makes
one server active, and `farmnet store copy` moves a store between SQLite and PostgreSQL."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from farmnet.config import SchedulingConfig
from farmnet.model.data import TaskState
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.store import TABLES, Store, Upsert
from farmnet.server.storecheck import StoreRefused
from farmnet.server.storepg import LOCK_KEY, PgStore, pg_schema, pg_statements
from farmnet.stats import pgtest
from farmnet.stats.db import connect_once, dsn_field
from farmnet.testing import ChildOutput, wait_until


class Shared:
    """One throwaway cluster for the module (about 1.5 s to start), a database per test."""

    cluster: ClassVar[pgtest.ThrowawayCluster | None] = None

    @classmethod
    def get(cls) -> pgtest.ThrowawayCluster:
        if cls.cluster is None:
            reason = pgtest.available()
            if reason:
                raise SkipTest(reason)
            cls.cluster = pgtest.ThrowawayCluster(prefix="farmnet-storepg-").start()
            atexit.register(cls.cluster.destroy)
        return cls.cluster


def spec(name: str = "job", frames: int = 5, **kw: Any):
    return parse_job({"name": name, "blocks": [
        {"name": "b", "command": "echo @#@", "frame_first": 1, "frame_last": frames, **kw}]})[0]


def finish(farm: Farm, render: Any, exit_code: int = 0) -> None:
    for order in farm.take_orders(render):
        if order.order == "start":
            farm.task_finished(render, (order.job_id, order.block, order.task), order.run,
                               exit_code=exit_code, signal=None, time_started=1.0, time_done=2.0)


def state_of(farm: Farm) -> Any:
    """What a reload must give back: jobs, tasks (running ones come back waiting for their
    render), users and renders."""
    return (
        {j.id: (j.name, j.user_name, j.paused, [("WRC" if t.state is TaskState.RUN else t.state.value,
                                                  t.errors_count, t.starts_count, t.host)
                                                 for b in j.blocks for t in b.tasks])
         for j in farm.jobs.values()},
        {u.name: (u.priority, u.hosts_mask.pattern if u.hosts_mask else "") for u in farm.users.values()},
        {r.name: (r.id, r.nimby, r.owner) for r in farm.renders.values()},
    )


def db_name(dsn: str) -> str:
    return dsn_field(dsn, "dbname")


class PgCase(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.cluster = Shared.get()
        self.dsn = await self.cluster.create_database(reactor)
        self.uri = self.dsn_to_uri(self.dsn)

    @staticmethod
    def dsn_to_uri(dsn: str) -> str:
        host, port, name = dsn_field(dsn, "host"), dsn_field(dsn, "port"), dsn_field(dsn, "dbname")
        user = dsn_field(dsn, "user")
        return f"postgresql://{quote(user)}@/{name}?host={quote(host)}&port={port}"

    def farm(self) -> Farm:
        farm = Farm(reactor, SchedulingConfig(admins=("root",), task_reconnect_timeout=300))
        self.addCleanup(farm.stop)
        return farm

    async def open(self, farm: Farm | None = None, **kw: Any) -> tuple[Farm, PgStore]:
        farm = farm or self.farm()
        store = PgStore(reactor, self.uri, farm, flush_interval=0.05, **kw)
        self.addCleanup(store.close)
        await store.connect()
        await store.acquire()
        await store.load()
        store.startService()
        return farm, store

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        database = await connect_once(reactor, self.dsn)
        try:
            return await database.query(sql)
        finally:
            database.close()

    def busy_farm(self, farm: Farm) -> Any:
        job = farm.submit(spec(frames=6, errors_retries=0), "anna")
        farm.submit(spec("paused"), "anna")
        farm.job_action("anna", [2], "pause")
        farm.user_action("root", ["anna"], "set", {"priority": 80, "hosts_mask": "r.*"})
        render = farm.register_render("r1", capacity=2100, owner="anna")
        farm.render_action("root", ["r1"], "nimby")
        farm.solve()
        finish(farm, render)
        farm.solve()
        finish(farm, render, exit_code=1)
        farm.solve()  # two running: loaded as waiting for their render (WRC)
        return job


class PgStoreTests(PgCase):
    async def test_state_survives_a_reload(self) -> None:
        farm, store = await self.open()
        self.busy_farm(farm)
        before = state_of(farm)
        await store.sync()
        await store.stopService()

        again, store = await self.open()
        self.assertEqual(state_of(again), before)
        self.assertEqual(again.jobs[1].counts[TaskState.DON], 2)

    async def test_a_submit_is_committed_when_sync_fires(self) -> None:
        farm, store = await self.open()
        farm.submit(spec(frames=3), "anna")
        await store.sync()
        rows = await self.rows("SELECT id, user_name FROM jobs")
        self.assertEqual([(r["id"], r["user_name"]) for r in rows], [(1, "anna")])

    async def test_batches_many_tasks_in_few_statements(self) -> None:
        rows = [(1, 0, n, "DON", 0, 1, 100, 1.0, 2.0, "r1", 1, None) for n in range(2500)]
        statements = pg_statements(Upsert("tasks", rows))
        self.assertEqual(len(statements), 3)  # 1000 rows a statement
        self.assertEqual(sum(len(params) for _, params in statements), 2500 * 12)

    async def test_database_down_stops_acknowledgements_until_it_is_back(self) -> None:
        farm, store = await self.open()
        farm.submit(spec(frames=2), "anna")
        await store.sync()
        admin = await connect_once(reactor, self.cluster.dsn("postgres"))
        self.addCleanup(admin.close)
        # The session of the lock is ended: the next commit fails, nothing is acknowledged.
        await admin.query("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objid = %s", (LOCK_KEY & 0xFFFFFFFF,))
        farm.submit(spec("second", frames=2), "anna")
        acknowledged = store.sync()
        await deferLater(reactor, 0.3)
        # The store reconnects, takes the lock back (nobody else took it) and writes.
        await wait_until(reactor, lambda: acknowledged.called, 20, "the acknowledgement after reconnection")
        rows = await self.rows("SELECT id FROM jobs ORDER BY id")
        self.assertEqual([r["id"] for r in rows], [1, 2])
        self.assertFalse(store.lost)

    async def test_unreachable_database_at_start_is_one_line(self) -> None:
        store = PgStore(reactor, "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", self.farm())
        with self.assertRaises(StoreRefused) as caught:
            await store.connect()
        message = str(caught.exception)
        self.assertIn("unreachable", message)
        self.assertNotIn("\n", message)

    async def test_schema_has_every_table(self) -> None:
        """Every shared table (TABLES) and the quarantine exist in the database once a store opened."""
        await self.open()
        rows = await self.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        self.assertLessEqual({t.name for t in TABLES} | {"quarantine"}, {r["table_name"] for r in rows})
        self.assertEqual(len(pg_schema()), len(TABLES) + 1)

    async def test_pools_and_branches_survive_a_reload(self) -> None:
        """The trees are written whole with a batch (Clear + Upsert) and loaded before renders and jobs."""
        farm, store = await self.open()
        farm.pool_action("root", "/gpu", "create", {"pattern": "g.*", "priority": 70})
        farm.branch_action("root", "/shows/a", "create", {"max_running_tasks": 3})
        farm.register_render("g1", capacity=1000)
        await store.sync()
        farm.pool_action("root", "/cpu", "create", {"pattern": "c.*"})
        await store.sync()
        store.close()
        again, _ = await self.open()
        self.assertEqual(sorted(again.trees.pools), ["/", "/cpu", "/gpu"])
        self.assertEqual(again.trees.pools["/gpu"].priority, 70)
        self.assertEqual(again.renders_by_name["g1"].pool.path, "/gpu")
        self.assertIn("/shows/a", again.trees.branches)
        self.assertEqual(again.trees.branches["/shows/a"].max_running_tasks, 3)


class StandbyTests(PgCase):
    async def test_second_store_waits_until_the_first_session_ends(self) -> None:
        farm, first = await self.open()
        farm.submit(spec(frames=2), "anna")
        await first.sync()
        lost: list[str] = []
        second = PgStore(reactor, self.uri, self.farm(), flush_interval=0.05, standby_poll=0.1,
                         on_lost=lost.append)
        self.addCleanup(second.close)
        await second.connect()
        acquiring = defer.ensureDeferred(second.acquire())
        await deferLater(reactor, 0.5)
        self.assertFalse(acquiring.called, "a standby took the lock of a live active")
        first.close()  # the active's session ends: its lock goes with it
        await wait_until(reactor, lambda: acquiring.called, 10, "the standby to take the lock")
        await acquiring
        self.assertEqual(second.epoch, first.epoch + 1)
        counts = await second.load()
        self.assertEqual(counts["jobs"], 1)

    async def test_an_active_cut_off_while_another_took_over_stops(self) -> None:
        lost: list[str] = []
        farm, first = await self.open(on_lost=lost.append)
        second = PgStore(reactor, self.uri, self.farm(), standby_poll=0.05)
        self.addCleanup(second.close)
        await second.connect()
        acquiring = defer.ensureDeferred(second.acquire())
        admin = await connect_once(reactor, self.cluster.dsn("postgres"))
        self.addCleanup(admin.close)
        # The active is cut off (its session ended, no new ones) while the standby keeps its own.
        name = db_name(self.dsn)
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        pids = await admin.query("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                 "AND objid = %s", (LOCK_KEY & 0xFFFFFFFF,))
        await admin.query("SELECT pg_terminate_backend(%s)", (pids[0]["pid"],))
        await acquiring  # the standby is active now
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        farm.submit(spec(frames=2), "anna")
        acknowledged = first.sync()
        await wait_until(reactor, lambda: lost, 20, "the old active to see it lost the lock")
        await deferLater(reactor, 1.0)
        self.assertFalse(acknowledged.called, "the old active acknowledged after another took over")
        self.assertFalse(first.active)
        self.assertEqual(await self.rows("SELECT id FROM jobs"), [])


class CutOffTests(PgCase):
    async def test_an_active_cut_off_longer_than_cutoff_exit_stops(self) -> None:
        lost: list[str] = []
        farm, store = await self.open(on_lost=lost.append, cutoff_exit=1.0, check_interval=0.2)
        admin = await connect_once(reactor, self.cluster.dsn("postgres"))
        self.addCleanup(admin.close)
        name = db_name(self.dsn)
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        self.addCleanup(admin.execute, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                          (name,))
        farm.submit(spec(frames=1), "anna")
        acknowledged = store.sync()
        await wait_until(reactor, lambda: lost, 15, "the cut-off active to give up")
        self.assertIn("cut off", lost[0])
        self.assertFalse(acknowledged.called)
        self.assertFalse(store.active)


class CopyTests(PgCase):
    timeout = 120

    async def copy(self, source: str, target: str) -> tuple[int, str]:
        child = ChildOutput()
        argv = [sys.executable, "-m", "farmnet.cli", "store", "copy", source, target]
        reactor.spawnProcess(child, argv[0], argv, env=None)
        code = await child.ended
        return code, (child.out + child.err).decode()

    async def test_sqlite_to_postgresql_and_back(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="farmnet-copy-"))
        self.addCleanup(shutil.rmtree, base, True)
        farm = self.farm()
        store = Store(reactor, base / "a" / "farm.sqlite", farm, flush_interval=0.05)
        store.startService()
        self.busy_farm(farm)
        before = state_of(farm)
        await store.stopService()

        code, out = await self.copy(str(base / "a"), self.uri)
        self.assertEqual(code, 0, out)
        _, pgstore = await self.open()
        loaded = pgstore.farm
        self.assertEqual(state_of(loaded), before)
        await pgstore.stopService()

        code, out = await self.copy(self.uri, str(base / "b"))
        self.assertEqual(code, 0, out)
        back = self.farm()
        store = Store(reactor, base / "b" / "farm.sqlite", back)
        store.load()
        store.close()
        self.assertEqual(state_of(back), before)

        code, out = await self.copy(str(base / "a"), self.uri)  # not over a store that has a farm
        self.assertEqual(code, 1, out)
        self.assertIn("not empty", out)


class SelectionTests(SynchronousTestCase):
    """``--store`` says which backend: a directory is SQLite, a libpq URI is PostgreSQL."""

    def options(self, *argv: str) -> Any:
        from farmnet.tap import ServerOptions

        options = ServerOptions()
        options.parseOptions(["--config", os.devnull, *argv])
        return options.config.store

    def test_a_uri_is_the_database_and_a_directory_the_path(self) -> None:
        store = self.options("--store", "postgresql://farmnet@db.example.com/farmnet")
        self.assertEqual(store.database, "postgresql://farmnet@db.example.com/farmnet")
        self.assertNotEqual(store.path, "")
        store = self.options("--store", "/srv/farm")
        self.assertEqual((store.path, store.database), ("/srv/farm", ""))

    def test_a_database_that_is_not_a_uri_is_a_config_error(self) -> None:
        from farmnet.config import ConfigError, load_config

        config = Path(tempfile.mkdtemp(prefix="farmnet-storecfg-"))
        self.addCleanup(shutil.rmtree, config, True)
        (config / "f.yaml").write_text("server:\n  store:\n    database: host=db dbname=farm\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(str(config / "f.yaml"), {})
        self.assertIn("server.store.database", str(caught.exception))

    def test_several_servers_connect_to_the_first_that_answers(self) -> None:
        from farmnet.protocol.endpoints import FirstReachable, client_endpoint

        endpoint = client_endpoint(reactor, "tcp:127.0.0.1:1, farm2:51100")
        self.assertIsInstance(endpoint, FirstReachable)
        self.assertEqual(len(endpoint.endpoints), 2)


class UnreachableAtStartTests(TestCase):
    timeout = 60

    async def test_server_exits_1_with_one_line(self) -> None:
        from farmnet.testing import ProcessFarm, free_port

        base = Path(tempfile.mkdtemp(prefix="farmnet-pgdown-"))
        self.addCleanup(shutil.rmtree, base, True)
        farm = ProcessFarm(reactor, base)
        self.addCleanup(farm.stop)
        config = base / "server.yaml"
        config.write_text("server:\n  stats:\n    enabled: false\n  store:\n"
                          f"    database: postgresql://farmnet@127.0.0.1:{free_port()}/farmnet\n")
        server = await farm.start_server("--config", str(config), wait=False)
        assert server.watch is not None
        code = await server.watch.ended
        self.assertEqual(code.exitCode, 1)
        lines = [line for line in server.logfile.read_text().splitlines() if "unreachable" in line]
        self.assertEqual(len(lines), 1, server.tail())
        self.assertIn("farmnet server: store database", lines[0])
        self.assertFalse((base / "server-store" / "amp.address").exists())
