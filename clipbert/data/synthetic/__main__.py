"""Command line: python -m clipbert.data.synthetic --out DIR [--num-videos N] [--seed S] ..."""

from __future__ import annotations

import argparse
import json
import time

from .encode import CODECS
from .generate import DEFAULT_NUM_VIDEOS, generate
from .scene import SIZE_PRESETS


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m clipbert.data.synthetic", description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--num-videos",
        type=int,
        default=None,
        help=f"number of videos (default per size: {DEFAULT_NUM_VIDEOS})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", choices=sorted(CODECS), default="h264")
    parser.add_argument("--size", choices=sorted(SIZE_PRESETS), default="default")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, CPUs))")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = generate(args.out, args.num_videos, args.seed, args.codec, args.size, args.workers, progress=True)
    elapsed = time.perf_counter() - start
    print(json.dumps({"out": args.out, "videos": meta["counts"]["videos"], "seconds": round(elapsed, 1)}))
    return meta


if __name__ == "__main__":
    main()
