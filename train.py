"""Train or evaluate ClipBERT: `deepspeed train.py --config configs/ds_msrvtt.json [--set section.key=value]`.

Also runs as `python train.py ...` (one process) and under `torchrun`. See docs/TRAINING.md.
"""

import sys

from clipbert.train.run import main

if __name__ == "__main__":
    sys.exit(main())
