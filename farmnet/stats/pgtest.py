"""Throwaway PostgreSQL clusters for tests and benchmarks.

A :class:`ThrowawayCluster` lives in a fresh temporary directory, listens on a Unix
socket there only (no port to collide with), runs without fsync, and is stopped and
removed by :meth:`ThrowawayCluster.destroy`. As root the directory belongs to, and the
server runs as, the ``postgres`` user. Starting one costs about 1.5 s (initdb), so tests
share one and give each test its own database (:meth:`ThrowawayCluster.create_database`,
about 0.1 s).

Its :meth:`~ThrowawayCluster.start` and :meth:`~ThrowawayCluster.destroy` block (for
set-ups that run before the reactor); :meth:`~ThrowawayCluster.stop_async` and
:meth:`~ThrowawayCluster.start_async` stop and restart it without blocking the reactor,
to test a database that goes away.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any

from farmnet.stats import db
from farmnet.stats.embedded import Cluster, ClusterError, find_bin_dir

__all__ = ["ClusterError", "ThrowawayCluster", "available"]

#: Settings for speed: nothing is kept after the test anyway.
THROWAWAY_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "64MB",
}


def available() -> str | None:
    """None if a throwaway cluster can run here, else why not (to skip tests with)."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run PostgreSQL as"
    return None


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, for one test run."""

    def __init__(self, prefix: str = "farmnet-pg-", durable: bool = False) -> None:
        """``durable``: the embedded server's settings (fsync on) instead of the fast ones."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise ClusterError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        # The server (as postgres when we are root) must reach its directory inside.
        os.chmod(self.base, 0o755)
        settings = {"synchronous_commit": "off"} if durable else dict(THROWAWAY_SETTINGS)
        self.cluster = Cluster(self.base / "data", bin_dir, settings=settings, nosync=not durable)
        self._names = itertools.count(1)

    def dsn(self, dbname: str = "postgres") -> str:
        return self.cluster.dsn(dbname)

    def start(self) -> ThrowawayCluster:
        """initdb (first time) and start; blocks."""
        self.cluster.start_blocking()
        return self

    def destroy(self) -> None:
        """Stop the server and remove the directory; blocks. Safe to call twice."""
        try:
            self.cluster.stop_blocking()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    async def stop_async(self, reactor: Any) -> None:
        await self.cluster.stop(reactor)

    async def start_async(self, reactor: Any) -> None:
        await self.cluster.start(reactor)

    async def create_database(self, reactor: Any, name: str | None = None) -> str:
        """A new empty database; returns its DSN."""
        name = name or f"test_{os.getpid()}_{next(self._names)}"
        await db.ensure_database(reactor, self.dsn("postgres"), name)
        return self.dsn(name)

    async def drop_database(self, reactor: Any, dsn: str) -> None:
        name = db.dsn_field(dsn, "dbname")
        admin = await db.connect_once(reactor, self.dsn("postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {db.quote_ident(name)} WITH (FORCE)")
        finally:
            admin.close()
