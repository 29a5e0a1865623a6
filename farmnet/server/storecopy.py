"""``farmnet store copy SRC DST``: the farm's state from a SQLite store (a directory) into
PostgreSQL (a libpq URI), or back.

Every table of :data:`farmnet.server.store.TABLES` is copied row for row, as the server
keeps it (so a table added there is copied too), in one transaction on each side. The
target must hold no farm yet (no jobs, tasks, users or renders), and no server may run on
it: a SQLite target's directory lock and a PostgreSQL target's active lock are held while
copying. The source is read in one transaction (a consistent copy even of a running server's
store). Each store's own bookkeeping (SQLite's generation and store id, PostgreSQL's epoch)
is its own and not copied.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from farmnet.server.store import TABLES, Store, Upsert, _run_sqlite
from farmnet.server.storecheck import StoreRefused, lock_store
from farmnet.server.storepg import LOCK_KEY, create_schema, is_database_uri, pg_statements, with_keepalives
from farmnet.stats import db as pg

__all__ = ["copy_store"]

#: Meta keys that belong to one store, not to the farm.
OWN_KEYS = frozenset({"schema_version", "store_id", "generation", "epoch"})
FARM_TABLES = ("jobs", "tasks", "users", "renders")

Rows = dict[str, list[tuple[Any, ...]]]


def _farm_rows(rows: Rows) -> Rows:
    rows = dict(rows)
    rows["meta"] = [row for row in rows["meta"] if row[0] not in OWN_KEYS]
    return rows


def _select(table: Any) -> str:
    return f"SELECT {', '.join(table.names)} FROM {table.name}"


# --- SQLite -------------------------------------------------------------------------------


def _sqlite_path(directory: str) -> Path:
    return Path(directory) / "farm.sqlite"


def read_sqlite(directory: str) -> Rows:
    path = _sqlite_path(directory)
    if not path.exists():
        raise StoreRefused(f"no store at {directory}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.execute("BEGIN")
        return _farm_rows({table.name: db.execute(_select(table)).fetchall() for table in TABLES})
    except sqlite3.DatabaseError as e:
        raise StoreRefused(f"store {path}: cannot read: {e}") from None
    finally:
        db.close()


def write_sqlite(directory: str, rows: Rows) -> None:
    from twisted.internet.task import Clock

    from farmnet.model.farm import Farm

    path = _sqlite_path(directory)
    lock = lock_store(path)
    try:
        clock = Clock()
        store = Store(clock, path, Farm(clock))
        db = store._connect()
        try:
            for name in FARM_TABLES:
                if db.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone():
                    raise StoreRefused(f"the target store {directory} is not empty ({name}): copy into "
                                       "a new directory")
            db.execute("BEGIN IMMEDIATE")
            try:
                for table in TABLES:
                    _run_sqlite(db, Upsert(table.name, rows[table.name]))
                store.guard.stamp(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            store.guard.committed()
        finally:
            store.close()
    finally:
        lock.release()


# --- PostgreSQL ---------------------------------------------------------------------------


async def read_pg(reactor: Any, uri: str) -> Rows:
    database = await _connect(reactor, uri)
    try:
        async def body(tx: pg.Transaction) -> Rows:
            await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return {table.name: [tuple(row.values()) for row in await tx.query(_select(table))]
                    for table in TABLES}

        return _farm_rows(await database.transaction(body))
    finally:
        database.close()


async def write_pg(reactor: Any, uri: str, rows: Rows) -> None:
    database = await _connect(reactor, uri)
    try:
        await create_schema(database)
        held = await database.query("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,))
        if not held[0]["ok"]:
            raise StoreRefused(f"a farmnet server is active on {pg.safe_dsn(uri)}: stop it first")

        async def body(tx: pg.Transaction) -> None:
            for name in FARM_TABLES:
                if await tx.query(f"SELECT 1 FROM {name} LIMIT 1"):
                    raise StoreRefused(f"the target database {pg.safe_dsn(uri)} is not empty ({name}): "
                                       "copy into a new database")
            for table in TABLES:
                for sql, params in pg_statements(Upsert(table.name, rows[table.name])):
                    await tx.execute(sql, params)

        await database.transaction(body)
    finally:
        database.close()


async def _connect(reactor: Any, uri: str) -> pg.Database:
    try:
        return await pg.connect_once(reactor, with_keepalives(uri), name="store database")
    except pg.DatabaseError as e:
        raise StoreRefused(f"store database {pg.safe_dsn(uri)} unreachable: {pg.describe_error(e)}") from None
    except pg.ConnectionDead as e:
        raise StoreRefused(f"store database {pg.safe_dsn(uri)} unreachable: {e}") from None


async def copy_store(reactor: Any, source: str, target: str) -> dict[str, int]:
    """Copy; returns the rows copied per table. StoreRefused (one line) when it cannot."""
    if source == target:
        raise StoreRefused("source and target are the same store")
    rows = await read_pg(reactor, source) if is_database_uri(source) else read_sqlite(source)
    if is_database_uri(target):
        await write_pg(reactor, target, rows)
    else:
        write_sqlite(target, rows)
    return {name: len(value) for name, value in rows.items()}
