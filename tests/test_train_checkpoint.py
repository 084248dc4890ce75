"""checkpoint.save against a stand-in engine that writes files as DeepSpeed's does."""

import pytest

from clipbert.train import checkpoint as ckpt


class DeepSpeedLike:
    """save_checkpoint as DeepSpeed 0.19 orders it: this rank's files, then (rank 0, save_latest) `latest`,
    then the barrier where another rank's failure surfaces (here: raised when fail=True)."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        self.calls.append(save_latest)
        (ckpt.Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_text("weights")
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
