"""A store that cannot lose silently: what the store checks at open, and its backups.

SQLite in WAL mode opens almost anything without a word: an emptied ``farm.sqlite`` is an
empty farm, a removed ``-wal`` file silently drops the transactions committed since the
last checkpoint. So the store keeps two things beside its database:

- a **generation** in the database's ``meta`` table, one more at every commit (in the
  same transaction), and the same number in ``farm.sqlite.generation`` next to it,
  written after the commit by tmp+rename (no fsync: it may lag the database after a
  power cut, never lead it). At open, a database behind its marker has lost committed
  transactions; a marker with no database (or a 0-byte one) means the store was emptied.
  Both ``store_id`` values must agree: a database from another store is refused too.
- an **integrity check** (``PRAGMA quick_check``) at open: a damaged file is refused by
  name, with the way out (``farmnet store restore``), not a traceback.

A row the farm cannot load (bad JSON, a spec that no longer validates) is moved to the
``quarantine`` table and named in the log; the rest of the farm is served. Backups are
SQLite online backups (one read transaction, in a thread: WAL readers do not block the
writer), written tmp+rename into ``backups/`` and rotated.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import task, threads
from twisted.logger import Logger

from farmnet.server.storelock import StoreInUse, StoreLock

log = Logger()

BACKUP_PREFIX = "farm-"
BACKUP_SUFFIX = ".sqlite"


class StoreRefused(Exception):
    """The store cannot be used as it is: one line naming the file and what to do."""


def restore_hint(store_dir: Path) -> str:
    return (f"restore a backup with `farmnet store restore --store {store_dir}` "
            f"(backups in {store_dir / 'backups'})")


def marker_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".generation")


def read_marker(db_path: Path) -> dict[str, Any] | None:
    """The marker beside the database: {"store_id", "generation"}; {} when unreadable,
    None when there is none (a new store, or one older than markers)."""
    try:
        text = marker_path(db_path).read_text()
    except FileNotFoundError:
        return None
    try:
        marker = json.loads(text)
        return {"store_id": str(marker["store_id"]), "generation": int(marker["generation"])}
    except (ValueError, KeyError, TypeError):
        return {}


def write_marker(db_path: Path, store_id: str, generation: int, sync: bool = False) -> None:
    """tmp+rename: a crash leaves the old marker or the new one, never half of one."""
    path = marker_path(db_path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"store_id": store_id, "generation": generation}))
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_store(db_path: Path) -> StoreLock:
    """The server's own lock on the store (`farmnet.server.storelock`), for a change made
    with the server stopped; StoreRefused while a server runs on it."""
    lock = StoreLock(db_path.parent)
    try:
        lock.acquire()
    except StoreInUse as e:
        raise StoreRefused(str(e)) from None
    return lock


class Guard:
    """The store's checks at open, and its generation at every commit."""

    def __init__(self, db_path: Path, readonly: bool = False) -> None:
        self.path = db_path
        #: Check only (`farmnet store check`): write neither the database nor the marker.
        self.readonly = readonly
        self.store_id = ""
        self.generation = 0
        #: Committed transactions the database has lost (found by a read-only check).
        self.lost = 0
        self._marker: dict[str, Any] | None = None

    def before_open(self) -> None:
        """An initialised store (a marker) whose database is missing or empty is refused."""
        self._marker = read_marker(self.path)
        if self._marker is None:
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size <= 0:
            what = "is missing" if size < 0 else "is empty (0 bytes)"
            generation = self._marker.get("generation", "?")
            raise StoreRefused(f"store {self.path} {what}, but a store was initialised here (generation "
                               f"{generation} in {marker_path(self.path).name}); "
                               f"{restore_hint(self.path.parent)}")

    def after_open(self, db: sqlite3.Connection) -> None:
        """Integrity, then identity and generation against the marker. Raises
        sqlite3.DatabaseError for a damaged file (`damaged` words it)."""
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreRefused(f"store {self.path} is damaged (integrity check: "
                               f"{'; '.join(problems)}); {restore_hint(self.path.parent)}")
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('store_id', 'generation')"))
        marker = self._marker
        if "store_id" not in meta:
            if marker:  # the marker says a store was here; this database never was it
                raise StoreRefused(f"store {self.path} is not the store initialised here (it has no store "
                                   f"id; {marker_path(self.path).name} says generation "
                                   f"{marker['generation']}); {restore_hint(self.path.parent)}")
            if self.readonly:
                return
            self.store_id, self.generation = uuid.uuid4().hex, 0
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("store_id", self.store_id), ("generation", "0")])
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the id in the main file from the start
            write_marker(self.path, self.store_id, 0, sync=True)
            log.info("store {path} initialised (store id {store_id})", path=str(self.path),
                     store_id=self.store_id)
            return
        self.store_id, self.generation = meta["store_id"], int(meta.get("generation", 0))
        if self.readonly:
            if marker and marker["store_id"] == self.store_id and marker["generation"] > self.generation:
                self.lost = marker["generation"] - self.generation
            elif marker and marker["store_id"] != self.store_id:
                raise StoreRefused(f"store {self.path} belongs to another store (id {self.store_id}, "
                                   f"{marker_path(self.path).name} says {marker['store_id']})")
            return
        if not marker:
            log.warn("store {path}: its marker {marker} was {what}; written again at generation {generation}",
                     path=str(self.path), marker=marker_path(self.path).name,
                     what="missing" if marker is None else "unreadable", generation=self.generation)
        elif marker["store_id"] != self.store_id:
            raise StoreRefused(f"store {self.path} belongs to another store (id {self.store_id}, "
                               f"{marker_path(self.path).name} says {marker['store_id']}); "
                               f"{restore_hint(self.path.parent)}, or move the right file back")
        elif marker["generation"] > self.generation:
            lost = marker["generation"] - self.generation
            raise StoreRefused(f"store {self.path} has lost {lost} committed transaction(s) (it is at "
                               f"generation {self.generation}, {marker_path(self.path).name} says "
                               f"{marker['generation']}: was its -wal file removed?); "
                               f"{restore_hint(self.path.parent)}, or accept the loss with "
                               f"`farmnet store check --accept --store {self.path.parent}`")
        write_marker(self.path, self.store_id, self.generation, sync=True)

    def stamp(self, db: sqlite3.Connection) -> None:
        """In the commit's transaction: the generation it makes."""
        db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(self.generation + 1),))

    def committed(self) -> None:
        """After the commit (the store's thread): the marker follows."""
        self.generation += 1
        write_marker(self.path, self.store_id, self.generation)


