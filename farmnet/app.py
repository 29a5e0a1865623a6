"""The server, composed of services in a fixed order: farm → AMP listener → web site.

Start order is the list order; twistd stops them in reverse, so the listener closes
before the farm's state is flushed.
"""

from __future__ import annotations

import getpass
import os
import secrets
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from farmnet.config import ServerConfig
from farmnet.model.farm import Farm
from farmnet.protocol.endpoints import loopback_only
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.listening import Listener
from farmnet.server.manhole import make_manhole_services, manhole_namespace
from farmnet.server.monitors import EventLog
from farmnet.server.netstats import StatisticsLogger
from farmnet.server.outputs import OutputStore
from farmnet.server.registry import raise_fd_limit
from farmnet.server.store import Store
from farmnet.server.storecheck import Backups, StoreRefused
from farmnet.server.storelock import StoreLock
from farmnet.stats.service import StatsService
from farmnet.sysjob.job import SystemJob
from farmnet.web.auth import TokenChecker
from farmnet.web.site import make_site

log = Logger()


def _private_farm(config: ServerConfig) -> bool:
    """No passwords, and every listener reachable from this machine only."""
    listens = [config.listen] + ([config.web.listen] if config.web.listen else [])
    return not config.auth.users_file and all(loopback_only(listen) for listen in listens)


def _server_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return None


class ServerService(service.MultiService):
    """The farm server; its children are its listeners."""

    def __init__(self, reactor: Any, config: ServerConfig) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        #: A farm only this machine reaches, without passwords: whoever runs the server is
        #: an admin, and logs in to the web site with the link printed at start.
        self.owner = _server_user() if _private_farm(config) else None
        scheduling = config.scheduling
        if self.owner is not None and self.owner not in scheduling.admins:
            scheduling = attrs.evolve(scheduling, admins=(*scheduling.admins, self.owner))
        store = Path(config.store.path)
        #: Taken first: a second server on this store stops here, before it reads or starts anything.
        self.lock = StoreLock(store)
        self.lock.acquire()
        #: Non-zero once the server failed at something it cannot run without (a listener):
        #: the process then exits with it (``farmnet.tap``), for systemd's Restart=on-failure.
        self.exit_status = 0
        self.farm = Farm(reactor, scheduling)
        #: The monitors' view of the farm's events (AMP PollEvents, the web's /events).
        self.events = EventLog(self.farm)
        self.store = Store(reactor, store / "farm.sqlite", self.farm, events=self.events)
        self.store.setServiceParent(self)  # first: the farm is loaded before anyone connects
        self.backups = Backups(reactor, store / "farm.sqlite", config.store.backup_interval,
                               config.store.backups)
        self.backups.setServiceParent(self)
        self.stats = StatsService(reactor, config.stats, store, self.farm)
        self.stats.setServiceParent(self)  # after the store, before the listeners
        self.outputs = OutputStore(store / "output", config.store.output_max_bytes)
        self.sysjob = SystemJob(
            self.farm, config.sysjob,
            read_output=lambda key, run: self.outputs.read(key, run, 0, 1 << 20),
            load_state=self.store.get_meta, save_state=self.store.set_meta)
        self.sysjob.setServiceParent(self)  # after the store has loaded the farm
        self.farm.on_wake = self.sysjob.wake
        self.server = FarmServer(reactor, self.farm, self.outputs, connections=config.connections,
                                 auth=config.auth, limits=config.limits, durable=self.store.sync,
                                 events=self.events)
        self.listener = Listener(reactor, config.listen, ServerFactory(self.server),
                                 store / "amp.address")
        self.listener.setServiceParent(self)
        self.statistics = StatisticsLogger(reactor, self, config.log_stats_interval)
        self.statistics.setServiceParent(self)
        self.login_link = None if self.owner is None else TokenChecker(secrets.token_urlsafe(24), self.owner)
        if config.web.listen:
            self.web_site = make_site(reactor, self.farm, config.web, self.outputs, self.stats,
                                      users_file=config.auth.users_file, durable=self.store.sync,
                                      amp=self.server, events=self.events, login_link=self.login_link,
                                      output_readers=self.server.output_readers,
                                      throttle=self.server.throttle)
            self.web = Listener(reactor, config.web.listen, self.web_site, store / "web.address")
            self.web.ready.addCallback(self._print_login_link)
            self.web.setServiceParent(self)
        for manhole in make_manhole_services(reactor, config.manhole, manhole_namespace(self),
                                             admins=scheduling.admins, store=store):
            manhole.setServiceParent(self)
        for child in self:
            if isinstance(child, Listener):
                child.ready.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        if port is None:
            self.exit_status = 1  # the Listener logged why and stops the reactor
        return port

    def _print_login_link(self, port: Any) -> None:
        """The web login of a private farm: logged, and kept in ``web.login`` (owner-only)."""
        if port is None or self.login_link is None:
            return
        host = port.getHost()
        url = f"http://{host.host}:{host.port}/login?token={self.login_link.token}"
        path = Path(self.config.store.path) / "web.login"
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(url + "\n")
        path.with_suffix(".tmp").replace(path)
        log.info("web: {user} logs in as an admin with {url} (also in {path})",
                 user=self.login_link.user, url=url, path=str(path))

    def startService(self) -> None:
        self.lock.record()  # twistd may have forked since __init__
        (Path(self.config.store.path) / "web.login").unlink(missing_ok=True)  # the last start's
        if self.owner is not None:
            log.info("no users file and a localhost-only farm: {user}, who runs the server, is an admin",
                     user=self.owner)
        soft, _ = raise_fd_limit()  # a connection per render: allow as many as the system does
        log.info("farmnet server: AMP on {listen}, web on {web}, state in {store}, up to {files} open files",
                 listen=self.config.listen, web=self.config.web.listen or "(off)",
                 store=self.config.store.path, files=soft)
        try:
            super().startService()
        except StoreRefused as e:  # one line on stderr (and so in the log), no traceback
            raise SystemExit(f"farmnet: {e}") from None
        # Once the reactor runs (signal handlers installed): what operators and tests wait for.
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if not self.exit_status:
            log.info("farmnet server running")

    def stopService(self) -> Any:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Stop accepting; ask every peer to close (renders: to reconnect later) and wait
        close_wait at most; then stop the children, the store last (it flushes)."""
        await defer.maybeDeferred(self.listener.stopService)
        try:
            await self.server.shutdown()
        except Exception:
            log.failure("closing the connections failed")
        if self.config.web.listen:
            await self.web_site.close()  # end event streams and open connections
        d = super().stopService()
        self.farm.stop()
        self.outputs.close_all()
        try:
            await d
        finally:
            self.lock.release()  # last: the store and the embedded PostgreSQL are stopped
