"""The server, composed of services in a fixed order: farm → AMP listener → web site.

Start order is the list order; twistd stops them in reverse, so the listener closes
before the farm's state is flushed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from farmnet.config import ServerConfig
from farmnet.model.farm import Farm, FarmSettings
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.listening import Listener
from farmnet.server.monitors import EventLog
from farmnet.server.netstats import StatisticsLogger
from farmnet.server.outputs import OutputStore
from farmnet.server.registry import Limits, raise_fd_limit
from farmnet.server.store import Store
from farmnet.stats.service import StatsService
from farmnet.sysjob.job import SysJobSettings, SystemJob

log = Logger()


class ServerService(service.MultiService):
    """The farm server; its children are its listeners."""

    def __init__(self, reactor: Any, config: ServerConfig) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        settings = FarmSettings(
            admins=frozenset(config.admins), errors_retries=config.errors_retries,
            errors_avoid_host=config.errors_avoid_host,
            errors_task_same_host=config.errors_task_same_host,
            errors_forgive_time=config.errors_forgive_time,
            sick_errors_count=config.sick_errors_count,
            task_reconnect_timeout=config.task_reconnect_timeout,
            max_tasks_per_job=config.max_tasks_per_job, users_solving=config.users_solving,
            solve_by_capacity=config.solve_by_capacity, tickets=dict(config.tickets),
            tickets_per_host=dict(config.tickets_per_host))
        self.farm = Farm(reactor, settings)
        #: The monitors' view of the farm's events (AMP PollEvents, the web's /events).
        self.events = EventLog(self.farm)
        store = Path(config.store)
        self.store = Store(reactor, store / "farm.sqlite", self.farm, events=self.events)
        self.store.setServiceParent(self)  # first: the farm is loaded before anyone connects
        self.stats = StatsService(reactor, config, self.farm)
        self.stats.setServiceParent(self)  # after the store, before the listeners
        self.outputs = OutputStore(store / "output", config.output_max_bytes)
        self.sysjob = SystemJob(
            self.farm, SysJobSettings(
                tasklife=config.sysjob_tasklife, tasksmax=config.sysjob_tasksmax,
                postcmd_service=config.sysjob_postcmd_service,
                events_service=config.sysjob_events_service, wol_service=config.sysjob_wol_service,
                cmd_wolwake=config.render_cmd_wolwake,
                custom_data=json.loads(config.sysjob_custom_data or "{}")),
            read_output=lambda key, run: self.outputs.read(key, run, 0, 1 << 20),
            load_state=self.store.get_meta, save_state=self.store.set_meta)
        self.sysjob.setServiceParent(self)  # after the store has loaded the farm
        self.farm.on_wake = self.sysjob.wake
        self.server = FarmServer(
            reactor, self.farm, self.outputs, heartbeat_hold=config.heartbeat_hold,
            durable=self.store.sync, zombie_time=config.zombie_time, close_wait=config.close_wait,
            idle_timeout=config.idle_timeout, render_secret=config.render_secret,
            users_file=config.users_file,
            limits=Limits(max_connections_per_address=config.max_connections_per_address,
                          max_box_bytes=config.max_box_bytes,
                          max_boxes_per_second=config.max_boxes_per_second),
            events=self.events)
        self.listener = Listener(reactor, config.listen, ServerFactory(self.server),
                                 store / "amp.address")
        self.listener.setServiceParent(self)
        self.statistics = StatisticsLogger(reactor, self, config.stats_interval)
        self.statistics.setServiceParent(self)
        if config.web:
            from farmnet.web.site import make_site

            self.web_site = make_site(reactor, self.farm, config, self.outputs, self.stats,
                                      durable=self.store.sync, amp=self.server, events=self.events)
            self.web = Listener(reactor, config.web, self.web_site, store / "web.address")
            self.web.setServiceParent(self)
        from farmnet.server.manhole import make_manhole_services, manhole_namespace

        for manhole in make_manhole_services(reactor, config, manhole_namespace(self)):
            manhole.setServiceParent(self)

    def startService(self) -> None:
        Path(self.config.store).mkdir(parents=True, exist_ok=True, mode=0o700)
        soft, _ = raise_fd_limit()  # a connection per render: allow as many as the system does
        log.info("farmnet server: AMP on {listen}, web on {web}, state in {store}, up to {files} open files",
                 listen=self.config.listen, web=self.config.web or "(off)", store=self.config.store,
                 files=soft)
        super().startService()
        # Once the reactor runs (signal handlers installed): what operators and tests wait for.
        self.reactor.callWhenRunning(lambda: log.info("farmnet server running"))

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
        if self.config.web:
            await self.web_site.close()  # end event streams and open connections
        d = super().stopService()
        self.farm.stop()
        self.outputs.close_all()
        await d
