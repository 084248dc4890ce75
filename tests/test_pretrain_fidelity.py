"""Image-text pre-training against the original ClipBERT (jayleicn/ClipBERT: run_pretrain.py,
modeling.py's ClipBertForPreTraining, dataset_pretrain.py): ITM negatives and the MLM / ITM loss
normalizations."""

import json

import numpy as np
import pytest
import torch

from clipbert.data import datasets
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.text import tokenize
from clipbert.models import ClipBert, ClipBertConfig
from clipbert.train import config as C

L = 128  # 128 px -> 2x2 visual tokens with the tiny preset
SMALL = dict(image_size=L, vocab_size=97, max_position_embeddings=40, max_text_len=12, num_layers=1)
SMALL.update(hidden_dropout=0.0, attention_dropout=0.0, backbone_layers=(1, 1, 1, 1))


# ----------------------------------------------------------------------------------------- ITM negatives
@pytest.fixture
def pretrain_set(tmp_path, tokenizer, monkeypatch):
    """pretrain_set({image: [captions]}) -> the PretrainDataset of these captions, with blank images."""
    blank = (np.zeros((1, 1, 3, 2, 2), np.uint8), (2, 2))
    monkeypatch.setattr(datasets, "load_image", lambda path, size, orientation="stored": blank)

    def make(images: dict, **cfg):
        rows = [{"image_id": i, "file": f"{i}.jpg", "caption": c} for i, caps in images.items() for c in caps]
        with open(tmp_path / "pretrain_train.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        config = DataConfig(
            ann_dir=str(tmp_path), video_dir=str(tmp_path), **{"seed": 5, "mlm_prob": 0.0, **cfg}
        )
        return build_dataset("pretrain", "train", config, tokenizer, IMAGENET_RGB)

    return make


def own_texts(dataset, index: int) -> set[tuple[int, ...]]:
    """The token ids of every caption of example `index`'s image, as the model reads them."""
    file = dataset.examples[index]["file"]
    captions = [ex["caption"] for ex in dataset.examples if ex["file"] == file]
    return {tuple(ids) for ids in tokenize(dataset.tokenizer, captions, dataset.max_len, literal=True)}


def test_itm_negative_is_never_a_caption_of_the_image_itself(pretrain_set):
    # COCO repeats captions across images ("a man riding a wave on top of a surfboard"), Visual Genome's short
    # region captions far more, and the synthetic benchmark gives every frame of a video its caption: a
    # caption of another image that reads as one of this image's own is a true match, labelled 0 half the
    # time the draw hit it. The uncased tokenizer reads "A dog  runs" as "a dog runs".
    dataset = pretrain_set({"a": ["a dog runs"], "b": ["A dog  runs", "a red car"], "c": ["a blue boat"]})
    items = [(index, dataset.load(index, epoch)) for epoch in range(60) for index in range(len(dataset))]
    negatives = [(index, item) for index, item in items if item["itm_labels"] == 0]
    bad = [index for index, item in negatives if tuple(item["input_ids"][0]) in own_texts(dataset, index)]
    assert not bad, f"{len(bad)} of {len(negatives)} negatives read as a caption of their own image"
    assert abs(len(negatives) / len(items) - 0.5) < 0.07  # itm_neg_prob holds


def test_itm_negative_unlike_the_image_found_when_random_draws_miss(pretrain_set):
    # a's only caption is also 30 of b's: the random draws nearly always hit one of them, and the fallback
    # must still find the one caption that differs
    dataset = pretrain_set({"a": ["same words"], "b": ["same words"] * 30 + ["other words"]})
    items = [dataset.load(0, epoch) for epoch in range(60)]
    negatives = [item["input_ids"][0] for item in items if item["itm_labels"] == 0]
    other = tokenize(dataset.tokenizer, ["other words"], dataset.max_len)[0]
    assert negatives and all(ids == other for ids in negatives)
    assert abs(len(negatives) / len(items) - 0.5) < 0.2


def test_no_itm_negative_when_every_other_caption_reads_the_same(pretrain_set):
    # no caption of another image differs from the image's own: any swap would label a match 0
    dataset = pretrain_set({"a": ["same words"], "b": ["Same  words"]})
    assert all(dataset.load(index, epoch)["itm_labels"] == 1 for epoch in range(20) for index in range(2))


