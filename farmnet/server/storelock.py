"""One server per store: an exclusive lock on ``STORE/server.lock``, taken before anything in
the store (the farm's state, outputs, the embedded PostgreSQL) is read or started.

A second server started on the same store stops at once with one line naming the store and
the running server's pid, and touches nothing. The lock is ``flock``'s: the kernel drops it
when the process ends, kill -9 included, so a crashed server never leaves a stale lock; the
pid written in the file is only there to be shown.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StoreInUse", "StoreLock"]


class StoreInUse(Exception):
    """Another server holds the store; the message is fit for an operator."""


class StoreLock:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "server.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise StoreInUse; makes the store's directory (0700) if needed."""
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            pid = f"pid {holder[0]}" if holder else "an unknown pid"
            raise StoreInUse(f"the store {self.directory} is in use by another farmnet server ({pid}); "
                             "stop that one first, or give this one its own --store") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.record()

    def record(self) -> None:
        """Write this process's pid (again after twistd daemonizes: the lock stays, the pid changes)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
