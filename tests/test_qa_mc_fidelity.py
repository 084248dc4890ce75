"""Video QA and multiple-choice tasks against the original ClipBERT (run_video_qa.py, run_msrvtt_mc.py):
how examples are encoded, which examples the accuracy counts, and what it counts them as."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.train import evaluate


def _write_jsonl(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _data_cfg(tmp_path) -> DataConfig:
    (tmp_path / "videos").mkdir(exist_ok=True)  # never read: these tests load no frames
    return DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path / "videos"), image_size=64, num_workers=0)


def _qa_set(tmp_path, tokenizer):
    """msrvtt_qa val: 4 questions; the last one's answer is outside ans2label (label -100)."""
    answers = ["cat", "dog", "cat", "zebra"]
    rows = [
        {"question": f"what is it {k}?", "answer": a, "video_id": f"video{k}", "answer_type": "what"}
        for k, a in enumerate(answers)
    ]
    _write_jsonl(tmp_path / "msrvtt_qa_val.jsonl", rows)
    (tmp_path / "msrvtt_qa_ans2label.json").write_text(json.dumps({"cat": 0, "dog": 1}))
    return build_dataset("msrvtt_qa", "val", _data_cfg(tmp_path), tokenizer, IMAGENET_RGB)


def _mc_set(tmp_path, tokenizer, task="tgif_action"):
    """4 five-way questions whose true options are 0, 3, 1, 4."""
    rows = [{"options": [f"{c} {k}" for c in "abcde"], "answer": a} for k, a in enumerate([0, 3, 1, 4])]
    for k, row in enumerate(rows):  # msrvtt_mc: a video and 5 captions; TGIF: a question and 5 answers
        row.update(
            {"clip_name": f"video{k}"}
            if task == "msrvtt_mc"
            else {"question": f"what {k}?", "gif_name": f"g{k}"}
        )
    _write_jsonl(tmp_path / f"{task}_val.jsonl", rows)
    return build_dataset(task, "val", _data_cfg(tmp_path), tokenizer, IMAGENET_RGB)


class _Oracle(nn.Module):
    """Scores [B, M, N, K] that pick, for each row, the class (qa: K answers) or option (mc: M) written in
    its frames[b, 0, 0, 0, 0, 0]: a model that is right wherever the test says so."""

    def __init__(self, kind: str, num_answers: int = 2):
        super().__init__()
        self.kind, self.num_answers = kind, num_answers

    def forward(self, frames, input_ids, attention_mask):
        b, m = input_ids.shape[:2]
        n = frames.shape[1]
        pick = frames[:, 0, 0, 0, 0, 0].long()  # [B]
        if self.kind == "qa":  # [B, 1, N, K]
            return 10.0 * nn.functional.one_hot(pick, self.num_answers).float()[:, None, None].expand(
                b, 1, n, -1
            )
        scores = 10.0 * nn.functional.one_hot(pick, m).float()  # [B, M]
        return scores[:, :, None, None].expand(b, m, n, 1)  # mc: one score per option


def _batch(rows: list[int], picks: list[int], labels: list[int], m: int, qa: bool) -> dict:
    """A collated eval batch of examples `rows` (what the loader yields after dropping any others)."""
    b = len(rows)
    frames = torch.zeros(b, 2, 1, 3, 4, 4)  # [B, N, T, 3, L, L]
    frames[:, 0, 0, 0, 0, 0] = torch.tensor(picks, dtype=torch.float32)
    batch = {
        "index": torch.tensor(rows),
        "frames": frames,
        "input_ids": torch.full((b, m, 5), 7),
        "attention_mask": torch.ones(b, m, 5, dtype=torch.int64),
        "labels": torch.tensor(labels),
        "bad_videos": [],
    }
    if qa:
        batch["answer_types"] = ["what"] * b
    return batch


def _evaluate(model, kind: str, dataset, loader) -> dict:
    engine = SimpleNamespace(module=model, zero_optimization_partition_weights=lambda: False)
    cfg = SimpleNamespace(
        task=SimpleNamespace(kind=kind, aggregation="lse"),
        train=SimpleNamespace(progress_bar=False, output_dir="unused"),
    )
    return evaluate.evaluate(engine, cfg, (dataset, loader), "val", "cpu", torch.float32)


