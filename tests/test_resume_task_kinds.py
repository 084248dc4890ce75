"""Exact resume for every task kind on the real synthetic benchmark: a run stopped (train.stop_after_steps,
or a SIGTERM in the middle of an accumulation window) and resumed with train.resume=auto logs the
uninterrupted run's steps (loss and LRs) and exports its weights, bit for bit.

The other resume tests mostly train retrieval; here each kind with its own data and loss (QA's answer
classes, multiple choice's options, VQA's soft targets on images, pre-training's MLM masks and ITM swaps, the
visual-word loss and its CNN-only phase), through the real datasets and loaders (ZeRO-0, one process). And a
resume that changes a head (the visual-word one, QA's answers) is refused naming why, before DeepSpeed
loads; one that changes a kind's data stream says so (docs/TRAINING.md, "Checkpoints, resume, preemption")."""

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_train_fakes import make_config

from clipbert.train import loop
from clipbert.train.config import ConfigError
from clipbert.train.run import run

pytestmark = pytest.mark.usefixtures("cpu_world")

CPU = torch.device("cpu")

# (task.name, its data and train settings) on `small`: 16 training items or fewer, accumulation 2, 2 epochs.
# One task of each kind (QA's two and MC's two differ in their data only: the datasets' own tests)
KINDS = {
    "open-ended QA, 2 workers": ("msrvtt_qa", {"num_workers": 2, "prefetch_factor": 1}, {}),
    "multiple choice": ("tgif_transition", {}, {}),  # 3 micro batches an epoch: a window of 1 ends it
    "VQA": ("vqa", {}, {}),
    "pre-training": ("pretrain", {"mlm_on_swapped": True, "itm_neg_prob": 0.5}, {}),
    # the CNN-only phase ends at step 3, which the resumed parts cross; 5 micro batches an epoch, so its
    # last window holds one (scaled by _window_scale)
    "visual words": ("msrvtt_ret", {}, {"batch_size": 3, "visual_word_loss": 1.0, "visual_word_steps": 3}),
}
SMALL = 16  # training items kept of each task


@pytest.fixture(scope="module")
def small(bench, tmp_path_factory):
    """data.ann_dir: the bench's annotations with each task's first SMALL training items (of 18 to 72)."""
    out = tmp_path_factory.mktemp("small") / "annotations"
    shutil.copytree(bench / "annotations", out)
    for path in out.glob("*_train.jsonl"):
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:SMALL]))
    return {"ann_dir": str(out)}


def _config(out, bench, task: str, data: dict, train: dict):
    """A tiny run of `task` on the bench's videos and images, and its annotations unless data.ann_dir."""
    media = {
        "ann_dir": str(bench / "annotations"),
        "video_dir": str(bench / "videos"),
        "image_root": str(bench),
    }
    data = {**media, **data}
    # eval_every -1: no evaluation on the way (the loop's evaluation parts have their own resume tests)
    plan = {"epochs": 2, "grad_accum": 2, "eval_every": -1, "save_every": 0, **train}
    return make_config(out, task=task, data=data, train=plan, eval={"final_eval": False})


def _steps(out) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _result(out) -> tuple[list[dict], dict]:
    return _steps(out), load_file(out / "model" / "model.safetensors")


