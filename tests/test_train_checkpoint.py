"""checkpoint.save against a stand-in engine that writes files as DeepSpeed's does."""

import json

import pytest
import torch

from clipbert.train import checkpoint as ckpt


class DeepSpeedLike:
    """save_checkpoint as DeepSpeed 0.19 orders it: this rank's files, then (rank 0, save_latest) `latest`,
    then the barrier where another rank's failure surfaces (here: raised when fail=True)."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        self.calls.append(save_latest)
        # a torch file, as DeepSpeed's: a resume checks that each one is whole (checkpoint.incomplete)
        torch.save({"weights": 1}, ckpt.Path(save_dir) / tag / "mp_rank_00_model_states.pt")
        if save_latest:
            (ckpt.Path(save_dir) / ckpt.LATEST).write_text(tag)
        if self.fail:
            raise RuntimeError("rank 1 died writing its ZeRO shard")
        return True


def test_latest_moves_only_after_every_rank_has_written(tmp_path):
    ckpt.save(DeepSpeedLike(), tmp_path, {"step": 2}, keep=2)
    root = ckpt.checkpoint_root(tmp_path)
    assert (root / ckpt.LATEST).read_text() == ckpt.tag_for(2)
    # a save that another rank does not finish: `latest` keeps naming the last complete tag
    engine = DeepSpeedLike(fail=True)
    with pytest.raises(RuntimeError, match="rank 1 died"):
        ckpt.save(engine, tmp_path, {"step": 4}, keep=2)
    assert engine.calls == [False]
    assert (root / ckpt.LATEST).read_text() == ckpt.tag_for(2)
    assert ckpt.find_resume("auto", tmp_path) == (root, ckpt.tag_for(2))
    assert not (root / f"{ckpt.LATEST}.tmp").exists()


def test_each_epochs_bad_files_of_every_rank_are_reported_once(tmp_path, monkeypatch, caplog):
    # Each rank meets its own shard's bad files and only rank 0 logs: the epoch summary gathers them.
    from types import SimpleNamespace

    from clipbert.data.bad_input import BadInputTracker
    from clipbert.train import loop

    tracker = BadInputTracker()
    tracker.update({"bad_videos": ["a.mp4: missing", "a.mp4: missing"]})  # this rank's (rank 0's) files
    rank1 = {"b.mp4": 1, "a.mp4": 1}  # what rank 1 met in the same epoch
    monkeypatch.setattr(loop, "all_gather_objects", lambda mine: [mine, rank1])
    trainer = SimpleNamespace(tracker=tracker, state=SimpleNamespace(epoch=1, step=7), out=tmp_path)
    with caplog.at_level("WARNING"):
        loop.Trainer._bad_input_summary(trainer)
    assert "epoch 0: 2 bad file(s), met 4 time(s): a.mp4, b.mp4" in caplog.text
    record = json.loads((tmp_path / "bad_inputs.jsonl").read_text())
    assert record == {"step": 7, "epoch": 0, "bad_files": 2, "hits": 4, "files": {"a.mp4": 3, "b.mp4": 1}}
    assert not tracker.epoch  # the next epoch counts afresh
    monkeypatch.setattr(loop, "all_gather_objects", lambda mine: [mine, {}])
    loop.Trainer._bad_input_summary(trainer)  # a clean epoch adds no line
    assert len((tmp_path / "bad_inputs.jsonl").read_text().splitlines()) == 1


def test_a_checkpoint_path_that_does_not_exist_says_so(tmp_path, monkeypatch):
    # it said "no trainer checkpoint there (no trainer_state.json or latest file)" of a path that is not there
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"train\.init_checkpoint='outputs/stage1' does not exist \(relative to "
    ):
        ckpt.locate("outputs/stage1", "train.init_checkpoint")
