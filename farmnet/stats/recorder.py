"""From the farm's notifications to rows in PostgreSQL: the recorder and the writer.

:class:`Recorder` subscribes to the farm's events. It runs on the reactor's hot path, so all it does
is append a row (a list, in the column order of :mod:`farmnet.stats.schema`) to an
in-memory buffer: a ``tasks`` row when a task run ends, a ``jobs`` row when a job is done
(or deleted before being done), a ``logs`` row for job created/done/deleted, render
online/offline/zombie/sick and user added.

:class:`Writer` empties the buffer: every ``flush_interval`` seconds, or at once when
``batch_rows`` rows wait, it takes up to ``batch_rows`` rows as one batch and writes it over
a blocking COPY connection from a thread pool of its own (:class:`~farmnet.stats.db.CopyConnection`,
:func:`farmnet.stats.schema.copy_batches`): a thread encodes the rows as COPY text and
PostgreSQL loads them, so the reactor only hands over lists of tuples. One write is in flight
at a time; while it runs the reactor goes on, the next batch gathers and the other thread
encodes it. Spooled batches go back the same way, decoded in the pool. A batch COPY refuses
(a NUL character, a dropped table …) goes the slower way that knows how to clean or refuse
rows one batch at a time: JSON through :data:`farmnet.stats.schema.BATCH_INSERT`. When the
database is down (or the write times out) the batch goes to the
:class:`~farmnet.stats.spool.Spool` on disk as a JSON line, and so does every batch after it
until the spool is written back, oldest first, when the database returns: the order is kept.
A batch whose answer was lost may be both in the database and in the spool; its id in the
``stats_batches`` ledger (written in the same transaction as its rows, whichever the way)
makes the second write a no-op, so every row arrives once.
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from farmnet.model import events as ev
from farmnet.model.data import Job, Render, TaskRun, TaskState, User
from farmnet.stats import schema
from farmnet.stats.db import CopyConnection, Database, describe_error, error_code, is_connection_error
from farmnet.stats.spool import Spool, batch_rows

__all__ = ["Batch", "Recorder", "Rows", "Writer", "copy_text", "encode_batch", "job_folder"]

log = Logger()

#: Version of the batch format (see schema: columns may only be appended).
BATCH_FORMAT = 1
#: Spooled batches written back in one transaction (at most).
DRAIN_BATCHES = 4


def job_folder(job: Job | None, block: int = 0) -> str | None:
    """The folder statistics group a job's rows by: the first of Afanasy's ``folders``
    (e.g. ``output``), else the working directory of the block."""
    if job is None:
        return None
    folders = job.spec.extra.get("folders")
    if isinstance(folders, dict) and folders:
        first = next(iter(folders.values()))
        if isinstance(first, str) and first:
            return first
    if 0 <= block < len(job.blocks):
        return job.blocks[block].spec.working_directory or None
    return None


def _main_block(job: Job) -> Any:
    """The block with the most tasks (the first on a tie): it names the job's service."""
    return max(job.blocks, key=lambda b: len(b.tasks), default=None)


_JOB_NAMES = [c.name for c in schema.JOB_COLUMNS]
_JOB_RUNS = _JOB_NAMES.index("runs")
_JOB_CAPACITY_TIME = _JOB_NAMES.index("capacity_time_sum")
assert _JOB_NAMES[_JOB_RUNS:_JOB_CAPACITY_TIME + 1] == ["runs", "errors_count", "run_time_sum",
                                                         "capacity_time_sum"]


@attrs.define
class _JobTally:
    """What a job's runs added up to (kept by the recorder: O(1) per run)."""

    runs: int = 0
    errors: int = 0
    run_time: float = 0.0
    capacity_time: float = 0.0


