"""Command line: python -m clipbert.data.synthetic --out DIR [--num-videos N] [--seed S] ..."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .encode import CODECS
from .generate import DEFAULT_NUM_VIDEOS, generate
from .scene import SIZE_PRESETS


def at_least(low: int, why: str = ""):
    """An argparse type: an int >= low; argparse names the flag in its error, so no traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            because = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be at least {low}{because}, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clipbert.data.synthetic", description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--num-videos",
        type=at_least(3, "one video for each of train, val and test"),
        default=None,
        help=f"number of videos, at least 3 (default per size: {DEFAULT_NUM_VIDEOS})",
    )
    # at_least(0): numpy's SeedSequence rejects a negative seed with a traceback, after --out was created
    parser.add_argument(
        "--seed", type=at_least(0), default=0, help="the same seed, the same files (default 0)"
    )
    parser.add_argument(
        "--codec",
        choices=sorted(CODECS),
        default="h264",
        help=".mp4 / .avi / .webm (default h264; the DALI CPU decoder needs vp9)",
    )
    parser.add_argument(
        "--size",
        choices=sorted(SIZE_PRESETS),
        default="default",
        help="default: 3-30 s videos up to 160 px; tiny (tests): 3-4 s, up to 64 px",
    )
    parser.add_argument(
        "--workers",
        type=at_least(1),
        default=None,
        help="worker processes (default: min(2, CPUs))",
    )
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"argument --out: {args.out} is a file, not a directory")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Exit status: 0 done, 2 a bad flag or an --out that cannot be written, 130 stopped (Ctrl-C)."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        meta = generate(
            args.out, args.num_videos, args.seed, args.codec, args.size, args.workers, progress=True
        )
    except OSError as err:  # --out under a file, read-only, disk full: one line, not a traceback
        print(f"error: cannot write the benchmark to --out {args.out}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # meta.json is written last, so the cut-off folder is not taken as a benchmark
        print(
            f"\ninterrupted: {args.out} is incomplete (no meta.json); rerun to generate it", file=sys.stderr
        )
        raise SystemExit(130) from None
    elapsed = time.perf_counter() - start
    summary = {"out": args.out, "videos": meta["counts"]["videos"], "seconds": round(elapsed, 1)}
    # the folder as named (still one JSON line): "vidéos" was printed as "vid\u00e9os"
    print(json.dumps(summary, ensure_ascii=False))
    return meta


if __name__ == "__main__":
    main()
