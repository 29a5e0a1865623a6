"""The web side of rendered frames: a job's output files and their thumbnails.

``/jobs/ID/BLOCK/TASK/files/N``    the thumbnail (PNG) of the task's output file N
``/api/jobs/ID/files``             the job's output files (JSON), each with its thumbnail's URL
and the job page's "Latest frames" and the task page's "Frames" (:func:`latest_frames`,
:func:`task_frames`).  A task's output files are those its latest run reported (Blender's parser),
else those its block names (``files``): :func:`farmnet.server.outputs.job_output_files`.  The
thumbnails are made by :class:`farmnet.server.previews.Previews` (in threads, cached); a file that is
missing here or not an image gets a placeholder image (status 404), so a page never shows a broken
one.  Output files are task output: who may read a task's output may see them.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from twisted.web.template import Tag, tags

from farmnet import errors
from farmnet.messages import OutputFiles
from farmnet.model.data import Job
from farmnet.server.outputs import job_output_files, task_output_files
from farmnet.server.previews import PreviewError
from farmnet.web.context import WebContext
from farmnet.web.routing import Call, HTTPError, Reply, json_reply

__all__ = ["LATEST", "TASK_LATEST", "PreviewPages", "latest_frames", "placeholder", "task_frames",
           "thumbnail_url"]

#: Thumbnails the job page shows (the last tasks' files).
LATEST = 6
#: Thumbnails the task page shows (its last files).
TASK_LATEST = 12


def thumbnail_url(job_id: int, files: OutputFiles, index: int) -> str:
    return f"/jobs/{job_id}/{files.block}/{files.task}/files/{index}"


def placeholder(reason: str) -> bytes:
    """The image shown for a file with no thumbnail; ``reason`` is its title (a tooltip)."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="192" height="108" viewBox="0 0 192 108">'
            f"<title>{escape(reason)}</title>"
            '<rect width="192" height="108" fill="#333"/><text x="96" y="58" fill="#bbb" '
            'font-family="sans-serif" font-size="14" text-anchor="middle">no preview</text></svg>').encode()


def _readable_job(ctx: WebContext, call: Call, job_id: int) -> Job:
    job = ctx.farm.job(job_id)
    ctx.farm.check_may_read_output(call.user, job, ctx.output_readers)
    return job


def _reported(ctx: WebContext, job_id: int) -> list[OutputFiles]:
    return ctx.outputs.job_files(job_id) if ctx.outputs is not None else []


def _strip(job_id: int, shown: list[tuple[OutputFiles, int]]) -> Tag:
    return tags.div([tags.a(tags.img(src=thumbnail_url(job_id, files, i), alt=files.paths[i], loading="lazy",
                                     class_="thumbnail"),
                            href=f"/jobs/{job_id}/{files.block}/{files.task}", title=files.paths[i])
                     for files, i in shown], class_="thumbnails")


def latest_frames(ctx: WebContext, call: Call, job_id: int) -> Tag | str:
    """The job page's thumbnails of its last tasks' frames ("" when none, or the user may not see)."""
    try:
        job = _readable_job(ctx, call, job_id)
    except (errors.NotAuthenticated, errors.PermissionDenied):  # the page shows the rest
        return ""
    if ctx.previews is None:
        return ""
    runs = job_output_files(job, _reported(ctx, job_id), most=LATEST)
    shown = [(files, i) for files in runs for i in range(len(files.paths))][-LATEST:]
    if not shown:
        return ""
    return tags.div(tags.h2("Latest frames", tags.span(f" the last {len(shown)} files", class_="muted")),
                    _strip(job_id, shown))


def task_frames(ctx: WebContext, call: Call, key: tuple[int, int, int]) -> Tag | str:
    """The task page's thumbnails of its latest run's files ("" when none, or the user may not see)."""
    job_id, block, number = key
    try:
        _readable_job(ctx, call, job_id)
    except (errors.NotAuthenticated, errors.PermissionDenied):
        return ""
    files = _task_files(ctx, key)
    if files is None or ctx.previews is None:
        return ""
    shown = [(files, i) for i in range(len(files.paths))][-TASK_LATEST:]
    return tags.div(tags.h2(f"Frames of run {files.run}",
                            tags.span(f" {len(shown)} of {len(files.paths)} files", class_="muted")),
                    _strip(job_id, shown))


def _task_files(ctx: WebContext, key: tuple[int, int, int]) -> OutputFiles | None:
    task = ctx.farm.task(key)
    return task_output_files(task, ctx.outputs.task_files(key) if ctx.outputs is not None else None)


class PreviewPages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    async def files(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        job = _readable_job(self.ctx, call, job_id)
        result: list[dict[str, Any]] = [
            {"block": f.block, "task": f.task, "run": f.run,
             "files": [{"path": p, "thumbnail": thumbnail_url(job_id, f, i)} for i, p in enumerate(f.paths)]}
            for f in job_output_files(job, _reported(self.ctx, job_id))]
        return json_reply({"result": result})

    async def thumbnail(self, call: Call) -> Reply:
        g = call.groups
        job_id, block, task, index = int(g["job"]), int(g["block"]), int(g["task"]), int(g["file"])
        _readable_job(self.ctx, call, job_id)
        files = _task_files(self.ctx, (job_id, block, task))
        if files is None or index >= len(files.paths) or self.ctx.previews is None:
            raise HTTPError(404, f"job {job_id} block {block} task {task} has no output file {index}")
        try:
            png = await self.ctx.previews.thumbnail(job_id, files.paths[index])
        except PreviewError as e:  # the page shows a placeholder, the reason as its tooltip
            return Reply(placeholder(str(e)), 404, "image/svg+xml",
                         ((b"cache-control", b"private, max-age=10"),))
        return Reply(png, 200, "image/png", ((b"cache-control", b"private, max-age=60"),))
