"""A training micro batch with 0 rows: the DALI loader drops every row that neither DALI nor PyAV can
decode (dali_pipelines/loader.py drop_rows), so train.batch_size 1 and one bad video, or a run of bad files,
gives frames [0, N, T, 3, L, L]. The model refuses such a batch (ValueError: B >= 1), and the run died with
a traceback; the trainer now skips it as it skips a bad micro batch, on every rank, and says why."""

import json
import sys
from pathlib import Path

import pytest
import torch
from test_train_fakes import FakeData, collate_dropping, make_config
from torchrun_helper import run_two_processes

from clipbert.data.config import DataConfig
from clipbert.data.loader import ShardedSampler
from clipbert.train import checkpoint as ckpt
from clipbert.train import loop
from clipbert.train.engine import warmup_linear_decay
from clipbert.train.run import run

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("cpu_world")
SEED = DataConfig().seed


class DroppingData(FakeData):
    """FakeData whose training loader drops the rows of the `dropped` examples as the DALI loader does: out
    of the batch (drop_rows itself), named in `bad_videos` as dropped."""

    def __init__(self, cfg, model_cfg, device, dropped=(), **kwargs):
        super().__init__(cfg, model_cfg, device, **kwargs)
        self.dropped = set(dropped)

    def _collate(self, items):
        return collate_dropping(items, self.dropped)

    def train(self):
        dataset, _ = super().train()
        size = self.cfg.train.batch_size
        sampler = ShardedSampler(len(dataset), size, True, self.cfg.data.seed)
        loader = torch.utils.data.DataLoader(
            dataset, size, sampler=sampler, collate_fn=self._collate, drop_last=True
        )
        return dataset, loader


def dropping(dropped, **kwargs):
    return lambda cfg, model_cfg, device: DroppingData(cfg, model_cfg, device, dropped=dropped, **kwargs)


def _steps(out):
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _order(size: int, epoch: int = 0, rank: int = 0, world: int = 2) -> list[int]:
    """The examples of `rank`'s shard of the epoch in training order, one per micro batch (batch_size 1)."""
    sampler = ShardedSampler(size, 1, True, SEED, rank=rank, world_size=world)
    sampler.set_epoch(epoch, 0)
    return [index for _, index in sampler]


def _forward_rows(monkeypatch) -> list[int]:
    """The rows of every batch the trainer forwards (the zero-frames forward at a boundary included)."""
    rows, original = [], loop.training_loss

    def spy(model, batch, *args, **kwargs):
        rows.append(batch["frames"].shape[0])
        return original(model, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "training_loss", spy)
    return rows


def test_a_micro_batch_whose_every_sample_was_dropped_is_skipped_not_a_crash(tmp_path, train_log):
    # batch 1, 4 examples, one undecodable: one micro batch of 0 rows per epoch. It raised ValueError
    # ("frames must have shape ... with B, N, T >= 1") from the model and the run died.
    cfg = make_config(tmp_path, train={"epochs": 2, "batch_size": 1, "max_bad_steps": 1, "eval_every": -1})
    summary = run(cfg, CPU, dropping({_order(4, world=1)[1]}, train_size=4))
    # the planned 8 steps (a skipped window end is a step without an update), and the schedule's end
    assert (summary["reason"], summary["step"]) == ("done", 8)
    steps = _steps(tmp_path)
    assert [r["skipped"] for r in steps].count(1) == 2 and sum(r["skipped"] for r in steps) == 2
    assert all((r["loss"] is None) == (r["skipped"] == 1) for r in steps)
    planned = [cfg.train.lr * warmup_linear_decay(t, 8, cfg.train.warmup_ratio) for t in range(8)]
    assert [r["lr"] for r in steps] == pytest.approx(planned, rel=1e-12, abs=0)
    # said as what it is, and not the divergence guard's (max_bad_steps 1 would have stopped the run)
    assert summary["bad_steps"] == 0 and "non-finite" not in train_log.text
    assert summary["empty_micro_batches"] == 2
    assert "every sample of this micro batch was dropped as bad input on 1 rank(s): skipped (2 in total)" in (
        train_log.text
    )
    state = json.loads((ckpt.checkpoint_root(tmp_path) / ckpt.tag_for(8) / ckpt.STATE_FILE).read_text())
    assert state["empty_total"] == 2 and state["bad_total"] == 0
    # the file itself is reported as a bad input, as any dropped row is
    bad = [json.loads(line) for line in (tmp_path / "bad_inputs.jsonl").read_text().splitlines()]
    assert [r["bad_files"] for r in bad] == [1, 1]