# ------------------------------------------------------------------ examples the DALI loader dropped
def test_qa_example_dropped_by_the_loader_counts_as_wrong(tmp_path, tokenizer):
    dataset = _qa_set(tmp_path, tokenizer)
    # example 1's video could not be decoded: the DALI loader dropped its row. The model answers the
    # others right (example 3's answer is outside the vocabulary: wrong whatever it says)
    loader = [_batch([0], [0], [0], 1, qa=True), _batch([2, 3], [0, 1], [0, -100], 1, qa=True)]
    out = _evaluate(_Oracle("qa"), "qa", dataset, loader)
    assert out["num_examples"] == 4 and out["unscored_examples"] == 1
    assert out["acc"] == pytest.approx(50.0) and out["acc_what"] == pytest.approx(50.0)


@pytest.mark.parametrize("kind", ["mc", "mc_itm"])
def test_multiple_choice_example_dropped_by_the_loader_counts_as_wrong(tmp_path, tokenizer, kind):
    task = "tgif_action" if kind == "mc" else "msrvtt_mc"
    dataset = _mc_set(tmp_path, tokenizer, task)
    loader = [_batch([0, 1, 3], [0, 3, 4], [0, 3, 4], 5, qa=False)]  # example 2 dropped
    model = _Oracle("mc")
    if kind == "mc_itm":  # the retrieval model's matching head: [B, M, N, 2]
        model = _TwoWay(model)
    out = _evaluate(model, kind, dataset, loader)
    assert out["num_examples"] == 4 and out["unscored_examples"] == 1
    assert out["acc"] == pytest.approx(75.0)


