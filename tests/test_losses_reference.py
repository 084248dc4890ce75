"""The training losses against independent float64 formulas (values and gradients), and the batches they learn
from: retrieval negatives, pre-training ITM negatives and MLM masking, open-QA answers outside ans2label.

The losses run through train/tasks.py's training_loss with a stand-in model that returns fixed clip scores,
so only the loss (aggregation over clips, reduction) is under test, not the network."""

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipbert.data.datasets as datasets
from clipbert.data.annotations import DataError
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.sampling import rng_for
from clipbert.data.text import mask_tokens, tokenize
from clipbert.data.tokenizer import build_tokenizer
from clipbert.train.tasks import VisualWords, training_loss

MODES = ("lse", "mean", "max")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


class FixedScores(torch.nn.Module):
    """A model whose clip scores [B, M, N, K] (and visual-word logits [B, W]) are given tensors."""

    def __init__(self, scores, word_logits=None):
        super().__init__()
        self.scores, self.word_logits = scores, word_logits

    def forward(self, frames, input_ids, attention_mask, word_ids=None):
        return self.scores if word_ids is None else (self.scores, self.word_logits)


def leaf(*shape, scale=3.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()


def ref_log_probs(x: torch.Tensor, mode: str) -> torch.Tensor:
    """float64 paper Eq. 5 (lse) or Table 3's mean / max pooling of x [..., N, K] over the N clips ->
    log-probs [..., K]."""
    x = x.double()
    if mode == "lse":  # log( sum_i e^{g_i} / sum(sum_i e^{g_i}) )
        return x.exp().sum(-2).log() - x.exp().sum((-2, -1)).log()[..., None]
    pooled = x.mean(-2) if mode == "mean" else x.max(-2).values
    return pooled - pooled.exp().sum(-1, keepdim=True).log()


def loss_and_grad(model, batch, kind, mode, x, words=None):
    loss, extra = training_loss(model, batch, kind, mode, words)
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad, extra


def ref_grad(fn, x):
    x64 = x.detach().double().requires_grad_()
    value = fn(x64)
    (grad,) = torch.autograd.grad(value, x64)
    return value, grad


# ------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("mode", MODES)
def test_retrieval_matching_loss_and_gradient(mode):
    # itm_neg_size=2: column 0 is the positive; mean NLL over all B*M pairs (paper Eq. 6)
    x = leaf(3, 3, 4, 2, scale=5.0)  # [B, M, N, 2]
    labels = torch.tensor([[1, 0, 0]] * 3)
    loss, grad, _ = loss_and_grad(FixedScores(x), {"labels": labels, **_no_inputs()}, "retrieval", mode, x)

    def ref(s):
        return -ref_log_probs(s, mode).gather(-1, labels[..., None]).mean()

    want, want_grad = ref_grad(ref, x)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_multiple_choice_loss_treats_the_options_as_classes(mode):
    x = leaf(2, 5, 3, 1)  # [B, M options, N, 1]
    labels = torch.tensor([4, 1])
    loss, grad, _ = loss_and_grad(FixedScores(x), {"labels": labels, **_no_inputs()}, "mc", mode, x)

    def ref(s):
        logp = ref_log_probs(s[..., 0].transpose(1, 2), mode)  # [B, N, M] -> [B, M]
        return -logp[torch.arange(2), labels].mean()

    want, want_grad = ref_grad(ref, x)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_open_qa_loss_averages_the_known_answers_only(mode):
    x = leaf(4, 1, 3, 6)  # [B, 1, N, K answers]
    labels = torch.tensor([2, -100, 5, 0])  # -100: an answer outside ans2label
    loss, grad, _ = loss_and_grad(FixedScores(x), {"labels": labels, **_no_inputs()}, "qa", mode, x)
    keep = labels != -100

    def ref(s):
        logp = ref_log_probs(s[:, 0], mode)  # [B, K]
        return -logp[keep].gather(1, labels[keep][:, None]).mean()

    want, want_grad = ref_grad(ref, x)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    assert (grad[1] == 0).all()  # the unknown answer's question gives no gradient


def test_open_qa_batch_without_a_known_answer_is_a_zero_loss_in_the_graph():
    x = leaf(2, 1, 3, 4)
    loss, grad, _ = loss_and_grad(
        FixedScores(x), {"labels": torch.tensor([-100, -100]), **_no_inputs()}, "qa", "lse", x
    )
    assert loss.item() == 0.0 and (grad == 0).all()


def test_vqa_loss_is_the_originals_mean_bce_times_the_answers():
    # the original: binary_cross_entropy_with_logits(logits, targets, reduction="mean") * targets.shape[1]
    x = leaf(3, 1, 1, 7)  # [B, 1, 1, K]
    labels = torch.tensor([[0, 4, -100], [6, -100, -100], [-100, -100, -100]])  # padded with -100
    scores = torch.tensor([[0.3, 1.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch = {"answer_labels": labels, "answer_scores": scores, **_no_inputs()}
    loss, grad, _ = loss_and_grad(FixedScores(x), batch, "vqa", "lse", x)
    dense = torch.zeros(3, 7, dtype=torch.float64)
    dense[0, 0], dense[0, 4], dense[1, 6] = 0.3, 1.0, 0.6  # label 0 and the padding's column 0 stay apart

    def ref(s):
        z = s[:, 0, 0]
        bce = -(dense * torch.log(torch.sigmoid(z)) + (1 - dense) * torch.log(1 - torch.sigmoid(z)))
        return bce.mean() * 7

    want, want_grad = ref_grad(ref, x)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-7)


def test_visual_word_loss_gradient_against_float64():
    x = leaf(2, 2, 3, 2)  # matching scores [B, M, N, 2]
    z = leaf(2, 4, seed=1)  # word logits [B, W]
    prior = torch.tensor([0.5, -1.0, 0.0, 2.0])
    targets = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.uint8)
    words = VisualWords(torch.arange(4), prior, weight=0.3)
    labels = torch.tensor([[1, 0], [1, 0]])
    batch = {"labels": labels, "word_targets": targets, **_no_inputs()}
    loss, _ = training_loss(FixedScores(x, z), batch, "retrieval", "lse", words)
    gx, gz = torch.autograd.grad(loss, (x, z))
    x64, z64 = x.detach().double().requires_grad_(), z.detach().double().requires_grad_()
    t, logit = targets.double(), z64 + prior.double()
    bce = -(t * F.logsigmoid(logit) + (1 - t) * F.logsigmoid(-logit)).mean()
    want = -ref_log_probs(x64, "lse").gather(-1, labels[..., None]).mean() + 0.3 * bce
    wx, wz = torch.autograd.grad(want, (x64, z64))
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), wx, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gz.double(), wz, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_a_class_at_minus_inf_on_every_clip_leaves_loss_and_gradient_finite(mode):
    x = leaf(3, 1, 4, 5).detach()
    x[:, 0, :, 3] = float("-inf")  # answer 3 is impossible on every clip (a masked-out class)
    x.requires_grad_()
    labels = torch.tensor([0, 4, 2])
    loss, grad, _ = loss_and_grad(FixedScores(x), {"labels": labels, **_no_inputs()}, "qa", mode, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[..., 3].abs().max() < 1e-30  # 0, or the fused kernel's denormal
    finite = x.detach().clone()
    finite[..., 3] = -1e4  # the same prediction with a large finite gap
    want = -ref_log_probs(finite[:, 0], mode)[torch.arange(3), labels].mean()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_clip_scores_give_a_float32_loss_and_finite_gradients(dtype, mode):
    # scores past fp16's exp range (e^12 overflows): the aggregation must run in float32
    x = leaf(2, 3, 4, 2, scale=20.0, dtype=dtype)
    labels = torch.tensor([[1, 0, 0]] * 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad, _ = loss_and_grad(
            FixedScores(x), {"labels": labels, **_no_inputs()}, "retrieval", mode, x
        )
    assert loss.dtype == torch.float32 and grad.dtype == dtype and torch.isfinite(grad).all()
    want = -ref_log_probs(x.detach(), mode).gather(-1, labels[..., None]).mean()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)


def test_equal_micro_batches_accumulate_to_the_big_batchs_gradient():
    # DeepSpeed scales each micro batch's loss by 1/grad_accum: with equal micro batches (the train loader
    # drops the last, short one) two halves give the whole batch's mean
    x = leaf(4, 2, 3, 2)
    labels = torch.tensor([[1, 0]] * 4)

    def grad_of(rows: slice, scale: float) -> torch.Tensor:
        batch = {"labels": labels[rows], **_no_inputs()}
        loss, _ = training_loss(FixedScores(x[rows]), batch, "retrieval", "lse")
        return torch.autograd.grad(loss * scale, x)[0]

    halves = grad_of(slice(0, 2), 0.5) + grad_of(slice(2, 4), 0.5)
    torch.testing.assert_close(halves, grad_of(slice(0, 4), 1.0), rtol=1e-6, atol=1e-8)


def _no_inputs():
    return {"frames": None, "input_ids": None, "attention_mask": None}


# ------------------------------------------------------------------------------------ retrieval negatives
def retrieval_set(tmp_path, tokenizer, texts: dict, itm_neg_size=3, seed=3):
    with open(tmp_path / "msrvtt_ret_train.jsonl", "w") as f:
        for video, captions in texts.items():
            f.writelines(json.dumps({"caption": c, "clip_name": video}) + "\n" for c in captions)
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=itm_neg_size, seed=seed)
    dataset = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    dataset.visual = lambda video_id, epoch: {"video_id": video_id}  # the texts alone: no decoding
    return dataset


def test_a_negative_never_reads_as_a_positive_whatever_its_case_or_spacing(tokenizer, tmp_path):
    # the uncased tokenizer reads these alike: as a negative, the positive's own words labelled "no match"
    texts = {"a": ["a dog runs"], "b": ["A  dog RUNS", "a cat"], "c": ["A Dog runs"], "d": ["a bird"]}
    dataset = retrieval_set(tmp_path, tokenizer, texts)
    for epoch in range(30):
        item = dataset.load(0, epoch)
        assert item["input_ids"][0] not in item["input_ids"][1:], epoch


def test_most_videos_sharing_the_caption_still_gives_true_negatives(tokenizer, tmp_path):
    # 30 videos say "a man is talking"; only one says something else: the draws rarely find it, the
    # fallback must
    texts = {f"v{i}": ["a man is talking"] for i in range(30)} | {"z": ["a red car"]}
    dataset = retrieval_set(tmp_path, tokenizer, texts, itm_neg_size=2)
    car = tokenize(tokenizer, ["a red car"], dataset.max_len)[0]
    for epoch in range(10):
        for index in range(0, 30, 7):
            assert dataset.load(index, epoch)["input_ids"][1:] == [car, car]


def test_every_caption_the_same_is_said_naming_file_and_videos(tokenizer, tmp_path, caplog):
    # no text can be a negative: said (the set still loads), and the draw ends
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        dataset = retrieval_set(
            tmp_path, tokenizer, {"a": ["the same"], "b": ["The same"], "c": ["the  same"]}
        )
    assert "msrvtt_ret_train.jsonl: 3 video(s) ('a', 'b', 'c') have no negative text" in caplog.text
    assert dataset.load(0, 0)["labels"] == [1, 0, 0, 0]


def test_retrieval_training_without_negatives_is_said(tokenizer, tmp_path, caplog):
    # every label 1: "match" to anything minimizes the loss, and the ranks it gives are noise
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        dataset = retrieval_set(tmp_path, tokenizer, {"a": ["a dog"], "b": ["a cat"]}, itm_neg_size=0)
    assert "msrvtt_ret_train.jsonl: data.itm_neg_size=0: every training pair is a match" in caplog.text
    assert dataset.load(0, 0)["labels"] == [1]


def test_more_negatives_than_other_texts_and_two_videos(tokenizer, tmp_path):
    dataset = retrieval_set(tmp_path, tokenizer, {"a": ["one", "two"], "b": ["three"]}, itm_neg_size=5)
    three = tokenize(tokenizer, ["three"], dataset.max_len)[0]
    item = dataset.load(0, 0)
    assert item["labels"] == [1, 0, 0, 0, 0, 0] and item["input_ids"][1:] == [three] * 5


def test_negatives_are_fixed_by_seed_and_epoch_and_change_across_epochs(tokenizer, tmp_path):
    texts = {f"v{i}": [f"caption number {i}", f"other words {i}"] for i in range(12)}
    dataset = retrieval_set(tmp_path, tokenizer, texts, itm_neg_size=3)
    again = retrieval_set(tmp_path, tokenizer, texts, itm_neg_size=3)
    epochs = [[dataset.load(i, epoch)["input_ids"] for i in range(12)] for epoch in range(3)]
    assert epochs[1] == [again.load(i, 1)["input_ids"] for i in range(12)]
    assert epochs[0] != epochs[1] != epochs[2]


# ------------------------------------------------------------------------------- pre-training ITM and MLM
@pytest.fixture
def pretrain_set(tmp_path, tokenizer, monkeypatch):
    """pretrain_set(rows) -> the PretrainDataset of these annotation rows, with blank images."""
    blank = (np.zeros((1, 1, 3, 2, 2), np.uint8), (2, 2))
    monkeypatch.setattr(datasets, "load_image", lambda path, size, orientation="stored": blank)

    def make(rows, **cfg):
        with open(tmp_path / "pretrain_train.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), seed=5, **cfg)
        return build_dataset("pretrain", "train", config, tokenizer, IMAGENET_RGB)

    return make


def caption_rows(images: dict) -> list[dict]:
    return [{"image_id": i, "file": f"{i}.jpg", "caption": c} for i, caps in images.items() for c in caps]


def test_itm_negative_rate_holds_when_one_image_has_most_captions(pretrain_set):
    # Visual Genome gives an image dozens of captions; 8 random draws of another image's caption mostly
    # failed here and the pair stayed a match: 12% negatives instead of itm_neg_prob=0.5
    images = {"a": [f"caption {k}" for k in range(30)], "b": ["another"]}
    dataset = pretrain_set(caption_rows(images), mlm_prob=0.0)
    items = [dataset.load(index, epoch) for epoch in range(20) for index in range(30)]
    negatives = [item for item in items if item["itm_labels"] == 0]
    assert abs(len(negatives) / len(items) - 0.5) < 0.06
    other = tokenize(dataset.tokenizer, ["another"], dataset.max_len)[0]
    assert all(item["input_ids"][0] == other for item in negatives)


def test_itm_negative_rate_on_a_set_of_many_images(pretrain_set):
    dataset = pretrain_set(
        caption_rows({f"i{k}": [f"words {k}", f"more {k}"] for k in range(10)}), mlm_prob=0
    )
    labels = [dataset.load(index, epoch)["itm_labels"] for epoch in range(40) for index in range(20)]
    assert abs(1 - np.mean(labels) - 0.5) < 0.05


def test_a_set_of_one_image_is_said_to_give_no_itm_negative(pretrain_set, caplog):
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        dataset = pretrain_set(caption_rows({"a": ["one", "two", "three"]}))
    assert "every caption is of one image (a.jpg)" in caplog.text
    assert all(dataset.load(index, epoch)["itm_labels"] == 1 for epoch in range(5) for index in range(3))


def test_mlm_masks_15_percent_split_80_10_10_and_never_a_special_token(tokenizer):
    cls, sep, pad, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, 103
    words = list(range(2000, 2030))
    ids = [cls, *words, sep, *words[:5], sep]
    picked = kept_mask = swapped = kept = 0
    for k in range(3000):
        masked, labels = mask_tokens(ids, tokenizer, rng_for(1, 0, k))
        assert [labels[i] for i in (0, 31, 37)] == [-100] * 3 and [masked[i] for i in (0, 31, 37)] == [
            cls,
            sep,
            sep,
        ]
        for orig, new, label in zip(ids, masked, labels):
            if label == -100:
                assert new == orig
                continue
            assert label == orig
            picked += 1
            kept_mask += new == mask
            kept += new == orig
            swapped += new not in (mask, orig)
    total = 3000 * 35
    assert abs(picked / total - 0.15) < 0.005
    assert abs(kept_mask / picked - 0.8) < 0.01 and abs(kept / picked - 0.1) < 0.01
    assert abs(swapped / picked - 0.1) < 0.01  # a random token may be the original again: inside `kept`
    only_special = [cls, sep, pad, pad]
    assert mask_tokens(only_special, tokenizer, rng_for(0, 0, 0), prob=1.0) == (only_special, [-100] * 4)


# ----------------------------------------------------------------------------- open QA outside ans2label
def qa_set(tmp_path, tokenizer, answers: list[str], split="train"):
    with open(tmp_path / f"msrvtt_qa_{split}.jsonl", "w") as f:
        for k, answer in enumerate(answers):
            f.write(json.dumps({"question": f"what is {k}", "answer": answer, "video_id": f"v{k}"}) + "\n")
    (tmp_path / "msrvtt_qa_ans2label.json").write_text(json.dumps({"dog": 0, "cat": 1}))
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    return build_dataset("msrvtt_qa", split, cfg, tokenizer, IMAGENET_RGB)


def test_answers_outside_ans2label_are_counted_said_and_dropped_from_training(tmp_path, tokenizer, caplog):
    # as the original: kept, they gave no loss, and a micro batch's mean ran over fewer questions
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        train = qa_set(tmp_path, tokenizer, ["dog", "zebra", "cat", "Dog"])
    assert "msrvtt_qa_train.jsonl: 2 of 4 question(s) have an answer not in msrvtt_qa_ans2label.json" in (
        caplog.text
    )
    assert "lines 2, 4" in caplog.text and "dropped from training" in caplog.text
    assert len(train) == 2 and [train.examples[i]["answer"] for i in range(2)] == ["dog", "cat"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        test = qa_set(tmp_path, tokenizer, ["dog", "zebra", "cat", "Dog"], split="test")
    assert len(test) == 4 and "they count as wrong" in caplog.text  # every test question is scored


def test_a_training_file_without_a_known_answer_is_refused(tmp_path, tokenizer):
    # every answer unknown: each batch's loss is exactly 0 (no gradient) for the whole run
    with pytest.raises(DataError, match=r"msrvtt_qa_train.jsonl: none of the 2 answers is in .*ans2label"):
        qa_set(tmp_path, tokenizer, ["Dog", "zebra"])
    assert len(qa_set(tmp_path, tokenizer, ["Dog", "zebra"], split="test")) == 2  # evaluated: counted wrong


# ---------------------------------------------------------------- accumulation windows (loop.py)


@pytest.mark.usefixtures("cpu_world")
def test_every_accumulation_window_updates_with_its_micro_batches_mean(tmp_path, monkeypatch):
    # 3 micro batches an epoch, grad_accum 2: the epoch's last window holds 1. DeepSpeed divides each loss by
    # grad_accum, so that window's update was half its micro batch's gradient, a smaller step every epoch end.
    from deepspeed.runtime.engine import DeepSpeedEngine
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.run import run

    backward, seen = DeepSpeedEngine.backward, []

    def record(self, loss, *args, **kwargs):
        seen.append(float(loss.detach()))
        return backward(self, loss, *args, **kwargs)

    monkeypatch.setattr(DeepSpeedEngine, "backward", record)
    train = {"epochs": 2, "grad_accum": 2, "batch_size": 2, "eval_every": -1, "save_every": 0}
    run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory(train_size=6))
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    windows = [seen[0:2], seen[2:3], seen[3:5], seen[5:6]]  # 2 + 1 micro batches in each epoch
    assert len(seen) == 6 and len(steps) == 4
    for step, window in zip(steps, windows):
        # what DeepSpeed applies, sum(loss) / grad_accum, is the window's mean loss that steps.jsonl logs
        assert sum(window) / 2 == pytest.approx(step["loss"], rel=1e-5), (step, window)
