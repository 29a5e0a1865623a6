"""``twistd farmnet server`` and ``twistd farmnet render``."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from farmnet.config import ConfigError, default_config_path, load_config, moved_keys

log = Logger()


def _load(options: usage.Options, section: str, flags: dict[str, Any]) -> tuple[Any, str | None]:
    """The program's section (flags on top of the file), and the warning about old keys in it."""
    try:
        config = load_config(options["config"] or default_config_path(os.environ),
                             overrides={section: flags})
    except ConfigError as e:
        raise usage.UsageError("configuration errors:\n  " + "\n  ".join(e.errors)) from None
    return getattr(config, section), moved_keys(config, section)


class ServerOptions(usage.Options):
    synopsis = "[options]"
    optParameters = [
        ["config", "c", None, "YAML config file (default: $FARMNET_CONFIG, else built-in defaults)"],
        ["listen", None, None, "AMP listener endpoint, e.g. tcp:51100:interface=127.0.0.1"],
        ["web", None, None, "web site endpoint ('' disables it)"],
        ["afanasy", None, None, "Afanasy-compatible endpoint for CGRU's af.py and afcmd ('' disables it)"],
        ["store", None, None, "state directory"],
        ["log-level", None, None, "least level logged: debug, info, warn, error, critical (default: info)"],
    ]

    def postOptions(self) -> None:
        self.config, self.moved = _load(self, "server", {
            "listen": self["listen"], "web": {"listen": self["web"]},
            "afanasy": {"listen": self["afanasy"]}, "store": {"path": self["store"]},
            "log_level": self["log-level"]})


class RenderOptions(usage.Options):
    synopsis = "[options]"
    optParameters = [
        ["config", "c", None, "YAML config file (default: $FARMNET_CONFIG, else built-in defaults)"],
        ["server", None, None, "server endpoint, e.g. tcp:127.0.0.1:51100"],
        ["name", None, None, "render name (default: this host's name)"],
        ["capacity", None, None, "capacity (default 1100: one 1000-capacity task at a time)", int],
        ["max-tasks", None, None, "most tasks at once (0: capacity decides)", int],
        ["services", None, None, "comma-separated services this render runs (default: all)"],
        ["log-level", None, None, "least level logged: debug, info, warn, error, critical (default: info)"],
    ]

    def postOptions(self) -> None:
        self.config, self.moved = _load(self, "render", {
            "server": self["server"], "name": self["name"], "capacity": self["capacity"],
            "max_tasks": self["max-tasks"], "services": self["services"], "log_level": self["log-level"]})


class Options(usage.Options):
    synopsis = "server|render [options]"
    subCommands = [
        ["server", None, ServerOptions, "Run the farm server"],
        ["render", None, RenderOptions, "Run a render host (one per machine)"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say which: twistd farmnet server, or twistd farmnet render")


def _exit_on_failure(server: Any, pidfile: str | None) -> None:
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


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from farmnet.logging import with_log_format

    config = options.subOptions.config
    if options.subOptions.moved:  # buffered until twistd's log starts, then written once
        path = options.subOptions["config"] or default_config_path(os.environ)
        log.warn("{path}: {moved}", path=path, moved=options.subOptions.moved)
    service: IService
    if options.subCommand == "server":
        from farmnet.app import ServerService
        from farmnet.server.storelock import StoreInUse

        try:
            server = ServerService(reactor, config)
        except (ConfigError, StoreInUse) as e:  # settings only checked when their service is built
            raise SystemExit(f"farmnet server: {e}") from None
        twistd = getattr(options, "parent", None) or {}
        reactor.addSystemEventTrigger("after", "shutdown", _exit_on_failure, server, twistd.get("pidfile"))
        service = server
    else:
        from farmnet.render.service import RenderService

        service = RenderService(reactor, config)
    # twistd's own options (--logfile, --nodaemon, --logger, --syslog) are the parent of ours.
    return with_log_format(service, config.log_format, getattr(options, "parent", None), config.log_level)
