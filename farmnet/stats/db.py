"""The statistics database connection: the one module that imports txpostgres and psycopg2.

:class:`Database` is one asynchronous PostgreSQL connection (txpostgres: psycopg2's
asynchronous mode driven by the reactor, no threads) that keeps itself connected:
txpostgres' ``DeadConnectionDetector`` notices a dead connection (an ``OperationalError``
or ``InterfaceError`` from any query, the server closing an idle connection, a connect
or query that takes too long) and reconnects with an exponential backoff capped at
``reconnect_max_delay``. While it is down every call fails at once with
:class:`ConnectionDead`. After each connection an ``on_connect`` hook runs (the schema
upgrade, session settings); :attr:`Database.ready` is true only once it succeeded.

Everything else in farmnet talks to PostgreSQL through this module: SQL text with
``%s`` placeholders and a parameter tuple, never values pasted into SQL. Errors are
classified here (:func:`is_connection_error`, :func:`error_code`) so callers need not
know psycopg2's exception tree.

:class:`CopyConnection` is the exception to "no threads": psycopg2's asynchronous connections
cannot ``COPY … FROM STDIN``, PostgreSQL's fastest way in, so the statistics writer keeps one
blocking connection for it and uses it from a worker thread of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

__all__ = [
    "ConnectionDead",
    "CopyConnection",
    "Database",
    "DatabaseError",
    "Transaction",
    "UNDEFINED_TABLE",
    "connect_once",
    "describe_error",
    "dsn_field",
    "ensure_database",
    "error_code",
    "is_connection_error",
    "make_dsn",
    "parse_dsn",
    "quote_ident",
    "safe_dsn",
]

log = Logger()

#: SQLSTATE of "relation does not exist".
UNDEFINED_TABLE = "42P01"

ConnectionDead = reconnection.ConnectionDead
#: Every error PostgreSQL or the driver reports (connection or query).
DatabaseError = psycopg2.Error

Params = Sequence[Any] | dict[str, Any] | None


QueryCanceledError = psycopg2.extensions.QueryCanceledError


class QueryTimeout(psycopg2.OperationalError):
    """A connect or a query took longer than allowed: the connection is given up."""


def make_dsn(**fields: Any) -> str:
    """A libpq connection string, every value quoted as libpq wants."""
    return psycopg2.extensions.make_dsn(**{k: str(v) for k, v in fields.items() if v is not None})


def safe_dsn(dsn: str) -> str:
    """``dsn`` fit for a log line: the password hidden (an unparsable DSN is not shown)."""
    try:
        fields = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "(unparsable DSN)"
    if "password" in fields:
        fields["password"] = "***"
    return " ".join(f"{k}={v}" for k, v in fields.items()) or "(libpq defaults)"


def parse_dsn(dsn: str) -> dict[str, str]:
    """A DSN or URI's fields (raises DatabaseError when it does not parse)."""
    return psycopg2.extensions.parse_dsn(dsn)


def dsn_field(dsn: str, key: str) -> str:
    """One field of a DSN ("" if absent)."""
    return psycopg2.extensions.parse_dsn(dsn).get(key, "")


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted (for the few statements that take no parameters)."""
    return '"' + name.replace('"', '""') + '"'


def _unwrap(failure_or_exc: Failure | BaseException) -> BaseException:
    if isinstance(failure_or_exc, Failure):
        return failure_or_exc.value
    if isinstance(failure_or_exc, txpostgres.RollbackFailed):
        return _unwrap(failure_or_exc.originalFailure)
    return failure_or_exc


def is_connection_error(failure_or_exc: Failure | BaseException) -> bool:
    """True when the connection (not the statement) failed: worth retrying later."""
    exc = _unwrap(failure_or_exc)
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError, ConnectionDead,
                            txpostgres.RollbackFailed, error.ConnectionDone, error.ConnectionLost,
                            defer.CancelledError, TimeoutError))


def error_code(failure_or_exc: Failure | BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a statement error, if any."""
    return getattr(_unwrap(failure_or_exc), "pgcode", None)