class _TwoWay(nn.Module):
    """The oracle's option scores as a 2-way matching head's: [B, M, N, 2] with log-odds = the score."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, frames, input_ids, attention_mask):
        s = self.inner(frames, input_ids, attention_mask)  # [B, M, N, 1]
        return torch.cat([torch.zeros_like(s), s], dim=-1)


def test_every_example_scored_reports_none_unscored(tmp_path, tokenizer):
    dataset = _qa_set(tmp_path, tokenizer)
    loader = [_batch([0, 1, 2, 3], [0, 1, 1, 0], [0, 1, 0, -100], 1, qa=True)]
    out = _evaluate(_Oracle("qa"), "qa", dataset, loader)
    assert out["num_examples"] == 4 and out["unscored_examples"] == 0
    assert out["acc"] == pytest.approx(50.0)


# ------------------------------------------------------- a bad video's example in evaluation (PyAV path)
def _frames_or_bad(bad_video: str):
    """A stand-in for TaskDataset.visual: one fixed clip per video, VideoDecodeError for `bad_video`."""
    from clipbert.data.decoders import VideoDecodeError

    def visual(video_id, epoch):
        if video_id == bad_video:
            raise VideoDecodeError(f"{video_id}.mp4", "truncated")
        return {
            "video_id": video_id,
            "frames": torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8),
            "frames_hw": (4, 4),
        }

    return visual


@pytest.mark.parametrize("task", ["msrvtt_qa", "tgif_action", "msrvtt_mc"])
def test_a_bad_video_example_keeps_its_own_question_and_label_in_evaluation(tmp_path, tokenizer, task):
    # docs/TRAINING.md: "its example is scored with the next example's video": the example's own question
    # (options) and label, not the next example's, which counted that one twice and this one never
    dataset = _qa_set(tmp_path, tokenizer) if task == "msrvtt_qa" else _mc_set(tmp_path, tokenizer, task)
    dataset.visual = _frames_or_bad(dataset.video_of(1))
    item, good = dataset[(0, 1)], dataset[(0, 2)]
    assert item["index"] == 1 and item["source_index"] == 2 and len(item["bad_videos"]) == 1
    assert item["labels"] == dataset.eval_target(1)["labels"] != good["labels"]
    assert item["input_ids"] == dataset.text_ids(1) != good["input_ids"]
    assert " 1" in tokenizer.decode(item["input_ids"][0]) and " 2" not in tokenizer.decode(
        item["input_ids"][0]
    )


def test_training_replaces_a_bad_video_example_whole(tmp_path, tokenizer):
    # in training the replacement is a whole other example (its video, text and label): a valid pair
    rows = [
        {"question": f"q{k}", "options": list("abcde"), "answer": k, "gif_name": f"g{k}"} for k in range(3)
    ]
    _write_jsonl(tmp_path / "tgif_action_train.jsonl", rows)
    dataset = build_dataset("tgif_action", "train", _data_cfg(tmp_path), tokenizer, IMAGENET_RGB)
    dataset.visual = _frames_or_bad("g1")
    item = dataset[(0, 1)]
    assert item["source_index"] == 2 and item["labels"] == 2 and item["input_ids"] == dataset.text_ids(2)


# ------------------------------------------------------------- how a multiple-choice example is encoded
def test_tgif_question_and_option_are_one_segment_as_in_the_original(tmp_path, tokenizer):
    # the original's VideoQACollator encodes question + " " + option: [CLS] question option [SEP], no [SEP]
    # between them (a converted original TGIF-QA model never saw one there)
    dataset = _mc_set(tmp_path, tokenizer, "tgif_action")
    example = dataset.examples[1]
    expected = [tokenizer(f"{example['question']} {option}")["input_ids"] for option in example["options"]]
    assert dataset.text_ids(1) == expected
    assert all(row.count(tokenizer.sep_token_id) == 1 for row in dataset.text_ids(1))


def test_a_long_question_is_cut_before_its_options(tmp_path, tokenizer):
    # five options that differ only in their last word: cutting the joined text's end made them alike
    rows = [
        {
            "question": "what does the man in the red shirt do " * 6,
            "options": [f"he walks to the {w}" for w in ("door", "car", "tree", "dog", "sea")],
            "answer": 2,
            "gif_name": "g0",
        }
    ]
    _write_jsonl(tmp_path / "tgif_action_val.jsonl", rows)
    cfg = _data_cfg(tmp_path)
    cfg.max_text_len["tgif_action"] = 16
    dataset = build_dataset("tgif_action", "val", cfg, tokenizer, IMAGENET_RGB)
    ids = dataset.text_ids(0)
    assert all(len(row) == 16 for row in ids) and len({tuple(row) for row in ids}) == 5
    for row, option in zip(ids, rows[0]["options"]):
        words = tokenizer(option, add_special_tokens=False)["input_ids"]
        assert row[-1 - len(words) : -1] == words and row[1] == tokenizer.convert_tokens_to_ids("what")


def test_predict_counts_a_question_and_option_as_the_model_reads_them(tokenizer):
    # clipbert.predict reports an option as cut when its count passes max_text_len: the joined length
    from clipbert.data.text import tokenize
    from clipbert.predict.scoring import token_counts

    predictor = SimpleNamespace(tokenizer=tokenizer, max_text_len=512, device="cpu")
    questions, options = ["what does the dog do ?"] * 2, ["runs", "jumps over the [SEP] fence"]
    rows = tokenize(tokenizer, questions, 512, pairs=options, literal=True)
    assert token_counts(predictor, questions, options) == [len(row) for row in rows]


@pytest.mark.parametrize("task", ["msrvtt_qa", "tgif_action", "tgif_frameqa"])
def test_each_question_draws_its_own_clips_as_in_the_original(tmp_path, tokenizer, task):
    # The original's video QA groups one question per video (max_n_example_per_group 1), each loaded and
    # sampled on its own; here the clips were keyed by (epoch, video), so a video's questions (MSRVTT-QA:
    # about 16) saw the same clips in an epoch
    videos = ["v0", "v0", "v1", "v0", "v2", "v1"]
    key = "video_id" if task == "msrvtt_qa" else "gif_name"
    rows = [{"question": f"what is it {k}?", key: video} for k, video in enumerate(videos)]
    for row in rows:
        row.update({"answer": "cat"} if task != "tgif_action" else {"options": list("abcde"), "answer": 1})
    _write_jsonl(tmp_path / f"{task}_train.jsonl", rows)
    (tmp_path / f"{task}_ans2label.json").write_text(json.dumps({"cat": 0}))
    dataset = build_dataset(task, "train", _data_cfg(tmp_path), tokenizer, IMAGENET_RGB)
    keys = []
    dataset.visual = lambda video_id, key: keys.append((video_id, key)) or {"video_id": video_id}
    for epoch in range(2):
        for index in range(len(videos)):
            dataset.load(index, epoch)
    assert len(set(keys)) == len(keys) == 2 * len(videos)  # no two items of a video share a key
    assert [k for video, k in keys if video == "v2"] == [0 * 3, 1 * 3]  # rounds: v0's 3 questions
    # one question per video: the epoch is the key, so such a set draws the clips it drew before
    one = build_dataset(task, "train", _data_cfg(tmp_path), tokenizer, IMAGENET_RGB)
    one.examples = [one.examples[k] for k in (0, 2, 4)]
    assert [one.sample_key(index, epoch) for epoch in range(2) for index in range(3)] == [0] * 3 + [1] * 3