def damaged(path: Path, error: sqlite3.DatabaseError) -> StoreRefused:
    return StoreRefused(f"store {path} is damaged or not a farmnet store ({error}); "
                        f"{restore_hint(path.parent)}")


# --- quarantine ------------------------------------------------------------------------

QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, time REAL NOT NULL,
    source TEXT NOT NULL, item TEXT NOT NULL, reason TEXT NOT NULL, row TEXT NOT NULL);
"""


class Quarantine:
    """Rows the farm could not load, moved aside (with the reason) so the rest is served."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: (table, item as people name it, WHERE clause, its values, reason, the row).
        self.rows: list[tuple[str, str, str, tuple[Any, ...], str, tuple[Any, ...]]] = []

    def add(self, table: str, item: str, where: str, key: tuple[Any, ...], error: Exception,
            row: tuple[Any, ...]) -> None:
        reason = f"{type(error).__name__}: {error}"
        self.rows.append((table, item, where, key, reason, row))
        log.error("store {path}: {item} cannot be loaded ({reason}); moved to the quarantine table, "
                  "the rest of the farm is served", path=str(self.path), item=item, reason=reason)

    def move(self, db: sqlite3.Connection) -> None:
        if not self.rows:
            return
        db.executescript(QUARANTINE_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            for table, item, where, key, reason, row in self.rows:
                db.execute("INSERT INTO quarantine (time, source, item, reason, row) VALUES (?,?,?,?,?)",
                           (now, table, item, reason, json.dumps(row, default=str)))
                db.execute(f"DELETE FROM {table} WHERE {where}", key)
                if table == "jobs":  # its tasks go with it: the job's id may be taken again
                    for task_row in db.execute("SELECT * FROM tasks WHERE job_id=?", key).fetchall():
                        db.execute("INSERT INTO quarantine (time, source, item, reason, row) "
                                   "VALUES (?,?,?,?,?)", (now, "tasks", item, "its job is quarantined",
                                                          json.dumps(task_row)))
                    db.execute("DELETE FROM tasks WHERE job_id=?", key)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


# --- backups ---------------------------------------------------------------------------


def backup(db_path: Path, backups: Path, keep: int) -> Path:
    """An online backup of the store into ``backups`` (tmp+rename), keeping the newest
    ``keep``. Safe while the server writes: one read transaction on its own connection."""
    backups.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not db_path.exists() or db_path.stat().st_size == 0:
        raise StoreRefused(f"store {db_path} is missing or empty: nothing to back up")
    source = sqlite3.connect(db_path)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        tmp = backups / f".{BACKUP_PREFIX}{stamp}.tmp"
        tmp.unlink(missing_ok=True)
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
            generation = target.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        finally:
            target.close()
    except sqlite3.DatabaseError as e:
        raise damaged(db_path, e) from None
    finally:
        source.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    final = backups / f"{BACKUP_PREFIX}{stamp}-g{int(generation[0]) if generation else 0}{BACKUP_SUFFIX}"
    os.replace(tmp, final)
    _sync_dir(backups)
    for old in list_backups(backups)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def list_backups(backups: Path) -> list[Path]:
    """Oldest first (the names sort by time)."""
    if not backups.is_dir():
        return []
    return sorted(p for p in backups.iterdir()
                  if p.name.startswith(BACKUP_PREFIX) and p.name.endswith(BACKUP_SUFFIX))


def restore(db_path: Path, source: Path) -> Path:
    """Put a backup in place of the store (the server stopped). The current files are
    kept beside it (``farm.sqlite.replaced-TIME``), never deleted. Returns that name."""
    lock = lock_store(db_path)
    try:
        try:
            check = sqlite3.connect(source)
            try:
                problems = [row[0] for row in check.execute("PRAGMA quick_check(5)")]
                meta = dict(check.execute("SELECT key, value FROM meta"))
            finally:
                check.close()
        except sqlite3.DatabaseError as e:
            raise StoreRefused(f"backup {source} is damaged or not a farmnet store ({e})") from None
        if problems != ["ok"]:
            raise StoreRefused(f"backup {source} is damaged (integrity check: {'; '.join(problems)})")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = db_path.with_name(f"{db_path.name}.replaced-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            current = Path(f"{db_path}{suffix}")
            if current.exists():
                os.replace(current, Path(f"{aside}{suffix}"))
        tmp = db_path.with_name(db_path.name + ".restoring")
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, db_path)
        if meta.get("store_id"):
            write_marker(db_path, meta["store_id"], int(meta.get("generation", 0)), sync=True)
        else:  # a backup older than markers: the server adopts it at start
            marker_path(db_path).unlink(missing_ok=True)
        return aside
    finally:
        lock.release()


class Backups(service.Service):
    """Rotating online backups of the running store, every ``interval`` seconds, in a
    thread (the reactor never waits for one)."""

    def __init__(self, reactor: Any, db_path: Path, interval: float, keep: int) -> None:
        self.reactor = reactor
        self.db_path = db_path
        self.directory = db_path.parent / "backups"
        self.keep = keep
        self.interval = interval
        self.last: Path | None = None
        self._loop = task.LoopingCall(self.run)
        self._loop.clock = reactor
        self._running: Any = None

    def startService(self) -> None:
        super().startService()
        if self.interval > 0:
            self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._running

    def run(self) -> Any:
        """One backup (skipped while the previous one still runs)."""
        if self._running is not None:
            return None
        started = time.monotonic()
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), backup,
                                      self.db_path, self.directory, self.keep)

        def done(path: Path) -> None:
            self.last = path
            log.info("store backup {path} written in {seconds:.2f} s", path=str(path),
                     seconds=time.monotonic() - started)

        def failed(failure: Any) -> None:
            log.error("store backup into {directory} failed: {error}", directory=str(self.directory),
                      error=failure.getErrorMessage())

        def finished(result: Any) -> None:
            self._running = None

        d.addCallbacks(done, failed)
        d.addBoth(finished)
        self._running = d
        return d
