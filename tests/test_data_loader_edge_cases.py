"""The loader layer across epochs, ranks and resumes: ShardedSampler's counts agree with what it yields and
with the trainer's plan for every small (size, world, batch), its length costs no permutation, and a
mid-epoch resume continues the interrupted run exactly."""

import json
import math

import pytest
import torch

from clipbert.data.loader import ShardedSampler
from clipbert.train.loop import steps_per_epoch

SIZES, WORLDS, BATCHES = range(0, 14), range(1, 6), range(1, 5)


def _keys(sampler) -> list[int]:
    return [index for _, index in sampler]


class Indices(torch.utils.data.Dataset):
    """Item (epoch, index) -> index."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> int:
        return key[1]


@pytest.mark.parametrize("train", [True, False])
def test_sampler_length_is_what_it_yields_for_every_small_plan(train):
    for size in SIZES:
        for world in WORLDS:
            samplers = [
                ShardedSampler(size, 2, train, seed=5, rank=r, world_size=world) for r in range(world)
            ]
            for sampler in samplers:
                for skip in range(4):
                    sampler.set_epoch(3, skip)
                    assert len(sampler) == len(_keys(sampler)), (size, world, sampler.rank, skip)


def test_sampler_length_does_not_draw_the_permutation(monkeypatch):
    # The trainer asks len(train_loader) every micro step; each drew the epoch's permutation (0.15 s on a
    # 3M-example pre-training set, every step, in the main process).
    sampler = ShardedSampler(1000, 4, True, seed=1, rank=1, world_size=3)
    sampler.set_epoch(2, 5)
    drawn = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: drawn.append(a) or randperm(*a, **k))
    assert len(sampler) == math.ceil(1000 / 3) - 5 * 4 and not drawn
    assert len(_keys(sampler)) == len(sampler) and len(drawn) == 1  # iterating draws it, once


def test_train_epoch_is_a_prefix_of_one_order_whatever_the_world_and_matches_the_plan():
    # drop_last per rank keeps each rank's first n*B keys; dealt out by rank in turn, they are exactly the
    # first n*B*W keys of the epoch's order (the permutation, wrapped): no example lost to padding, none
    # seen more than the wrap makes it, the same examples on 1 or W ranks
    for size in SIZES:
        order = ShardedSampler(size, 1, True, seed=7, rank=0, world_size=1)
        order.set_epoch(4)
        wrapped = (_keys(order) * (max(WORLDS) + 1))[: max(1, size) * max(WORLDS)]
        for world in WORLDS:
            for batch in BATCHES:
                loaders = []
                for rank in range(world):
                    sampler = ShardedSampler(size, batch, True, seed=7, rank=rank, world_size=world)
                    sampler.set_epoch(4)
                    loaders.append(
                        torch.utils.data.DataLoader(Indices(size), batch, sampler=sampler, drop_last=True)
                    )
                n = math.ceil(size / world) // batch
                batches = [[b.tolist() for b in loader] for loader in loaders]
                assert [len(loader) for loader in loaders] == [len(b) for b in batches] == [n] * world
                dealt = [batches[r][i][j] for i in range(n) for j in range(batch) for r in range(world)]
                assert dealt == wrapped[: n * batch * world], (size, world, batch)
                # the trainer's plan from the same length: every epoch a step, the last window partial
                assert steps_per_epoch(n, 2) == max(1, math.ceil(n / 2))


def test_resume_skip_yields_exactly_the_rest_then_lapses():
    for size, world, batch in [(11, 2, 2), (7, 3, 1), (16, 4, 3)]:
        for rank in range(world):
            sampler = ShardedSampler(size, batch, True, seed=2, rank=rank, world_size=world)
            sampler.set_epoch(1)
            full = _keys(sampler)
            for consumed in range(len(full) // batch + 2):
                sampler.set_epoch(1, consumed)
                assert _keys(sampler) == full[consumed * batch :]
            sampler.set_epoch(2)
            again = _keys(sampler)
            assert len(again) == len(full) and (again != full or size <= world)
            sampler.set_epoch(1)
            assert _keys(sampler) == full  # the same order for the same (seed, epoch)


@pytest.mark.usefixtures("cpu_world")
def test_mid_epoch_resume_scales_the_last_window_as_the_uninterrupted_run(tmp_path, monkeypatch):
    # 6 examples, batch 2, grad_accum 2: 3 micro batches an epoch, a window of 2 then the leftover 1, whose
    # loss is scaled x2. A checkpoint after every step; a crash in step 2, then a resume from the step-1
    # checkpoint (micro batch 2 of 3). The resumed run scaled its leftover window by 1, so its step 2 update,
    # and every later loss, differed from the uninterrupted run's.
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.run import run

    train, no_final = {"epochs": 2, "grad_accum": 2, "save_every": 1, "eval_every": -1}, {"final_eval": False}
    full, split = tmp_path / "full", tmp_path / "split"
    run(make_config(full, train=train, eval=no_final), torch.device("cpu"), fake_factory(train_size=6))
    adamw_step, calls = torch.optim.AdamW.step, []

    def crash_in_step_two(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash")
        return adamw_step(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="injected crash"):
        patch.setattr(torch.optim.AdamW, "step", crash_in_step_two)
        run(make_config(split, train=train, eval=no_final), torch.device("cpu"), fake_factory(train_size=6))
    resumed = make_config(split, train={**train, "resume": "auto"}, eval=no_final)
    run(resumed, torch.device("cpu"), fake_factory(train_size=6))

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]

    assert len(losses(full)) == 4 and losses(split) == losses(full)


def test_any_valid_data_seed_draws_an_order():
    # DataConfig takes any non-negative seed; from 1.8e14 on the sampler's generator seed overflowed and the
    # first epoch died with "Overflow when unpacking long long", naming nothing
    small = ShardedSampler(50, 2, True, seed=12345, rank=0, world_size=1)
    assert _keys(small) == _keys(ShardedSampler(50, 2, True, seed=12345, rank=0, world_size=1))
    for seed in (2**48, 10**15 + 1, 2**70):
        keys = _keys(ShardedSampler(50, 2, True, seed=seed, rank=0, world_size=1))
        assert sorted(keys) == list(range(50)) and keys != _keys(small)
