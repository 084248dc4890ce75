"""Text-to-video retrieval evaluation against docs/TRAINING.md and the original ClipBERT
(jayleicn/ClipBERT, src/tasks/run_video_retrieval.py): every video scored or, when the loader dropped it
as undecodable, ranked last; never a stopped evaluation."""

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.models import ClipBert, ClipBertConfig
from clipbert.train import evaluate

VOCAB, LT, L = 97, 8, 64  # 64 px frames: one visual token per clip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ClipBertConfig.from_preset(
        "tiny", image_size=L, vocab_size=VOCAB, max_position_embeddings=40, max_text_len=LT, num_layers=1
    )
    return ClipBert(cfg).eval()


def _cfg(video_batch=2, text_batch=2):
    return SimpleNamespace(
        eval=SimpleNamespace(word_score_weight=0.0, video_batch=video_batch, text_batch=text_batch),
        task=SimpleNamespace(aggregation="lse"),
        train=SimpleNamespace(progress_bar=False),
    )


def _batch(indices: list[int]) -> dict:
    """A video batch as the DALI loader yields it; `indices` empty: every row was dropped (undecodable)."""
    gen = torch.Generator().manual_seed(sum(indices) + len(indices))
    return {
        "index": torch.tensor(indices, dtype=torch.int64),
        "frames": torch.randn(len(indices), 1, 1, 3, L, L, generator=gen),  # [B, N, T, 3, L, L]
        "video_ids": [f"v{i}" for i in indices],
        "bad_videos": [],
    }


def _data(num_videos: int):
    ids = torch.randint(1, VOCAB, (num_videos, LT), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 2  # any non-pad first token; the mask says every token is read
    return SimpleNamespace(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        text_to_video=torch.arange(num_videos),
        video_ids=[f"v{i}" for i in range(num_videos)],
    )


@pytest.mark.parametrize("empty_at", [0, 1, 2])
def test_a_batch_whose_every_video_was_dropped_leaves_them_unscored(model, empty_at):
    # docs/TRAINING.md: a video the DALI loader drops (neither DALI nor PyAV decodes it) has no score and
    # ranks last for its texts (`unscored_videos`). A batch of such videos only (eval.batch_size 1, or a run
    # of bad files) reached the model as frames [0, N, T, 3, L, L] and the evaluation stopped (ValueError).
    batches = [_batch([0, 1]), _batch([2, 3]), _batch([4])]
    batches[empty_at] = _batch([])
    dropped = {0: [0, 1], 1: [2, 3], 2: [4]}[empty_at]
    out = evaluate.evaluate_retrieval(model, _data(5), batches, _cfg(), "cpu", torch.float32, False)
    assert out["unscored_videos"] == len(dropped) and out["num_videos"] == 5 and out["num_texts"] == 5
    whole = evaluate.evaluate_retrieval(
        model, _data(5), [_batch([0, 1]), _batch([2, 3]), _batch([4])], _cfg(), "cpu", torch.float32, False
    )
    assert whole["unscored_videos"] == 0
    assert out["t2v_r1"] <= whole["t2v_r1"]  # the dropped videos' texts rank them last: misses


def test_balanced_evaluation_keeps_every_ranks_forward_count(monkeypatch):
    # ZeRO-3: each forward is a collective, so a rank must run as many as the longest rank's shard. A skipped
    # empty batch is made up by a discarded repeat of a real one, as a shorter shard's end already is.
    monkeypatch.setattr(evaluate, "_max_over_ranks", lambda value, device: 4)
    batches = [_batch([]), _batch([0]), _batch([]), _batch([1])]
    got = [(b["index"].tolist(), real) for b, real in evaluate.balanced(batches, True, "cpu")]
    assert len(got) == 4 and [index for index, real in got if real] == [[0], [1]]
    assert all(index for index, _ in got)  # nothing empty reaches the model
    unbalanced = [(b["index"].tolist(), real) for b, real in evaluate.balanced(batches, False, "cpu")]
    assert unbalanced == [([0], True), ([1], True)]


class _Peers:
    """evaluate._max_over_ranks as a 2-rank run answers it: the peer's values, in call order."""

    def __init__(self, peer_values: list[int]):
        self.peer_values, self.calls = list(peer_values), 0

    def __call__(self, value, device):
        self.calls += 1
        return max(value, self.peer_values.pop(0))


def _counting(model, monkeypatch) -> dict:
    """Counts the model's forwards (each a collective under ZeRO-3)."""
    counts = {"encode_visual": 0, "score": 0}
    for name in counts:
        original = getattr(model, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, name, counted)
    return counts


def test_a_zero3_rank_left_without_any_video_runs_its_peers_forwards(model, monkeypatch):
    # ZeRO-3: every forward is a collective. A rank whose whole shard the DALI loader dropped raised, while
    # its peer waited in a forward for it: a hang in a 2-rank run. It now runs as many forwards as its peer
    # (a made-up one-row batch, discarded) and its videos rank last.
    cfg = _cfg(video_batch=1, text_batch=2)
    peer_loader = [_batch([0, 1]), _batch([2, 3])]
    counts = _counting(model, monkeypatch)
    monkeypatch.setattr(evaluate, "_max_over_ranks", _Peers([0, 0]))
    peer = evaluate.evaluate_retrieval(model, _data(4), peer_loader, cfg, "cpu", torch.float32, True)
    peer_counts = dict(counts)
    counts.update(encode_visual=0, score=0)
    peers = _Peers([2, 4])  # the peer's loader length, then its number of videos
    monkeypatch.setattr(evaluate, "_max_over_ranks", peers)
    out = evaluate.evaluate_retrieval(
        model, _data(4), [_batch([]), _batch([])], cfg, "cpu", torch.float32, True
    )
    assert counts == peer_counts == {"encode_visual": 2, "score": 4 * 2}
    assert peers.calls == 2  # every collective of the peer's, too
    assert out["unscored_videos"] == 4 and peer["unscored_videos"] == 0


def test_a_batch_made_up_for_a_zero3_peer_has_one_row_of_every_field():
    empty = {
        "index": torch.zeros(0, dtype=torch.int64),
        "frames": torch.zeros(0, 2, 1, 3, L, L),
        "input_ids": torch.zeros(0, 3, LT, dtype=torch.int64),  # [B, M, Lt]: multiple choice
        "attention_mask": torch.zeros(0, 3, LT, dtype=torch.int64),
        "labels": torch.zeros(0, dtype=torch.int64),
        "video_ids": [],
        "bad_videos": ["v7: corrupt"],  # reported already, from the empty batch itself
        "max_text_len": LT,
    }
    got = evaluate.one_row_stand_in(empty)
    assert got["frames"].shape == (1, 2, 1, 3, L, L) and got["input_ids"].shape == (1, 3, LT)
    assert got["attention_mask"].eq(1).all() and got["input_ids"].eq(0).all()  # read, not all masked
    assert got["labels"].shape == (1,) and got["video_ids"] == [""] and got["bad_videos"] == []
    assert got["max_text_len"] == LT and got["input_ids"].dtype == torch.int64


def test_a_training_epoch_passes_over_every_caption_once(tmp_path, tokenizer):
    # run_video_retrieval.py: mk_input_group(..., max_n_example_per_group=1) makes each caption an example,
    # so 20 MSRVTT epochs are 20 passes over ~140k captions; one caption per video makes them 20 over 7k.
    captions = {"v0": ["a dog runs", "a brown dog", "a dog plays"], "v1": ["a cat sleeps"], "v2": ["a bird"]}
    with open(tmp_path / "msrvtt_ret_train.jsonl", "w") as f:
        f.writelines(
            json.dumps({"caption": c, "clip_name": v}) + "\n" for v, cs in captions.items() for c in cs
        )
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=1, seed=0)
    dataset = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    dataset.visual = lambda video_id, epoch: {"video_id": video_id}  # the texts alone: no decoding
    positives = Counter(
        tokenizer.decode(dataset.load(index, 0)["input_ids"][0], skip_special_tokens=True)
        for index in range(len(dataset))
    )
    assert positives == Counter(c for cs in captions.values() for c in cs)


