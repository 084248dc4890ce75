"""Train or evaluate ClipBERT: `deepspeed train.py --config configs/ds_msrvtt.json [--set section.key=value]`.

Also runs as `python train.py ...` (one process) and under `torchrun`. See docs/TRAINING.md.
"""

import sys

from clipbert.train.cli import parse_args

if __name__ == "__main__":
    parse_args()  # --help and flag errors before the trainer's heavy imports (torch, DeepSpeed: seconds)
    from clipbert.train.run import main

    sys.exit(main())
