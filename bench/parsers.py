"""Output parsers on the render: MB of task output read per second, per parser.

    python bench/parsers.py [--mb 64] [--chunk 65536] [--parsers generic,nuke,hbatch_mantra,ffmpeg]

Feeds ``--mb`` MB of a renderer's chatty log (80-byte lines, one progress line in ten, in
``--chunk``-byte chunks as the render reads a task's pipe) to one parser of each name, and
prints MB/s: what a task printing that fast costs the render's reactor.  A parser the checkout
lacks is skipped.  Run the old code with PYTHONPATH=/path/to/old/checkout to compare.
"""

from __future__ import annotations

import argparse
import time

from farmnet.render.parsers import builtin_parsers, parser_by_name

_NOISE = b"00:00:12  1431MB         | [texturesys] loaded /proj/tex/rock_diffuse_v012.1001.tx\n"
_PROGRESS = {
    "generic": b"rendering frame 12: 45% of it done, 12345 rays per pixel, still going on\n",
    "nuke": b"Writing /shots/sq010/sh020/render/sh020_comp_v012.0101.exr took 2.41 seconds\n",
    "hbatch_mantra": b"ALF_PROGRESS 45%  ......................................................\n",
    "ffmpeg": b"frame=   25 fps=0.0 q=28.0 size=256kB time=00:00:01.00 bitrate=2096.9kbits/s\r",
    "redshift": b"\tBlock 32/48 (7,4) rendered by GPU 0 in 2ms ................................\n",
}


def sample(name: str, size: int) -> bytes:
    block = _NOISE * 9 + _PROGRESS.get(name, _PROGRESS["generic"])
    return block * (size // len(block) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--parsers", default="generic,nuke,hbatch_mantra,ffmpeg,redshift")
    args = parser.parse_args()
    size = args.mb << 20
    for name in args.parsers.split(","):
        if name not in builtin_parsers():
            print(f"{name:>14}: not in this checkout")
            continue
        data = sample(name, size)
        chunks = [data[i:i + args.chunk] for i in range(0, size, args.chunk)]
        reader = parser_by_name(name, order={"frame_start": 1, "frame_end": 10})
        start = time.perf_counter()
        for chunk in chunks:
            reader.feed(chunk)
        took = time.perf_counter() - start
        print(f"{name:>14}: {args.mb / took:8.1f} MB/s ({took:.2f} s for {args.mb} MB)")


if __name__ == "__main__":
    main()
