"""Blender's command line, run by the bpy module: ``python -m farmnet.render.bpyrunner -b scene.blend -a``.

For render hosts without a ``blender`` program but with the ``bpy`` module (``pip install
farmnet[blender]``): the blender services run a bare ``blender`` command through this runner (see
:mod:`farmnet.render.blender`).  It reads Blender's arguments in order, as Blender does, so that
``-b FILE -S SCENE -E ENGINE --python-expr ... -o OUT -s 1 -e 4 -a`` does the same here, and Blender's own
render code prints the same ``Fra:`` and ``Saved:`` lines the blender parser reads.  The arguments known:

``-b``/``--background``, ``-noaudio``, ``--factory-startup``, ``-y``/``-Y``, ``--``: accepted (no effect);
a ``.blend`` path: opened; ``-S``/``--scene``; ``-E``/``--engine``; ``-o``/``--render-output``;
``-F``/``--render-format``; ``-x``/``--use-extension``; ``-s``/``-e``/``-j`` (``--frame-start``, ...);
``-t``/``--threads``; ``-a``/``--render-anim``; ``-f``/``--render-frame`` (``N``, ``N,M``, ``N..M``);
``--python-expr``; ``-P``/``--python``.  Anything else is an error (``Error: unknown argument``).

Errors print ``Error: ...`` and exit with status 1 (Blender itself exits 0 after some of them; the
blender parser fails such a run either way).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BpyRunner", "RunnerError", "frames_of", "main"]


class RunnerError(Exception):
    """A bad argument or a failed step: printed as Blender's ``Error:`` line."""


def frames_of(text: str, start: int, end: int) -> list[int]:
    """Blender's ``-f`` argument: ``N``, ``N,M``, ``N..M``; ``+N``/``-N``: from the scene's start/end."""
    frames: list[int] = []
    for part in text.split(","):
        first, dots, last = part.partition("..")
        try:
            a = _frame(first, start, end)
            b = _frame(last, start, end) if dots else a
        except ValueError:
            raise RunnerError(f"'{text}' is not a frame, a list or a range of frames") from None
        frames.extend(range(a, b + 1))
    return frames


def _frame(text: str, start: int, end: int) -> int:
    text = text.strip()
    if text.startswith("+"):
        return start + int(text[1:])
    if text.startswith("-") and text[1:].isdigit():
        return end - int(text[1:])
    return int(text)


