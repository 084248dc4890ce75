"""Exact, hand-worked values for the pieces whose silent breakage would corrupt results: each test pins
one behaviour that a plausible wrong edit (an off-by-one, a dropped term, a swapped direction) would change
without failing the property tests elsewhere."""

import json
import math
import random

import numpy as np
import pytest
import torch

from clipbert.data.collate import Collator
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.sampling import clip_length, sample_frame_indices
from clipbert.data.video_source import frame_rng
from clipbert.data.vqa_answers import build_ans2label
from clipbert.models import ClipBert, ClipBertConfig, VisualTokens
from clipbert.ops import clip_aggregate, clip_aggregate_reference
from clipbert.train import checkpoint as ckpt
from clipbert.train.evaluate import _with_unscored_examples, summarize
from clipbert.train.tasks import NO_PREDICTION, predict

# ---- clip sampling ------------------------------------------------------------------------------------


def test_clip_length_rounds_to_nearest_frame_not_down():
    assert clip_length(29.97, 1.0) == 30  # 29.97 frames: truncating would drop a frame from every clip
    assert clip_length(10.0, 0.26) == 3  # 2.6 frames


def test_one_frame_per_clip_takes_the_clip_centre_not_its_first_frame():
    # 101 frames at 10 fps, 1 s clips: the middle clip starts at (101 - 10) // 2 = 45 and spans 45..54;
    # its centre frame is 45 + (10 - 1) // 2 = 49 (the lower of the two centre frames of an even clip)
    np.testing.assert_array_equal(sample_frame_indices(101, 10.0, 1, 1, 1.0, "middle"), [[49]])
    # odd clip length 5 (0.5 s at 10 fps): 101 - 5 = 96, start 48, centre 48 + 2 = 50
    np.testing.assert_array_equal(sample_frame_indices(101, 10.0, 1, 1, 0.5, "middle"), [[50]])


def test_frames_within_a_clip_round_to_the_nearest_evenly_spaced_frame():
    # clip of 5 frames (0.5 s at 10 fps) at start 0 (5-frame video), T = 4: linspace(0, 4, 4) =
    # 0, 1.33, 2.67, 4 -> rounds to 0, 1, 3, 4 (flooring would give 0, 1, 2, 4)
    np.testing.assert_array_equal(sample_frame_indices(5, 10.0, 1, 4, 0.5, "middle"), [[0, 1, 3, 4]])


def test_training_clips_are_drawn_anew_per_key_and_per_video():
    # the clip starts of a 400-frame video (10 fps, 1 s clips, 4 clips): a new draw for another sample key
    # (epoch or example) and for another video, the same draw for the same (seed, key, video)
    def starts(seed, key, video):
        return sample_frame_indices(400, 10.0, 4, 2, 1.0, "rand", frame_rng(seed, key, video))[:, 0].tolist()

    base = starts(3, 5, "video1")
    assert starts(3, 5, "video1") == base
    assert starts(3, 6, "video1") != base  # another epoch: paper's sparse sampling sees new clips
    assert starts(3, 5, "video2") != base  # another video of the same length
    assert starts(4, 5, "video1") != base


# ---- QA / multiple-choice predictions -----------------------------------------------------------------


def _predict(scores: torch.Tensor, kind: str, labels: list[int]) -> list[int]:
    """predict() with a stand-in model that returns `scores` [B, M, N, K]."""
    batch = {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor(labels)}
    return predict(lambda frames, ids, mask: scores, batch, kind, "lse")["pred"].tolist()


def test_retrieval_scored_multiple_choice_keeps_each_videos_options_together():
    # B = 2 videos, M = 3 options, N = 1 clip, K = 2 (no match, match); the log-odds of option m of video b
    # are odds[b][m]: video 0 picks option 2, video 1 picks option 0
    odds = torch.tensor([[0.0, 1.0, 5.0], [3.0, 2.0, -1.0]], dtype=torch.float64)
    scores = torch.zeros(2, 3, 1, 2)
    scores[..., 0, 1] = odds.float()
    assert _predict(scores, "mc_itm", [2, 0]) == [2, 0]


def test_multiple_choice_tied_top_options_predict_nothing():
    # video 0: options 0 and 2 tie at the top (a first-of-ties argmax would pick 0, the label); video 1:
    # option 1 alone is best
    scores = torch.tensor([[1.0, -1.0, 1.0], [0.0, 2.0, 1.0]])[:, :, None, None]  # [B=2, M=3, N=1, K=1]
    assert _predict(scores, "mc", [0, 1]) == [NO_PREDICTION, 1]


