"""Helpers for testing the web site for real: a farm with data, the site on a loopback
port, a password file. Used by tests/test_web*.py."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint

from farmnet.model.data import Job, Render
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.passwords import hash_password
from farmnet.web.site import FarmSite, make_site

__all__ = ["FarmPlayer", "SiteUnderTest", "job_doc", "serve", "write_users_file"]


def write_users_file(path: Path, users: dict[str, str]) -> Path:
    """A password file (mode 600) with a line per user."""
    lines = [f"{user}:{hash_password(password)}" for user, password in users.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def job_doc(name: str = "shot010", frames: int = 6, service: str = "blender", **extra: Any) -> dict[str, Any]:
    block = {"name": "render", "command": "render -f @####@", "frame_first": 1, "frame_last": frames,
             "service": service, "capacity": 1000, "working_directory": f"/proj/{name}"}
    block.update(extra.pop("block", {}))
    return {"job": {"name": name, "blocks": [block], **extra}}


class FarmPlayer:
    """A real Farm on the real reactor; the test plays the renders (no processes)."""

    def __init__(self, reactor: Any, farm: Farm) -> None:
        self.reactor = reactor
        self.farm = farm

    async def tick(self) -> None:
        await task.deferLater(self.reactor, 0, lambda: None)

    async def render(self, name: str, **kwargs: Any) -> Render:
        fields = {"capacity": 1000, "cpus": 16, "memory_mb": 65536, "platform": "linux", **kwargs}
        render = self.farm.register_render(name, **fields)
        await self.tick()
        return render

    async def submit(self, doc: dict[str, Any], user: str) -> Job:
        spec, _ = parse_job(doc)
        job = self.farm.submit(spec, user)
        await self.tick()
        return job

    async def play(self, render: Render, *, count: int | None = None, fail: Collection[int] = (),
                   started: float | None = None, seconds: float = 30.0, spacing: float = 0.0) -> int:
        """Finish tasks handed to ``render`` (task numbers in ``fail`` fail) until nothing
        more comes or ``count`` ended. Runs are dated from ``started`` (default: now),
        ``spacing`` seconds apart. Returns how many ended."""
        ended = 0
        when = self.reactor.seconds() if started is None else started
        while count is None or ended < count:
            await self.tick()
            orders = [o for o in self.farm.take_orders(render) if o.order == "start"]
            if not orders:
                return ended
            for order in orders:
                if count is not None and ended >= count:
                    break
                key = (order.job_id, order.block, order.task)
                failed = order.task in fail
                self.farm.task_finished(render, key, order.run, exit_code=1 if failed else 0, signal=None,
                                        time_started=when, time_done=when + seconds,
                                        message="boom" if failed else "", peak_memory_mb=512)
                when += spacing
                ended += 1
        return ended


    async def spread(self, renders: list[Render], *, start: float, spacing: float, seconds: float = 30.0,
                     fail: Collection[int] = ()) -> int:
        """Every render finishes one task in turn, runs ``spacing`` seconds apart from
        ``start``, until no more work comes: a farm's history over a stretch of time."""
        ended, when = 0, start
        while True:
            this_round = 0
            for render in renders:
                done = await self.play(render, count=1, fail=fail, started=when, seconds=seconds)
                this_round += done
                when += spacing * done
            ended += this_round
            if not this_round:
                return ended


class SiteUnderTest:
    """The site listening on 127.0.0.1, a free port."""

    def __init__(self, site: FarmSite, port: Any) -> None:
        self.site = site
        self.port = port
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    async def stop(self) -> None:
        await defer.maybeDeferred(self.port.stopListening)
        await self.site.close()


async def serve(reactor: Any, farm: Farm, config: Any = None, outputs: Any = None, stats: Any = None,
                **kwargs: Any) -> SiteUnderTest:
    site = make_site(reactor, farm, config, outputs, stats, **kwargs)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    return SiteUnderTest(site, port)
