"""Blender jobs from Python: :func:`blender_job` builds the job mapping ``submit`` sends.

.. code-block:: python

    from farmnet.client.blender import blender_job
    from farmnet.client.sync import SyncFarmClient

    with SyncFarmClient() as farm:
        job_id, warnings = farm.submit(blender_job("/projects/shot.blend", 1, 24, chunk=2,
                                                   output="/renders/shot/frame_####", samples=64))

The server turns the block's ``blender`` mapping into Blender's command line
(:mod:`farmnet.model.blender`); the renders run it with their ``blender`` program or the bpy module.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["blender_job"]


def blender_job(file: str, frame_first: int, frame_last: int, *, chunk: int = 1, output: str = "",
                format: str = "", engine: str = "", samples: int = 0, scene: str = "", camera: str = "",
                view_layer: str = "", name: str = "", priority: int | None = None,
                **job_keys: Any) -> dict[str, Any]:
    """A job rendering frames ``frame_first``..``frame_last`` of ``file``, ``chunk`` frames a task.

    ``output`` is Blender's output path pattern (``#`` the frame's digits; "" keeps the file's), the
    other keywords override the file's settings when given.  ``job_keys`` are any other job keys
    (``depend_mask``, ``hosts_mask``, ...; see doc/jobs.md).
    """
    settings = {"file": file, "output": output, "format": format, "engine": engine, "samples": samples,
                "scene": scene, "camera": camera, "view_layer": view_layer}
    block = {"name": "blender", "frame_first": frame_first, "frame_last": frame_last,
             "frames_per_task": chunk, "blender": {k: v for k, v in settings.items() if v}}
    job: dict[str, Any] = {"name": name or os.path.basename(file), **job_keys, "blocks": [block]}
    if priority is not None:
        job["priority"] = priority
    return job
