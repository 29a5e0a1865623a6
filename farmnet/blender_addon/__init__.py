"""farmnet's Blender add-on: submit the saved scene to a farmnet server, from Blender.

A panel in Properties > Output ("farmnet") with the server, frame range, frames per task, priority and
output path, and a button (the ``farmnet.submit`` operator) that submits the saved .blend file as a
Blender job (:func:`farmnet.client.blender.blender_job`) through farmnet's client library and shows the
job id.  The file must be saved (the renders read it from disk); unsaved changes are saved first.

Install: farmnet must be importable by Blender's Python (``pip install farmnet`` into it, or add the
checkout to its path), then enable this package as an add-on (copy or link ``farmnet/blender_addon`` into
Blender's add-ons directory as ``farmnet_submit``), or from a script: ``farmnet.blender_addon.register()``.
"""


from typing import Any

import bpy

bl_info = {
    "name": "farmnet submitter",
    "author": "farmnet",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Properties > Output > farmnet",
    "description": "Render the saved scene on a farmnet render farm",
    "category": "Render",
}

__all__ = ["FARMNET_OT_submit", "FARMNET_PT_submit", "FarmnetSettings", "register", "submit", "unregister"]


class FarmnetSettings(bpy.types.PropertyGroup):
    """The submit settings, kept in the scene (saved with the file)."""

    server: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Server", default="", description="HOST[:PORT] of the farmnet server ('' : farmnet's config)")
    use_scene_range: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Scene Frame Range", default=True, description="Render the scene's frame range")
    frame_start: bpy.props.IntProperty(name="Start", default=1)  # type: ignore[valid-type]
    frame_end: bpy.props.IntProperty(name="End", default=250)  # type: ignore[valid-type]
    chunk: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Frames per Task", default=1, min=1, description="Frames each farm task renders")
    priority: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Priority", default=99, min=0, max=250)
    output: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Output", default="", subtype="FILE_PATH",
        description="Output path pattern, #### the frame ('' : the scene's output path)")
    job_name: bpy.props.StringProperty(name="Job Name", default="")  # type: ignore[valid-type]
    job_id: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Job", default=0, description="The id of the job last submitted")


def submit(context: Any) -> int:
    """Submit the context's saved scene as a Blender job; return the job id.  Raises on failure."""
    from farmnet.client.blender import blender_job
    from farmnet.client.sync import SyncFarmClient

    scene = context.scene
    settings = scene.farmnet
    if not bpy.data.is_saved:
        raise RuntimeError("save the .blend file first: the renders read it from disk")
    if bpy.data.is_dirty:
        bpy.ops.wm.save_mainfile()
    start, end = ((scene.frame_start, scene.frame_end) if settings.use_scene_range
                  else (settings.frame_start, settings.frame_end))
    output = bpy.path.abspath(settings.output or scene.render.filepath)
    spec = blender_job(bpy.data.filepath, start, end, chunk=settings.chunk, output=output,
                       scene=scene.name, name=settings.job_name, priority=settings.priority)
    with SyncFarmClient(server=settings.server or None) as farm:
        job_id, _warnings = farm.submit(spec)
    settings.job_id = job_id
    return job_id


class FARMNET_OT_submit(bpy.types.Operator):
    """Render the saved scene on the farmnet farm"""

    bl_idname = "farmnet.submit"
    bl_label = "Submit to farmnet"

    def execute(self, context: Any) -> set[str]:
        try:
            job_id = submit(context)
        except Exception as e:  # the farm's error, a refused job, no server: say it in Blender
            self.report({"ERROR"}, f"farmnet: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"farmnet: submitted job {job_id}")
        return {"FINISHED"}


class FARMNET_PT_submit(bpy.types.Panel):
    bl_label = "farmnet"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"

    def draw(self, context: Any) -> None:
        settings = context.scene.farmnet
        layout = self.layout
        layout.prop(settings, "server")
        layout.prop(settings, "use_scene_range")
        row = layout.row(align=True)
        row.enabled = not settings.use_scene_range
        row.prop(settings, "frame_start")
        row.prop(settings, "frame_end")
        layout.prop(settings, "chunk")
        layout.prop(settings, "priority")
        layout.prop(settings, "output")
        layout.prop(settings, "job_name")
        layout.operator(FARMNET_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if settings.job_id:
            layout.label(text=f"Submitted: job {settings.job_id}")


_CLASSES = (FarmnetSettings, FARMNET_OT_submit, FARMNET_PT_submit)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.farmnet = bpy.props.PointerProperty(type=FarmnetSettings)


def unregister() -> None:
    del bpy.types.Scene.farmnet
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
