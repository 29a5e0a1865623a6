"""Task output on the server's disk: one file per task run, bounded in size.

Output arrives in chunks while a task runs; the file of a running task stays open so a
chunk costs one write. Past ``max_bytes`` a run's output is cut with a marker (the render
keeps the tail in its own bounded log).

Beside a run's log, the files the run wrote (a renderer's frames, as its parser read them:
Blender's ``Saved: '...'`` lines) are kept in ``TASK.RUN.files.json``: the job's output
files are those of each task's latest run that wrote any (:meth:`OutputStore.job_files`).
A done task whose run reported none has the files its block names (Afanasy's ``files``, as af.py
jobs from Nuke, Houdini or Maya carry them): :func:`job_output_files` computes them from the spec,
with no disk access (whether they exist is found when a thumbnail is asked for, in a thread).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from farmnet.messages import OutputFiles
from farmnet.model.data import Job, Task, TaskKey, TaskState
from farmnet.model.spec import FLAG_SKIP_THUMBNAILS, BlockSpec, FrameParts, fill_parts, frame_parts

CUT_MARKER = b"\n[farmnet: output cut here: more than %d bytes]\n"
#: Most output files kept per run (a chunk of frames writes one or a few per frame).
MAX_FILES_PER_RUN = 10_000
#: Longest output file path kept.
MAX_PATH = 4096


def file_patterns(spec: BlockSpec) -> tuple[FrameParts, ...]:
    """A block's ``files`` as paths here, cut at their ``@#@``: relative ones under the block's working
    directory.  The server sees them at the same paths as the renders (shared storage); a relative path
    without a working directory means nothing here and is left out."""
    joined = (os.path.join(spec.working_directory, f) for f in spec.files)
    return tuple(frame_parts(p) for p in joined if os.path.isabs(p))


def named_files(task: Task, patterns: tuple[FrameParts, ...] | None = None) -> OutputFiles | None:
    """The files a done task's block names for it (each of ``patterns``, the block's `file_patterns`,
    filled for each of its frames, as Afanasy's processFilesPattern), or None."""
    spec = task.block.spec
    if task.state is not TaskState.DON or not spec.files:
        return None
    patterns = file_patterns(spec) if patterns is None else patterns
    start, end = spec.frames(task.number)
    step = spec.frames_inc if spec.numeric else 1
    paths = tuple(fill_parts(p, frame, frame) for p in patterns for frame in range(start, end + 1, step))
    return OutputFiles(task.block.number, task.number, task.starts_count, paths[:MAX_FILES_PER_RUN]) \
        if paths else None


def task_output_files(task: Task, reported: OutputFiles | None,
                      patterns: tuple[FrameParts, ...] | None = None) -> OutputFiles | None:
    """A task's output files: those its latest run that reported any reported, else its block's
    ``files``; none in a block with Afanasy's skipthumbnails flag (no previews wanted)."""
    if task.block.spec.flags & FLAG_SKIP_THUMBNAILS:
        return None
    return reported if reported is not None else named_files(task, patterns)


def job_output_files(job: Job, reported: list[OutputFiles], most: int | None = None) -> list[OutputFiles]:
    """The output files of each task of ``job`` by block and task (`task_output_files`); with ``most``,
    only the last tasks' that hold at least ``most`` files (the job page's latest frames)."""
    by_task = {(f.block, f.task): f for f in reported}
    found: list[OutputFiles] = []
    count = 0
    reporting = {f.block for f in reported}
    for block in reversed(job.blocks):
        patterns = file_patterns(block.spec)  # once per block, not per task
        if not patterns and block.number not in reporting:
            continue  # nothing to find among its tasks (most jobs' blocks): no walk over them
        for task in reversed(block.tasks):
            files = task_output_files(task, by_task.get((block.number, task.number)), patterns)
            if files is None:
                continue
            found.append(files)
            count += len(files.paths)
            if most is not None and count >= most:
                return found[::-1]
    return found[::-1]


class OutputStore:
    def __init__(self, root: str | os.PathLike[str], max_bytes: int = 10 << 20) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._open: dict[tuple[TaskKey, int], tuple[BinaryIO, int]] = {}
        #: Job id → (block, task) → its latest run's files; a job is read from disk once, when asked.
        self._files: dict[int, dict[tuple[int, int], OutputFiles]] = {}

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

    def files_path(self, key: TaskKey, run: int) -> Path:
        job, block, task = key
        return self.root / str(job) / str(block) / f"{task}.{run}.files.json"

    def write_files(self, key: TaskKey, run: int, paths: list[str]) -> None:
        """Keep the files run ``run`` of a task wrote (written whole, then renamed: never half)."""
        kept = tuple(p for p in paths[:MAX_FILES_PER_RUN] if isinstance(p, str) and 0 < len(p) <= MAX_PATH)
        if not kept:
            return
        path = self.files_path(key, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(list(kept)))
        os.replace(partial, path)
        job, block, task = key
        cached = self._files.get(job)
        if cached is not None:
            old = cached.get((block, task))
            if old is None or old.run <= run:
                cached[(block, task)] = OutputFiles(block, task, run, kept)

    def job_files(self, job_id: int) -> list[OutputFiles]:
        """The output files of each task of a job (its latest run that wrote any), by block and task."""
        cached = self._job(job_id)
        return [cached[k] for k in sorted(cached)]

    def task_files(self, key: TaskKey) -> OutputFiles | None:
        """The output files of a task's latest run that wrote any, or None."""
        job, block, task = key
        return self._job(job).get((block, task))

    def _job(self, job_id: int) -> dict[tuple[int, int], OutputFiles]:
        cached = self._files.get(job_id)
        if cached is None:
            cached = self._files[job_id] = self._read_job_files(job_id)
        return cached

    def _read_job_files(self, job_id: int) -> dict[tuple[int, int], OutputFiles]:
        found: dict[tuple[int, int], OutputFiles] = {}
        for path in (self.root / str(job_id)).glob("*/*.files.json"):
            try:
                block = int(path.parent.name)
                task, run = (int(n) for n in path.name.removesuffix(".files.json").split("."))
                paths = json.loads(path.read_text())
            except (ValueError, OSError):
                continue  # not ours, or half a disk: the run's frames are not listed
            if not isinstance(paths, list):
                continue
            old = found.get((block, task))
            if old is None or old.run < run:
                kept = tuple(p for p in paths if isinstance(p, str))
                found[(block, task)] = OutputFiles(block, task, run, kept)
        return found

    def delete_job(self, job_id: int) -> None:
        self._files.pop(job_id, None)
        for k in [k for k in self._open if k[0][0] == job_id]:
            self._open.pop(k)[0].close()
        shutil.rmtree(self.root / str(job_id), ignore_errors=True)

    def close_all(self) -> None:
        for f, _ in self._open.values():
            f.close()
        self._open.clear()
