"""Claims of the docs the code did not keep: each test quotes the doc's sentence and holds the code to it."""

import json

import pytest
import torch
from test_train_fakes import fake_factory, make_config

from clipbert.train.run import run

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("cpu_world")


def _bad_input_lines(out):
    path = out / "bad_inputs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_run_that_ends_inside_an_epoch_writes_that_epochs_bad_files(tmp_path):
    # docs/TRAINING.md, "What a run writes": `bad_inputs.jsonl`, "one line per epoch that met bad training
    # videos". A run whose train.max_steps ends inside an epoch never reached that epoch's summary: its bad
    # files were warned about one at a time on rank 0 and missing from the file and the summary.
    bad = fake_factory(train_size=8, bad_indices=range(8))  # every video is bad: each met once
    train = {"epochs": 1, "eval_every": -1}  # 8 examples, batch 2: 4 steps an epoch
    run(make_config(tmp_path, train={**train, "max_steps": 2}), CPU, bad)
    (record,) = _bad_input_lines(tmp_path)
    assert (record["step"], record["epoch"], record["bad_files"], record["hits"]) == (2, 0, 4, 4)
    first = set(record["files"])

    # the finished run resumed trains nothing and reports nothing again
    run(make_config(tmp_path, train={**train, "max_steps": 2, "resume": "auto"}), CPU, bad)
    assert len(_bad_input_lines(tmp_path)) == 1
    # continued to the epoch's end (a longer schedule), the epoch's line lists the files met since, so that
    # no file is counted twice
    run(make_config(tmp_path, train={**train, "max_steps": 4, "resume": "auto"}), CPU, bad)
    records = _bad_input_lines(tmp_path)
    assert [(r["step"], r["epoch"], r["bad_files"]) for r in records] == [(2, 0, 4), (4, 0, 4)]
    assert first.isdisjoint(records[1]["files"]) and first | set(records[1]["files"]) == {
        f"bad{i}.mp4" for i in range(8)
    }
