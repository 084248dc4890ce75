"""Runs whose output goes to a file (SLURM, nohup, `> run.log 2>&1`): the log stays readable and small.

Each progress redraw off a terminal is a line of its own, at most one per clipbert.progress.LOG_INTERVAL_S
(and the end); no carriage returns, no cursor moves, no log line glued to a bar.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from clipbert.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]


def _assert_plain_lines(text: str) -> list[str]:
    """The lines of `text`, after checking it holds no terminal control (\\r, ESC) and no blank line."""
    assert "\r" not in text and "\x1b" not in text, repr(text[:300])
    assert text == "" or text.endswith("\n"), repr(text[-200:])
    lines = text.splitlines()
    assert all(line.strip() for line in lines), repr(text[:300])
    return lines


def test_setting_the_postfix_each_step_does_not_redraw_a_bar_in_a_log_file():
    # the trainer sets loss/lr every train.log_every steps: each set_postfix was one more bar in the log
    log = io.StringIO()
    bar = progress_bar(total=100, desc="train", file=log)
    for step in range(100):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    lines = _assert_plain_lines(log.getvalue())
    assert len(lines) == 2, lines  # the start and the end
    assert "100/100" in lines[-1] and "loss=0.0100" in lines[-1]


def test_a_log_line_between_two_redraws_starts_a_line_of_its_own():
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("test_log_files.glued")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        bar = progress_bar(total=3, desc="train", file=log)
        bar.update(1)
        logger.warning("a message")
        bar.update(2)
        bar.close()
    finally:
        logger.removeHandler(handler)
    lines = _assert_plain_lines(log.getvalue())
    assert "a message" in lines, lines  # not "train: 0%|...|a message"


def test_a_short_nested_bar_that_clears_itself_leaves_nothing_in_a_log_file():
    # an evaluation's bars (leave=False) under the open training bar wrote cursor-up codes and padding lines
    log = io.StringIO()
    outer = progress_bar(total=10, desc="train", file=log)
    before = log.getvalue()
    for _ in range(2):
        inner = progress_bar(total=4, desc="eval val: videos", leave=False, file=log)
        inner.update(4)
        inner.close()
    assert log.getvalue() == before
    outer.update(10)
    outer.close()
    assert len(_assert_plain_lines(log.getvalue())) == 2


def test_a_closed_log_stream_is_no_error_for_a_bar():
    log = io.StringIO()
    bar = progress_bar(total=2, file=log)
    log.close()
    bar.update(2)
    bar.close()  # tqdm checks for a closed stream before its last redraw


@pytest.mark.usefixtures("cpu_world")
def test_a_training_run_with_its_bar_and_evaluations_writes_plain_lines(tmp_path, capsys):
    # pytest's captured stderr is no terminal, as a SLURM log is not: 8 steps, an evaluation (with its own
    # bars, nested under the training bar) after each; the bar was redrawn at every step's loss
    import torch
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.run import run

    train = {"epochs": 2, "progress_bar": True, "eval_every": 1, "save_every": 0}
    run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory())
    lines = _assert_plain_lines(capsys.readouterr().err)
    bars = [line for line in lines if line.startswith("msrvtt_ret:")]
    assert len(bars) == 2, lines  # the start and the end
    assert not [line for line in lines if line.startswith("eval ")], lines  # short: no eval bar lines


def test_the_package_warnings_are_timestamped_and_said_by_rank_0_only():
    # clipbert.data.* log to their module loggers: with no handler they went to Python's last-resort
    # handler, so a two-rank run printed each dataset warning twice, with neither time nor level
    import os
    import subprocess
    import sys

    script = (
        "import logging\n"
        "from clipbert.train.logging import get_logger\n"
        "get_logger()\n"
        "logging.getLogger('clipbert.data.datasets').warning('texts are cut')\n"
        "logging.getLogger('clipbert.data.datasets').error('a broken file')\n"
    )
    said = {}
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank)}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert done.returncode == 0, done.stderr
        said[rank] = done.stderr.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "  # with the date: a run lasts days
    assert all(re.match(stamp, line) for line in said[0] + said[1]), said
    assert [line.split(" ", 2)[2] for line in said[0]] == ["[WARNING] texts are cut", "[ERROR] a broken file"]
    assert [line.split(" ", 2)[2] for line in said[1]] == ["[ERROR] a broken file"]  # errors: every rank


def test_build_frame_store_logs_with_times(tmp_path):
    import subprocess
    import sys

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"not a video")
    done = subprocess.run(
        [sys.executable, "-m", "clipbert.data.build_frame_store", "--videos", str(videos)]
        + ["--out", str(tmp_path / "store.h5"), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr
    lines = _assert_plain_lines(done.stderr)
    warned = [line for line in lines if "broken.mp4" in line]
    assert len(warned) == 1, lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[WARNING\] frame store: skipping .*", warned[0]), (
        warned
    )
