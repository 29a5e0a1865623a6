"""The server's statistics line: every ``stats_interval`` seconds, one log line with
connections by kind, renders online/busy/offline, jobs and tasks by state, boxes
handled, bytes in and out, and the store's write lag (as swarmnodes' stats.log).

`server_statistics` gives the same figures as a dict (for the manhole, or a script);
`statistics_line` formats them.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["StatisticsLogger", "server_statistics", "statistics_line"]

log = Logger()


def server_statistics(server_service: Any) -> dict[str, Any]:
    """Figures of a `ServerService` (anything with ``farm``, ``server`` and ``store``)."""
    farm = server_service.farm
    registry = server_service.server.registry
    counts = farm.counts()
    by_kind = registry.counts()
    store = getattr(server_service, "store", None)
    return {
        "connections": sum(by_kind.values()),
        "by_kind": by_kind,
        "renders_online": counts["renders_online"],
        "renders_busy": counts["renders_busy"],
        "renders_offline": counts["renders_offline"],
        "jobs": counts["jobs"],
        "tasks": dict(sorted(counts["tasks"].items())),
        "boxes": registry.boxes,
        "bytes_in": registry.bytes_in,
        "bytes_out": registry.bytes_out,
        "opened": registry.opened,
        "refused": registry.refused,
        "limited": registry.limited,
        "reset": registry.reset,
        "zombies": registry.zombies,
        "store_lag": float(getattr(store, "lag", 0.0) or 0.0),
        "store_writes": int(getattr(store, "writes", 0) or 0),
    }


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def statistics_line(stats: dict[str, Any], previous: dict[str, Any] | None = None,
                    seconds: float = 0.0) -> str:
    """One line of `server_statistics`; with the previous figures and the seconds
    between, boxes and bytes per second too."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in stats["by_kind"].items() if n)
    tasks = " ".join(f"{state} {n}" for state, n in stats["tasks"].items() if n) or "none"
    line = (f"connections {stats['connections']}" + (f" ({kinds})" if kinds else "")
            + f"; renders online {stats['renders_online']} busy {stats['renders_busy']}"
            f" offline {stats['renders_offline']}; jobs {stats['jobs']}, tasks {tasks}"
            f"; boxes {stats['boxes']}, in {_bytes(stats['bytes_in'])}, out {_bytes(stats['bytes_out'])}")
    if previous is not None and seconds > 0:
        rate = (stats["boxes"] - previous["boxes"]) / seconds
        rate_in = (stats["bytes_in"] - previous["bytes_in"]) / seconds
        rate_out = (stats["bytes_out"] - previous["bytes_out"]) / seconds
        line += f" ({rate:.0f} boxes/s, in {_bytes(rate_in)}/s, out {_bytes(rate_out)}/s)"
    closed = ", ".join(f"{what} {stats[what]}" for what in ("refused", "limited", "reset", "zombies")
                       if stats[what])
    if closed:
        line += f"; closed: {closed}"
    return line + f"; store lag {stats['store_lag']:.3f} s, {stats['store_writes']} commits"


class StatisticsLogger(service.Service):
    """Logs `statistics_line` every ``interval`` seconds while running (0: never)."""

    def __init__(self, clock: Any, server_service: Any, interval: float) -> None:
        self.clock = clock
        self.server_service = server_service
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._previous: dict[str, Any] | None = None
        self._at = 0.0

    def startService(self) -> None:
        super().startService()
        if self.interval > 0:
            self._loop = LoopingCall(self.log_now)
            self._loop.clock = self.clock
            self._previous, self._at = server_statistics(self.server_service), self.clock.seconds()
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: log.failure("statistics line failed", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def log_now(self) -> None:
        stats = server_statistics(self.server_service)
        now = self.clock.seconds()
        line = statistics_line(stats, self._previous, now - self._at)
        self._previous, self._at = stats, now
        log.info("statistics: {line}", line=line, **{f"stat_{k}": v for k, v in stats.items()})
