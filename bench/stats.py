"""Statistics write speed: task rows per second into PostgreSQL, and the reactor's longest stall.

    python bench/stats.py [--rows 300000] [--batch-rows 2000] [--fast] [--outage] [--gc default]

A throwaway PostgreSQL cluster (farmnet.stats.pgtest; with the embedded server's settings:
fsync on, synchronous_commit off; --fast turns fsync off) gets the schema with its indexes.
Task runs are fed to the recorder as a busy farm would (in chunks, on the reactor), and the
writer moves them to PostgreSQL in batched INSERTs. Printed:
  - rows/s: rows fed ÷ seconds from the first row fed to the last row committed;
  - the longest gap between ticks of a 5 ms LoopingCall while writing (the reactor's
    longest stall, producer included);
  - CPU seconds meanwhile, per row: this process (producer, recorder, writer) and
    PostgreSQL's processes (all of them: backends, WAL writer, checkpointer), and the load
    average (on a shared machine the wall figures follow the load, the CPU ones much less);
  - with --outage: rows/s into the spool while the database is stopped, and rows/s from
    the spool back into the database once it is started again.
The garbage collector is set as the server sets it once loaded (gc.freeze, young collections
every 20,000 allocations: farmnet/memory.py on the s5-solve branch); ``--gc default`` keeps
Python's defaults, where a full collection walks everything loaded (tens of ms) mid-write.
Targets: >= 100,000 rows/s, longest gap <= 20 ms.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from farmnet.model.data import TaskRun  # noqa: E402
from farmnet.stats import schema  # noqa: E402
from farmnet.stats.db import Database  # noqa: E402
from farmnet.stats.pgtest import ThrowawayCluster  # noqa: E402
from farmnet.stats.recorder import Recorder, Writer  # noqa: E402
from farmnet.stats.spool import Spool  # noqa: E402

T0 = 1_700_000_000.0


#: The run records' strings, made once: the farm makes a TaskRun per task anyway (its cost is
#: the model's, measured by bench/solve.py and bench/throughput.py), so the feeder here should
#: cost as little as it can beside the statistics it measures.
TASK_NAMES = tuple(f"frame {frame}" for frame in range(1000))
COMMANDS = tuple(f"blender -b /proj/shot/scene.blend -f {frame}" for frame in range(1000))
USERS = tuple(f"user{n}" for n in range(17))
HOSTS = tuple(f"render{n:03d}" for n in range(200))
SERVICES = ("blender", "nuke", "houdini")


def make_runs(count: int, first: int = 0) -> list[TaskRun]:
    runs = []
    job, job_name = -1, ""
    for n in range(first, first + count):
        frame = n % 1000
        if n // 1000 != job:
            job = n // 1000
            job_name = f"shot{job:04d}_comp"
        started = T0 + n * 0.01
        runs.append(TaskRun(
            job_id=1 + job, block=0, task=frame, run=1, job_name=job_name, block_name="render",
            task_name=TASK_NAMES[frame], user_name=USERS[n % 17], host=HOSTS[n % 200],
            service=SERVICES[n % 3], capacity=1000, command=COMMANDS[frame], frame_start=frame,
            frame_end=frame, time_started=started,
            time_done=started + 42.5, exit_code=0, signal=None, state="DON", errors_count=0, message="",
            peak_memory_mb=2048))
    return runs


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of this process and of a PostgreSQL cluster's processes (the postmaster
    and its children, read from /proc)."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self._start = (0.0, 0.0)

    def postgres(self) -> float:
        try:
            postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if int(entry.name) == postmaster or ppid == postmaster:
                    total += _cpu_of(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return total

    def start(self) -> None:
        self._start = (time.process_time(), self.postgres())

    def line(self, rows: int, writer_thread: float | None = None) -> str:
        own, pg = time.process_time() - self._start[0], self.postgres() - self._start[1]
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        per_row = writer_thread / rows * 1e6 if writer_thread is not None else 0.0
        thread = (f", of which the writer's threads {writer_thread:.2f} s ({per_row:.1f} us/row)"
                  if writer_thread is not None else "")
        return (f"CPU: this process {own:.2f} s ({own / rows * 1e6:.1f} us/row){thread}, "
                f"PostgreSQL {pg:.2f} s ({pg / rows * 1e6:.1f} us/row); load average {load}")


def time_writer_threads(writer: Writer) -> list[float]:
    """Accumulate the CPU time the writer's thread pool spends encoding and copying (main's
    Writer has no thread pool: nothing is measured then)."""
    spent = [0.0]
    if not hasattr(writer, "_copy"):
        return []

    def timed(method: Any) -> Any:
        def call(*args: Any) -> Any:
            started = time.thread_time()
            try:
                return method(*args)
            finally:
                spent[0] += time.thread_time() - started

        return call

    writer._copy = timed(writer._copy)  # type: ignore[method-assign]
    writer._encode = timed(writer._encode)  # type: ignore[method-assign]
    return spent


class StallMeter:
    """The longest gap between ticks of a 5 ms LoopingCall."""

    def __init__(self, reactor: Any, interval: float = 0.005) -> None:
        self.reactor = reactor
        self.interval = interval
        self.longest = 0.0
        self._last = 0.0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            self.longest = max(self.longest, now - self._last)
        self._last = now

    def start(self) -> None:
        self.longest, self._last = 0.0, 0.0
        self._loop.start(self.interval)

    def stop(self) -> float:
        self._loop.stop()
        return self.longest


async def feed(reactor: Any, recorder: Recorder, first: int, count: int, chunk: int) -> None:
    """Hand ``count`` runs to the recorder, ``chunk`` per reactor turn, each made just before
    (as a farm makes a TaskRun when a task ends, and drops it after its observers)."""
    for start in range(first, first + count, chunk):
        for run in make_runs(min(chunk, first + count - start), start):
            recorder.record_run(run)
        await task.deferLater(reactor, 0, lambda: None)


async def wait(reactor: Any, check: Any, what: str, timeout: float = 600.0) -> None:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.002, lambda: None)


async def count_rows(db: Database) -> int:
    return int((await db.query("SELECT count(*) AS n FROM tasks"))[0]["n"])


async def main(reactor: Any, args: argparse.Namespace, cluster: ThrowawayCluster) -> None:
    dsn = await cluster.create_database(reactor, "bench")
    spool_dir = cluster.base / "spool"
    prepare = schema.upgrade
    db = Database(reactor, dsn, reconnect_max_delay=0.5, on_connect=lambda d: prepare(d))
    await db.connect()
    recorder = Recorder(reactor, full_rows=args.batch_rows)
    writer = Writer(reactor, db, recorder, Spool(spool_dir, 1 << 30), batch_rows=args.batch_rows,
                    flush_interval=0.5)
    writer.start()
    thread_cpu = time_writer_threads(writer)
    meter = StallMeter(reactor)
    cpu = CpuMeter(cluster.cluster.datadir)
    print(f"PostgreSQL {'fast (fsync off)' if args.fast else 'durable (fsync on, synchronous_commit off)'}; "
          f"batches of {args.batch_rows} rows; feeding {args.chunk} rows per reactor turn")

    # Warm up (plans, caches), not measured.
    await feed(reactor, recorder, 10_000_000, 5000, args.chunk)
    await wait(reactor, lambda: writer.pending == 0, "warm-up")

    if args.gc == "server":
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    base_written, base_batches = writer.rows_written, writer.batches_written
    meter.start()
    cpu.start()
    thread_before = thread_cpu[0] if thread_cpu else 0.0
    started = time.perf_counter()
    await feed(reactor, recorder, 0, args.rows, args.chunk)
    fed = time.perf_counter() - started
    await wait(reactor, lambda: writer.pending == 0 and writer.rows_written - base_written >= args.rows,
               "the rows written")
    elapsed = time.perf_counter() - started
    stall = meter.stop()
    batches = writer.batches_written - base_batches
    print(f"{args.rows} task rows in {elapsed:.2f} s: {args.rows / elapsed:,.0f} rows/s into PostgreSQL "
          f"({batches} statements, {args.rows / max(1, batches):.0f} rows each; all fed in {fed:.2f} s)")
    print(f"longest reactor stall while writing (gap between 5 ms ticks): {stall * 1000:.1f} ms")
    print(cpu.line(args.rows, thread_cpu[0] - thread_before if thread_cpu else None))
    assert await count_rows(db) == args.rows + 5000, "rows missing"

    if args.outage:
        total = args.rows // 2
        half = total // 2
        await cluster.stop_async(reactor)
        await wait(reactor, lambda: not db.ready, "the database to be seen down", 30)
        meter.start()
        cpu.start()
        started = time.perf_counter()
        await feed(reactor, recorder, 20_000_000, half, args.chunk)
        await wait(reactor, lambda: writer.rows_spooled >= half and recorder.count == 0, "spooling")
        spooled = time.perf_counter() - started
        stall_down = meter.stop()
        print(f"database down: {half} rows to the spool in {spooled:.2f} s: {half / spooled:,.0f} rows/s; "
              f"longest stall {stall_down * 1000:.1f} ms")
        print("  " + cpu.line(half))
        await cluster.start_async(reactor)
        meter.start()
        cpu.start()
        started = time.perf_counter()
        await feed(reactor, recorder, 20_000_000 + half, total - half, args.chunk)  # behind the spool
        await wait(reactor, lambda: writer.pending == 0 and db.ready, "the spool written back")
        drained = time.perf_counter() - started
        stall_up = meter.stop()
        print(f"database back: {half} spooled + {total - half} new rows written in {drained:.2f} s: "
              f"{total / drained:,.0f} rows/s; longest stall {stall_up * 1000:.1f} ms")
        print("  " + cpu.line(total))
        count = await count_rows(db)
        print(f"rows in the database: {count} (expected {args.rows + 5000 + total}): "
              f"{'none lost, none doubled' if count == args.rows + 5000 + total else 'MISMATCH'}")

    await writer.stop(5.0)
    db.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch-rows", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500, help="rows fed per reactor turn")
    parser.add_argument("--fast", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--outage", action="store_true", help="also stop PostgreSQL and measure the spool")
    parser.add_argument("--gc", choices=("server", "default"), default="server",
                        help="the garbage collector as the server sets it once loaded, or Python's defaults")
    args = parser.parse_args()
    cluster = ThrowawayCluster(prefix="farmnet-bench-", durable=not args.fast).start()
    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, args, cluster)))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    run()
