"""The garbage collector set for a farm server: a few hundred thousand long-lived objects
(jobs, blocks, tasks, renders) and a few short-lived ones per task start and finish.

Python's collector walks every tracked object on a full collection and runs a young one
every 700 allocations; on a loaded farm that walk is what a start or finish pays for
(bench/solve.py: about a tenth of its time). Once the farm is loaded, `settle_after_load`
moves what is loaded out of the collector's walk (``gc.freeze``) and collects the young
generation every 20,000 allocations instead.
"""

from __future__ import annotations

import gc

#: Allocations between collections of the young generation (Python's default: 700).
YOUNG_THRESHOLD = 20_000


def settle_after_load() -> None:
    """Call once the farm is loaded. The loaded objects are not collected as cycles any more:
    a job loaded at start and deleted later keeps its memory until the process ends, so the
    cost is bounded by what was loaded (objects made later are collected as usual)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
