"""Progress bars that suit a terminal and a log file alike.

In a terminal a tqdm bar redraws in place. Written to a file (a SLURM, nohup or `| tee` log), every redraw
is another copy of the bar, about 10 a second: 55 MB a day for the training bar alone, in which the log
lines drown. Off a terminal the bars here redraw at most once every `LOG_INTERVAL_S` seconds, and always at
the end, each redraw a line of its own: no `\\r`, no cursor moves, and no log line glued to a bar's last
redraw. A bar that clears itself when done (leave=False) shows off a terminal only once it has lasted
`LOG_INTERVAL_S`: its start alone, with no end, said nothing.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

LOG_INTERVAL_S = 60.0

_CURSOR_UP = re.compile(r"\x1b\[A")  # tqdm's move to the line above, after drawing a nested bar


def progress_bar(iterable: Any = None, **kwargs: Any):
    """`tqdm(iterable, **kwargs)`, redrawing at most once every LOG_INTERVAL_S seconds off a terminal."""
    from tqdm import tqdm

    stream = kwargs.get("file") or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    # maxinterval too: tqdm's monitor thread forces a redraw every maxinterval (10 s by default)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, kwargs["mininterval"]))
    if kwargs.get("leave") is False:
        kwargs.setdefault("delay", LOG_INTERVAL_S)
    kwargs["file"] = _LineStream(stream)
    return _log_bar_class()(iterable, **kwargs)


@functools.cache  # one class: tqdm keeps its bars' positions, lock and monitor thread on the class
def _log_bar_class():
    from tqdm import tqdm

    class LogFileBar(tqdm):
        """A tqdm whose set_postfix/set_description do not force a redraw. Why: the trainer sets the loss
        every train.log_every steps, and each of those redraws was a line of the log, whatever the interval;
        the new values show at the next timed redraw."""

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s="", refresh=True):
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc=None, refresh=True):
            super().set_description(desc, refresh=False)

        def set_description_str(self, desc=None, refresh=True):
            super().set_description_str(desc, refresh=False)

    return LogFileBar


class _LineStream:
    """A log file as tqdm's stream: each redraw ("\\r" + bar + padding) becomes the bar and a line break;
    what only moves the cursor or clears a bar ("\\r", "\\n", spaces, cursor-up) is dropped."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> None:
        line = _CURSOR_UP.sub("", text).strip()
        # "" is still written: tqdm's close probes with it whether the stream was closed
        self._stream.write(line + "\n" if line else "")

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, closed, ...: the stream's own
        return getattr(self._stream, name)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
