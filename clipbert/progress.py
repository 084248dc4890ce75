"""Progress bars that suit a terminal and a log file alike.

In a terminal a tqdm bar redraws in place. Written to a file (a SLURM, nohup or `| tee` log), every redraw
is another copy of the bar, about 10 a second: 55 MB a day for the training bar alone, in which the log
lines drown. Off a terminal the bars here redraw at most once every `LOG_INTERVAL_S` seconds, and always at
the end.
"""

from __future__ import annotations

import sys
from typing import Any

LOG_INTERVAL_S = 60.0


def progress_bar(iterable: Any = None, **kwargs: Any):
    """`tqdm(iterable, **kwargs)`, redrawing at most once every LOG_INTERVAL_S seconds off a terminal."""
    from tqdm import tqdm

    stream = kwargs.get("file") or sys.stderr
    if not _is_terminal(stream):
        # maxinterval too: tqdm's monitor thread forces a redraw every maxinterval (10 s by default)
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, kwargs["mininterval"]))
    return tqdm(iterable, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
