"""`python -m clipbert.predict`: see clipbert/predict/cli.py."""

from clipbert.predict.cli import main

raise SystemExit(main())
