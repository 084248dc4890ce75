"""Review of session 25's changes: what they introduced or left (each test failed before its fix)."""

import json

import pytest
from test_train_fakes import make_config

from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.decoders.base import VideoDecodeError
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.train import config as C
from clipbert.train.run import write_resolved_config


def _run_config_json(tmp_path):
    cfg = make_config(tmp_path / "run")
    write_resolved_config(cfg, cfg.model_config(), tmp_path / "run")
    return cfg, tmp_path / "run" / "config.json"


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("data.frames_per_clip=3", "frames_per_clip", 3),
        ("data.max_text_len=13", "max_text_len", 13),
        ("train.visual_word_loss=0.5", "visual_words", True),
    ],
)
def test_a_run_config_json_takes_a_set_of_what_derives_the_model(tmp_path, override, key, value):
    # config.json's resolved_model records what data.*/train.* derived: a --set of those changes the model on
    # purpose, as a --set model.* does; it was refused, telling to change model.* (which may not disagree)
    cfg, path = _run_config_json(tmp_path)
    assert getattr(cfg.model_config(), key) != value
    assert getattr(C.load(path, [override]).model_config(), key) == value


def _qa_train_set(tmp_path, tokenizer, videos):
    rows = [
        {"question": f"what is it {k}?", "video_id": video, "answer": "cat"} for k, video in enumerate(videos)
    ]
    (tmp_path / "msrvtt_qa_train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "msrvtt_qa_ans2label.json").write_text(json.dumps({"cat": 0}))
    (tmp_path / "videos").mkdir(exist_ok=True)
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path / "videos"), image_size=64, num_workers=0)
    return build_dataset("msrvtt_qa", "train", cfg, tokenizer, IMAGENET_RGB)


def test_a_question_whose_own_clips_decode_is_not_refused_for_another_questions_clips(tmp_path, tokenizer):
    # A partly corrupt video (truncated: its probe reads, its late frames do not) fails for some clips only.
    # Each question now draws its own clips, but a worker's bad-video cache was kept per epoch:
    # after question 0's clips failed, question 1 of that video was replaced too in that worker, and loaded
    # its own in another (or after a resume): the data depended on which worker had seen what
    def visual(video_id, key):  # question 0 of v0 draws clips in the truncated part (key 0), question 1 not
        if video_id == "v0" and key == 0:
            raise VideoDecodeError(f"{video_id}.mp4", "truncated")
        return {"video_id": video_id}

    seen = _qa_train_set(tmp_path, tokenizer, ["v0", "v0", "v1"])
    seen.visual = visual
    seen.source.info = lambda video_id: None  # its probe reads
    assert seen[(0, 0)]["source_index"] == 2  # replaced: its clips did not decode
    fresh = _qa_train_set(tmp_path, tokenizer, ["v0", "v0", "v1"])
    fresh.visual, fresh.source.info = visual, seen.source.info
    assert fresh[(0, 1)]["source_index"] == 1
    assert seen[(0, 1)]["source_index"] == 1  # as in a worker that had not met question 0 (it was 2)


def test_a_video_that_fails_whatever_its_clips_is_still_skipped_for_its_other_questions(tmp_path, tokenizer):
    # the cache's purpose: an unreadable video (its probe fails) is not opened again for each question
    calls = []

    def probe(video_id):
        calls.append(video_id)
        if video_id == "v0":
            raise VideoDecodeError(f"{video_id}.mp4", "moov atom not found")

    dataset = _qa_train_set(tmp_path, tokenizer, ["v0", "v0", "v0", "v1"])
    dataset.source.info = probe
    dataset.visual = lambda video_id, key: {
        "video_id": video_id,
        "key": dataset.source.indices(video_id, key),
    }
    dataset.source.indices = lambda video_id, key: dataset.source.info(video_id)
    assert [dataset[(0, k)]["source_index"] for k in range(3)] == [3, 3, 3]
    assert calls.count("v0") <= 2  # the first failure, and at most one look at whether its probe fails


def test_an_older_runs_config_json_without_a_newer_model_key_loads(tmp_path):
    # a run's record written before a model key existed (mlm_loss_norm: 2026-11-29) lacks it; as a
    # checkpoint's saved model config (weight_key_differences), a key the record lacks is not compared
    cfg, path = _run_config_json(tmp_path)
    raw = json.loads(path.read_text())
    del raw["resolved_model"]["mlm_loss_norm"]
    path.write_text(json.dumps(raw))
    assert C.load(path).to_dict() == cfg.to_dict()
