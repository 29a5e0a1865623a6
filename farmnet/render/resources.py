"""The render's resources: what block needs are checked against, and what the renders page shows.

Two kinds, after Afanasy's host resources (``cpu_num``, ``mem_total_mb``, ``mem_free_mb``, ``hdd_free_gb``,
``cpu_mhz``, ``gpu_mem_total_mb``):

- `facts`: what does not change while the render runs (its OS words, CPU frequency, the properties and
  power its config gives), sent once with ``RegisterRender``;
- `sample`: what changes (CPU use, free memory, swap, free disk, load, GPU memory), sent with the first
  heartbeat, every ``resources.every``-th heartbeat and by ``ReportResources`` every
  ``resources.interval`` seconds, and when a task ends: with the next heartbeat (when heartbeats
  carry resources, at most every half second), or by ``ReportResources`` half a second later.

Taking a sample reads a few ``/proc`` files and calls statvfs: well under a millisecond, so it runs on
the reactor thread.  (A disk path on a hung network mount would block statvfs: point
``render.resources.disk_path`` at a local disk.)  The GPU's memory comes from ``nvidia-smi``, run as a
child process every ``resources.gpu_interval`` seconds by `GpuReader` (never on the reactor thread, never
an error: no nvidia-smi, or one that fails, is "no GPU").
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import sys

import psutil
from twisted.internet import utils
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from farmnet.messages import HostFacts, HostResources

__all__ = ["GpuReader", "facts", "os_words", "sample"]

_MB = 1 << 20
_GB = 1 << 30
_log = Logger()


def os_words() -> str:
    """Afanasy's platform words: "unix linux 64 debian 12" (need_os looks for any of a job's words)."""
    words = ["windows"] if sys.platform.startswith("win") else ["unix"]
    if sys.platform == "darwin":
        words.append("macosx")
    elif sys.platform.startswith("linux"):
        words.append("linux")
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        words.append("aarch64")
    elif machine.startswith("arm"):
        words.append("arm32")
    else:
        words.append(str(struct.calcsize("P") * 8))
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        release = {}
    for key in ("ID", "VERSION_ID"):
        word = release.get(key, "").lower().replace(" ", "_")
        if word and word not in words:
            words.append(word)
    return " ".join(words)


def _cpu_mhz() -> int | None:
    """The CPU's highest frequency (Afanasy keeps the highest it saw), None when unknown."""
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        freq = None
    if freq is None:
        return None
    mhz = freq.max or freq.current
    return int(mhz) if mhz > 0 else None


def facts(properties: str = "", power: int = -1) -> HostFacts:
    """What this render tells once, at registration."""
    return HostFacts(os=os_words(), cpu_mhz=_cpu_mhz(), properties=properties, power=power)


_MEMINFO_KEYS = (b"MemTotal:", b"MemAvailable:", b"SwapTotal:", b"SwapFree:")


def _memory() -> tuple[int, int, int, int]:
    """Memory total and available, swap total and free, in bytes: what psutil's virtual_memory and
    swap_memory give for them, from one read of /proc/meminfo (they read it twice, /proc/vmstat too,
    and work out figures a sample does not use: a sample goes with heartbeats and after tasks)."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            found = {}
            for line in meminfo:
                key, _, rest = line.partition(b" ")
                if key in _MEMINFO_KEYS:
                    found[key] = int(rest.split()[0]) * 1024
        return tuple(found[key] for key in _MEMINFO_KEYS)  # type: ignore[return-value]
    except (OSError, KeyError, ValueError, IndexError):  # not Linux, or a kernel without MemAvailable
        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        return memory.total, memory.available, swap.total, swap.free


def sample(disk_path: str = "/", gpu: tuple[int, int] | None = None) -> HostResources:
    """A snapshot of this machine's resources; ``gpu`` the latest (total, used) GPU memory in MB.

    ``cpu_percent`` is the CPU use since the previous call in this process (psutil's non-blocking
    ``cpu_percent(None)``; the very first call has nothing to compare with and says 0.0).
    ``hdd_free_gb`` is None when ``disk_path`` cannot be read (a missing mount is not an error here).
    """
    mem_total, mem_available, swap_total, swap_free = _memory()
    try:
        hdd_free_gb: float | None = round(psutil.disk_usage(disk_path).free / _GB, 2)
    except OSError:
        hdd_free_gb = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this system
        load = [0.0, 0.0, 0.0]
    return HostResources(
        cpu_num=psutil.cpu_count() or 1,
        cpu_percent=psutil.cpu_percent(None),
        mem_total_mb=mem_total // _MB,
        mem_used_mb=(mem_total - mem_available) // _MB,
        swap_used_mb=(swap_total - swap_free) // _MB,
        hdd_free_gb=hdd_free_gb,
        load_avg=load,
        mem_free_mb=mem_available // _MB,
        swap_total_mb=swap_total // _MB,
        gpu_mem_total_mb=None if gpu is None else gpu[0],
        gpu_mem_used_mb=None if gpu is None else gpu[1],
    )


def parse_nvidia_smi(output: bytes) -> tuple[int, int] | None:
    """``nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits``: one
    "total, used" line per GPU, summed; None when it says nothing readable."""
    total = used = 0
    found = False
    for line in output.decode("ascii", "replace").splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            total, used, found = total + int(float(parts[0])), used + int(float(parts[1])), True
        except ValueError:
            continue
    return (total, used) if found else None


class GpuReader:
    """Reads the GPU's memory every ``interval`` seconds with nvidia-smi, when the host has it."""

    QUERY = ("--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits")

    def __init__(self, reactor: IReactorTime, interval: float, executable: str | None = None) -> None:
        self.reactor = reactor
        self.interval = interval
        self.executable = executable if executable is not None else shutil.which("nvidia-smi")
        #: The latest (total MB, used MB), None without a readable GPU.
        self.latest: tuple[int, int] | None = None
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        if self.executable is None or self.interval <= 0 or self._loop is not None:
            return
        self._loop = LoopingCall(self.read)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    async def read(self) -> None:
        assert self.executable is not None
        reactor = self.reactor
        assert IReactorProcess.providedBy(reactor)
        try:
            out, _err, code = await utils.getProcessOutputAndValue(
                self.executable, self.QUERY, env=dict(os.environ), reactor=reactor)
        except Exception as e:  # it could not even start: no GPU as far as we can tell
            _log.info("nvidia-smi did not run ({why}): no GPU memory reported", why=e)
            self.latest = None
            return
        self.latest = parse_nvidia_smi(out) if code == 0 else None
