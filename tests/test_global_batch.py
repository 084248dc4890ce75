"""train.global_batch: the paper configs' learning rates and step counts were set for a global batch of
batch_size x grad_accum x 8 GPUs (4 for MSRVTT-QA). Run on fewer, the same config trained with a smaller
batch and more optimizer steps without a word; now the run warns, naming the grad_accum that restores it."""

import json
import re
from pathlib import Path

import pytest
import torch
from test_train_fakes import FakeData, make_config

from clipbert.train import config as C
from clipbert.train.run import global_batch_warning, run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md"
PAPER_WORLD = {"ds_msrvtt_qa": 4}  # docs/TRAINING.md "Configs": every other paper config, 8
TRAINED = ["ds_anet", "ds_didemo", "ds_msrvtt", "ds_msrvtt_qa", "ds_pretrain", "ds_vqa"] + [
    f"ds_tgif_{kind}" for kind in ("action", "transition", "frameqa")
]


@pytest.mark.parametrize("name", TRAINED)
def test_each_paper_config_names_the_global_batch_of_its_paper_world(name):
    train = json.loads((CONFIGS / f"{name}.json").read_text())["train"]
    world = PAPER_WORLD.get(name, 8)
    assert train["global_batch"] == train["batch_size"] * train["grad_accum"] * world
    # and it says nothing on that world
    assert global_batch_warning(C.TrainConfig(**train), world) is None


def test_the_docs_table_gives_the_same_batch_and_accumulation():
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"\d+ x \d+", cells[4]):
            for name in re.findall(r"ds_\w+", cells[0]):
                rows[name] = tuple(int(x) for x in cells[4].split(" x "))
    for name in ("ds_anet", "ds_didemo", "ds_msrvtt", "ds_msrvtt_qa", "ds_pretrain", "ds_vqa"):
        train = json.loads((CONFIGS / f"{name}.json").read_text())["train"]
        assert rows[name] == (train["batch_size"], train["grad_accum"])


def test_another_world_names_the_grad_accum_that_restores_the_batch():
    train = C.TrainConfig(batch_size=16, grad_accum=1, global_batch=128)
    said = global_batch_warning(train, 2)
    assert "global batch 32" in said and "train.global_batch=128" in said
    assert "--set train.grad_accum=4" in said
    assert global_batch_warning(C.TrainConfig(batch_size=16, grad_accum=4, global_batch=128), 2) is None
    # no whole accumulation: the other ways out are named
    said = global_batch_warning(C.TrainConfig(batch_size=16, grad_accum=1, global_batch=128), 3)
    assert "no whole train.grad_accum" in said and "train.global_batch=0" in said
    assert global_batch_warning(C.TrainConfig(batch_size=16, global_batch=0), 3) is None  # no check


def test_a_negative_global_batch_is_refused_by_name():
    with pytest.raises(C.ConfigError, match="train.global_batch"):
        C.TrainConfig(global_batch=-8)


@pytest.mark.usefixtures("cpu_world")
def test_a_run_on_another_world_says_so(tmp_path, train_log):
    cfg = make_config(tmp_path, train={"epochs": 1, "batch_size": 2, "global_batch": 16, "eval_every": -1})
    run(cfg, torch.device("cpu"), lambda cfg, model_cfg, device: FakeData(cfg, model_cfg, device))
    assert "--set train.grad_accum=8 restores it" in train_log.text
