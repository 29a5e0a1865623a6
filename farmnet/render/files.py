"""A task's output files, as Afanasy's services check them (its block's ``files``, ``@#@`` filled per
frame, relative to the working directory): after a successful run (the checkrenderedfiles flag) each
must exist with a size within ``file_size_min`` .. ``file_size_max`` bytes (a bound <= 0 is none), or
the run is an error; before a run (skipexistingfiles), when every one already does, the command is
not run and the task is done.  A few stat calls, on the reactor thread, as Afanasy's render does them
in its own process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["all_exist", "rendered_files_problem"]


def _problem(path: str, size_min: int, size_max: int, what: str) -> str | None:
    try:
        size = os.stat(path).st_size
    except OSError:
        return f"{what} file does not exist: {path}"
    if size_min > 0 and size < size_min:
        return f"{what} file size less than minimum ({size} < {size_min}): {path}"
    if size_max > 0 and size > size_max:
        return f"{what} file size greater than maximum ({size} > {size_max}): {path}"
    return None


def rendered_files_problem(files: Sequence[str], directory: str, size_min: int = -1,
                           size_max: int = -1) -> str | None:
    """Why the run's files are not right (the first problem), or None."""
    for name in files:
        if name:
            problem = _problem(os.path.join(directory, name), size_min, size_max, "rendered")
            if problem is not None:
                return problem
    return None


def all_exist(files: Sequence[str], directory: str, size_min: int = -1, size_max: int = -1) -> bool:
    """Every file is there, with a size within bounds (skipexistingfiles)."""
    names = [name for name in files if name]
    return bool(names) and all(
        _problem(os.path.join(directory, name), size_min, size_max, "existing") is None for name in names)
