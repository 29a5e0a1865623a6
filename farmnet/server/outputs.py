"""Task output on the server's disk: one file per task run, bounded in size.

Output arrives in chunks while a task runs; the file of a running task stays open so a
chunk costs one write. Past ``max_bytes`` a run's output is cut with a marker (the render
keeps the tail in its own bounded log).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from farmnet.model.data import TaskKey

CUT_MARKER = b"\n[farmnet: output cut here: more than %d bytes]\n"


class OutputStore:
    def __init__(self, root: str | os.PathLike[str], max_bytes: int = 10 << 20) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._open: dict[tuple[TaskKey, int], tuple[BinaryIO, int]] = {}

    def path(self, key: TaskKey, run: int) -> Path:
        job, block, task = key
        return self.root / str(job) / str(block) / f"{task}.{run}.log"

    def append(self, key: TaskKey, run: int, data: bytes) -> None:
        entry = self._open.get((key, run))
        if entry is None:
            path = self.path(key, run)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "ab")  # noqa: SIM115 - kept open while the task runs
            entry = (f, f.tell())
        f, size = entry
        if size >= self.max_bytes:
            self._open[(key, run)] = entry
            return
        room = self.max_bytes - size
        f.write(data[:room])
        size += min(len(data), room)
        if len(data) > room:
            f.write(CUT_MARKER % self.max_bytes)
            size = self.max_bytes
        f.flush()
        self._open[(key, run)] = (f, size)

    def close(self, key: TaskKey, run: int) -> None:
        entry = self._open.pop((key, run), None)
        if entry is not None:
            entry[0].close()

    def read(self, key: TaskKey, run: int, offset: int, limit: int) -> bytes:
        try:
            with open(self.path(key, run), "rb") as f:
                f.seek(max(0, offset))
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def delete_job(self, job_id: int) -> None:
        for k in [k for k in self._open if k[0][0] == job_id]:
            self._open.pop(k)[0].close()
        shutil.rmtree(self.root / str(job_id), ignore_errors=True)

    def close_all(self) -> None:
        for f, _ in self._open.values():
            f.close()
        self._open.clear()
