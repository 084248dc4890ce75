"""A new user's walkthrough of the quick tour (session 30): the friction it met, fixed and pinned here."""

from __future__ import annotations

import pytest
import torch

from tests.test_train_fakes import make_config

pytestmark = pytest.mark.usefixtures("cpu_world")


def _no_data(cfg, model_cfg, device):
    raise AssertionError("the data was built before the missing start weights were found")


@pytest.mark.parametrize("tensorboard", [True, False])
def test_a_missing_init_checkpoint_stops_before_the_data_and_leaves_no_output_dir(tmp_path, tensorboard):
    """Stage 2 of the quick tour started before stage 1 (or a typo in its path): the run said so only after it
    had built the data, the model and the engine, and left the output dir behind with a tensorboard/ file."""
    from clipbert.train.run import run

    out = tmp_path / "outputs" / "synthetic"
    cfg = make_config(
        out,
        train={
            "init_checkpoint": str(tmp_path / "outputs/synthetic_words/model"),
            "tensorboard": tensorboard,
        },
    )
    with pytest.raises(
        FileNotFoundError, match=r"train\.init_checkpoint='.*synthetic_words/model' does not exist"
    ):
        run(cfg, torch.device("cpu"), data_factory=_no_data)
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--video", "--image"])
def test_an_unquoted_glob_gives_every_file_it_matched(flag):
    """`--video my_videos/*.mp4` without quotes (the shell expands it): every file after the flag was an
    "unrecognized argument" and predict stopped; now each is an input, as with the flag repeated."""
    from clipbert.predict.cli import build_parser

    argv = ["--model", "m", flag, "a.mp4", "b.mp4", "c.mp4", "--text", "t", flag, "d/"]
    args = build_parser().parse_args(argv)
    assert getattr(args, flag[2:]) == ["a.mp4", "b.mp4", "c.mp4", "d/"]
    assert args.text == ["t"]


@pytest.mark.parametrize(
    "nan_epoch, said", [(0, "No checkpoint was saved before it"), (1, "left untouched in")]
)
def test_a_diverged_run_names_its_last_checkpoint_only_when_there_is_one(tmp_path, nan_epoch, said):
    """A learning rate far too high diverges within the first steps (exit 3): the message sent the user to
    "the last good checkpoint ... in outputs/<run>/checkpoints", a folder no step had written yet."""
    from clipbert.train.loop import TrainingDiverged
    from clipbert.train.run import run
    from tests.test_train_fakes import fake_factory

    train = {"epochs": 2, "max_bad_steps": 2, "save_every": 0, "eval_every": -1}
    with pytest.raises(TrainingDiverged, match=said):
        run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory(nan_epoch=nan_epoch))
