"""Guessing the render secret against a real server process on 127.0.0.1, as fast as
--guessers parallel connections can (each says Hello with a wrong secret until the server
closes it, then connects again).

    python bench/guessing.py [--guessers 8] [--seconds 10]

Prints the guesses the server checked per second (the attack's real rate), the attempts
it refused unchecked (backing off), how many connections the guessers had to open again
(3 failed logins close one), the log lines the server wrote for them, and its RSS.
Before per-address backoff every attempt was checked and logged (3,649 a second).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, connectProtocol

from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.testing import ProcessFarm


async def guesser(reactor: Any, endpoint: str, until: float, counts: dict[str, int]) -> None:
    while reactor.seconds() < until:
        try:
            proto = await connectProtocol(clientFromString(reactor, endpoint), FarmAMP())
        except Exception:
            counts["connect_failed"] += 1
            await task.deferLater(reactor, 0.01)
            continue
        try:
            while reactor.seconds() < until:
                try:
                    await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render", user="r",
                                           secret="guess")
                    counts["accepted"] += 1
                except Exception as e:
                    message = str(getattr(e, "message", "") or e)
                    if "too many failed logins" in message:
                        counts["refused"] += 1
                    elif "render secret" in message:
                        counts["checked"] += 1
                    else:
                        counts["closed"] += 1
                        break
        finally:
            proto.transport.loseConnection()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="farmnet-guessing-"))
    config = base / "server.yaml"
    config.write_text("server:\n  stats:\n    enabled: false\n  auth:\n    render_secret: s3cret\n")
    farm = ProcessFarm(reactor, base)
    await farm.start_server("--config", str(config))
    assert farm.server is not None
    server = psutil.Process(farm.server.pid)
    rss_before = server.memory_info().rss
    log = base / "server.log"
    lines_before = len(log.read_text(errors="replace").splitlines())
    counts = {"checked": 0, "refused": 0, "accepted": 0, "closed": 0, "connect_failed": 0}
    started = reactor.seconds()
    until = started + args.seconds
    await defer.gatherResults([defer.ensureDeferred(guesser(reactor, farm.endpoint, until, counts))
                               for _ in range(args.guessers)])
    elapsed = reactor.seconds() - started
    rss_after = server.memory_info().rss
    await farm.stop()
    lines = log.read_text(errors="replace").splitlines()[lines_before:]
    refused_lines = sum(1 for line in lines if "refused" in line)
    print(json.dumps({
        "seconds": round(elapsed, 1), "guessers": args.guessers,
        "checked_per_s": round(counts["checked"] / elapsed, 1),
        "refused_unchecked_per_s": round(counts["refused"] / elapsed, 1),
        "connections_reopened": counts["closed"], "accepted": counts["accepted"],
        "log_lines_about_refusals": refused_lines,
        "server_rss_mb": [round(rss_before / 2**20, 1), round(rss_after / 2**20, 1)],
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guessers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