class Recorder:
    """The farm's events become rows in memory, nothing more.

    ``on_full()`` is called (once, until the next :meth:`take`) when ``full_rows`` rows
    wait; it must not do the writing itself (it runs inside the farm's mutation).
    """

    def __init__(self, clock: Any, full_rows: int = 2000,
                 on_full: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.full_rows = full_rows
        self.on_full = on_full
        # Rows are tuples (the garbage collector stops tracking a tuple of plain values, so a
        # large buffer adds nothing to its full passes); a job row stays a list until taken
        # (see _just_done).
        self.tasks: list[tuple[Any, ...]] = []
        self.jobs: list[list[Any]] = []
        self.logs: list[tuple[Any, ...]] = []
        #: Rows waiting in memory.
        self.count = 0
        self._full_told = False
        self._farm: Any = None
        self._tallies: dict[int, _JobTally] = {}
        self._known_jobs: set[int] = set()
        self._done_jobs: set[int] = set()
        self._renders_online: dict[str, bool] = {}
        #: Job rows made in this reactor turn: a job is done before the run that did it is
        #: notified, and that run's figures still belong in the row.
        self._just_done: dict[int, list[Any]] = {}
        self._unsubscribe: Callable[[], None] = lambda: None

    # --- attaching ---------------------------------------------------------------------

    def attach(self, farm: Any) -> None:
        """Subscribe to ``farm``'s events; what it holds already is known, not logged again."""
        self._farm = farm
        self._known_jobs = set(farm.jobs)
        self._done_jobs = {job_id for job_id, job in farm.jobs.items() if job.done}
        self._renders_online = {render.name: render.online for render in farm.renders.values()}
        bus = farm.bus
        self._unsubscribe = bus.subscribe_all({
            ev.RunEnded: lambda e: self.record_run(e.run),
            (ev.JobSubmitted, ev.JobChanged): lambda e: self._job(e.job),
            ev.JobDeleted: lambda e: self._job_deleted(e.job),
            (ev.RenderRegistered, ev.RenderChanged): lambda e: self._render(e.render),
            ev.RenderLost: self._render_lost,
            ev.RenderSick: self._render_sick,
            ev.UserChanged: lambda e: self._user(e.user),
        })

    def detach(self) -> None:
        self._unsubscribe()
        self._farm = None

    # --- the hot path --------------------------------------------------------------------

    def _render_lost(self, event: ev.RenderLost) -> None:
        render = event.render
        if event.zombie:
            self._log(self.clock.seconds(), render.name, "render_zombie", render.name, render.id,
                      "silent past zombie_time")
        self._render(render)

    def _render_sick(self, event: ev.RenderSick) -> None:
        render = event.render
        self._render(render)
        self._log(self.clock.seconds(), render.name, "render_sick", render.name, render.id,
                  f"{render.errors_in_row} errors in a row from different jobs")

    def _added(self) -> None:
        self.count += 1
        if self.count >= self.full_rows and not self._full_told and self.on_full is not None:
            self._full_told = True
            self.on_full()

    def _log(self, time: float, subject: str, type_: str, obj: str, object_id: int | None, info: str) -> None:
        self.logs.append((time, subject, type_, obj, object_id, info))
        self._added()

    def record_run(self, run: TaskRun) -> None:
        """A run ended: a tasks row, and its figures in the job's tally. (On the reactor for every
        task: under a microsecond, no call that can be avoided.)"""
        farm = self._farm
        job_id = run.job_id
        job = farm.jobs.get(job_id) if farm is not None else None
        started, done = run.time_started, run.time_done
        run_time = done - started
        if run_time < 0:
            run_time = 0.0
        tally = self._tallies.get(job_id)
        if tally is None:
            tally = self._tallies[job_id] = _JobTally()
        tally.runs += 1
        if run.state != "DON":
            tally.errors += 1
        tally.run_time += run_time
        tally.capacity_time += run.capacity * run_time
        if self._just_done:
            done_row = self._just_done.pop(job_id, None)
            if done_row is not None:  # the job was done by this very run (notified first)
                done_row[_JOB_RUNS:_JOB_CAPACITY_TIME + 1] = [
                    tally.runs, tally.errors, tally.run_time, tally.capacity_time]
        hosts = run.hosts
        self.tasks.append((
            job_id, run.job_name, run.block, run.block_name, run.task, run.task_name, run.run,
            run.user_name, run.host, run.service, run.capacity, run.command, run.frame_start,
            run.frame_end, started or None, done or None, run.exit_code, run.signal,
            run.state, run.errors_count, run.message, run.peak_memory_mb,
            job_folder(job, run.block) if job is not None else None,
            (" ".join(hosts) or None) if hosts else None,
        ))
        self.count += 1
        if self.count >= self.full_rows and not self._full_told and self.on_full is not None:
            self._full_told = True
            self.on_full()

    def _job(self, job: Job) -> None:
        if job.id not in self._known_jobs:
            self._known_jobs.add(job.id)
            self._log(job.time_creation or self.clock.seconds(), job.user_name, "job_created", job.name,
                      job.id, f"{job.tasks_total} tasks in {len(job.blocks)} blocks, priority {job.priority}")
        if job.done:
            if job.id not in self._done_jobs:
                self._done_jobs.add(job.id)
                self._job_row(job, "done")
                self._log(job.time_done or self.clock.seconds(), job.user_name, "job_done", job.name, job.id,
                          f"{job.tasks_total} tasks")
        elif job.id in self._done_jobs:
            self._done_jobs.discard(job.id)  # restarted: a new row when it is done again

    def _job_deleted(self, job: Job) -> None:
        if job.id not in self._done_jobs:
            self._job_row(job, "deleted")
        self._done_jobs.discard(job.id)
        self._known_jobs.discard(job.id)
        self._tallies.pop(job.id, None)
        done = job.counts[TaskState.DON] + job.counts[TaskState.SKP]
        self._log(self.clock.seconds(), job.user_name, "job_deleted", job.name, job.id,
                  f"{done} of {job.tasks_total} tasks done")

    def _job_row(self, job: Job, reason: str) -> None:
        """The job's row; recorded when it is done, or deleted before being done."""
        tally = self._tallies.get(job.id) or _JobTally()
        main = _main_block(job)
        counts = job.counts
        row = [
            job.id, job.name, job.user_name, job.spec.host_name, main.spec.service if main else None,
            job_folder(job, main.number if main else 0), job.spec.project, job.spec.department,
            job.priority, len(job.blocks), job.tasks_total, counts[TaskState.DON] + counts[TaskState.SKP],
            counts[TaskState.ERR], tally.runs, tally.errors, tally.run_time, tally.capacity_time,
            job.time_creation or None, job.time_started or None, job.time_done or None, job.state.value,
            reason, self.clock.seconds(),
        ]
        self.jobs.append(row)
        self._just_done[job.id] = row
        self._added()

    def _render(self, render: Render) -> None:
        was = self._renders_online.get(render.name)
        if was == render.online:
            return
        self._renders_online[render.name] = render.online
        if render.online:
            info = f"capacity {render.capacity}, {render.cpus} CPUs, {render.memory_mb} MB, {render.platform}"
            self._log(self.clock.seconds(), render.name, "render_online", render.name, render.id, info)
        elif was:
            self._log(self.clock.seconds(), render.name, "render_offline", render.name, render.id, "")

    def _user(self, user: User) -> None:
        self._log(user.time_registered or self.clock.seconds(), user.name, "user_added", user.name, None, "")

    # --- the writer's side ---------------------------------------------------------------

    def take(self, max_rows: int) -> tuple[list[Any], list[Any], list[Any]]:
        """Up to ``max_rows`` rows, oldest first within each table, out of the buffer."""
        taken = []
        room = max_rows
        for rows in (self.tasks, self.jobs, self.logs):
            part = rows[:room]
            del rows[:len(part)]
            room -= len(part)
            taken.append(part)
        self.count -= max_rows - room
        self._full_told = False
        self._just_done.clear()
        if self.count >= self.full_rows and self.on_full is not None:
            self._full_told = True
            self.on_full()
        return taken[0], taken[1], taken[2]


@attrs.frozen
class Batch:
    """Rows encoded as one JSON object (a spool line; an element of BATCH_INSERT's array)."""

    id: str
    rows: int
    line: str


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _clean(value: Any) -> Any:
    """A decoded batch without what PostgreSQL refuses in text (NUL characters)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def encode_batch(batch_id: str, tasks: Sequence[Sequence[Any]], jobs: Sequence[Sequence[Any]],
                 logs: Sequence[Sequence[Any]]) -> Batch:
    rows = len(tasks) + len(jobs) + len(logs)
    parts = [f'{{"v":{BATCH_FORMAT},"id":"{batch_id}","n":{rows}']
    for name, table in (("tasks", tasks), ("jobs", jobs), ("logs", logs)):
        if table:
            try:
                text = json.dumps(table, separators=(",", ":"), allow_nan=False)
            except ValueError:  # NaN or infinity somewhere: not JSON
                text = json.dumps(_finite(table), separators=(",", ":"), allow_nan=False)
            parts.append(f',"{name}":{text}')
    parts.append("}")
    return Batch(batch_id, rows, "".join(parts))


_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})


def _copy_value(value: Any) -> str:
    if value is None:
        return _NULL
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, float) and not math.isfinite(value):
        return _NULL  # as in JSON batches
    return str(value)


def copy_text(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows in COPY's text format (NULL as \\N; NUL characters, which PostgreSQL text cannot
    hold, left out; NaN and infinities as NULL, as in the JSON batches).

    Most rows need no escaping: they are formatted at C speed and the result checked in a few
    passes (as many tabs and newlines as separators, a "None" for each None and no other, no
    backslash, carriage return, NUL or non-finite float); only a batch that fails the check is
    encoded value by value.
    """
    if not rows:
        return b""
    if rows[0].__class__ is not tuple:
        rows = list(map(tuple, rows))
    width = len(rows[0])
    line = "\t".join(["%s"] * width)
    try:
        text = "\n".join([line % row for row in rows])
    except TypeError:  # rows of different widths
        text = ""
    nones = sum([row.count(None) for row in rows])
    if (text and text.count("\t") == (width - 1) * len(rows) and text.count("\n") == len(rows) - 1
            and text.count("None") == nones and "\\" not in text and "\r" not in text and "\x00" not in text
            and "inf" not in text and "nan" not in text):
        if nones:
            text = text.replace("None", _NULL)
        return (text + "\n").encode()
    return "".join(["\t".join([_copy_value(v) for v in row]) + "\n" for row in rows]).encode()


@attrs.define(eq=False)
class Rows:
    """Rows taken from the recorder as one batch, not encoded yet: the COPY path encodes them
    in its thread, the spool and the statement path as a JSON :class:`Batch`."""

    id: str
    tasks: list[Any]
    jobs: list[Any]
    logs: list[Any]
    #: Its COPY text being made in the writer's thread pool (see Writer._encode_soon).
    encoded: defer.Deferred[dict[str, bytes] | None] | None = None

    @property
    def rows(self) -> int:
        return len(self.tasks) + len(self.jobs) + len(self.logs)

    def encode(self) -> Batch:
        return encode_batch(self.id, self.tasks, self.jobs, self.logs)

    def copy_tables(self) -> dict[str, bytes]:
        return {name: copy_text(rows) for name, rows in (("tasks", self.tasks), ("jobs", self.jobs),
                                                         ("logs", self.logs)) if rows}


class Outcome(enum.Enum):
    WRITTEN = "written"
    #: The database refused the rows for good (logged, counted, dropped).
    REFUSED = "refused"
    #: The connection failed: try again later.
    FAILED = "failed"


class Writer:
    """Moves the recorder's rows to the database, or to the spool while it is down."""

    def __init__(
        self,
        reactor: Any,
        db: Database,
        recorder: Recorder,
        spool: Spool,
        *,
        batch_rows: int = 2000,
        flush_interval: float = 0.5,
        write_timeout: float = 30.0,
        on_schema_missing: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.db = db
        self.recorder = recorder
        self.spool = spool
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.write_timeout = write_timeout
        self.on_schema_missing = on_schema_missing
        self.boot = uuid.uuid4().hex[:16]
        self._seq = 0
        #: Counters for the status line and tests.
        self.rows_written = 0
        self.rows_spooled = 0  # waiting in the spool now
        self.rows_refused = 0
        self.rows_lost = 0  # spool full or unwritable
        self.batches_written = 0
        self._stopping = False
        #: The flush interval elapsed: a partial batch may go.
        self._due = False
        self._woken = False
        self._wakeup: defer.Deferred[None] | None = None
        self._wake_call: Any = None
        self._tick: Any = None
        #: The next batch, encoded while the previous one was being written.
        self._prepared: Rows | None = None
        self._done: defer.Deferred[None] | None = None
        #: The COPY connection, used by one write at a time from the writer's thread pool.
        self._copier = CopyConnection(db.dsn, connect_timeout=db.connect_timeout, setup=schema.COPY_SETUP)
        #: Two threads: one encodes the next batch while the other waits for PostgreSQL.
        self._pool = ThreadPool(2, 2, name="statistics writer")
        self._pool_trigger: Any = None
        self._copying: defer.Deferred[Any] | None = None
        #: Rows of the batch being written (taken from the recorder, not yet anywhere safe).
        self._in_flight = 0
        self._copy_refusal = ""
        recorder.on_full = self.wake
        db.on_ready(self.wake)

    # --- control -------------------------------------------------------------------------

    def start(self) -> None:
        self._pool.start()
        self._pool_trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        self._tick = self.reactor.callLater(self.flush_interval, self._on_tick)
        self._done = defer.ensureDeferred(self._loop())

    def _on_tick(self) -> None:
        self._due = True
        self._tick = self.reactor.callLater(self.flush_interval, self._on_tick)
        self._fire()

    def wake(self) -> None:
        """Have the writer look at once (soon: never inside the caller's call)."""
        if self._wake_call is None:
            self._wake_call = self.reactor.callLater(0, self._fire)

    def _fire(self) -> None:
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.called:
            wakeup.callback(None)
        else:
            self._woken = True

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what waits in memory to the database within ``timeout`` seconds, else to
        the spool; then stop. The spool is not emptied (the next start does it)."""
        if self._done is None:
            return
        self._stopping = True
        self._fire()
        give_up = self.reactor.callLater(timeout, self._give_up, "the server is stopping")
        try:
            await self._done
        finally:
            if give_up.active():
                give_up.cancel()
            if self._tick is not None and self._tick.active():
                self._tick.cancel()
            if self._wake_call is not None and self._wake_call.active():
                self._wake_call.cancel()
            self._wake_call = None
            await self._io(self.spool.close)
            if self._pool.started:
                await threads.deferToThreadPool(self.reactor, self._pool, self._copier.close)
            self._stop_pool()

    def _stop_pool(self) -> None:
        if self._pool_trigger is not None:
            self.reactor.removeSystemEventTrigger(self._pool_trigger)
            self._pool_trigger = None
        if self._pool.started:
            self._pool.stop()

    def _give_up(self, reason: str) -> None:
        """Drop the connections: whatever waits on them fails (and goes to the spool)."""
        self.db.abort(reason)
        if self._copying is not None:
            self._io(self._copier.cancel)

    @property
    def pending(self) -> int:
        """Rows not yet in the database: in memory and in the spool."""
        prepared = self._prepared.rows if self._prepared is not None else 0
        return self.recorder.count + prepared + self._in_flight + self.rows_spooled

    # --- the loop ------------------------------------------------------------------------

    def _io(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Spool work, in the reactor's thread pool: an fsync never stalls the reactor."""
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    async def _loop(self) -> None:
        try:
            self.rows_spooled = await self._io(self.spool.open)
        except OSError as e:
            log.error("statistics spool {directory} unusable: {error}", directory=str(self.spool.directory),
                      error=e)
        if self.rows_spooled:
            log.info("statistics: {rows} rows wait in the spool from an earlier run", rows=self.rows_spooled)
        while True:
            try:
                progressed = await self._step()
            except Exception:
                if self._stopping:
                    log.failure("statistics writer: unexpected error while stopping: "
                                "{rows} rows not saved", rows=self.recorder.count)
                    return
                log.failure("statistics writer: unexpected error (going on)")
                progressed = False
            if self._stopping and not self.recorder.count and self._prepared is None:
                return
            if not progressed:
                await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        """Until wake() or the flush tick: an event, not a timed sleep (so no deferLater)."""
        if self._stopping:
            return
        if self._woken:
            self._woken = False
            return
        self._wakeup = defer.Deferred()
        await self._wakeup
        self._woken = False

    async def _step(self) -> bool:
        """One thing to do, if any; True if the loop should go on at once."""
        count = self.recorder.count
        flush = count >= self.batch_rows or (count and (self._due or self._stopping))
        if self.db.ready and not self.rows_spooled:
            batch, self._prepared = self._prepared, None
            if batch is None:
                if not flush:
                    self._due = False
                    return False
                batch = self._take()
            self._in_flight = batch.rows
            try:
                sending = defer.ensureDeferred(self._write(batch))
                if self.recorder.count >= self.batch_rows:
                    # The next batch, encoded while PostgreSQL works on this one.
                    self._prepared = self._encode_soon(self._take())
                if await sending is Outcome.FAILED:
                    await self._to_spool(batch)
            finally:
                self._in_flight = 0
            return True
        progressed = False
        if self._prepared is not None:  # older than anything in the buffer
            batch, self._prepared = self._prepared, None
            await self._to_spool(batch)
            progressed = True
        if flush:
            while self.recorder.count:
                await self._to_spool(self._take())
            progressed = True
        else:
            self._due = False
        if self.db.ready and self.rows_spooled and not self._stopping:
            progressed = await self._drain() or progressed
        return progressed

    def _take(self) -> Rows:
        self._seq += 1
        if self.recorder.count <= self.batch_rows:
            self._due = False
        tasks, jobs, logs = self.recorder.take(self.batch_rows)
        return Rows(f"{self.boot}-{self._seq}", tasks, jobs, logs)

    def _encode_soon(self, batch: Rows) -> Rows:
        batch.encoded = threads.deferToThreadPool(self.reactor, self._pool, self._encode, batch)
        return batch

    def _encode(self, batch: Rows) -> dict[str, bytes] | None:
        """In the writer's thread pool: the batch's COPY text (None: it cannot be COPY text)."""
        try:
            return batch.copy_tables()
        except (UnicodeError, TypeError, ValueError) as e:
            log.debug("statistics: a batch is not COPY text ({error}): writing it as JSON", error=e)
            return None

    async def _write(self, batch: Rows) -> Outcome:
        """Write ``batch`` by COPY in the writer's thread pool; a batch COPY refuses goes the
        statement way (:meth:`_send`), which cleans or refuses what it must."""
        tables = await (batch.encoded or self._encode_soon(batch).encoded)
        batch.encoded = None
        if tables is None:
            return await self._send([batch.encode().line], batch.rows)
        try:
            await self._in_pool(self._copy, batch, tables)
        except Exception as e:
            if is_connection_error(e):
                self._copy_failed(batch.rows, e)
                return Outcome.FAILED
            self._copy_refused(e)
            return await self._send([batch.encode().line], batch.rows)
        self.rows_written += batch.rows
        self.batches_written += 1
        return Outcome.WRITTEN

    def _copy(self, batch: Rows, tables: dict[str, bytes]) -> bool:
        """In the writer's thread pool: the COPY (False: the ledger had the batch already)."""
        batches = [(batch.id, batch.rows, tables)]
        return self._copier.run(lambda cursor: schema.copy_batches(cursor, batches)) > 0

    def _copy_spooled(self, lines: list[bytes]) -> int:
        """In the writer's thread pool: spooled JSON batches decoded and copied in one
        transaction (raises ValueError for a line that is not a batch)."""
        batches = []
        for line in lines:
            batch = json.loads(line)
            tables = {name: copy_text(batch[name]) for name in ("tasks", "jobs", "logs") if batch.get(name)}
            batches.append((str(batch["id"]), int(batch["n"]), tables))
        return self._copier.run(lambda cursor: schema.copy_batches(cursor, batches))

    def _copy_timed_out(self) -> None:
        log.warn("statistics: a write took more than {timeout:g} s: cancelling it",
                 timeout=self.write_timeout)
        self._io(self._copier.cancel)

    async def _to_spool(self, batch: Rows) -> None:
        try:
            dropped = await self._io(self._spool_append, batch)
        except OSError as e:
            self.rows_lost += batch.rows
            log.error("statistics: cannot write to the spool ({error}): {rows} rows lost", error=e,
                      rows=batch.rows)
            return
        self.rows_lost += dropped
        self.rows_spooled += batch.rows - dropped

    def _spool_append(self, batch: Rows) -> int:
        """In the I/O thread: the batch as a JSON line into the spool."""
        return self.spool.append(batch.encode().line.encode(), batch.rows)

    async def _drain(self) -> bool:
        """Write the oldest spooled batches; True if some went."""
        try:
            # Several batches per transaction: COPY's cost per statement is then paid less often.
            lines = await self._io(self.spool.peek, DRAIN_BATCHES * self.batch_rows)
        except OSError as e:
            log.error("statistics: cannot read the spool: {error}", error=e)
            return False
        if not lines:
            self.rows_spooled = 0
            return False
        texts = [line.decode() for line in lines]
        rows = [batch_rows(line) or 0 for line in lines]
        outcome = await self._copy_lines(lines, sum(rows))
        if outcome is None:  # not COPY's to write: the statement way, which refuses alone
            outcome = await self._send(texts, sum(rows), final=len(texts) == 1)
        if outcome is Outcome.WRITTEN:
            await self._io(self.spool.pop)
            self.rows_spooled = max(0, self.rows_spooled - sum(rows))
            return True
        if outcome is Outcome.FAILED:
            return False
        # Refused together: one at a time, so only the bad ones are dropped.
        for text, count in zip(texts, rows, strict=True):
            if len(texts) > 1:
                outcome = await self._send([text], count)
            if outcome is Outcome.FAILED:
                return False
            await self._io(self.spool.pop, 1)
            self.rows_spooled = max(0, self.rows_spooled - count)
        return True

    async def _copy_lines(self, lines: list[bytes], rows: int) -> Outcome | None:
        """Spooled batches by COPY; None if COPY refused them (or they do not decode)."""
        try:
            await self._in_pool(self._copy_spooled, lines)
        except Exception as e:
            if is_connection_error(e):
                self._copy_failed(rows, e)
                return Outcome.FAILED
            self._copy_refused(e)
            return None
        self.rows_written += rows
        self.batches_written += len(lines)
        return Outcome.WRITTEN

    async def _in_pool(self, f: Callable[..., Any], *args: Any) -> Any:
        """``f(*args)`` in the writer's pool, cancelled after write_timeout."""
        timeout = self.reactor.callLater(self.write_timeout, self._copy_timed_out)
        self._copying = threads.deferToThreadPool(self.reactor, self._pool, f, *args)
        try:
            return await self._copying
        finally:
            self._copying = None
            if timeout.active():
                timeout.cancel()

    def _copy_refused(self, error: Exception) -> None:
        """Logged when the reason changes (a role without the TEMPORARY privilege would refuse
        every batch: said once, and the rows still go, as JSON)."""
        reason = describe_error(error)
        if reason != self._copy_refusal:
            self._copy_refusal = reason
            log.warn("statistics: COPY refused a batch ({error}): writing it by a statement instead",
                     error=reason)

    def _copy_failed(self, rows: int, error: Exception) -> None:
        log.warn("statistics: writing {rows} rows failed: {error}; keeping them in the spool",
                 rows=rows, error=describe_error(error))
        self.db.abort("the COPY connection failed")  # the spool, until a reconnection

    async def _send(self, lines: list[str], rows: int, retried: bool = False, final: bool = True) -> Outcome:
        """Write ``lines`` (batches) in one statement. A refusal is logged and counted only if
        ``final`` (else the caller tries them one by one)."""
        payload = "[" + ",".join(lines) + "]"
        try:
            await self.db.execute(schema.BATCH_INSERT, (payload,), timeout=self.write_timeout)
        except Exception as e:
            if is_connection_error(e):
                return Outcome.FAILED
            if retried:
                if final:
                    self.rows_refused += rows
                    log.error("statistics: the database refused {rows} rows: {error}", rows=rows,
                              error=describe_error(e))
                return Outcome.REFUSED
            if error_code(e) == "42P01" and self.on_schema_missing is not None:  # tables dropped
                log.warn("statistics: tables missing ({error}): creating them", error=describe_error(e))
                try:
                    await self.on_schema_missing()
                except Exception as e2:
                    if is_connection_error(e2):
                        return Outcome.FAILED
                    log.error("statistics: cannot create the tables: {error}", error=describe_error(e2))
                return await self._send(lines, rows, retried=True, final=final)
            # Maybe a NUL in a string (PostgreSQL text cannot hold one): clean and retry once.
            try:
                cleaned = [json.dumps(_clean(json.loads(line)), separators=(",", ":")) for line in lines]
            except ValueError:  # not even JSON (a damaged spool line)
                cleaned = lines
            return await self._send(cleaned, rows, retried=True, final=final)
        self.rows_written += rows
        self.batches_written += len(lines)
        return Outcome.WRITTEN
