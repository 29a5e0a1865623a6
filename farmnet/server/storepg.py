"""The farm's state on PostgreSQL, and the one active server among several on it.

Selected by giving the store's database as a libpq URI (``server.store.database``, or
``--store postgresql://…``); the rows are the SQLite store's (:mod:`farmnet.server.store`
turns the farm into rows and back for both), written asynchronously through txpostgres,
a batch per transaction. A submit is answered once its batch is committed, as on SQLite.

Active and standby: every server on the database connects, and the one that gets
PostgreSQL's session advisory lock :data:`LOCK_KEY` is active: it loads the farm, listens
and gives orders; the others (standbys) neither load nor listen, and try the lock every
``standby_poll`` seconds. The lock belongs to the session that writes every batch, so the
active can commit nothing, and so acknowledge nothing and start no task (start orders wait
for their commit), once that session is gone; PostgreSQL frees the lock when the session
ends (the server killed, its backend terminated, its connection dropped by keepalives), and
a standby takes it. Each activation counts ``epoch`` up in ``meta``: an active whose session
was lost reconnects, and carries on only if it gets the lock back with the epoch it left
(nobody served meanwhile); otherwise it stops (``on_lost``) and is started again as a
standby by its service manager. An active cut off from the database for ``cutoff_exit``
seconds stops too, so that its renders move on to the new active.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from farmnet.model.farm import Farm
from farmnet.server.monitors import EventLog
from farmnet.server.store import (
    LOAD_QUERIES,
    TABLE,
    TABLES,
    Clear,
    Delete,
    FarmStore,
    Op,
    Update,
    Upsert,
    write_plan,
)
from farmnet.server.storecheck import Quarantine, StoreRefused
from farmnet.stats import db as pg

__all__ = ["LOCK_KEY", "PgStore", "is_database_uri", "pg_schema", "pg_statements"]

log = Logger()

#: The advisory lock of the active server (b"farmnet" as a number).
LOCK_KEY = int.from_bytes(b"farmnet", "big")
#: Taken while the schema is created: two servers starting at once do not race on it.
SCHEMA_LOCK_KEY = LOCK_KEY + 1
_PG_TYPES = {"int": "BIGINT", "real": "DOUBLE PRECISION", "text": "TEXT"}
#: Rows per INSERT statement (the parameters of one statement stay well under PostgreSQL's limits).
CHUNK = 1000
#: Keepalives of the lock's session (TCP only): a peer gone without a word is found out in seconds.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "2", "keepalives_interval": "1",
              "keepalives_count": "3", "tcp_user_timeout": "5000"}


def is_database_uri(store: str) -> bool:
    """A libpq URI (``postgresql://…``, ``postgres://…``) names a PostgreSQL store."""
    return store.startswith(("postgresql://", "postgres://"))


def with_keepalives(dsn: str) -> str:
    """``dsn`` with the lock session's keepalive settings, unless it sets them itself."""
    fields = dict(KEEPALIVES)
    fields.update(pg.parse_dsn(dsn))
    return pg.make_dsn(**fields)


def pg_schema() -> list[str]:
    """The tables of :data:`farmnet.server.store.TABLES` in PostgreSQL's types."""
    statements = []
    for table in TABLES:
        columns = ", ".join(f"{name} {_PG_TYPES[kind]}{' NOT NULL' if name in table.key else ''}"
                            for name, kind in table.columns)
        statements.append(f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, "
                          f"PRIMARY KEY ({', '.join(table.key)}))")
    statements.append("CREATE TABLE IF NOT EXISTS quarantine (time DOUBLE PRECISION NOT NULL, "
                      "source TEXT NOT NULL, item TEXT NOT NULL, reason TEXT NOT NULL, row TEXT NOT NULL)")
    return statements


def pg_statements(op: Op) -> list[tuple[str, list[Any]]]:
    """One operation of a batch in PostgreSQL's dialect: few statements, many rows each."""
    table = TABLE[op.table]
    out: list[tuple[str, list[Any]]] = []
    if isinstance(op, Upsert):
        width = len(table.columns)
        # One row per key: ON CONFLICT cannot change a row twice in one statement.
        rows = list({tuple(row[table.names.index(k)] for k in table.key): row for row in op.rows}.values())
        updates = ", ".join(f"{c}=EXCLUDED.{c}" for c in table.names if c not in table.key)
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i:i + CHUNK]
            values = ",".join(["(" + ",".join(["%s"] * width) + ")"] * len(chunk))
            out.append((f"INSERT INTO {table.name} ({', '.join(table.names)}) VALUES {values} "
                        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}",
                        [value for row in chunk for value in row]))
    elif isinstance(op, Update):
        sets = ", ".join(f"{c}=%s" for c in op.columns)
        where = " AND ".join(f"{c}=%s" for c in table.key)
        for row in op.rows:
            out.append((f"UPDATE {table.name} SET {sets} WHERE {where}", list(row)))
    elif isinstance(op, Clear):
        out.append((f"DELETE FROM {table.name}", []))
    elif isinstance(op, Delete):
        for i in range(0, len(op.keys), CHUNK):
            chunk = op.keys[i:i + CHUNK]
            one = "(" + ",".join(["%s"] * len(op.columns)) + ")"
            out.append((f"DELETE FROM {table.name} WHERE ({', '.join(op.columns)}) IN "
                        f"({','.join([one] * len(chunk))})", [value for key in chunk for value in key]))
    return out


