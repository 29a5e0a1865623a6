"""The composition root: the server's and the render's services, built from the config's sections.

The server is composed of services in a fixed order: store → stats → system job → AMP
listener → web site → Afanasy listener → manhole. Start order is the list order; twistd stops them in
reverse, so the listener closes before the farm's state is flushed. The render is its
connection loop with the client service, task limiter and plug-in classes made here.
``twistd farmnet server|render`` (farmnet/tap.py) parses options and calls :func:`make_service`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from farmnet.config import ConfigError, RenderConfig, ServerConfig
from farmnet.logging import with_log_format
from farmnet.memory import settle_after_load
from farmnet.model.events import JobDeleted
from farmnet.model.farm import Farm
from farmnet.protocol.endpoints import client_endpoint, loopback_only
from farmnet.render import services
from farmnet.render.limits import TaskLimiter
from farmnet.render.service import RenderService, ServerConnection
from farmnet.server.afanasy import AfanasyFactory, AfanasyServer
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.listening import ConnectionBudget, Listener
from farmnet.server.manhole import make_manhole_services, manhole_namespace
from farmnet.server.monitors import EventLog
from farmnet.server.netstats import StatisticsLogger
from farmnet.server.outputs import OutputStore
from farmnet.server.previews import Previews
from farmnet.server.registry import raise_fd_limit
from farmnet.server.store import FarmStore, Store
from farmnet.server.storecheck import Backups, StoreRefused
from farmnet.server.storelock import StoreInUse, StoreLock
from farmnet.server.storepg import PgStore
from farmnet.stats.db import DatabaseError, parse_dsn
from farmnet.stats.service import StatsService
from farmnet.sysjob.job import SystemJob
from farmnet.web.auth import TokenChecker
from farmnet.web.site import make_site

log = Logger()


def _private_farm(config: ServerConfig) -> bool:
    """No passwords, and every listener reachable from this machine only."""
    listens = [config.listen] + [listen for listen in (config.web.listen, config.afanasy.listen) if listen]
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
        self.store: FarmStore
        if config.store.database:
            try:
                parse_dsn(config.store.database)
            except DatabaseError as e:
                raise ConfigError([f"server.store.database: {config.store.database!r} is not a URI libpq "
                                   f"accepts: {' '.join(str(e).split())}"]) from None
            #: On PostgreSQL: the children start once this server holds the active's lock.
            self.store = PgStore(reactor, config.store.database, self.farm, events=self.events,
                                 cutoff_exit=config.store.cutoff_exit, on_lost=self._store_lost)
            self.store.setServiceParent(self)
        else:
            self.store = Store(reactor, store / "farm.sqlite", self.farm, events=self.events)
            self.store.setServiceParent(self)  # first: the farm is loaded before anyone connects
            self.backups = Backups(reactor, store / "farm.sqlite", config.store.backup_interval,
                                   config.store.backups)
            self.backups.setServiceParent(self)
        #: Serving (a server on PostgreSQL is a standby until it holds the lock).
        self.active = False
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
                                 events=self.events, batches=self.store)
        close_wait = config.connections.close_wait
        # Each listener has its own budget of connections: the web cannot use up the AMP's.
        amp_budget = ConnectionBudget(close_wait=close_wait,
                                      max_connections=config.connections.max_connections)
        self.listener = Listener(reactor, config.listen, ServerFactory(self.server), store / "amp.address",
                                 name="amp", budget=amp_budget)
        self.listener.setServiceParent(self)
        self.statistics = StatisticsLogger(reactor, self, config.log_stats_interval)
        self.statistics.setServiceParent(self)
        self.login_link = None if self.owner is None else TokenChecker(secrets.token_urlsafe(24), self.owner)
        if config.web.listen:
            self.previews = Previews(reactor, store / "previews")
            self.farm.bus.subscribe(JobDeleted, lambda e: self.previews.delete_job(e.job.id))
            self.web_site = make_site(reactor, self.farm, config.web, self.outputs, self.stats,
                                      users_file=config.auth.users_file, durable=self.store.sync,
                                      amp=self.server, events=self.events, login_link=self.login_link,
                                      output_readers=self.server.output_readers,
                                      throttle=self.server.throttle, sample_resources=True,
                                      previews=self.previews)
            self.web = Listener(reactor, config.web.listen, self.web_site, store / "web.address", name="web",
                                budget=ConnectionBudget(
                                    close_wait=close_wait, max_connections=config.web.max_connections,
                                    max_per_address=config.web.max_connections_per_address))
            self.web.ready.addCallback(self._print_login_link)
            self.web.setServiceParent(self)
        #: CGRU's clients (af.py, afcmd) on Afanasy's protocol; None when off.
        self.afanasy: AfanasyServer | None = None
        if config.afanasy.listen:
            self.afanasy = AfanasyServer(reactor, self.farm, config.afanasy, connections=config.connections,
                                         limits=config.limits, users_file=config.auth.users_file,
                                         public=config.web.public, durable=self.store.sync,
                                         outputs=self.outputs, output_readers=self.server.output_readers,
                                         monitors=lambda: [c for c in self.server.registry
                                                           if c.kind == "monitor"])
            self.afanasy_listener = Listener(reactor, config.afanasy.listen, AfanasyFactory(self.afanasy),
                                             store / "afanasy.address", name="afanasy",
                                             budget=ConnectionBudget(close_wait=close_wait))
            self.afanasy_listener.setServiceParent(self)
        self.manholes = make_manhole_services(reactor, config.manhole, manhole_namespace(self),
                                              admins=scheduling.admins, store=store,
                                              close_wait=close_wait)
        for manhole in self.manholes:
            manhole.setServiceParent(self)
        for child in self:
            if isinstance(child, Listener):
                child.ready.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        if port is None:
            self.exit_status = 1  # the Listener logged why and stops the reactor
        return port

    def _print_login_link(self, port: Any) -> Any:
        """The web login of a private farm: logged, and kept in ``web.login`` (owner-only).
        Returns the port: the next callback (:meth:`_listening`) takes it."""
        if port is None or self.login_link is None:
            return port
        host = port.getHost()
        url = f"http://{host.host}:{host.port}/login?token={self.login_link.token}"
        path = Path(self.config.store.path) / "web.login"
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(url + "\n")
        path.with_suffix(".tmp").replace(path)
        log.info("web: {user} logs in as an admin with {url} (also in {path})",
                 user=self.login_link.user, url=url, path=str(path))
        return port

    def startService(self) -> None:
        self.lock.record()  # twistd may have forked since __init__
        (Path(self.config.store.path) / "web.login").unlink(missing_ok=True)  # the last start's
        if self.owner is not None:
            log.info("no users file and a localhost-only farm: {user}, who runs the server, is an admin",
                     user=self.owner)
        soft, _ = raise_fd_limit()  # a connection per render: allow as many as the system does
        log.info("farmnet server: AMP on {listen}, web on {web}, Afanasy on {afanasy}, state in {store}, "
                 "up to {files} open files",
                 listen=self.config.listen, web=self.config.web.listen or "(off)",
                 afanasy=self.config.afanasy.listen or "(off)",
                 store=self.store.name if isinstance(self.store, PgStore) else self.config.store.path,
                 files=soft)
        if isinstance(self.store, PgStore):
            service.Service.startService(self)  # the children start once this server is active
            defer.ensureDeferred(self._activate(self.store))
            return
        try:
            super().startService()
        except StoreRefused as e:  # one line on stderr (and so in the log), no traceback
            raise SystemExit(f"farmnet: {e}") from None
        settle_after_load()  # the store loaded the farm in its startService
        self.active = True
        # Once the reactor runs (signal handlers installed): what operators and tests wait for.
        self.reactor.callWhenRunning(self._running)

    async def _activate(self, store: PgStore) -> None:
        """Connect, wait as a standby until this server holds the lock, load the farm, serve.
        A standby does not listen: renders and clients given several servers find the
        active one by the others refusing connections."""
        try:
            await store.connect()
        except StoreRefused as e:
            self._fail(f"farmnet server: {e}")
            return
        try:
            await store.acquire()
            if not self.running:
                return
            await store.load()
        except Exception as e:
            if self.running:
                self._fail(f"farmnet server: store database {store.name}: cannot load the farm: {e}")
            return
        if not self.running:
            return
        settle_after_load()
        super().startService()
        self.active = True
        self._running()

    def _fail(self, line: str) -> None:
        log.critical("{line}", line=line)
        self.exit_status = 1
        self.reactor.callLater(0, self.reactor.stop)  # also when this happens before it runs

    def _store_lost(self, reason: str) -> None:
        """Another server took over while this one was cut off from the database: stop at
        once (exit 1; a service manager starts it again, as a standby)."""
        self.exit_status = 1
        self.reactor.callLater(0, self.reactor.stop)

    def _running(self) -> None:
        if not self.exit_status:
            log.info("farmnet server running")

    def stopService(self) -> Any:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Stop accepting; ask every peer of every listener to close (renders: to reconnect
        later), all at once, and wait close_wait at most; then stop the children, the store
        last (it flushes). A standby only leaves its database."""
        if not self.active:
            service.Service.stopService(self)
            self.store.close()
            self.farm.stop()
            self.lock.release()
            return
        others = [*([self.web] if self.config.web.listen else []), *self.manholes]
        afanasy = [self.afanasy_listener] if self.afanasy is not None else []
        for listener in [self.listener, *afanasy, *others]:
            await defer.maybeDeferred(listener.stopService)
        if self.config.web.listen:
            await self.web_site.close()  # end event streams: their requests finish
        closing = [defer.ensureDeferred(self.server.shutdown())]
        if self.afanasy is not None:
            closing.append(defer.ensureDeferred(self.afanasy.shutdown()))
        closing += [defer.ensureDeferred(listener.close_connections()) for listener in others]
        for result in await defer.DeferredList(closing, consumeErrors=True):
            if not result[0]:
                log.failure("closing the connections failed", result[1])
        d = super().stopService()
        self.farm.stop()
        self.outputs.close_all()
        try:
            await d
        finally:
            self.lock.release()  # last: the store and the embedded PostgreSQL are stopped


