"""Model selection on val (clipbert/train/best.py): best_model/ holds the weights of the best evaluation, the
test split is scored with them, and a resume keeps the selection the uninterrupted run makes."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_fakes import fake_factory, make_config

from clipbert.train import best
from clipbert.train.config import ConfigError
from clipbert.train.run import run

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("cpu_world")

# 8 examples, batch 2 -> 4 steps per epoch; 3 epochs with an evaluation every 2 steps: 6 val evaluations
TRAIN = {"epochs": 3, "eval_every": 2, "save_every": 0, "lr": 3e-3, "cnn_lr": 3e-3}


def _evals(out, split):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def _expected_best(vals, metric, lower=False):
    """The first evaluation with the best value (a tie keeps the earlier step)."""
    key = (lambda r: (r[metric], r["step"])) if lower else (lambda r: (-r[metric], r["step"]))
    return min(vals, key=key)


@pytest.mark.parametrize("metric", ["rsum", "t2v_meanr"])
def test_the_best_val_evaluation_is_exported_and_scored_on_test(tmp_path, metric):
    out = tmp_path / metric
    summary = run(make_config(out, train=TRAIN, eval={"best_metric": metric}), CPU, fake_factory())
    vals = _evals(out, "val")
    chosen = _expected_best(vals, metric, lower=metric.endswith("meanr"))
    record = json.loads((out / "best_model" / "best.json").read_text())
    assert record == {"metric": metric, "value": chosen[metric], "step": chosen["step"], "split": "val"}
    assert (out / "best_model" / "model.safetensors").is_file() and (
        out / "best_model" / "predict.json"
    ).is_file()
    assert not (out / "best_model.tmp").exists() and not (out / "best_model.old").exists()
    tested = _evals(out, "test_best")
    if chosen["step"] == summary["step"]:  # the final weights: their test row is the test_best one
        assert tested == [] and summary["best"]["step"] == summary["step"]
        return
    # scored with best_model/'s weights: eval.only of that directory gives the same numbers
    assert [r["step"] for r in tested] == [chosen["step"]]
    again = run(
        make_config(tmp_path / "check", eval={"only": True, "checkpoint": str(out / "best_model")}),
        CPU,
        fake_factory(),
    )
    for key in ("t2v_r1", "t2v_meanr", "v2t_medr", "rsum"):
        assert tested[0][key] == pytest.approx(again["metrics"][key], abs=1e-9)
        assert summary["best"]["test"][key] == tested[0][key]


def test_selection_off_exports_nothing(tmp_path):
    summary = run(make_config(tmp_path, train=TRAIN, eval={"best_metric": "none"}), CPU, fake_factory())
    assert not (tmp_path / "best_model").exists() and not _evals(tmp_path, "test_best")
    assert summary["best"] is None


def test_a_resumed_run_selects_what_the_uninterrupted_one_selects(tmp_path):
    import shutil

    from clipbert.train import checkpoint as ckpt

    full, split = tmp_path / "full", tmp_path / "split"
    run(make_config(full, train=TRAIN), CPU, fake_factory())
    chosen = json.loads((full / "best_model" / "best.json").read_text())
    # killed just after exporting the best model, before a checkpoint held it: the run stops at the best
    # step with a checkpoint at every step, then that step's checkpoint is removed
    every = {**TRAIN, "save_every": 1, "keep_checkpoints": 20}
    run(make_config(split, train={**every, "stop_after_steps": chosen["step"]}), CPU, fake_factory())
    root = ckpt.checkpoint_root(split)
    shutil.rmtree(root / ckpt.tag_for(chosen["step"]))
    if chosen["step"] > 1:
        (root / "latest").write_text(ckpt.tag_for(chosen["step"] - 1))
    else:
        (root / "latest").unlink()
    run(make_config(split, train={**every, "resume": "auto"}), CPU, fake_factory())
    assert json.loads((split / "best_model" / "best.json").read_text()) == chosen
    a, b = (load_file(str(out / "best_model" / "model.safetensors")) for out in (full, split))
    assert a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) for k in a
    )  # not the bytes: header order varies
    timeless = [
        [{k: v for k, v in r.items() if k != "eval_seconds"} for r in _evals(out, "test_best")]
        for out in (full, split)
    ]
    assert timeless[0] == timeless[1]


def test_a_fresh_run_does_not_keep_an_earlier_best_model(tmp_path):
    # with selection off nothing replaces it: another start's best_model/ would pass for this run's
    stale = tmp_path / "best_model"
    stale.mkdir()
    (stale / "best.json").write_text(json.dumps({"metric": "rsum", "value": 1e9, "step": 99}))
    run(
        make_config(tmp_path, train={**TRAIN, "epochs": 1}, eval={"best_metric": "none"}), CPU, fake_factory()
    )
    assert not stale.exists()


def test_reconcile_keeps_only_the_selection_the_checkpoint_knows(tmp_path):
    directory = tmp_path / "best_model"
    chosen = {"metric": "rsum", "value": 430.0, "step": 2, "split": "val"}
    best.export_best(lambda d: d.mkdir(), directory, chosen)
    best.reconcile(directory, chosen)
    assert best.read_record(directory) == chosen
    best.reconcile(directory, {**chosen, "step": 1})  # exported after the checkpoint: goes
    assert not directory.exists()


def test_best_metric_is_checked_against_the_task_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.best_metric='acc': task\.name=msrvtt_ret \(retrieval\)"):
        make_config(tmp_path, eval={"best_metric": "acc"})
    with pytest.raises(ConfigError, match=r"eval\.best_metric must be a string"):
        make_config(tmp_path, eval={"best_metric": 1})
    assert (
        best.selection_metric(make_config(tmp_path, task="tgif_action", eval={"best_metric": "auto"}))
        == "acc"
    )
    assert best.selection_metric(make_config(tmp_path, task="msrvtt_qa", eval={"best_metric": "acc_what"}))
    assert best.selection_metric(make_config(tmp_path, task="pretrain")) is None  # no single metric


def test_export_replaces_the_old_best_and_clears_a_cut_staging_dir(tmp_path):
    target = tmp_path / "best_model"
    (tmp_path / "best_model.tmp").mkdir()
    (tmp_path / "best_model.tmp" / "half.bin").write_text("cut")  # a stop while the last export wrote

    def export(directory, text):
        directory.mkdir()
        (directory / "w.txt").write_text(text)

    best.export_best(lambda d: export(d, "one"), target, {"step": 1})
    best.export_best(lambda d: export(d, "two"), target, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]
    assert (target / "w.txt").read_text() == "two" and best.read_record(target) == {"step": 2}
    assert best.beats(3.0, {"metric": "t2v_medr", "value": 4.0}, "t2v_medr")
    assert not best.beats(4.0, {"metric": "rsum", "value": 4.0}, "rsum")  # a tie keeps the earlier step
