"""The statistics service: embedded PostgreSQL, connections, schema, recorder and writer.

``StatsService(reactor, config, store, farm)`` is a Twisted service (``config`` is the
server's ``stats`` section, ``store`` its state directory). Starting it attaches the
recorder to the farm at once (no event is missed while the database comes up: rows wait
in the spool), starts the embedded PostgreSQL when ``server.stats.dsn`` is empty, connects,
upgrades the schema and lets the writer go. Stopping it writes what waits in memory to the
database within a few seconds (to the spool otherwise), closes the connections and stops
the embedded PostgreSQL.

It never stops the server from starting: a database that is down is waited for (its rows
are spooled), and without PostgreSQL binaries statistics are off with one log line.
:attr:`StatsService.status` says in words what the statistics are doing, for the web
site; :attr:`StatsService.queries` is what its statistics pages call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from farmnet.config import StatsConfig
from farmnet.stats import schema
from farmnet.stats.db import Database, safe_dsn
from farmnet.stats.embedded import EmbeddedPostgres, find_bin_dir
from farmnet.stats.queries import StatsQueries
from farmnet.stats.recorder import Recorder, Writer
from farmnet.stats.spool import Spool

__all__ = ["StatsService"]

log = Logger()

#: Seconds a web query may run before PostgreSQL cancels it.
QUERY_TIMEOUT = 60
#: Seconds stopping may spend writing the last rows to the database.
STOP_TIMEOUT = 5.0
#: Seconds between trims of the batch ledger (also trimmed at each connection).
LEDGER_TRIM_INTERVAL = 6 * 3600.0
#: Seconds between checks, while the writer is disconnected, that the embedded PostgreSQL runs.
EMBEDDED_CHECK_INTERVAL = 10.0


class StatsService(service.Service):
    name = "statistics"

    def __init__(self, reactor: Any, config: StatsConfig, store: Path, farm: Any) -> None:
        self.reactor = reactor
        self.config = config
        self.store = Path(store)
        self.farm = farm
        self.recorder = Recorder(reactor, full_rows=config.batch_rows)
        self.embedded: EmbeddedPostgres | None = None
        #: Seconds between checks that the embedded PostgreSQL still runs (while disconnected).
        self.embedded_check_interval = EMBEDDED_CHECK_INTERVAL
        self._watch: task.LoopingCall | None = None
        self.dsn = config.dsn
        #: The writer's connection, and the web site's (so a long query never holds writes).
        self.db: Database | None = None
        self.reader: Database | None = None
        self.writer: Writer | None = None
        #: Read queries for the web site; None while statistics are off.
        self.queries: StatsQueries | None = None
        self._off_reason = ""
        self._phase = "not started"
        self._starting: defer.Deferred[None] | None = None
        self._trim: task.LoopingCall | None = None

    # --- status --------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return not self._off_reason and self.writer is not None

    @property
    def status(self) -> str:
        """What the statistics are doing, in one line for people."""
        if self._off_reason:
            return f"off: {self._off_reason}"
        if self._phase == "stopped":
            kept = self.writer.pending if self.writer is not None else 0
            return f"stopped; {kept} rows kept on disk for the next start" if kept else "stopped"
        if self.writer is None or self.db is None:
            return self._phase
        writer, db = self.writer, self.db
        waiting = f"{writer.pending} rows waiting" if writer.pending else "nothing waiting"
        lost = writer.rows_lost + writer.rows_refused
        losses = f", {lost} rows lost (see the log)" if lost else ""
        if db.ready:
            return (f"on: {writer.rows_written} rows written to {safe_dsn(self.dsn)}, "
                    f"{waiting}{losses}")
        if self._phase != "running":
            return f"{self._phase}; {waiting}"
        since = "start"
        if db.down_since:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(db.down_since))
        problem = db.last_error or "connecting"
        return (f"database unavailable since {since} ({problem}): {waiting}, kept on disk until it is "
                f"back{losses}")

    def _off(self, reason: str) -> None:
        self._off_reason = reason
        log.warn("statistics are off: {reason}", reason=reason)

    # --- starting ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        config = self.config
        if not config.enabled:
            self._off("disabled in the configuration (server.stats.enabled: false)")
            return
        store = self.store
        if not self.dsn:
            bin_dir = find_bin_dir(config.pg_bin)
            if bin_dir is None:
                where = config.pg_bin or "PATH or /usr/lib/postgresql/*/bin"
                self._off(f"no PostgreSQL server programs (initdb, pg_ctl, postgres) in {where}: "
                          "install PostgreSQL, or set server.stats_dsn")
                return
            datadir = Path(config.embedded_dir) if config.embedded_dir else store / "postgresql"
            self.embedded = EmbeddedPostgres.for_store(datadir, bin_dir)
            self.dsn = self.embedded.dsn
        spool = Spool(store / "stats-spool", config.spool_max_bytes)
        self.db = Database(self.reactor, self.dsn, name="statistics database",
                           reconnect_max_delay=config.reconnect_max_delay, on_connect=self._prepare)
        self.writer = Writer(self.reactor, self.db, self.recorder, spool,
                             batch_rows=config.batch_rows, flush_interval=config.flush_interval,
                             on_schema_missing=lambda: self._prepare(self.db))
        self.recorder.attach(self.farm)
        self.writer.start()
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(lambda f: log.failure("statistics: starting failed", f))

    async def _start(self) -> None:
        assert self.db is not None
        if self.embedded is not None:
            self._phase = f"starting the embedded PostgreSQL in {self.embedded.cluster.datadir}"
            try:
                await self.embedded.start(self.reactor)
            except Exception as e:
                self._off(f"the embedded PostgreSQL did not start: {e}")
                self.embedded = None
                await self._stop_writing()
                return
        if not self.running:
            return
        self._phase = "running"
        self.db.on_ready(self._writer_ready)
        self._trim = task.LoopingCall(lambda: defer.ensureDeferred(self._trim_ledger()))
        self._trim.clock = self.reactor
        self._trim.start(LEDGER_TRIM_INTERVAL, now=False)
        if self.embedded is not None:
            self._watch = task.LoopingCall(lambda: defer.ensureDeferred(self._keep_embedded_up()))
            self._watch.clock = self.reactor
            self._watch.start(self.embedded_check_interval, now=False)
        await self.db.start()

    async def _keep_embedded_up(self) -> None:
        """The embedded PostgreSQL is this server's: if it went away under us (killed, the
        machine's OOM killer, a stray pg_ctl stop), start it again; the writer reconnects and
        sends what the spool kept meanwhile."""
        embedded = self.embedded
        if embedded is None or not self.running or (self.db is not None and self.db.ready):
            return
        try:
            if await embedded.cluster.is_running(self.reactor):
                return
            log.warn("statistics: the embedded PostgreSQL in {datadir} is gone; starting it again",
                     datadir=str(embedded.cluster.datadir))
            await embedded.start(self.reactor)
        except Exception as e:
            log.error("statistics: starting the embedded PostgreSQL again failed: {error}", error=e)

    async def _trim_ledger(self) -> None:
        if self.db is not None and self.db.ready:
            try:
                await schema.forget_old_batches(self.db)
            except Exception as e:
                log.warn("statistics: trimming the batch ledger failed: {error}", error=e)

    def _writer_ready(self) -> None:
        """The schema is there: the web site's connection may start (once)."""
        if self.reader is not None or not self.running:
            return
        self.reader = Database(self.reactor, self.dsn, name="statistics reader",
                               reconnect_max_delay=self.config.reconnect_max_delay,
                               on_connect=self._prepare_reader)
        self.queries = StatsQueries(self.reader)
        defer.ensureDeferred(self.reader.start())

    async def _prepare(self, db: Database | None) -> None:
        """After each connection of the writer: the schema up to date, the ledger trimmed."""
        assert db is not None
        before, after = await schema.upgrade(db)
        if before != after:
            log.info("statistics schema upgraded from version {before} to {after}", before=before,
                     after=after)
        await schema.forget_old_batches(db)

    async def _prepare_reader(self, db: Database) -> None:
        await db.execute("SET statement_timeout = %s", (f"{QUERY_TIMEOUT}s",))
        await db.execute("SET default_transaction_read_only = on")

    # --- stopping ------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop_writing(self) -> None:
        self.recorder.detach()
        if self.writer is not None:
            await self.writer.stop(STOP_TIMEOUT)

    async def _stop(self) -> None:
        if self._starting is not None:
            # An embedded start under way ends first (pg_ctl -w), then the cluster stops.
            await self._starting
            self._starting = None
        if self._trim is not None and self._trim.running:
            self._trim.stop()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        try:
            await self._stop_writing()
        except Exception:
            log.failure("statistics: stopping the writer failed")
        for database in (self.db, self.reader):
            if database is not None:
                database.close()
        if self.writer is not None and self.writer.pending:
            log.info("statistics: {rows} rows kept in the spool for the next start", rows=self.writer.pending)
        if self.embedded is not None:
            try:
                await self.embedded.stop(self.reactor)
            except Exception as e:
                log.error("statistics: stopping the embedded PostgreSQL failed: {error}", error=e)
        self._phase = "stopped"
