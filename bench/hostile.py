"""Hostile input against a real server process on 127.0.0.1 (issue 11's findings).

    python bench/hostile.py [--boxes 12] [--box-mib 16] [--tool-requests 200]
                            [--slow 300] [--sources 3]

For each attack (farmnet/hostile.py) a fresh ``twistd -n farmnet server`` (statistics off,
web on, default limits):

  boxes before login   --boxes connections each sending --box-mib MiB of a box that never
                       ends, before Hello
  boxes after login    the same after a tool's Hello
  non-reading tool     a tool asks --tool-requests times for a page of 5,000 tasks and
                       reads nothing
  slow web clients     --slow connections from each of --sources addresses (127.0.0.x)
                       sending the start of a request's headers, held 3 s

For each: the server's RSS before, its peak during the attack, the growth, and the longest
stall: a prober logs in over AMP (connect, Hello, answer) every 0.05 s during the attack,
and the slowest login (or a failed one) is the stall. Small defaults run in about half a
minute (the submit of a 5,000-task job is inside the non-reading tool's figures).
To compare with another checkout:
PYTHONPATH=/path/to/old python bench/hostile.py (the attacks are this checkout's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # farmnet/hostile.py of this checkout

from farmnet import hostile  # noqa: E402
from farmnet.protocol import commands as c  # noqa: E402
from farmnet.testing import twistd_argv  # noqa: E402

MiB = 1 << 20


class Prober:
    """Logs in over AMP again and again (the slowest login is the stall), and samples the
    server's RSS every 0.02 s (its peak), each in a thread of its own."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.process = port, psutil.Process(pid)
        self.stop = threading.Event()
        self.longest = 0.0
        self.failures = 0
        self.peak_rss = self.process.memory_info().rss
        self.threads = [threading.Thread(target=self._logins, daemon=True),
                        threading.Thread(target=self._memory, daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _logins(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                hostile.amp_login_seconds("127.0.0.1", self.port, timeout=60)
            except OSError:
                self.failures += 1
            self.longest = max(self.longest, time.monotonic() - start)
            self.stop.wait(0.05)

    def _memory(self) -> None:
        while not self.stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            self.stop.wait(0.02)


def start_server(base: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    store = base / "store"
    config = base / "server.yaml"
    config.write_text("server:\n  stats:\n    enabled: false\n")
    log = open(base / "server.log", "wb")
    proc = subprocess.Popen([*twistd_argv(), "-n", "--pidfile=", "farmnet", "server", "--config", str(config),
                             "--listen", "tcp:0:interface=127.0.0.1", "--web", "tcp:0:interface=127.0.0.1",
                             "--store", str(store)], stdout=log, stderr=subprocess.STDOUT, cwd=base)
    deadline = time.monotonic() + 60
    while not ((store / "amp.address").exists() and (store / "web.address").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {base / 'server.log'}")
        time.sleep(0.05)
    ports = [int((store / n).read_text().strip().rsplit(":", 1)[1]) for n in ("amp.address", "web.address")]
    return proc, ports[0], ports[1]


def measure(name: str, pid: int, port: int, attack: Callable[[], str]) -> dict[str, Any]:
    process = psutil.Process(pid)
    before = process.memory_info().rss
    prober = Prober(port, pid)
    prober.start()
    try:
        outcome = attack()
    finally:
        time.sleep(0.5)
        prober.join()
    result = {"attack": name, "rss_before_mib": round(before / MiB, 1),
              "rss_peak_mib": round(prober.peak_rss / MiB, 1),
              "rss_growth_mib": round((prober.peak_rss - before) / MiB, 1),
              "longest_stall_s": round(prober.longest, 3), "failed_logins": prober.failures,
              "outcome": outcome}
    print(f"{name:20s} RSS {result['rss_before_mib']:7.1f} -> peak {result['rss_peak_mib']:7.1f} MiB "
          f"(+{result['rss_growth_mib']:.1f}); longest stall {result['longest_stall_s']:.3f} s, "
          f"failed logins {prober.failures}; {outcome}", flush=True)
    return result


def boxes(port: int, count: int, size: int, login: bool) -> str:
    results: list[tuple[int, str, Any]] = []

    def one() -> None:
        results.append(hostile.partial_box("127.0.0.1", port, size, login=login))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.0)
    states = [hostile.connection_state(sock) for _, _, sock in results]
    sent = sum(s for s, _, _ in results)
    for _, _, sock in results:
        sock.close()
    return f"{states.count('open')} of {count} still open, {sent / MiB:.0f} MiB sent"


def submit(port: int, tasks: int) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(hostile.hello(user="bench"))
        hostile.read_box(sock)
        spec = {"job": {"name": "bench", "blocks": [
            {"name": "b", "command": "echo @#@ and some words to make the page bigger",
             "frame_first": 1, "frame_last": tasks}]}}
        sock.sendall(hostile.command_box(c.SubmitJob, 2, spec=spec))
        return int(hostile.read_box(sock)[b"job_id"])


def non_reading(port: int, job_id: int, requests: int) -> str:
    boxes = [hostile.command_box(c.ListTasks, n + 2, job_id=job_id, offset=0, limit=5000)
             for n in range(requests)]
    sock = hostile.non_reading_tool("127.0.0.1", port, boxes)
    time.sleep(6.0)  # held open while the server answers (or stops answering)
    state = hostile.connection_state(sock)
    sock.close()
    return f"{requests} pages of 5,000 tasks asked; the tool's connection: {state}"


def slow_web(port: int, count: int, sources: int) -> str:
    held, refused = hostile.slow_web_connections(port, count, [f"127.0.0.{n + 2}" for n in range(sources)])
    time.sleep(3.0)
    for sock in held:
        sock.close()
    return f"{len(held)} held, {refused} refused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=12)
    parser.add_argument("--box-mib", type=int, default=16)
    parser.add_argument("--tool-requests", type=int, default=200)
    parser.add_argument("--slow", type=int, default=300, help="slow web connections per address")
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    attacks: list[tuple[str, Callable[[int, int], str]]] = [
        ("boxes before login", lambda amp, web: boxes(amp, args.boxes, args.box_mib * MiB, False)),
        ("boxes after login", lambda amp, web: boxes(amp, args.boxes, args.box_mib * MiB, True)),
        ("non-reading tool", lambda amp, web: non_reading(amp, submit(amp, 5000), args.tool_requests)),
        ("slow web clients", lambda amp, web: slow_web(web, args.slow, args.sources)),
    ]
    results = []
    for name, attack in attacks:  # a fresh server for each, so one attack's memory is not the next's
        base = Path(tempfile.mkdtemp(prefix="farmnet-hostile-"))
        proc, amp_port, web_port = start_server(base)
        try:
            results.append(measure(name, proc.pid, amp_port, partial(attack, amp_port, web_port)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            # twistd ends with the signal it got (-15): that is a clean stop.
            if proc.returncode not in (0, -signal.SIGTERM) or os.environ.get("FARMNET_BENCH_KEEP"):
                print(f"server exit status {proc.returncode}; its log: {base / 'server.log'}")
            else:
                shutil.rmtree(base, True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
