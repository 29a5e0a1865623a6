"""Exactly once through server crashes: a server in this reactor with a store that dies
the way kill -9 would, at every write of a job's life (before its commit, and after it but
before anyone hears of it), and the real render service running real task processes.

After each crash a new server is started on the same store and port; the render comes
back and the job must end with every task's process started exactly once, no run number
used twice, and without waiting for task_reconnect_timeout (set far longer than the test).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from farmnet.app import render_service
from farmnet.config import ConnectionsConfig, RenderConfig, SchedulingConfig
from farmnet.messages import StartOrder, TaskRef
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.render.service import RenderService
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.outputs import OutputStore
from farmnet.server.registry import reset_connection
from farmnet.server.store import Store
from farmnet.testing import wait_until

TASKS = 3


class CrashingStore(Store):
    """A store whose process dies at its ``crash_at``-th write once armed: before that
    write commits, or (``after_commit``) after it commits but before its waiters hear of
    it. Nothing reaches the disk after that."""

    def __init__(self, *args: Any, crash_at: int, after_commit: bool, on_crash: Callable[[], None],
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.crash_at, self.after_commit, self.on_crash = crash_at, after_commit, on_crash
        self.armed = False
        self.armed_writes = 0
        self.crashed = False

    def _write(self, *changes: Any) -> None:  # in the store's thread
        if self.crashed:
            return
        if self.armed:
            self.armed_writes += 1
        if self.armed_writes == self.crash_at and not self.after_commit:
            self.crashed = True
            return
        super()._write(*changes)
        if self.armed_writes == self.crash_at:
            self.crashed = True

    def _written(self, result: None, waiters: list) -> None:
        if self.crashed:  # dead: no answer leaves, and _writing stays set, so nothing more is written
            reactor.callLater(0, self.on_crash)
            return
        super()._written(result, waiters)

    def _write_failed(self, failure: Any, waiters: list, changes: tuple) -> None:
        raise AssertionError(f"store write failed: {failure}")


class SlowStore(Store):
    """Each commit takes longer than a heartbeat is held."""

    def _write(self, *changes: Any) -> None:  # in the store's thread
        time.sleep(0.6)
        super()._write(*changes)


class GatedStore(Store):
    """A store whose commits wait while its gate is closed."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.gate.set()

    def _write(self, *changes: Any) -> None:  # in the store's thread
        self.gate.wait(20)
        super()._write(*changes)


class ServerCase(TestCase):
    """A server in this reactor on 127.0.0.1 (crashable), and the real render service."""

    timeout = 60

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-crash-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.log = self.base / "runs.log"
        self.log.touch()
        self.port = 0
        self.server: dict[str, Any] | None = None
        self.addCleanup(self._stop_server)

    async def start_server(self, store_class: type[Store] = Store, heartbeat_hold: float = 2.0,
                           **store_kw: Any) -> dict[str, Any]:
        farm = Farm(reactor, SchedulingConfig(task_reconnect_timeout=600))
        store = store_class(reactor, self.base / "farm.sqlite", farm, flush_interval=0.05, **store_kw)
        store.startService()
        outputs = OutputStore(self.base / "output")
        server = FarmServer(reactor, farm, outputs, durable=store.sync, batches=store,
                            connections=ConnectionsConfig(heartbeat_hold=heartbeat_hold, close_wait=0.5))
        listening = await serverFromString(reactor, f"tcp:{self.port}:interface=127.0.0.1").listen(
            ServerFactory(server))
        self.port = listening.getHost().port
        self.server = {"farm": farm, "store": store, "server": server, "listening": listening,
                       "outputs": outputs}
        return self.server

    async def crash_server(self) -> None:
        """As kill -9 leaves it: connections reset, nothing more written, timers gone."""
        assert self.server is not None
        s, self.server = self.server, None
        await s["listening"].stopListening()
        s["server"].registry.accepting = False  # a dead server loses no render
        for conn in list(s["server"].registry):
            reset_connection(conn.peer.transport)
        s["farm"].stop()
        store = s["store"]
        if store._loop.running:
            store._loop.stop()
        store._unsubscribe()
        store._pool.stop()
        store.close()
        s["outputs"].close_all()

    async def _stop_server(self) -> None:
        if self.server is not None:
            s, self.server = self.server, None
            await s["listening"].stopListening()
            await s["server"].shutdown()
            await s["store"].stopService()
            s["farm"].stop()
            s["outputs"].close_all()

    def start_render(self) -> RenderService:
        config = RenderConfig(server=f"tcp:127.0.0.1:{self.port}", name="r1",
                              state_dir=str(self.base / "render"), reconnect_max_delay=0.2)
        render = render_service(reactor, config)
        render.startService()
        self.addCleanup(render.stopService)
        return render

    def runs(self) -> list[tuple[int, int]]:
        """(task, run) of every task process start, from the tasks' own log."""
        return [(int(task), int(run)) for _, task, run in
                (line.split() for line in self.log.read_text().splitlines())]


