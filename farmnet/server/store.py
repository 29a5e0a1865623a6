"""The farm's state on disk: SQLite in WAL mode, written by one thread.

:class:`FarmStore` is what every backend shares: the tables (:data:`TABLES`), the farm
turned into rows (:func:`write_plan`) and rows back into the farm (``_load_rows``), the
batching and `sync`. :class:`Store` runs that SQL on SQLite; ``farmnet.server.storepg``
on PostgreSQL. A new table goes into the shared part and both keep it.

What must survive a crash: jobs (their spec as submitted or last set, counters, flags),
every task that ever left RDY (state, counters, host, error hosts), users' settings,
renders' flags, and the next ids. A job is stored as its spec plus the tasks that differ
from "ready": a 100,000-task submit is one row.

Durability: a submit and a delete are acknowledged only after their transaction is
committed (`sync`); task changes are collected on the reactor (the latest state of each
task wins) and written behind in batches every `flush_interval`, off the reactor thread,
or at once when someone waits on `sync`: start orders and finish acknowledgements wait for
it (doc/architecture.md, the ordering rules), all of a reactor turn in one transaction.
WAL with ``synchronous=FULL``: a kill -9 at any instant leaves a store that opens, with
every acknowledged submit and delete in it.
"""

from __future__ import annotations

import abc
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from farmnet.model import events as ev
from farmnet.model.data import Job, Render, Task, TaskState, User
from farmnet.model.farm import Farm
from farmnet.model.pools import restore_branches, restore_pools
from farmnet.model.spec import job_to_document, parse_job
from farmnet.server.monitors import EventLog
from farmnet.server.storecheck import Guard, Quarantine, StoreRefused, damaged