@pytest.mark.parametrize("position", [0, 1])
def test_an_empty_micro_batch_in_a_window_leaves_its_good_one_to_update(tmp_path, train_log, position):
    # grad_accum 2, batch 1: the empty micro batch starts its window (0) or ends it (1), where the pending
    # gradients need a backward at the boundary: on the last non-empty batch's stand-in, never the empty one.
    weights, after_step = [], loop.Trainer._after_step

    def record(self, *args, **kwargs):
        weights.append(self.engine.module.classifier[2].weight.detach().clone())
        return after_step(self, *args, **kwargs)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(loop.Trainer, "_after_step", record)
    try:
        cfg = make_config(tmp_path, train={"epochs": 1, "batch_size": 1, "grad_accum": 2, "eval_every": -1})
        summary = run(cfg, CPU, dropping({_order(4, world=1)[position]}, train_size=4))
    finally:
        monkeypatch.undo()
    assert (summary["reason"], summary["step"]) == ("done", 2)
    steps = _steps(tmp_path)
    assert [r["skipped"] for r in steps] == [1, 0] and steps[0]["loss"] is not None
    assert "no update" not in train_log.text  # the good micro batch's gradient was applied at its step
    assert len(weights) == 2 and not torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_stop_on_an_empty_window_end_stops_there(tmp_path, grad_accum):
    # Step 2 ends on the empty micro batch (batch 1: micro batch 2 or 4 of 8). A bad one makes a stop wait
    # for the next good step (a bad loss is never saved); an empty one leaves nothing a checkpoint would
    # lose, so train.stop_after_steps stops at its step, not one later.
    train = {"epochs": 1, "batch_size": 1, "grad_accum": grad_accum, "eval_every": -1}
    data = dropping({_order(8, world=1)[2 * grad_accum - 1]}, train_size=8)
    first = run(make_config(tmp_path, train={**train, "stop_after_steps": 2}), CPU, data)
    assert (first["reason"], first["step"]) == ("stop_after_steps", 2)
    assert (ckpt.checkpoint_root(tmp_path) / "latest").read_text().strip() == ckpt.tag_for(2)
    second = run(make_config(tmp_path, train={**train, "resume": "auto"}), CPU, data)
    assert (second["reason"], second["step"]) == ("done", 8 // grad_accum)


def test_every_zero_stage_updates_alike_when_a_window_ends_on_an_empty_micro_batch(tmp_path, monkeypatch):
    # ZeRO-3's forward is a collective: an empty rank forwards its stand-in (the last non-empty batch's first
    # row), its loss discarded, and the boundary's backward of 0 runs on it. Every stage updates alike.
    rows = _forward_rows(monkeypatch)
    train = {"epochs": 1, "batch_size": 1, "grad_accum": 2, "eval_every": -1}
    losses, forwards = {}, {}
    for stage in (0, 3):
        out, zero = tmp_path / f"zero{stage}", {"zero_optimization": {"stage": stage}}
        rows.clear()
        summary = run(
            make_config(out, train=train, deepspeed=zero, eval={"final_eval": False}),
            CPU,
            dropping({_order(4, world=1)[1]}, train_size=4),
        )
        assert (summary["reason"], summary["step"]) == ("done", 2)
        losses[stage], forwards[stage] = [r["loss"] for r in _steps(out)], list(rows)
    assert losses[3] == pytest.approx(losses[0], rel=1e-5)
    # ZeRO-0: no forward of the empty micro batch, the zero-frames one on the stand-in; ZeRO-3: both
    assert forwards == {0: [1, 1, 1, 1], 3: [1, 1, 1, 1, 1]}


def test_zero3_skips_an_empty_first_micro_batch_that_has_no_stand_in(tmp_path, monkeypatch, train_log):
    # No earlier batch to forward in its place: under ZeRO-3 the ranks agree on it first (one all-reduce,
    # until every rank holds a stand-in) and none forwards, where the empty rank alone would have left the
    # others waiting in theirs.
    rows = _forward_rows(monkeypatch)
    train = {"epochs": 1, "batch_size": 1, "eval_every": -1}
    zero = {"zero_optimization": {"stage": 3}}
    first = _order(4, world=1)[0]
    cfg = make_config(tmp_path, train=train, deepspeed=zero, eval={"final_eval": False})
    summary = run(cfg, CPU, dropping({first}, train_size=4))
    assert (summary["reason"], summary["step"]) == ("done", 4)
    assert [r["skipped"] for r in _steps(tmp_path)] == [1, 0, 0, 0]
    assert rows == [1, 1, 1] and "dropped as bad input on 1 rank" in train_log.text


def test_first_row_is_a_one_row_copy():
    batch = {
        "index": torch.arange(3),
        "frames": torch.randn(3, 2, 1, 3, 64, 64),
        "video_ids": ["a", "b", "c"],
        "bad_videos": ["x.mp4: bad; sample dropped"],
        "input_ids": torch.ones(3, 2, 5, dtype=torch.int64),
    }
    row = loop._first_row(batch)
    assert row["index"].tolist() == [0] and row["video_ids"] == ["a"] and row["bad_videos"] == []
    assert row["frames"].shape == (1, 2, 1, 3, 64, 64) and row["input_ids"].shape == (1, 2, 5)
    assert row["frames"].untyped_storage().nbytes() == row["frames"].nbytes  # not a view of the batch


# ----------------------------------------------------------------- two processes (gloo), ZeRO-3
SIZE = 8  # 4 micro batches of 1 per rank


def _dropped_for_two_ranks() -> set[int]:
    """Rank 1's first example of epoch 0 (no stand-in yet: skipped without a forward on either rank) and its
    third (a window end with a pending gradient: the stand-in's forward and backward of 0)."""
    order = _order(SIZE, rank=1)
    return {order[0], order[3]}


def worker(out: str) -> None:
    from clipbert.train.engine import init_distributed
    from clipbert.train.logging import is_rank0

    torch.set_num_threads(1)
    init_distributed(CPU)
    out, results = Path(out), {}
    train = {"epochs": 1, "batch_size": 1, "grad_accum": 2, "eval_every": -1}
    zero = {"zero_optimization": {"stage": 3}}
    cfg = make_config(out / "run", train=train, deepspeed=zero, eval={"final_eval": False})
    results = run(cfg, CPU, dropping(_dropped_for_two_ranks(), train_size=SIZE))
    if is_rank0():
        (out / "results.json").write_text(json.dumps(results, default=str))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_zero3_on_two_ranks_skips_one_ranks_empty_micro_batches_without_a_hang(tmp_path):
    proc = run_two_processes(__file__, [str(tmp_path)], timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["reason"], results["step"], results["bad_steps"]) == ("done", 2, 0)
    steps = _steps(tmp_path / "run")
    assert [r["skipped"] for r in steps] == [1, 1] and all(r["loss"] is not None for r in steps)


if __name__ == "__main__":  # the torchrun worker
    worker(sys.argv[1])
