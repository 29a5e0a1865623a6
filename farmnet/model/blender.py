"""The Blender job type: a block with a ``blender`` mapping instead of a command.

.. code-block:: yaml

    name: shot 10
    blocks:
      - name: render
        frame_first: 1
        frame_last: 24
        frames_per_task: 2
        blender:
          file: /projects/shot10/lighting.blend   # required
          output: /renders/shot10/frame_####     # Blender's -o; "" keeps the file's own output path
          format: PNG                             # -F; "" keeps the file's
          engine: CYCLES                          # -E; "" keeps the file's
          samples: 64                             # Cycles' and EEVEE's render samples; 0 keeps the file's
          scene: ""                               # -S; "" the file's active scene
          camera: ""                              # the scene's camera, by object name
          view_layer: ""                          # render this view layer only

The block becomes an ordinary one: the ``blender`` service and parser (unless the block names others),
and Blender's own command line, one chunk of frames a task::

    blender -b FILE [-S SCENE] [-E ENGINE] [--python-expr OVERRIDES] [-o OUTPUT] [-F FORMAT] -s @#@ -e @#@ -a

so a render runs it with its ``blender`` program, or with the bpy module (:mod:`farmnet.render.blender`).
Samples, camera and view layer have no Blender option; a short ``--python-expr`` sets them after the
file is read, as studios' submitters do.  No I/O here: the file is read by the render.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

__all__ = ["BLENDER_KEYS", "blender_command", "expand_blender_block"]

#: The keys of a block's ``blender`` mapping, and their types.
BLENDER_KEYS: Mapping[str, type] = {
    "file": str, "output": str, "format": str, "engine": str, "samples": int,
    "scene": str, "camera": str, "view_layer": str,
}


def blender_command(file: str, *, output: str = "", format: str = "", engine: str = "", samples: int = 0,
                    scene: str = "", camera: str = "", view_layer: str = "") -> str:
    """Blender's command line for one chunk of frames (``@#@ @#@``: the task's first and last frame)."""
    words = ["blender", "-b", file]
    if scene:
        words += ["-S", scene]
    if engine:
        words += ["-E", engine]
    overrides = _overrides(samples=samples, scene=scene, camera=camera, view_layer=view_layer)
    if overrides:
        words += ["--python-expr", overrides]
    if output:
        words += ["-o", output]
    if format:
        words += ["-F", format]
    return shlex.join(words) + " -s @#@ -e @#@ -a"


def _overrides(*, samples: int, scene: str, camera: str, view_layer: str) -> str:
    """Python that sets what Blender has no option for (one line: it is shown in listings)."""
    steps = []
    if samples:
        steps += [f"s.cycles.samples = {samples}", f"s.eevee.taa_render_samples = {samples}"]
    if camera:
        steps.append(f"s.camera = bpy.data.objects[{_py(camera)}]")
    if view_layer:
        # Indexing first: a missing layer is a KeyError (the run fails), not a render of nothing.
        steps += [f"s.view_layers[{_py(view_layer)}]",
                  f'[setattr(v, "use", v.name == {_py(view_layer)}) for v in s.view_layers]']
    if not steps:
        return ""
    the_scene = f"bpy.data.scenes[{_py(scene)}]" if scene else "bpy.context.scene"
    return "; ".join([f"import bpy; s = {the_scene}", *steps])


def _py(name: str) -> str:
    """A Python string literal in double quotes (JSON's are Python's), so the shell's single quotes
    around the expression stay simple."""
    return json.dumps(name)


def expand_blender_block(raw: Mapping[str, Any], path: str) -> tuple[dict[str, Any], list[str]]:
    """The block mapping ``raw`` with its ``blender`` mapping turned into a command, and the errors
    (each with its key path); unchanged when it has none."""
    if "blender" not in raw:
        return dict(raw), []
    where = f"{path}.blender"
    section = raw["blender"]
    block = {k: v for k, v in raw.items() if k != "blender"}
    if not isinstance(section, Mapping):
        return block, [f"{where}: expected a mapping of {', '.join(BLENDER_KEYS)}, "
                       f"got {type(section).__name__}"]
    errors = []
    values: dict[str, Any] = {}
    for key, value in section.items():
        kind = BLENDER_KEYS.get(str(key))
        if kind is None:
            errors.append(f"{where}.{key}: unknown key; one of {', '.join(BLENDER_KEYS)}")
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            errors.append(f"{where}.{key}: expected a whole number >= 0, got {value!r}")
        elif kind is str and not isinstance(value, str):
            errors.append(f"{where}.{key}: expected a string, got {type(value).__name__}")
        elif kind is str and any(c in value for c in "\n\r\0"):
            errors.append(f"{where}.{key}: must be one line")
        else:
            values[str(key)] = value
    if not values.get("file") and not any(e.startswith(f"{where}.file:") for e in errors):
        errors.append(f"{where}.file: a Blender block needs the .blend file to render")
    if block.get("command"):
        errors.append(f"{path}.command: a Blender block makes its own command; leave it out")
    if block.get("tasks") is not None:
        errors.append(f"{path}.tasks: a Blender block renders a frame range (frame_first, frame_last, "
                      "frames_per_task), not explicit tasks")
    if errors:
        return block, errors
    block["command"] = blender_command(**values)
    block.setdefault("service", "blender")
    block.setdefault("parser", "blender")
    return block, []
