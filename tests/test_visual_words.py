"""The visual-word loss (train.visual_word_loss): vocabulary, head, loss, CNN-only warm-up, config, resume."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from test_train_fakes import fake_factory, make_config

from clipbert.data.visual_words import build_word_vocab
from clipbert.models import ClipBert, ClipBertConfig
from clipbert.train import config as C
from clipbert.train.run import run
from clipbert.train.tasks import VisualWords, training_loss

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("cpu_world")


def test_vocabulary_ranks_words_by_videos_and_skips_special_tokens():
    # video 0: words 5, 6 (two texts, 5 twice); video 1: 6, 7; video 2: 6. 101/102 are special.
    texts = [[[101, 5, 6, 102], [101, 5, 102]], [[101, 6, 7, 102]], [[101, 6, 102]]]
    vocab = build_word_vocab(texts, special_ids=[101, 102])
    assert vocab.word_ids.tolist() == [6, 5, 7]  # 3 videos, then 1 and 1 (ties by id)
    assert vocab.targets.tolist() == [[1, 1, 0], [1, 0, 1], [1, 0, 0]]
    clip = 1 - 1e-3  # a word in every video keeps a finite log-odds
    expected = [math.log(clip / (1 - clip)), math.log(0.5), math.log(0.5)]
    assert vocab.prior.tolist() == pytest.approx(expected, rel=1e-5)
    top = build_word_vocab(texts, special_ids=[101, 102], max_words=1)
    assert top.word_ids.tolist() == [6] and top.targets.shape == (3, 1)


def test_vocabulary_needs_words():
    with pytest.raises(ValueError, match="no words"):
        build_word_vocab([[[101, 102]]], special_ids=[101, 102])


def _tiny(**overrides):
    cfg = ClipBertConfig.from_preset("tiny", image_size=64, num_layers=1, backbone_layers=(1, 1, 1, 1))
    return ClipBert(ClipBertConfig.from_dict({**cfg.to_dict(), **overrides}))


def test_head_is_a_scaled_cosine_of_the_mean_visual_token_and_word_embeddings():
    torch.manual_seed(0)
    model = _tiny(visual_words=True).eval()
    frames = torch.randn(2, 3, 1, 3, 64, 64)  # [B, N, T, 3, L, L]
    ids = torch.randint(1000, 1100, (2, 2, 5))
    word_ids = torch.tensor([7, 1000, 2000])
    scores, logits = model(frames, ids, None, word_ids=word_ids)
    assert scores.shape == (2, 2, 3, 2) and logits.shape == (2, 3)
    tokens = model.encode_visual(frames).tokens.double()  # [B, N, Lv, H]
    words = model.embeddings.word_embeddings.weight[word_ids].double()
    video = torch.nn.functional.normalize(tokens.mean((1, 2)), dim=-1)
    expected = 10.0 * video @ torch.nn.functional.normalize(words, dim=-1).T  # scale x cosine
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-6)
    none, alone = model(frames, None, None, word_ids=word_ids)  # CNN only
    assert none is None
    torch.testing.assert_close(alone, logits)
    with pytest.raises(ValueError, match="visual_words=True"):
        _tiny()(frames, ids, None, word_ids=word_ids)


def _batch():
    g = torch.Generator().manual_seed(1)
    return {
        "frames": torch.randn(2, 2, 1, 3, 64, 64, generator=g),
        "input_ids": torch.randint(1000, 1100, (2, 3, 5), generator=g),
        "attention_mask": torch.ones(2, 3, 5, dtype=torch.int64),
        "labels": torch.tensor([[1, 0, 0], [1, 0, 0]]),
        "word_targets": torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.uint8),
    }


def test_loss_is_matching_plus_weighted_word_bce_against_float64():
    torch.manual_seed(0)
    model = _tiny(visual_words=True).eval()
    words = VisualWords(torch.tensor([5, 6, 7]), torch.tensor([0.5, -1.0, 0.0]), weight=0.3)
    batch = _batch()
    loss, extra = training_loss(model, batch, "retrieval", "lse", words)
    scores, logits = model(
        batch["frames"], batch["input_ids"], batch["attention_mask"], word_ids=words.word_ids
    )
    x = scores.double()  # [B, M, N, 2]
    log_p = x.logsumexp(2) - x.flatten(2).logsumexp(-1, keepdim=True)  # [B, M, 2]
    match = -log_p.gather(-1, batch["labels"].unsqueeze(-1)).mean()
    z = logits.double() + words.prior.double()
    t = batch["word_targets"].double()
    bce = (torch.nn.functional.softplus(z) - t * z).mean()
    assert loss.item() == pytest.approx((match + 0.3 * bce).item(), rel=1e-5)
    assert extra["match_loss"] == pytest.approx(match.item(), rel=1e-5)
    assert extra["word_loss"] == pytest.approx(bce.item(), rel=1e-5)


def test_words_only_step_leaves_the_transformer_out_of_the_graph():
    model = _tiny(visual_words=True)
    words = VisualWords(torch.tensor([5, 6, 7]), torch.zeros(3), weight=1.0)
    loss, extra = training_loss(model, _batch(), "retrieval", "lse", words, words_only=True)
    assert set(extra) == {"word_loss"} and loss.item() == pytest.approx(extra["word_loss"])
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.classifier.parameters())
    assert all(p.grad is not None for p in model.cnn.parameters() if p.requires_grad)
    assert model.visual_words.scale.grad is not None
    assert model.embeddings.word_embeddings.weight.grad[[5, 6, 7]].abs().sum() > 0


def test_config_names_the_bad_visual_word_keys(tmp_path):
    with pytest.raises(C.ConfigError, match="train.visual_word_steps=3 needs train.visual_word_loss"):
        make_config(tmp_path, train={"visual_word_steps": 3})
    with pytest.raises(C.ConfigError, match="train.visual_word_loss"):
        make_config(tmp_path, train={"visual_word_loss": -1.0})
    with pytest.raises(C.ConfigError, match="train.visual_word_loss is for retrieval"):
        make_config(tmp_path, task="tgif_action", train={"visual_word_loss": 1.0})
    cfg = make_config(tmp_path, train={"visual_word_loss": 1.0})
    assert cfg.model_config().visual_words and not make_config(tmp_path).model_config().visual_words


WORDS_TRAIN = {
    "epochs": 3,
    "grad_accum": 2,
    "eval_every": -1,
    "visual_word_loss": 0.5,
    "visual_word_steps": 2,
}


def _steps(out):
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def test_warm_up_then_joint_training_resumes_step_for_step(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    run(make_config(full, train=WORDS_TRAIN), CPU, fake_factory())
    run(make_config(split, train={**WORDS_TRAIN, "stop_after_steps": 3}), CPU, fake_factory())
    run(make_config(split, train={**WORDS_TRAIN, "resume": "auto"}), CPU, fake_factory())
    a, b = _steps(full), _steps(split)
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
    assert ["match_loss" in r for r in a] == [False, False, True, True, True, True]  # 2 CNN-only steps
    assert all(np.isfinite(r["word_loss"]) for r in a)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["word_loss"] for r in a] == [r["word_loss"] for r in b]
    exported = ClipBert.from_pretrained(full / "model")
    assert exported.visual_words is not None
    # predict.json carries the training vocabulary, so the model dir scores words without the run's data
    info = json.loads((full / "model" / "predict.json").read_text())
    vocab = fake_factory()(make_config(full, train=WORDS_TRAIN), None, CPU).visual_words(CPU)
    assert info["task"]["name"] == "msrvtt_ret" and info["train"]["visual_word_loss"] == 0.5
    assert info["visual_words"]["word_ids"] == vocab.word_ids.tolist()
    torch.testing.assert_close(torch.tensor(info["visual_words"]["prior"]), vocab.prior)
    # A model without the head (e.g. msrvtt_mc evaluation) still loads the exported weights.
    from clipbert.train import checkpoint as ckpt

    plain = ClipBert(ClipBertConfig.from_dict({**exported.config.to_dict(), "visual_words": False}))
    ckpt.load_pretrained_weights(plain, full / "model", "eval.checkpoint")
    torch.testing.assert_close(plain.encoder.state_dict(), exported.encoder.state_dict())


def test_warm_up_steps_count_frames_and_only_the_cnn_flops():
    # Figure 5's convention: 3x the forward FLOPs, except the frozen prefix (stem..res{freeze_at}), run once.
    from clipbert.models.flops import backbone_stage_flops, training_flops, visual_flops
    from clipbert.train.perf import Throughput

    cfg = dataclasses.replace(_tiny().config, freeze_at=2)  # stem and res2 frozen, as the base preset
    batch = _batch()  # B=2, N=2 clips of T=1 frame, M=3 texts
    full, cnn = Throughput(cfg, CPU, 1, None), Throughput(cfg, CPU, 1, None)
    full.add(batch)
    cnn.add(batch, cnn_only=True)
    assert full.frames == cnn.frames == 4
    frozen = sum(backbone_stage_flops(cfg, 64)[0][: cfg.freeze_at])
    assert cnn.flops == 2 * 2 * (3 * visual_flops(cfg, 1, 64)[0] - 2 * frozen) < full.flops
    text_len = batch["input_ids"].shape[-1]
    assert full.flops == 2 * training_flops(cfg, 2, 1, text_len, 3, image_size=64)


def test_word_score_sums_each_texts_distinct_words_against_their_base_rate():
    # eval.word_score_weight: score[q, v] = sum over the distinct vocabulary words w of text q of
    # log sigmoid(head[v, w] + prior[w]) - log sigmoid(prior[w]); repeated and unknown tokens add nothing.
    from clipbert.train.evaluate import word_log_likelihood

    torch.manual_seed(0)
    model = _tiny(visual_words=True).eval()
    tokens = model.encode_visual(torch.randn(3, 2, 1, 3, 64, 64)).tokens  # [V=3, N, Lv, H]
    words = VisualWords(torch.tensor([1000, 1001, 1002]), torch.tensor([-1.0, 0.5, -2.0]), 1.0)
    ids = torch.tensor([[101, 1000, 1000, 1002, 102], [101, 1001, 5, 0, 0]])  # [Q=2, Lt]
    with torch.no_grad():
        got = word_log_likelihood(model, tokens, ids, words)
        head = model.visual_words(tokens, words.word_ids).double() + words.prior.double()  # [V, W]
    log_ratio = torch.nn.functional.logsigmoid(head) - torch.nn.functional.logsigmoid(words.prior.double())
    expected = torch.stack([log_ratio[:, 0] + log_ratio[:, 2], log_ratio[:, 1]])  # [Q, V]
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_retrieval_eval_adds_the_word_score_and_reports_the_matching_head_alone(tmp_path):
    train = {"epochs": 1, "eval_every": -1, "plot": False, "visual_word_loss": 1.0}
    both = run(make_config(tmp_path / "both", train=train), CPU, fake_factory())["metrics"]
    itm = run(
        make_config(tmp_path / "itm", train=train, eval={"word_score_weight": 0.0}), CPU, fake_factory()
    )["metrics"]
    assert "itm_only_t2v_r1" in both and "itm_only_t2v_r1" not in itm
    # the same training (same seed), so the matching head's own ranking is the same in both runs
    for key in ("t2v_r1", "t2v_r5", "t2v_medr", "v2t_r1"):
        assert both[f"itm_only_{key}"] == itm[key]
    with pytest.raises(C.ConfigError, match="eval.word_score_weight"):
        make_config(tmp_path, eval={"word_score_weight": -1.0})
