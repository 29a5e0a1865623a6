"""The render's resources: a cheap snapshot of its CPU, memory, swap, disk and load, for the server.

The render sends one with every ``render.resources.every``-th heartbeat (its optional ``resources``
argument).  Names follow Afanasy's host resources where it has one (``cpu_num``, ``mem_total_mb``,
``swap_used_mb``, ``hdd_free_gb``).  Taking a sample reads a few ``/proc`` files and calls statvfs: well
under a millisecond, so it runs on the reactor thread.  (A disk path on a hung network mount would block
statvfs: point ``render.resources_disk_path`` at a local disk.)
"""

from __future__ import annotations

import os

import psutil

from farmnet.messages import HostResources

__all__ = ["sample"]

_MB = 1 << 20
_GB = 1 << 30


def sample(disk_path: str = "/") -> HostResources:
    """A snapshot of this machine's resources.

    ``cpu_percent`` is the CPU use since the previous call in this process (psutil's non-blocking
    ``cpu_percent(None)``; the very first call has nothing to compare with and says 0.0).
    ``hdd_free_gb`` is None when ``disk_path`` cannot be read (a missing mount is not an error here).
    """
    memory = psutil.virtual_memory()
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
        mem_total_mb=memory.total // _MB,
        mem_used_mb=(memory.total - memory.available) // _MB,
        swap_used_mb=psutil.swap_memory().used // _MB,
        hdd_free_gb=hdd_free_gb,
        load_avg=load,
    )
