"""Every task as a researcher runs it through the CLI: training, eval-only from the result, predict, and two
ranks. Only the cases that went wrong are kept here (the whole matrix passes on the synthetic benchmark)."""

import shutil
from pathlib import Path

import pytest
import torch
from test_train_fakes import make_config

from clipbert.data.annotations import AnnotationError
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.train.run import run

CPU = torch.device("cpu")


def _data_cfg(bench, **overrides) -> DataConfig:
    values = dict(ann_dir=str(bench / "annotations"), image_size=64, num_workers=0)
    return DataConfig(**{**values, **overrides})


@pytest.mark.parametrize("task", ["pretrain", "vqa"])
def test_a_missing_image_root_is_a_start_up_error_naming_the_key(bench, tokenizer, tmp_path, task):
    # ds_pretrain / ds_vqa set data.image_root; pointing data.ann_dir at the synthetic set kept it, and the
    # run stopped steps in with a worker's "too many bad videos" traceback instead of naming the key
    cfg = _data_cfg(bench, image_root=str(tmp_path / "no_such_images"))
    with pytest.raises(FileNotFoundError, match=r"data\.image_root='.*no_such_images' is not a directory"):
        build_dataset(task, "train", cfg, tokenizer, IMAGENET_RGB)
    build_dataset(task, "val", _data_cfg(bench), tokenizer, IMAGENET_RGB)  # the default: ann_dir's parent


def _annotations_with(bench, tmp_path, name: str, text: str) -> Path:
    """A copy of the benchmark's annotations whose file `name` holds `text`."""
    ann = tmp_path / "annotations"
    shutil.copytree(bench / "annotations", ann)
    (ann / name).write_text(text)
    return ann


@pytest.mark.usefixtures("cpu_world")
def test_an_empty_test_split_is_skipped_after_training_and_named_by_eval_only(bench, tmp_path, train_log):
    # The generator writes an empty file for a split with no item (a small benchmark's tgif_transition test
    # split; meta.json says null). It was taken for a split: the run trained every step, then stopped with
    # exit 2 at the final evaluation ("no examples"), where a split without a file is skipped with a warning.
    task = "tgif_transition"
    ann = _annotations_with(bench, tmp_path, f"{task}_test.jsonl", "\n")
    data = {"ann_dir": str(ann), "video_dir": str(bench / "videos")}
    cfg = make_config(tmp_path / "run", task, train={"max_steps": 1, "eval_every": -1}, data=data)
    summary = run(cfg, CPU)
    assert summary["reason"] == "done" and summary["metrics"] is None
    assert f"no test split for {task}: skipping the final evaluation" in train_log.text
    only = make_config(
        tmp_path / "eval", task, eval={"only": True, "checkpoint": str(tmp_path / "run" / "model")}, data=data
    )
    with pytest.raises(FileNotFoundError, match=r"annotation file holds no example: .*tgif_transition_test"):
        run(only, CPU)


@pytest.mark.usefixtures("cpu_world")
def test_a_bad_val_file_stops_training_before_its_first_step(bench, tmp_path):
    # read at the first evaluation, it stopped the run an epoch (or train.eval_every steps) in
    task = "tgif_action"
    cut_short = '{"gif_name": "video0003", "question": "what\n'
    ann = _annotations_with(bench, tmp_path, f"{task}_val.jsonl", cut_short)
    data = {"ann_dir": str(ann), "video_dir": str(bench / "videos")}
    cfg = make_config(tmp_path / "run", task, data=data)  # evaluates val at every epoch's end
    with pytest.raises(AnnotationError, match=r"tgif_action_val\.jsonl:1: malformed JSON"):
        run(cfg, CPU)
    assert not (tmp_path / "run" / "steps.jsonl").exists()


def test_the_datasets_read_before_the_workers_fork_are_frozen_for_the_collector(bench, tmp_path):
    # The eval splits are read before training (a bad file stops the run at once), so the training loader's
    # workers inherit them; a worker's garbage collection would write every inherited object's page
    import gc

    from clipbert.train.data import TaskData

    cfg = make_config(tmp_path, task="msrvtt_qa", data={"ann_dir": str(bench / "annotations")})
    data = TaskData(cfg, cfg.model_config(num_answers=3), CPU)
    gc.unfreeze()
    data.train()
    val = data._cache[cfg.eval.split]
    assert gc.get_freeze_count() > 0 and not any(obj is val.examples for obj in gc.get_objects())
    gc.unfreeze()
