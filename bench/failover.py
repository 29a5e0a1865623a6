"""Failover: two servers on one PostgreSQL, the active killed with SIGKILL ten times mid-job.

    python bench/failover.py [--kills 10] [--tasks 1500] [--renders 2] [--writes 20000]

A throwaway PostgreSQL cluster (fsync and synchronous_commit on, as a farm's database should
run), two real servers on it (one active, one standing by), real renders given both
servers. One job of short tasks runs; each task appends its number and the time it started
to an evidence file. Every few seconds the active is killed with SIGKILL and started again
as the standby. For each kill the bench reports the takeover time: from the kill to the
first task started by the new active (goal: median <= 5 s, worst <= 10 s), and to the new
active listening. At the end every task must have run exactly once.

Then the store's write path alone: batches of 1,000 task changes committed (``sync``) on
PostgreSQL and on SQLite (WAL, synchronous=FULL), in task changes per second.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.task import deferLater

from farmnet.client import connect
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.store import FarmStore, Store
from farmnet.server.storepg import PgStore
from farmnet.stats import db as pg
from farmnet.stats import pgtest
from farmnet.testing import FarmProcess, ProcessFarm, free_port, wait_until


def uri_of(dsn: str) -> str:
    host, port, name = pg.dsn_field(dsn, "host"), pg.dsn_field(dsn, "port"), pg.dsn_field(dsn, "dbname")
    return f"postgresql://{pg.dsn_field(dsn, 'user')}@/{name}?host={host}&port={port}"


def evidence_lines(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((parts[0], float(parts[1])))
    return out


async def failover(reactor: Any, cluster: pgtest.ThrowawayCluster,
                   args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-failover-"))
    farm = ProcessFarm(reactor, base)
    uri = uri_of(await cluster.create_database(reactor))
    config = base / "server.yaml"
    config.write_text(f"server:\n  stats:\n    enabled: false\n  store:\n    database: '{uri}'\n")
    ports = {"a": free_port(), "b": free_port()}
    servers = ",".join(f"tcp:127.0.0.1:{port}" for port in ports.values())

    async def start(name: str, wait: bool) -> FarmProcess:
        return await farm.start_server("--config", str(config), name=name, wait=wait,
                                       listen=f"tcp:{ports[name]}:interface=127.0.0.1")

    procs = {"a": await start("a", True)}
    procs["b"] = await start("b", False)
    await wait_until(reactor, lambda: "standby" in procs["b"].tail(), 30, "b to stand by")
    for i in range(args.renders):
        farm.spawn(f"render-{i}", ["farmnet", "render", "--server", servers, "--name", f"r{i}"])
    client = await connect(reactor, servers, "bench", timeout=10, reconnect=120)
    try:
        async def online() -> bool:
            return sum(1 for r in await client.renders() if r["online"]) == args.renders

        await wait_until(reactor, online, 60, "the renders online")
        evidence = base / "evidence.txt"
        job_id, _ = await client.submit({"job": {"name": "failover", "blocks": [
            {"name": "frames", "frame_first": 1, "frame_last": args.tasks, "parser": "none",
             "command": f"echo $FARMNET_TASK $(date +%s.%N) >> {evidence}; sleep {args.seconds}"}]}})
        active, standby = "a", "b"
        takeovers: list[tuple[float, float]] = []
        for kill in range(args.kills):
            await deferLater(reactor, args.every)
            address = farm.base / f"{standby}-store" / "amp.address"
            ended = procs[active].watch.ended  # type: ignore[union-attr]
            killed_at = time.time()
            farm.kill(procs[active])
            await ended
            await wait_until(reactor, address.exists, 30, f"{standby} to take over", interval=0.01)
            listening = time.time() - killed_at

            # Orders of the new active come after it listens (the old one's last may start
            # their process a few ms after the kill).
            def first_start(since: float = killed_at + listening) -> float:
                return min((t for _, t in evidence_lines(evidence) if t > since), default=0.0)

            first = await wait_until(reactor, first_start, 30, "a task started by the new active",
                                     interval=0.02)
            takeovers.append((first - killed_at, listening))
            print(f"kill {kill + 1}: {active} killed; {standby} listening after {listening:.2f} s, "
                  f"first task started after {first - killed_at:.2f} s", flush=True)
            # The killed server comes back as the standby.
            killed_log = farm.base / f"{active}.log"
            seen = killed_log.read_text().count("standby:")
            procs[active] = await start(active, False)

            def standing_by(log: Path = killed_log, seen: int = seen) -> bool:
                return log.read_text().count("standby:") > seen

            await wait_until(reactor, standing_by, 30, f"{active} to stand by")
            active, standby = standby, active

        async def done() -> Any:
            job = await client.job(job_id)
            return job if job["state"] in ("DON", "ERR") else None

        job = await wait_until(reactor, done, 600, "the job to finish")
        runs = Counter(n for n, _ in evidence_lines(evidence))
        twice = sorted(n for n, c in runs.items() if c > 1)
        missing = args.tasks - len(runs)
        return {"takeovers": takeovers, "state": job["state"], "twice": twice, "missing": missing}
    finally:
        await client.aclose()
        await farm.stop()
        shutil.rmtree(base, ignore_errors=True)


async def write_rate(reactor: Any, store: FarmStore, farm: Farm, changes: int) -> float:
    """Task changes per second through the store: batches of 1,000 tasks committed."""
    spec, _ = parse_job({"name": "w", "blocks": [
        {"name": "b", "command": "true", "frame_first": 1, "frame_last": 1000}]})
    job = farm.submit(spec, "bench")
    await store.sync()
    tasks = job.blocks[0].tasks
    started = time.perf_counter()
    for round_ in range(changes // len(tasks)):
        for t in tasks:
            t.progress = round_ % 100
            store._dirty_tasks[id(t)] = t
        await store.sync()
    return changes // len(tasks) * len(tasks) / (time.perf_counter() - started)


async def throughput(reactor: Any, cluster: pgtest.ThrowawayCluster, changes: int) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="farmnet-bench-writes-"))
    try:
        farm = Farm(reactor)
        sqlite = Store(reactor, base / "farm.sqlite", farm, flush_interval=0.2)
        sqlite.startService()
        sqlite_rate = await write_rate(reactor, sqlite, farm, changes)
        await sqlite.stopService()
        farm.stop()

        farm = Farm(reactor)
        pgstore = PgStore(reactor, uri_of(await cluster.create_database(reactor)), farm, flush_interval=0.2)
        await pgstore.connect()
        await pgstore.acquire()
        await pgstore.load()
        pgstore.startService()
        pg_rate = await write_rate(reactor, pgstore, farm, changes)
        await pgstore.stopService()
        farm.stop()
        return {"sqlite": sqlite_rate, "postgresql": pg_rate}
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    cluster = pgtest.ThrowawayCluster(prefix="farmnet-bench-pg-", durable=True)
    cluster.cluster.settings = {**cluster.cluster.settings, "synchronous_commit": "on"}
    cluster.start()
    try:
        if args.kills:
            result = await failover(reactor, cluster, args)
            times = [first for first, _ in result["takeovers"]]
            listens = [listening for _, listening in result["takeovers"]]
            print(f"takeover (kill -> first task started by the new active), {len(times)} kills: "
                  f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s, "
                  f"best {min(times):.2f} s "
                  f"(goal: median <= 5 s, worst <= 10 s); kill -> new active listening: "
                  f"median {statistics.median(listens):.2f} s, worst {max(listens):.2f} s")
            print(f"job {result['state']}: tasks run twice: {len(result['twice'])} {result['twice'][:10]}, "
                  f"never run: {result['missing']}")
        if args.writes:
            rates = await throughput(reactor, cluster, args.writes)
            print(f"store writes, batches of 1,000 task changes: PostgreSQL {rates['postgresql']:,.0f}/s, "
                  f"SQLite {rates['sqlite']:,.0f}/s")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--every", type=float, default=3.0,
                        help="seconds between a takeover and the next kill")
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=0.1, help="each task's sleep")
    parser.add_argument("--renders", type=int, default=2)
    parser.add_argument("--writes", type=int, default=20000, help="task changes for the write rate (0: skip)")
    arguments = parser.parse_args()
    task.react(lambda reactor: main(reactor, arguments))