async def create_schema(database: pg.Database) -> None:
    async def body(tx: pg.Transaction) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        for statement in pg_schema():
            await tx.execute(statement)

    await database.transaction(body)


class SessionLost(Exception):
    """Another server took over while this one's session was gone."""


class PgStore(FarmStore):
    """The farm's state in PostgreSQL, written on the active server's lock session."""

    def __init__(self, reactor: Any, dsn: str, farm: Farm, flush_interval: float = 0.2,
                 events: EventLog | None = None, *, standby_poll: float = 0.5,
                 check_interval: float = 1.0, check_timeout: float = 3.0, cutoff_exit: float = 30.0,
                 on_lost: Callable[[str], None] | None = None) -> None:
        super().__init__(reactor, farm, flush_interval=flush_interval, events=events)
        self.dsn = with_keepalives(dsn)
        self.name = pg.safe_dsn(dsn)
        self.standby_poll = standby_poll
        self.check_timeout = check_timeout
        #: Seconds an active cut off from the database waits before it gives up (0: for ever):
        #: its renders then move to a standby instead of waiting on a server that cannot commit.
        self.cutoff_exit = cutoff_exit
        #: Called once when another server took over while this one was cut off.
        self.on_lost = on_lost or (lambda reason: None)
        self.db = pg.Database(reactor, self.dsn, name="store database", reconnect_max_delay=1.0,
                              connect_timeout=5.0, on_connect=self._session_ready)
        #: This server holds the lock (it loaded the farm and writes).
        self.active = False
        #: The activation this server made (meta ``epoch``).
        self.epoch = 0
        self.lost = False
        self.quarantined: list[str] = []
        self._down_logged = False
        self._retry: Any = None
        self._check = task.LoopingCall(self._check_session)
        self._check.clock = reactor
        self.check_interval = check_interval

    # --- the session and the lock ------------------------------------------------------

    async def connect(self) -> None:
        """Connect (at start); StoreRefused, one line, when the database cannot be reached."""
        try:
            await self.db.connect()
        except Exception as e:
            self.db.close()
            raise StoreRefused(f"store database {self.name} unreachable: {self.db.last_error or e}") from None

    async def _session_ready(self, database: pg.Database) -> None:
        await create_schema(database)
        if not self.active:
            return
        # A reconnection of the active: carry on only if nobody served meanwhile.
        rows = await database.query("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,))
        epoch = await self._read_epoch(database)
        if not rows[0]["ok"] or epoch != self.epoch:
            holder = ("another server holds the lock" if not rows[0]["ok"]
                      else f"epoch {epoch}, not {self.epoch}")
            self._lose(f"another server took over while the store database was unreachable ({holder})")
            raise SessionLost(holder)
        log.warn("store database {name}: back, lock held again (epoch {epoch}): acknowledgements and "
                 "orders resume", name=self.name, epoch=self.epoch)

    @staticmethod
    async def _read_epoch(database: pg.Database) -> int:
        rows = await database.query("SELECT value FROM meta WHERE key = 'epoch'")
        return int(rows[0]["value"]) if rows else 0

    async def acquire(self) -> None:
        """Wait until this server holds the lock (a standby waits here), then count the epoch up."""
        waiting_since = 0.0
        while True:
            if self.db.closed:  # the server stops while standing by
                raise pg.ConnectionDead("closed")
            try:
                rows = await self.db.query("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,))
                if rows[0]["ok"]:
                    break
            except pg.DatabaseError as e:
                log.warn("store database {name}: {error} (waiting for the lock)", name=self.name,
                         error=pg.describe_error(e))
            except pg.ConnectionDead:
                pass
            if not waiting_since:
                waiting_since = time.monotonic()
                log.info("standby: another server is active on {name}; waiting for its lock", name=self.name)
            await task.deferLater(self.reactor, self.standby_poll)

        async def bump(tx: pg.Transaction) -> list[dict[str, Any]]:
            return await tx.query("INSERT INTO meta (key, value) VALUES ('epoch', '1') ON CONFLICT (key) "
                                  "DO UPDATE SET value = (meta.value::bigint + 1)::text RETURNING value")

        self.epoch = int((await self.db.transaction(bump))[0]["value"])
        self.active = True
        waited = f", after {time.monotonic() - waiting_since:.1f} s as standby" if waiting_since else ""
        log.info("active: holding the lock of {name} (epoch {epoch}{waited})", name=self.name,
                 epoch=self.epoch, waited=waited)

    def _lose(self, reason: str) -> None:
        if self.lost:
            return
        self.lost = True
        self.active = False
        log.critical("store database {name}: {reason}; this server stops (no orders, no acknowledgements)",
                     name=self.name, reason=reason)
        self.on_lost(reason)

    def _check_session(self) -> None:
        """The lock's session is asked every ``check_interval``: a dead one is found out (and
        reconnected, see :meth:`_session_ready`) even while nothing is written."""
        if not self.active:
            return
        if not self.db.ready:
            down = time.time() - self.db.down_since if self.db.down_since else 0.0
            if self.cutoff_exit and down > self.cutoff_exit:
                self._lose(f"cut off from it for {down:.0f} s (store.cutoff_exit): renders and clients "
                           "move to another server")
            return
        d = defer.ensureDeferred(self.db.query("SELECT 1", timeout=self.check_timeout))
        d.addErrback(lambda f: None)  # the database logs it and reconnects

    # --- loading -----------------------------------------------------------------------

    async def load(self) -> dict[str, int]:
        """Read the whole state into the farm (the lock held, before anything connects)."""
        started = time.monotonic()
        results = {sql: [tuple(row.values()) for row in await self.db.query(sql)] for sql in LOAD_QUERIES}
        quarantine = Quarantine(self.name)  # type: ignore[arg-type]
        jobs, tasks = self._load_rows(results.__getitem__, quarantine)
        if quarantine.rows:
            await self.db.transaction(lambda tx: self._quarantine(tx, quarantine))
        self.farm.restore_finished()
        self.quarantined = [f"{item}: {reason}" for _, item, _, _, reason, _ in quarantine.rows]
        log.info("store {name} loaded: {jobs} jobs, {tasks} stored tasks, {quarantined} rows quarantined, "
                 "in {seconds:.2f} s", name=self.name, jobs=jobs, tasks=tasks,
                 quarantined=len(quarantine.rows), seconds=time.monotonic() - started)
        return {"jobs": jobs, "tasks": tasks, "quarantined": len(quarantine.rows)}

    @staticmethod
    async def _quarantine(tx: pg.Transaction, quarantine: Quarantine) -> None:
        now = time.time()
        for table, item, where, key, reason, row in quarantine.rows:
            await tx.execute("INSERT INTO quarantine (time, source, item, reason, row) "
                             "VALUES (%s,%s,%s,%s,%s)",
                             (now, table, item, reason, json.dumps(row, default=str)))
            await tx.execute(f"DELETE FROM {table} WHERE {where.replace('?', '%s')}", key)
            if table == "jobs":
                await tx.execute("DELETE FROM tasks WHERE job_id=%s", key)

    # --- writing -----------------------------------------------------------------------

    def _open(self) -> bool:
        return self.active and self.db.ready

    def _submit(self, changes: tuple) -> defer.Deferred[None]:
        async def body(tx: pg.Transaction) -> None:
            for op in write_plan(changes):
                for sql, params in pg_statements(op):
                    await tx.execute(sql, params)

        return defer.ensureDeferred(self.db.transaction(body, timeout=30.0))

    def _written(self, result: None, waiters: list[defer.Deferred[None]]) -> None:
        if self._down_logged:
            self._down_logged = False
            log.warn("store database {name}: writing again", name=self.name)
        super()._written(result, waiters)

    def _write_failed(self, failure: Any, waiters: list[defer.Deferred[None]], changes: tuple) -> None:
        """Kept and written again once the database is back; until then nothing is acknowledged."""
        self._writing = None
        if not self._down_logged:
            self._down_logged = True
            log.critical("store database {name}: cannot commit ({error}): no acknowledgements and no "
                         "orders until it is back", name=self.name, error=pg.describe_error(failure))
        self._requeue(changes)
        self._waiters.extend(waiters)
        if not self.lost:
            self._retry = self.reactor.callLater(0.5, self._tick)

    # --- service -----------------------------------------------------------------------

    def startService(self) -> None:
        """After :meth:`connect`, :meth:`acquire` and :meth:`load` (the server runs them first)."""
        super().startService()
        self.follow()
        self._loop.start(self.flush_interval, now=False)
        self._check.start(self.check_interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for loop in (self._loop, self._check):
            if loop.running:
                loop.stop()
        self._unsubscribe()
        if self.active and not self.lost:
            try:
                await self._flush_last()
            except Exception as e:
                log.error("store database {name}: the last batch was not written: {error}", name=self.name,
                          error=pg.describe_error(e))
        self.close()

    async def _flush_last(self) -> None:
        if self._writing is not None:
            await self._writing
        changes = self._take_changes()
        if changes is not None:
            await self._submit(changes)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """Close the session: the lock goes with it."""
        for loop in (self._loop, self._check):
            if loop.running:
                loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.active = False
        self.db.close()
