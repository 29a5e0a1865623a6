"""Make a small scene with bpy and submit it with farmnet's Blender add-on (run as a child process).

    python tests/blender_scene.py SERVER BLEND OUTPUT FIRST LAST CHUNK

A few objects, a camera, a light; 64x36 pixels, Cycles on the CPU at 16 samples: a frame renders in a
fraction of a second.  The objects move, so each frame differs.  Prints ``job N`` once submitted.
"""

import os
import sys

import bpy

import farmnet.blender_addon


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
    server, path, output, first, last, chunk = sys.argv[1:7]
    make_scene(path, output, int(first), int(last))
    farmnet.blender_addon.register()
    settings = bpy.context.scene.farmnet
    settings.server = server
    settings.chunk = int(chunk)
    settings.priority = 120
    settings.job_name = "blender e2e"
    result = bpy.ops.farmnet.submit()
    print(f"operator {sorted(result)}", flush=True)
    if "FINISHED" not in result:
        sys.exit(1)
    print(f"job {settings.job_id}", flush=True)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # bpy's teardown at exit can crash (SIGSEGV): the work is done