class ServerCrashTests(ServerCase):
    async def crash_once(self, crash_at: int, after_commit: bool) -> None:
        crashed: list[bool] = []
        s = await self.start_server(CrashingStore, crash_at=crash_at, after_commit=after_commit,
                                    on_crash=lambda: crashed.append(True))
        farm, store = s["farm"], s["store"]
        self.start_render()
        await wait_until(reactor, lambda: farm.renders and next(iter(farm.renders.values())).online, 10,
                         "the render")
        spec, _ = parse_job({"name": "crash", "offline": True, "blocks": [{
            "name": "b", "frame_first": 0, "frame_last": TASKS - 1, "parser": "none",
            "command": f"echo S $FARMNET_TASK $FARMNET_RUN >> {self.log}; sleep 0.2"}]})
        job = farm.submit(spec, "anna")  # offline: paused
        await store.sync()
        store.armed = True  # write 1: resumed and the first start, the last: the third finish
        farm.job_action("anna", [job.id], "resume")
        await wait_until(reactor, lambda: crashed, 20, f"the crash at write {crash_at}")
        await self.crash_server()
        s = await self.start_server()
        again = s["farm"]
        started = reactor.seconds()
        if again.jobs[job.id].paused:  # the resume was not acknowledged: its tool resumes again
            self.assertEqual((crash_at, after_commit), (1, False))
            again.job_action("anna", [job.id], "resume")
        await wait_until(reactor, lambda: job.id in again.jobs and again.jobs[job.id].done, 20,
                         "the job after the restart")
        took = reactor.seconds() - started
        await deferLater(reactor, 0.1)
        runs = self.runs()
        self.assertEqual(sorted(task for task, _ in runs), list(range(TASKS)),
                         f"each task's process starts once: {runs}")
        tasks = again.jobs[job.id].blocks[0].tasks
        for task, run in runs:  # no run number the server used twice
            self.assertLessEqual(run, tasks[task].starts_count)
        self.assertLess(took, 10)  # not task_reconnect_timeout (600 s)


class SlowCommitTests(ServerCase):
    async def test_orders_wait_for_a_commit_longer_than_the_hold(self) -> None:
        """A heartbeat answer that carries orders is kept for them while the commit takes
        longer than heartbeat_hold: it is not answered empty meanwhile (the orders would be
        lost, their tasks RUN with nothing running)."""
        s = await self.start_server(SlowStore, heartbeat_hold=0.2)
        farm = s["farm"]
        self.start_render()
        await wait_until(reactor, lambda: farm.renders and next(iter(farm.renders.values())).online, 10,
                         "the render")
        spec, _ = parse_job({"name": "slow", "blocks": [{
            "name": "b", "frame_first": 0, "frame_last": 1, "parser": "none",
            "command": f"echo S $FARMNET_TASK $FARMNET_RUN >> {self.log}"}]})
        job = farm.submit(spec, "anna")
        await wait_until(reactor, lambda: job.done, 20, "the job")
        self.assertEqual(sorted(self.runs()), [(0, 1), (1, 1)])


