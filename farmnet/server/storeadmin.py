"""``farmnet store check | backup | restore``: the server's store, from the command line.

``check`` opens the store as the server would, read-only (it may run while the server
runs), and says what the server would refuse or quarantine; ``--accept`` makes the store
as it is the reference after lost transactions. ``backup`` writes an online backup into
``<store>/backups`` (also while the server runs). ``restore`` puts a backup (the newest,
or the one named) in place of the store; the server must be stopped, and the replaced
files are kept beside it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer

from farmnet.config import ConfigError, default_config_path, load_config
from farmnet.server.storecheck import (
    StoreRefused,
    backup,
    list_backups,
    lock_store,
    marker_path,
    restore,
    write_marker,
)

EXIT_OK, EXIT_PROBLEM, EXIT_REFUSED = 0, 1, 2


def add_store_commands(sub: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", metavar="DIR",
                       help="the server's state directory (default: server.store.path of the config)")
    where.add_argument("--config", metavar="FILE", help="config file (default: $FARMNET_CONFIG)")
    p = sub.add_parser("store", help="check, back up or restore the server's store (farm.sqlite)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    c = actions.add_parser("check", parents=[where], help="check the store as the server would, read-only")
    c.add_argument("--accept", action="store_true",
                   help="after lost transactions: accept the store as it is (the server is stopped)")
    actions.add_parser("backup", parents=[where], help="write an online backup into <store>/backups now")
    r = actions.add_parser("restore", parents=[where],
                           help="put a backup in place of the store (the server stopped)")
    r.add_argument("backup", nargs="?", help="the backup file (default: the newest in <store>/backups)")
    cp = actions.add_parser("copy", help="copy the farm's state between a store directory (SQLite) and "
                                        "PostgreSQL (postgresql://…), either way")
    cp.add_argument("source", help="a store directory, or postgresql://user@host/db")
    cp.add_argument("target", help="a new store directory, or an empty database as postgresql://user@host/db")


def _store_dir(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store)
    return Path(load_config(args.config or default_config_path(os.environ), os.environ).server.store.path)


def run_store_command(args: argparse.Namespace) -> int:
    if args.store_command == "copy":
        return copy(args.source, args.target)
    try:
        directory = _store_dir(args)
    except ConfigError as e:
        print(f"farmnet: {e}", file=sys.stderr)
        return EXIT_REFUSED
    db_path = directory / "farm.sqlite"
    try:
        if args.store_command == "check":
            return check(db_path, args.accept)
        if args.store_command == "backup":
            path = backup(db_path, directory / "backups", keep=_keep(args))
            print(f"backup written: {path}")
            return EXIT_OK
        source = Path(args.backup) if args.backup else _newest(directory)
        aside = restore(db_path, source)
        print(f"restored {db_path} from {source}; the replaced files are kept as {aside}*")
        return EXIT_OK
    except StoreRefused as e:
        print(f"farmnet: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except OSError as e:
        print(f"farmnet: store {directory}: {e}", file=sys.stderr)
        return EXIT_PROBLEM


def copy(source: str, target: str) -> int:
    """``farmnet store copy``: one line saying what was copied, or why not."""
    from twisted.internet import reactor

    from farmnet.server.storecopy import copy_store

    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            outcome["counts"] = await copy_store(reactor, source, target)
        except StoreRefused as e:
            outcome["error"] = str(e)
        except OSError as e:
            outcome["error"] = f"store copy: {e}"
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run(installSignalHandlers=False)
    if "error" in outcome:
        print(f"farmnet: {outcome['error']}", file=sys.stderr)
        return EXIT_PROBLEM
    counts = outcome["counts"]
    copied = ", ".join(f"{n} {name}" for name, n in counts.items() if name != "meta")
    print(f"copied {_shown(source)} to {_shown(target)}: {copied}")
    return EXIT_OK


def _shown(store: str) -> str:
    """A store as a log line may show it (a database's password hidden)."""
    from farmnet.server.storepg import is_database_uri
    from farmnet.stats.db import safe_dsn

    return safe_dsn(store) if is_database_uri(store) else store


def _keep(args: argparse.Namespace) -> int:
    try:
        return load_config(args.config or default_config_path(os.environ), os.environ).server.store.backups
    except ConfigError:
        return 24


def _newest(directory: Path) -> Path:
    backups = list_backups(directory / "backups")
    if not backups:
        raise StoreRefused(f"no backups in {directory / 'backups'}: name the file to restore")
    return backups[-1]


def check(db_path: Path, accept: bool) -> int:
    if not db_path.exists() and not marker_path(db_path).exists():
        raise StoreRefused(f"no store at {db_path.parent}")
    # Loading a farm is for this command only: the `farmnet` command line starts without it.
    from twisted.internet.task import Clock

    from farmnet.model.farm import Farm
    from farmnet.server.store import Store

    if accept:
        _accept(db_path)
    clock = Clock()
    store = Store(clock, db_path, Farm(clock), readonly=True)
    try:
        counts = store.load()
    finally:
        store.close()
    lost = store.guard.lost
    print(f"store {db_path}: generation {store.guard.generation}, {counts['jobs']} jobs, "
          f"{counts['tasks']} stored tasks, {len(store.quarantined)} rows the server would quarantine"
          + (f", {lost} committed transaction(s) LOST" if lost else ""))
    for line in store.quarantined:
        print(f"  would quarantine {line}")
    if lost:
        print(f"farmnet: the server refuses this store; `farmnet store restore --store {db_path.parent}` "
              f"or accept the loss with `farmnet store check --accept --store {db_path.parent}`",
              file=sys.stderr)
    return EXIT_PROBLEM if lost or store.quarantined else EXIT_OK


def _accept(db_path: Path) -> None:
    """The marker is set to the database's generation (the loss accepted)."""
    lock = lock_store(db_path)
    try:
        try:
            db = sqlite3.connect(db_path)
            try:
                meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('store_id', 'generation')"))
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise StoreRefused(f"store {db_path} is damaged ({e}): nothing to accept; restore a backup "
                               f"with `farmnet store restore --store {db_path.parent}`") from None
        if "store_id" not in meta:
            raise StoreRefused(f"store {db_path} has no store id: nothing to accept")
        write_marker(db_path, meta["store_id"], int(meta.get("generation", 0)), sync=True)
        print(f"accepted {db_path} as it is, at generation {meta.get('generation', 0)}")
    finally:
        lock.release()