class BpyRunner:
    """One Blender command line, argument after argument, with ``bpy``."""

    def __init__(self, bpy: Any, out: Callable[[str], None]) -> None:
        self.bpy = bpy
        self.out = out
        self.scene: Any = None
        self.threads: int | None = None

    def current_scene(self) -> Any:
        if self.scene is None or self.scene.name not in self.bpy.data.scenes:
            self.scene = self.bpy.context.scene
        return self.scene

    def run(self, argv: list[str]) -> None:
        args = iter(argv)
        for arg in args:
            if arg == "--":
                return
            self.argument(arg, args)

    def argument(self, arg: str, args: Iterator[str]) -> None:
        bpy = self.bpy

        def value() -> str:
            try:
                return next(args)
            except StopIteration:
                raise RunnerError(f"{arg} needs a value") from None

        def number() -> int:
            text = value()
            try:
                return int(text)
            except ValueError:
                raise RunnerError(f"{arg}: '{text}' is not a number") from None

        if arg in ("-b", "--background", "-noaudio", "--factory-startup", "-y", "--enable-autoexec",
                   "-Y", "--disable-autoexec"):
            return
        if not arg.startswith("-"):
            self.open(arg)
        elif arg in ("-S", "--scene"):
            name = value()
            scene = bpy.data.scenes.get(name)
            if scene is None:
                raise RunnerError(f"no scene '{name}' (scenes: {', '.join(s.name for s in bpy.data.scenes)})")
            self.scene = scene
            if bpy.context.window is not None:
                bpy.context.window.scene = scene
        elif arg in ("-E", "--engine"):
            engine = value()
            engines = _engines(bpy)
            engine = _ENGINE_NAMES.get(engine, engine)
            if engine not in engines:
                raise RunnerError(f"engine '{engine}' not found (engines: {', '.join(sorted(engines))})")
            self.current_scene().render.engine = engine
        elif arg in ("-o", "--render-output"):
            self.current_scene().render.filepath = value()
        elif arg in ("-F", "--render-format"):
            fmt = value()
            try:
                self.current_scene().render.image_settings.file_format = fmt
            except TypeError:
                raise RunnerError(f"format '{fmt}' is not known") from None
        elif arg in ("-x", "--use-extension"):
            self.current_scene().render.use_file_extension = bool(number())
        elif arg in ("-s", "--frame-start"):
            self.current_scene().frame_start = number()
        elif arg in ("-e", "--frame-end"):
            self.current_scene().frame_end = number()
        elif arg in ("-j", "--frame-jump"):
            self.current_scene().frame_step = number()
        elif arg in ("-t", "--threads") or arg.startswith("--threads="):
            threads = int(arg.partition("=")[2]) if "=" in arg else number()
            self.threads = threads
        elif arg in ("-a", "--render-anim"):
            scene = self.current_scene()
            self.render(scene, animation=True)
        elif arg in ("-f", "--render-frame"):
            scene = self.current_scene()
            span = scene.frame_start, scene.frame_end
            try:
                for frame in frames_of(value(), *span):
                    # An animation of one frame: the output path's #### is the frame, as in Blender's -f.
                    scene.frame_start = scene.frame_end = frame
                    self.render(scene, animation=True)
            finally:
                scene.frame_start, scene.frame_end = span
        elif arg == "--python-expr":
            self.python(value(), "<string>")
        elif arg in ("-P", "--python"):
            path = value()
            try:
                with open(path, encoding="utf-8") as f:
                    code = f.read()
            except OSError as e:
                raise RunnerError(f"cannot read Python file: {e}") from None
            self.python(code, path)
        else:
            raise RunnerError(f"unknown argument '{arg}' (see farmnet.render.bpyrunner's docstring)")

    def python(self, code: str, filename: str) -> None:
        """Run Python as Blender's ``--python-expr``/``--python`` do; a failure ends the run (Blender
        goes on after it, leaving a render with the wrong settings)."""
        try:
            exec(compile(code, filename, "exec"), {"__name__": "__main__", "__file__": filename})  # noqa: S102
        except Exception as e:
            frames = e.__traceback__.tb_next if e.__traceback__ else None  # from the script's own frame
            lines = traceback.format_exception(type(e), e, frames)
            self.out("".join(lines).rstrip("\n"))
            raise RunnerError(f"Python script {filename} failed: {type(e).__name__}") from None

    def open(self, path: str) -> None:
        if not os.path.exists(path):
            raise RunnerError(f'Cannot read file "{os.path.abspath(path)}": No such file or directory')
        try:
            self.bpy.ops.wm.open_mainfile(filepath=path)
        except RuntimeError as e:
            raise RunnerError(str(e).removeprefix("Error: ").strip()) from None
        self.scene = None  # Blender printed 'Read blend: "PATH"'

    def render(self, scene: Any, *, animation: bool) -> None:
        if self.threads is not None:
            scene.render.threads_mode = "AUTO" if self.threads == 0 else "FIXED"
            if self.threads > 0:
                scene.render.threads = self.threads
        result = self.bpy.ops.render.render(animation=animation, write_still=not animation, scene=scene.name)
        if "FINISHED" not in result:
            raise RunnerError(f"render of scene '{scene.name}' did not finish: {', '.join(result)}")


# Blender's -E accepts the engines' enum names; EEVEE's changed in 4.2.
_ENGINE_NAMES = {"EEVEE": "BLENDER_EEVEE_NEXT", "BLENDER_EEVEE": "BLENDER_EEVEE_NEXT",
                 "WORKBENCH": "BLENDER_WORKBENCH"}


def _engines(bpy: Any) -> set[str]:
    prop = bpy.types.RenderSettings.bl_rna.properties["engine"]
    return {item.identifier for item in prop.enum_items} | {"CYCLES", "BLENDER_WORKBENCH",
                                                             "BLENDER_EEVEE_NEXT"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        import bpy
    except ImportError as e:
        out(f"Error: the bpy module is not installed here (pip install 'farmnet[blender]'): {e}")
        return 1
    out(f"Blender {bpy.app.version_string} (bpy module, farmnet.render.bpyrunner)")
    code = 0
    try:
        BpyRunner(bpy, out).run(args)
    except RunnerError as e:
        out(f"Error: {e}")
        code = 1
    out("")
    out("Blender quit")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    # os._exit: bpy's atexit handlers can take seconds (and crash) tearing Blender down.
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
