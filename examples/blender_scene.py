"""Make a small scene with bpy, and submit it with farmnet's Blender add-on (as an artist would).

    python examples/blender_scene.py SCENE.blend [--frames 1-6] [--output //frames/f_####]
                                     [--submit SERVER --chunk 2 --priority 99 --name NAME]

A few objects, a camera, a light; 64x36 pixels, Cycles on the CPU at 16 samples: a frame renders in a
fraction of a second.  The cube moves, so each frame differs.  With --submit, registers farmnet's add-on
and runs its operator (``bpy.ops.farmnet.submit()``), then prints ``job N``.  Used by the Blender tests,
bench/blender.py and doc/blender.md.
"""

import argparse
import os
import sys

import bpy


def make_scene(path: str, output: str, first: int, last: int) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_cube_add(location=(0, 0, 0))
    cube = bpy.context.object
    cube.keyframe_insert("location", frame=first)
    cube.location = (0, 0, 2)
    cube.keyframe_insert("location", frame=last)
    bpy.ops.mesh.primitive_uv_sphere_add(location=(2, 0, 0), segments=16, ring_count=8)
    bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -1))
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    camera.location, camera.rotation_euler = (6, -6, 4), (1.1, 0, 0.78)
    scene.camera = camera
    light = bpy.data.objects.new("Light", bpy.data.lights.new("Light", "POINT"))
    light.data.energy = 1000
    scene.collection.objects.link(light)
    light.location = (3, -3, 5)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 36, 100
    scene.render.filepath = output
    scene.frame_start, scene.frame_end = first, last
    bpy.ops.wm.save_as_mainfile(filepath=path)


def main() -> None:
    parser = argparse.ArgumentParser(description="Make a small Blender scene; submit it with the add-on.")
    parser.add_argument("blend", help="where to save the .blend file")
    parser.add_argument("--frames", default="1-6", metavar="FIRST-LAST")
    parser.add_argument("--output", default="//frames/f_####", help="the scene's output path")
    parser.add_argument("--submit", metavar="SERVER", help="then submit it with farmnet's add-on")
    parser.add_argument("--chunk", type=int, default=1, help="frames per task, with --submit")
    parser.add_argument("--priority", type=int, default=99, help="with --submit")
    parser.add_argument("--name", default="", help="the job's name, with --submit")
    args = parser.parse_args()
    first, _, last = args.frames.partition("-")
    make_scene(args.blend, args.output, int(first), int(last or first))
    print(f"saved {args.blend}", flush=True)
    if args.submit is None:
        return
    import farmnet.blender_addon

    farmnet.blender_addon.register()
    settings = bpy.context.scene.farmnet
    settings.server, settings.chunk, settings.priority = args.submit, args.chunk, args.priority
    settings.job_name = args.name
    result = bpy.ops.farmnet.submit()
    print(f"operator {sorted(result)}", flush=True)
    if "FINISHED" not in result:
        sys.stdout.flush()
        os._exit(1)
    print(f"job {settings.job_id}", flush=True)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # bpy's teardown at exit can crash (SIGSEGV): the work is done
