"""`python -m clipbert.predict`: see clipbert/predict/cli.py."""

from clipbert.predict.cli import main

if __name__ == "__main__":  # a spawned child process (macOS's default) imports this module again
    raise SystemExit(main())