def render_service(reactor: Any, config: RenderConfig,
                   environ: Mapping[str, str] | None = None) -> RenderService:
    """The render: its reconnecting client, memory limiter and service/parser classes (custom
    classes imported now, once) made from its config's sections."""
    environ = dict(os.environ if environ is None else environ)
    factory = Factory.forProtocol(ServerConnection)
    factory.noisy = False  # no "Starting factory" line at every reconnection
    client = ClientService(client_endpoint(reactor, config.server, config.ca), factory,
                           retryPolicy=backoffPolicy(maxDelay=config.reconnect_max_delay), clock=reactor)
    return RenderService(reactor, config, client=client,
                         limiter=TaskLimiter(config.tasks.limit_method, tool_path=environ.get("PATH")),
                         service_classes=services.service_registry(config),
                         parser_classes=services.parser_registry(config), environ=environ)


def make_service(reactor: Any, program: str, config: ServerConfig | RenderConfig,
                 twistd_options: Mapping[str, Any] | None = None) -> IService:
    """What ``twistd farmnet PROGRAM`` runs ("server" or "render"), logging in the config's format.

    ``twistd_options`` are twistd's own (``--logfile``, ``--nodaemon``, ...); see :func:`with_log_format`.
    """
    built: IService
    if program == "server":
        assert isinstance(config, ServerConfig)
        try:
            server = ServerService(reactor, config)
        except (ConfigError, StoreInUse) as e:  # settings only checked when their service is built
            raise SystemExit(f"farmnet server: {e}") from None
        pidfile = (twistd_options or {}).get("pidfile")
        reactor.addSystemEventTrigger("after", "shutdown", _exit_on_failure, server, pidfile)
        built = server
    elif program == "render":
        assert isinstance(config, RenderConfig)
        built = render_service(reactor, config)
    else:
        raise ValueError(f"no such program: {program!r} (server or render)")
    return with_log_format(built, config.log_format, twistd_options, config.log_level)


def _exit_on_failure(server: ServerService, pidfile: str | None) -> None:
    """twistd exits 0 whatever happened; a server that failed to start (a listener) must
    not look like a clean stop to systemd's Restart=on-failure: exit with its status once
    everything has stopped (this runs after the shutdown triggers)."""
    if not server.exit_status:
        return
    if pidfile:  # twistd would remove it after the reactor returns, which we cut short
        with contextlib.suppress(OSError):
            os.unlink(pidfile)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(server.exit_status)
