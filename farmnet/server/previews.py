"""Thumbnails of the files jobs wrote (rendered frames), for the web site.

The renders report the paths their frames were saved to (:mod:`farmnet.server.outputs`); the server reads
those paths (the studio's shared storage, seen at the same path here) and makes a small PNG of each with
Pillow.  Decoding an image takes milliseconds to seconds (a 4K EXR), so it runs in the reactor's thread
pool, never in the reactor; one request per image at a time (others wait for the same answer); the PNG
is cached on disk under ``<store>/previews/JOB/`` keyed by the source's path, size and modification
time, so a re-rendered frame gets a new thumbnail, and deleted with the job.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure

__all__ = ["PreviewError", "Previews", "make_thumbnail"]


#: The longest side of a thumbnail, in pixels.
SIZE = 256
#: Source images larger than this (bytes) are not decoded (a preview must stay cheap).
MAX_SOURCE_BYTES = 512 << 20


class PreviewError(Exception):
    """No thumbnail for this file: missing, too big, or not an image Pillow reads."""


def make_thumbnail(source: str, size: int = SIZE) -> bytes:
    """A PNG at most ``size`` pixels on its longest side of the image at ``source`` (blocking)."""
    from PIL import Image, UnidentifiedImageError  # imported where used: only thumbnails need it

    try:
        if os.path.getsize(source) > MAX_SOURCE_BYTES:
            raise PreviewError(f"{source} is larger than {MAX_SOURCE_BYTES >> 20} MiB")
        with Image.open(source) as image:
            image.thumbnail((size, size))
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            out = io.BytesIO()
            image.save(out, "PNG")
            return out.getvalue()
    except FileNotFoundError:
        raise PreviewError(f"{source} does not exist (here)") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise PreviewError(f"{source}: not an image this server reads ({e})") from None


class Previews:
    """Cached thumbnails, made in threads.  ``root``: the cache (``<store>/previews``)."""

    def __init__(self, reactor: Any, root: str | os.PathLike[str], size: int = SIZE) -> None:
        self.reactor = reactor
        self.root = Path(root)
        self.size = size
        #: Thumbnails being made → who waits for each.
        self._waiting: dict[Path, list[defer.Deferred[bytes]]] = {}

    def _in_thread(self, call: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), call, *args)

    async def thumbnail(self, job_id: int, source: str) -> bytes:
        """The PNG thumbnail of ``source`` (a file job ``job_id`` wrote); raises PreviewError."""
        cached = await self._in_thread(self._cached, job_id, source)
        waiter: defer.Deferred[bytes] = defer.Deferred()
        waiters = self._waiting.get(cached)
        if waiters is None:  # the first to ask makes it; the others wait for the same answer
            self._waiting[cached] = [waiter]
            self._in_thread(self._make, source, cached).addBoth(self._made, cached)
        else:
            waiters.append(waiter)
        return await waiter

    def _made(self, result: bytes | Failure, cached: Path) -> None:
        for waiter in self._waiting.pop(cached, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _cached(self, job_id: int, source: str) -> Path:
        """Where the thumbnail of ``source`` as it is now is kept (in a thread: it stats the source)."""
        try:
            stat = os.stat(source)
        except OSError:
            raise PreviewError(f"{source} does not exist (here)") from None
        key = f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.size}".encode("utf-8", "surrogateescape")
        return self.root / str(job_id) / (hashlib.sha256(key).hexdigest()[:32] + ".png")

    def _make(self, source: str, cached: Path) -> bytes:
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        data = make_thumbnail(source, self.size)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, cached)
        return data

    def delete_job(self, job_id: int) -> None:
        """Forget a deleted job's thumbnails."""
        shutil.rmtree(self.root / str(job_id), ignore_errors=True)
