"""`python -m clipbert.train --config ds_synthetic.json [--set section.key=value]`: train.py for an installed
package, which has no train.py (a wheel holds the package only). Launchers take it as a module too:
`torchrun -m clipbert.train ...`, `deepspeed --module clipbert.train ...`."""

import sys

from clipbert.train.cli import parse_args

if __name__ == "__main__":
    parse_args()  # --help and flag errors before the trainer's heavy imports (torch, DeepSpeed: seconds)
    from clipbert.train.run import main

    sys.exit(main())
