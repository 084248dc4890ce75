"""`train.py`'s command line, apart from the trainer so that it parses before torch, DeepSpeed and
transformers load: `--help` and a mistyped flag answer at once instead of after about 9 s of imports."""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  python train.py --config ds_synthetic.json                 # one process, CPU or one GPU
  deepspeed train.py --config ds_msrvtt.json                 # every GPU of this node
  python train.py --config ds_msrvtt.json --set train.resume=auto
  python train.py --config ds_msrvtt.json --set eval.only=true --set eval.checkpoint=outputs/msrvtt_ret
  python train.py --config ds_msrvtt.json --set data.num_clips=4 --print-config   # check, then run
  python -m clipbert.train --config ds_synthetic.json        # the same, from a pip-installed package

exit codes: 0 done, 2 bad config or path, 3 diverged, 4 a write failed (a full disk: free space, then
resume), 130 stopped by a signal (after its checkpoint).
The config's own deepspeed section holds the engine settings (docs/TRAINING.md)."""


def _prog(argv0: str) -> str:
    """The command as typed: `python -m clipbert.train` (an installed package has no train.py) runs this as
    clipbert/train/__main__.py, which argparse's default would print as `usage: __main__.py`."""
    return "python -m clipbert.train" if os.path.basename(argv0) == "__main__.py" else os.path.basename(argv0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=_prog(sys.argv[0]),
        description="Train or evaluate ClipBERT with DeepSpeed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="a JSON config, or a bare name looked up in configs/")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (JSON-parsed when possible); repeatable",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (file + --set, every default filled in) as JSON and exit",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the launcher")
    # DeepSpeed's own flags (deepspeed.add_config_arguments), accepted so that scripts written for other
    # DeepSpeed trainers still parse, and kept out of --help: a second engine config would compete with the
    # config's deepspeed section, so giving one is an error below.
    for flag in ("--deepspeed", "--deepscale"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("--deepspeed_config", "--deepscale_config"):
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("deepspeed_config", "deepscale_config"):
        if getattr(args, flag):
            parser.error(f"--{flag} is not used: put the engine settings in the config's deepspeed section")
    return args
