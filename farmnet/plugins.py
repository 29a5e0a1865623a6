"""Loading plug-ins named in the configuration (service and parser classes, event
services): one loader for the render and the system job's programs."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(spec: str) -> Any:
    """The object named ``"package.module:Name"`` (or ``"package.module.Name"``), imported.

    Raises ImportError (with the reason) when it cannot.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise ImportError(f"{spec!r} is not a class name (expected package.module:Class)")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # a plug-in may fail any way at import: report it, never crash
        raise ImportError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no {attribute!r}") from None
    return obj