def _sigterm_mid_window(monkeypatch) -> None:
    """SIGTERM this process at the next run's first micro batch that does not end its accumulation window."""
    sent = []

    def boundary(self, last_in_epoch: bool) -> bool:
        ends = real(self, last_in_epoch)
        if not ends and not sent:
            sent.append(self.state.micro_in_epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return ends

    real = loop.Trainer._accumulation_boundary
    monkeypatch.setattr(loop.Trainer, "_accumulation_boundary", boundary)


def _assert_same_run(resumed: tuple[list[dict], dict], full: tuple[list[dict], dict]) -> None:
    (steps, weights), (full_steps, full_weights) = resumed, full
    assert [s["step"] for s in steps] == [s["step"] for s in full_steps]
    for got, want in zip(steps, full_steps, strict=True):  # loss, lr, cnn_lr, the visual-word terms
        assert got == want, (got, want)
    assert weights.keys() == full_weights.keys()
    differ = [name for name in full_weights if not torch.equal(weights[name], full_weights[name])]
    assert not differ, differ


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_stopped_and_resumed_run_is_the_uninterrupted_one(bench, small, tmp_path, monkeypatch, kind):
    task, data, train = KINDS[kind]
    data = {**small, **data}
    run(_config(tmp_path / "full", bench, task, data, train), CPU)
    full = _result(tmp_path / "full")
    assert len(full[0]) >= 4, "too few steps to stop in the middle"

    # stopped by train.stop_after_steps after step 2, resumed and stopped by a SIGTERM in the middle of an
    # accumulation window (the run ends that window, saves and stops), then resumed to the end
    out = tmp_path / "split"
    assert run(_config(out, bench, task, data, {**train, "stop_after_steps": 2}), CPU)["step"] == 2
    resumed = _config(out, bench, task, data, {**train, "resume": "auto"})
    with monkeypatch.context() as patch:
        _sigterm_mid_window(patch)
        assert run(resumed, CPU)["reason"] == "signal"
    stopped_at = len(_steps(out))
    assert 2 < stopped_at < len(full[0])
    assert run(resumed, CPU)["reason"] == "done"
    _assert_same_run(_result(out), full)


def _stopped_run(out, bench, task: str, data: dict, train: dict) -> None:
    """A run of `task` stopped (and checkpointed) after its first step."""
    assert run(_config(out, bench, task, data, {**train, "stop_after_steps": 1}), CPU)["step"] == 1


@pytest.mark.parametrize("before, after", [(1.0, 0.0), (0.0, 1.0)])
def test_a_resume_that_turns_the_visual_word_loss_on_or_off_is_refused_naming_it(
    bench, small, tmp_path, before, after
):
    # The checkpoint holds the visual-word head's weights and optimizer state, or does not: the resume
    # failed in DeepSpeed's load with a RuntimeError listing state-dict keys (docs/TRAINING.md said it would
    # go ahead with a warning, as another weight of the loss does)
    _stopped_run(tmp_path, bench, "msrvtt_ret", small, {"visual_word_loss": before})
    resumed = _config(tmp_path, bench, "msrvtt_ret", small, {"visual_word_loss": after, "resume": "auto"})
    with pytest.raises(
        ConfigError, match=rf"train.visual_word_loss={before}, this run has train.visual_word_loss={after}"
    ):
        run(resumed, CPU)
    # the refused resume left the interrupted run as it was: resumed as trained, it goes on
    assert run(
        _config(tmp_path, bench, "msrvtt_ret", small, {"visual_word_loss": before, "resume": "auto"}), CPU
    )


def _answer_vocab_changed(bench, tmp_path, change) -> tuple:
    """A tgif_frameqa run stopped after step 1 on a copy of the bench's annotations, then its ans2label file
    changed by `change(ans2label)`; returns (the resume's config, the file, its answers before)."""
    ann = tmp_path / "annotations"
    shutil.copytree(bench / "annotations", ann)
    data = {"ann_dir": str(ann)}
    _stopped_run(tmp_path / "run", bench, "tgif_frameqa", data, {})
    vocab = ann / "tgif_frameqa_ans2label.json"
    answers = json.loads(vocab.read_text())
    vocab.write_text(json.dumps(change(dict(answers))))
    return _config(tmp_path / "run", bench, "tgif_frameqa", data, {"resume": "auto"}), vocab, answers


def test_a_resume_with_another_answer_vocabulary_size_is_refused_naming_the_file(bench, tmp_path):
    # QA's head has one class per answer of {task}_ans2label.json: another vocabulary (a regenerated or
    # another data set) failed in DeepSpeed's load with a RuntimeError on the classifier's shapes
    resumed, vocab, answers = _answer_vocab_changed(bench, tmp_path, lambda a: {**a, "one more": len(a)})
    n = len(answers)
    with pytest.raises(ConfigError, match=rf"head of {n} answers, but .*{vocab.name} has {n + 1}"):
        run(resumed, CPU)


def test_a_resume_whose_answers_mean_other_classes_is_refused(bench, tmp_path):
    # The same count, two answers' classes swapped: the resume went on without a word, every step training
    # those answers' examples toward the other's class
    def swap(ans2label: dict) -> dict:
        first, second = sorted(ans2label, key=ans2label.get)[:2]
        return {**ans2label, first: ans2label[second], second: ans2label[first]}

    resumed, vocab, _ = _answer_vocab_changed(bench, tmp_path, swap)
    with pytest.raises(ConfigError, match=rf"trained on other answers .* than .*{vocab.name}"):
        run(resumed, CPU)


@pytest.mark.parametrize(
    "task, change, said",
    [
        ("pretrain", {"mlm_on_swapped": True}, "data.mlm_on_swapped False -> True"),
        ("vqa", {"image_orientation": "exif"}, "data.image_orientation stored -> exif"),
    ],
)
def test_a_resume_that_changes_a_kinds_data_stream_says_so(
    bench, small, tmp_path, train_log, task, change, said
):
    # A clean bill, kept as a guard: the kind-specific settings of docs/TRAINING.md's list are in the plan
    _stopped_run(tmp_path, bench, task, small, {"epochs": 1})
    assert (
        run(_config(tmp_path, bench, task, {**small, **change}, {"epochs": 1, "resume": "auto"}), CPU)[
            "reason"
        ]
        == "done"
    )
    assert f"the run's plan changed since the checkpoint ({said})" in train_log.text


def test_a_resume_says_what_of_the_text_budget_and_the_training_texts_changed(
    bench, small, tmp_path, train_log
):
    # The plan kept data.max_text_len whole, so another task's budget (retrieval's, in a QA run) was
    # reported as a change of this run; and it kept the training file's size alone, so a regenerated or
    # edited annotation file of as many examples resumed as the same run's data without a word
    task = "msrvtt_qa"
    _stopped_run(tmp_path, bench, task, small, {"epochs": 1})
    other_task = {**small, "max_text_len": {"msrvtt_ret": 50}}
    assert run(_config(tmp_path, bench, task, other_task, {"epochs": 1, "resume": "auto"}), CPU)["step"] == 4
    assert "plan changed" not in train_log.text
    _stopped_run(tmp_path / "again", bench, task, small, {"epochs": 1})
    annotations = tmp_path / "edited"
    shutil.copytree(small["ann_dir"], annotations)
    path = annotations / f"{task}_train.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[1:] + lines[:1]))  # the same examples, in another order
    edited = {**small, "ann_dir": str(annotations), "max_text_len": {task: 40}}
    run(_config(tmp_path / "again", bench, task, edited, {"epochs": 1, "resume": "auto"}), CPU)
    said = {r.getMessage() for r in train_log.records if "plan changed" in r.getMessage()}
    assert len(said) == 1 and "(data.max_text_len 100 -> 40, data.train_annotations " in said.pop()
