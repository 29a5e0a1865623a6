"""The server, composed of services in a fixed order: farm → AMP listener → web site.

Start order is the list order; twistd stops them in reverse, so the listener closes
before the farm's state is flushed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import service, strports
from twisted.logger import Logger

from farmnet.config import ServerConfig
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.farm import Farm, FarmSettings
from farmnet.server.outputs import OutputStore

log = Logger()


class ServerService(service.MultiService):
    """The farm server; its children are its listeners."""

    def __init__(self, reactor: Any, config: ServerConfig) -> None:
        super().__init__()
        self.config = config
        settings = FarmSettings(
            admins=frozenset(config.admins), errors_retries=config.errors_retries,
            task_reconnect_timeout=config.task_reconnect_timeout)
        self.farm = Farm(reactor, settings)
        self.outputs = OutputStore(Path(config.store) / "output", config.output_max_bytes)
        self.server = FarmServer(reactor, self.farm, self.outputs,
                                 heartbeat_hold=config.heartbeat_hold)
        self.listener = strports.service(config.listen, ServerFactory(self.server))
        self.listener.setServiceParent(self)
        if config.web:
            from farmnet.web.site import make_site

            strports.service(config.web, make_site(self.farm)).setServiceParent(self)

    def startService(self) -> None:
        Path(self.config.store).mkdir(parents=True, exist_ok=True)
        log.info("farmnet server: AMP on {listen}, web on {web}, state in {store}",
                 listen=self.config.listen, web=self.config.web or "(off)", store=self.config.store)
        super().startService()

    def stopService(self) -> Any:
        d = super().stopService()
        self.farm.stop()
        self.outputs.close_all()
        return d
