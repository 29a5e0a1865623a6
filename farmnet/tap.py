"""``twistd farmnet server`` and ``twistd farmnet render``: options only; farmnet/app.py builds them."""

from __future__ import annotations

import os
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


def _store_flag(value: str | None) -> dict[str, str | None]:
    """``--store DIR`` is the state directory; ``--store postgresql://…`` the state's database."""
    if value is not None and value.startswith(("postgresql://", "postgres://")):
        return {"database": value}
    return {"path": value}


class ServerOptions(usage.Options):
    synopsis = "[options]"
    optParameters = [
        ["config", "c", None, "YAML config file (default: $FARMNET_CONFIG, else built-in defaults)"],
        ["listen", None, None, "AMP listener endpoint, e.g. tcp:51100:interface=127.0.0.1"],
        ["web", None, None, "web site endpoint ('' disables it)"],
        ["afanasy", None, None, "Afanasy-compatible endpoint for CGRU's af.py and afcmd ('' disables it)"],
        ["store", None, None, "state directory, or the state's PostgreSQL as postgresql://user@host/db"],
        ["log-level", None, None, "least level logged: debug, info, warn, error, critical (default: info)"],
    ]

    def postOptions(self) -> None:
        self.config, self.moved = _load(self, "server", {
            "listen": self["listen"], "web": {"listen": self["web"]},
            "afanasy": {"listen": self["afanasy"]}, "store": _store_flag(self["store"]),
            "log_level": self["log-level"]})


class RenderOptions(usage.Options):
    synopsis = "[options]"
    optParameters = [
        ["config", "c", None, "YAML config file (default: $FARMNET_CONFIG, else built-in defaults)"],
        ["server", None, None, "server endpoint, e.g. tcp:127.0.0.1:51100 (several: comma-separated)"],
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


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from farmnet.app import make_service

    if options.subOptions.moved:  # buffered until twistd's log starts, then written once
        path = options.subOptions["config"] or default_config_path(os.environ)
        log.warn("{path}: {moved}", path=path, moved=options.subOptions.moved)
    # twistd's own options (--logfile, --nodaemon, --logger, --syslog) are the parent of ours.
    return make_service(reactor, options.subCommand, options.subOptions.config,
                        getattr(options, "parent", None))