class _ThreeQuestions:
    """A QA dataset's evaluation targets: example i has label 10 + i and answer type "t<i>"."""

    def __len__(self) -> int:
        return 3

    def eval_target(self, index: int) -> dict:
        return {"labels": 10 + index, "answer_type": f"t{index}"}


def test_an_unscored_example_counts_wrong_under_its_own_answer_type():
    # example 1's video could not be decoded: its miss belongs to type t1, and examples 0 and 2 are right
    scored = [{"index": i, "pred": 10 + i, "label": 10 + i, "answer_type": f"t{i}"} for i in (0, 2)]
    records, missing = _with_unscored_examples(scored, _ThreeQuestions(), "val")
    assert missing == 1
    assert records[1] == {"index": 1, "pred": NO_PREDICTION, "label": 11, "answer_type": "t1"}
    summary = summarize("qa", records)
    assert summary["acc"] == pytest.approx(200 / 3)
    assert (summary["acc_t0"], summary["acc_t1"], summary["acc_t2"]) == (100.0, 0.0, 100.0)


# ---- clip aggregation (paper Table 3) -----------------------------------------------------------------


def _hand_aggregated(mode: str) -> list[list[float]]:
    """Video log-probs of the two videos of _TWO_VIDEOS, worked out with math (float64)."""
    lse = lambda *v: math.log(sum(math.exp(x) for x in v))  # noqa: E731
    if mode == "lse":  # logsumexp over the clips of each class, minus over (clips, classes)
        total0, total1 = lse(0, 3, 4, 1), lse(1, 0, 0, 5)
        return [[lse(0, 4) - total0, lse(3, 1) - total0], [lse(1, 0) - total1, lse(0, 5) - total1]]
    pooled = {"mean": [[2.0, 2.0], [0.5, 2.5]], "max": [[4.0, 3.0], [1.0, 5.0]]}[mode]
    return [[p - lse(*row) for p in row] for row in pooled]  # log-softmax over the classes


_TWO_VIDEOS = torch.tensor(
    [[[0.0, 3.0], [4.0, 1.0]], [[1.0, 0.0], [0.0, 5.0]]], dtype=torch.float64
)  # [B, N, K]


@pytest.mark.parametrize("mode", ["lse", "mean", "max"])
def test_clip_aggregation_and_its_reference_give_hand_worked_log_probs(mode):
    expected = torch.tensor(_hand_aggregated(mode), dtype=torch.float64)
    torch.testing.assert_close(clip_aggregate_reference(_TWO_VIDEOS, mode), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clip_aggregate(_TWO_VIDEOS, mode), expected, rtol=1e-12, atol=1e-12)


# ---- checkpoint RNG states ----------------------------------------------------------------------------


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_a_saved_rng_state_restores_every_generator():
    saved = ckpt.rng_state()
    first = _draws()
    ckpt.set_rng_state(saved)
    assert _draws() == first  # python, numpy and torch each repeat their stream


def test_each_rank_seeds_its_own_stream(monkeypatch):
    streams = []
    for r in (0, 1):
        monkeypatch.setattr(ckpt, "rank", lambda r=r: r)
        ckpt.seed_everything(7)
        streams.append(_draws())
    assert all(a != b for a, b in zip(*streams))  # dropout differs across data-parallel ranks
    ckpt.seed_everything(7)  # rank 1 still: the same stream again
    assert _draws() == streams[1]


# ---- which text goes with which video -----------------------------------------------------------------


def test_collated_texts_stay_with_their_own_item():
    # two items of M = 3 texts each; text m of item b has ids [101, 10 b + m] (+ a [SEP] on some)
    items = [
        {
            "index": b,
            "video_id": f"v{b}",
            "bad_videos": [],
            "input_ids": [[101, 10 * b + m] + [102] * (m % 2) for m in range(3)],
            "mlm_labels": [[-100, 50 + 10 * b + m] + [-100] * (m % 2) for m in range(3)],
        }
        for b in range(2)
    ]
    batch = Collator(pad_id=0)(items)
    assert batch["input_ids"].shape == (2, 3, 3)  # [B, M, longest text]
    for b in range(2):
        for m in range(3):
            assert batch["input_ids"][b, m, :2].tolist() == [101, 10 * b + m]
            assert batch["attention_mask"][b, m].tolist() == [1, 1, m % 2]
            assert batch["mlm_labels"][b, m, 1] == 50 + 10 * b + m


