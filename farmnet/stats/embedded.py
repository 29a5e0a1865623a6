"""The server's own PostgreSQL: a cluster in ``<store>/postgresql`` on a Unix socket only.

With ``server.stats.dsn`` empty the server finds the PostgreSQL server binaries
(``server.stats.pg_bin``, else ``initdb`` on ``PATH``, else the newest
``/usr/lib/postgresql/*/bin``, where Debian keeps them), runs ``initdb`` on the first
start, starts the cluster with ``pg_ctl`` listening on a Unix socket in its own data
directory only (``listen_addresses = ''``), creates the ``farmnet`` database, and stops
the cluster when the server stops. The socket lives in the data directory, which only
its owner may enter, so ``trust`` authentication admits nobody else (but root).

A server killed without stopping (kill -9, a crash) leaves its cluster running, or a
``postmaster.pid`` naming a process that is gone or is now another program. At start
the server reads that file and acts knowingly, with a log line: a live postmaster of
this data directory listening where the settings say is adopted; one listening elsewhere
is stopped and started again; a file naming no such process is removed, then the cluster
starts.

initdb and postgres refuse to run as root: as root they run as the ``postgres`` user
(``runuser -u postgres --``, else ``su postgres -s /bin/sh -c``), which owns the data
directory. Every program runs through ``reactor.spawnProcess``: the reactor is never
blocked. :class:`Cluster` also has blocking twins of its start and stop
(``*_blocking``) for test set-ups and benchmarks that run before a reactor does.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from farmnet.stats import db

__all__ = [
    "Cluster",
    "ClusterError",
    "EmbeddedPostgres",
    "find_bin_dir",
]

log = Logger()

#: Where Debian and Ubuntu install the server binaries (one directory per major version).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The account initdb and postgres run as when farmnet runs as root.
SYSTEM_USER = "postgres"
#: The database the farm's statistics live in.
DATABASE = "farmnet"
#: Unix sockets have a path limit (108 bytes with the NUL on Linux).
SOCKET_PATH_MAX = 107
DEFAULT_PORT = 5432

#: Settings of the embedded cluster, on top of the data directory and the socket.
EMBEDDED_SETTINGS: Mapping[str, str] = {
    # Server logs rotate over a week instead of growing for ever in one file.
    "logging_collector": "on",
    "log_directory": "log",
    "log_filename": "postgresql-%a.log",
    "log_rotation_age": "1d",
    "log_rotation_size": "0",
    "log_truncate_on_rotation": "on",
    # A statistics store: losing the last few hundred ms of commits at a power cut is
    # acceptable; the farm's own spool covers a database that is down, not one that lies.
    "synchronous_commit": "off",
}


class ClusterError(Exception):
    """A PostgreSQL program failed; the message holds what it said."""


@attrs.frozen
class Postmaster:
    """What a cluster's ``postmaster.pid`` says: the postmaster's pid, data directory,
    port, first socket directory and status (``ready``, ``starting``, ``stopping``...)."""

    pid: int
    datadir: str
    port: int
    socket_dir: str
    status: str

    @classmethod
    def read(cls, path: Path) -> Postmaster | None:
        """The file's contents; None when there is no file. A file that does not parse
        names no postmaster (pid 0)."""
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return None
        fields = [line.strip() for line in lines] + [""] * 8
        try:
            pid, port = int(fields[0]), int(fields[3] or 0)
        except ValueError:
            pid, port = 0, 0
        return cls(pid, fields[1], port, fields[4], fields[7])


def _is_postmaster_of(pid: int, datadir: Path) -> bool:
    """Is ``pid`` a running postgres whose data directory is ``datadir``? (A pid from a
    stale file may belong to another program by now.)"""
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        name = process.name()
        cmdline = process.cmdline()
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if not (name.startswith("postgres") or name.startswith("postmaster")):
        return False
    wanted = os.path.realpath(datadir)
    arguments = [os.path.realpath(arg) for arg in cmdline[1:] if arg.startswith("/")]
    if wanted in arguments:
        return True
    try:
        return os.path.realpath(process.cwd()) == wanted  # postgres works in its data directory
    except (psutil.Error, OSError):
        return False


def find_bin_dir(hint: str = "", path: str | None = None, pattern: str = DEBIAN_BIN_GLOB) -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    ``hint`` (``server.stats.pg_bin``) wins when given; then ``initdb`` on ``path``
    (default ``$PATH``), then the newest of ``pattern``.
    """
    names = ("initdb", "pg_ctl", "postgres")

    def complete(directory: Path) -> bool:
        return all(os.access(directory / name, os.X_OK) for name in names)

    if hint:
        directory = Path(hint)
        return directory if complete(directory) else None
    found = shutil.which("initdb", path=path)
    if found:
        for directory in (Path(found).parent, Path(found).resolve().parent):
            if complete(directory):
                return directory
    candidates = []
    for directory in Path("/").glob(pattern.lstrip("/")):
        version = re.findall(r"\d+", directory.parent.name)
        if complete(directory):
            candidates.append(([int(v) for v in version], directory))
    return max(candidates)[1] if candidates else None


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _argv_as(user: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``user`` (None: as this process)."""
    if user is None:
        return list(argv)
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user, "--", *argv]
    su = shutil.which("su") or "/bin/su"
    return [su, user, "-s", "/bin/sh", "-c", shlex.join(argv)]


def _default_user() -> str | None:
    """Root runs the cluster as ``postgres``; anyone else as themselves."""
    return SYSTEM_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None


@attrs.define(eq=False)
class Cluster:
    """One PostgreSQL cluster: a data directory, its binaries and how it listens.

    ``settings`` go into ``farmnet.conf`` in the data directory (included by
    ``postgresql.conf``), rewritten at each start. The socket is always in the data
    directory; ``tcp`` additionally listens on that address (tests use 127.0.0.1).
    """

    datadir: Path = attrs.field(converter=Path)
    bin_dir: Path = attrs.field(converter=Path)
    port: int = DEFAULT_PORT
    tcp: str = ""
    settings: Mapping[str, str] = attrs.field(factory=dict)
    #: initdb -N: no fsync of the new files (throwaway clusters).
    nosync: bool = False
    #: The account the programs run as; None: this process's (the default as non-root).
    run_as: str | None = attrs.field(factory=_default_user)

    @property
    def socket_dir(self) -> Path:
        return self.datadir

    @property
    def logfile(self) -> Path:
        """pg_ctl's log: what the server says before its logging collector starts."""
        return self.datadir / "postgresql.log"

    def dsn(self, dbname: str = DATABASE) -> str:
        return db.make_dsn(host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname)

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def check(self) -> None:
        """Problems found before running anything, as one ClusterError."""
        socket = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket).encode()) > SOCKET_PATH_MAX:
            raise ClusterError(
                f"the socket path {socket} is longer than {SOCKET_PATH_MAX} bytes (a Unix socket limit): "
                "choose a shorter server.stats.embedded_dir")
        if self.run_as is not None:
            try:
                pwd.getpwnam(self.run_as)
            except KeyError:
                raise ClusterError(
                    f"PostgreSQL refuses to run as root and there is no {self.run_as!r} user to run it as "
                    "(install PostgreSQL's package, or run farmnet as a non-root user)") from None

    # --- commands ----------------------------------------------------------------------

    def _tool(self, name: str, *args: str) -> list[str]:
        return _argv_as(self.run_as, [str(self.bin_dir / name), *args])

    def initdb_argv(self) -> list[str]:
        args = ["-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]
        if self.nosync:
            args.append("-N")
        return self._tool("initdb", *args)

    def start_argv(self) -> list[str]:
        # -w: return once it accepts connections; -l: the server's output never goes to our
        # pipes (which would then stay open as long as the server runs).
        return self._tool("pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                          "-t", "120")

    def stop_argv(self) -> list[str]:
        return self._tool("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60")

    def status_argv(self) -> list[str]:
        return self._tool("pg_ctl", "status", "-D", str(self.datadir))

    # --- files -------------------------------------------------------------------------

    def make_reachable(self) -> None:
        """Let the account that runs the cluster reach the data directory.

        The server's store is mode 0700 (root's), so as root the postgres user could not
        get to ``<store>/postgresql``. A directory on the way that is ``root:root`` and
        not searchable by that account gets its group set to the account's and search
        (only: ``g+x``, no listing) for the group; anything else is an error saying what to
        do, never a silent change.
        """
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        groups = set(os.getgrouplist(self.run_as, entry.pw_gid))
        for directory in reversed(self.datadir.absolute().parents):
            st = directory.stat()
            if st.st_uid == entry.pw_uid:
                allowed = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                allowed = bool(st.st_mode & stat.S_IXGRP)
            else:
                allowed = bool(st.st_mode & stat.S_IXOTH)
            if allowed:
                continue
            if st.st_uid == 0 and st.st_gid == 0 and os.geteuid() == 0:
                os.chown(directory, -1, entry.pw_gid)
                os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXGRP)
                log.info("gave the {user} group search access (g+x, no listing) to {directory} so the "
                         "embedded PostgreSQL reaches its data directory", user=self.run_as,
                         directory=str(directory))
                continue
            raise ClusterError(
                f"the {self.run_as} user cannot reach {directory} (on the way to {self.datadir}): give it "
                f"search permission (e.g. chmod o+x {directory}), or set server.stats.embedded_dir to a "
                "directory it can reach")

    def prepare_directory(self) -> None:
        """Create the (empty) data directory, owned by the account that runs the cluster."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.make_reachable()
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.datadir, 0o700)

    def write_settings(self) -> None:
        """farmnet.conf with the listening and the extra settings; included by postgresql.conf."""
        settings = {
            "listen_addresses": self.tcp,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            **self.settings,
        }
        text = "# Written by farmnet at each start: edit the server.stats settings instead.\n"
        text += "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
        conf = self.datadir / "farmnet.conf"
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(text)
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        tmp.replace(conf)
        main = self.datadir / "postgresql.conf"
        include = "include_if_exists = 'farmnet.conf'"
        if include not in main.read_text():
            with main.open("a") as f:
                f.write(f"\n# farmnet's settings (listening, logging)\n{include}\n")

    # --- running, without blocking the reactor -----------------------------------------

    async def _run(self, reactor: Any, argv: list[str]) -> tuple[int, str]:
        return await run_program(reactor, argv)

    async def is_running(self, reactor: Any) -> bool:
        if not self.initialized:
            return False
        code, _ = await self._run(reactor, self.status_argv())
        return code == 0

    async def initdb(self, reactor: Any) -> None:
        self.check()
        self.prepare_directory()
        log.info("creating a PostgreSQL cluster in {datadir}", datadir=str(self.datadir))
        code, output = await self._run(reactor, self.initdb_argv())
        if code != 0:
            raise ClusterError(f"initdb failed (exit {code}): {_tail(output)}")

    @property
    def pid_file(self) -> Path:
        return self.datadir / "postmaster.pid"

    async def start(self, reactor: Any) -> str:
        """initdb if needed, then start. A cluster left running (its server was killed) is
        adopted when it listens where it should, else restarted; a stale pid file is
        removed. Returns what was done: "started", "adopted" or "restarted"."""
        self.check()
        if not self.initialized:
            await self.initdb(reactor)
        else:
            self.make_reachable()
        done = "started"
        found = Postmaster.read(self.pid_file)
        if found is not None:
            if not _is_postmaster_of(found.pid, self.datadir):
                log.warn("removing the stale {file}: pid {pid} is not a PostgreSQL of {datadir} (the server "
                         "that ran it is gone); starting it", file=str(self.pid_file), pid=found.pid,
                         datadir=str(self.datadir))
                self.pid_file.unlink(missing_ok=True)
            elif (found.port, found.socket_dir, found.status) == (self.port, str(self.socket_dir), "ready"):
                log.warn("adopting PostgreSQL (pid {pid}) left running in {datadir} by a server that did not "
                         "stop it", pid=found.pid, datadir=str(self.datadir))
                return "adopted"
            else:
                log.warn("restarting PostgreSQL (pid {pid}) left running in {datadir} by a server that did "
                         "not stop it: it is {status!r} on port {port}, socket {socket}",
                         pid=found.pid, datadir=str(self.datadir), status=found.status or "?",
                         port=found.port, socket=found.socket_dir)
                code, output = await self._run(reactor, self.stop_argv())
                if code != 0:
                    raise ClusterError(f"pg_ctl stop of the PostgreSQL left running failed (exit {code}): "
                                       f"{_tail(output)}")
                done = "restarted"
        self.write_settings()
        code, output = await self._run(reactor, self.start_argv())
        if code != 0:
            raise ClusterError(f"pg_ctl start failed (exit {code}): {_tail(output)}; "
                               f"see {self.logfile} and {self.datadir / 'log'}")
        return done

    async def stop(self, reactor: Any) -> None:
        if not await self.is_running(reactor):
            return
        code, output = await self._run(reactor, self.stop_argv())
        if code != 0:
            raise ClusterError(f"pg_ctl stop failed (exit {code}): {_tail(output)}")

    # --- blocking twins, for set-ups that run before the reactor -----------------------

    def _run_blocking(self, argv: list[str]) -> tuple[int, str]:
        done = subprocess.run(argv, capture_output=True, cwd="/", check=False)
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace").strip()

    def start_blocking(self) -> None:
        self.check()
        if not self.initialized:
            self.prepare_directory()
            code, output = self._run_blocking(self.initdb_argv())
            if code != 0:
                raise ClusterError(f"initdb failed (exit {code}): {_tail(output)}")
        self.write_settings()
        code, output = self._run_blocking(self.start_argv())
        if code != 0:
            raise ClusterError(f"pg_ctl start failed (exit {code}): {_tail(output)}")

    def stop_blocking(self) -> None:
        if self.initialized and self._run_blocking(self.status_argv())[0] == 0:
            code, output = self._run_blocking(self.stop_argv())
            if code != 0:
                raise ClusterError(f"pg_ctl stop failed (exit {code}): {_tail(output)}")


class _Collect(ProcessProtocol):
    """Gathers a program's stdout and stderr together, and how it ended."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[tuple[int, str]] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, error.ProcessTerminated) and value.signal is not None:
            code = -value.signal
        else:
            code = getattr(value, "exitCode", 0) or 0
        self.ended.callback((code, bytes(self.output).decode(errors="replace").strip()))


async def run_program(reactor: Any, argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv`` without blocking the reactor: (exit code or -signal, stdout+stderr)."""
    collect = _Collect()
    try:
        reactor.spawnProcess(collect, argv[0], list(argv), env=dict(os.environ), path="/")
    except OSError as e:
        raise ClusterError(f"cannot run {argv[0]}: {e}") from e
    return await collect.ended


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.splitlines()[-lines:]) or "(no output)"


@attrs.define(eq=False)
class EmbeddedPostgres:
    """The server's cluster: started, given its ``farmnet`` database, and stopped."""

    cluster: Cluster
    database: str = DATABASE

    @classmethod
    def for_store(cls, datadir: str | os.PathLike[str], bin_dir: Path) -> EmbeddedPostgres:
        return cls(Cluster(Path(datadir), bin_dir, settings=dict(EMBEDDED_SETTINGS)))

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.database)

    async def start(self, reactor: Any) -> None:
        done = await self.cluster.start(reactor)
        await db.ensure_database(reactor, self.cluster.dsn("postgres"), self.database)
        log.info("embedded PostgreSQL running in {datadir} ({done})", datadir=str(self.cluster.datadir),
                 done=done)

    async def stop(self, reactor: Any) -> None:
        await self.cluster.stop(reactor)
        log.info("embedded PostgreSQL in {datadir} stopped", datadir=str(self.cluster.datadir))
