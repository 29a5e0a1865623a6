"""The web side of rendered frames: a job's output files and their thumbnails.

``/jobs/ID/BLOCK/TASK/files/N``    the thumbnail (PNG) of file N of the task's latest run that wrote files
``/api/jobs/ID/files``             the job's output files (JSON), each with its thumbnail's URL
and the job page's "Latest frames" (:func:`latest_frames`).  The thumbnails are made by
:class:`farmnet.server.previews.Previews` (in threads, cached).  Output files are task output: who may
read a task's output may see them.
"""

from __future__ import annotations

from typing import Any

from twisted.web.template import Tag, tags

from farmnet import errors
from farmnet.messages import OutputFiles
from farmnet.server.previews import PreviewError
from farmnet.web.context import WebContext
from farmnet.web.routing import Call, HTTPError, Reply, json_reply

__all__ = ["LATEST", "PreviewPages", "latest_frames", "thumbnail_url"]

#: Thumbnails the job page shows.
LATEST = 6


def thumbnail_url(job_id: int, files: OutputFiles, index: int) -> str:
    return f"/jobs/{job_id}/{files.block}/{files.task}/files/{index}"


def _job_files(ctx: WebContext, call: Call, job_id: int) -> list[OutputFiles]:
    job = ctx.farm.job(job_id)
    ctx.farm.check_may_read_output(call.user, job, ctx.output_readers)
    return ctx.outputs.job_files(job_id) if ctx.outputs is not None else []


def latest_frames(ctx: WebContext, call: Call, job_id: int) -> Tag | str:
    """The job page's thumbnails of its last written frames ("" when it wrote none, or may not see)."""
    try:
        runs = _job_files(ctx, call, job_id)
    except (errors.NotAuthenticated, errors.PermissionDenied):  # the page shows the rest
        return ""
    shown = [(files, i) for files in runs for i in range(len(files.paths))][-LATEST:]
    if not shown or ctx.previews is None:
        return ""
    figures = [tags.a(tags.img(src=thumbnail_url(job_id, files, i), alt=files.paths[i], loading="lazy",
                               class_="thumbnail"),
                      href=f"/jobs/{job_id}/{files.block}/{files.task}", title=files.paths[i])
               for files, i in shown]
    total = sum(len(f.paths) for f in runs)
    return tags.div(tags.h2("Latest frames", tags.span(f" {len(shown)} of {total} files", class_="muted")),
                    tags.div(figures, class_="thumbnails"))


class PreviewPages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    async def files(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        result: list[dict[str, Any]] = [
            {"block": f.block, "task": f.task, "run": f.run,
             "files": [{"path": p, "thumbnail": thumbnail_url(job_id, f, i)} for i, p in enumerate(f.paths)]}
            for f in _job_files(self.ctx, call, job_id)]
        return json_reply({"result": result})

    async def thumbnail(self, call: Call) -> Reply:
        g = call.groups
        job_id, block, task, index = int(g["job"]), int(g["block"]), int(g["task"]), int(g["file"])
        runs = {(f.block, f.task): f for f in _job_files(self.ctx, call, job_id)}
        files = runs.get((block, task))
        if files is None or index >= len(files.paths) or self.ctx.previews is None:
            raise HTTPError(404, f"job {job_id} block {block} task {task} has no output file {index}")
        try:
            png = await self.ctx.previews.thumbnail(job_id, files.paths[index])
        except PreviewError as e:
            raise HTTPError(404, str(e)) from None
        return Reply(png, 200, "image/png", ((b"cache-control", b"private, max-age=60"),))