def _write_captions(path, lines: list[tuple[str, str]]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps({"clip_name": video, "caption": caption}) + "\n" for video, caption in lines)


def test_retrieval_eval_maps_every_caption_to_its_own_video(tokenizer, tmp_path):
    # interleaved lines, several captions a video: each text row must point at its own video's column
    lines = [("v0", "a dog runs"), ("v1", "a cat sleeps"), ("v0", "a dog jumps"), ("v2", "a bird")]
    lines += [("v1", "a cat eats"), ("v0", "a dog barks")]
    _write_captions(tmp_path / "msrvtt_ret_test.jsonl", lines)
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    data = build_dataset("msrvtt_ret", "test", cfg, tokenizer, IMAGENET_RGB)
    owner_of = {caption: video for video, caption in lines}
    texts = tokenizer.batch_decode(data.input_ids, skip_special_tokens=True)
    assert sorted(texts) == sorted(owner_of)  # every caption once
    assert [data.video_ids[v] for v in data.text_to_video.tolist()] == [owner_of[t] for t in texts]


def test_retrieval_negatives_are_drawn_from_every_other_video(tokenizer, tmp_path):
    # three videos of one caption each: video 0's negatives come from videos 1 and 2 about equally
    _write_captions(tmp_path / "msrvtt_ret_train.jsonl", [("v0", "a dog"), ("v1", "a cat"), ("v2", "a bird")])
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=1, seed=3)
    dataset = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    rng = np.random.default_rng(0)
    drawn = [dataset._negative(0, set(dataset.text_keys[0]), rng) for _ in range(400)]
    assert set(drawn) == {"a cat", "a bird"}
    assert 140 < drawn.count("a bird") < 260  # binomial(400, 1/2): outside is a 6-sigma event


# ---- VQA answer vocabulary ----------------------------------------------------------------------------


def test_answer_vocabulary_breaks_majority_ties_alphabetically_and_orders_by_count():
    # two questions whose humans split "dog"/"cat" (majority: "cat", the alphabetically first), three "red",
    # two "sun", one "egg" (under min_count)
    questions = [["dog", "cat"]] * 2 + [["red", "red"]] * 3 + [["sun"]] * 2 + [["egg"]]
    assert build_ans2label(questions, min_count=2) == {"red": 0, "cat": 1, "sun": 2}


# ---- which clip and which text the model pairs --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = ClipBertConfig.from_preset(
        "tiny", image_size=64, vocab_size=97, max_position_embeddings=40, max_text_len=12
    )
    model = ClipBert(cfg).eval()
    with torch.no_grad():  # at init the head's logits differ across clips by ~1e-5: make them tell apart
        for param in model.classifier.parameters():
            param.mul_(1000.0)
    return model


@torch.no_grad()
def test_each_clip_keeps_its_own_video_and_place(tiny_model):
    frames = torch.randn(2, 2, 1, 3, 64, 64)  # [B, N, T, 3, L, L]: every clip different
    tokens = tiny_model.encode_visual(frames).tokens  # [B, N, Lv, H]
    for b in range(2):
        for n in range(2):
            alone = tiny_model.encode_visual(frames[b : b + 1, n : n + 1]).tokens[0, 0]
            torch.testing.assert_close(tokens[b, n], alone, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_each_text_and_clip_pair_scores_as_that_text_alone_on_that_clip(tiny_model):
    # one video of N = 2 clips, M = 2 texts: text 0 fills its 8 tokens, text 1 has 5 and 3 of padding (ids
    # there are not [PAD]: a wrong mask changes the score). Each (text, clip) must score as that text alone.
    visual = tiny_model.encode_visual(torch.randn(1, 2, 1, 3, 64, 64))  # tokens [1, 2, Lv, H]
    ids = torch.randint(1, 97, (1, 2, 8))
    ids[:, :, 0] = 1  # a [CLS]-like first token, attended
    mask = torch.ones_like(ids)
    mask[0, 1, 5:] = 0
    scores = tiny_model.score(visual, ids, mask)  # [1, M, N, K]
    for m, length in ((0, 8), (1, 5)):
        for n in range(2):
            clip = VisualTokens(visual.tokens[:, n : n + 1])
            alone = tiny_model.score(clip, ids[:, m : m + 1, :length], mask[:, m : m + 1, :length])
            torch.testing.assert_close(scores[0, m, n], alone[0, 0, 0], rtol=1e-4, atol=1e-3)
    assert (scores[0, :, 0] - scores[0, :, 1]).abs().max() > 1e-2  # the clips score apart
