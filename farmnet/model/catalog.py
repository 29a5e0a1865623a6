"""CGRU's service and parser names: the ones a job from af.py may name, and the parser each service uses.

The server reads this to warn a submitter about a name no render knows (a typo renders with the generic
service and parser, silently, otherwise); the render builds its built-in classes under these names.  A
farm's own classes (the renders' ``service_classes`` / ``parser_classes``) are made known to the server
by its ``scheduling.known_services`` / ``known_parsers`` settings.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from farmnet.config import SchedulingConfig

__all__ = ["PARSERS", "SERVICE_PARSERS", "SERVICES", "known_names", "unknown_name_warning"]

#: Every service CGRU ships (afanasy/python/services), with the parser af.py sets for it when the block
#: names none ("": none).  farmnet's built-ins beside them: ``postcmd``, ``events``, ``wakeonlan``.
SERVICE_PARSERS: Mapping[str, str] = MappingProxyType({
    "afterfx": "afterfx", "arnold": "arnold", "blender": "blender", "blender_internal": "blender_internal",
    "c4d": "c4d", "checksum": "generic", "clarisse": "clarisse", "events": "", "ffmpeg": "ffmpeg",
    "ftp": "generic", "ftrack": "ftrack", "fusion": "fusion", "generic": "generic", "hbatch": "hbatch",
    "hbatch_karma": "hbatch_karma", "hbatch_mantra": "hbatch_mantra", "hbatch_pdg": "generic",
    "hbatch_prman": "hbatch_prman", "hbatch_redshift": "hbatch_redshift",
    "houdinitoarnold": "houdinitoarnold", "htracker": "generic", "karma": "karma", "lightwave": "lightwave",
    "mantra": "mantra", "max": "max", "maya": "", "maya_arnold": "maya_arnold",
    "maya_delight": "maya_delight", "maya_mental": "maya_mental", "maya_redshift": "maya_redshift",
    "mayatoarnold": "mayatoarnold", "mayatomr": "mayatomr", "mayatovray": "mayatovray",
    "mentalray": "mentalray", "movgen": "generic", "natron": "natron", "nuke": "nuke", "postcmd": "",
    "prman": "prman", "redline": "redline", "rsync": "rsync", "shotgun": "shotgun", "system": "generic",
    "test": "generic", "tiles_stitch": "generic", "vray": "vray", "wakeonlan": "", "walk": "generic",
    "xsi": "xsi", "xsi_arnold": "xsi_arnold", "xsi_arnold_watermarked": "xsi_arnold_watermarked",
    "xsi_redshift": "xsi_redshift",
})
SERVICES: frozenset[str] = frozenset(SERVICE_PARSERS)

#: Every parser CGRU ships (afanasy/python/parsers), and farmnet's ``none``.
PARSERS: frozenset[str] = frozenset({
    "afterfx", "arnold", "awscli", "blender", "blender_cycles", "blender_render", "blender_yafray",
    "blender_internal", "c4d", "clarisse", "curl", "ffmpeg", "ftrack", "fusion", "generic", "hbatch",
    "hbatch_karma", "hbatch_mantra", "hbatch_prman", "hbatch_redshift", "houdinitoarnold", "karma",
    "lightwave", "mantra", "max", "maya", "maya_arnold", "maya_delight", "maya_mental", "maya_redshift",
    "mayafumefx", "mayatoarnold", "mayatomr", "mayatovray", "mentalray", "natron", "none", "nuke", "prman",
    "redline", "redshift", "rsync", "rvio", "shotgun", "vray", "xsi", "xsi_arnold",
    "xsi_arnold_watermarked", "xsi_redshift", "yafray",
})


def unknown_name_warning(
    block: str, kind: str, name: str, known: Collection[str], did_you_mean: str = ""
) -> str | None:
    """The submit warning for a block whose service or parser (``kind``) no render is known to have."""
    if not name or name in known:
        return None
    return (f"block {block!r}: {kind} {name!r} is unknown; tasks run with the generic {kind}"
            f"{did_you_mean}")


def known_names(settings: SchedulingConfig) -> dict[str, frozenset[str]]:
    """``parse_job``'s ``known_services`` and ``known_parsers``: CGRU's names and the farm's own."""
    return {"known_services": SERVICES | frozenset(settings.known_services),
            "known_parsers": PARSERS | frozenset(settings.known_parsers)}