def test_each_caption_is_tokenized_once_for_the_negative_checks(pretrain_set, monkeypatch):
    # An item compares its negative with every caption of its image; those (Visual Genome: dozens an image)
    # were tokenized again for every item, so a worker tokenized each caption about captions-per-image times
    # an epoch. Kept per worker now, with the same draws.
    images = {f"i{k}": [f"caption {k} number {j}" for j in range(6)] for k in range(4)}
    dataset = pretrain_set(images, itm_neg_prob=1.0)
    first = [dataset.load(index, 0)["input_ids"] for index in range(len(dataset))]
    tokenized = []
    original = datasets.tokenize

    def counting(tokenizer, texts, *args, **kwargs):
        tokenized.extend(texts)
        return original(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(datasets, "tokenize", counting)
    fresh = pretrain_set(images, itm_neg_prob=1.0)
    again = [fresh.load(index, 0)["input_ids"] for index in range(len(fresh))]
    assert again == first  # the same negatives and the same masks
    checked = [text for text in tokenized if text.startswith("caption")]
    # the loaded captions themselves (one per item) plus each caption's key at most once
    assert len(checked) <= 2 * len(fresh), f"{len(checked)} tokenizations for {len(fresh)} items"


# -------------------------------------------------------------------------------- loss normalization
def pretrain_batch(b: int = 3, lt: int = 8):
    torch.manual_seed(3)
    frames = torch.randn(b, 1, 1, 3, L, L)
    ids = torch.randint(5, 97, (b, 1, lt))
    mask = torch.ones_like(ids)
    mask[0, 0, lt - 3 :] = 0  # one text padded
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[0, 0, 1:3] = ids[0, 0, 1:3]  # 2 + 1 + 0 masked tokens
    mlm_labels[1, 0, 4] = ids[1, 0, 4]
    itm = torch.tensor([1, 1, 0])[:b]
    return frames, ids, mask, mlm_labels, itm


def hand_losses(out: dict, mlm_labels: torch.Tensor, itm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the masked tokens' cross-entropies, mean ITM cross-entropy over the examples), in float64."""
    labels = mlm_labels[:, 0]  # [B, Lt]
    keep = labels != -100
    log_probs = out["mlm_logits"].double().log_softmax(-1)[keep]  # [masked, vocab]
    mlm_sum = -log_probs.gather(1, labels[keep][:, None]).sum()
    itm_mean = -out["itm_logits"].double().log_softmax(-1).gather(1, itm[:, None]).mean()
    return mlm_sum, itm_mean


@pytest.mark.parametrize("norm", ["masked", "original"])
def test_mlm_and_itm_loss_normalizations_match_a_hand_computation(norm):
    # "masked": BERT's mean over the masked tokens (3 here). "original": the original's run_pretrain.py,
    # CrossEntropyLoss(reduction="none") over every position of texts padded to max_txt_len, then .mean():
    # the masked tokens' sum over B x max_text_len (3 x 12). ITM: the mean over the B examples in both.
    model = ClipBert(ClipBertConfig.from_preset("tiny", **SMALL, mlm_loss_norm=norm)).train()
    frames, ids, mask, mlm_labels, itm = pretrain_batch()
    out = model.pretrain_forward(frames, ids, mask, mlm_labels, itm)
    mlm_sum, itm_mean = hand_losses(out, mlm_labels, itm)
    expected_mlm = mlm_sum / (3 if norm == "masked" else 3 * SMALL["max_text_len"])
    torch.testing.assert_close(out["mlm_loss"].double(), expected_mlm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["itm_loss"].double(), itm_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["mlm_loss"] + out["itm_loss"])
    out["loss"].backward()
    assert model.cls.predictions.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["masked", "original"])
def test_a_batch_without_masked_tokens_gives_a_zero_mlm_loss(norm):
    model = ClipBert(ClipBertConfig.from_preset("tiny", **SMALL, mlm_loss_norm=norm)).train()
    frames, ids, mask, mlm_labels, itm = pretrain_batch()
    out = model.pretrain_forward(frames, ids, mask, torch.full_like(mlm_labels, -100), itm)
    assert out["mlm_loss"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()  # still part of the graph


def test_mlm_loss_norm_is_validated_by_name():
    assert ClipBertConfig().mlm_loss_norm == "masked"  # BERT's loss stays the default
    with pytest.raises(ValueError, match=r"mlm_loss_norm must be one of masked, original; got 'mean'"):
        ClipBertConfig(mlm_loss_norm="mean")
    with pytest.raises(C.ConfigError, match=r"model: mlm_loss_norm must be one of masked, original"):
        C.load("ds_pretrain", ["model.mlm_loss_norm=all"])
    assert C.load("ds_pretrain", ["model.mlm_loss_norm=original"]).model_config().mlm_loss_norm == "original"


@pytest.mark.parametrize("on_swapped", [False, True])
def test_a_swapped_captions_mlm_targets_follow_data_mlm_on_swapped(pretrain_set, on_swapped):
    # the original masks every caption and predicts the swapped one's tokens too; ours by default does not
    dataset = pretrain_set(
        {"a": ["a dog runs fast"], "b": ["a red car parks"]},
        itm_neg_prob=1.0,
        mlm_prob=0.5,
        mlm_on_swapped=on_swapped,
    )
    items = [dataset.load(index, epoch) for epoch in range(10) for index in range(len(dataset))]
    assert items and all(item["itm_labels"] == 0 for item in items)
    targets = sum(label != -100 for item in items for label in item["mlm_labels"][0])
    assert (targets > 0) == on_swapped
    with pytest.raises(ValueError, match="mlm_on_swapped must be true or false"):
        DataConfig(mlm_on_swapped="yes")
