"""``deletefiles [-s] [-q] [-d] PATH...``: the post command CGRU's ``af.Job.setPostDeleteFiles``
and its submitters (Houdini's "delete ROP files") write, for renders without CGRU installed.

The ``postcmd`` service runs this module when a post command starts with ``deletefiles``. Each
PATH is a file (removed), a directory (removed with what it holds) or a pattern with ``*``
(whatever matches is removed; nothing matching is no error, as with ``rm -f``). A PATH that does
not exist makes the exit status 1 unless ``-s``; ``-d`` only says what it would remove.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
from collections.abc import Sequence


def remove(path: str, dry_run: bool) -> None:
    """Remove one file, link or directory tree; raises OSError when that fails."""
    if dry_run:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deletefiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--exitsuccess", action="store_true", help="exit 0 whatever happened")
    parser.add_argument("-q", "--quiet", action="store_true", help="say nothing but errors")
    parser.add_argument("-d", "--debug", action="store_true", help="remove nothing, say what would go")
    parser.add_argument("paths", nargs="+", metavar="PATH")
    args = parser.parse_args(argv)
    status = 0
    for pattern in args.paths:
        if "*" in pattern:
            paths = sorted(glob.glob(pattern))
        elif os.path.lexists(pattern):
            paths = [pattern]
        else:
            print(f"deletefiles: {pattern}: no such file or directory", file=sys.stderr)
            status = 1
            continue
        for path in paths:
            try:
                remove(path, args.debug)
            except OSError as e:
                print(f"deletefiles: {path}: {e.strerror or e}", file=sys.stderr)
                status = 1
            else:
                if not args.quiet:
                    print(f"{'would delete' if args.debug else 'deleted'} {path}")
    return 0 if args.exitsuccess else status


if __name__ == "__main__":
    sys.exit(main())
