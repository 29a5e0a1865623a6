"""``farmnet db check`` and ``farmnet db reset``: Afanasy's ``afcmd db_check`` and
``db_reset_all``.

``check`` prints "Database connection is working" (and the server and schema versions)
or the error; ``reset`` drops every statistics table and creates them again (it asks
first, unless ``--yes``). The database is ``--dsn``, else ``server.stats.dsn`` of the
configuration, else the embedded PostgreSQL of the server's store (reachable only while
the server runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from twisted.internet import task

from farmnet.config import ConfigError, ServerConfig, default_config_path, load_config, moved_keys

# The database modules (psycopg2, txpostgres) are imported when a db command runs, not when
# the `farmnet` command line builds its parser.

__all__ = ["add_db_commands", "check_database", "db_check", "db_reset", "resolve_dsn", "run_db_command"]

WORKING = "Database connection is working"
EXIT_OK, EXIT_DECLINED, EXIT_REFUSED, EXIT_FAILED = 0, 1, 2, 3


async def check_database(reactor: Any, dsn: str, timeout: float = 10.0) -> tuple[bool, str]:
    """(True, "Database connection is working\\n<versions>") or (False, the error)."""
    from farmnet.stats import schema
    from farmnet.stats.db import connect_once, describe_error, safe_dsn

    try:
        database = await connect_once(reactor, dsn, timeout=timeout, name="statistics database")
    except Exception as e:
        return False, f"Database connection failed: {describe_error(e)} ({safe_dsn(dsn)})"
    try:
        rows = await database.query("SELECT current_setting('server_version') AS version")
        version = await schema.current_version(database)
    except Exception as e:
        return False, f"Database connection failed: {describe_error(e)} ({safe_dsn(dsn)})"
    finally:
        database.close()
    if version == 0:
        tables = "no statistics tables yet (the server creates them at start, or run `farmnet db reset`)"
    elif version > schema.LATEST:
        tables = f"schema version {version}, NEWER than this farmnet's {schema.LATEST}: upgrade farmnet"
    else:
        tables = f"schema version {version} (this farmnet: {schema.LATEST})"
    return True, f"{WORKING}\nPostgreSQL {rows[0]['version']} at {safe_dsn(dsn)}; {tables}"


async def db_check(reactor: Any, dsn: str) -> str:
    """What ``farmnet db check`` prints: "Database connection is working…" or the error."""
    return (await check_database(reactor, dsn))[1]


async def db_reset(reactor: Any, dsn: str) -> None:
    """Drop every statistics table and create them at the latest version."""
    from farmnet.stats import schema
    from farmnet.stats.db import connect_once

    database = await connect_once(reactor, dsn, name="statistics database")
    try:
        await schema.drop_all(database)
        await schema.upgrade(database)
    finally:
        database.close()


# --- the command line --------------------------------------------------------------------


def embedded_dir(config: ServerConfig) -> str:
    """The embedded PostgreSQL's data directory, as the server's StatsService picks it."""
    return config.stats.embedded_dir or os.path.join(config.store.path, "postgresql")


def embedded_dsn(config: ServerConfig) -> str:
    from farmnet.stats.db import make_dsn
    from farmnet.stats.embedded import DATABASE, DEFAULT_PORT

    return make_dsn(host=embedded_dir(config), port=DEFAULT_PORT, user="postgres", dbname=DATABASE)


def resolve_dsn(config: ServerConfig, dsn: str | None = None) -> tuple[str, bool]:
    """The database to talk to, and whether it is the embedded one."""
    if dsn:
        return dsn, False
    if config.stats.dsn:
        return config.stats.dsn, False
    return embedded_dsn(config), True


def add_db_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``db check`` and ``db reset`` to the ``farmnet`` command's subparsers; its
    ``main`` then hands ``args.command == "db"`` to :func:`run_db_command`."""
    description = "check or reset the statistics database (PostgreSQL)"
    parser = subparsers.add_parser("db", help=description, description=description)
    parser.add_argument("--config", metavar="FILE", help="config file (default: $FARMNET_CONFIG)")
    parser.add_argument("--dsn", metavar="DSN",
                        help="libpq connection string (default: server.stats.dsn, else the embedded "
                             "PostgreSQL in the server's store)")
    commands = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    commands.add_parser("check", help='print "Database connection is working" or the error',
                        description='Connect and print "Database connection is working" or the error.')
    reset = commands.add_parser("reset", help="drop the statistics tables and create them again",
                                description="Drop every statistics table (all statistics are lost) and "
                                            "create them again.")
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(run=run_db_command)
    return parser


def _react(main: Callable[[Any], Awaitable[int]]) -> int:
    code = EXIT_OK

    async def run(reactor: Any) -> None:
        nonlocal code
        code = await main(reactor)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code if isinstance(e.code, int) else EXIT_FAILED
    return code


def run_db_command(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None,
                   stderr: TextIO | None = None) -> int:
    """Run ``farmnet db check|reset``; returns the exit code (0 done, 1 declined,
    2 bad configuration, 3 the database failed)."""
    from farmnet.stats import schema
    from farmnet.stats.db import describe_error, safe_dsn

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    try:
        loaded = load_config(getattr(args, "config", None) or default_config_path(os.environ))
    except ConfigError as e:
        print(f"farmnet: {e}", file=stderr)
        return EXIT_REFUSED
    config = loaded.server
    warning = moved_keys(loaded, "server")
    if warning:
        print(f"farmnet: {warning}", file=stderr)
    dsn, embedded = resolve_dsn(config, getattr(args, "dsn", None))
    hint = ""
    if embedded:
        hint = f" (the embedded PostgreSQL in {embedded_dir(config)} runs only while the farmnet server runs)"

    if args.db_command == "check":
        async def check(reactor: Any) -> int:
            ok, message = await check_database(reactor, dsn)
            print(message + ("" if ok else hint), file=stdout if ok else stderr)
            return EXIT_OK if ok else EXIT_FAILED

        return _react(check)

    if not args.yes:
        print(f"Drop and create again every statistics table in {safe_dsn(dsn)}? "
              "All statistics will be lost. [y/N] ", end="", file=stdout, flush=True)
        answer = stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing done.", file=stdout)
            return EXIT_DECLINED

    async def reset(reactor: Any) -> int:
        try:
            await db_reset(reactor, dsn)
        except Exception as e:
            print(f"farmnet: database reset failed: {describe_error(e)}{hint}", file=stderr)
            return EXIT_FAILED
        print(f"Statistics tables created (schema version {schema.LATEST}) in {safe_dsn(dsn)}", file=stdout)
        return EXIT_OK

    return _react(reset)