log = Logger()

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, user_name TEXT NOT NULL, priority INTEGER NOT NULL,
    paused INTEGER NOT NULL, time_creation REAL NOT NULL, time_started REAL NOT NULL,
    time_done REAL NOT NULL, serial INTEGER NOT NULL, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    job_id INTEGER NOT NULL, block INTEGER NOT NULL, task INTEGER NOT NULL,
    state TEXT NOT NULL, errors_count INTEGER NOT NULL, starts_count INTEGER NOT NULL,
    progress INTEGER NOT NULL, time_started REAL NOT NULL, time_done REAL NOT NULL,
    host TEXT NOT NULL, render_id INTEGER NOT NULL, host_errors TEXT,
    PRIMARY KEY (job_id, block, task)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, time_registered REAL NOT NULL,
    settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS renders (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    fields TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (path TEXT PRIMARY KEY, fields TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS branches (path TEXT PRIMARY KEY, fields TEXT NOT NULL);
"""

_USER_FIELDS = ("priority", "max_running_tasks", "max_running_tasks_per_host", "errors_retries",
                "errors_avoid_host", "errors_task_same_host", "errors_forgive_time", "jobs_solving",
                "custom_data")
_RENDER_FIELDS = ("capacity", "max_tasks", "owner", "nimby", "NIMBY", "paused", "sick", "platform",
                  "cpus", "memory_mb", "wol", "time_registered", "time_seen", "errors_in_row", "resources")


def _task_row(t: Task) -> tuple[Any, ...]:
    """A task's row. A WRC task has no time_done yet: the column holds its time_lost."""
    b = t.block
    time_done = t.time_lost if t.state is TaskState.WRC else t.time_done
    return (b.job.id, b.number, t.number, t.state.value, t.errors_count, t.starts_count, t.progress,
            t.time_started, time_done, t.host, t.render_id,
            json.dumps(t.host_errors) if t.host_errors else None)


def _job_row(j: Job, spec: str | None) -> tuple[Any, ...]:
    return (j.id, j.user_name, j.priority, int(j.paused), j.time_creation, j.time_started,
            j.time_done, j.serial, spec)


def _user_row(u: User) -> tuple[Any, ...]:
    settings: dict[str, Any] = {k: getattr(u, k) for k in _USER_FIELDS}
    for key in ("hosts_mask", "hosts_mask_exclude"):
        pattern = getattr(u, key)
        settings[key] = pattern.pattern if pattern is not None else ""
    return (u.name, u.time_registered, json.dumps(settings))


def _render_row(r: Render) -> tuple[Any, ...]:
    fields: dict[str, Any] = {k: getattr(r, k) for k in _RENDER_FIELDS}
    fields["macs"] = list(r.macs)
    fields["services"] = sorted(r.services)
    fields["services_disabled"] = sorted(r.services_disabled)
    fields["error_jobs_in_row"] = sorted(r.error_jobs_in_row)
    fields["error_history"] = [list(entry) for entry in r.error_history]
    fields["pool"] = r.pool.path if r.pool is not None else ""
    return (r.id, r.name, json.dumps(fields))


@attrs.frozen
class Table:
    """A table of the farm's state as both backends keep it (the SQLite DDL above is its twin)."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (name, portable type: int, real, text)
    key: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


#: Every table, in the order a copy writes them. A new table goes here (and in SCHEMA), and
#: its rows into :func:`write_plan`: both backends then keep it.
TABLES = (
    Table("meta", (("key", "text"), ("value", "text")), ("key",)),
    Table("users", (("name", "text"), ("time_registered", "real"), ("settings", "text")), ("name",)),
    Table("renders", (("id", "int"), ("name", "text"), ("fields", "text")), ("id",)),
    Table("jobs", (("id", "int"), ("user_name", "text"), ("priority", "int"), ("paused", "int"),
                   ("time_creation", "real"), ("time_started", "real"), ("time_done", "real"),
                   ("serial", "int"), ("spec", "text")), ("id",)),
    Table("tasks", (("job_id", "int"), ("block", "int"), ("task", "int"), ("state", "text"),
                    ("errors_count", "int"), ("starts_count", "int"), ("progress", "int"),
                    ("time_started", "real"), ("time_done", "real"), ("host", "text"),
                    ("render_id", "int"), ("host_errors", "text")), ("job_id", "block", "task")),
    Table("pools", (("path", "text"), ("fields", "text")), ("path",)),
    Table("branches", (("path", "text"), ("fields", "text")), ("path",)),
)
TABLE = {t.name: t for t in TABLES}
#: What a load reads, in this order (the same text on every backend).
LOAD_QUERIES = (
    "SELECT name, time_registered, settings FROM users",
    "SELECT id, name, fields FROM renders",
    "SELECT id, user_name, priority, paused, time_creation, time_started, time_done, serial, spec "
    "FROM jobs ORDER BY id",
    "SELECT " + ", ".join(TABLE["tasks"].names) + " FROM tasks",
    "SELECT key, value FROM meta",
    "SELECT path, fields FROM pools",
    "SELECT path, fields FROM branches",
)


@attrs.frozen
class Upsert:
    """Whole rows, inserted or replacing the row of the same key."""

    table: str
    rows: list[tuple[Any, ...]]


@attrs.frozen
class Update:
    """``columns`` set on the row of each key: rows are (*values, *key)."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@attrs.frozen
class Delete:
    """Rows whose ``columns`` equal each key."""

    table: str
    columns: tuple[str, ...]
    keys: list[tuple[Any, ...]]


@attrs.frozen
class Clear:
    """Every row of a small table that is written whole (the pool and branch trees)."""

    table: str


Op = Upsert | Update | Delete | Clear


def write_plan(changes: tuple) -> list[Op]:
    """One batch of changes as the statements both backends run, in this order, in one
    transaction (rows are idempotent upserts: a failed batch is simply written again)."""
    tasks, jobs, users, renders, deleted, deleted_renders, deleted_users, renumbered, meta, trees = changes
    job_columns = TABLE["jobs"].names[1:-1]
    whole = [] if trees is None else [
        Clear("pools"), Upsert("pools", trees[0]), Clear("branches"), Upsert("branches", trees[1])]
    return [*whole,
        Update("jobs", job_columns, [(*row[1:-1], row[0]) for row in jobs if row[-1] is None]),
        Upsert("jobs", [row for row in jobs if row[-1] is not None]),
        Delete("tasks", ("job_id", "block"), list(renumbered)),
        Upsert("tasks", tasks),
        # Deletions first: a name deleted and taken again in one batch is the new one.
        Delete("users", ("name",), [(u,) for u in deleted_users]),
        Delete("renders", ("id",), [(r,) for r in deleted_renders]),
        Upsert("users", users),
        Upsert("renders", renders),
        Delete("jobs", ("id",), [(j,) for j in deleted]),
        Delete("tasks", ("job_id",), [(j,) for j in deleted]),
        Upsert("meta", meta),
    ]


class FarmStore(service.Service, abc.ABC):
    """What every backend shares: loads the farm from rows at start, then follows it as one
    of its observers, turning its changes into batches of rows (:func:`write_plan`) that the
    backend commits (:meth:`_submit`); `sync` fires once they are."""

    def __init__(self, reactor: Any, farm: Farm, flush_interval: float = 0.2,
                 events: EventLog | None = None) -> None:
        self.reactor = reactor
        self.farm = farm
        #: The monitors' event log, whose sequence number survives a restart.
        self.events = events
        self.flush_interval = flush_interval
        self._dirty_tasks: dict[int, Task] = {}
        self._dirty_jobs: dict[int, Job] = {}
        self._dirty_users: dict[str, User] = {}
        self._dirty_renders: dict[int, Render] = {}
        self._deleted_jobs: list[int] = []
        self._deleted_renders: list[int] = []
        self._deleted_users: list[str] = []
        #: Pools or branches changed: both trees are written whole (they are small).
        self._trees_dirty = False
        self._unsubscribe: Callable[[], None] = lambda: None
        self._renumbered: list[tuple[int, int]] = []
        self._meta: dict[str, str] = {}
        self._spec_written: dict[int, Any] = {}
        self._writing: defer.Deferred[None] | None = None
        self._waiters: list[defer.Deferred[None]] = []
        #: A `_tick` is scheduled for the end of this reactor turn (one for all its syncs).
        self._tick_soon = False
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        #: Seconds the oldest unwritten change has waited (for the statistics line).
        self.lag = 0.0
        #: Batches taken to be written, and the number of the last one committed (writes go
        #: one at a time, so it is the one taken last when it commits).
        self.taken = 0
        self.committed = 0
        #: Waiting for a batch being written (number, Deferred), fired as it commits.
        self._batch_waiters: list[tuple[int, defer.Deferred[None]]] = []
        #: What the last load could not load (moved to the quarantine table), with why.
        self.quarantined: list[str] = []
        self._oldest_change = 0.0
        self.writes = 0
        #: The other parts' values (`get_meta`), as loaded.
        self._loaded_meta: dict[str, str] = {}

    @abc.abstractmethod
    def _open(self) -> bool:
        """The backend is ready to write."""

    @abc.abstractmethod
    def _submit(self, changes: tuple) -> defer.Deferred[None]:
        """Commit one batch; fires once committed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let the backend go (no more writes)."""

    # --- loading -----------------------------------------------------------------------

    def _load_rows(self, select: Callable[[str], list[tuple[Any, ...]]],
                   quarantine: Quarantine) -> tuple[int, int]:
        """Every row into the farm; a row that cannot be loaded is quarantined, by name.
        ``select(sql)`` runs one SELECT (the same text on every backend)."""
        farm = self.farm
        # The trees first: a render's pool and a job's branch are found in them.
        for table, query, restore in (("pools", LOAD_QUERIES[5], restore_pools),
                                      ("branches", LOAD_QUERIES[6], restore_branches)):
            rows = select(query)
            try:
                restore(farm.trees, [(path, json.loads(fields)) for path, fields in rows])
            except Exception as e:  # one tree, restored whole: its rows are set aside together
                for row in rows:
                    quarantine.add(table, f"{table[:-1]} {row[0]!r}", "path=?", (row[0],), e, row)
        for row in select(LOAD_QUERIES[0]):
            try:
                farm.restore_user(row[0], row[1], json.loads(row[2]))
            except Exception as e:
                quarantine.add("users", f"user {row[0]!r}", "name=?", (row[0],), e, row)
        for row in select(LOAD_QUERIES[1]):
            try:
                farm.restore_render(row[0], row[1], json.loads(row[2]))
            except Exception as e:
                quarantine.add("renders", f"render {row[0]} {row[1]!r}", "id=?", (row[0],), e, row)
        jobs = 0
        for row in select(LOAD_QUERIES[2]):
            job_id, user, priority, paused, created, started_at, done, serial, spec_text = row
            try:
                spec, _ = parse_job(json.loads(spec_text))
                job = farm.restore_job(job_id, spec, user_name=user, priority=priority, paused=bool(paused),
                                       time_creation=created, time_started=started_at, time_done=done,
                                       serial=serial)
            except Exception as e:
                quarantine.add("jobs", f"job {job_id} of {user!r}", "id=?", (job_id,), e, row)
                continue
            self._spec_written[job_id] = job.spec
            jobs += 1
        tasks = 0
        quarantined_jobs = {key[0] for table, _, _, key, _, _ in quarantine.rows if table == "jobs"}
        for row in select(LOAD_QUERIES[3]):
            job_id, block, number, state, errs, starts, progress, t0, t1, host, render_id, herr = row
            job = farm.jobs.get(job_id)
            if job is None or block >= len(job.blocks) or number >= len(job.blocks[block].tasks):
                continue  # left over from a job deleted in the same batch (or quarantined)
            waiting = state == TaskState.WRC.value
            task = job.blocks[block].tasks[number]
            try:
                farm.restore_task(task, state=state, errors_count=errs, starts_count=starts,
                                  progress=progress, time_started=t0, time_done=0.0 if waiting else t1,
                                  host=host, render_id=render_id,
                                  host_errors=json.loads(herr) if herr else None,
                                  time_lost=t1 if waiting else 0.0)
            except Exception as e:
                if job_id not in quarantined_jobs:
                    quarantine.add("tasks", f"job {job_id} block {block} task {number}",
                                   "job_id=? AND block=? AND task=?", (job_id, block, number), e, row)
                continue
            if task.state.value != state:  # RUN is WRC now, since this start: kept so
                self._dirty_tasks[id(task)] = task  # that the next restart continues the wait
            tasks += 1
        meta = dict(select(LOAD_QUERIES[4]))
        self._loaded_meta = {k: v for k, v in meta.items() if k.startswith("x:")}
        last = meta.get("event_seq")
        if last is not None and self.events is not None:
            try:
                self.events.last = int(last)
            except ValueError as e:
                quarantine.add("meta", "the monitors' event sequence", "key=?", ("event_seq",), e,
                               ("event_seq", last))
        return jobs, tasks

    def get_meta(self, key: str) -> Any:
        """A JSON value other parts of the server keep in the store (read at start)."""
        value = self._loaded_meta.get(f"x:{key}")
        return json.loads(value) if value is not None else None

    # --- following the farm --------------------------------------------------------------

    def follow(self) -> None:
        """Subscribe to every change that must survive a restart; written at the next flush."""
        bus = self.farm.bus
        self._unsubscribe = bus.subscribe_all({
            ev.TaskStateChanged: self._task_changed,
            ev.TasksRenumbered: self._tasks_renumbered,
            ev.ErrorHostsReset: self._error_hosts_reset,
            (ev.JobSubmitted, ev.JobChanged): lambda e: self._job_changed(e.job),
            ev.RunEnded: self._run_ended,
            ev.JobDeleted: self._job_deleted,
            ev.UserChanged: self._user_changed,
            ev.UserDeleted: self._user_deleted,
            ev.RENDER_EVENTS: self._render_changed,
            ev.RenderDeleted: self._render_deleted,
            (ev.PoolChanged, ev.PoolDeleted, ev.BranchChanged, ev.BranchDeleted): self._trees_changed,
        })

    def _changed(self) -> None:
        if not self._oldest_change:
            self._oldest_change = time.monotonic()

    def _task_changed(self, event: ev.TaskStateChanged) -> None:
        self._changed()
        task = event.task
        self._dirty_tasks[id(task)] = task
        self._dirty_jobs[task.block.job.id] = task.block.job  # its spec may have grown

    def _tasks_renumbered(self, event: ev.TasksRenumbered) -> None:
        self._changed()
        block = event.block
        self._renumbered.append((block.job.id, block.number))
        self._dirty_jobs[block.job.id] = block.job
        for t in block.tasks:
            self._dirty_tasks[id(t)] = t

    def _error_hosts_reset(self, event: ev.ErrorHostsReset) -> None:
        self._changed()
        for t in event.tasks:
            self._dirty_tasks[id(t)] = t

    def _job_changed(self, job: Job) -> None:
        self._changed()
        self._dirty_jobs[job.id] = job

    def _run_ended(self, event: ev.RunEnded) -> None:
        job = self.farm.jobs.get(event.run.job_id)
        if job is not None:
            self._job_changed(job)

    def _job_deleted(self, event: ev.JobDeleted) -> None:
        self._changed()
        job = event.job
        self._deleted_jobs.append(job.id)
        self._dirty_jobs.pop(job.id, None)
        self._dirty_tasks = {k: t for k, t in self._dirty_tasks.items() if t.block.job is not job}
        self.sync()

    def _user_changed(self, event: ev.UserChanged) -> None:
        self._changed()
        self._dirty_users[event.user.name] = event.user

    def _user_deleted(self, event: ev.UserDeleted) -> None:
        self._changed()
        self._dirty_users.pop(event.user.name, None)
        self._deleted_users.append(event.user.name)
        self.sync()

    def _render_changed(self, event: ev.RenderEvent) -> None:
        self._changed()
        self._dirty_renders[event.render.id] = event.render

    def _render_deleted(self, event: ev.RenderDeleted) -> None:
        self._changed()
        self._dirty_renders.pop(event.render.id, None)
        self._deleted_renders.append(event.render.id)
        self.sync()

    def _trees_changed(self, event: object) -> None:
        self._changed()
        self._trees_dirty = True

    def set_meta(self, key: str, value: Any) -> None:
        """Written with the next batch."""
        self._meta[f"x:{key}"] = self._loaded_meta[f"x:{key}"] = json.dumps(value)
        if not self._oldest_change:
            self._oldest_change = time.monotonic()

    def sync(self) -> defer.Deferred[None]:
        """Fires once everything changed so far is committed: at once when it is already.
        The syncs of one reactor turn share one batch (group commit)."""
        if self._writing is None and not self._waiters and not self._has_changes():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        if self._writing is None and not self._tick_soon:
            self._tick_soon = True
            self.reactor.callLater(0, self._tick_now)
        return d

    @property
    def next_batch(self) -> int:
        """The number of the batch that will hold a change made now."""
        return self.taken + 1

    def sync_batch(self, batch: int) -> defer.Deferred[None]:
        """Fires once batch number ``batch`` is committed: at once when it is, even while
        later changes wait (what :meth:`sync` would wait for too)."""
        if batch <= self.committed:
            return defer.succeed(None)
        if batch <= self.taken:  # being written (or failed and waiting to be written again)
            d: defer.Deferred[None] = defer.Deferred()
            self._batch_waiters.append((batch, d))
            return d
        return self.sync()

    def _tick_now(self) -> None:
        self._tick_soon = False
        self._tick()

    def _has_changes(self) -> bool:
        return bool(self._dirty_tasks or self._dirty_jobs or self._dirty_users or self._dirty_renders
                    or self._deleted_jobs or self._deleted_renders or self._deleted_users or self._renumbered
                    or self._meta or self._trees_dirty)

    def _tick(self) -> None:
        if self._writing is not None or not self._open():
            return
        changes = self._take_changes()
        if changes is None:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
            return
        waiters, self._waiters = self._waiters, []
        self._writing = self._submit(changes)
        self._writing.addCallbacks(self._written, self._write_failed, callbackArgs=(waiters,),
                                   errbackArgs=(waiters, changes))

    def _take_changes(self) -> tuple[Any, ...] | None:
        if not self._has_changes():
            return None
        tasks = [_task_row(t) for t in self._dirty_tasks.values() if t.block.job.id in self.farm.jobs]
        jobs = []
        for job in self._dirty_jobs.values():
            spec = None
            if self._spec_written.get(job.id) is not job.spec:
                spec = json.dumps(job_to_document(job.spec))
                self._spec_written[job.id] = job.spec
            jobs.append(_job_row(job, spec))
        users = [_user_row(u) for u in self._dirty_users.values()]
        renders = [_render_row(r) for r in self._dirty_renders.values()]
        deleted, deleted_renders = self._deleted_jobs, self._deleted_renders
        deleted_users = self._deleted_users
        renumbered, self._renumbered = self._renumbered, []
        meta, self._meta = list(self._meta.items()), {}
        trees = None
        if self._trees_dirty:
            t = self.farm.trees
            trees = ([(p.path, json.dumps(t.pool_fields(p))) for p in t.pools.values()],
                     [(b.path, json.dumps(t.branch_fields(b))) for b in t.branches.values()])
            self._trees_dirty = False
        for job_id in deleted:
            self._spec_written.pop(job_id, None)
        self._dirty_tasks, self._dirty_jobs, self._dirty_users, self._dirty_renders = {}, {}, {}, {}
        self._deleted_jobs, self._deleted_renders, self._deleted_users = [], [], []
        self.lag = time.monotonic() - self._oldest_change if self._oldest_change else 0.0
        self._oldest_change = 0.0
        self.taken += 1
        if self.events is not None:
            meta.append(("event_seq", str(self.events.last)))
        return (tasks, jobs, users, renders, deleted, deleted_renders, deleted_users, renumbered, meta, trees)

    def _written(self, _: None, waiters: list[defer.Deferred[None]]) -> None:
        self._writing = None
        self.writes += 1
        self.committed = self.taken
        if self._batch_waiters:
            waiting, self._batch_waiters = self._batch_waiters, []
            for batch, d in waiting:
                if batch <= self.committed:
                    d.callback(None)
                else:
                    self._batch_waiters.append((batch, d))
        for d in waiters:
            d.callback(None)
        if self._waiters:
            self._tick()

    def _write_failed(self, failure: Any, waiters: list[defer.Deferred[None]], changes: tuple) -> None:
        self._writing = None
        log.failure("store write failed; will retry", failure)
        self._requeue(changes)
        self._waiters.extend(waiters)
        self.reactor.callLater(1.0, self._tick)

    def _requeue(self, changes: tuple) -> None:
        """A failed batch is written again with the next (rows are idempotent upserts)."""
        tasks, jobs, users, renders, deleted, deleted_renders, deleted_users, renumbered, meta = changes[:9]
        trees = changes[9]
        self._trees_dirty = self._trees_dirty or trees is not None
        self._renumbered[:0] = renumbered
        for key, value in meta:
            self._meta.setdefault(key, value)
        for row in tasks:
            job = self.farm.jobs.get(row[0])
            if job is not None:
                t = job.blocks[row[1]].tasks[row[2]]
                self._dirty_tasks.setdefault(id(t), t)
        for row in jobs:
            job = self.farm.jobs.get(row[0])
            if job is not None:
                self._dirty_jobs.setdefault(job.id, job)
                if row[-1] is not None:
                    self._spec_written.pop(job.id, None)
        for row in users:
            if row[0] in self.farm.users:
                self._dirty_users.setdefault(row[0], self.farm.users[row[0]])
        for row in renders:
            if row[0] in self.farm.renders:
                self._dirty_renders.setdefault(row[0], self.farm.renders[row[0]])
        self._deleted_jobs[:0] = deleted
        self._deleted_renders[:0] = deleted_renders
        self._deleted_users[:0] = deleted_users


class Store(FarmStore):
    """The embedded default: SQLite in WAL mode (``<store>/farm.sqlite``), written by one thread."""

    def __init__(self, reactor: Any, path: str | Path, farm: Farm, flush_interval: float = 0.2,
                 events: EventLog | None = None, readonly: bool = False) -> None:
        super().__init__(reactor, farm, flush_interval=flush_interval, events=events)
        self.path = Path(path)
        #: Checks at open, and the generation every commit makes (farmnet.server.storecheck);
        #: read-only: `farmnet store check` (nothing is written, not even the quarantine).
        self.guard = Guard(self.path, readonly=readonly)
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPool(1, 1, name="farmnet-store")

    def _open(self) -> bool:
        return self._db is not None

    def _submit(self, changes: tuple) -> defer.Deferred[None]:
        return threads.deferToThreadPool(self.reactor, self._pool, self._write, *changes)

    # --- opening and loading -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open and check the store; `StoreRefused` (one line: the file, what to do) when
        it is missing, emptied, damaged, another store, or has lost transactions."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.guard.before_open()
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except BaseException:
            self.close()
            raise
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None and not self.guard.readonly:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StoreRefused(f"{self.path}: store schema {row[0]} is newer than this farmnet "
                                   f"({SCHEMA_VERSION}); upgrade farmnet")
            self.guard.after_open(db)
        except BaseException as e:
            db.close()
            self.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise damaged(self.path, e) from None
            raise
        return db

    def load(self) -> dict[str, int]:
        """Read the whole state into the farm (before anything connects)."""
        started = time.monotonic()
        db = self._db = self._connect()
        try:
            quarantine = Quarantine(self.path)
            jobs, tasks = self._load_rows(lambda sql: db.execute(sql).fetchall(), quarantine)
            if not self.guard.readonly:
                quarantine.move(db)
        except sqlite3.DatabaseError as e:
            self.close()
            raise damaged(self.path, e) from None
        self.farm.restore_finished()
        log.info("store {path} loaded: {jobs} jobs, {tasks} stored tasks, generation {generation}, "
                 "{quarantined} rows quarantined, in {seconds:.2f} s", path=str(self.path), jobs=jobs,
                 tasks=tasks, generation=self.guard.generation, quarantined=len(quarantine.rows),
                 seconds=time.monotonic() - started)
        self.quarantined = [f"{item}: {reason}" for _, item, _, _, reason, _ in quarantine.rows]
        return {"jobs": jobs, "tasks": tasks, "quarantined": len(quarantine.rows)}


    def _write(self, *changes: Any) -> None:
        """In the store's thread: one transaction for the whole batch."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in write_plan(changes):
                _run_sqlite(db, op)
            self.guard.stamp(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.guard.committed()

    # --- service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._db is None:
            self.load()  # before the thread starts: a refused store leaves no thread running
        self._pool.start()
        self.follow()
        self._loop.start(self.flush_interval, now=False)

    async def _stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self._unsubscribe()
        if self._writing is not None:
            await self._writing
        self.write_now()
        self._pool.stop()
        self.close()

    def write_now(self) -> None:
        """Write everything pending on this thread: the last batch at shutdown (and tests
        that restart a farm without a reactor)."""
        changes = self._take_changes()
        if changes is not None:
            self._write(*changes)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())


def _run_sqlite(db: sqlite3.Connection, op: Op) -> None:
    """One operation of a batch in SQLite's dialect."""
    if isinstance(op, Upsert):
        if op.rows:
            marks = ",".join("?" * len(TABLE[op.table].columns))
            db.executemany(f"INSERT OR REPLACE INTO {op.table} VALUES ({marks})", op.rows)
    elif isinstance(op, Update):
        if op.rows:
            sets = ", ".join(f"{c}=?" for c in op.columns)
            where = " AND ".join(f"{c}=?" for c in TABLE[op.table].key)
            db.executemany(f"UPDATE {op.table} SET {sets} WHERE {where}", op.rows)
    elif isinstance(op, Clear):
        db.execute(f"DELETE FROM {op.table}")  # noqa: S608 (our table names)
    elif op.keys:
        where = " AND ".join(f"{c}=?" for c in op.columns)
        db.executemany(f"DELETE FROM {op.table} WHERE {where}", op.keys)


def durable(store: Store | None) -> Callable[[], defer.Deferred[None]]:
    """A function that waits until the farm's changes so far are committed (or at
    once, without a store)."""
    if store is None:
        return lambda: defer.succeed(None)
    return store.sync


__all__ = ["SCHEMA_VERSION", "Store", "TaskState", "durable"]