def test_a_videos_texts_draw_their_own_clips_and_one_text_per_video_keeps_its_order(tmp_path, tokenizer):
    from clipbert.data.datasets import _text_rounds

    # rounds: every video's first text, then the second texts ...; a one-text-per-video set keeps item v = v
    pairs, rounds = _text_rounds([2, 1, 3])
    assert pairs.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [2, 1], [2, 2]] and rounds == 3
    assert _text_rounds([1, 1])[0].tolist() == [[0, 0], [1, 0]]
    captions = {"v0": ["a dog runs", "a brown dog"], "v1": ["a cat sleeps"]}
    with open(tmp_path / "msrvtt_ret_train.jsonl", "w") as f:
        f.writelines(
            json.dumps({"caption": c, "clip_name": v}) + "\n" for v, cs in captions.items() for c in cs
        )
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=1, seed=0)
    dataset = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    keys = []
    dataset.visual = lambda video_id, key: keys.append((video_id, key)) or {"video_id": video_id}
    for epoch in (0, 1):
        for index in range(len(dataset)):
            dataset.load(index, epoch)
    # v0's two texts draw clips apart, and every epoch anew: no two items share a sampling key
    assert keys == [("v0", 0), ("v1", 0), ("v0", 1), ("v0", 2), ("v1", 2), ("v0", 3)]


def test_a_zero3_rank_left_without_any_example_runs_its_peers_forwards(model, monkeypatch):
    # The same for per-example evaluation (QA, multiple choice, pre-training): the made-up batch is forwarded
    # as many times as the peer's batches, and yields no record
    from clipbert.train.tasks import predict

    def mc_batch(indices):
        b = len(indices)
        return {
            "index": torch.tensor(indices, dtype=torch.int64),
            "frames": torch.randn(b, 1, 1, 3, L, L),
            "input_ids": torch.randint(1, VOCAB, (b, 3, LT)),  # [B, M, Lt]
            "attention_mask": torch.ones(b, 3, LT, dtype=torch.int64),
            "labels": torch.zeros(b, dtype=torch.int64),
            "video_ids": [f"v{i}" for i in indices],
            "bad_videos": [],
        }

    calls = []

    def model_fn(batch):
        calls.append(batch["input_ids"].shape)
        return predict(model, batch, "mc_itm", "lse")

    monkeypatch.setattr(evaluate, "_max_over_ranks", _Peers([3]))
    records = evaluate.evaluate_examples(model_fn, [mc_batch([]), mc_batch([])], "cpu", torch.float32, True)
    assert records == [] and calls == [(1, 3, LT)] * 3
