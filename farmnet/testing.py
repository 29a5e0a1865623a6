"""Real farms for tests and benchmarks: a server and renders as separate processes.

Each process is ``twistd -n farmnet ...`` started from this interpreter's environment,
so the plugin is found the way an installed farm finds it. Logs go to files in the
farm's directory, to read when something fails.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger()


def twistd_argv() -> list[str]:
    """twistd of this interpreter (the venv's script, else the module)."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class LoggedProcess(ProcessProtocol):
    """A child process whose output goes to a log file; ``ended`` fires when it exits."""

    def __init__(self, logfile: Path) -> None:
        self.logfile = open(logfile, "ab")  # noqa: SIM115 - closed in processEnded
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.logfile.write(data)
        self.logfile.flush()

    def processEnded(self, reason: Any) -> None:
        self.logfile.close()
        self.ended.callback(reason.value)


class ChildOutput(ProcessProtocol):
    """A child whose stdout and stderr are kept while it runs; ``ended`` fires with its exit code."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


@attrs.define(eq=False)
class FarmProcess:
    name: str
    argv: list[str]
    logfile: Path
    transport: Any = None
    watch: LoggedProcess | None = None

    @property
    def pid(self) -> int:
        return self.transport.pid

    @property
    def running(self) -> bool:
        return self.watch is not None and not self.watch.ended.called

    def signal(self, sig: int) -> None:
        if self.running:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; returns when the process is gone."""
        if not self.running:
            return
        assert self.watch is not None
        self.signal(signal.SIGTERM)
        ended = self.watch.ended
        from twisted.internet import reactor

        call = reactor.callLater(timeout, self.signal, signal.SIGKILL)
        try:
            await ended
        finally:
            if call.active():
                call.cancel()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class ProcessFarm:
    """A farm of real processes under ``base``: start, reach and stop them."""

    def __init__(self, reactor: Any, base: str | os.PathLike[str],
                 environ: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.environ = dict(os.environ if environ is None else environ)
        for variable in ("FARMNET_CONFIG", "FARMNET_SERVER", "FARMNET_USER"):
            self.environ.pop(variable, None)
        self.processes: list[FarmProcess] = []
        self.server: FarmProcess | None = None
        #: Every server started (several on one PostgreSQL store: one active, the others standby).
        self.servers: list[FarmProcess] = []
        self.endpoint = ""

    def spawn(self, name: str, args: list[str], python_args: Sequence[str] = ()) -> FarmProcess:
        """``twistd -n ARGS`` as ``name``; ``python_args`` go to the interpreter before the script
        (``-c CODE`` that runs twistd its own way: benchmarks' profiling)."""
        python, *script = twistd_argv()
        proc = FarmProcess(name, [python, *python_args, *script, "-n", "--pidfile=", *args],
                           self.base / f"{name}.log")
        proc.watch = LoggedProcess(proc.logfile)
        proc.transport = self.reactor.spawnProcess(proc.watch, proc.argv[0], proc.argv,
                                                   env=self.environ, path=str(self.base))
        self.processes.append(proc)
        return proc

    async def start_server(self, *args: str, listen: str = "tcp:0:interface=127.0.0.1",
                           timeout: float = 30.0, name: str = "server", wait: bool = True) -> FarmProcess:
        """A server with its state directory in ``<base>/<name>-store``; ``wait``: until it
        listens (a standby on a PostgreSQL store listens once it is active: :meth:`wait_active`)."""
        if listen == "tcp:0:interface=127.0.0.1":
            # Below the kernel's ephemeral range: a test that restarts the server on the same
            # port must not find it taken by some client's outgoing connection meanwhile.
            listen = f"tcp:{free_port()}:interface=127.0.0.1"
        store = self.base / f"{name}-store"
        address = store / "amp.address"
        if address.exists():
            address.unlink()
        if "--config" not in args:  # no embedded PostgreSQL per test farm unless asked for
            config = self.base / "farmnet.yaml"
            config.write_text("server:\n  stats:\n    enabled: false\n")
            args = ("--config", str(config), *args)
        server = self.spawn(name, ["farmnet", "server", "--listen", listen, "--web", "",
                                   "--afanasy", "", "--store", str(store), *args])
        self.server = server
        self.servers.append(server)
        if wait:
            self.endpoint = await self.wait_active(server, timeout)
        return server

    async def wait_active(self, server: FarmProcess, timeout: float = 30.0) -> str:
        """The server's AMP endpoint, once it listens."""
        return await self._wait_for(self.base / f"{server.name}-store" / "amp.address", server, timeout)

    async def start_render(self, name: str, *args: str) -> FarmProcess:
        assert self.endpoint, "start the server first"
        return self.spawn(f"render-{name}", ["farmnet", "render", "--server", self.endpoint,
                                             "--name", name, *args])

    async def _wait_for(self, path: Path, proc: FarmProcess, timeout: float) -> str:
        waited = 0.0
        while waited < timeout:
            if path.exists():
                return path.read_text().strip()
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
            await deferLater(self.reactor, 0.05)
            waited += 0.05
        raise TimeoutError(f"{proc.name} did not start in {timeout} s:\n{proc.tail()}")

    async def stop(self) -> None:
        """Renders first (they close their connections first), then the servers."""
        servers = self.servers or ([self.server] if self.server is not None else [])
        renders = [p for p in self.processes if p not in servers]
        await defer.gatherResults([defer.ensureDeferred(p.stop()) for p in renders])
        await defer.gatherResults([defer.ensureDeferred(p.stop()) for p in servers])

    def kill(self, proc: FarmProcess) -> None:
        proc.signal(signal.SIGKILL)


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A free TCP port on 127.0.0.1 outside the ephemeral range (32768 and up on Linux)."""
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


async def wait_until(reactor: Any, check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns something true."""
    waited = 0.0
    while True:
        result = check()
        if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return result
        if waited >= timeout:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, interval)
        waited += interval


__all__ = ["FarmProcess", "ProcessFarm", "twistd_argv", "wait_until"]