def describe_error(failure_or_exc: Failure | BaseException) -> str:
    """One line saying what went wrong."""
    exc = _unwrap(failure_or_exc)
    if isinstance(exc, ConnectionDead):
        return "the connection is down (reconnecting)"
    if isinstance(exc, (error.ConnectionDone, error.ConnectionLost)):
        return "the connection was closed"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _Connection(txpostgres.Connection):
    """txpostgres' connection with a connect timeout, and robust against the server
    closing an idle connection (psycopg2 then raises from ``poll`` inside ``doRead``,
    which the reactor would log as an unhandled error)."""

    connect_timeout = 10.0

    def connect(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d = super().connect(*args, **kwargs)
        if d.called:
            return d
        call = self.reactor.callLater(self.connect_timeout, self._connect_timed_out, d)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return d.addBoth(done)

    def _connect_timed_out(self, d: defer.Deferred[Any]) -> None:
        if not d.called:
            self.abort(QueryTimeout(f"no connection after {self.connect_timeout:g} s"))

    _abort_reason: BaseException | None = None

    def abort(self, reason: BaseException) -> None:
        """Give the connection up: close it; whatever waits on it fails, the detector is told
        ``reason``."""
        if self._connection is None:
            return
        self._abort_reason = reason
        self.close()

    def close(self) -> None:
        if self._connection is None:
            return
        super().close()

    def connectionLost(self, reason: Failure) -> None:
        if self._abort_reason is not None:
            reason, self._abort_reason = Failure(self._abort_reason), None
        super().connectionLost(reason)

    def doRead(self) -> None:
        try:
            super().doRead()
        except Exception:
            self.connectionLost(Failure())


class _Detector(reconnection.DeadConnectionDetector):
    """The detector with its own retry loop: stoppable (no timer left behind) and quiet
    (failures go to our log in our words, not to ``log.err``)."""

    def __init__(self, db: Database, max_delay: float) -> None:
        self._db = db

        def backoff() -> Any:
            return retrying.simpleBackoffIterator(
                initialDelay=min(0.25, max_delay), maxDelay=max_delay, factor=2.0, maxRetries=0, now=True)

        super().__init__(deathChecker=self._is_death, reconnectionIterator=backoff, reactor=db.reactor)
        self._delays: Any = iter(())
        self._call: Any = None

    def _is_death(self, failure: Failure) -> bool:
        return not self._db.closed and is_connection_error(failure)

    def startReconnecting(self, f: Failure) -> None:
        self._db._connection_died(f)
        self._delays = self.reconnectionIterator()
        self._schedule()

    def _schedule(self) -> None:
        # Never reconnect synchronously: this runs inside close()/connectionLost/doRead.
        self._call = self.reactor.callLater(next(self._delays), self._attempt)

    def _attempt(self) -> None:
        self._call = None
        if self._db.closed:
            return
        d = defer.maybeDeferred(self.reconnect)
        d.addCallbacks(lambda _: self.connectionRecovered(), self._failed)

    def _failed(self, failure: Failure) -> None:
        if not self._db.closed:
            self._db._attempt_failed(failure)
            self._schedule()

    def connectionRecovered(self) -> Any:
        self.connectionIsDead = False
        return defer.ensureDeferred(self._db._connected())

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


class Transaction:
    """Statements inside :meth:`Database.transaction`."""

    def __init__(self, cursor: txpostgres.Cursor) -> None:
        self._cursor = cursor

    async def execute(self, sql: str, params: Params = None) -> None:
        await self._cursor.execute(sql, params)

    async def query(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        await self._cursor.execute(sql, params)
        return _dicts(self._cursor)


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    if cursor.description is None:
        return []
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class Database:
    """One PostgreSQL connection that reconnects by itself.

    ``on_connect(db)`` runs after every (re)connection, before :attr:`ready` turns
    true; if it fails with a connection error the detector reconnects again, any other
    failure is logged and leaves the database not ready until the next reconnection.
    """

    def __init__(
        self,
        reactor: Any,
        dsn: str,
        *,
        name: str = "statistics database",
        reconnect_max_delay: float = 10.0,
        connect_timeout: float = 10.0,
        on_connect: Callable[[Database], Awaitable[None]] | None = None,
        reconnect: bool = True,
        quiet: bool = False,
    ) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.name = name
        self.on_connect = on_connect
        self.connect_timeout = connect_timeout
        #: No "connected" log line (one-shot connections of tools).
        self.quiet = quiet
        self.closed = False
        self.ready = False
        #: The last connection problem, for status lines; "" while connected.
        self.last_error = ""
        #: When the connection was last lost (time.time()), 0 while connected.
        self.down_since = 0.0
        self._detector = _Detector(self, reconnect_max_delay) if reconnect else None
        self._conn = _Connection(reactor, detector=self._detector)
        self._conn.connect_timeout = connect_timeout
        #: Connected (the on_connect hook may still be running).
        self._open = False
        self._waiting: list[defer.Deferred[None]] = []
        self._ready_callbacks: list[Callable[[], None]] = []
        self._logged_down = False

    # --- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now; raises on failure (and, with reconnection, keeps trying behind)."""
        try:
            await self._conn.connect(self.dsn)
        except Exception as e:
            if self._detector is not None:
                self._detector.checkForDeadConnection(Failure(e))
            raise
        await self._connected()
        if not self.ready and not self.closed:
            raise ConnectionDead(self.last_error)

    async def start(self) -> None:
        """Connect in the background: returns at once; :attr:`ready` tells when it worked."""
        d = defer.ensureDeferred(self.connect())
        d.addErrback(lambda f: None)  # logged by _connection_died / _attempt_failed

    async def _connected(self) -> None:
        if self.closed:
            return
        self._open = True
        try:
            if self.on_connect is not None:
                await self.on_connect(self)
        except Exception as e:
            self.last_error = describe_error(e)
            if is_connection_error(e) and self._detector is not None:
                self._detector.checkForDeadConnection(Failure(e))
            else:
                log.error("{name}: connected but not usable: {error}", name=self.name, error=self.last_error)
            return
        if self._logged_down or self.down_since:
            log.info("{name}: connected again to {dsn} (down {seconds:.1f} s)", name=self.name,
                     dsn=safe_dsn(self.dsn), seconds=time.time() - self.down_since if self.down_since else 0)
        elif not self.quiet:
            log.info("{name}: connected to {dsn}", name=self.name, dsn=safe_dsn(self.dsn))
        self.ready = True
        self.last_error = ""
        self.down_since = 0.0
        self._logged_down = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        for callback in list(self._ready_callbacks):
            callback()

    def _connection_died(self, failure: Failure) -> None:
        self.ready = False
        self._open = False
        self.last_error = describe_error(failure)
        if not self.down_since:
            self.down_since = time.time()
        if not self._logged_down:
            self._logged_down = True
            log.warn("{name}: connection to {dsn} lost or refused: {error}; reconnecting", name=self.name,
                     dsn=safe_dsn(self.dsn), error=self.last_error)

    def _attempt_failed(self, failure: Failure) -> None:
        self.last_error = describe_error(failure)
        log.debug("{name}: reconnection failed: {error}", name=self.name, error=self.last_error)

    def when_ready(self) -> defer.Deferred[None]:
        """Fires when the database is (or next becomes) ready."""
        if self.ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the database becomes ready."""
        self._ready_callbacks.append(callback)

    def abort(self, reason: str = "given up") -> None:
        """Drop the connection now (a reconnection follows unless closed)."""
        if self._conn._connection is not None and not self._conn._connection.closed:
            self._conn.abort(QueryTimeout(reason))

    def close(self) -> None:
        """Close for good: no more reconnection."""
        if self.closed:
            return
        self.closed = True
        self.ready = False
        self._open = False
        if self._detector is not None:
            self._detector.stop()
        self._conn.abort(ConnectionDead("closed"))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(ConnectionDead("closed"))

    # --- statements --------------------------------------------------------------------

    def _call(self, method: Callable[..., defer.Deferred[Any]], *args: Any,
              timeout: float | None) -> defer.Deferred[Any]:
        if self.closed:
            return defer.fail(ConnectionDead("closed"))
        if self._detector is not None and self._detector.connectionIsDead:
            return defer.fail(ConnectionDead(self.last_error))
        if not self._open or self._conn._connection is None or self._conn._connection.closed:
            return defer.fail(ConnectionDead(self.last_error or "not connected yet"))
        d = method(*args)
        if timeout is None:
            return d
        conn = self._conn._connection
        call = self.reactor.callLater(timeout, self._timed_out, d, conn, timeout)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return d.addBoth(done)

    def _timed_out(self, d: defer.Deferred[Any], conn: Any, timeout: float) -> None:
        if not d.called and self._conn._connection is conn and not conn.closed:
            log.warn("{name}: a statement took more than {timeout:g} s: dropping the connection",
                     name=self.name, timeout=timeout)
            self._conn.abort(QueryTimeout(f"statement timed out after {timeout:g} s"))

    async def execute(self, sql: str, params: Params = None, *, timeout: float | None = None) -> None:
        """Run one statement (autocommit), results discarded."""
        await self._call(self._conn.runOperation, sql, params, timeout=timeout)

    async def query(self, sql: str, params: Params = None, *,
                    timeout: float | None = None) -> list[dict[str, Any]]:
        """Run one statement; its rows as dicts keyed by column name."""

        def run(sql: str, params: Params) -> defer.Deferred[Any]:
            # txpostgres' runQuery, keeping the cursor for the column names.
            def one() -> defer.Deferred[Any]:
                cursor = self._conn.cursor()
                return cursor.execute(sql, params).addCallback(_dicts)

            if self._detector is not None:
                return self._conn.lock.run(self._detector.callChecking, one)
            return self._conn.lock.run(one)

        return await self._call(run, sql, params, timeout=timeout)

    async def transaction(self, body: Callable[[Transaction], Awaitable[Any]], *,
                          timeout: float | None = None) -> Any:
        """Run ``await body(tx)`` inside BEGIN … COMMIT (ROLLBACK if it raises)."""

        def interaction() -> defer.Deferred[Any]:
            # Not txpostgres' runInteraction: it logs a failed ROLLBACK (a connection lost
            # mid-transaction) as an unhandled error; the transaction is gone with it anyway.
            cursor = self._conn.cursor()

            async def run() -> Any:
                await cursor.execute("BEGIN")
                try:
                    result = await body(Transaction(cursor))
                except BaseException:
                    try:
                        await cursor.execute("ROLLBACK")
                    except Exception:
                        pass
                    raise
                await cursor.execute("COMMIT")
                return result

            return defer.ensureDeferred(run())

        def locked() -> defer.Deferred[Any]:
            if self._detector is not None:
                return self._conn.lock.run(self._detector.callChecking, interaction)
            return self._conn.lock.run(interaction)

        return await self._call(locked, timeout=timeout)


T = TypeVar("T")


class CopyConnection:
    """A blocking connection for COPY, used from one worker thread.

    Every method but :meth:`cancel` must be called from that thread (they block). It connects
    on first use and again after a connection error (which is raised: the caller decides
    what to do with its rows); ``setup`` statements run after each connection.
    """

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0, setup: Sequence[str] = ()) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.setup = tuple(setup)
        self._conn: Any = None

    def _connect(self) -> Any:
        conn = psycopg2.connect(self.dsn, connect_timeout=max(1, round(self.connect_timeout)))
        try:
            with conn.cursor() as cursor:
                for statement in self.setup:
                    cursor.execute(statement)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    def run(self, body: Callable[[Any], T]) -> T:
        """``body(cursor)`` in one transaction: committed if it returns, rolled back if it raises.

        A connection kept from before that turns out dead (the server restarted while it was
        idle) is replaced and ``body`` run once more on the new one: the caller's ledger makes
        a second run of a transaction whose commit was in fact done a no-op."""
        reused = self._conn is not None and not self._conn.closed
        try:
            return self._run_once(body)
        except Exception as e:
            if not (reused and is_connection_error(e)) or isinstance(e, QueryCanceledError):
                raise
            log.debug("statistics: the COPY connection was dead ({error}): connecting again",
                      error=describe_error(e))
            return self._run_once(body)

    def _run_once(self, body: Callable[[Any], T]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        conn = self._conn
        try:
            with conn.cursor() as cursor:
                result = body(cursor)
            conn.commit()
        except BaseException as e:
            if is_connection_error(e):
                self.close()
            else:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    self.close()
            raise
        return result

    def cancel(self) -> None:
        """Cancel the statement running in the worker thread (it then raises a connection
        error: a statement cancelled is as good as lost). Blocks for a round trip: call it
        from a thread too."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel()
            except psycopg2.Error as e:
                log.debug("statistics: cancelling a COPY failed: {error}", error=describe_error(e))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass


async def connect_once(reactor: Any, dsn: str, *, timeout: float = 10.0,
                       name: str = "statistics database") -> Database:
    """A connection without reconnection (tools, tests); raises if it cannot connect."""
    database = Database(reactor, dsn, name=name, connect_timeout=timeout, reconnect=False, quiet=True)
    try:
        await database.connect()
    except BaseException:
        database.close()
        raise
    return database


async def ensure_database(reactor: Any, admin_dsn: str, name: str) -> bool:
    """Create database ``name`` through ``admin_dsn`` unless it exists; True if created."""
    database = await connect_once(reactor, admin_dsn, name="PostgreSQL")
    try:
        rows = await database.query("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if rows:
            return False
        await database.execute(f"CREATE DATABASE {quote_ident(name)}")
        log.info("created database {database}", database=name)
        return True
    finally:
        database.close()
