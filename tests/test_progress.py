"""Progress bars redraw in place on a terminal and rarely in a log file (clipbert/progress.py)."""

import io
import time

from clipbert.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _redraws(stream: io.StringIO, seconds: float = 1.0) -> int:
    bar = progress_bar(total=10**9, file=stream)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        bar.update(1)
        time.sleep(0.002)
    bar.close()
    # a terminal's redraws overwrite the line ("\r"); a log file's are a line each
    return stream.getvalue().count("\r") if stream.isatty() else len(stream.getvalue().splitlines())


def test_a_bar_in_a_log_file_redraws_only_at_its_start_and_end():
    # tqdm's default redrew ~10 times a second into a SLURM log; here a second of updates is 2 redraws
    assert _redraws(io.StringIO()) == 2


def test_a_bar_on_a_terminal_still_redraws_often():
    assert _redraws(_Terminal()) >= 5


def test_the_callers_interval_wins_and_a_closed_stream_counts_as_a_file():
    closed = io.StringIO()
    closed.close()
    bar = progress_bar(total=3, file=io.StringIO(), mininterval=0.5)
    assert (bar.mininterval, bar.maxinterval) == (0.5, 60.0)
    bar.close()
    from clipbert.progress import _is_terminal

    assert not _is_terminal(closed) and not _is_terminal(object())