class FinishOrdersCommitTests(ServerCase):
    async def test_a_finish_answer_and_the_order_it_carries_wait_for_the_commit(self) -> None:
        """finish_orders: the answer to a finish, and the next start order it carries, leave only
        once both are on disk; until then the render hears nothing."""
        farm, store, proto, render_id, job, first = await self.running_first_of_two()
        store.gate.clear()  # commits wait from now on
        finished = proto.callRemote(c.TaskFinished, render_id=render_id, job_id=first.job_id, block=0,
                                    task=first.task, run=first.run, exit_code=0, time_started=1.0,
                                    time_done=2.0, message="")
        tasks = job.blocks[0].tasks
        await wait_until(reactor, lambda: tasks[1].state.value == "RUN", 5, "the next start")
        await deferLater(reactor, 0.3)
        self.assertFalse(finished.called)  # decided, not on disk: not said
        self.assertEqual(self.stored_states(job.id), {0: "RUN"})  # (a task never started has no row)
        store.gate.set()
        [second] = (await finished)["orders"]
        self.assertEqual((second.order, second.task, second.run), ("start", 1, 1))
        self.assertEqual(self.stored_states(job.id), {0: "DON", 1: "RUN"})

    async def test_an_order_waits_for_its_own_batch_not_for_changes_made_after_it(self) -> None:
        """On a busy farm something always changes while a batch is written: the start order a
        finish answer carries leaves once the batch holding it commits, not one batch later."""
        farm, store, proto, render_id, job, first = await self.running_first_of_two()
        await wait_until(reactor, lambda: not store._has_changes() and store._writing is None, 5, "quiet")
        store.gate.clear()
        taken = store.taken
        finished = proto.callRemote(c.TaskFinished, render_id=render_id, job_id=first.job_id, block=0,
                                    task=first.task, run=first.run, exit_code=0, time_started=1.0,
                                    time_done=2.0, message="")
        await wait_until(reactor, lambda: store.taken == taken + 1, 5, "the finish's batch taken")
        self.assertEqual(job.blocks[0].tasks[1].state.value, "RUN")  # its start is in that batch
        later, _ = parse_job({"name": "later", "blocks": [{"name": "b", "command": "true"}]})
        farm.submit(later, "ben")  # changed while the batch is written: goes in the next one
        store.gate.set()
        store.gate.clear()  # the finish's batch commits; the next one waits
        await wait_until(reactor, lambda: finished.called, 5, "the finish answer")
        [second] = (await finished)["orders"]
        self.assertEqual((second.order, second.task), ("start", 1))
        self.assertEqual(self.stored_states(job.id), {0: "DON", 1: "RUN"})
        self.assertEqual(store.committed, taken + 1)  # the later job is not on disk yet
        store.gate.set()

    async def running_first_of_two(self) -> tuple[Any, GatedStore, FarmAMP, int, Any, Any]:
        """A finish_orders render on a gated store, running the first task of a job of two."""
        s = await self.start_server(GatedStore)
        farm, store = s["farm"], s["store"]
        self.addCleanup(store.gate.set)
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), FarmAMP())
        self.addCleanup(proto.transport.loseConnection)
        await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render", user="r1",
                               features=[c.FINISH_ORDERS])
        render_id = (await proto.callRemote(
            c.RegisterRender, name="r1", capacity=1100, max_tasks=0, services=[], services_disabled=[],
            platform="test", cpus=1, memory_mb=1, running=[]))["render_id"]
        beat = proto.callRemote(c.Heartbeat, render_id=render_id, running=[])
        spec, _ = parse_job({"name": "two", "blocks": [
            {"name": "b", "command": "true", "frame_first": 0, "frame_last": 1, "parser": "none"}]})
        job = farm.submit(spec, "anna")
        [first] = (await beat)["orders"]
        return farm, store, proto, render_id, job, first

    def stored_states(self, job_id: int) -> dict[int, str]:
        db = sqlite3.connect(f"file:{self.base / 'farm.sqlite'}?mode=ro", uri=True)
        try:
            return dict(db.execute("SELECT task, state FROM tasks WHERE job_id = ?", (job_id,)))
        finally:
            db.close()


def _crash_test(crash_at: int, after_commit: bool) -> Callable[[ServerCrashTests], Any]:
    async def test(self: ServerCrashTests) -> None:
        await self.crash_once(crash_at, after_commit)

    when = "after" if after_commit else "before"
    test.__name__ = f"test_crash_{when}_commit_of_write_{crash_at}"
    test.__doc__ = f"The server dies at write {crash_at} of the job's life, {when} it commits."
    return test


# A job of 3 tasks of 0.2 s on one render is 4 writes (a finish and the next start are one
# group commit): crash at each of them.
for _at in range(1, 5):
    for _after in (False, True):
        _test = _crash_test(_at, _after)
        setattr(ServerCrashTests, _test.__name__, _test)
del _at, _after, _test


class RenderRunsTests(TestCase):
    """The render's side: a finished run stays until acknowledged, and a newer run of the
    same task replaces it (the server has closed the old run)."""

    timeout = 20

    async def test_a_newer_run_replaces_an_unacknowledged_finished_one(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="farmnet-render-"))
        self.addCleanup(shutil.rmtree, base, True)
        log = base / "runs.log"
        render = render_service(reactor, RenderConfig(server="tcp:127.0.0.1:1", name="r1",
                                                      state_dir=str(base / "state")))

        def start(run: int) -> None:
            render._obey(StartOrder(1, 0, 0, run=run, name="t", command=f"echo {run} >> {log}",
                                    parser="none"))

        start(1)
        first = render.tasks[(1, 0, 0)]
        await first.process.done
        await deferLater(reactor, 0)
        self.assertIsNotNone(first.exit)  # no server: kept, to be reported when it is back
        self.assertEqual(render._running(), [TaskRef(1, 0, 0, 1)])
        start(1)  # the same run again changes nothing
        self.assertIs(render.tasks[(1, 0, 0)], first)
        start(2)
        second = render.tasks[(1, 0, 0)]
        self.assertIsNot(second, first)
        await second.process.done
        self.assertEqual(log.read_text().split(), ["1", "2"])
